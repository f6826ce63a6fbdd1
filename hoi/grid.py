"""One image-grid helper for previews, demo grids and figures."""
from __future__ import annotations

import math


def image_grid(images, columns: int):
    """Paste equal-size PIL images row by row, `columns` to a row, on white."""
    from PIL import Image
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid
