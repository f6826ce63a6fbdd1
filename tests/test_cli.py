"""inference_batch.py end to end on the tiny model: outputs, determinism, overwrite policy, bad input."""
from __future__ import annotations

import dataclasses
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
from interact.pipeline import SamplingOptions
from interact.checkpoint import save_checkpoint
from interact.model import REPO_ROOT
from helpers import TINY_CONFIG, open_gates, write_json
from helpers import layout_record as record

TINY = str(TINY_CONFIG)
FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]


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


def test_reference_compat_draws_every_record_from_one_generator(tmp_path):
    """--reference_compat: the run's seed seeds one generator and records draw from it in turn, so
    batching does not matter but record 1's image is not the one it gets alone with seed + 1."""
    layouts = write_json(tmp_path / "l.json", [record(), record("two", n=2)])
    for folder, size in (("a", "1"), ("b", "2")):
        assert run(["--input", layouts, "--folder", tmp_path / folder, "--batch_size", size, "--reference_compat",
                    *FAST]) == 0
    for i in range(2):
        a, b = pixels(tmp_path / "a" / f"{i:05d}.png"), pixels(tmp_path / "b" / f"{i:05d}.png")
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert run(["--input", layouts, "--folder", tmp_path / "c", *FAST]) == 0
    assert np.abs(pixels(tmp_path / "a/00001.png").astype(int) - pixels(tmp_path / "c/00001.png")).max() > 0
    sidecar = json.loads((tmp_path / "a/00001.json").read_text())
    assert sidecar["reference_compat"] is True and sidecar["seed"] == 0


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
    (["--scheduled-sampling", "2"], "error: --scheduled-sampling = 2.0: out of range"), (["--height", "33"], "height"),
    (["--guidance_scale", "nan"], "error: --guidance_scale = nan: must be a finite number"),
    (["--ckpt", "missing.pth"], "missing.pth"),
    (["--sampler", "ddim", "--karras_sigmas"], "karras_sigmas = True: sampler 'ddim' does not take Karras sigmas"),
    (["--sampler", "unipc", "--reference_compat"], "sampler = 'unipc': reference_compat"),
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


def test_checkpoint_round_trip_through_cli(tmp_path):
    """A saved tiny checkpoint generates the same image as the in-memory model it came from."""
    from interact.pipeline import InteractDiffusionPipeline
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=123, device="cpu")
    open_gates(pipe.model, 0.7, 0.0)
    ckpt = tmp_path / "tiny.pth"
    save_checkpoint(ckpt, pipe.model)
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "o", "--ckpt", ckpt, "--config", TINY, "--seed", "3",
                *FAST]) == 0
    from interact.controls.interactions import interactions_from_record
    expected = pipe(record()["prompt"], interactions_from_record(record()), seed=3, steps=2, height=32, width=32,
                    progress=False)[0]
    assert np.abs(pixels(tmp_path / "o/00000.png").astype(int) - np.asarray(expected).astype(int)).max() <= 1
    sidecar = json.loads((tmp_path / "o/00000.json").read_text())
    assert len(sidecar["checkpoint"]["ckpt"]["sha256_12"]) == 12
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- every bad input: one line, exit 2
def error_line(capsys) -> str:
    """The CLI's stderr must end in exactly one `error: ...` line (no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded: the checks under test come before it."""
    import interact.batch

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")
    monkeypatch.setattr(interact.batch, "load_pipeline", refuse)


def test_box_coordinate_given_as_a_string_is_refused(tmp_path, capsys, no_model):
    layouts = write_json(tmp_path / "l.json", [record(), record(subject_boxes=[["0.1", 0.1, 0.5, 0.9]])])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 1, interaction 0: subject_boxes = ['0.1', 0.1, 0.5, 0.9]: "
                                  f"expected 4 numbers x0, y0, x1, y1")


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "error: --device = 'tpu': out of range (must be auto, cpu, mps, cuda or cuda:N)"),
    (["--sampler", "ddim", "--eta", "-1"], "error: --eta = -1.0: out of range (must be >= 0)"),
    (["--steps", "0"], "error: --steps = 0: out of range (must be >= 1)"),
    (["--batch_size", "0"], "error: --batch_size = 0: out of range (must be >= 1)"),
    (["--seed", str(2**64)], (f"error: --seed = {2**64}: out of range (must be in [{-2**63}, {2**64 - 1}], what "
                              f"torch.Generator.manual_seed accepts)")),
])
def test_bad_option_values_name_the_flag(tmp_path, capsys, no_model, argv, message):
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST, *argv]) == 2
    assert error_line(capsys) == message
    assert not (tmp_path / "out").exists()


