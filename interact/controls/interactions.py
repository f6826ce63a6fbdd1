"""The interaction control (InteractDiffusion): (subject, action, object) triplets with a subject
and an object box, tokenized by the interaction tokenizer (released name `position_net`,
docs/reference.md §1) into three tokens per interaction for the fusers.

Each interaction slot n gives three tokens: subject, action, object. A token is
MLP(concat(CLIP pooled phrase embedding, Fourier(box))) + instance embedding[n]
+ role embedding[role]. Output order: [subjects x N, actions x N, objects x N]. The action gets
the box "between" subject and object (hoi.records.between).

`action_tokens=False` gives GLIGEN-style grounding for ablations (the "box only" row of the
paper's table): subject and object tokens only, [subjects x N, objects x N], and no action MLP
or null action feature in the weights.

`role_embedding="typed"` (the reproduction study's variant): the role embedding also says what
kind of thing fills the role. Subjects and objects are human or non-human, actions contact or
non-contact. Two small classifiers over the phrase's CLIP embedding (in_dim -> 64 -> 2) give
type probabilities p, and a token gets

    role_embedding[role] + p[0] * type_offsets[role, 0] + p[1] * type_offsets[role, 1]

The offsets are zero at first, so each typed embedding starts as its role's embedding, and a
released checkpoint (which has none of these weights) loads and behaves exactly as before. The
mixture keeps the choice differentiable; the trainer also fits the classifiers to the data set's
type labels (dataset/role_types.py) through this control's auxiliary loss.

Box-aware attention (`box_attention="boxes"`, a toy-world option): each token carries its box
(the action token its action box), the region whose visual tokens may attend to it; padded
slots cover the whole image.

Records: `subject_phrases`, `action_phrases`, `object_phrases`, `subject_boxes`, `object_boxes`
(lists of one length, at most 30); in Python, lists of hoi.records.Interaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from hoi.captions import caption_from_triplets
from hoi.records import (MAX_INTERACTIONS, ConditionError, Interaction, between, check_interactions)
from interact.controls.base import Control, ControlInput, Format, FuserInput, phrase_table, register
from interact.controls.tokens import FOURIER_FREQS, WHOLE_IMAGE, Embedding, fourier_embed, mlp
from interact.paths import SD_V1_CONFIG

SUBJECT, OBJECT, ACTION = 0, 1, 2  # role-embedding rows, as in the released weights
ROLE_EMBEDDINGS = ("fixed", "typed")
BOX_ATTENTION = ("none", "boxes")
TYPE_CLASSIFIER_HIDDEN = 64
RECORD_LIST_FIELDS = ("subject_phrases", "action_phrases", "object_phrases", "subject_boxes", "object_boxes")
LAYOUT_COLOURS = {"subject": (230, 40, 40), "object": (40, 90, 230), "action": (30, 170, 60)}


# ----------------------------------------------------------------------------- the tokenizer

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
        self.linears = mlp(in_dim + position_dim, hidden_dim, out_dim)  # subjects and objects share it
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        if action_tokens:
            self.linear_action = mlp(in_dim + position_dim, hidden_dim, out_dim)
            self.null_action_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))
        self.interaction_embedding = Embedding(max_interactions, out_dim)   # by slot
        self.position_embedding = Embedding(3, out_dim)   # by role: see role_embedding_table
        self.role_embedding = role_embedding
        if role_embedding == "typed":
            # entity: human / non-human (subjects and objects); action: contact / non-contact
            self.entity_classifier = _type_classifier(in_dim)
            self.action_classifier = _type_classifier(in_dim)
            self.type_offsets = nn.Parameter(torch.zeros(3, 2, out_dim))  # [role, type, dim]

    @property
    def role_embedding_table(self) -> Embedding:
        """One row per role, rows SUBJECT, OBJECT, ACTION (released name `position_embedding`)."""
        return self.position_embedding

    @property
    def num_tokens(self) -> int:
        return (3 if self.action_tokens else 2) * self.max_interactions

    def type_logits(self, embeddings: torch.Tensor, role: int) -> torch.Tensor:
        """[..., in_dim] phrase embeddings -> [..., 2] type logits for `role` (typed only)."""
        classifier = self.action_classifier if role == ACTION else self.entity_classifier
        return classifier(embeddings)

    def _tokens(self, boxes, embeddings, mask, null_text, mlp_, role):
        position = fourier_embed(boxes, self.fourier_freqs)
        position = position * mask + (1 - mask) * self.null_position_feature
        text = embeddings * mask + (1 - mask) * null_text
        tokens = mlp_(torch.cat([text, position], dim=-1))
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
        padded slot (box-aware attention)."""
        real = masks[..., None] > 0
        whole = torch.tensor(WHOLE_IMAGE, device=subject_boxes.device, dtype=subject_boxes.dtype)
        roles = [subject_boxes, action_boxes, object_boxes] if self.action_tokens else [subject_boxes, object_boxes]
        return torch.cat([torch.where(real, r, whole) for r in roles], dim=1)

    def forward(self, subject_boxes, action_boxes, object_boxes, masks, subject_embeddings, action_embeddings,
                object_embeddings) -> torch.Tensor:
        """Boxes [B,N,4] normalised xyxy, masks [B,N] (1 = real slot), embeddings [B,N,in_dim] ->
        [B,3N,out_dim] ([B,2N,out_dim] without action tokens). Arguments in the order subject,
        action, object (Grounding's fields)."""
        n = subject_boxes.shape[1]
        if n > self.max_interactions:
            raise ValueError(f"{n} interaction slots given; this interaction tokenizer has {self.max_interactions}")
        mask = masks[..., None].to(subject_embeddings.dtype)
        subject = self._tokens(subject_boxes, subject_embeddings, mask, self.null_positive_feature, self.linears,
                               SUBJECT)
        obj = self._tokens(object_boxes, object_embeddings, mask, self.null_positive_feature, self.linears, OBJECT)
        # The released token order (docs/reference.md §1); the fusers' weights were trained on it.
        if not self.action_tokens:
            return torch.cat([subject, obj], dim=1)
        action = self._tokens(action_boxes, action_embeddings, mask, self.null_action_feature, self.linear_action,
                              ACTION)
        return torch.cat([subject, action, obj], dim=1)


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


# ----------------------------------------------------------------------------- the batch input

@dataclass
class Grounding(ControlInput):
    """Padded grounding tensors for a batch; the keyword arguments of the interaction tokenizer
    (HOIPositionNet.forward), in the order subject, action, object. Padded slots carry mask 0 and
    take the tokenizer's learned null features, which is also the unconditional grounding."""
    subject_boxes: torch.Tensor        # [B, N, 4]
    action_boxes: torch.Tensor         # [B, N, 4]
    object_boxes: torch.Tensor         # [B, N, 4]
    masks: torch.Tensor                # [B, N], 1 = real interaction
    subject_embeddings: torch.Tensor   # [B, N, D]
    action_embeddings: torch.Tensor    # [B, N, D]
    object_embeddings: torch.Tensor    # [B, N, D]


def build_grounding(batch: Sequence[Sequence[Interaction]], encode_phrases, embed_dim: int,
                    max_interactions: int = MAX_INTERACTIONS) -> Grounding:
    """Pad each image's interactions to `max_interactions` slots; each distinct phrase is encoded
    once (`encode_phrases`: [n] phrases -> [n, embed_dim])."""
    batch = [check_interactions(items, max_interactions, f"batch item {b}") for b, items in enumerate(batch)]
    index, table = phrase_table([p for items in batch for it in items for p in (it.subject, it.action, it.object)],
                                encode_phrases, embed_dim)
    b, n = len(batch), max_interactions
    boxes = torch.zeros(2, b, n, 4)
    masks = torch.zeros(b, n)
    ids = torch.zeros(3, b, n, dtype=torch.long)
    for i, items in enumerate(batch):
        for j, it in enumerate(items):
            boxes[0, i, j] = torch.tensor(it.subject_box)
            boxes[1, i, j] = torch.tensor(it.object_box)
            masks[i, j] = 1
            ids[:, i, j] = torch.tensor([index[it.subject], index[it.action], index[it.object]])
    embeddings = table[ids] if len(index) else torch.zeros(3, b, n, embed_dim)
    embeddings = embeddings * masks[None, ..., None]  # padded slots hold zeros (the tokenizer swaps in nulls)
    return Grounding(subject_boxes=boxes[0], action_boxes=between(boxes[0], boxes[1]) * masks[..., None],
                     object_boxes=boxes[1], masks=masks, subject_embeddings=embeddings[0],
                     action_embeddings=embeddings[1], object_embeddings=embeddings[2])


# ----------------------------------------------------------------------------- records

