"""What the trained controls' tokenizers share: the Fourier embedding of boxes (docs/reference.md
§1), their MLPs and the embedding holder whose names the released files use."""
from __future__ import annotations

import torch
from torch import nn

FOURIER_FREQS = 8
POSITION_DIM = FOURIER_FREQS * 2 * 4  # a box's Fourier embedding
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


def fourier_embed(boxes: torch.Tensor, num_freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """[..., 4] -> [..., num_freqs * 2 * 4]: per frequency f_k = T**(k/num_freqs), sin(f_k x) then cos(f_k x)."""
    freqs = temperature ** (torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype) / num_freqs)
    args = boxes[..., None, :] * freqs[:, None]  # [..., F, 4]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(-2)


class Embedding(nn.Module):
    """Holds `emb`, matching the released key names `<name>.emb.weight`."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(num, dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.emb(index)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The released tokenizers' MLP: Linear, SiLU, Linear, SiLU, Linear (names linears.0/2/4)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))
