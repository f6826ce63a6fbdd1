"""main.py end to end on a generated toy world: a run killed with SIGKILL and started again
ends with the weights of an uninterrupted run; bad flags and configs fail naming the key."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import tiny_train_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_setup(tmp_path_factory):
    """12 toy images at 32 px and a tiny training YAML reading them through the detector-JSON reader."""
    from dataset.toy import generate
    tmp = tmp_path_factory.mktemp("toy")
    generate(tmp / "data", train=12, test=2, size=32, seed=0, workers=1, progress=False)
    config = tiny_train_config(tmp, batch_size=2, total_iters=8, checkpoint_every=2, save_every_iters=4,
                               train_whole_unet=True)
    config.data = {"format": "detector_json", "root": str(tmp / "data"),
                   "train": {"annotations": "annotations/trainval_hico.json", "images": "images/train"},
                   "categories": "annotations/categories.json", "image_size": 16}
    yaml = tmp / "toy_tiny.yaml"
    OmegaConf.save(config, yaml)
    return tmp, yaml


def main_command(yaml, out, name):
    return [sys.executable, str(REPO_ROOT / "main.py"), "--yaml_file", str(yaml), "--name", name,
            "--OUTPUT_ROOT", str(out)]


def run_main(yaml, out, name):
    result = subprocess.run(main_command(yaml, out, name), capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_sigkill_and_restart_ends_with_the_uninterrupted_weights(toy_setup):
    tmp, yaml = toy_setup
    run_main(yaml, tmp / "runs", "straight")

    victim = subprocess.Popen(main_command(yaml, tmp / "runs", "killed"), cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kept = tmp / "runs" / "killed" / "checkpoints" / "checkpoint_00000004.pth"
    deadline = time.time() + 240
    while not kept.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert kept.exists(), "the run ended before it could be killed mid-way"
    assert not (tmp / "runs" / "killed" / "model_final.pth").exists()

    result = run_main(yaml, tmp / "runs", "killed")
    assert "[resume]" in result.stdout
    straight = torch.load(tmp / "runs" / "straight" / "model_final.pth", weights_only=True)
    resumed = torch.load(tmp / "runs" / "killed" / "model_final.pth", weights_only=True)
    assert straight["iters"] == resumed["iters"] == 8
    for key, value in straight["model"].items():
        assert (value - resumed["model"][key]).abs().max() <= 1e-6, key
    start = torch.load(kept, weights_only=True)["model"]
    assert any(not torch.equal(start[k], v) for k, v in resumed["model"].items())


@pytest.mark.slow
def test_bad_flag_and_bad_config_fail_naming_them(toy_setup, tmp_path):
    tmp, yaml = toy_setup
    result = subprocess.run(main_command(yaml, tmp_path, "x") + ["--lr", "-1"], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2 and "train.lr = -1.0" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.read_text().replace("batch_size:", "batchsize:"))
    result = subprocess.run(main_command(bad, tmp_path, "x"), capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120)
    assert result.returncode == 2 and "train.batchsize" in result.stderr
    result = subprocess.run(main_command(yaml, tmp_path, "x") + ["--official_ckpt_name", "nope.ckpt"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2 and "--official_ckpt_name nope.ckpt: no such file" in result.stderr


def test_invalid_yaml_file_is_one_line_naming_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_config: tiny_random.yaml\ntrain:\n  batch_size: [2\n  lr: 0.1\n")
    result = subprocess.run(main_command(broken, tmp_path, "x"), capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {broken}: not valid YAML at line 4: did not find expected ',' or ']'"]


@pytest.mark.parametrize("under", [False, True], ids=["is_a_file", "under_a_file"])
def test_output_root_that_is_a_file_fails_before_any_work(tmp_path, capsys, under):
    import main as train_main
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    output_root = blocker / "deeper" if under else blocker
    # the YAML does not exist: the output root is checked first, before anything is read
    code = train_main.main(["--yaml_file", str(tmp_path / "absent.yaml"), "--OUTPUT_ROOT", str(output_root)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --OUTPUT_ROOT {output_root}: {blocker} is a file, not a folder"]


def test_a_run_folder_without_an_intact_checkpoint_is_one_line(toy_setup, tmp_path, capsys):
    import main as train_main
    _, yaml = toy_setup
    checkpoints = tmp_path / "runs" / "broken" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "latest.pth").write_text("not a checkpoint")
    code = train_main.main(["--yaml_file", str(yaml), "--OUTPUT_ROOT", str(tmp_path / "runs"), "--name", "broken"])
    stderr = capsys.readouterr().err
    # progress bars (the phrase-embedding cache) may come first; the error itself is one line
    err = [line for line in stderr.strip().splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr
    assert err[0].startswith(f"error: {checkpoints}: no intact checkpoint to resume from")
    assert "not a torch (zip/pickle) or safetensors file" in err[0]


def test_train_flags_come_from_the_schema_with_the_reference_aliases():
    import main as train_main
    from hoi.schema import given_flags
    args = train_main.parse_args(["--yaml_file", "x.yaml", "--gradient_accumulation_step", "2",
                                  "--base_learning_rate", "0.25", "--amp", "--enable_ema", "false",
                                  "--OUTPUT_ROOT", "out", "--DATA_ROOT", "data", "--official_ckpt_name", "none",
                                  "--box_attention", "boxes"])
    assert given_flags(args, args.train_flags) == {"grad_accumulation_step": 2, "lr": 0.25, "amp": True,
                                                   "enable_ema": False}
    assert given_flags(args, args.interaction_flags) == {"box_attention": "boxes"}
    assert (args.output_root, args.data_root, args.official_ckpt_name) == ("out", "data", None)
    with pytest.raises(SystemExit):
        train_main.parse_args(["--yaml_file", "x.yaml", "--scheduler_type", "linear"])
