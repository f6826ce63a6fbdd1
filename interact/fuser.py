"""Gated self-attention fuser (FACTS §2), identical in names and maths to GLIGEN's.

x += scale * tanh(alpha_attn) * attn(norm1(cat[x, linear(objs)]))[:, :N_visual]
x += scale * tanh(alpha_dense) * ff(norm2(x))
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.attention import CrossAttention, FeedForward, multihead_attention


FUSER_INITS = ("zero_gates", "zero_outputs")


class GatedSelfAttentionDense(nn.Module):
    """`init`: "zero_gates" (GLIGEN's, the default) starts both gates at 0. The fuser then adds
    nothing, but its attention and feed-forward weights get no gradient until a gate has moved,
    which on a short budget (the toy world's 500 CPU steps) it barely does. "zero_outputs" adds
    nothing either, by zero output layers (as ControlNet's zero convolutions) under gates at 1,
    and every weight trains from the first step. Loaded weights replace either."""

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int, init: str = "zero_gates"):
        super().__init__()
        if init not in FUSER_INITS:
            raise ValueError(f"fuser_init = {init!r}: must be one of {FUSER_INITS}")
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, n_heads, d_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        # Zero gates: a freshly attached fuser leaves the frozen UNet's output unchanged.
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        if init == "zero_outputs":
            with torch.no_grad():
                self.alpha_attn.fill_(1.0)
                self.alpha_dense.fill_(1.0)
                for layer in (self.attn.to_out[0], self.ff.net[2]):
                    layer.weight.zero_()
                    layer.bias.zero_()

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


def attach_fusers(unet: nn.Module, context_dim: int, fuser_type: str = "gatedSA", init: str = "zero_gates") -> int:
    """Put a fresh fuser into every transformer block's slot; returns how many."""
    if fuser_type not in FUSER_TYPES:
        raise ValueError(f"fuser_type must be one of {sorted(FUSER_TYPES)}, got {fuser_type!r}")
    blocks = unet.transformer_blocks()
    for _, block in blocks:
        dim = block.attn1.to_q.in_features
        heads = block.attn1.heads
        block.fuser = FUSER_TYPES[fuser_type](dim, context_dim, heads, dim // heads, init)
    return len(blocks)