def test_seed_range_covers_every_record(tmp_path, capsys, no_model):
    """The largest seed fits one record, not two: refused before the first is written."""
    layouts = write_json(tmp_path / "l.json", [record(), record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--seed", str(2**64 - 1), *FAST]) == 2
    assert error_line(capsys) == (f"error: --seed {2**64 - 1}: record 1 would use seed {2**64}, above {2**64 - 1} "
                                  f"(the largest seed torch.Generator accepts); use a seed <= {2**64 - 2}")
    assert not (tmp_path / "out").exists()


def test_binary_layouts_file(tmp_path, capsys, no_model):
    png = tmp_path / "layouts.json"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert run(["--input", png, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: --input {png}: cannot be parsed: not UTF-8 text (byte 0x89 at offset 0); "
                                  f"expected .json, .jsonl or .pkl layouts")
    garbage = tmp_path / "layouts.pkl"
    garbage.write_bytes(b"\x00\x01garbage")
    assert run(["--input", garbage, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys).startswith(f"error: --input {garbage}: cannot be parsed: ")


def test_jsonl_parse_error_names_the_line_of_the_file(tmp_path, capsys, no_model):
    layouts = tmp_path / "l.jsonl"
    broken = '{"prompt": "a person" "holding a cup"}'  # a missing comma, column 23 of line 3
    layouts.write_text(json.dumps(record()) + "\n\n" + broken + "\n")
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: --input {layouts}: line 3: cannot be parsed: Expecting ',' delimiter "
                                  f"(column 23)")


def test_output_folder_that_is_or_lies_under_a_file(tmp_path, capsys, no_model):
    layouts = write_json(tmp_path / "l.json", [record()])
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert run(["--input", layouts, "--folder", a_file, *FAST]) == 2
    assert error_line(capsys) == f"error: --folder {a_file}: is a file, not a folder"
    assert run(["--input", layouts, "--folder", a_file / "sub" / "out", *FAST]) == 2
    assert error_line(capsys) == f"error: --folder {a_file / 'sub' / 'out'}: {a_file} is a file, not a folder"


def test_output_folder_that_cannot_be_written_is_found_before_the_model_loads(tmp_path, capsys, no_model):
    import tempfile
    readonly = Path("/sys")
    try:
        with tempfile.TemporaryFile(dir=readonly):
            pytest.skip("/sys is writable here")
    except OSError:
        pass
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", readonly / "out", *FAST]) == 2
    assert error_line(capsys).startswith(f"error: --folder {readonly / 'out'}: cannot write in {readonly} (")


def test_grid_that_is_a_folder_or_exists(tmp_path, capsys, no_model):
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--grid", tmp_path, *FAST]) == 2
    assert error_line(capsys) == (f"error: --grid {tmp_path}: is a folder; give a file name such as "
                                  f"{tmp_path / 'grid.png'}")
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"precious")
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--grid", grid, *FAST]) == 2
    assert error_line(capsys) == f"error: --grid {grid}: already exists; pass --overwrite to replace it"
    # --overwrite and --no-overwrite exclude each other: the hint names what works with the latter
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--grid", grid, "--no-overwrite", *FAST]) == 2
    assert error_line(capsys) == (f"error: --grid {grid}: already exists, and --no-overwrite never replaces a "
                                  f"file; give another --grid path or remove that file")
    assert grid.read_bytes() == b"precious" and not (tmp_path / "out").exists()


def test_grid_is_replaced_with_overwrite(tmp_path):
    layouts = write_json(tmp_path / "l.json", [record()])
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"old")
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--grid", grid, "--overwrite", *FAST]) == 0
    assert Image.open(grid).size[0] > 0


def test_too_many_interactions_for_the_loaded_model_before_anything_is_written(tmp_path, capsys):
    """The embedded toy model takes at most 4 interactions: the 3rd record's 5 fail the run
    before records 0 and 1 are generated, naming the record's number in the file."""
    layouts = write_json(tmp_path / "l.json", [record(), record(n=2), record(n=5)])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == f"error: {layouts}: record 2: interactions: 5 given, at most 4 allowed by this model"
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_unknown_record_keys_and_overlong_texts_are_reported(tmp_path, capsys):
    long_prompt = " ".join(["a person holding a cup"] * 20)  # ~100 tokens; the encoder reads 77
    layouts = write_json(tmp_path / "l.json", [
        record(seed=5, steps=10, source="a note"),
        record(long_prompt, object_phrases=["cup " * 80])])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 0
    err = capsys.readouterr().err
    ignored = (f"warning: {layouts}: record 0: key {{!r}} is ignored (a record has prompt, source, subject_phrases, "
               f"action_phrases, object_phrases, subject_boxes, object_boxes, phrases, boxes, segments; seed and "
               f"sampling options are set for the whole run)")
    assert ignored.format("seed") in err and ignored.format("steps") in err and "'source'" not in err
    cut = "the text encoder reads 77 tokens (start and end included), the rest is cut"
    assert f"warning: {layouts}: record 1: prompt: 102 tokens; {cut}" in err
    assert f"warning: {layouts}: record 1: object_phrases[0]: 82 tokens; {cut}" in err
    assert "record 0: prompt" not in err


def test_no_overwrite_resumes_only_finished_matching_records(tmp_path, capsys):
    """A record is done when its sidecar (written last) matches the run; an interrupted record
    or one made by another run is reported and left, never replaced."""
    layouts = write_json(tmp_path / "l.json", [record(), record("two", n=2), record("none", n=0)])
    out = tmp_path / "out"
    assert run(["--input", layouts, "--folder", out, *FAST]) == 0
    (out / "00001.json").unlink()  # killed after record 1's images, before its sidecar
    (out / "00002.png").unlink(), (out / "00002_layout.png").unlink(), (out / "00002.json").unlink()
    done = (out / "00000.png").stat().st_mtime_ns
    capsys.readouterr()
    assert run(["--input", layouts, "--folder", out, "--no-overwrite", *FAST]) == 0
    err = capsys.readouterr().err
    assert ("warning: --no-overwrite: record 1 left as it is: has 00001.png, 00001_layout.png but no 00001.json "
            "(an interrupted run?); pass --redo-interrupted to finish it") in err
    assert "--no-overwrite: 1 record(s) done, 1 left as they are, 1 to generate" in err
    assert (out / "00002.json").exists() and (out / "00000.png").stat().st_mtime_ns == done
    # The interrupted record is finished on request, and only it: the finished ones stay untouched.
    assert run(["--input", layouts, "--folder", out, "--no-overwrite", "--redo-interrupted", *FAST]) == 0
    assert "--no-overwrite: 2 record(s) done, 0 left as they are, 1 to generate" in capsys.readouterr().err
    assert (out / "00001.json").exists() and (out / "00000.png").stat().st_mtime_ns == done
    assert run(["--input", layouts, "--folder", out, "--redo-interrupted", *FAST]) == 2
    assert error_line(capsys) == ("error: --redo-interrupted goes with --no-overwrite (it finishes what a killed run "
                                  "left; --overwrite redoes every record)")
    # Another seed, or other layouts: the outputs are not this run's.
    assert run(["--input", layouts, "--folder", out, "--no-overwrite", "--seed", "5", *FAST]) == 0
    err = capsys.readouterr().err
    assert ("warning: --no-overwrite: record 0 left as it is: 00000.json was made with seed = 0, this run uses 5; "
            "pass --overwrite to redo every record, or move its files away") in err
    other = write_json(tmp_path / "other.json", [record("something else"), record("two", n=2), record("none", n=0)])
    assert run(["--input", other, "--folder", out, "--no-overwrite", *FAST]) == 0
    assert ("record 0 left as it is: 00000.json was made from another layout (prompt differs)"
            in capsys.readouterr().err)
    assert run(["--input", layouts, "--folder", out, "--no-overwrite", "--guidance_scale", "2", *FAST]) == 0
    assert "00000.json was made with guidance_scale = 3.0, this run uses 2.0" in capsys.readouterr().err
    assert (out / "00000.png").stat().st_mtime_ns == done


def test_config_sampling_section_is_checked(tmp_path, capsys, no_model):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model_config: {TINY}\nsampling:\n  stepz: 10\n")
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", bad, *FAST]) == 2
    known = ", ".join(sorted(f.name for f in dataclasses.fields(SamplingOptions)))
    assert error_line(capsys) == f"error: sampling.stepz: unknown option; known: {known}"
    bad.write_text(f"model_config: {TINY}\nsampling:\n  steps: '10'\n")
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", bad, *FAST]) == 2
    assert error_line(capsys) == "error: sampling.steps = '10': expected int"


def test_flags_keep_their_spellings_and_become_typed_options():
    options, sampling = inference_batch.options_from_args(inference_batch.parse_args([
        "--no_plms", "--scheduled-sampling", "0.5", "--allow-pickle", "--no-overwrite", "--seed", "3",
        "--fuser_type", "gatedCA", "--folder", "o"]))
    assert sampling == {"sampler": "ddim", "scheduled_sampling": 0.5}
    assert options.allow_pickle and options.no_overwrite and not options.overwrite
    assert (options.seed, options.folder, options.interaction) == (3, "o", {"fuser_type": "gatedCA"})
    assert options.uses_embedded_default and options.batch_size == 1 and options.device == "auto"
    for sampler in ("plms", "unipc"):  # the reference's DDIM flag never silently loses to another sampler
        with pytest.raises(inference_batch.BatchError, match=f"--no_plms .* contradicts --sampler {sampler}"):
            inference_batch.options_from_args(inference_batch.parse_args(["--no_plms", "--sampler", sampler]))
    _, sampling = inference_batch.options_from_args(inference_batch.parse_args(["--no_plms", "--sampler", "ddim"]))
    assert sampling["sampler"] == "ddim"


def test_interaction_flags_cover_every_switch():
    from interact.model import interaction_switches
    choices = {key: values[-1] for key, values in interaction_switches().items()}
    argv = [arg for key, value in choices.items() for arg in (f"--{key}", value)]
    options, _ = inference_batch.options_from_args(inference_batch.parse_args(argv))
    assert options.interaction == choices
    options, _ = inference_batch.options_from_args(inference_batch.parse_args([]))
    assert options.interaction == {}  # nothing given: the config's values stand


def test_library_options_are_checked_like_the_flags():
    from interact.batch import batch_options
    with pytest.raises(ValueError, match=r"^options.seed = '3': expected int$"):
        batch_options({"seed": "3"})
    with pytest.raises(ValueError, match="exclude each other"):
        batch_options({"overwrite": True, "no_overwrite": True})
    with pytest.raises(ValueError, match=r"^options.interaction.fuser_type = 'gatedXA': expected one of"):
        batch_options({"interaction": {"fuser_type": "gatedXA"}})


# --------------------------------------------------------------------------- DenseDiffusion segments and the sampler


def dense_record(prompt="a ball next to a tree", **segment):
    return {"prompt": prompt, "segments": [{"phrase": "tree", **(segment or {"box": [0.5, 0.0, 1.0, 1.0]})}]}


def test_segments_in_a_record_are_used_and_kept_in_the_sidecar(tmp_path):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "tree.png")
    runs = {"box": dense_record(), "png": dense_record(mask="tree.png"), "plain": record("a ball next to a tree", n=0)}
    for name, layout in runs.items():   # one record each: the same seed
        layouts = write_json(tmp_path / f"{name}.json", [layout])
        assert run(["--input", layouts, "--folder", tmp_path / name, "--multi_instance", "0.5", *FAST]) == 0
    sidecar = json.loads((tmp_path / "box/00000.json").read_text())
    assert sidecar["segments"] == [{"phrase": "tree", "box": [0.5, 0.0, 1.0, 1.0]}] and sidecar["multi_instance"] == 0.5
    box, png, plain = (pixels(tmp_path / f"{name}/00000.png").astype(int) for name in runs)
    assert np.abs(box - png).max() <= 1   # the same region as a box and as a PNG mask (found beside the file)
    assert np.abs(box - plain).max() > 0