def interactions_from_record(record: dict, where: str = "record",
                             max_interactions: int = MAX_INTERACTIONS) -> list[Interaction]:
    """Parse a layout record's {subject_phrases, action_phrases, object_phrases, subject_boxes,
    object_boxes}; errors name the record and the field."""
    if not isinstance(record, dict):
        raise ConditionError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in RECORD_LIST_FIELDS if f not in record]
    if missing:
        raise ConditionError(f"{where}: missing field(s) {', '.join(missing)}")
    lengths = {f: len(record[f]) if isinstance(record[f], (list, tuple)) else None for f in RECORD_LIST_FIELDS}
    for f, n in lengths.items():
        if n is None:
            raise ConditionError(f"{where}: {f} = {record[f]!r}: expected a list")
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{f}={n}" for f, n in lengths.items())
        raise ConditionError(f"{where}: list lengths disagree ({detail})")
    out = []
    for i in range(lengths["subject_phrases"]):
        values = {f: record[f][i] for f in RECORD_LIST_FIELDS}
        try:
            out.append(Interaction(values["subject_phrases"], values["action_phrases"], values["object_phrases"],
                                   values["subject_boxes"], values["object_boxes"]))
        except ConditionError as err:
            raise ConditionError(f"{where}, interaction {i}: {_plural_field(str(err))}") from None
    return check_interactions(out, max_interactions, where)


def _plural_field(message: str) -> str:
    # Interaction's own messages use the singular field names; records use the list names.
    for singular in ("subject_box", "object_box"):
        if message.startswith(singular + " "):
            return singular + "es" + message[len(singular):]
    for singular in ("subject", "action", "object"):
        if message.startswith(singular + " "):
            return singular + "_phrases" + message[len(singular):]
    return message


# ----------------------------------------------------------------------------- checkpoint formats

def _tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _ours(keys) -> bool:
    """A tokenizer of this control: the action MLP or the instance embedding (GLIGEN's has neither;
    the box-only ablation has no action MLP)."""
    ours = ("position_net.linear_action.", "position_net.interaction_embedding.")
    return any(isinstance(k, str) and k.startswith(ours) for k in keys)


def _control_only(keys) -> bool:
    return all(isinstance(k, str) and (k.startswith("position_net.") or ".fuser." in k) for k in keys)


FORMATS = (
    Format("webui_extension", "InteractDiffusion WebUI extension file (position_net + fusers, one flat dict)",
           lambda raw: _tensor_dict(raw) and _control_only(raw) and _ours(raw), "interaction", False, SD_V1_CONFIG),
    Format("interactdiffusion", "InteractDiffusion checkpoint (UNet + interaction tokenizer + fusers)",
           lambda raw: _tensor_dict(raw.get("model")) and _ours(raw["model"]) and not _control_only(raw["model"]),
           "interaction", True, SD_V1_CONFIG,
           "diffusers InteractDiffusion folder (unet/ with fusers + interaction tokenizer, vae/, text_encoder/, "
           "tokenizer/, scheduler/)"),
    Format("interaction_weights", "interaction weights only (position_net + fusers)",
           lambda raw: _tensor_dict(raw.get("model")) and _ours(raw["model"]) and _control_only(raw["model"]),
           "interaction", False, SD_V1_CONFIG),
)
# Parts of this tokenizer that a GLIGEN box checkpoint does not have; they start fresh.
GLIGEN_FRESH_KEYS = ("position_net.interaction_embedding.", "position_net.position_embedding.")


def gligen_to_interaction(model_section: dict) -> dict:
    """docs/reference.md §3: a GLIGEN box+text `model` section -> this tokenizer's names. GLIGEN's
    `linears` initialise both `linears` and `linear_action`, its null text feature both null
    features; fusers and UNet copy as they are."""
    out = {}
    for key, value in model_section.items():
        if key.startswith("position_net.linears."):
            out[key] = value
            out[key.replace("position_net.linears.", "position_net.linear_action.")] = value.clone()
        elif key == "position_net.null_positive_feature":
            out[key] = value
            out["position_net.null_action_feature"] = value.clone()
        elif key.startswith("position_net.") and key != "position_net.null_position_feature":
            continue  # GLIGEN-only parts (e.g. image branches) have no counterpart here
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- the control

