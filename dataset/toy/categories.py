"""The toy world's vocabulary: object categories (subjects included), verbs and HOI categories.

Ids are 1-based and stable: they are written into the HICO-DET-style JSON, so changing an
order here changes every generated data set. Each category has one exact key colour used
for most of its pixels (no anti-aliasing), so a PNG alone tells where a category was drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ObjectCategory:
    id: int
    name: str
    kind: str        # "subject" (can act) or "object" (acted upon)
    colour: RGB      # the key colour: unique to this category


@dataclass(frozen=True)
class Verb:
    id: int
    name: str        # base form with spaces ("look at"); captions add the "-ing" themselves


@dataclass(frozen=True)
class HOICategory:
    id: int
    subject_id: int
    verb_id: int
    object_id: int
    rare: bool
    quota: int = 0   # rare only: its exact number of instances in the first RARE_SPAN train images


# Key colours are saturated or dark (some channel < 180) so they never equal a pastel
# background, whose channels are all >= 185 (see world.background_colour).
OBJECTS: tuple[ObjectCategory, ...] = (
    ObjectCategory(1, "person", "subject", (40, 70, 210)),       # blue body; head is SKIN
    ObjectCategory(2, "robot", "subject", (120, 125, 140)),      # grey
    ObjectCategory(3, "dog", "subject", (150, 95, 40)),          # brown
    ObjectCategory(4, "ball", "object", (225, 30, 30)),          # red
    ObjectCategory(5, "box", "object", (235, 145, 20)),          # orange
    ObjectCategory(6, "umbrella", "object", (150, 40, 180)),     # purple
    ObjectCategory(7, "cup", "object", (20, 170, 170)),          # teal
    ObjectCategory(8, "kite", "object", (240, 210, 0)),          # yellow
    ObjectCategory(9, "bicycle", "object", (20, 140, 40)),       # green
    ObjectCategory(10, "chair", "object", (250, 90, 170)),       # pink
    ObjectCategory(11, "skateboard", "object", (45, 45, 45)),    # charcoal
)

# Secondary colours. Each is used by one category only, except DETAIL (eyes, wheels' hubs),
# which is shared and therefore never used to locate a category.
SKIN: RGB = (230, 170, 130)       # person heads
BOX_TAPE: RGB = (170, 95, 10)     # the tape stripe across a box
DETAIL: RGB = (0, 0, 0)

VERBS: tuple[Verb, ...] = (
    Verb(1, "hold"),
    Verb(2, "kick"),
    Verb(3, "ride"),
    Verb(4, "look at"),
    Verb(5, "carry"),
    Verb(6, "push"),
    Verb(7, "throw"),
)

# Rare categories get a fixed quota (1-9, like HICO-DET's rare ones: fewer than 10 training
# instances) spread over the first RARE_SPAN train images; they are never drawn at random
# in train. The test split samples every category alike.
RARE_SPAN = 20000

# (subject, verb, object, rare quota or 0)
_HOI_TABLE = (
    ("person", "hold", "ball", 0),
    ("person", "hold", "cup", 0),
    ("person", "hold", "umbrella", 0),
    ("person", "hold", "kite", 0),
    ("person", "kick", "ball", 0),
    ("person", "kick", "box", 4),
    ("person", "ride", "bicycle", 0),
    ("person", "ride", "skateboard", 0),
    ("person", "look at", "ball", 0),
    ("person", "look at", "kite", 0),
    ("person", "look at", "bicycle", 7),
    ("person", "carry", "box", 0),
    ("person", "carry", "chair", 0),
    ("person", "push", "box", 0),
    ("person", "push", "chair", 9),
    ("person", "push", "bicycle", 0),
    ("person", "throw", "ball", 0),
    ("person", "throw", "cup", 2),
    ("robot", "hold", "cup", 0),
    ("robot", "hold", "umbrella", 5),
    ("robot", "kick", "ball", 0),
    ("robot", "ride", "skateboard", 1),
    ("robot", "look at", "ball", 0),
    ("robot", "carry", "box", 0),
    ("robot", "push", "box", 0),
    ("robot", "throw", "ball", 0),
    ("dog", "hold", "ball", 0),
    ("dog", "look at", "ball", 0),
    ("dog", "look at", "kite", 0),
    ("dog", "push", "ball", 0),
    ("dog", "ride", "skateboard", 3),
)

OBJECT_BY_NAME = {o.name: o for o in OBJECTS}
OBJECT_BY_ID = {o.id: o for o in OBJECTS}
VERB_BY_NAME = {v.name: v for v in VERBS}
VERB_BY_ID = {v.id: v for v in VERBS}

HOI_CATEGORIES: tuple[HOICategory, ...] = tuple(
    HOICategory(i, OBJECT_BY_NAME[s].id, VERB_BY_NAME[v].id, OBJECT_BY_NAME[o].id, q > 0, q)
    for i, (s, v, o, q) in enumerate(_HOI_TABLE, start=1)
)
HOI_BY_ID = {h.id: h for h in HOI_CATEGORIES}
HOI_BY_TRIPLET = {(h.subject_id, h.verb_id, h.object_id): h for h in HOI_CATEGORIES}

SUBJECT_NAMES = tuple(o.name for o in OBJECTS if o.kind == "subject")
OBJECT_NAMES = tuple(o.name for o in OBJECTS if o.kind == "object")
RARE_IDS = tuple(h.id for h in HOI_CATEGORIES if h.rare)


def hoi_names(hoi: HOICategory | int) -> tuple[str, str, str]:
    """(subject, verb, object) names of an HOI category."""
    h = HOI_BY_ID[hoi] if isinstance(hoi, int) else hoi
    return OBJECT_BY_ID[h.subject_id].name, VERB_BY_ID[h.verb_id].name, OBJECT_BY_ID[h.object_id].name


def find_hoi(subject: str, verb: str, obj: str) -> HOICategory:
    """The HOI category of a (subject, verb, object) name triplet; KeyError if not listed."""
    key = (OBJECT_BY_NAME[subject].id, VERB_BY_NAME[verb].id, OBJECT_BY_NAME[obj].id)
    return HOI_BY_TRIPLET[key]


def categories_dict() -> dict:
    """The vocabulary as written to categories.json (without seed, size and counts)."""
    return {
        "objects": [{"id": o.id, "name": o.name, "kind": o.kind} for o in OBJECTS],
        "verbs": [{"id": v.id, "name": v.name} for v in VERBS],
        "hoi_categories": [{"id": h.id, "subject_id": h.subject_id, "verb_id": h.verb_id,
                            "object_id": h.object_id, "rare": h.rare} for h in HOI_CATEGORIES],
    }
