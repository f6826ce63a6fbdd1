"""The SD v1.x UNet with LDM state-dict names.

One definition serves the real SD v1.x size and tiny test sizes: a size is only
constructor arguments. Control methods plug into each transformer block's
`fuser` slot and may add a `position_net` (a control's tokenizer) as an
attribute; the backbone's forward only passes their `controls` mapping along.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.attention import BasicTransformerBlock, GroupNorm32, SpatialTransformer


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim]: cos then sin halves (LDM order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


# GroupNorm eps: LDM's ResBlocks and output norm use `normalization()`, a GroupNorm32 with
# PyTorch's default eps (1e-5); only the SpatialTransformer's input norm and the VAE use 1e-6.
UNET_NORM_EPS = 1e-5


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 norm_groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels, eps=UNET_NORM_EPS), nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels, eps=UNET_NORM_EPS), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Routes the timestep embedding to ResBlocks and the prompt and controls to transformers."""

    def forward(self, x, emb, context, controls=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, controls)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, image_size: int = 64, in_channels: int = 4, out_channels: int = 4,
                 model_channels: int = 320, num_res_blocks: int = 2,
                 attention_resolutions=(4, 2, 1), channel_mult=(1, 2, 4, 4), num_heads: int = 8,
                 transformer_depth: int = 1, context_dim: int = 768, dropout: float = 0.0,
                 norm_groups: int = 32, use_checkpoint: bool = False):
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.num_levels = len(channel_mult)
        self.context_dim = context_dim
        time_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

        def transformer(ch):
            return SpatialTransformer(ch, num_heads, ch // num_heads, transformer_depth, context_dim, dropout,
                                      norm_groups, use_checkpoint)

        def resblock(ch_in, ch_out):
            return ResBlock(ch_in, time_dim, ch_out, dropout, norm_groups)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(resblock(ch, ch), transformer(ch), resblock(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(norm_groups, ch, eps=UNET_NORM_EPS), nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def transformer_blocks(self) -> list[tuple[str, BasicTransformerBlock]]:
        """(name, block) of every transformer block, in forward order: where fusers go."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BasicTransformerBlock)]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                controls: Mapping | None = None) -> torch.Tensor:
        """The model's prediction for x at `timesteps` (epsilon, or v for a v-prediction
        schedule: the weights decide, the forward is the same). `controls`: what the controls
        give this forward, one entry per control (its fusers' tokens, an attention hook under
        "attention"); every block passes the mapping on, each module reads its own entry."""
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb, context, controls)
            skips.append(h)
        h = self.middle_block(h, emb, context, controls)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, controls)
        return self.out(h)
