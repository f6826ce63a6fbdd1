"""The shipped toy model (assets/toy_interactdiffusion.pth): small, loads into the toy config,
and draws the example layouts well enough for the toy detector to find their interactions."""
import pytest
import torch

from interact.batch import DEFAULT_CKPT, DEFAULT_CONFIG, DEFAULT_TOY_INPUT
from interact.checkpoint import read_file

pytestmark = pytest.mark.skipif(not DEFAULT_CKPT.is_file(), reason=f"{DEFAULT_CKPT} missing (scripts/train_toy.sh)")


def test_shipped_checkpoint_is_small_packed_and_complete():
    raw = read_file(DEFAULT_CKPT)
    assert DEFAULT_CKPT.stat().st_size < 6 * 2**20
    assert set(raw) >= {"model", "config_dict"} and "text_encoder" not in raw and "diffusion" not in raw
    assert all(v.dtype == torch.float16 for v in raw["model"].values() if v.is_floating_point())
    # Trained: the fusers' gates moved away from their zero initialisation.
    gates = [float(v) for k, v in raw["model"].items() if k.endswith(".alpha_attn")]
    assert gates and max(abs(g) for g in gates) > 0.1


def test_embedded_default_draws_the_example_layouts(tmp_path):
    from evaluation.toy_score import toy_score
    from inference_batch import main
    assert main(["--folder", str(tmp_path), "--device", "cpu"]) == 0  # embedded model, toy layouts
    result, _ = toy_score(tmp_path, DEFAULT_TOY_INPUT)
    assert result.summary["default"]["full"] >= MIN_DEMO_SCORE, result.summary
