"""The trained forward as the module DDP wraps."""
from __future__ import annotations

import torch
from torch import nn

from interact.conditions import Cond
from interact.model import InteractDiffusion


class Denoiser(nn.Module):
    """The trained forward, `model.denoise`, as the module DDP wraps. It registers only the UNet
    (which holds the trained control's tokenizer and fusers): every weight `denoise` uses, so DDP
    syncs their gradients, while the frozen autoencoder and text encoder stay out of its
    broadcasts. With `loss_cond` and `batch` it also returns the controls' auxiliary loss
    (model.aux_loss, inside the forward for DDP too), else None."""

    def __init__(self, model: InteractDiffusion):
        super().__init__()
        self.unet = model.unet
        # bound methods: not registered, they use only self.unet's weights
        self.denoise, self.aux_loss = model.denoise, model.aux_loss

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, loss_cond: Cond | None = None,
                batch: dict | None = None):
        output = self.denoise(x_t, t, cond)
        return output, (None if loss_cond is None else self.aux_loss(loss_cond, batch))
