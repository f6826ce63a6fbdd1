"""The reference preprocessing (docs/reference.md §4): record + image -> training sample.

Shorter side to `size` (bicubic), centre crop size x size, optional horizontal flip, boxes
clipped to the crop, boxes under `min_area` of the crop dropped (and every interaction
that uses one), then the `max_interactions` largest interactions, largest first.

Boxes are pixel-edge boxes: x runs over [0, W], so a box covering pixel columns a..b-1
is (a, b). With that convention the flip x -> S - x is exact and its own inverse.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dataset.sample import HOIRecord, RawHOI
from hoi.captions import caption_from_triplets
from hoi.records import HOISample
from hoi.records import Interaction, MAX_INTERACTIONS

Box = tuple[float, float, float, float]


def resize_and_crop_geometry(width: int, height: int, size: int):
    """-> (resized (w, h), crop offset (left, top)): shorter side to `size`, centre crop;
    an odd leftover puts the extra pixel on the right/bottom (offset = floor)."""
    scale = size / min(width, height)
    # The shorter side must come out exactly `size` whatever the rounding of the other.
    new_w = size if width <= height else max(size, round(width * scale))
    new_h = size if height < width else max(size, round(height * scale))
    return (new_w, new_h), ((new_w - size) // 2, (new_h - size) // 2)


def transform_box(box: Box, width: int, height: int, size: int, flip: bool) -> Box:
    """Map a pixel box of the original image into the size x size crop (clipped, maybe flipped)."""
    (new_w, new_h), (left, top) = resize_and_crop_geometry(width, height, size)
    sx, sy = new_w / width, new_h / height  # the actual per-axis factors of the pixel grid
    x0, y0, x1, y1 = box
    x0, x1 = [min(max(x * sx - left, 0.0), float(size)) for x in (x0, x1)]
    y0, y1 = [min(max(y * sy - top, 0.0), float(size)) for y in (y0, y1)]
    if flip:
        x0, x1 = size - x1, size - x0
    return x0, y0, x1, y1


def _area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, RGBA, CMYK, P, ...) -> RGB; alpha is dropped."""
    if image.mode == "RGB":
        return image
    # Palette images may carry transparency: PIL wants them expanded through RGBA first.
    return image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA") else image.convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image (any mode) -> float32 [3, H, W] in [-1, 1], RGB."""
    array = np.asarray(to_rgb(image), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def preprocess(record: HOIRecord, image: Image.Image, size: int = 512, flip: bool = False,
               min_area: float = 0.001, max_interactions: int = MAX_INTERACTIONS) -> HOISample:
    """Record + its image -> HOISample.

    Interactions are ranked by subject area + object area after clipping (the pixels
    the pair covers, counting overlap twice: cheap and stable), largest first; ties keep
    the annotation order. The caption is the record's, or one built from the kept
    triplets in annotation order."""
    from hoi.records import DataError

    if image.size != (record.width, record.height):
        raise DataError(f"{record.key}: image is {image.size[0]}x{image.size[1]} but its annotation says "
                        f"{record.width}x{record.height}")
    (new_w, new_h), (left, top) = resize_and_crop_geometry(record.width, record.height, size)
    image = to_rgb(image).resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size, top + size))
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)

    min_pixels = min_area * size * size
    kept: list[tuple[float, int, RawHOI, Box, Box]] = []
    for i, hoi in enumerate(record.hois):
        boxes = [transform_box(b, record.width, record.height, size, flip) for b in (hoi.subject_box, hoi.object_box)]
        # A box with nothing left inside the crop has area 0 and goes even when min_area is 0.
        if all(_area(b) > 0 and _area(b) >= min_pixels for b in boxes):
            kept.append((_area(boxes[0]) + _area(boxes[1]), i, hoi, boxes[0], boxes[1]))
    kept = sorted(kept, key=lambda k: (-k[0], k[1]))[:max_interactions]

    normalise = lambda box: tuple(min(max(v / size, 0.0), 1.0) for v in box)  # noqa: E731
    interactions = [Interaction(hoi.subject, hoi.action, hoi.object, normalise(sb), normalise(ob))
                    for _, _, hoi, sb, ob in kept]
    caption = record.caption
    if caption is None:
        caption = caption_from_triplets([hoi for _, _, hoi, _, _ in sorted(kept, key=lambda k: k[1])])
    return HOISample(record.key, image_to_tensor(image), caption, interactions)
