"""The project's shared record types: an interaction (the user's and the data's unit), a
preprocessed training sample, and the limits. A leaf module: it imports nothing of the project,
so the data readers, the model and the tools all build on it without importing each other.

An interaction is a (subject, action, object) triplet with a subject box and an object box,
normalised xyxy in [0, 1]. The action gets the box "between" the two (docs/reference.md §1).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

MAX_INTERACTIONS = 30  # slots of the released tokenizer


class DataError(ValueError):
    """Training data that cannot be used; the message names the file (and the counts)."""


class ConditionError(ValueError):
    """Bad user input for an interaction; the message names the field and value."""


Box = tuple[float, float, float, float]


def check_box(box, field: str) -> Box:
    """Validate one normalised xyxy box; raise ConditionError naming `field` otherwise."""
    # Only numbers: a string iterates per character, "0.1" would pass float(), and JSON
    # booleans are ints; none of them is a coordinate.
    values = None if isinstance(box, (str, bytes)) else _iter_or_none(box)
    if values is None or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ConditionError(f"{field} = {box!r}: expected 4 numbers x0, y0, x1, y1")
    values = tuple(float(v) for v in values)
    if len(values) != 4:
        raise ConditionError(f"{field} = {box!r}: expected 4 numbers x0, y0, x1, y1, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ConditionError(f"{field} = {box!r}: coordinates must be finite numbers")
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ConditionError(f"{field} = {box!r}: coordinates must be normalised to [0, 1]")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ConditionError(f"{field} = {box!r}: need x0 < x1 and y0 < y1 (xyxy, non-zero area)")
    return values


def _iter_or_none(value) -> list | None:
    try:
        return list(value)
    except TypeError:
        return None


def check_text(text, field: str) -> str:
    """A string that is valid Unicode: a lone surrogate ("\\ud800" in JSON, or an undecodable byte
    of a command line) cannot be encoded, tokenized faithfully or written to a sidecar."""
    if not isinstance(text, str):
        raise ConditionError(f"{field} = {text!r}: must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConditionError(f"{field} = {text!r}: not valid Unicode text (a lone surrogate "
                             f"{text[err.start]!r} at character {err.start})") from None
    return text


def check_phrase(phrase, field: str) -> str:
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConditionError(f"{field} = {phrase!r}: must be a non-empty phrase")
    return check_text(phrase, field).strip()


@dataclass(frozen=True)
class Interaction:
    subject: str
    action: str
    object: str
    subject_box: Box
    object_box: Box

    def __post_init__(self):
        for name in ("subject", "action", "object"):
            object.__setattr__(self, name, check_phrase(getattr(self, name), name))
        for name in ("subject_box", "object_box"):
            object.__setattr__(self, name, check_box(getattr(self, name), name))

    @property
    def action_box(self) -> Box:
        as_tensor = lambda box: torch.tensor(box, dtype=torch.float64)  # noqa: E731 - exact for sidecars
        return tuple(between(as_tensor(self.subject_box), as_tensor(self.object_box)).tolist())


@dataclass(frozen=True)
class GroundedPhrase:
    """GLIGEN's unit: a phrase and its box (normalised xyxy), as diffusers' GLIGEN pipeline takes
    `gligen_phrases` and `gligen_boxes`."""
    phrase: str
    box: Box

    def __post_init__(self):
        object.__setattr__(self, "phrase", check_phrase(self.phrase, "phrase"))
        object.__setattr__(self, "box", check_box(self.box, "box"))


@dataclass(frozen=True)
class Segment:
    """A DenseDiffusion segment (interact/controls/segments.py): a phrase that occurs in the prompt and the
    image region it describes, given as exactly one of `box` (normalised xyxy), `polygon`
    (normalised [x, y] points), `mask` (a binary PNG's path, or an H x W array; nonzero inside)
    or `rle` (COCO RLE: {"size": [h, w], "counts": runs or the compressed string}). Masks and
    RLE have the image's size."""
    phrase: str
    box: Box | None = None
    polygon: Sequence[Sequence[float]] | None = None
    mask: object = None
    rle: dict | None = None


def between(subject_boxes: torch.Tensor, object_boxes: torch.Tensor) -> torch.Tensor:
    """The action box of docs/reference.md §1: sort the four x's and the four y's of both boxes;
    take (2nd x, 2nd y, 3rd x, 3rd y). Disjoint boxes give the gap, overlapping ones
    the intersection. Works on [..., 4]."""
    xs = torch.stack([subject_boxes[..., 0], subject_boxes[..., 2], object_boxes[..., 0], object_boxes[..., 2]], -1)
    ys = torch.stack([subject_boxes[..., 1], subject_boxes[..., 3], object_boxes[..., 1], object_boxes[..., 3]], -1)
    xs, ys = xs.sort(dim=-1).values, ys.sort(dim=-1).values
    return torch.stack([xs[..., 1], ys[..., 1], xs[..., 2], ys[..., 2]], dim=-1)


def check_interactions(interactions: Sequence[Interaction], max_interactions: int = MAX_INTERACTIONS,
                       where: str = "") -> list[Interaction]:
    prefix = f"{where}: " if where else ""
    interactions = list(interactions)
    if len(interactions) > max_interactions:
        raise ConditionError(f"{prefix}interactions: {len(interactions)} given, at most {max_interactions} allowed")
    for i, item in enumerate(interactions):
        if not isinstance(item, Interaction):
            raise ConditionError(f"{prefix}interactions[{i}] = {item!r}: expected an Interaction")
    return interactions


@dataclass
class HOISample:
    """One preprocessed training sample."""
    key: str
    image: torch.Tensor              # [3, S, S], float32 in [-1, 1]
    caption: str
    interactions: list[Interaction]  # normalised xyxy, at most MAX_INTERACTIONS, largest first


def collate_samples(samples: list[HOISample]) -> dict:
    """-> {"keys", "images" [B,3,S,S], "captions" list[str], "controls": {"interaction":
    list[list[Interaction]]}}: the layout under the name of the control that reads it."""
    return {
        "keys": [s.key for s in samples],
        "images": torch.stack([s.image for s in samples]),
        "captions": [s.caption for s in samples],
        "controls": {"interaction": [list(s.interactions) for s in samples]},
    }
