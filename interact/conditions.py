"""What the UNet is conditioned on: interaction records -> padded, masked grounding tensors for
the interaction tokenizer, and `Cond`, everything one batch is conditioned on.

Every batch is padded to `max_interactions` slots (30 in the released model): padded slots
carry mask 0 and take the tokenizer's learned null features, which is also the
unconditional ("null") grounding of classifier-free guidance.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from hoi.records import (MAX_INTERACTIONS, ConditionError, GroundedPhrase, Interaction, between, check_interactions,
                         phrases_from_interactions)
from interact.dense import DenseLayout


class PaddedTensors:
    """A dataclass of batch-first tensors, padded slots zero: the keyword arguments of a
    tokenizer, moved, nulled (every slot masked: the unconditional branch) and concatenated as a
    whole."""

    def as_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device=None, dtype=None):
        return type(self)(**{k: v.to(device=device, dtype=dtype) for k, v in self.as_kwargs().items()})

    def null(self):
        """The same shapes with every slot masked out (the unconditional branch)."""
        return type(self)(**{k: torch.zeros_like(v) for k, v in self.as_kwargs().items()})

    @classmethod
    def cat(cls, groundings: Sequence):
        return cls(**{f.name: torch.cat([getattr(g, f.name) for g in groundings]) for f in fields(cls)})


@dataclass
class Grounding(PaddedTensors):
    """Padded grounding tensors for a batch; the keyword arguments of the interaction tokenizer
    (HOIPositionNet.forward), in the order subject, action, object."""
    subject_boxes: torch.Tensor        # [B, N, 4]
    action_boxes: torch.Tensor         # [B, N, 4]
    object_boxes: torch.Tensor         # [B, N, 4]
    masks: torch.Tensor                # [B, N], 1 = real interaction
    subject_embeddings: torch.Tensor   # [B, N, D]
    action_embeddings: torch.Tensor    # [B, N, D]
    object_embeddings: torch.Tensor    # [B, N, D]


@dataclass
class PhraseGrounding(PaddedTensors):
    """GLIGEN's grounding for a batch: phrase slots padded to the tokenizer's 30; the keyword
    arguments of GLIGENPositionNet.forward."""
    boxes: torch.Tensor        # [B, N, 4]
    masks: torch.Tensor        # [B, N], 1 = a phrase
    embeddings: torch.Tensor   # [B, N, D]


def tokenizer_items(items: Sequence[Interaction | GroundedPhrase], gligen: bool, max_slots: int,
                    where: str) -> list:
    """One image's items as the model's tokenizer takes them, checked against its slots; raises
    ConditionError naming `where`. InteractDiffusion takes interactions only; GLIGEN takes phrases
    with boxes, interactions becoming their subjects and objects (phrases_from_interactions)."""
    items = check_interactions(items, len(items), where)
    if not gligen:
        if any(isinstance(it, GroundedPhrase) for it in items):
            raise ConditionError(f"{where}: phrases with boxes are GLIGEN's input; this InteractDiffusion model needs "
                                 f"(subject, action, object) interactions (subject_phrases, action_phrases, "
                                 f"object_phrases, subject_boxes, object_boxes)")
        if len(items) > max_slots:
            raise ConditionError(f"{where}: interactions: {len(items)} given, at most {max_slots} allowed by this model")
        return items
    phrases = phrases_from_interactions(items)
    if len(phrases) > max_slots:
        detail = "" if all(isinstance(it, GroundedPhrase) for it in items) else (
            f" (the distinct subjects and objects of its {len(items)} interactions)")
        raise ConditionError(f"{where}: {len(phrases)} phrases{detail}, at most {max_slots} for this GLIGEN model")
    return phrases


def build_phrase_grounding(batch: Sequence[Sequence[Interaction | GroundedPhrase]],
                           encode_phrases: Callable[[list[str]], torch.Tensor], embed_dim: int,
                           max_phrases: int = MAX_INTERACTIONS) -> PhraseGrounding:
    """GLIGEN's input: each image's phrases and boxes, interactions turned into their subjects and
    objects (phrases_from_interactions), padded to `max_phrases` slots."""
    batch = [tokenizer_items(items, True, max_phrases, f"batch item {b}") for b, items in enumerate(batch)]
    phrases = sorted({p.phrase for items in batch for p in items})
    table = encode_phrases(phrases).float().cpu() if phrases else torch.zeros(0, embed_dim)
    boxes, masks = torch.zeros(len(batch), max_phrases, 4), torch.zeros(len(batch), max_phrases)
    embeddings = torch.zeros(len(batch), max_phrases, embed_dim)
    index = {p: i for i, p in enumerate(phrases)}
    for i, items in enumerate(batch):
        for j, p in enumerate(items):
            boxes[i, j], masks[i, j], embeddings[i, j] = torch.tensor(p.box), 1, table[index[p.phrase]]
    return PhraseGrounding(boxes, masks, embeddings)


@dataclass
class Cond:
    """Everything a batch of B images is conditioned on: made by `InteractDiffusion.condition`,
    read by `InteractDiffusion.denoise`.

    `context` is the captions' text-encoder output, for cross-attention. `grounding` holds the
    interaction slots; `denoise` turns them into the fusers' tokens (the interaction tokenizer
    runs inside the denoising forward, so in training its gradients flow and sync with the UNet's).

    `dense` holds DenseDiffusion's segments (interact/dense.py), None when a batch has none.

    Adding a control (a depth map, say): a field here whose value has `.to(device, dtype)`,
    `.null()` and a classmethod `cat` (as Grounding has), an optional argument of `condition`
    that fills it, and a hook in `denoise` that feeds it to the UNet. `to`, `null` and `cat`
    below go over every field, so the pipeline, the trainer and the evaluation do not change.
    An optional control's field may be None (absent); `cat` then fills the rows of the batches
    without it with its class's `absent(batch, length)`."""
    context: torch.Tensor     # [B, L, D]
    grounding: Grounding | PhraseGrounding   # PhraseGrounding for a GLIGEN model
    dense: DenseLayout | None = None

    def _controls(self) -> dict:
        """Every field but the text context."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "context"}

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, device=None, dtype=None) -> "Cond":
        return type(self)(self.context.to(device=device, dtype=dtype),
                          **{k: None if v is None else v.to(device=device, dtype=dtype)
                             for k, v in self._controls().items()})

    def null(self, context: torch.Tensor | None = None) -> "Cond":
        """The unconditional branch: every control nulled (the interactions: every slot masked
        out); the text context kept, or replaced by `context` (e.g. a negative prompt's)."""
        return type(self)(self.context if context is None else context,
                          **{k: None if v is None else v.null() for k, v in self._controls().items()})

    @classmethod
    def cat(cls, conds: Sequence["Cond"]) -> "Cond":
        """One batch of several (classifier-free guidance: conditional rows, then unconditional)."""
        controls = {}
        for name in conds[0]._controls():
            values = [c._controls()[name] for c in conds]
            kind = next((type(v) for v in values if v is not None), None)
            controls[name] = None if kind is None else kind.cat(
                [kind.absent(len(c), c.context.shape[1]) if v is None else v for c, v in zip(conds, values)])
        return cls(torch.cat([c.context for c in conds]), **controls)


def build_grounding(batch: Sequence[Sequence[Interaction]], encode_phrases: Callable[[list[str]], torch.Tensor],
                    embed_dim: int, max_interactions: int = MAX_INTERACTIONS) -> Grounding:
    """Pad each image's interactions to `max_interactions` slots. Each distinct phrase
    is encoded once (`encode_phrases(list[str]) -> [n, embed_dim]`)."""
    batch = [tokenizer_items(items, False, max_interactions, f"batch item {b}") for b, items in enumerate(batch)]
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
    return Grounding(subject_boxes=boxes[0], action_boxes=between(boxes[0], boxes[1]) * masks[..., None],
                     object_boxes=boxes[1], masks=masks, subject_embeddings=embeddings[0],
                     action_embeddings=embeddings[1], object_embeddings=embeddings[2])
