"""Gated self-attention fuser (FACTS §2), identical in names and maths to GLIGEN's.

x += scale * tanh(alpha_attn) * attn(norm1(cat[x, linear(objs)]))[:, :N_visual]
x += scale * tanh(alpha_dense) * ff(norm2(x))
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.attention import CrossAttention, FeedForward, multihead_attention


class GatedSelfAttentionDense(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int):
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, n_heads, d_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        # Zero gates: a freshly attached fuser leaves the frozen UNet's output unchanged.
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        n_visual = x.shape[1]
        h = self.norm1(torch.cat([x, self.linear(objs)], dim=1))
        # Only the visual rows of the attention output are kept, so only their
        # queries are computed: identical result, ~N_objs fewer query rows.
        attn = self.attn
        out = multihead_attention(attn.to_q(h[:, :n_visual]), attn.to_k(h), attn.to_v(h), attn.heads)
        x = x + scale * torch.tanh(self.alpha_attn) * attn.to_out(out)
        return x + scale * torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


FUSER_TYPES = {"gatedSA": GatedSelfAttentionDense}


def attach_fusers(unet: nn.Module, context_dim: int, fuser_type: str = "gatedSA") -> int:
    """Put a fresh fuser into every transformer block's slot; returns how many."""
    if fuser_type not in FUSER_TYPES:
        raise ValueError(f"fuser_type must be one of {sorted(FUSER_TYPES)}, got {fuser_type!r}")
    blocks = unet.transformer_blocks()
    for _, block in blocks:
        dim = block.attn1.to_q.in_features
        heads = block.attn1.heads
        block.fuser = FUSER_TYPES[fuser_type](dim, context_dim, heads, dim // heads)
    return len(blocks)
