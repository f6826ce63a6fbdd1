"""Attention layers of the SD v1.x UNet, with LDM parameter names.

Every transformer block has a `fuser` slot: a control method (the interaction
fuser, GLIGEN's box fuser, ...) plugs a module in there without touching the
backbone's code path. The slot is empty (None) for plain Stable Diffusion. What a
control gives a forward reaches every block in one `controls` mapping (as diffusers
passes cross_attention_kwargs): each module reads its own entry, so a new control
needs no signature here.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# "sdpa" uses torch's fused scaled_dot_product_attention; "naive" materialises
# softmax(QK^T)V explicitly, as the reference code does. The naive path exists
# for benchmarks and as a test oracle.
_ATTENTION_BACKEND = "sdpa"


def get_attention_backend() -> str:
    return _ATTENTION_BACKEND


@contextlib.contextmanager
def attention_backend(name: str):
    """Temporarily switch every attention layer to `name` ("sdpa" or "naive")."""
    global _ATTENTION_BACKEND
    if name not in ("sdpa", "naive"):
        raise ValueError(f"attention backend must be 'sdpa' or 'naive', got {name!r}")
    previous, _ATTENTION_BACKEND = _ATTENTION_BACKEND, name
    try:
        yield
    finally:
        _ATTENTION_BACKEND = previous


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        mask: torch.Tensor | None = None, modulate=None) -> torch.Tensor:
    """q [B,Nq,H*D], k/v [B,Nk,H*D] -> [B,Nq,H*D]; softmax scale D**-0.5. `mask`: bool
    [B,Nq,Nk], True where a query may attend to a key (every row needs at least one).
    `modulate`: a function of the logits [B,H,Nq,Nk] -> logits, applied before the softmax (the
    logits are then computed explicitly; without it SDPA never materialises them)."""
    b, nq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    mask = None if mask is None else mask[:, None]
    if _ATTENTION_BACKEND == "naive" or modulate is not None:
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * d**-0.5
        if modulate is not None:
            sim = modulate(sim)
        if mask is not None:
            sim = sim.masked_fill(~mask, float("-inf"))
        out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, nq, inner)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when `context` is None."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, modulate=None) -> torch.Tensor:
        context = x if context is None else context
        out = multihead_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads,
                                  modulate=modulate)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward: `net.0.proj` (dim -> 2*mult*dim), `net.2` (mult*dim -> dim)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """self-attn -> fuser slot -> cross-attn on the prompt -> feed-forward (docs/reference.md §2).
    The fuser slot is empty in SD; a control puts a module there that takes (x, controls, grid)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, dropout: float = 0.0,
                 use_checkpoint: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.fuser: nn.Module | None = None
        self.use_checkpoint = use_checkpoint

    def forward(self, x, context, controls: Mapping | None = None, grid=None):
        """`controls`: the UNet's controls mapping (UNetModel.forward). A module in the `fuser`
        slot is called as fuser(x, controls, grid) and reads its own entry; the "attention"
        entry, when present, is an object whose `self_attention(grid)` and `cross_attention(grid)`
        give a function of the logits (or None) for attn1 and attn2 (a training-free control
        such as DenseDiffusion's). `grid`: the (h, w) of the flattened feature map."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, controls, grid, use_reentrant=False)
        return self._forward(x, context, controls, grid)

    def _forward(self, x, context, controls=None, grid=None):
        hook = controls.get("attention") if controls else None
        x = x + self.attn1(self.norm1(x), modulate=hook.self_attention(grid) if hook else None)
        if self.fuser is not None and controls:
            x = self.fuser(x, controls, grid)
        x = x + self.attn2(self.norm2(x), context, modulate=hook.cross_attention(grid) if hook else None)
        return x + self.ff(self.norm3(x))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 so fp16/bf16 inference keeps SD's statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(x.dtype, torch.float32)   # fp16/bf16 up to fp32; fp64 stays
        weight = None if self.weight is None else self.weight.to(dt)
        bias = None if self.bias is None else self.bias.to(dt)
        return F.group_norm(x.to(dt), self.num_groups, weight, bias, self.eps).type(x.dtype)


class SpatialTransformer(nn.Module):
    """[B,C,H,W] -> tokens -> transformer blocks -> [B,C,H,W], residual (SD v1: 1x1 conv projections)."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, context_dim: int = 768,
                 dropout: float = 0.0, norm_groups: int = 32, use_checkpoint: bool = False):
        super().__init__()
        inner = n_heads * d_head
        self.norm = GroupNorm32(norm_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, context_dim, dropout, use_checkpoint) for _ in range(depth))
        self.proj_out = nn.Conv2d(inner, in_channels, 1)

    def forward(self, x, context, controls: Mapping | None = None):
        b, c, h, w = x.shape
        residual = x
        x = self.proj_in(self.norm(x))
        x = x.flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            x = block(x, context, controls, (h, w))
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(x) + residual
