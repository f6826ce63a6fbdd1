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


def phrases_from_interactions(items: Sequence) -> list[GroundedPhrase]:
    """Interactions as GLIGEN's phrases: every subject and object with its box, each distinct
    phrase and box once (one person doing two things is one phrase); GroundedPhrases kept."""
    out, seen = [], set()
    for item in items:
        pairs = ([(item.phrase, item.box)] if isinstance(item, GroundedPhrase)
                 else [(item.subject, item.subject_box), (item.object, item.object_box)])
        for phrase, box in pairs:
            if (phrase, tuple(box)) not in seen:
                seen.add((phrase, tuple(box)))
                out.append(GroundedPhrase(phrase, tuple(box)))
    return out


@dataclass(frozen=True)
class Segment:
    """A DenseDiffusion segment (interact/dense.py): a phrase that occurs in the prompt and the
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
        if not isinstance(item, (Interaction, GroundedPhrase)):
            raise ConditionError(f"{prefix}interactions[{i}] = {item!r}: expected an Interaction (or, for a GLIGEN "
                                 f"model, a GroundedPhrase)")
    return interactions


RECORD_LIST_FIELDS = ("subject_phrases", "action_phrases", "object_phrases", "subject_boxes", "object_boxes")
# Every key a layout record may have: the prompt, the lists, and `source`, a free-text note of
# where the layout comes from (the toy world's layout files carry one).
RECORD_FIELDS = ("prompt", *RECORD_LIST_FIELDS, "source", "segments", "phrases", "boxes")
SEGMENT_REGIONS = ("box", "polygon", "mask", "rle")


def unknown_record_keys(record: dict) -> list[str]:
    """Keys of a layout record that nothing reads (a per-record `seed` or `steps`, a typo)."""
    return sorted(str(key) for key in record if key not in RECORD_FIELDS)


def segments_from_record(record: dict, where: str = "record", base_dir: str | None = None) -> list[Segment]:
    """A record's `segments` list ([{"phrase": ..., one of "box", "polygon", "mask" (a PNG path,
    relative to `base_dir`), "rle"}], DenseDiffusion's input) as Segments; [] without one. The
    regions are checked when rasterized at the image's size (interact/dense.py)."""
    import os
    items = record.get("segments", [])
    if not isinstance(items, list):
        raise ConditionError(f"{where}: segments = {items!r}: expected a list of objects")
    out = []
    for j, item in enumerate(items):
        field = f"{where}, segment {j}"
        if not isinstance(item, dict):
            raise ConditionError(f"{field}: expected an object with phrase and one of {', '.join(SEGMENT_REGIONS)}")
        unknown = sorted(str(k) for k in item if k not in ("phrase", *SEGMENT_REGIONS))
        if unknown:
            raise ConditionError(f"{field}: unknown key(s) {', '.join(unknown)} (a segment has phrase and one of "
                                 f"{', '.join(SEGMENT_REGIONS)})")
        phrase = check_phrase(item.get("phrase"), f"{field}.phrase")
        mask = item.get("mask")
        if isinstance(mask, str) and base_dir is not None and not os.path.isabs(mask):
            mask = os.path.join(base_dir, mask)
        out.append(Segment(phrase, box=item.get("box"), polygon=item.get("polygon"), mask=mask, rle=item.get("rle")))
    return out


def phrases_from_record(record: dict, where: str) -> list[GroundedPhrase]:
    """GLIGEN's record form {prompt, phrases: [...], boxes: [[x0, y0, x1, y1], ...]}."""
    phrases, boxes = record.get("phrases"), record.get("boxes")
    if not isinstance(phrases, list) or not isinstance(boxes, list):
        raise ConditionError(f"{where}: phrases and boxes must both be given, as lists")
    if len(phrases) != len(boxes):
        raise ConditionError(f"{where}: {len(phrases)} phrases but {len(boxes)} boxes; give one box per phrase")
    if len(phrases) > MAX_INTERACTIONS:
        raise ConditionError(f"{where}: {len(phrases)} phrases; at most {MAX_INTERACTIONS}")
    return [GroundedPhrase(check_phrase(p, f"{where}, phrase {j}"), check_box(b, f"{where}, boxes[{j}]"))
            for j, (p, b) in enumerate(zip(phrases, boxes))]


def interactions_from_record(record: dict, where: str = "record",
                             max_interactions: int = MAX_INTERACTIONS) -> list[Interaction]:
    """Parse a layout record {prompt, subject_phrases, action_phrases, object_phrases,
    subject_boxes, object_boxes}; errors name the record and the field. A record with segments
    and none of those lists has no interactions (a prompt for DenseDiffusion alone)."""
    if not isinstance(record, dict):
        raise ConditionError(f"{where}: expected a JSON object, got {type(record).__name__}")
    phrase_keys = [k for k in ("phrases", "boxes") if k in record]
    if phrase_keys and any(f in record for f in RECORD_LIST_FIELDS):
        raise ConditionError(f"{where}: has both interactions (subject_phrases, ...) and {' and '.join(phrase_keys)}; "
                             f"give one kind per record: interactions, or GLIGEN's phrases with boxes")
    if not any(f in record for f in RECORD_LIST_FIELDS):
        if phrase_keys:
            return phrases_from_record(record, where)
        if "segments" in record:
            return []
    missing = [f for f in RECORD_LIST_FIELDS if f not in record]
    if missing:
        raise ConditionError(f"{where}: missing field(s) {', '.join(missing)}")
    lengths = {f: len(record[f]) if isinstance(record[f], (list, tuple)) else None for f in RECORD_LIST_FIELDS}
    for f, n in lengths.items():
        if n is None:
            raise ConditionError(f"{where}: {f} = {record[f]!r}: expected a list")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{f}={n}" for f, n in lengths.items())
        raise ConditionError(f"{where}: list lengths disagree ({detail})")
    out = []
    for i in range(lengths["subject_phrases"]):
        values = {f: record[f][i] for f in RECORD_LIST_FIELDS}
        try:
            out.append(Interaction(values["subject_phrases"], values["action_phrases"], values["object_phrases"],
                                   values["subject_boxes"], values["object_boxes"]))
        except ConditionError as err:
            raise ConditionError(f"{where}, interaction {i}: {_plural_field(str(err))}") from None
    return check_interactions(out, max_interactions, where)


def _plural_field(message: str) -> str:
    # Interaction's own messages use the singular field names; records use the list names.
    for singular in ("subject_box", "object_box"):
        if message.startswith(singular + " "):
            return singular + "es" + message[len(singular):]
    for singular in ("subject", "action", "object"):
        if message.startswith(singular + " "):
            return singular + "_phrases" + message[len(singular):]
    return message


@dataclass
class HOISample:
    """One preprocessed training sample."""
    key: str
    image: torch.Tensor              # [3, S, S], float32 in [-1, 1]
    caption: str
    interactions: list[Interaction]  # normalised xyxy, at most MAX_INTERACTIONS, largest first


def collate_samples(samples: list[HOISample]) -> dict:
    """-> {"keys", "images" [B,3,S,S], "captions" list[str], "interactions" list[list[Interaction]]}."""
    return {
        "keys": [s.key for s in samples],
        "images": torch.stack([s.image for s in samples]),
        "captions": [s.caption for s in samples],
        "interactions": [list(s.interactions) for s in samples],
    }
