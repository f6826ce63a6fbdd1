"""Stable Diffusion v1.x first-stage KL autoencoder (``AutoencoderKL``).

Parameter names follow the original LDM layout so that the ``autoencoder``
section of released InteractDiffusion/GLIGEN files and the ``first_stage_model.``
part of SD v1.x checkpoints load with strict checking. The model is frozen in
this project: only the forward computation matters, no training losses here.

The latent scale factor (0.18215 for SD v1.x) is applied by callers, not here.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AutoencoderKL", "DiagonalGaussian", "Encoder", "Decoder"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # eps 1e-6 (not the PyTorch default 1e-5) is what the released weights were trained with.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus a 1x1 shortcut when the width changes.

    No timestep embedding: the first-stage model is unconditional.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, norm_groups: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all H*W positions (mid blocks only)."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm = _norm(channels, norm_groups)
        # 1x1 convs rather than Linear: the released weights are [C, C, 1, 1].
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            # [B, C, H, W] -> [B, 1 head, HW, C]; 4-D so fused CUDA kernels apply.
            return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1)

        q, k, v = tokens(self.q(hn)), tokens(self.k(hn)), tokens(self.v(hn))
        # SDPA's default scale is head_dim**-0.5 = C**-0.5, as in the original.
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding only right and bottom (original LDM convention)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric pad keeps H/2 x W/2 exactly and matches the trained weights.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _MidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float, norm_groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: a list of ResnetBlocks and an optional resampler.

    The resampler attribute is named ``downsample`` or ``upsample`` to match the
    checkpoint names; levels without one simply lack the attribute.
    """

    def __init__(self, blocks: Sequence[ResnetBlock]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        in_channels: int,
        z_channels: int,
        double_z: bool,
        dropout: float,
        norm_groups: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
            level = _Level(blocks)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _MidBlock(block_in, dropout, norm_groups)
        self.norm_out = _norm(block_in, norm_groups)
        # double_z: the output holds mean and log-variance stacked on channels.
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        out_ch: int,
        z_channels: int,
        dropout: float,
        norm_groups: int,
    ):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _MidBlock(block_in, dropout, norm_groups)
        # Built from the lowest resolution upwards, but stored so that up[i]
        # has the width ch*ch_mult[i] (the checkpoint's indexing).
        levels = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = []
            # One block more than the encoder per level, as in the original.
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
            level = _Level(blocks)
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        # No tanh/clamp: the caller maps [-1, 1] to pixels and clamps there.
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Diagonal Gaussian posterior from stacked [mean, logvar] channels."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        # Clamp as the original does, so exp() stays finite for untrained/odd inputs.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """SD v1.x VAE; defaults are the SD v1.x sizes, tiny test sizes are only a config.

    encode(x in [-1,1], [B,in_channels,H,W]) -> DiagonalGaussian over [B,embed_dim,H/f,W/f];
    decode(z) -> [B,out_ch,H,W] in [-1,1] scale (unclamped); f = downsample_factor.
    """

    def __init__(
        self,
        embed_dim: int = 4,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        z_channels: int = 4,
        in_channels: int = 3,
        out_ch: int = 3,
        double_z: bool = True,
        dropout: float = 0.0,
        norm_groups: int = 32,
    ):
        super().__init__()
        if not double_z:
            raise ValueError("AutoencoderKL needs double_z=True: the posterior needs mean and logvar")
        ch_mult = tuple(int(m) for m in ch_mult)
        self.embed_dim = embed_dim
        self.z_channels = z_channels
        self.ch_mult = ch_mult
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            in_channels=in_channels,
            z_channels=z_channels,
            double_z=double_z,
            dropout=dropout,
            norm_groups=norm_groups,
        )
        self.decoder = Decoder(
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            out_ch=out_ch,
            z_channels=z_channels,
            dropout=dropout,
            norm_groups=norm_groups,
        )
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


class PointMass:
    """The posterior of a deterministic first stage: `sample` returns the mean."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean
        self.std = torch.zeros_like(mean)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class SpaceToDepthFirstStage(nn.Module):
    """A parameter-free, exactly invertible first stage for the toy world: each
    `factor` x `factor` pixel patch becomes channels (pixel unshuffle). It needs no
    training, so a toy model can be trained from scratch with the same pipeline;
    `factor=1` is the identity (pixel-space diffusion).

    `mean`/`std` (one value per image channel, in the [-1, 1] image scale) standardise the
    latents, as SD's scale_factor does for its VAE's: the noise schedule assumes unit-variance
    data, and toy images (light backgrounds, std ~0.3) would otherwise sit at a far lower
    signal-to-noise ratio at every timestep. They are config constants, not weights."""

    def __init__(self, factor: int = 2, in_channels: int = 3, mean=None, std=None):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor = {factor}: must be >= 1")
        mean = [0.0] * in_channels if mean is None else [float(v) for v in mean]
        std = [1.0] * in_channels if std is None else [float(v) for v in std]
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != in_channels:
                raise ValueError(f"{name} = {values}: needs one value per image channel ({in_channels})")
        if min(std) <= 0:
            raise ValueError(f"std = {std}: values must be > 0")
        self.downsample_factor = factor
        self.embed_dim = in_channels * factor * factor
        self.mean, self.std = tuple(mean), tuple(std)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        as_tensor = lambda v: torch.tensor(v, device=x.device, dtype=x.dtype)[None, :, None, None]  # noqa: E731
        return as_tensor(self.mean), as_tensor(self.std)

    def encode(self, x: torch.Tensor) -> PointMass:
        mean, std = self._stats(x)
        return PointMass(nn.functional.pixel_unshuffle((x - mean) / std, self.downsample_factor))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pixel_shuffle(z, self.downsample_factor)
        mean, std = self._stats(x)
        return x * std + mean
