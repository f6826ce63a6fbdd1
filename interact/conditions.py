"""Cond: everything one batch of images is conditioned on, made by `InteractDiffusion.condition`
and read by `InteractDiffusion.denoise`.

`context` is the captions' text-encoder output, for cross-attention. `controls` holds each
control's input ({control name: ControlInput}, interact/controls/): the trained control's
padded slots (always there: empty rows are its null input) and any training-free control's
input (absent when no row has its items). `to`, `null` and `cat` go over every entry, so the
pipeline, the trainer and the evaluation never name a control.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


@dataclass
class Cond:
    context: torch.Tensor                          # [B, L, D]
    controls: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, device=None, dtype=None) -> "Cond":
        return Cond(self.context.to(device=device, dtype=dtype),
                    {k: v.to(device=device, dtype=dtype) for k, v in self.controls.items()})

    def null(self, context: torch.Tensor | None = None) -> "Cond":
        """The unconditional branch: every control's null input (the trained control's slots all
        masked out); the text context kept, or replaced by `context` (e.g. a negative prompt's)."""
        return Cond(self.context if context is None else context, {k: v.null() for k, v in self.controls.items()})

    @classmethod
    def cat(cls, conds: Sequence["Cond"]) -> "Cond":
        """One batch of several (classifier-free guidance: conditional rows, then unconditional).
        Rows of a cond without an optional control get its class's `absent(batch, length)`."""
        names = list(dict.fromkeys(k for c in conds for k in c.controls))
        controls = {}
        for name in names:
            kind = type(next(c.controls[name] for c in conds if name in c.controls))
            controls[name] = kind.cat([c.controls[name] if name in c.controls else
                                       kind.absent(len(c), c.context.shape[1]) for c in conds])
        return cls(torch.cat([c.context for c in conds]), controls)