@pytest.mark.parametrize("bad, message", [
    (dense_record(mask=np.ones((8, 8)).tolist()), "record 1, segment 0.mask: 8x8 (height x width) does not match "
                                                   "the image, 32x32"),
    (dense_record(mask=[[0, 2], [1, 0]]), "record 1, segment 0.mask: not a binary mask"),
    (dense_record(box=[0.5, 0.5, 0.5, 0.9]), "record 1, segment 0.box = [0.5, 0.5, 0.5, 0.9]: need x0 < x1"),
    (dense_record(rle={"size": [32, 32], "counts": [5, 5]}), "record 1, segment 0.rle: the runs cover 10 pixels"),
    (dense_record(rle={"size": [32, 32], "counts": [1024]}), "record 1, segment 0.rle: the region is empty at 32x32"),
    (dense_record(prompt=""), "record 1: segments need a prompt"),
    ({"prompt": "p", "segments": [{"phrase": "p", "bbox": [0, 0, 1, 1]}]}, "record 1, segment 0: unknown key(s) bbox"),
])
def test_bad_segments_fail_before_model_work(tmp_path, capsys, no_model, bad, message):
    layouts = write_json(tmp_path / "l.json", [dense_record(), bad])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys).startswith(f"error: {layouts}: {message}")


def test_a_segment_phrase_not_in_the_prompt_is_found_before_anything_is_written(tmp_path, capsys):
    layouts = write_json(tmp_path / "l.json", [dense_record(), {"prompt": "a ball", "segments": [
        {"phrase": "tree", "box": [0, 0, 1, 1]}]}])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 1, segment 0.phrase = 'tree': not found in the prompt "
                                  f"'a ball'")
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_multi_instance_out_of_range_is_one_line(tmp_path, capsys, no_model):
    layouts = write_json(tmp_path / "l.json", [record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--multi_instance", "1.5", *FAST]) == 2
    assert error_line(capsys) == "error: --multi_instance = 1.5: out of range (must be in [0, 1])"