@register
class InteractionControl(Control):
    name = "interaction"
    title = "InteractDiffusion"
    record_keys = RECORD_LIST_FIELDS
    record_label = "interactions (subject_phrases, ...)"
    slot = "tokens"
    example = {"prompt": "a person holding a cup", "subject_phrases": ["person"], "action_phrases": ["holding"],
               "object_phrases": ["cup"], "subject_boxes": [[0.1, 0.1, 0.5, 0.9]],
               "object_boxes": [[0.5, 0.4, 0.8, 0.7]]}
    item_type = Interaction
    instances = True
    tokenizer_class = HOIPositionNet
    formats = FORMATS
    sidecar_key: ClassVar[str] = "interactions"

    def __init__(self, module: HOIPositionNet):
        super().__init__(module)
        self.role_types = None

    # records
    @classmethod
    def parse(cls, record, where, base_dir=None):
        if not any(f in record for f in RECORD_LIST_FIELDS):
            return None
        return interactions_from_record(record, where)

    @classmethod
    def sidecar(cls, record, items):
        return {cls.sidecar_key: [{"subject": it.subject, "action": it.action, "object": it.object,
                                   "subject_box": list(it.subject_box), "object_box": list(it.object_box),
                                   "action_box": list(it.action_box)} for it in items]}

    @classmethod
    def texts(cls, record, items):
        return [(f"{name}[{j}]", phrase) for name in ("subject_phrases", "action_phrases", "object_phrases")
                for j, phrase in enumerate(record.get(name, []))]

    @classmethod
    def draw(cls, draw, items, size, image_size):
        from interact.controls.drawing import draw_box
        for n, it in enumerate(items):
            for role, box, phrase in (("subject", it.subject_box, it.subject), ("object", it.object_box, it.object),
                                      ("action", it.action_box, it.action)):
                draw_box(draw, box, f"{n}:{phrase}", LAYOUT_COLOURS[role], size, label_below=role == "object")

    # with a model
    def check(self, items, where, prompt="", text=None, image_size=None):
        items = check_interactions(items, len(items), where)
        limit = self.module.max_interactions
        if len(items) > limit:
            raise ConditionError(f"{where}: interactions: {len(items)} given, at most {limit} allowed by this model")
        return items

    def build(self, captions, batch, text, context, image_size, options):
        return context, build_grounding(batch, text.encode_pooled, text.dim, self.module.max_interactions)

    def entries(self, input: Grounding, timesteps, scale):
        if scale == 0:  # scheduled sampling's late steps: the fusers are skipped, not computed
            return {}
        kwargs = input.as_kwargs()
        regions = None
        if self.module.box_attention != "none":
            regions = self.module.token_regions(input.subject_boxes, input.action_boxes, input.object_boxes,
                                                input.masks)
        return {self.name: FuserInput(self.module(**kwargs), scale, regions)}

    def step_scale(self, step_index, steps, options):
        from interact.sampling import fuser_scale
        return fuser_scale(step_index, steps, options.scheduled_sampling, options.scheduled_decay)

    def branches(self, items):
        return [(caption_from_triplets([it]), [it]) for it in items]

    def prepare_training(self, role_types=None, **_):
        if self.module.role_embedding == "typed" and role_types is None:
            raise ValueError("train.role_types: required with interaction.role_embedding = typed "
                             "(\"toy\", \"hico\" or a JSON file; see dataset/role_types.py)")
        self.role_types = role_types if self.module.role_embedding == "typed" else None

    def aux_loss(self, cond, batch):
        if self.role_types is None:
            return None
        g = cond.controls[self.name]   # rows in the role-embedding order the classifiers' loss takes
        embeddings = torch.stack([g.subject_embeddings, g.object_embeddings, g.action_embeddings])
        labels = self.role_types.labels(batch["controls"][self.name], self.module.max_interactions)
        return role_type_loss(self.module, embeddings, labels.to(embeddings.device))

    # checkpoints
    def starts_from(self, control):
        if control == "phrases":
            return gligen_to_interaction, lambda k: k.startswith(GLIGEN_FRESH_KEYS)
        return None

    def complete_state(self, state):
        """A typed-role model loading a file without the typed weights (any released checkpoint):
        those start as typed_role_defaults, i.e. exactly the file's role embeddings."""
        if self.module.role_embedding != "typed" or "position_net.type_offsets" in state:
            return state
        return {**state, **typed_role_defaults(self.module)}

    def variant(self, state):
        # a file without the typed weights fits either variant (complete_state fills them in)
        return {"role_embedding": "typed"} if "position_net.type_offsets" in state else {}

    def fit_folder_state(self, state: dict) -> None:
        """The released diffusers InteractDiffusion class declares 32 instance embeddings where
        the tokenizer uses 30 (its pipeline pads to 30): rows past the model's slots are never
        read, so they are dropped."""
        key = "position_net.interaction_embedding.emb.weight"
        ours = self.module.interaction_embedding.emb.weight
        if key in state and state[key].shape[0] > ours.shape[0] and state[key].shape[1:] == ours.shape[1:]:
            state[key] = state[key][:ours.shape[0]]
