"""The interaction tokenizer (released name `position_net`, FACTS §1).

Each interaction slot n gives three tokens: subject, action, object. A token is
MLP(concat(CLIP pooled phrase embedding, Fourier(box))) + instance embedding[n]
+ role embedding[role]. Output order: [subjects x N, actions x N, objects x N].

`action_tokens=False` gives GLIGEN-style grounding for ablations (the "box only" row of the
paper's table): subject and object tokens only, [subjects x N, objects x N], and no action
MLP or null action feature in the weights.
"""
from __future__ import annotations

import torch
from torch import nn

SUBJECT, OBJECT, ACTION = 0, 1, 2  # role-embedding rows, as in the released weights


def fourier_embed(boxes: torch.Tensor, num_freqs: int = 8, temperature: float = 100.0) -> torch.Tensor:
    """[..., 4] -> [..., num_freqs * 2 * 4]: per frequency f_k = T**(k/num_freqs), sin(f_k x) then cos(f_k x)."""
    freqs = temperature ** (torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype) / num_freqs)
    args = boxes[..., None, :] * freqs[:, None]  # [..., F, 4]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(-2)


class _Embedding(nn.Module):
    """Holds `emb`, matching the released key names `<name>.emb.weight`."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(num, dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.emb(index)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))


class HOIPositionNet(nn.Module):
    def __init__(self, in_dim: int = 768, out_dim: int = 768, max_interactions: int = 30, hidden_dim: int = 512,
                 fourier_freqs: int = 8, action_tokens: bool = True):
        super().__init__()
        self.action_tokens = action_tokens
        self.in_dim, self.out_dim = in_dim, out_dim
        self.max_interactions = max_interactions
        self.fourier_freqs = fourier_freqs
        position_dim = fourier_freqs * 2 * 4
        self.linears = _mlp(in_dim + position_dim, hidden_dim, out_dim)  # subjects and objects share it
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        if action_tokens:
            self.linear_action = _mlp(in_dim + position_dim, hidden_dim, out_dim)
            self.null_action_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))
        self.interaction_embedding = _Embedding(max_interactions, out_dim)
        self.position_embedding = _Embedding(3, out_dim)

    @property
    def num_tokens(self) -> int:
        return (3 if self.action_tokens else 2) * self.max_interactions

    def _tokens(self, boxes, embeddings, mask, null_text, mlp, role):
        position = fourier_embed(boxes, self.fourier_freqs)
        position = position * mask + (1 - mask) * self.null_position_feature
        text = embeddings * mask + (1 - mask) * null_text
        tokens = mlp(torch.cat([text, position], dim=-1))
        slots = torch.arange(boxes.shape[1], device=boxes.device)
        role_index = torch.full_like(slots, role)
        return tokens + self.interaction_embedding(slots) + self.position_embedding(role_index)

    def forward(self, subject_boxes, object_boxes, action_boxes, masks, subject_embeddings, object_embeddings,
                action_embeddings) -> torch.Tensor:
        """Boxes [B,N,4] normalised xyxy, masks [B,N] (1 = real slot), embeddings [B,N,in_dim] -> [B,3N,out_dim]
        ([B,2N,out_dim] without action tokens)."""
        n = subject_boxes.shape[1]
        if n > self.max_interactions:
            raise ValueError(f"{n} interaction slots given; this position_net has {self.max_interactions}")
        mask = masks[..., None].to(subject_embeddings.dtype)
        subject = self._tokens(subject_boxes, subject_embeddings, mask, self.null_positive_feature, self.linears,
                               SUBJECT)
        obj = self._tokens(object_boxes, object_embeddings, mask, self.null_positive_feature, self.linears, OBJECT)
        if not self.action_tokens:
            return torch.cat([subject, obj], dim=1)
        action = self._tokens(action_boxes, action_embeddings, mask, self.null_action_feature, self.linear_action,
                              ACTION)
        return torch.cat([subject, action, obj], dim=1)
