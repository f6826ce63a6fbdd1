"""The phrase control (GLIGEN box + text, the paper's baseline row): phrases with boxes, one token
per phrase for the same fusers, tokenized by GLIGEN's own `position_net` (released names
`linears`, `null_positive_feature`, `null_position_feature`).

Records: `phrases` and `boxes` (at most 30, as diffusers' GLIGEN pipeline takes them); in Python,
lists of hoi.records.GroundedPhrase. Interactions given to a GLIGEN model are taken as phrases:
each distinct subject and object phrase with its box, once (so one layout file serves the SD,
GLIGEN and InteractDiffusion rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from hoi.records import (MAX_INTERACTIONS, ConditionError, GroundedPhrase, check_box, check_interactions,
                         check_phrase)
from interact.controls.base import Control, ControlInput, Format, FuserInput, phrase_table, register
from interact.controls.tokens import FOURIER_FREQS, fourier_embed, mlp
from interact.paths import SD_V1_GLIGEN_CONFIG

PHRASE_COLOUR = (230, 40, 40)


class GLIGENPositionNet(nn.Module):
    """GLIGEN's box + text grounding tokenizer (its released `position_net`): per phrase slot,
    token = linears(concat(CLIP pooled phrase embedding, Fourier(box))), padded slots taking
    `null_positive_feature` and `null_position_feature`; no instance or role embedding, tokens in
    slot order, at most 30. It reads a PhraseGrounding."""

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
        # max_interactions: phrase slots (GLIGEN's max_objs), under the name the model's limits use
        self.in_dim, self.out_dim, self.max_interactions = in_dim, out_dim, max_interactions
        self.fourier_freqs = fourier_freqs
        self.box_attention, self.role_embedding, self.action_tokens = "none", "fixed", False
        position_dim = fourier_freqs * 2 * 4
        self.linears = mlp(in_dim + position_dim, hidden_dim, out_dim)
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


@dataclass
class PhraseGrounding(ControlInput):
    """GLIGEN's grounding for a batch: phrase slots padded to the tokenizer's 30; the keyword
    arguments of GLIGENPositionNet.forward."""
    boxes: torch.Tensor        # [B, N, 4]
    masks: torch.Tensor        # [B, N], 1 = a phrase
    embeddings: torch.Tensor   # [B, N, D]


def phrases_from_interactions(items: Sequence) -> list[GroundedPhrase]:
    """Interactions as GLIGEN's phrases: every subject and object with its box, each distinct
    phrase and box once (one person doing two things is one phrase)."""
    out, seen = [], set()
    for item in items:
        for phrase, box in ((item.subject, item.subject_box), (item.object, item.object_box)):
            if (phrase, tuple(box)) not in seen:
                seen.add((phrase, tuple(box)))
                out.append(GroundedPhrase(phrase, tuple(box)))
    return out


def build_phrase_grounding(batch: Sequence[Sequence[GroundedPhrase]], encode_phrases, embed_dim: int,
                           max_phrases: int = MAX_INTERACTIONS) -> PhraseGrounding:
    """Each image's phrases and boxes padded to `max_phrases` slots (`encode_phrases`: [n]
    phrases -> [n, embed_dim])."""
    for b, items in enumerate(batch):
        if len(items) > max_phrases:
            raise ConditionError(f"batch item {b}: {len(items)} phrases, at most {max_phrases}")
    index, table = phrase_table([p.phrase for items in batch for p in items], encode_phrases, embed_dim)
    boxes, masks = torch.zeros(len(batch), max_phrases, 4), torch.zeros(len(batch), max_phrases)
    embeddings = torch.zeros(len(batch), max_phrases, embed_dim)
    for i, items in enumerate(batch):
        for j, p in enumerate(items):
            boxes[i, j], masks[i, j], embeddings[i, j] = torch.tensor(p.box), 1, table[index[p.phrase]]
    return PhraseGrounding(boxes, masks, embeddings)


def phrases_from_record(record: dict, where: str) -> list[GroundedPhrase]:
    """GLIGEN's record form {prompt, phrases: [...], boxes: [[x0, y0, x1, y1], ...]}."""
    phrases, boxes = record.get("phrases"), record.get("boxes")
    if not isinstance(phrases, list) or not isinstance(boxes, list):
        raise ConditionError(f"{where}: phrases and boxes must both be given, as lists")
    if len(phrases) != len(boxes):
        raise ConditionError(f"{where}: {len(phrases)} phrases but {len(boxes)} boxes; give one box per phrase")
    if len(phrases) > MAX_INTERACTIONS:
        raise ConditionError(f"{where}: {len(phrases)} phrases; at most {MAX_INTERACTIONS}")
    return [GroundedPhrase(check_phrase(p, f"{where}, phrase {j}"), check_box(b, f"{where}, boxes[{j}]"))
            for j, (p, b) in enumerate(zip(phrases, boxes))]


