"""HICO-DET name lists, as data.

- `OBJECT_NAMES`: the 80 HICO-DET object classes keyed by their COCO category id
  (1..90 with gaps). The detector JSON (`trainval_hico.json` / `test_hico.json` of
  QPIC, CDN, FGAHOI) uses these ids in `annotations[].category_id`; the subject of
  every HICO interaction is id 1, "person".
- `VERB_NAMES`: the 117 verbs keyed 1..117 in the official HICO order (the JSON's
  `hoi_annotation[].category_id`); verb 58 is "no_interaction".

Names are stored as the datasets spell them (COCO names with spaces, HICO verbs
with underscores); `phrase()` turns any of them into the text given to the model.
A dataset with other names (the toy HOI world) passes its own lists through
`dataset.hico.load_category_file`.
"""
from __future__ import annotations

# COCO category id -> name, for the 80 classes HICO-DET uses (COCO's 80 detection classes).
OBJECT_NAMES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}

# The 117 HICO verbs in official order; verb id = position + 1.
_VERBS = (
    "adjust assemble block blow board break brush_with buy carry catch chase check clean control "
    "cook cut cut_with direct drag dribble drink_with drive dry eat eat_at exit feed fill flip "
    "flush fly greet grind groom herd hit hold hop_on hose hug hunt inspect install jump kick "
    "kiss lasso launch lick lie_on lift light load lose make milk move no_interaction open "
    "operate pack paint park pay peel pet pick pick_up point pour pull push race read release "
    "repair ride row run sail scratch serve set shear sign sip sit_at sit_on slide smell spin "
    "squeeze stab stand_on stand_under stick stir stop_at straddle swing tag talk_on teach "
    "text_on throw tie toast train turn type_on walk wash watch wave wear wield zip"
).split()
VERB_NAMES: dict[int, str] = {i + 1: name for i, name in enumerate(_VERBS)}

PERSON_ID = 1
NO_INTERACTION_ID = 58

assert len(OBJECT_NAMES) == 80 and len(VERB_NAMES) == 117
assert VERB_NAMES[NO_INTERACTION_ID] == "no_interaction" and OBJECT_NAMES[PERSON_ID] == "person"


def phrase(name: str) -> str:
    """The model's phrase for a dataset name: underscores to spaces, whitespace collapsed
    ("no_interaction" -> "no interaction", "hair_drier" -> "hair drier")."""
    return " ".join(str(name).replace("_", " ").split())
