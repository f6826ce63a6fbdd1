"""No file runs code: every reader of the project is fed a pickle whose `__reduce__` would create a
file, and the file must never be created; the reader says in one line what it refused.

Readers: layouts pickles (--input), per-image torch data files (training), checkpoints (--ckpt,
--sd_ckpt, a diffusers folder's .bin, the config peek, inspect, a resume file), LoRA files,
a --text_encoder folder's .bin, phrase caches, feature-extractor and toy-detector weights."""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_batch
from helpers import TINY_CONFIG
from hoi.pickles import PlainUnpickler, RefusedPickle, UnreadablePickle, load_plain_pickle, load_torch, pickle_globals


class CreatesFile:
    """Unpickled, it calls `how(marker)`: what a hostile file does instead of holding data."""

    def __init__(self, marker: Path, how: str = "open"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "created-by-a-pickle"
    yield path
    assert not path.exists(), "a file's pickle ran code"


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err and "weights_only" not in err, err
    return lines[0]


def evil_torch_file(path: Path, marker: Path, payload=None, how="open", legacy=False) -> Path:
    payload = {"model": {"w": torch.zeros(2)}} if payload is None else payload
    torch.save({**payload, "x": CreatesFile(marker, how)}, path, _use_new_zipfile_serialization=not legacy)
    return path


# ----------------------------------------------------------------------------- the readers themselves

@pytest.mark.parametrize("how", ["open", "system"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_load_torch_refuses_and_names_the_callable(tmp_path, marker, how, legacy):
    path = evil_torch_file(tmp_path / "f.pth", marker, how=how, legacy=legacy)
    with pytest.raises(RefusedPickle) as err:
        load_torch(path)
    name = {"open": f"{open.__module__}.open", "system": f"{os.system.__module__}.system"}[how]
    assert err.value.names[0] == name and name in str(err.value)


def test_plain_pickle_is_no_torch_file_and_is_never_unpickled(tmp_path, marker):
    for allow in (False, True):  # not even a trusted one: torch.load would run all of it first
        path = tmp_path / "plain.pkl"
        path.write_bytes(pickle.dumps({"x": CreatesFile(marker)}, protocol=2))
        with pytest.raises(UnreadablePickle, match=r"a plain Python pickle, not a torch file.*asks for .*open"):
            load_torch(path, allow_pickle=allow)


def test_plain_unpickler_rebuilds_data_and_numpy_only(tmp_path, marker):
    data = [{"prompt": "p", "boxes": np.array([[0.1, 0.2, 0.3, 0.4]]), "n": np.float32(2), "s": {1, 2},
             "b": b"\x00\xff", "t": (1, 2.5, None, True)}]
    for protocol in (2, 4, 5):
        back = PlainUnpickler(io.BytesIO(pickle.dumps(data, protocol=protocol))).load()
        assert np.array_equal(back[0]["boxes"], data[0]["boxes"]) and back[0]["n"] == 2
        assert back[0]["s"] == {1, 2} and back[0]["b"] == b"\x00\xff" and back[0]["t"] == (1, 2.5, None, True)
    # The reported hole: builtins.globals and builtins.getattr reach os.system; neither is rebuilt.
    for name in ("globals", "getattr", "eval", "__import__"):
        raw = f"cbuiltins\n{name}\n)R.".encode()
        with pytest.raises(RefusedPickle, match=f"builtins.{name}"):
            PlainUnpickler(io.BytesIO(raw)).load()
    path = tmp_path / "l.pkl"
    path.write_bytes(pickle.dumps([CreatesFile(marker, "system")]))
    with pytest.raises(RefusedPickle, match="system"):
        load_plain_pickle(path)
    assert pickle_globals(path.read_bytes()) == [f"{os.system.__module__}.system"]


# ----------------------------------------------------------------------------- command lines and libraries

def write_layouts_pickle(path: Path, marker: Path) -> Path:
    record = {"prompt": "a person", "subject_phrases": ["person"], "action_phrases": ["holding"],
              "object_phrases": ["cup"], "subject_boxes": [[0.1, 0.1, 0.5, 0.9]],
              "object_boxes": [[0.4, 0.4, 0.6, 0.6]], "note": CreatesFile(marker, "system")}
    path.write_bytes(pickle.dumps([record]))
    return path


def run_batch_cli(capsys, tmp_path, *argv) -> str:
    layouts = tmp_path / "l.json"
    if not layouts.exists():
        layouts.write_text(json.dumps([{"prompt": "a cat", "phrases": [], "boxes": []}]))
    code = inference_batch.main([str(a) for a in ("--input", layouts, "--folder", tmp_path / "out", "--steps", "1",
                                                  "--height", "32", "--width", "32", "--device", "cpu", *argv)])
    assert code == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return error_line(capsys)


def test_layouts_pickle(tmp_path, marker, capsys):
    path = write_layouts_pickle(tmp_path / "l.pkl", marker)
    line = run_batch_cli(capsys, tmp_path, "--input", path)
    assert line.startswith(f"error: --input {path}: holds a Python object") and ".system" in line
    assert "--allow-pickle" in line


@pytest.mark.parametrize("flag", ["--ckpt", "--sd_ckpt", "--lora"])
def test_weights_flags(tmp_path, marker, capsys, flag):
    path = evil_torch_file(tmp_path / "w.pth", marker)
    argv = ["--config", TINY_CONFIG, flag, path] + (["--ckpt", evil_torch_file(tmp_path / "c.pth", marker)]
                                                    if flag == "--sd_ckpt" else [])
    line = run_batch_cli(capsys, tmp_path, *argv)
    assert "holds a Python object beyond tensors" in line and ".open" in line and "--allow-pickle" in line


def test_diffusers_folder_bin(tmp_path, marker, capsys):
    folder = tmp_path / "model"
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        (folder / part).mkdir(parents=True)
        (folder / part / "config.json").write_text("{}")
        evil_torch_file(folder / part / f"{stem}.bin", marker, payload={"w": torch.zeros(2)})
    line = run_batch_cli(capsys, tmp_path, "--config", TINY_CONFIG, "--ckpt", folder)
    assert ".bin: holds a Python object" in line and "--allow-pickle" in line
    from interact.checkpoint.diffusers_folder import peek_kind
    assert peek_kind(folder) == "unknown"


def test_text_encoder_folder_bin(tmp_path, marker, capsys):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "hidden_size": 32,
                                                    "intermediate_size": 37, "num_attention_heads": 4,
                                                    "num_hidden_layers": 2, "vocab_size": 49408}))
    evil_torch_file(folder / "pytorch_model.bin", marker, payload={"text_model.w": torch.zeros(2)})
    ckpt = tmp_path / "c.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, ckpt)
    line = run_batch_cli(capsys, tmp_path, "--config", TINY_CONFIG, "--ckpt", ckpt, "--text_encoder", folder)
    assert line.startswith(f"error: --text_encoder {folder}: {folder / 'pytorch_model.bin'}: holds a Python object")


