"""The fusers: one per transformer block, after its self-attention (docs/reference.md §2).

A fuser sits in the block's `fuser` slot and reads its control's entry of the UNet's
`controls` mapping (a FuserInput: the tokens, this step's scale, and with box attention each
token's region); without one, or at scale 0, it adds nothing and is not computed.
`tokens` are the control tokenizer's output (the released code calls them `objs`).
gatedSA (the paper's, identical in names and maths to GLIGEN's):
    x += scale * tanh(alpha_attn) * attn(norm1(cat[x, linear(tokens)]))[:, :N_visual]
    x += scale * tanh(alpha_dense) * ff(norm2(x))
gatedCA (the reproduction study's variant): the visual tokens attend to the interaction
tokens only (queries from x, keys and values from linear(tokens)), same gates and scale:
    x += scale * tanh(alpha_attn) * attn(norm1(x), norm_objs(linear(tokens)))
    x += scale * tanh(alpha_dense) * ff(norm2(x))
Its attention matrix is N_visual x N_tokens instead of N_visual x (N_visual + N_tokens).
"""
from __future__ import annotations

import torch
from torch import nn

from interact.controls.tokens import POSITION_DIM, fourier_embed
from ldm.modules.attention import CrossAttention, FeedForward, multihead_attention

FUSER_INITS = ("zero_gates", "zero_outputs")


