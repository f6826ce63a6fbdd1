"""InstanceDiffusion's multi-instance sampler, for interactions.

For the first int(M * steps) sampling steps each image runs, from its one latent, the full
condition (its prompt and every interaction) plus one branch per interaction (that interaction's
own caption, "a person feeding a cat", and only its grounding), and the branches' results are
averaged; after that the image continues with the full condition alone. Each interaction is
thus drawn once with nothing else competing for its region, which is meant to help crowded
layouts.

Averaging the latents after each step is done here by averaging the branches' noise
predictions before the step. Every branch starts the step from the same (averaged) latent, so
for samplers whose update is linear in the prediction (DDIM, PLMS, DPM-Solver++, UniPC) the two
are the same; Euler ancestral then also keeps one noise draw per image rather than averaging
independent ones. Guidance is linear too: the branches share their image's unconditional branch,
which is computed once.

    branches = instance_branches(prompts, interactions)
    branches.captions, branches.interactions   # conditions of every branch, image by image
    branches.mean(per_branch)                  # [N, ...] -> [B, ...]: the mean over each image's branches
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from hoi.captions import caption_from_triplets
from hoi.records import GroundedPhrase, Interaction


@dataclass
class InstanceBranches:
    captions: list[str]                    # [N]
    interactions: list[list[Interaction]]  # [N]
    owner: torch.Tensor                    # [N] long: the image each branch belongs to
    images: int                            # B
    segments: list[list] | None = None     # [N]: DenseDiffusion's, on each image's full branch only

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """[B, ...] -> [N, ...]: each branch gets its image's row."""
        return x[self.owner.to(x.device)]

    def mean(self, per_branch: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, ...]: the mean over each image's branches."""
        owner = self.owner.to(per_branch.device)
        total = torch.zeros((self.images, *per_branch.shape[1:]), device=per_branch.device, dtype=per_branch.dtype)
        total.index_add_(0, owner, per_branch)
        counts = torch.bincount(owner, minlength=self.images).to(per_branch.dtype)
        return total / counts.view(-1, *([1] * (per_branch.dim() - 1)))


def instance_branches(prompts: Sequence[str], interactions: Sequence[Sequence[Interaction]],
                      segments: Sequence[Sequence] | None = None) -> InstanceBranches:
    """Per image: the full condition, then one branch per interaction. An image without
    interactions has the full branch only (it samples as without the sampler). `segments`
    (DenseDiffusion's, one list per image) go with the full branch: their phrases are in the
    prompt, not in the instance captions."""
    captions, branch_interactions, owner, branch_segments = [], [], [], []
    for b, (prompt, items) in enumerate(zip(prompts, interactions)):
        captions.append(prompt)
        branch_interactions.append(list(items))
        owner.append(b)
        branch_segments.append(list(segments[b]) if segments is not None else [])
        for item in items:
            # (a GLIGEN phrase is its own caption)
            captions.append(item.phrase if isinstance(item, GroundedPhrase) else caption_from_triplets([item]))
            branch_interactions.append([item])
            owner.append(b)
            branch_segments.append([])
    return InstanceBranches(captions, branch_interactions, torch.tensor(owner, dtype=torch.long), len(prompts),
                            branch_segments if segments is not None else None)
