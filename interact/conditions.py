"""User-facing interaction records -> padded, masked grounding tensors.

An interaction is a (subject, action, object) triplet with a subject box and an
object box, normalised xyxy in [0, 1]. The action gets the box "between" the two.
Every batch is padded to `max_interactions` slots (30 in the released model):
padded slots carry mask 0 and take the tokenizer's learned null features, which
is also the unconditional ("null") grounding of classifier-free guidance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

MAX_INTERACTIONS = 30


class ConditionError(ValueError):
    """Bad user input for an interaction; the message names the field and value."""


Box = tuple[float, float, float, float]


def check_box(box, field: str) -> Box:
    """Validate one normalised xyxy box; raise ConditionError naming `field` otherwise."""
    # A string iterates per character and JSON booleans are ints: neither is a box.
    if isinstance(box, (str, bytes)) or any(isinstance(v, bool) for v in _iter_or_empty(box)):
        raise ConditionError(f"{field} = {box!r}: expected 4 numbers x0, y0, x1, y1")
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ConditionError(f"{field} = {box!r}: expected 4 numbers x0, y0, x1, y1") from None
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


def _iter_or_empty(value):
    try:
        return list(value)
    except TypeError:
        return []


def check_phrase(phrase, field: str) -> str:
    if not isinstance(phrase, str) or not phrase.strip():
        raise ConditionError(f"{field} = {phrase!r}: must be a non-empty phrase")
    return phrase.strip()


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


RECORD_LIST_FIELDS = ("subject_phrases", "action_phrases", "object_phrases", "subject_boxes", "object_boxes")


def interactions_from_record(record: dict, where: str = "record",
                             max_interactions: int = MAX_INTERACTIONS) -> list[Interaction]:
    """Parse a layout record {prompt, subject_phrases, action_phrases, object_phrases,
    subject_boxes, object_boxes}; errors name the record and the field."""
    if not isinstance(record, dict):
        raise ConditionError(f"{where}: expected a JSON object, got {type(record).__name__}")
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
class Grounding:
    """Padded grounding tensors for a batch; the keyword arguments of HOIPositionNet.forward."""
    subject_boxes: torch.Tensor        # [B, N, 4]
    object_boxes: torch.Tensor         # [B, N, 4]
    action_boxes: torch.Tensor         # [B, N, 4]
    masks: torch.Tensor                # [B, N], 1 = real interaction
    subject_embeddings: torch.Tensor   # [B, N, D]
    object_embeddings: torch.Tensor    # [B, N, D]
    action_embeddings: torch.Tensor    # [B, N, D]

    def as_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device=None, dtype=None) -> "Grounding":
        return Grounding(**{k: v.to(device=device, dtype=dtype) for k, v in self.as_kwargs().items()})

    def null(self) -> "Grounding":
        """The same shapes with every slot masked out (the unconditional branch)."""
        return Grounding(**{k: torch.zeros_like(v) for k, v in self.as_kwargs().items()})

    @classmethod
    def cat(cls, groundings: Sequence["Grounding"]) -> "Grounding":
        return cls(**{f.name: torch.cat([getattr(g, f.name) for g in groundings]) for f in fields(cls)})


def build_grounding(batch: Sequence[Sequence[Interaction]], encode_phrases: Callable[[list[str]], torch.Tensor],
                    embed_dim: int, max_interactions: int = MAX_INTERACTIONS) -> Grounding:
    """Pad each image's interactions to `max_interactions` slots. Each distinct phrase
    is encoded once (`encode_phrases(list[str]) -> [n, embed_dim]`)."""
    batch = [check_interactions(items, max_interactions, f"batch item {b}") for b, items in enumerate(batch)]
    phrases = sorted({p for items in batch for it in items for p in (it.subject, it.action, it.object)})
    table = encode_phrases(phrases) if phrases else torch.zeros(0, embed_dim)
    if table.shape != (len(phrases), embed_dim):
        raise ValueError(f"phrase encoder returned {tuple(table.shape)}, expected {(len(phrases), embed_dim)}")
    index = {p: i for i, p in enumerate(phrases)}
    b, n = len(batch), max_interactions
    boxes = torch.zeros(2, b, n, 4)
    masks = torch.zeros(b, n)
    ids = torch.zeros(3, b, n, dtype=torch.long)
    for i, items in enumerate(batch):
        for j, it in enumerate(items):
            boxes[0, i, j] = torch.tensor(it.subject_box)
            boxes[1, i, j] = torch.tensor(it.object_box)
            masks[i, j] = 1
            ids[:, i, j] = torch.tensor([index[it.subject], index[it.action], index[it.object]])
    table = table.float().cpu()
    embeddings = table[ids] if len(phrases) else torch.zeros(3, b, n, embed_dim)
    embeddings = embeddings * masks[None, ..., None]  # padded slots hold zeros (the tokenizer swaps in nulls)
    return Grounding(boxes[0], boxes[1], between(boxes[0], boxes[1]) * masks[..., None], masks,
                     embeddings[0], embeddings[2], embeddings[1])
