"""Preview grids: what the model generates for some training layouts, beside the real images."""
from __future__ import annotations

import torch
from PIL import Image

from hoi.grid import image_grid
from hoi.records import HOISample
from interact.model import InteractDiffusion
from interact.pipeline import InteractDiffusionPipeline, draw_layout, to_pil


@torch.no_grad()
def preview_grid(model: InteractDiffusion, device: torch.device, samples: list[HOISample]) -> Image.Image:
    """One row per sample: the generated image (seed 0) and the real one, each with its layout drawn."""
    size = samples[0].image.shape[-1]
    pipe = InteractDiffusionPipeline(model, device)
    images = pipe([s.caption for s in samples], [s.interactions for s in samples], height=size, width=size,
                  seed=0, progress=False)
    tiles = []
    for s, image in zip(samples, images):
        tiles += [draw_layout(image, s.interactions), draw_layout(to_pil((s.image + 1) / 2), s.interactions)]
    return image_grid(tiles, columns=2)