def _gligen_file(raw: dict) -> bool:
    model = raw.get("model")
    if not (isinstance(model, dict) and model and all(isinstance(v, torch.Tensor) for v in model.values())):
        return False
    keys = [k for k in model if isinstance(k, str)]
    # GLIGEN's MLP, and none of what the interaction tokenizer adds to it
    ours = any(k.startswith("position_net.linears.") for k in keys)
    interaction = any(k.startswith(("position_net.linear_action.", "position_net.interaction_embedding."))
                      for k in keys)
    return ours and not interaction


@register
class PhraseControl(Control):
    name = "phrases"
    title = "GLIGEN"
    record_keys = ("phrases", "boxes")
    record_label = "phrases and boxes"
    slot = "tokens"
    example = {"prompt": "a person and a cup", "phrases": ["person", "cup"],
               "boxes": [[0.1, 0.1, 0.5, 0.9], [0.5, 0.4, 0.8, 0.7]]}
    item_type = GroundedPhrase
    instances = True
    adopts = {"interaction": phrases_from_interactions}
    tokenizer_class = GLIGENPositionNet
    formats = (Format("gligen", "GLIGEN checkpoint (box grounding tokenizer + fusers)", _gligen_file, "phrases", True,
                      SD_V1_GLIGEN_CONFIG, "diffusers GLIGEN folder (unet/ with fusers + box grounding tokenizer, "
                                           "vae/, text_encoder/, tokenizer/, scheduler/)"),)

    @classmethod
    def parse(cls, record, where, base_dir=None):
        if "phrases" not in record and "boxes" not in record:
            return None
        return phrases_from_record(record, where)

    @classmethod
    def sidecar(cls, record, items):
        return {"phrases": [{"phrase": p.phrase, "box": list(p.box)} for p in items]}

    @classmethod
    def texts(cls, record, items):
        return [(f"phrases[{j}]", p.phrase) for j, p in enumerate(items)]

    @classmethod
    def draw(cls, draw, items, size, image_size):
        from interact.controls.drawing import draw_box
        for n, p in enumerate(items):
            draw_box(draw, p.box, f"{n}:{p.phrase}", PHRASE_COLOUR, size)

    def take(self, name, items, where):
        if name == "interaction":  # each distinct subject and object of the interactions, once
            phrases = phrases_from_interactions(check_interactions(items, len(items), where))
            self._check_count(phrases, where, f" (the distinct subjects and objects of its {len(items)} interactions)")
            return phrases
        return super().take(name, items, where)

    def check(self, items, where, prompt="", text=None, image_size=None):
        self._check_count(items, where, "")
        return items

    def _check_count(self, items, where, detail):
        limit = self.module.max_interactions
        if len(items) > limit:
            raise ConditionError(f"{where}: {len(items)} phrases{detail}, at most {limit} for this GLIGEN model")

    def build(self, captions, batch, text, context, image_size, options):
        return context, build_phrase_grounding(batch, text.encode_pooled, text.dim, self.module.max_interactions)

    def entries(self, input: PhraseGrounding, timesteps, scale):
        if scale == 0:
            return {}
        return {self.name: FuserInput(self.module(**input.as_kwargs()), scale)}

    def step_scale(self, step_index, steps, options):
        from interact.sampling import fuser_scale
        return fuser_scale(step_index, steps, options.scheduled_sampling, options.scheduled_decay)

    def branches(self, items):
        return [(p.phrase, [p]) for p in items]   # a phrase is its own caption
