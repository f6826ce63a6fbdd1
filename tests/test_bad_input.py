"""Bad input as a hostile new user gives it: each case ends in one line naming the field and value
(exit 2, no traceback) before anything is written, or is read as the user meant it; nothing is
left half-written as if complete."""
from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import inference_batch
from helpers import REPO_ROOT, TINY_CONFIG, open_gates, write_json
from helpers import layout_record as interaction_record
from interact.checkpoint import CheckpointError, save_checkpoint
from interact.pipeline import InteractDiffusionPipeline

TINY = str(TINY_CONFIG)
FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]


def phrase_record(n=1):
    return {"prompt": "a cup", "phrases": ["cup"] * n, "boxes": [[0.1, 0.1, 0.5, 0.5]] * n}


def run(argv) -> int:
    return inference_batch.main([str(a) for a in argv])


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded: the checks under test come before it."""
    import interact.batch

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")
    monkeypatch.setattr(interact.batch, "load_pipeline", refuse)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=3, device="cpu")
    open_gates(pipe.model, 0.7, 0.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, pipe.model)
    return path


@pytest.fixture(scope="module")
def gligen(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny GLIGEN config, a checkpoint of it)."""
    config = OmegaConf.load(TINY)
    config.interaction.position_net.target = "interact.controls.phrases.GLIGENPositionNet"
    folder = tmp_path_factory.mktemp("gligen")
    OmegaConf.save(config, folder / "gligen.yaml")
    pipe = InteractDiffusionPipeline.from_config(folder / "gligen.yaml", seed=5, device="cpu")
    save_checkpoint(folder / "gligen.pth", pipe.model)
    return folder / "gligen.yaml", folder / "gligen.pth"


# ----------------------------------------------------------------------------- records

def test_a_record_with_interactions_and_phrases_is_refused(tmp_path, capsys, no_model):
    layouts = write_json(tmp_path / "l.json", [{**interaction_record(), **phrase_record()}])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 0: has both interactions (subject_phrases, ...) and "
                                  f"phrases and boxes; give one of them per record (they are alternative inputs of "
                                  f"one kind)")


def test_every_record_is_checked_against_the_model_before_anything_is_written(tmp_path, capsys, gligen):
    layouts = write_json(tmp_path / "l.json", [interaction_record(), phrase_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 1: phrases and boxes are GLIGEN's input; this "
                                  f"InteractDiffusion model takes interactions (subject_phrases, ...)")
    assert nothing_written(tmp_path / "out")
    # 16 interactions with distinct subjects and objects are 32 GLIGEN phrases, two more than its slots
    many = interaction_record("many", n=16)
    many["subject_boxes"] = [[0.01 * i, 0.1, 0.5, 0.9] for i in range(16)]
    many["object_boxes"] = [[0.4, 0.01 * i, 0.6, 0.6] for i in range(16)]
    layouts = write_json(tmp_path / "m.json", [phrase_record(), many])
    config, ckpt = gligen
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", config, "--ckpt", ckpt, *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 1: 32 phrases (the distinct subjects and objects of "
                                  f"its 16 interactions), at most 30 for this GLIGEN model")
    assert nothing_written(tmp_path / "out")


def test_text_that_is_not_unicode_is_refused_before_the_model(tmp_path, capsys, no_model):
    layouts = tmp_path / "l.json"
    layouts.write_text('[{"prompt": "a \\ud800 cup", "phrases": [], "boxes": []}]')
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 0: prompt = 'a \\ud800 cup': not valid Unicode text (a "
                                  f"lone surrogate '\\ud800' at character 2)")
    layouts.write_text(json.dumps([interaction_record(subject_phrases=["per\udcffson"])]))
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert "interaction 0: subject_phrases = 'per\\udcffson': not valid Unicode text" in error_line(capsys)
    layouts.write_text(json.dumps([phrase_record()]))
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--negative_prompt", "bad\udcff", *FAST]) == 2
    assert "--negative_prompt = 'bad\\udcff': not valid Unicode text" in error_line(capsys)