def grid_positions(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """[h*w, POSITION_DIM]: the Fourier embedding of each visual token's cell as a normalised
    xyxy box, row-major like the flattened feature map; the same embedding the boxes get."""
    ys = torch.arange(h, device=device, dtype=dtype) / h
    xs = torch.arange(w, device=device, dtype=dtype) / w
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")
    cells = torch.stack([x0, y0, x0 + 1 / w, y0 + 1 / h], dim=-1).reshape(h * w, 4)
    return fourier_embed(cells)


def region_mask(regions: torch.Tensor, grid) -> torch.Tensor:
    """bool [B, h*w, T]: which grid cells (row-major) each token's region [B, T, 4] (normalised
    xyxy) overlaps. Edges count as overlapping, so a zero-width region (the action box of two
    touching boxes) still reaches the cells on its line."""
    h, w = grid
    dt = regions.dtype if regions.dtype in (torch.float32, torch.float64) else torch.float32
    regions = regions.to(dt)
    xs = torch.arange(w, device=regions.device, dtype=dt) / w
    ys = torch.arange(h, device=regions.device, dtype=dt) / h
    x0, y0, x1, y1 = (regions[..., i, None] for i in range(4))               # [B, T, 1]
    in_x = (x0 <= xs + 1 / w) & (x1 >= xs)                                   # [B, T, w]
    in_y = (y0 <= ys + 1 / h) & (y1 >= ys)                                   # [B, T, h]
    cells = in_y[..., :, None] & in_x[..., None, :]                          # [B, T, h, w]
    return cells.flatten(2).transpose(1, 2)


class _GatedFuser(nn.Module):
    """What both fusers share: the token projection, attention, feed-forward, gates and inits.

    `init`: "zero_gates" (GLIGEN's, the default) starts both gates at 0. The fuser then adds
    nothing, but its attention and feed-forward weights get no gradient until a gate has moved,
    which on a short CPU budget it barely does. "zero_outputs" adds
    nothing either, by zero output layers (as ControlNet's zero convolutions) under gates at 1,
    and every weight trains from the first step. Loaded weights replace either.

    `visual_positions`: add a learned projection of each visual token's grid cell (in the boxes'
    Fourier embedding) to the attention's visual input. SD's features carry position implicitly
    (large receptive fields, padding); a tiny UNet's 8x8 features barely do, and without it the
    attention cannot tell which visual tokens a box covers. Off for released checkpoints.

    `box_attention`: a visual token attends to an interaction token only where the token's
    region (FuserInput.regions: its box; the whole image for a padded slot) overlaps the
    token's grid cell, as IFAdapter's instance maps and MIGC restrict instance attention. Needs
    a control that gives regions. Off for released checkpoints.

    `key`: the control whose entry of the `controls` mapping it reads (not a weight)."""

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int, init: str = "zero_gates",
                 visual_positions: bool = False, box_attention: bool = False, key: str = "interaction"):
        super().__init__()
        self.key = key
        if init not in FUSER_INITS:
            raise ValueError(f"fuser_init = {init!r}: must be one of {FUSER_INITS}")
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, n_heads, d_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.visual_position = nn.Linear(POSITION_DIM, query_dim) if visual_positions else None
        self.box_attention = box_attention
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

    def _with_positions(self, visual: torch.Tensor, grid) -> torch.Tensor:
        if grid is None or grid[0] * grid[1] != visual.shape[1]:
            raise ValueError(f"fuser with visual_positions needs grid=(h, w) matching {visual.shape[1]} tokens, "
                             f"got {grid}")
        # fp32 phases: fp16 is too coarse for the highest Fourier frequency (~56 rad per unit)
        cells = grid_positions(*grid, device=visual.device, dtype=torch.promote_types(visual.dtype, torch.float32))
        cells = cells.to(visual.dtype)
        return visual + self.visual_position(cells)

    def _token_mask(self, regions, grid) -> torch.Tensor | None:
        """bool [B, n_visual, T] for box attention, else None."""
        if not self.box_attention:
            return None
        if regions is None or grid is None:
            raise ValueError("a fuser with box_attention needs the tokens' regions (a control built with "
                             "box_attention) and grid=(h, w)")
        return region_mask(regions, grid)

    def attend(self, x: torch.Tensor, tokens: torch.Tensor, grid, token_mask) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, controls, grid=None) -> torch.Tensor:
        """The block slot's call: its control's FuserInput from `controls`, when there is one."""
        entry = controls.get(self.key) if controls else None
        if entry is None or entry.scale == 0:
            return x
        return self.fuse(x, entry.tokens, entry.scale, grid, entry.regions)

    def fuse(self, x: torch.Tensor, tokens: torch.Tensor, scale: float = 1.0, grid=None,
             regions: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N_visual, dim] with `tokens` [B, T, context_dim] fused in, times `scale`."""
        token_mask = self._token_mask(regions, grid)
        x = x + scale * torch.tanh(self.alpha_attn) * self.attn.to_out(self.attend(x, tokens, grid, token_mask))
        return x + scale * torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


class GatedSelfAttentionDense(_GatedFuser):
    def attend(self, x, tokens, grid, token_mask):
        n_visual = x.shape[1]
        h = self.norm1(torch.cat([x, self.linear(tokens)], dim=1))
        if self.visual_position is not None:
            h = torch.cat([self._with_positions(h[:, :n_visual], grid), h[:, n_visual:]], dim=1)
        mask = None
        if token_mask is not None:   # visual keys stay visible to every visual query
            visual = torch.ones(x.shape[0], n_visual, n_visual, dtype=torch.bool, device=x.device)
            mask = torch.cat([visual, token_mask], dim=2)
        # Only the visual rows of the attention output are kept, so only their
        # queries are computed: identical result, ~N_tokens fewer query rows.
        attn = self.attn
        return multihead_attention(attn.to_q(h[:, :n_visual]), attn.to_k(h), attn.to_v(h), attn.heads, mask)


class GatedCrossAttentionDense(_GatedFuser):
    """Keys and values come from the interaction tokens alone. They get their own LayerNorm
    affine (`norm_objs`); in gatedSA one norm1 serves both kinds of token."""

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int, init: str = "zero_gates",
                 visual_positions: bool = False, box_attention: bool = False, key: str = "interaction"):
        super().__init__(query_dim, context_dim, n_heads, d_head, init, visual_positions, box_attention, key)
        self.norm_objs = nn.LayerNorm(query_dim)   # the name trained gatedCA files carry

    def attend(self, x, tokens, grid, token_mask):
        visual = self.norm1(x)
        if self.visual_position is not None:
            visual = self._with_positions(visual, grid)
        tokens = self.norm_objs(self.linear(tokens))
        attn = self.attn
        if token_mask is None:
            return multihead_attention(attn.to_q(visual), attn.to_k(tokens), attn.to_v(tokens), attn.heads)
        # A cell that no token's region reaches (every slot filled, none over it) attends to
        # nothing: its row is unmasked for the softmax's sake and its output zeroed.
        reached = token_mask.any(dim=-1, keepdim=True)
        out = multihead_attention(attn.to_q(visual), attn.to_k(tokens), attn.to_v(tokens), attn.heads,
                                  token_mask | ~reached)
        return out * reached


FUSER_TYPES = {"gatedSA": GatedSelfAttentionDense, "gatedCA": GatedCrossAttentionDense}


def attach_fusers(unet: nn.Module, context_dim: int, fuser_type: str = "gatedSA", init: str = "zero_gates",
                  visual_positions: bool = False, box_attention: bool = False, key: str = "interaction") -> int:
    """Put a fresh fuser into every transformer block's slot, reading control `key`'s entry;
    returns how many."""
    if fuser_type not in FUSER_TYPES:
        raise ValueError(f"fuser_type must be one of {sorted(FUSER_TYPES)}, got {fuser_type!r}")
    blocks = unet.transformer_blocks()
    for _, block in blocks:
        dim = block.attn1.to_q.in_features
        heads = block.attn1.heads
        block.fuser = FUSER_TYPES[fuser_type](dim, context_dim, heads, dim // heads, init, visual_positions,
                                              box_attention, key)
    return len(blocks)
