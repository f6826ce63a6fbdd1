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
    # Trained: the fusers' output layers moved away from their zero initialisation (fuser_init zero_outputs).
    outputs = [v for k, v in raw["model"].items() if k.endswith("fuser.attn.to_out.0.weight")]
    assert outputs and all(float(v.abs().max()) > 0 for v in outputs)


def test_embedded_default_generates_toy_world_images(tmp_path):
    """No --ckpt: the toy model, the toy layouts, a grid; its images have the toy world's light
    pastel backgrounds (a randomly initialised model gives mid-grey noise)."""
    import numpy as np
    from PIL import Image

    from inference_batch import main
    assert main(["--folder", str(tmp_path), "--device", "cpu", "--grid", str(tmp_path / "grid.png")]) == 0
    images = sorted(tmp_path.glob("0000?.png"))
    assert len(images) == 6 and (tmp_path / "grid.png").is_file()
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in images])
    assert pixels.shape[1:] == (64, 64, 3)
    assert float(np.median(pixels)) > 0.7, float(np.median(pixels))
