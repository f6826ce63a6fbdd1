"""The toy world's vocabulary: object categories (subjects included), verbs and HOI categories.

Ids are 1-based and stable: they are written into the HICO-DET-style JSON, so changing an
order here changes every generated data set. Each category has one exact key colour used
for its pixels (no anti-aliasing), so a PNG alone tells where a category was drawn.

Verbs come in *geometry groups*: the verbs of a group place the object in the same spot
relative to the subject (same box geometry, drawn from the same distribution), and differ
only in the subject's pose. Box geometry therefore cannot tell them apart; only the pixels of
the subject can (docs/toy_world.md).
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
    name: str        # base form with spaces ("wave at"); captions add the "-ing" themselves
    group: str       # geometry group: where the object is, relative to the subject


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
    ObjectCategory(1, "person", "subject", (40, 70, 210)),       # blue body; the head is SKIN
    ObjectCategory(2, "robot", "subject", (90, 95, 110)),        # dark grey, square head
    ObjectCategory(3, "ball", "object", (225, 30, 30)),          # red disc
    ObjectCategory(4, "box", "object", (235, 145, 20)),          # orange square
    ObjectCategory(5, "kite", "object", (30, 160, 60)),          # green diamond
)

# The person's head: its only secondary colour (the detector counts it as "person").
SKIN: RGB = (230, 170, 130)

# Where the object is in each group, relative to a subject facing it (world.place_object).
GROUPS = {
    "hand": "in front of the subject at shoulder height, next to its reaching hand",
    "ground": "on the ground in front of the subject, next to its reaching foot or hand",
}

VERBS: tuple[Verb, ...] = (
    Verb(1, "hold", "hand"),        # front arm straight out at shoulder height, hand on the object
    Verb(2, "wave at", "hand"),     # front arm raised high, hand above the object
    Verb(3, "kick", "ground"),      # front leg swung forward, foot against the object
    Verb(4, "point at", "ground"),  # front arm pointing down at the object, both feet down
)

# Rare categories get a fixed quota (1-9, like HICO-DET's rare ones: fewer than 10 training
# instances) spread over the first RARE_SPAN train images; they are never drawn at random
# in train. The test split samples every category alike.
RARE_SPAN = 20000

# Every (subject, verb, object) combination is a category, so within a geometry group the
# subject and object categories say nothing about the verb either.  {triplet: rare quota}
_RARE_QUOTAS = {
    ("robot", "hold", "kite"): 4,
    ("robot", "wave at", "box"): 7,
    ("person", "kick", "kite"): 2,
    ("robot", "point at", "ball"): 9,
    ("person", "wave at", "kite"): 5,
    ("robot", "kick", "box"): 3,
}

OBJECT_BY_NAME = {o.name: o for o in OBJECTS}
OBJECT_BY_ID = {o.id: o for o in OBJECTS}
VERB_BY_NAME = {v.name: v for v in VERBS}
VERB_BY_ID = {v.id: v for v in VERBS}
SUBJECT_NAMES = tuple(o.name for o in OBJECTS if o.kind == "subject")
OBJECT_NAMES = tuple(o.name for o in OBJECTS if o.kind == "object")

HOI_CATEGORIES: tuple[HOICategory, ...] = tuple(
    HOICategory(i, OBJECT_BY_NAME[s].id, VERB_BY_NAME[v].id, OBJECT_BY_NAME[o].id,
                (s, v, o) in _RARE_QUOTAS, _RARE_QUOTAS.get((s, v, o), 0))
    for i, (s, v, o) in enumerate(((s, v.name, o) for s in SUBJECT_NAMES for v in VERBS for o in OBJECT_NAMES),
                                  start=1)
)
HOI_BY_ID = {h.id: h for h in HOI_CATEGORIES}
HOI_BY_TRIPLET = {(h.subject_id, h.verb_id, h.object_id): h for h in HOI_CATEGORIES}
RARE_IDS = tuple(h.id for h in HOI_CATEGORIES if h.rare)


def hoi_names(hoi: HOICategory | int) -> tuple[str, str, str]:
    """(subject, verb, object) names of an HOI category."""
    h = HOI_BY_ID[hoi] if isinstance(hoi, int) else hoi
    return OBJECT_BY_ID[h.subject_id].name, VERB_BY_ID[h.verb_id].name, OBJECT_BY_ID[h.object_id].name


def find_hoi(subject: str, verb: str, obj: str) -> HOICategory:
    """The HOI category of a (subject, verb, object) name triplet; KeyError if not listed."""
    key = (OBJECT_BY_NAME[subject].id, VERB_BY_NAME[verb].id, OBJECT_BY_NAME[obj].id)
    return HOI_BY_TRIPLET[key]


def group_partners(hoi: HOICategory | int) -> list[HOICategory]:
    """The other categories with the same subject, object and geometry group (other verbs):
    the ones whose pairs have exactly the same box geometry as `hoi`'s."""
    h = HOI_BY_ID[hoi] if isinstance(hoi, int) else hoi
    group = VERB_BY_ID[h.verb_id].group
    return [o for o in HOI_CATEGORIES if o.id != h.id and o.subject_id == h.subject_id
            and o.object_id == h.object_id and VERB_BY_ID[o.verb_id].group == group]


def categories_dict() -> dict:
    """The vocabulary as written to categories.json (without seed, size and counts)."""
    return {
        "objects": [{"id": o.id, "name": o.name, "kind": o.kind} for o in OBJECTS],
        "verbs": [{"id": v.id, "name": v.name, "group": v.group} for v in VERBS],
        "hoi_categories": [{"id": h.id, "subject_id": h.subject_id, "verb_id": h.verb_id,
                            "object_id": h.object_id, "rare": h.rare} for h in HOI_CATEGORIES],
    }