def test_polygon_points_given_as_strings(tmp_path, capsys, no_model):
    record = {"prompt": "a red ball", "segments": [{"phrase": "ball", "polygon": [["0.1", "0.1"], [0.9, 0.1],
                                                                                 [0.5, 0.9]]}]}
    layouts = write_json(tmp_path / "l.json", [record])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == (f"error: {layouts}: record 0, segment 0.polygon = [['0.1', '0.1'], [0.9, 0.1], "
                                  f"[0.5, 0.9]]: expected normalised [x, y] points (numbers)")


def test_a_huge_rle_size_is_checked_before_it_is_decoded(tmp_path, capsys, no_model):
    record = {"prompt": "a red ball", "segments": [{"phrase": "ball",
                                                    "rle": {"size": [200000, 200000], "counts": [4 * 10**10]}}]}
    layouts = write_json(tmp_path / "l.json", [record])
    assert run(["--input", layouts, "--folder", tmp_path / "out", *FAST]) == 2  # no 40 GB allocation
    assert error_line(capsys) == (f"error: {layouts}: record 0, segment 0.rle.size = [200000, 200000] (height x "
                                  f"width) does not match the image, 32x32")


def test_layouts_files_as_editors_write_them(tmp_path, capsys, no_model, monkeypatch):
    folder = tmp_path / "layouts"
    folder.mkdir()
    assert run(["--input", folder, "--folder", tmp_path / "out", *FAST]) == 2
    assert error_line(capsys) == f"error: --input {folder}: is a folder; give a layouts file (.json, .jsonl or .pkl)"
    import interact.batch
    seen = []
    monkeypatch.setattr(interact.batch, "precheck_records", lambda parsed, *a: seen.append(parsed))
    monkeypatch.setattr(interact.batch, "check_writable_folder", lambda *a: (_ for _ in ()).throw(
        interact.batch.BatchError("stop here")))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps([interaction_record()]).encode())
    assert run(["--input", bom, "--folder", tmp_path / "out", *FAST]) == 2 and error_line(capsys) == "error: stop here"
    assert seen[0][0].record["prompt"] == "a person holding a cup"


def test_dense_flags_without_segments_are_reported(tmp_path, capsys):
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--dense_steps", "0.5",
                "--dense_cross_weight", "2", *FAST]) == 0
    assert (f"warning: --dense_cross_weight, --dense_steps: no record of {layouts} has segments, which these flags "
            f"act on (DenseDiffusion); they are not used") in capsys.readouterr().err


# ----------------------------------------------------------------------------- outputs

def test_grid_or_layouts_where_a_record_is_written(tmp_path, capsys, no_model):
    out = tmp_path / "out"
    out.mkdir()
    layouts = write_json(out / "00000.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", out, "--overwrite", *FAST]) == 2
    assert error_line(capsys) == (f"error: --input {layouts}: is where record 0's sidecar is written in --folder "
                                  f"{out}; give another --folder or move the layouts file")
    assert json.loads(layouts.read_text())[0]["prompt"] == "a person holding a cup"
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", out, "--grid", out / "00000.png", *FAST]) == 2
    assert error_line(capsys) == (f"error: --grid {out / '00000.png'}: is where record 0's image is written in "
                                  f"--folder {out}; give another --grid path")


def test_folder_that_is_a_loop_of_links(tmp_path, capsys, no_model):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", loop, *FAST]) == 2
    assert error_line(capsys) == (f"error: --folder {loop}: {loop} is a symbolic link that leads nowhere (a missing "
                                  f"target or a loop of links)")


