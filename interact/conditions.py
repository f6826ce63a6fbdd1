"""Interaction records -> padded, masked grounding tensors for the interaction tokenizer.

Every batch is padded to `max_interactions` slots (30 in the released model): padded slots
carry mask 0 and take the tokenizer's learned null features, which is also the
unconditional ("null") grounding of classifier-free guidance.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from hoi.records import MAX_INTERACTIONS, Interaction, between, check_interactions


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
