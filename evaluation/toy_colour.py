"""Where the toy world's key colours landed: for each category a layout names (subjects and
objects), the fraction of the image's pixels of that category's key colour that lie inside the
layout's boxes of that category. Every toy category has one flat colour (dataset/toy/categories.py),
so this needs no detector: it measures placement even when shapes are too rough to detect.
Real toy images score 1 (each figure is drawn exactly inside its box)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from hoi.records import Interaction

# A pixel is of a key colour when within this Euclidean RGB distance of it: the key colours are
# at least 60 apart from each other and from the pastel backgrounds.
COLOUR_TOLERANCE = 40.0


def key_colour_inside(image: np.ndarray, interactions: Sequence[Interaction],
                      colours: dict[str, tuple[int, int, int]]) -> list[float]:
    """image uint8 [H, W, 3]; one fraction per category of the layout with any pixel of its
    colour (a category drawn nowhere gives no number: the detector's recall covers that)."""
    h, w = image.shape[:2]
    boxes: dict[str, list] = {}
    for it in interactions:
        boxes.setdefault(it.subject, []).append(it.subject_box)
        boxes.setdefault(it.object, []).append(it.object_box)
    pixels = image.astype(np.float64)
    out = []
    for name, category_boxes in boxes.items():
        colour = np.asarray(colours[name], dtype=np.float64)
        hit = np.linalg.norm(pixels - colour, axis=-1) <= COLOUR_TOLERANCE
        if not hit.any():
            continue
        inside = np.zeros((h, w), dtype=bool)
        for x0, y0, x1, y1 in category_boxes:
            inside[int(np.floor(y0 * h)):int(np.ceil(y1 * h)), int(np.floor(x0 * w)):int(np.ceil(x1 * w))] = True
        out.append(float((hit & inside).sum() / hit.sum()))
    return out