def test_inspect_peek_and_resume(tmp_path, marker, capsys):
    from interact.checkpoint import CheckpointError
    from interact.checkpoint.cli import main as checkpoint_cli
    from interact.checkpoint.diffusers_folder import peek_kind
    from interact.trainer.checkpointing import RunPaths, read_resume_checkpoint
    path = evil_torch_file(tmp_path / "w.pth", marker)
    assert peek_kind(path) == "unknown"
    assert checkpoint_cli(["inspect", str(path)]) == 2
    assert "holds a Python object beyond tensors" in error_line(capsys)
    assert checkpoint_cli(["pack", str(path), str(tmp_path / "packed.pth")]) == 2
    assert "holds a Python object beyond tensors" in error_line(capsys)
    run = RunPaths(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    evil_torch_file(run.latest, marker)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from .*holds a Python object"):
        read_resume_checkpoint(run, log=lambda line: None)


def write_data_files(folder: Path, marker: Path | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    item = {"subject_xywh": [1, 1, 4, 4], "object_xywh": [5, 5, 3, 3], "subject": "person", "object": "cup",
            "action": "hold", "subject_embedding": np.zeros(4, np.float32)}
    torch.save({"image": Image.new("RGB", (10, 10)), "caption": "c", "hois": [item]}, folder / "a.jpg.pth")
    jpeg = io.BytesIO()
    Image.new("RGB", (10, 10), (200, 10, 10)).save(jpeg, format="JPEG")
    torch.save({"image": Image.open(io.BytesIO(jpeg.getvalue())), "hois": [item]}, folder / "b.jpg.pth")
    if marker is not None:
        torch.save({"image": Image.new("RGB", (10, 10)), "hois": [item], "x": CreatesFile(marker)},
                   folder / "c.jpg.pth")
    return folder


def test_training_data_torch_files(tmp_path, marker):
    from dataset.hico import read_torch_files
    from dataset.hoi_dataset import load_image
    from hoi.records import DataError
    good, _ = read_torch_files(write_data_files(tmp_path / "good", None), inline_images=False)
    assert [r.key for r in good] == ["a.jpg", "b.jpg"]  # PIL images (any format) and numpy arrays are data
    assert load_image(good[1]).getpixel((0, 0))[0] > 150
    folder = write_data_files(tmp_path / "data", marker)
    with pytest.raises(DataError, match=r"c\.jpg\.pth: holds a Python object .*open.*--allow-pickle"):
        read_torch_files(folder)
    (folder / "c.jpg.pth").replace(tmp_path / "good" / "a.jpg.pth")  # read lazily, after the check
    with pytest.raises(DataError, match=r"a\.jpg\.pth: holds a Python object"):
        load_image(good[0])


def test_phrase_cache(tmp_path, marker, tiny_model):
    from interact.phrase_cache import PhraseEmbeddingCache
    path = evil_torch_file(tmp_path / "phrases.pt", marker, payload={"fingerprint": "x", "phrases": [],
                                                                     "embeddings": torch.zeros(0)})
    with pytest.raises(ValueError, match=r"phrase cache .*phrases\.pt: holds a Python object .*delete it"):
        PhraseEmbeddingCache(tiny_model.text_encoder, path, fingerprint="x")


def test_feature_and_detector_weights(tmp_path, marker, capsys):
    from evaluation import fid_kid
    from evaluation.toy_detector import ToyHOIDetector
    path = evil_torch_file(tmp_path / "w.pth", marker, payload={"state_dict": {"w": torch.zeros(1)}})
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32)).save(images / f"{i}.png")
    for extractor in ("inception", "toy"):
        code = fid_kid.main(["--real", str(images), "--fake", str(images), "--extractor", extractor, "--weights",
                             str(path), "--device", "cpu"])
        assert code == 1
        line = error_line(capsys)
        assert "refused: it holds a Python object" in line and "a weights file holds tensors only" in line
    with pytest.raises(ValueError, match="holds a Python object"):
        ToyHOIDetector.load(path)


def test_config_targets_are_model_classes_of_this_project(tmp_path, marker):
    """A config names the classes it builds: a YAML file cannot make it call anything else."""
    from omegaconf import OmegaConf

    from interact.model import build_model, load_config
    config = load_config(TINY_CONFIG)
    for target, params, why in (("subprocess.call", {"args": ["touch", str(marker)]}, "not a class of this project"),
                                ("interact.checkpoint.formats.read_file", {"path": "x"}, "not a model part")):
        bad = OmegaConf.merge(config, {"diffusion": {"target": target, "params": params}})
        path = tmp_path / "bad.yaml"
        OmegaConf.save(bad, path)
        with pytest.raises(ValueError, match=f"config target '{target}': {why}"):
            build_model(load_config(path), device="meta")
