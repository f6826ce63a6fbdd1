"""Type labels for the typed role embeddings (interact/controls/interactions.py, `role_embedding: typed`).

Entities (subjects and objects) are human (0) or non-human (1); actions are contact (0) or
non-contact (1). The trainer looks every interaction's phrases up here to fit the tokenizer's
type classifiers; a phrase with no label (-1) does not enter that loss.

Shipped lists: "toy" (the toy HOI world) and "hico" (HICO-DET's 80 objects and 117 verbs).
A JSON file gives any other dataset's: {"entities": {"person": "human", ...},
"actions": {"hold": "contact", "look at": "non-contact", ...}}.

The HICO verb split is a judgement call, written down here so that it can be argued with:
non-contact means the subject need not touch the object while doing it (watch, point, chase,
hose). Verbs that are usually done with the object in hand or under the body count as
contact even when a moment without contact exists (throw, launch, release).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dataset.hico_names import OBJECT_NAMES, VERB_NAMES, phrase

HUMAN, NON_HUMAN = 0, 1
CONTACT, NON_CONTACT = 0, 1
UNLABELLED = -1
ENTITY_TYPES = {"human": HUMAN, "non-human": NON_HUMAN}
ACTION_TYPES = {"contact": CONTACT, "non-contact": NON_CONTACT}

HICO_HUMAN_OBJECTS = ("person",)
HICO_NON_CONTACT_VERBS = (
    "blow", "buy", "chase", "check", "direct", "greet", "herd", "hose", "hunt", "inspect", "lose",
    "no_interaction", "point", "read", "smell", "stand_under", "stop_at", "teach", "train", "watch", "wave",
)
TOY_HUMAN_OBJECTS = ("person",)           # robots are the toy world's non-human subjects
TOY_NON_CONTACT_VERBS = ("wave at", "point at")


def _key(name) -> str:
    """Lookups ignore case, underscores and extra spaces (CLIP's tokenizer ignores them too)."""
    return phrase(name).lower()


@dataclass(frozen=True)
class RoleTypes:
    entities: dict[str, int]  # phrase -> HUMAN | NON_HUMAN
    actions: dict[str, int]   # phrase -> CONTACT | NON_CONTACT

    def entity(self, name: str) -> int:
        return self.entities.get(_key(name), UNLABELLED)

    def action(self, name: str) -> int:
        return self.actions.get(_key(name), UNLABELLED)

    def labels(self, batch, max_interactions: int) -> torch.Tensor:
        """Interactions per image -> [3, B, N] long: subject, object and action types per slot
        (the tokenizer's SUBJECT, OBJECT, ACTION rows); padded slots and unknown phrases are -1."""
        out = torch.full((3, len(batch), max_interactions), UNLABELLED, dtype=torch.long)
        for b, items in enumerate(batch):
            for n, it in enumerate(items):
                out[0, b, n] = self.entity(it.subject)
                out[1, b, n] = self.entity(it.object)
                out[2, b, n] = self.action(it.action)
        return out


def _split(names, positive, positive_label: int, negative_label: int) -> dict[str, int]:
    positive = {_key(p) for p in positive}
    unknown = positive - {_key(n) for n in names}
    if unknown:
        raise ValueError(f"role type list names {sorted(unknown)}, which are not in the vocabulary")
    return {_key(n): positive_label if _key(n) in positive else negative_label for n in names}


def hico_role_types() -> RoleTypes:
    non_contact = _split(VERB_NAMES.values(), HICO_NON_CONTACT_VERBS, NON_CONTACT, CONTACT)
    return RoleTypes(_split(OBJECT_NAMES.values(), HICO_HUMAN_OBJECTS, HUMAN, NON_HUMAN), non_contact)


def toy_role_types() -> RoleTypes:
    from dataset.toy.categories import OBJECTS, VERBS
    return RoleTypes(_split([o.name for o in OBJECTS], TOY_HUMAN_OBJECTS, HUMAN, NON_HUMAN),
                     _split([v.name for v in VERBS], TOY_NON_CONTACT_VERBS, NON_CONTACT, CONTACT))


def read_role_types(path) -> RoleTypes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"role types file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    tables = {}
    for key, kinds in (("entities", ENTITY_TYPES), ("actions", ACTION_TYPES)):
        section = data.get(key) if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{path}: '{key}' must be a mapping of phrase -> one of {sorted(kinds)}")
        for name, kind in section.items():
            if kind not in kinds:
                raise ValueError(f"{path}: {key}[{name!r}] = {kind!r}: must be one of {sorted(kinds)}")
        tables[key] = {_key(name): kinds[kind] for name, kind in section.items()}
    return RoleTypes(tables["entities"], tables["actions"])


def load_role_types(spec: str) -> RoleTypes:
    """"toy", "hico" or a JSON file's path."""
    if spec == "toy":
        return toy_role_types()
    if spec == "hico":
        return hico_role_types()
    return read_role_types(spec)
