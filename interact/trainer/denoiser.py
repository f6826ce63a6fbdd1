"""The trained forward as the module DDP wraps."""
from __future__ import annotations

import torch
from torch import nn

from interact.conditions import Cond
from interact.model import InteractDiffusion
from interact.tokenizer import role_type_loss


class Denoiser(nn.Module):
    """The trained forward, `model.denoise`, as the module DDP wraps. It registers only the UNet
    (which holds the interaction tokenizer and the fusers): every weight `denoise` uses, so DDP
    syncs their gradients, while the frozen autoencoder and text encoder stay out of its
    broadcasts. With `types` = (phrase embeddings [3,B,N,D], labels [3,B,N]) it also returns the
    typed tokenizer's classification loss (inside the forward, for DDP too), else None."""

    def __init__(self, model: InteractDiffusion):
        super().__init__()
        self.unet = model.unet
        self.denoise = model.denoise   # a bound method: not registered, it uses only self.unet's weights

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, types=None):
        output = self.denoise(x_t, t, cond)
        tokenizer = self.unet.position_net   # released name (the model's interaction_tokenizer)
        return output, (None if types is None else role_type_loss(tokenizer, *types))