def limited_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_in_batch_generation_leaves_nothing_as_if_complete(tmp_path):
    """The overlay does not fit (a file size limit stands in for a full disk): one line naming it,
    the record has no sidecar, and --redo-interrupted finishes it once there is room."""
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO_ROOT / "inference_batch.py"), "--input", str(layouts), "--folder", str(out),
            "--config", TINY, *FAST]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=limited_file_size(5000))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert errors == [f"error: --folder {out}: cannot write 00000_layout.png (File too large); the record is left "
                      f"unfinished (no sidecar): free space, then rerun with --no-overwrite --redo-interrupted"]
    assert sorted(p.name for p in out.iterdir()) == ["00000.png"]
    proc = subprocess.run(argv + ["--no-overwrite", "--redo-interrupted"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["00000.json", "00000.png", "00000_layout.png"]


@pytest.mark.slow
def test_a_full_disk_in_training_is_one_line_and_resumable(tmp_path):
    from dataset.toy import generate
    from helpers import tiny_train_config
    generate(tmp_path / "data", train=8, test=2, size=32, seed=0, workers=1, progress=False)
    config = tiny_train_config(tmp_path, batch_size=2, total_iters=2, checkpoint_every=1)
    config.data = {"format": "detector_json", "root": str(tmp_path / "data"), "image_size": 16,
                   "train": {"annotations": "annotations/trainval_hico.json", "images": "images/train"},
                   "categories": "annotations/categories.json"}
    yaml = tmp_path / "train.yaml"
    OmegaConf.save(config, yaml)
    argv = [sys.executable, str(REPO_ROOT / "main.py"), "--yaml_file", str(yaml), "--name", "r", "--OUTPUT_ROOT",
            str(tmp_path / "runs"), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=limited_file_size(30000))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {checkpoints / 'latest.pth'}: cannot write ("), errors
    assert errors[0].endswith("the newest intact checkpoint is kept: free space and rerun the same command to resume")
    assert not (checkpoints / "latest.pth").exists() and not list(checkpoints.glob(".*"))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (checkpoints / "latest.pth").exists()


# ----------------------------------------------------------------------------- weights and LoRA

def test_an_interactdiffusion_file_as_sd_ckpt_alone(tmp_path, capsys, tiny_ckpt):
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--sd_ckpt", tiny_ckpt,
                *FAST]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --sd_ckpt {tiny_ckpt}: holds a layout control (InteractDiffusion checkpoint")
    assert line.endswith("pass it as --ckpt (a --sd_ckpt file alone generates plain Stable Diffusion, layouts "
                         "ignored)")
    assert nothing_written(tmp_path / "out")


TINY_TO_Q = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", (32, 32))
TOY_TO_Q = ("lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q", (96, 96))  # LDM's names, kohya style


def test_an_sd_file_alone_says_it_leaves_the_layouts_unused(tmp_path, capsys, tiny_ckpt):
    from helpers import sd_original_file
    from interact.checkpoint import read_file
    from interact.model import build_model, load_config
    model = build_model(load_config(TINY), device="meta")
    model.unet.load_state_dict(read_file(tiny_ckpt)["model"], strict=False, assign=True)
    for name in ("autoencoder", "text_encoder"):
        model.section(name).load_state_dict(read_file(tiny_ckpt)[name], assign=True)
    sd = sd_original_file(model, tmp_path / "sd.ckpt")
    layouts = write_json(tmp_path / "l.json", [interaction_record(), phrase_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--sd_ckpt", sd, *FAST]) == 0
    assert (f"warning: {layouts}: 2 record(s) have interactions or phrases, which plain Stable Diffusion (an SD "
            f"file alone, no --ckpt) does not use" in capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[:2] == ["00000.json", "00000.png"]


def write_lora(path: Path, target=TINY_TO_Q, scale=0.5, rank=2, down_rank=None) -> Path:
    from safetensors.torch import save_file
    name, (out_features, in_features) = target
    g = torch.Generator().manual_seed(0)
    save_file({f"{name}.lora_up.weight": torch.randn(out_features, rank, generator=g) * scale,
               f"{name}.lora_down.weight": torch.randn(down_rank or rank, in_features, generator=g)}, str(path))
    return path


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_lora_weight_must_be_finite(tmp_path, capsys, no_model, weight):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--lora", f"{lora}:{weight}", *FAST]) == 2
    assert error_line(capsys) == (f"error: --lora {lora}:{weight}: weight '{weight}' must be a finite number "
                                  f"(FILE[:weight], e.g. style.safetensors:0.8)")


def test_lora_file_missing_or_malformed(tmp_path, capsys):
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    missing = tmp_path / "missing.safetensors"
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--lora", missing, *FAST]) == 2
    assert error_line(capsys) == f"error: --lora {missing}: no such file"
    ranks = write_lora(tmp_path / "ranks.safetensors", rank=2, down_rank=3)
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--lora", ranks, *FAST]) == 2
    assert error_line(capsys) == (f"error: --lora {ranks}: lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
                                  f"attn1_to_q: up (32, 2) and down (3, 32) do not share a rank (up's second and "
                                  f"down's first size must be equal)")
    from safetensors.torch import save_file
    lone = tmp_path / "lone.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, str(lone))
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--lora", lone, *FAST]) == 2
    assert error_line(capsys) == f"error: --lora {lone}: lora_unet_x: has .lora_up.weight but no .lora_down.weight"
    assert nothing_written(tmp_path / "out")


def test_lora_on_every_model_and_in_the_sidecar(tmp_path, capsys):
    """--lora merges into a random --config model and into the embedded one too; the sidecar names
    each LoRA by digest and weight, so a resume with another weight is another run."""
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    lora = write_lora(tmp_path / "style.safetensors", scale=5.0)
    images = {}
    for name, extra in (("plain", []), ("lora", ["--lora", lora]), ("half", ["--lora", f"{lora}:0.5"])):
        assert run(["--input", layouts, "--folder", tmp_path / name, "--config", TINY, "--seed", "1", *extra,
                    *FAST]) == 0
        images[name] = np.asarray(Image.open(tmp_path / name / "00000.png")).astype(int)
    assert np.abs(images["lora"] - images["plain"]).max() > 0 and np.abs(images["half"] - images["lora"]).max() > 0
    ids = json.loads((tmp_path / "lora" / "00000.json").read_text())["checkpoint"]["lora"]
    assert [(i["path"], i["weight"], len(i["sha256_12"])) for i in ids] == [(str(lora), 1.0, 12)]
    capsys.readouterr()
    assert run(["--input", layouts, "--folder", tmp_path / "lora", "--config", TINY, "--seed", "1", "--lora",
                f"{lora}:0.5", "--no-overwrite", *FAST]) == 0
    assert "record 0 left as it is: 00000.json was made by another model (or LoRA)" in capsys.readouterr().err
    toy = write_json(tmp_path / "toy.json", json.loads((REPO_ROOT / "examples" / "toy_layouts.json").read_text())[:1])
    toy_lora = write_lora(tmp_path / "toy_style.safetensors", TOY_TO_Q, scale=3.0)
    for name, extra in (("toy", []), ("toy_zero", ["--lora", f"{toy_lora}:0"]), ("toy_lora", ["--lora", toy_lora])):
        assert run(["--input", toy, "--folder", tmp_path / name, "--steps", "5", *extra]) == 0
    pixels = {name: np.asarray(Image.open(tmp_path / name / "00000.png")).astype(int)
              for name in ("toy", "toy_zero", "toy_lora")}
    assert np.array_equal(pixels["toy"], pixels["toy_zero"]) and np.abs(pixels["toy_lora"] - pixels["toy"]).max() > 0
    assert f"LoRA {toy_lora}:1" in json.loads((tmp_path / "toy_lora" / "00000.json").read_text())["model"]


def test_weights_files_that_are_not_what_they_claim(tmp_path, capsys, gligen):
    from interact.checkpoint.loading import load_weights
    from interact.model import build_model, load_config
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"model": {}}, protocol=2))
    layouts = write_json(tmp_path / "l.json", [interaction_record()])
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--ckpt", plain, *FAST]) == 2
    assert error_line(capsys) == (f"error: {plain}: a plain Python pickle, not a torch file (torch.save files are "
                                  f"zip archives or start with torch's magic number)")
    text_file = tmp_path / "encoder.txt"
    text_file.write_text("x")
    assert run(["--input", layouts, "--folder", tmp_path / "out", "--config", TINY, "--ckpt", plain,
                "--text_encoder", text_file, *FAST]) == 2
    assert error_line(capsys) == (f"error: --text_encoder {text_file}: is a file; give a Hugging Face CLIP text model "
                                  f"folder (config.json + model.safetensors or pytorch_model.bin)")
    # A GLIGEN file of a size no shipped config has: the hint says so, and what to write
    config, ckpt = gligen
    raw = torch.load(ckpt, weights_only=False)
    raw["model"] = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k == "position_net.linears.0.weight" else v
                    for k, v in raw["model"].items()}
    odd = tmp_path / "odd_gligen.pth"
    torch.save(raw, odd)
    for purpose, use in (("generate", "pass --config"), ("train", "set the training YAML's model_config: to")):
        with pytest.raises(CheckpointError) as err:
            load_weights(build_model(load_config(config), device="meta"), odd, purpose=purpose)
        first, *_, last = str(err.value).splitlines()
        assert first == (f"{odd}: does not match the model config (no config in configs/ fits its tensors: it is "
                         f"of another size or architecture):")
        assert last == (f"(write a model config of the file's size ({use} it); `python -m interact.checkpoint inspect "
                        f"{odd}` lists every difference)")


def test_training_takes_a_diffusers_folder():
    import main
    assert main.resolve_weights(str(REPO_ROOT / "configs"), None, "--ckpt") == REPO_ROOT / "configs"
    with pytest.raises(FileNotFoundError, match="--ckpt nope: no such file or folder"):
        main.resolve_weights("nope", None, "--ckpt")


# ----------------------------------------------------------------------------- export, metrics, the table

def test_export_paths(tmp_path, capsys):
    from interact.checkpoint.cli import main as checkpoint_cli
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert checkpoint_cli(["export", str(blocker / "out")]) == 2
    assert error_line(capsys) == f"error: export to {blocker / 'out'}: {blocker} is a file, not a folder"
    stale = tmp_path / "new" / "parent" / ".toy.tmp-999999999"   # what a killed export leaves
    (stale / "unet").mkdir(parents=True)
    out = tmp_path / "new" / "parent" / "toy"
    assert checkpoint_cli(["export", str(out)]) == 0   # the missing parents are made
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]
    # the folder carries its config: inspect needs no --config; a wrong one says what to do
    assert checkpoint_cli(["inspect", str(out)]) == 0
    assert f"loads strictly into {out / 'interactdiffusion_config.yaml'}" in capsys.readouterr().out
    assert checkpoint_cli(["inspect", str(out), "--config", str(REPO_ROOT / "configs" / "sd_v1_interact.yaml")]) == 2
    assert error_line(capsys).endswith(f"such as the toy model (configs/toy_model.yaml); the folder carries its own "
                                       f"config ({out / 'interactdiffusion_config.yaml'}): leave --config out")


@pytest.mark.slow
def test_a_full_disk_in_export_leaves_nothing(tmp_path):
    out = tmp_path / "toy"
    proc = subprocess.run([sys.executable, "-m", "interact.checkpoint", "export", str(out)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO_ROOT, timeout=300,
                          preexec_fn=limited_file_size(1_000_000))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert errors == [f"error: {out}: cannot be written (Error while serializing: I/O error: File too large (os error "
                      f"27)); nothing was left behind"]
    assert list(tmp_path.iterdir()) == []


def test_fid_inputs(tmp_path, capsys):
    from evaluation import fid_kid
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(images / f"{i}.png")
    a_file = images / "0.png"
    assert fid_kid.main(["--real", str(images), "--fake", str(a_file), "--extractor", "toy"]) == 1
    assert error_line(capsys) == f"error: {a_file}: is a file; expected a folder of images"
    assert fid_kid.main(["--real", str(images), "--fake", str(images), "--protocol", "interactdiffusion",
                         "--weights", str(tmp_path / "not-read.pth")]) == 1
    assert error_line(capsys) == (f"error: --real {images}: 3 images; --protocol interactdiffusion computes KID on "
                                  f"subsets of 1000 images, so each folder needs at least that many (leave --protocol "
                                  f"out to compute FID and KID on fewer, with smaller subsets)")


def test_table_data_folder_must_exist_or_be_made_on_purpose(tmp_path, capsys):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import reproduce_table
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    typo = tmp_path / "dta" / "toy"
    assert reproduce_table.main(["--world", "toy", "--data", str(typo), "--runs", str(tmp_path / "runs"),
                                 "--out", str(tmp_path / "table")]) == 2
    assert error_line(capsys) == (f"error: --data {typo}: does not exist; pass --make-data to generate the toy world "
                                  f"there (20000 train + 1000 test images), or give the folder that holds it")
    assert not typo.exists()
