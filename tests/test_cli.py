"""inference_batch.py end to end on the tiny model: outputs, determinism, overwrite policy, bad input."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_batch
from interact.checkpoint import save_checkpoint
from interact.model import CONFIG_DIR, REPO_ROOT

TINY = str(CONFIG_DIR / "tiny_random.yaml")
FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]


def record(prompt="a person holding a cup", n=1, **overrides):
    rec = {"prompt": prompt, "subject_phrases": ["person"] * n, "action_phrases": ["holding"] * n,
           "object_phrases": ["cup"] * n, "subject_boxes": [[0.1, 0.1, 0.5, 0.9]] * n,
           "object_boxes": [[0.4, 0.4, 0.6, 0.6]] * n}
    rec.update(overrides)
    return rec


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def run(argv) -> int:
    return inference_batch.main([str(a) for a in argv])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_cli_subprocess_writes_image_overlay_and_sidecar(tmp_path):
    layouts = write_json(tmp_path / "layouts.json", [record(), record("a cat", n=0)])
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "inference_batch.py"), "--input", str(layouts),
                           "--folder", str(out), "--seed", "7", *FAST], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "embedded default, the toy InteractDiffusion model" in proc.stderr  # says plainly what it runs
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.json", "00000.png", "00000_layout.png", "00001.json", "00001.png", "00001_layout.png"]
    assert Image.open(out / "00000.png").size == (32, 32)
    assert min(Image.open(out / "00000_layout.png").size) >= 256
    sidecar = json.loads((out / "00000.json").read_text())
    assert sidecar["seed"] == 7 and json.loads((out / "00001.json").read_text())["seed"] == 8
    assert sidecar["steps"] == 2 and sidecar["sampler"] == "plms"
    assert sidecar["interactions"][0]["action_box"] == [0.4, 0.4, 0.5, 0.6]
    assert sidecar["prompt"] == "a person holding a cup"
    assert sidecar["checkpoint"]["embedded_default"] == "assets/toy_interactdiffusion.pth"
    assert len(sidecar["checkpoint"]["sha256_12"]) == 12


def test_batch_size_and_seed_reproducibility(tmp_path):
    layouts = write_json(tmp_path / "l.json", [record(), record("two", n=2), record("none", n=0)])
    assert run(["--input", layouts, "--folder", tmp_path / "a", "--batch_size", "1", *FAST]) == 0
    assert run(["--input", layouts, "--folder", tmp_path / "b", "--batch_size", "2", *FAST]) == 0
    for i in range(3):
        a, b = pixels(tmp_path / "a" / f"{i:05d}.png"), pixels(tmp_path / "b" / f"{i:05d}.png")
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # same seed, same image, any batching
    assert np.abs(pixels(tmp_path / "a/00000.png").astype(int) - pixels(tmp_path / "a/00001.png")).max() > 0


def test_existing_outputs_are_never_lost(tmp_path):
    layouts = write_json(tmp_path / "l.json", [record(), record()])
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.png").write_bytes(b"precious")
    assert run(["--input", layouts, "--folder", out, *FAST]) == 2
    assert (out / "00000.png").read_bytes() == b"precious" and not (out / "00001.png").exists()
    assert run(["--input", layouts, "--folder", out, "--no-overwrite", *FAST]) == 0
    assert (out / "00000.png").read_bytes() == b"precious" and (out / "00001.png").exists()
    assert run(["--input", layouts, "--folder", out, "--overwrite", *FAST]) == 0
    assert (out / "00000.png").read_bytes() != b"precious"


BAD_RECORDS = [
    (record(subject_boxes=[[0.1, 0.1, 1.5, 0.9]]), "record 1, interaction 0: subject_boxes"),
    (record(object_boxes=[[0.6, 0.4, 0.4, 0.6]]), "object_boxes"),
    (record(object_boxes=[[0.4, 0.4, 0.4, 0.6]]), "non-zero area"),
    (record(subject_boxes=[[float("nan"), 0.1, 0.5, 0.9]]), "finite"),
    (record(action_phrases=[""]), "action_phrases"),
    (record(object_phrases=["cup", "cup"]), "list lengths disagree"),
    (record(n=31), "at most 30"),
    ({"prompt": "p"}, "missing field"),
    (record(prompt=None), "prompt"),
]


@pytest.mark.parametrize("bad, message", BAD_RECORDS)
def test_bad_records_fail_before_model_work(tmp_path, capsys, bad, message):
    layouts = tmp_path / "l.json"
    layouts.write_text(json.dumps([record(), bad]))
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()  # nothing written: validation comes first


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps"), (["--guidance_scale", "-2"], "guidance_scale"),
    (["--scheduled-sampling", "2"], "scheduled_sampling"), (["--height", "33"], "height"),
    (["--ckpt", "missing.pth"], "missing.pth"),
])
def test_bad_options(tmp_path, capsys, argv, message):
    layouts = write_json(tmp_path / "l.json", [record()])
    code = run(["--input", layouts, "--folder", tmp_path / "out", *FAST, *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_bad_flags_exit_nonzero(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run(["--sampler", "euler"])
    assert exc.value.code != 0
    with pytest.raises(SystemExit):
        run(["--overwrite", "--no-overwrite"])


def test_reference_pickle_input_and_jsonl(tmp_path):
    recs = [record(subject_boxes=np.array([[0.1, 0.1, 0.5, 0.9]]))]
    with open(tmp_path / "l.pkl", "wb") as f:
        pickle.dump(recs, f)
    (tmp_path / "l.jsonl").write_text(json.dumps(record()) + "\n")
    assert run(["--input", tmp_path / "l.pkl", "--folder", tmp_path / "a", *FAST]) == 0
    assert run(["--input", tmp_path / "l.jsonl", "--folder", tmp_path / "b", *FAST]) == 0
    assert np.array_equal(pixels(tmp_path / "a/00000.png"), pixels(tmp_path / "b/00000.png"))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_hostile_pickle_is_refused(tmp_path, capsys):
    with open(tmp_path / "l.pkl", "wb") as f:
        pickle.dump([Evil()], f)
    assert run(["--input", tmp_path / "l.pkl", "--folder", tmp_path / "o", *FAST]) == 2
    assert "not allowed" in capsys.readouterr().err


def test_checkpoint_round_trip_through_cli(tmp_path):
    """A saved tiny checkpoint generates the same image as the in-memory model it came from."""
    from interact.pipeline import InteractDiffusionPipeline
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=123, device="cpu")
    for _, block in pipe.model.model.transformer_blocks():
        block.fuser.alpha_attn.data.fill_(0.7)
    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(ckpt, pipe.model)
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "o", "--ckpt", ckpt, "--config", TINY, "--seed", "3",
                *FAST]) == 0
    from hoi.records import interactions_from_record
    expected = pipe(record()["prompt"], interactions_from_record(record()), seed=3, steps=2, height=32, width=32,
                    progress=False)[0]
    assert np.abs(pixels(tmp_path / "o/00000.png").astype(int) - np.asarray(expected).astype(int)).max() <= 1
    sidecar = json.loads((tmp_path / "o/00000.json").read_text())
    assert len(sidecar["checkpoint"]["ckpt"]["sha256_12"]) == 12
    torch.manual_seed(0)
