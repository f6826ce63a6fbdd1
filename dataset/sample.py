"""The record type every reader fills.

A reader turns its annotation format into `HOIRecord`s (pixel boxes, phrases, an
optional caption); `dataset.transforms` turns a record plus its image into an
`hoi.records.HOISample` (image tensor, normalised boxes as `Interaction`s, caption).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


Pixels = tuple[float, float, float, float]


@dataclass(frozen=True)
class RawHOI:
    """One annotated interaction in pixel xyxy of the original image."""
    subject: str
    action: str
    object: str
    subject_box: Pixels
    object_box: Pixels


@dataclass
class HOIRecord:
    """One image's annotation as read from disk, before any preprocessing."""
    key: str                      # a stable id (the file name) used in logs and warnings
    image_path: Path | None       # None when the image is held inline (`image`)
    width: int
    height: int
    hois: list[RawHOI]
    caption: str | None = None    # None: built from the triplets
    image: object = field(default=None, repr=False)  # an inline PIL image (per-image torch files)
