"""Drawing a control's part of the layout overlay: a box outline with a filled label."""
from __future__ import annotations


def draw_box(draw, box, label: str, colour: tuple[int, int, int], size: tuple[int, int],
             label_below: bool = False) -> None:
    """Outline normalised xyxy `box` on a PIL ImageDraw of `size` (width, height), its label in
    the top-left corner (bottom-left with `label_below`, so two boxes' labels do not cover each other)."""
    w, h = size
    x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    draw.rectangle([x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)], outline=colour, width=2)
    tx, ty = x0 + 2, max(y1 - 12, y0) if label_below else y0 + 2
    draw.rectangle(draw.textbbox((tx, ty), label), fill=colour)
    draw.text((tx, ty), label, fill=(255, 255, 255))
