"""InstanceDiffusion's multi-instance sampler, for any control whose items are instances
(interactions, GLIGEN's phrases; docs/sampling.md).

As InstanceDiffusion runs it (its plms_instance.py): for the first int(M * steps) sampling steps
each image is sampled several times from its one starting noise, each on its own latent with its
own sampler history and its own unconditional pass: once with the full condition (its prompt and
every control) and once per instance alone (that instance's own caption, "a person feeding a
cat", and only its grounding). Then the latents of the image's branches are averaged, once, and
sampling goes on from that average with the full condition and its own sampler history. Each
instance is thus laid out first with nothing else competing for its region.

The branches of every image run side by side in one batch of N rows; every sampler's state is
per row, so each branch keeps its own history; at the merge the rows collapse to one per image
(`Branches.mean` for the latents, `Branches.full_rows` for the history).

    branches = instance_branches(prompts, items, control)
    branches.captions, branches.controls    # conditions of every branch, image by image
    branches.expand(x)                      # [B, ...] -> [N, ...]: each branch gets its image's row
    branches.mean(x)                        # [N, ...] -> [B, ...]: the mean over each image's branches
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Branches:
    captions: list[str]                    # [N]
    controls: list[dict[str, list]]        # [N]: each branch's items by control
    owner: torch.Tensor                    # [N] long: the image each branch belongs to
    full: torch.Tensor                     # [B] long: each image's full-condition branch
    images: int                            # B

    def __len__(self) -> int:
        return len(self.captions)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [N, ...]: each branch gets its image's row."""
        return x[self.owner.to(x.device)]

    def mean(self, per_branch: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, ...]: the mean over each image's branches (the full one included)."""
        owner = self.owner.to(per_branch.device)
        total = torch.zeros((self.images, *per_branch.shape[1:]), device=per_branch.device, dtype=per_branch.dtype)
        total.index_add_(0, owner, per_branch)
        counts = torch.bincount(owner, minlength=self.images).to(per_branch.dtype)
        return total / counts.view(-1, *([1] * (per_branch.dim() - 1)))

    def full_rows(self, per_branch: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, ...]: each image's full-condition branch (its sampler history goes on)."""
        return per_branch[self.full.to(per_branch.device)]


def instance_branches(prompts: Sequence[str], items: Sequence[dict[str, list]], control) -> Branches:
    """Per image: the full condition (every control's items), then one branch per instance of
    `control` (its `branches`: a caption and that instance alone). An image without instances
    has the full branch only (it samples as without the sampler)."""
    captions, controls, owner, full = [], [], [], []
    for b, (prompt, given) in enumerate(zip(prompts, items)):
        full.append(len(captions))
        captions.append(prompt)
        controls.append(dict(given))
        owner.append(b)
        for caption, alone in control.branches(given.get(control.name, [])):
            captions.append(caption)
            controls.append({control.name: alone})
            owner.append(b)
    return Branches(captions, controls, torch.tensor(owner, dtype=torch.long), torch.tensor(full, dtype=torch.long),
                    len(prompts))
