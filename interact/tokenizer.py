"""The interaction tokenizer (released name `position_net`, docs/reference.md §1).

Each interaction slot n gives three tokens: subject, action, object. A token is
MLP(concat(CLIP pooled phrase embedding, Fourier(box))) + instance embedding[n]
+ role embedding[role]. Output order: [subjects x N, actions x N, objects x N].

`action_tokens=False` gives GLIGEN-style grounding for ablations (the "box only" row of the
paper's table): subject and object tokens only, [subjects x N, objects x N], and no action
MLP or null action feature in the weights.

`role_embedding="typed"` (the reproduction study's variant): the role embedding also says what
kind of thing fills the role. Subjects and objects are human or non-human, actions contact or
non-contact. Two small classifiers over the phrase's CLIP embedding (in_dim -> 64 -> 2) give
type probabilities p, and a token gets

    role_embedding[role] + p[0] * type_offsets[role, 0] + p[1] * type_offsets[role, 1]

The offsets are zero at first, so each typed embedding starts as its role's embedding, and a
released checkpoint (which has none of these weights) loads and behaves exactly as before.
The mixture keeps the choice differentiable; the trainer also fits the classifiers to the
dataset's type labels (dataset/role_types.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SUBJECT, OBJECT, ACTION = 0, 1, 2  # role-embedding rows, as in the released weights
ROLE_EMBEDDINGS = ("fixed", "typed")
# Box-aware attention (a toy-world option, off for the released architecture): with "boxes" each
# token carries its box (the action token its action box, "between" subject and object), the
# region of the image whose visual tokens may attend to it; padded slots cover the whole image.
BOX_ATTENTION = ("none", "boxes")
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)
TYPE_CLASSIFIER_HIDDEN = 64
FOURIER_FREQS = 8
POSITION_DIM = FOURIER_FREQS * 2 * 4  # a box's Fourier embedding


def fourier_embed(boxes: torch.Tensor, num_freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """[..., 4] -> [..., num_freqs * 2 * 4]: per frequency f_k = T**(k/num_freqs), sin(f_k x) then cos(f_k x)."""
    freqs = temperature ** (torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype) / num_freqs)
    args = boxes[..., None, :] * freqs[:, None]  # [..., F, 4]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(-2)


@dataclass
class GroundedTokens:
    """Interaction tokens with the image region each may be attended from (box attention)."""
    tokens: torch.Tensor    # [B, T, D]
    regions: torch.Tensor   # [B, T, 4] normalised xyxy


def token_tensor(tokens: "torch.Tensor | GroundedTokens") -> torch.Tensor:
    """The token tensor of a tokenizer output, with or without regions."""
    return tokens.tokens if isinstance(tokens, GroundedTokens) else tokens


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


def _type_classifier(in_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, TYPE_CLASSIFIER_HIDDEN), nn.SiLU(), nn.Linear(TYPE_CLASSIFIER_HIDDEN, 2))


class HOIPositionNet(nn.Module):
    """The interaction tokenizer. The attribute names are the released state-dict names
    (docs/reference.md §1); `role_embedding_table` is the readable name of `position_embedding`.
    `role_embedding` is the variant ("fixed" | "typed"), as the config key says."""

    def __init__(self, in_dim: int = 768, out_dim: int = 768, max_interactions: int = 30, hidden_dim: int = 512,
                 fourier_freqs: int = FOURIER_FREQS, action_tokens: bool = True, role_embedding: str = "fixed",
                 box_attention: str = "none"):
        super().__init__()
        if role_embedding not in ROLE_EMBEDDINGS:
            raise ValueError(f"role_embedding = {role_embedding!r}: must be one of {ROLE_EMBEDDINGS}")
        if box_attention not in BOX_ATTENTION:
            raise ValueError(f"box_attention = {box_attention!r}: must be one of {BOX_ATTENTION}")
        self.box_attention = box_attention
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
        self.interaction_embedding = _Embedding(max_interactions, out_dim)   # by slot
        self.position_embedding = _Embedding(3, out_dim)   # by role: see role_embedding_table
        self.role_embedding = role_embedding
        if role_embedding == "typed":
            # entity: human / non-human (subjects and objects); action: contact / non-contact
            self.entity_classifier = _type_classifier(in_dim)
            self.action_classifier = _type_classifier(in_dim)
            self.type_offsets = nn.Parameter(torch.zeros(3, 2, out_dim))  # [role, type, dim]

    @property
    def role_embedding_table(self) -> _Embedding:
        """One row per role, rows SUBJECT, OBJECT, ACTION (released name `position_embedding`)."""
        return self.position_embedding

    @property
    def num_tokens(self) -> int:
        return (3 if self.action_tokens else 2) * self.max_interactions

    def type_logits(self, embeddings: torch.Tensor, role: int) -> torch.Tensor:
        """[..., in_dim] phrase embeddings -> [..., 2] type logits for `role` (typed only)."""
        classifier = self.action_classifier if role == ACTION else self.entity_classifier
        return classifier(embeddings)

    def _tokens(self, boxes, embeddings, mask, null_text, mlp, role):
        position = fourier_embed(boxes, self.fourier_freqs)
        position = position * mask + (1 - mask) * self.null_position_feature
        text = embeddings * mask + (1 - mask) * null_text
        tokens = mlp(torch.cat([text, position], dim=-1))
        slots = torch.arange(boxes.shape[1], device=boxes.device)
        role_index = torch.full_like(slots, role)
        tokens = tokens + self.interaction_embedding(slots) + self.role_embedding_table(role_index)
        if self.role_embedding == "typed":
            # Padded slots have no phrase, hence no type: they keep the plain role embedding.
            p = self.type_logits(embeddings, role).softmax(-1)
            tokens = tokens + mask * (p @ self.type_offsets[role])
        return tokens

    def token_regions(self, subject_boxes, action_boxes, object_boxes, masks) -> torch.Tensor:
        """[B, T, 4]: the region of each token, in token order: its box, the whole image for a
        padded slot (see BOX_ATTENTION)."""
        real = masks[..., None] > 0
        whole = torch.tensor(WHOLE_IMAGE, device=subject_boxes.device, dtype=subject_boxes.dtype)
        roles = [subject_boxes, action_boxes, object_boxes] if self.action_tokens else [subject_boxes, object_boxes]
        return torch.cat([torch.where(real, r, whole) for r in roles], dim=1)

    def forward(self, subject_boxes, action_boxes, object_boxes, masks, subject_embeddings, action_embeddings,
                object_embeddings):
        """Boxes [B,N,4] normalised xyxy, masks [B,N] (1 = real slot), embeddings [B,N,in_dim] -> [B,3N,out_dim]
        ([B,2N,out_dim] without action tokens); with box attention a GroundedTokens of those and
        their regions. Arguments in the order subject, action, object (Grounding's fields)."""
        n = subject_boxes.shape[1]
        if n > self.max_interactions:
            raise ValueError(f"{n} interaction slots given; this interaction tokenizer has {self.max_interactions}")
        mask = masks[..., None].to(subject_embeddings.dtype)
        subject = self._tokens(subject_boxes, subject_embeddings, mask, self.null_positive_feature, self.linears,
                               SUBJECT)
        obj = self._tokens(object_boxes, object_embeddings, mask, self.null_positive_feature, self.linears, OBJECT)
        # The released token order (docs/reference.md §1); the fusers' weights were trained on it.
        if not self.action_tokens:
            tokens = torch.cat([subject, obj], dim=1)
        else:
            action = self._tokens(action_boxes, action_embeddings, mask, self.null_action_feature,
                                  self.linear_action, ACTION)
            tokens = torch.cat([subject, action, obj], dim=1)
        if self.box_attention == "none":
            return tokens
        return GroundedTokens(tokens, self.token_regions(subject_boxes, action_boxes, object_boxes, masks))


def typed_role_defaults(tokenizer: HOIPositionNet, prefix: str = "position_net.", seed: int = 0) -> dict:
    """The typed variant's extra weights as a file without them gets them: zero offsets (each
    typed embedding = its role's embedding, outputs unchanged) and classifiers drawn from `seed`.
    Built on the CPU, so a meta-built model can take them too."""
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        entity, action = _type_classifier(tokenizer.in_dim), _type_classifier(tokenizer.in_dim)
        out = {"type_offsets": torch.zeros(3, 2, tokenizer.out_dim)}
    for name, module in (("entity_classifier", entity), ("action_classifier", action)):
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return {prefix + k: v for k, v in out.items()}


def role_type_loss(tokenizer: HOIPositionNet, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the typed tokenizer's classifiers. `embeddings` [3,B,N,in_dim] and
    `labels` [3,B,N] in the role rows' order SUBJECT, OBJECT, ACTION (the released role-embedding
    rows; labels -1 are left out)."""
    logits = torch.stack([tokenizer.type_logits(embeddings[role], role) for role in (SUBJECT, OBJECT, ACTION)])
    labelled = labels >= 0
    if not labelled.any():  # keeps the graph (and DDP) whole on a batch without labels
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits[labelled].float(), labels[labelled])


class GLIGENPositionNet(nn.Module):
    """GLIGEN's box + text grounding tokenizer (its released `position_net`, the paper's baseline
    row): per phrase slot, token = linears(concat(CLIP pooled phrase embedding, Fourier(box))),
    padded slots taking `null_positive_feature` and `null_position_feature`; no instance or role
    embedding, tokens in slot order, at most 30. It reads a PhraseGrounding (interact/conditions.py)."""

    def __init__(self, in_dim: int = 768, out_dim: int = 768, max_interactions: int = 30, hidden_dim: int = 512,
                 fourier_freqs: int = FOURIER_FREQS, role_embedding: str = "fixed", box_attention: str = "none"):
        super().__init__()
        # The InteractDiffusion-only switches, refused by name (a GLIGEN token has no role, and
        # its fusers were trained without box attention).
        if role_embedding != "fixed":
            raise ValueError(f"role_embedding = {role_embedding!r}: an InteractDiffusion option; a GLIGEN model's "
                             f"tokens have no roles")
        if box_attention != "none":
            raise ValueError(f"box_attention = {box_attention!r}: an InteractDiffusion (toy world) option; a GLIGEN "
                             f"model has none")
        # max_interactions: phrase slots (GLIGEN's max_objs), under the name the pipeline's limits use
        self.in_dim, self.out_dim, self.max_interactions = in_dim, out_dim, max_interactions
        self.fourier_freqs = fourier_freqs
        self.box_attention, self.role_embedding, self.action_tokens = "none", "fixed", False
        position_dim = fourier_freqs * 2 * 4
        self.linears = _mlp(in_dim + position_dim, hidden_dim, out_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    @property
    def num_tokens(self) -> int:
        return self.max_interactions

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """boxes [B,N,4] normalised xyxy, masks [B,N] (1 = a phrase), embeddings [B,N,in_dim] -> [B,N,out_dim]."""
        if boxes.shape[1] > self.max_interactions:
            raise ValueError(f"{boxes.shape[1]} phrase slots given; this GLIGEN tokenizer has {self.max_interactions}")
        mask = masks[..., None].to(embeddings.dtype)
        position = fourier_embed(boxes, self.fourier_freqs) * mask + (1 - mask) * self.null_position_feature
        text = embeddings * mask + (1 - mask) * self.null_positive_feature
        return self.linears(torch.cat([text, position], dim=-1))
