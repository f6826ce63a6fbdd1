"""HICO-DET HOI detection mAP (Full / Rare / Non-rare x Default / Known Object).

    python -m evaluation.hico_map --gt test_hico.json --pred detections.json
        [--categories categories.json | --train trainval_hico.json] [--format json|fgahoi]
        [--csv per_category.csv] [--ap voc11|all_point] [--allow-pickle]

Protocol (docs/reference.md §5, the official HICO-DET evaluation, ywchao/ho-rcnn `eval_one.m` +
`VOCevaldet_bboxpair.m`):

- A detection is (subject box, object box, HOI category, score). Per HOI category all
  detections of all images are sorted by score, descending (stable: ties keep image order,
  then the order in the file). Each one is compared with the ground-truth pairs of the same
  category in its image: overlap = min(IoU(subject boxes), IoU(object boxes)); the pair with
  the largest overlap is taken (first one on ties). If that overlap is >= 0.5 (so BOTH boxes
  have IoU >= 0.5) and the pair is not matched yet, the detection is a true positive and the
  pair is matched; otherwise (no such pair, or a duplicate of an already matched pair) it is a
  false positive.
- AP per category from the cumulated precision/recall (recall = TP / #GT pairs of the
  category). `ap_method="voc11"` (default) is what the HICO-DET evaluation code actually
  computes: the 11-point interpolated AP of PASCAL VOC 2007,
      AP = 1/11 * sum over t in {0, 0.1, ..., 1} of max(precision[recall >= t]) (0 if none).
  The official MATLAB code, QPIC's `hico_eval.py` (`voc_ap`) and FGAHOI's / QAHOI's
  `hico_eval.py` (`compute_ap`, the evaluator behind docs/reference.md §5's numbers) all use this form.
  Thresholds here are k/10 exactly; the Python ports use `np.arange(0, 1.1, 0.1)`, whose 0.3,
  0.6 and 0.7 are one ulp above k/10, so a recall of exactly 0.3 (say) counts here and not
  there - a measure-zero difference. `ap_method="all_point"` is the VOC 2010+ area under the
  interpolated curve, mrec = [0, rec, 1], mpre = [0, prec, 0] made non-increasing from the
  right, AP = sum (mrec[i] - mrec[i-1]) * mpre[i] over the points where recall changes; it is
  NOT what the published HICO-DET numbers use.
- mAP = mean AP over the categories that have at least one GT pair in the ground truth given
  (Full), over those flagged rare (Rare), over the others (Non-rare). A category with no GT pair
  has no AP (NaN in `per_category`) and is excluded from every mean; a group with no category
  left (e.g. no rare category present) has mAP NaN. (The official code averages all 600, which
  all have test pairs; FGAHOI's code gives AP 0 to a category with neither GT nor detections.)
- Default: all images. Known Object: for each category only the images whose ground truth
  `annotations` contain a box of the category's object class; detections on other images are
  dropped for that category (GT pairs are unaffected: they are on such images by definition).
  In HICO-DET JSON every annotated box belongs to a pair, so this is the official rule (images
  with a positive HOI of that object); in the toy world every drawn object is annotated.

Box convention: xyxy in pixels, continuous coordinates, area = (x2 - x1) * (y2 - y1), no "+1"
(the toy world's boxes have exclusive right/bottom edges). The official and QPIC/FGAHOI codes
add 1 to widths and heights (inclusive pixel indices); `inclusive_pixels=True` reproduces that.
It changes IoUs of large HICO boxes negligibly and of few-pixel boxes a lot. (FGAHOI's evaluator
also tests IoU > 0.5 rather than >= 0.5, takes the first unmatched GT pair instead of the best
one, and reads Known Object's image lists from its `file_name_to_obj_cat.json`; those
differences are not reproduced.)

Formats (other code relies on them):
- Ground truth: the HICO-DET detector JSON (`test_hico.json`, as read by
  `dataset.hico.read_detector_json`): a list of images {"file_name", "annotations": [{"bbox",
  "category_id" = object id}], "hoi_annotation": [{"subject_id", "object_id" (indices into
  annotations), "category_id" = verb id, optional "hoi_category_id"}]}.
- Detections: the same per image with "predictions" for "annotations" and "hoi_prediction"
  entries carrying a "score". Boxes must be in the same pixel frame as the ground truth (for
  generated images: rescale the GT to the generated size, as InteractDiffusion's FGAHOI
  `tester.py` does).
- A pair's HOI category is looked up from (subject class, verb, object class) in the
  `HOICategories` table - for HICO, whose 600 categories are (verb, object) with a person
  subject, from (verb, object) alone. A valid triplet that is not a listed category is ignored
  (as the HICO evaluators do); an unknown image, object or verb id, an index out of range, a
  non-finite score or a malformed box (not 4 finite numbers, x2 < x1 or y2 < y1) is an
  `HOIEvalError` (a ValueError) naming the file, the image and the field.
- `read_fgahoi` converts FGAHOI's raw evaluation dump (see its docstring) to the detection layout.

Python API: `HOICategories.from_file / .hico`, `read_ground_truth`, `read_detections`,
`read_fgahoi`, `evaluate_hoi_map` -> `HOIMapResult` (`.summary` as fractions in [0, 1],
`.per_category`, `.write_csv`, `.table`), `average_precision`, `box_iou`.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from dataset.hico_names import OBJECT_NAMES, PERSON_ID, VERB_NAMES

HICO_NUM_CATEGORIES = 600
RARE_THRESHOLD = 10          # rare: fewer than 10 training instances (docs/reference.md §4)
IOU_THRESHOLD = 0.5
AP_METHODS = ("voc11", "all_point")
# FGAHOI's contiguous object label -> COCO category id (its `valid_obj_ids`): the 80 HICO ids ascending.
HICO_OBJECT_IDS: tuple[int, ...] = tuple(sorted(OBJECT_NAMES))
FGAHOI_MAX_HOIS = 100        # FGAHOI/QPIC keep the 100 best (pair, verb) triplets per image
FGAHOI_NMS_THRESHOLD = 0.5   # FGAHOI's --nms_thresh default (triplet NMS on, --use_nms default True)


class HOIEvalError(ValueError):
    """Evaluation input that cannot be used; the message names the file, the image and the field."""


# ----------------------------------------------------------------------------- categories

@dataclass(frozen=True)
class HOICategory:
    id: int
    subject_id: int | None   # object id of the subject class; None: any subject (HICO: always person)
    verb_id: int
    object_id: int
    rare: bool


def _index(sorted_ids: np.ndarray, values) -> np.ndarray:
    """Positions of `values` in the sorted id array, -1 where a value is not there."""
    values = np.asarray(values)
    if sorted_ids.size == 0 or values.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == values, pos, -1)


class HOICategories:
    """The HOI category table: ids, (subject, verb, object) triplets, rare flags, names.

    Either every category names its subject class (the toy world: person / robot) and
    pairs are looked up by (subject, verb, object), or none does (HICO-DET) and pairs are
    looked up by (verb, object). `ids_defined` says whether the ids come from a file (so a GT
    pair's `hoi_category_id` can be checked against them)."""

    def __init__(self, categories: Iterable[HOICategory], object_names: dict[int, str],
                 verb_names: dict[int, str], source: str = "categories", ids_defined: bool = True):
        self.source = source
        self.categories: tuple[HOICategory, ...] = tuple(sorted(categories, key=lambda c: c.id))
        self.object_names = dict(object_names)
        self.verb_names = dict(verb_names)
        self.ids_defined = ids_defined
        if not self.categories:
            raise HOIEvalError(f"{source}: no HOI categories")
        self.object_ids = np.array(sorted(self.object_names), dtype=np.int64)
        self.verb_ids = np.array(sorted(self.verb_names), dtype=np.int64)
        with_subject = [c.subject_id is not None for c in self.categories]
        if any(with_subject) and not all(with_subject):
            raise HOIEvalError(f"{source}: either every HOI category names its subject or none does")
        self.by_subject = all(with_subject)
        n_obj, n_verb = len(self.object_ids), len(self.verb_ids)
        self._table = np.full((n_obj if self.by_subject else 1, n_verb, n_obj), -1, dtype=np.int64)
        seen_ids: set[int] = set()
        for k, cat in enumerate(self.categories):
            where = f"{source}: HOI category {cat.id}"
            if cat.id in seen_ids:
                raise HOIEvalError(f"{where}: id appears twice")
            seen_ids.add(cat.id)
            s = int(_index(self.object_ids, cat.subject_id)) if self.by_subject else 0
            v, o = int(_index(self.verb_ids, cat.verb_id)), int(_index(self.object_ids, cat.object_id))
            for name, value, ok in (("subject_id", cat.subject_id, s), ("verb_id", cat.verb_id, v),
                                    ("object_id", cat.object_id, o)):
                if ok < 0:
                    raise HOIEvalError(f"{where}: {name} {value!r} is not a known "
                                       f"{'verb' if name == 'verb_id' else 'object'} id")
            if self._table[s, v, o] >= 0:
                other = self.categories[self._table[s, v, o]].id
                raise HOIEvalError(f"{where}: same (subject, verb, object) as category {other}")
            self._table[s, v, o] = k
        self.ids = np.array([c.id for c in self.categories], dtype=np.int64)
        self.rare = np.array([c.rare for c in self.categories], dtype=bool)
        self.object_column = _index(self.object_ids, [c.object_id for c in self.categories])

    def __len__(self) -> int:
        return len(self.categories)

    def lookup(self, subject_ids, verb_ids, object_ids) -> np.ndarray:
        """Category positions (0..len-1) of (subject id, verb id, object id) triplets; -1 for a
        triplet that is not a listed category or has an unknown id."""
        s = _index(self.object_ids, subject_ids) if self.by_subject else np.zeros(np.shape(verb_ids), np.int64)
        v, o = _index(self.verb_ids, verb_ids), _index(self.object_ids, object_ids)
        ok = (s >= 0) & (v >= 0) & (o >= 0)
        out = np.full(v.shape, -1, dtype=np.int64)
        out[ok] = self._table[s[ok], v[ok], o[ok]]
        return out

    def names(self, k: int) -> tuple[str, str, str]:
        """(subject, verb, object) names of the category at position k; a table without subjects
        (HICO) names the person class."""
        cat = self.categories[k]
        subject = self.object_names[cat.subject_id] if cat.subject_id is not None \
            else self.object_names.get(PERSON_ID, "any")
        return subject, self.verb_names[cat.verb_id], self.object_names[cat.object_id]

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_file(cls, path) -> "HOICategories":
        """A `categories.json` (the toy world's, or any custom table): "objects" and "verbs"
        [{id, name}] (read by `dataset.hico.load_category_file`) and "hoi_categories"
        [{id, subject_id (optional), verb_id, object_id, rare}]."""
        from dataset.hico import load_category_file  # imports torch: only when a file is read

        path = Path(path)
        object_names, verb_names = load_category_file(path)
        data = json.loads(path.read_text())
        entries = data.get("hoi_categories")
        if not isinstance(entries, list) or not entries:
            raise HOIEvalError(f"{path}: hoi_categories: expected a non-empty list of "
                               "{id, subject_id, verb_id, object_id, rare}")
        cats = []
        for i, entry in enumerate(entries):
            where = f"{path}: hoi_categories[{i}]"
            if not isinstance(entry, dict):
                raise HOIEvalError(f"{where} = {entry!r}: expected an object")
            values = {}
            for name in ("id", "subject_id", "verb_id", "object_id"):
                value = entry.get(name)
                if name == "subject_id" and value is None:
                    values[name] = None
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    raise HOIEvalError(f"{where}.{name} = {value!r}: expected an integer")
                values[name] = value
            rare = entry.get("rare")
            if not isinstance(rare, bool):
                raise HOIEvalError(f"{where}.rare = {rare!r}: expected true or false")
            cats.append(HOICategory(rare=rare, **values))
        return cls(cats, object_names, verb_names, source=str(path))

    @classmethod
    def toy(cls) -> "HOICategories":
        """The toy world's categories from its code (dataset/toy/categories.py): no data needed."""
        from dataset.toy.categories import HOI_CATEGORIES, OBJECTS, VERBS
        cats = [HOICategory(id=h.id, subject_id=h.subject_id, verb_id=h.verb_id, object_id=h.object_id, rare=h.rare)
                for h in HOI_CATEGORIES]
        return cls(cats, {o.id: o.name for o in OBJECTS}, {v.id: v.name for v in VERBS}, source="toy world")

    @classmethod
    def hico(cls, train_records=None, *, hoi_list=None, hoi_id_to_num=None,
             expected: int | None = HICO_NUM_CATEGORIES) -> "HOICategories":
        """HICO-DET's (verb, object) categories, subject always person, objects by COCO id and
        verbs 1..117 (`dataset.hico_names`).

        - `train_records`: `trainval_hico.json` (path or its list of images). The categories are
          its distinct (verb, object) pairs; a category is rare when it has fewer than 10
          training pairs (the official rule: 138 of 600). Ids are the records' `hoi_category_id`
          (QPIC's JSON carries the official 1..600); records without them get ids 1..N in
          (object id, verb id) order, which are NOT the official numbers.
        - `hoi_list`: FGAHOI/GGNet `hoi_list_new.json` ([{"id": "001", "object_cat": COCO id,
          "verb_id": 1..117, ...}]): the official 600 with their ids, instead of the records.
        - `hoi_id_to_num`: FGAHOI's `hoi_id_to_num.json` ({"001": {"rare": bool, ...}}): the rare
          flags, instead of counting `train_records`.
        `expected` (600) is the number of categories required; None accepts any."""
        if train_records is None and hoi_list is None:
            raise HOIEvalError(
                "HICO-DET's 600 HOI categories and their rare flags (fewer than 10 training instances) "
                "are derived from the training annotations: pass train_records=trainval_hico.json "
                "(CLI --train), or a categories.json with hoi_categories and rare flags (--categories)")
        counts: dict[tuple[int, int], int] = {}
        record_ids: dict[tuple[int, int], int] = {}
        source = "hoi_list"
        if train_records is not None:
            records, source = _load_json_list(train_records, "training annotations")
            counts, record_ids = _count_train_pairs(records, source)
        if hoi_list is not None:
            triplets, list_source = _read_hoi_list(hoi_list)
            source = list_source if train_records is None else f"{source} + {list_source}"
            ids = triplets
        elif record_ids:
            ids = record_ids
        else:
            ids = {key: k + 1 for k, key in enumerate(sorted(counts, key=lambda vo: (vo[1], vo[0])))}
        if hoi_id_to_num is not None:
            rare_by_id = _read_hoi_id_to_num(hoi_id_to_num)
            missing = [i for i in ids.values() if i not in rare_by_id]
            if missing:
                raise HOIEvalError(f"{hoi_id_to_num}: no rare flag for HOI ids {missing[:5]}")
            rare = {key: rare_by_id[i] for key, i in ids.items()}
        elif train_records is not None:
            rare = {key: counts.get(key, 0) < RARE_THRESHOLD for key in ids}
        else:
            raise HOIEvalError(f"{source}: the rare flags need train_records=trainval_hico.json "
                               "(--train) or hoi_id_to_num=hoi_id_to_num.json")
        if expected is not None and len(ids) != expected:
            raise HOIEvalError(f"{source}: {len(ids)} distinct (verb, object) HOI categories, HICO-DET has "
                               f"{expected}: give the complete trainval_hico.json (or expected=None to "
                               "evaluate with this table)")
        cats = [HOICategory(ident, None, verb, obj, rare[(verb, obj)]) for (verb, obj), ident in ids.items()]
        return cls(cats, OBJECT_NAMES, VERB_NAMES, source=source,
                   ids_defined=bool(hoi_list is not None or record_ids))


def _count_train_pairs(records: list, source: str):
    batch = _parse_images(records, source, _GT_FIELDS, None)
    verbs, objects = batch.verb, batch.labels[batch.obj]
    for name, ids, table, key_name in (("verb", verbs, VERB_NAMES, "category_id"),
                                    ("object", objects, OBJECT_NAMES, "object_id")):
        bad = np.nonzero(~np.isin(ids, list(table)))[0]
        if bad.size:
            n, h = batch.locate_pair(int(bad[0]))
            raise HOIEvalError(f"{source}: image {batch.file_names[n]!r}: hoi_annotation[{h}].{key_name}: "
                               f"{name} id {ids[bad[0]]} is not a HICO-DET {name}")
    counts: dict[tuple[int, int], int] = {}
    ids: dict[tuple[int, int], int] = {}
    keys, n_keys = np.unique(np.stack([verbs, objects], axis=1).reshape(-1, 2), axis=0, return_counts=True)
    for (verb, obj), count in zip(keys.tolist(), n_keys.tolist()):
        counts[(verb, obj)] = count
    given = [k for k, hid in enumerate(batch.hoi_ids) if hid is not None]
    if len(given) not in (0, len(batch.hoi_ids)):
        raise HOIEvalError(f"{source}: hoi_category_id is given for {len(given)} of {len(batch.hoi_ids)} pairs: all or none")
    for k in given:
        key, hid = (int(verbs[k]), int(objects[k])), batch.hoi_ids[k]
        if ids.setdefault(key, hid) != hid:
            n, h = batch.locate_pair(k)
            raise HOIEvalError(f"{source}: image {batch.file_names[n]!r}: hoi_annotation[{h}].hoi_category_id "
                               f"{hid} differs from {ids[key]} given to the same (verb, object) {key}")
    return counts, ids


def _read_hoi_list(hoi_list):
    entries, source = _load_json_list(hoi_list, "hoi_list")
    out: dict[tuple[int, int], int] = {}
    for i, entry in enumerate(entries):
        try:
            key, ident = (int(entry["verb_id"]), int(entry["object_cat"])), int(entry["id"])
        except (KeyError, TypeError, ValueError):
            raise HOIEvalError(f"{source}: entry {i} = {entry!r}: expected {{id, verb_id, object_cat}}") from None
        if key in out:
            raise HOIEvalError(f"{source}: entry {i}: (verb, object) {key} listed twice")
        out[key] = ident
    return out, source


def _read_hoi_id_to_num(value) -> dict[int, bool]:
    data = json.loads(Path(value).read_text()) if isinstance(value, (str, Path)) else value
    try:
        return {int(k): bool(v["rare"]) for k, v in data.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise HOIEvalError(f"{value if isinstance(value, (str, Path)) else 'hoi_id_to_num'}: "
                           'expected {"001": {"rare": bool, ...}, ...}') from None


# ----------------------------------------------------------------------------- parsing and validation

@dataclass(frozen=True)
class _Fields:
    boxes: str
    pairs: str
    scored: bool


_GT_FIELDS = _Fields("annotations", "hoi_annotation", False)
_DET_FIELDS = _Fields("predictions", "hoi_prediction", True)


@dataclass
class _Batch:
    """One file's images, validated, as flat arrays: boxes of all images one after the other
    (`box_start[n]` is image n's first), pairs likewise, with GLOBAL box indices."""
    source: str
    file_names: list
    boxes: np.ndarray       # (N, 4) float64
    labels: np.ndarray      # (N,) object ids
    box_start: np.ndarray   # (images + 1,)
    pair_start: np.ndarray  # (images + 1,)
    image: np.ndarray       # (M,) image position of each pair
    sub: np.ndarray         # (M,) global box index of the subject
    obj: np.ndarray
    verb: np.ndarray        # (M,) verb ids
    score: np.ndarray | None
    hoi_ids: list           # (M,) hoi_category_id or None (ground truth only)
    cat: np.ndarray | None = None   # (M,) category positions, -1: not a listed category

    def locate_pair(self, k: int) -> tuple[int, int]:
        n = int(self.image[k])
        return n, k - int(self.pair_start[n])

    def locate_box(self, i: int) -> tuple[int, int]:
        n = int(np.searchsorted(self.box_start, i, side="right") - 1)
        return n, i - int(self.box_start[n])


def _load_json_list(value, what: str) -> tuple[list, str]:
    """(list, source name) from a path to a JSON list or from an in-memory list."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise HOIEvalError(f"{path}: {what} file not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HOIEvalError(f"{path}: not valid JSON ({err})") from None
        source = str(path)
    else:
        data, source = value, f"<{what}>"
    if not isinstance(data, list):
        raise HOIEvalError(f"{source}: expected a list of images, got {type(data).__name__}")
    return data, source


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_box(values, where: str) -> None:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != 4 \
            or not all(_is_number(v) and math.isfinite(v) for v in values):
        raise HOIEvalError(f"{where} = {values!r}: expected 4 finite numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        raise HOIEvalError(f"{where} = {list(values)!r}: malformed box (need x1 <= x2 and y1 <= y2)")


def _is_index(value) -> bool:
    return _is_number(value) and math.isfinite(value) and float(value).is_integer()


def _diagnose(entry: dict, where: str, f: _Fields) -> None:
    """Raise for the first malformed item of an image (the slow, precise path); return if none."""
    boxes = entry[f.boxes]
    for i, item in enumerate(boxes):
        w = f"{where}: {f.boxes}[{i}]"
        if not isinstance(item, dict) or "bbox" not in item or "category_id" not in item:
            raise HOIEvalError(f"{w} = {item!r}: expected {{\"bbox\": [x1, y1, x2, y2], \"category_id\": int}}")
        _check_box(item["bbox"], f"{w}.bbox")
        if not _is_int(item["category_id"]):
            raise HOIEvalError(f"{w}.category_id = {item['category_id']!r}: expected an integer")
    names = ("subject_id", "object_id", "category_id") + (("score",) if f.scored else ())
    for h, item in enumerate(entry[f.pairs]):
        w = f"{where}: {f.pairs}[{h}]"
        if not isinstance(item, dict):
            raise HOIEvalError(f"{w} = {item!r}: expected an object with {', '.join(names)}")
        for name in names:
            if name not in item:
                raise HOIEvalError(f"{w}.{name}: missing")
            value = item[name]
            if name == "score":
                if not _is_number(value) or not math.isfinite(value):
                    raise HOIEvalError(f"{w}.score = {value!r}: expected a finite number")
            elif not _is_index(value):
                raise HOIEvalError(f"{w}.{name} = {value!r}: expected an integer")
            elif name != "category_id" and not 0 <= value < len(boxes):
                raise HOIEvalError(f"{w}.{name} = {value!r}: out of range, the image has "
                                   f"{len(boxes)} {f.boxes}")


def _image_header(entry, n: int, source: str, f: _Fields) -> tuple[str, str]:
    if not isinstance(entry, dict):
        raise HOIEvalError(f"{source}: entry {n}: expected an object, got {type(entry).__name__}")
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        raise HOIEvalError(f"{source}: entry {n}: file_name = {name!r}: expected a file name")
    where = f"{source}: image {name!r}"
    for key in (f.boxes, f.pairs):
        if not isinstance(entry.get(key), list):
            raise HOIEvalError(f"{where}: {key}: expected a list, got "
                               f"{'nothing' if key not in entry else type(entry[key]).__name__}")
    return name, where


def _parse_images(data: list, source: str, f: _Fields, cats: HOICategories | None,
                  check_ids: bool = True) -> _Batch:
    """Validate a whole file at once (flat numpy checks); a failing check reruns the precise
    item-by-item check on the image concerned, whose error names the file, image and field."""
    names, seen = [], {}
    box_items, label_items, rows, hoi_ids = [], [], [], []
    n_boxes, n_pairs = [], []
    width = 4 if f.scored else 3
    for n, entry in enumerate(data):
        name, where = _image_header(entry, n, source, f)
        if name in seen:
            raise HOIEvalError(f"{where}: listed twice (entries {seen[name]} and {n})")
        seen[name] = n
        names.append(name)
        boxes_in, pairs_in = entry[f.boxes], entry[f.pairs]
        try:
            box_items.extend([b["bbox"] for b in boxes_in])
            label_items.extend([b["category_id"] for b in boxes_in])
            if f.scored:
                rows.extend([(h["subject_id"], h["object_id"], h["category_id"], h["score"]) for h in pairs_in])
            else:
                rows.extend([(h["subject_id"], h["object_id"], h["category_id"]) for h in pairs_in])
                hoi_ids.extend([h.get("hoi_category_id") for h in pairs_in])
        except (KeyError, TypeError, AttributeError):
            _diagnose(entry, where, f)
            raise HOIEvalError(f"{where}: malformed {f.boxes} or {f.pairs}") from None
        n_boxes.append(len(boxes_in))
        n_pairs.append(len(pairs_in))

    def first_bad_image(bad_box=None, bad_pair=None):
        n = int(np.searchsorted(box_start, bad_box, side="right") - 1) if bad_box is not None \
            else int(image[bad_pair])
        _diagnose(data[n], f"{source}: image {names[n]!r}", f)
        raise HOIEvalError(f"{source}: image {names[n]!r}: malformed {f.boxes} or {f.pairs}")

    box_start = np.concatenate(([0], np.cumsum(n_boxes))).astype(np.int64)
    pair_start = np.concatenate(([0], np.cumsum(n_pairs))).astype(np.int64)
    image = np.repeat(np.arange(len(names)), n_pairs)
    try:  # dtypes are inferred: a string, None or nested list shows as a wrong kind or shape
        boxes = np.array(box_items) if box_items else np.zeros((0, 4))
        labels = np.array(label_items) if label_items else np.zeros(0, np.int64)
        pairs = np.array(rows) if rows else np.zeros((0, width))
        ok = (boxes.dtype.kind in "iuf" and labels.dtype.kind in "iu" and pairs.dtype.kind in "iuf"
              and boxes.shape == (len(box_items), 4) and pairs.shape == (len(rows), width))
    except ValueError:
        ok = False
    if not ok:  # find the image: check them item by item
        for n, entry in enumerate(data):
            _diagnose(entry, f"{source}: image {names[n]!r}", f)
        raise HOIEvalError(f"{source}: malformed {f.boxes} or {f.pairs}")
    boxes, labels, pairs = boxes.astype(np.float64), labels.astype(np.int64), pairs.astype(np.float64)
    bad = np.nonzero(~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if bad.size:
        first_bad_image(bad_box=int(bad[0]))
    ints = pairs[:, :3]
    limit = np.repeat(np.asarray(n_boxes, dtype=np.int64), n_pairs)
    bad = np.nonzero(~np.isfinite(pairs).all(1) | (ints != np.round(ints)).any(1)
                     | (ints[:, :2] < 0).any(1) | (ints[:, 0] >= limit) | (ints[:, 1] >= limit))[0]
    if bad.size:
        first_bad_image(bad_pair=int(bad[0]))
    sub = pairs[:, 0].astype(np.int64) + box_start[image]
    obj = pairs[:, 1].astype(np.int64) + box_start[image]
    verb = pairs[:, 2].astype(np.int64)
    batch = _Batch(source, names, boxes, labels, box_start, pair_start, image, sub, obj, verb,
                   pairs[:, 3].copy() if f.scored else None, hoi_ids)
    if cats is None:
        return batch
    bad = np.nonzero(_index(cats.object_ids, labels) < 0)[0]
    if bad.size:
        n, i = batch.locate_box(int(bad[0]))
        raise HOIEvalError(f"{source}: image {names[n]!r}: {f.boxes}[{i}].category_id = {labels[bad[0]]}: "
                           f"not a known object id (categories from {cats.source})")
    bad = np.nonzero(_index(cats.verb_ids, verb) < 0)[0]
    if bad.size:
        n, h = batch.locate_pair(int(bad[0]))
        raise HOIEvalError(f"{source}: image {names[n]!r}: {f.pairs}[{h}].category_id = {verb[bad[0]]}: "
                           f"not a known verb id (categories from {cats.source})")
    batch.cat = cats.lookup(labels[sub], verb, labels[obj])
    if check_ids and not f.scored and cats.ids_defined:
        for k, hid in enumerate(hoi_ids):
            if hid is None:
                continue
            expected = int(cats.ids[batch.cat[k]]) if batch.cat[k] >= 0 else None
            if hid != expected:
                n, h = batch.locate_pair(k)
                triplet = (int(labels[sub[k]]), int(verb[k]), int(labels[obj[k]]))
                raise HOIEvalError(f"{source}: image {names[n]!r}: {f.pairs}[{h}].hoi_category_id = {hid!r}, but "
                                   f"(subject, verb, object) {triplet} is "
                                   f"{'category ' + str(expected) if expected else 'not listed'} in {cats.source}")
    return batch


def _check_against_gt(batch: _Batch, gt_names) -> np.ndarray:
    """Position in the ground truth of each image of `batch`; an unknown one is an error."""
    index = {name: k for k, name in enumerate(gt_names)}
    for name in batch.file_names:
        if name not in index:
            raise HOIEvalError(f"{batch.source}: image {name!r}: not an image of the ground truth")
    return np.array([index[name] for name in batch.file_names], dtype=np.int64)


def _gt_names(gt_data: list) -> list:
    return [e.get("file_name") if isinstance(e, dict) else None for e in gt_data]


def read_ground_truth(path, categories: HOICategories | None = None) -> list[dict]:
    """The ground-truth detector JSON (`test_hico.json`), validated: structure, boxes, indices, and
    with `categories` also the object / verb ids and any `hoi_category_id`. Returns the list."""
    data, source = _load_json_list(path, "ground truth")
    _parse_images(data, source, _GT_FIELDS, categories)
    return data


def read_detections(path, gt, categories: HOICategories) -> list[dict]:
    """Detections in the per-image layout, validated against the ground truth's images (`gt`:
    a path or the list of `read_ground_truth`) and the categories. Returns the list."""
    data, source = _load_json_list(path, "detections")
    gt_data, _ = _load_json_list(gt, "ground truth")
    _check_against_gt(_parse_images(data, source, _DET_FIELDS, categories), _gt_names(gt_data))
    return data


# ----------------------------------------------------------------------------- IoU and AP

def box_iou(a: np.ndarray, b: np.ndarray, inclusive_pixels: bool = False) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes; area (x2 - x1) * (y2 - y1), or with +1 on
    widths and heights when `inclusive_pixels` (the official code's convention). 0 where the
    union is empty."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    off = 1.0 if inclusive_pixels else 0.0
    area_a = np.clip(a[:, 2] - a[:, 0] + off, 0, None) * np.clip(a[:, 3] - a[:, 1] + off, 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0] + off, 0, None) * np.clip(b[:, 3] - b[:, 1] + off, 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + off, 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + off, 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


_VOC11_THRESHOLDS = np.arange(11) / 10.0


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "voc11") -> float:
    """AP from cumulative recall (non-decreasing) and precision at each ranked detection.
    "voc11": mean over t = 0, 0.1, ..., 1 of max(precision[recall >= t]) (0 if none);
    "all_point": area under the precision envelope (VOC 2010+). Empty input gives 0."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if recall.size == 0:
        return 0.0
    if method == "voc11":
        envelope = np.maximum.accumulate(precision[::-1])[::-1]   # max precision at ranks >= i
        first = np.searchsorted(recall, _VOC11_THRESHOLDS, side="left")  # first rank with recall >= t
        reached = first < recall.size
        return float(np.where(reached, envelope[np.minimum(first, recall.size - 1)], 0.0).sum() / 11.0)
    if method == "all_point":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
        return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))
    raise ValueError(f"ap_method {method!r}: expected one of {AP_METHODS}")


def _ap_per_category(cat: np.ndarray, score: np.ndarray, tp: np.ndarray, n_gt: np.ndarray,
                     method: str, ties: tuple = ()) -> np.ndarray:
    """AP of every category (NaN without GT) from its detections' scores and TP flags; equal
    scores are ordered by the `ties` keys (most significant last, as np.lexsort)."""
    n_cat = n_gt.size
    order = np.lexsort(tuple(ties) + (-score, cat))
    cat, tp = cat[order], tp[order]
    bounds = np.searchsorted(cat, np.arange(n_cat + 1))
    ap = np.full(n_cat, np.nan)
    for k in np.nonzero(n_gt > 0)[0]:
        hits = tp[bounds[k]:bounds[k + 1]]
        if hits.size == 0:
            ap[k] = 0.0
            continue
        ctp = np.cumsum(hits)
        cfp = np.cumsum(~hits)
        ap[k] = average_precision(ctp / n_gt[k], ctp / (ctp + cfp), method)
    return ap


# ----------------------------------------------------------------------------- evaluation

@dataclass
class HOIMapResult:
    """`summary`: {"default"|"known_object": {"full"|"rare"|"non_rare": mAP}} as fractions in
    [0, 1], NaN for an empty group. `per_category`: one row per HOI category: hoi_id, subject,
    verb, object, rare, n_gt, n_det (default setting), ap_default, ap_known_object (NaN without
    GT). `info`: protocol settings and counts."""
    summary: dict
    per_category: list
    info: dict = field(default_factory=dict)

    def write_csv(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = ["hoi_id", "subject", "verb", "object", "rare", "n_gt", "n_det", "ap_default", "ap_known_object"]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in self.per_category:
                writer.writerow({k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k])
                                 for k in columns})
        return path

    def table(self) -> str:
        """The mAP table in percent, as printed by the CLI."""
        def pct(x):
            return "    -" if math.isnan(x) else f"{100 * x:6.2f}"
        info = self.info
        lines = [f"HOI mAP (%), HICO-DET protocol: AP {info.get('ap_method')}, both IoUs >= {info.get('iou_threshold')}",
                 f"{'setting':<14}{'Full':>8}{'Rare':>8}{'Non-rare':>10}"]
        for key, label in (("default", "Default"), ("known_object", "Known Object")):
            s = self.summary[key]
            lines.append(f"{label:<14}{pct(s['full']):>8}{pct(s['rare']):>8}{pct(s['non_rare']):>10}")
        lines.append(f"categories with GT: {info.get('n_categories_with_gt')} ({info.get('n_rare_with_gt')} rare); "
                     f"without GT (excluded): {info.get('n_categories_without_gt')}; images: {info.get('n_images')}; "
                     f"detections: {info.get('n_detections')} ({info.get('n_detections_ignored')} of unlisted triplets ignored)")
        return "\n".join(lines)


def _group_means(ap: np.ndarray, has_gt: np.ndarray, rare: np.ndarray) -> dict:
    def mean(mask):
        return float(ap[mask].mean()) if mask.any() else float("nan")
    return {"full": mean(has_gt), "rare": mean(has_gt & rare), "non_rare": mean(has_gt & ~rare)}


def _pair_iou(a: np.ndarray, b: np.ndarray, inclusive_pixels: bool) -> np.ndarray:
    """Elementwise IoU of two (K, 4) box arrays (same convention as `box_iou`)."""
    off = 1.0 if inclusive_pixels else 0.0
    area_a = np.clip(a[:, 2] - a[:, 0] + off, 0, None) * np.clip(a[:, 3] - a[:, 1] + off, 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0] + off, 0, None) * np.clip(b[:, 3] - b[:, 1] + off, 0, None)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + off, 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + off, 0, None)
    inter = iw * ih
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match(det: _Batch, det_image: np.ndarray, d_ids: np.ndarray, gt: _Batch, n_cat: int,
           iou_threshold: float, inclusive_pixels: bool) -> np.ndarray:
    """TP flags of the listed detections `d_ids` (official rule, see the module docstring)."""
    tp = np.zeros(d_ids.size, dtype=bool)
    g_ids = np.nonzero(gt.cat >= 0)[0]
    if d_ids.size == 0 or g_ids.size == 0:
        return tp
    # join each detection with the GT pairs of its (image, category)
    g_key = gt.image[g_ids] * n_cat + gt.cat[g_ids]
    order = np.argsort(g_key, kind="stable")            # within a key: GT file order
    g_key, g_ids = g_key[order], g_ids[order]
    d_key = det_image[d_ids] * n_cat + det.cat[d_ids]
    lo = np.searchsorted(g_key, d_key, side="left")
    count = np.searchsorted(g_key, d_key, side="right") - lo
    rep = np.repeat(np.arange(d_ids.size), count)
    within = np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count)
    g = g_ids[lo[rep] + within]
    d = d_ids[rep]
    overlap = np.minimum(_pair_iou(det.boxes[det.sub[d]], gt.boxes[gt.sub[g]], inclusive_pixels),
                         _pair_iou(det.boxes[det.obj[d]], gt.boxes[gt.obj[g]], inclusive_pixels))
    # each detection's best pair: largest overlap, the first in GT order on ties
    order = np.lexsort((within, -overlap, rep))
    rep, g, overlap = rep[order], g[order], overlap[order]
    first = np.ones(rep.size, dtype=bool)
    first[1:] = rep[1:] != rep[:-1]
    rep, g, overlap = rep[first], g[first], overlap[first]
    hit = overlap >= iou_threshold
    rep, g = rep[hit], g[hit]
    # greedy in each image: best score first (ties in file order); a matched pair stays matched
    order = np.lexsort((d_ids[rep], -det.score[d_ids[rep]], det_image[d_ids[rep]]))
    taken = np.zeros(gt.cat.size, dtype=bool)
    for r, j in zip(rep[order].tolist(), g[order].tolist()):
        if not taken[j]:
            taken[j] = tp[r] = True
    return tp


def evaluate_hoi_map(gt, detections, categories: HOICategories, *, iou_threshold: float = IOU_THRESHOLD,
                     ap_method: str = "voc11", inclusive_pixels: bool = False) -> HOIMapResult:
    """HICO-DET mAP of `detections` against `gt` (paths or in-memory lists in the layouts of the
    module docstring) for the HOI `categories`. Images of the ground truth without detections
    count as having none."""
    if ap_method not in AP_METHODS:
        raise ValueError(f"ap_method {ap_method!r}: expected one of {AP_METHODS}")
    gt_data, gt_source = _load_json_list(gt, "ground truth")
    det_data, det_source = _load_json_list(detections, "detections")
    g = _parse_images(gt_data, gt_source, _GT_FIELDS, categories)
    d = _parse_images(det_data, det_source, _DET_FIELDS, categories)
    det_image = _check_against_gt(d, g.file_names)[d.image]   # GT image position of each detection
    n_cat = len(categories)

    listed_gt = g.cat[g.cat >= 0]
    n_gt = np.bincount(listed_gt, minlength=n_cat)
    presence = np.zeros((len(g.file_names), len(categories.object_ids)), dtype=bool)
    box_image = np.repeat(np.arange(len(g.file_names)), np.diff(g.box_start))
    presence[box_image, _index(categories.object_ids, g.labels)] = True

    d_ids = np.nonzero(d.cat >= 0)[0]
    tp = _match(d, det_image, d_ids, g, n_cat, iou_threshold, inclusive_pixels)
    cat, score, owner = d.cat[d_ids], d.score[d_ids], det_image[d_ids]
    known = presence[owner, categories.object_column[cat]]
    ties = (d_ids, owner)   # equal scores: GT image order, then file order
    ap_default = _ap_per_category(cat, score, tp, n_gt, ap_method, ties)
    ap_known = _ap_per_category(cat[known], score[known], tp[known], n_gt, ap_method,
                                tuple(t[known] for t in ties))
    has_gt = n_gt > 0
    summary = {"default": _group_means(ap_default, has_gt, categories.rare),
               "known_object": _group_means(ap_known, has_gt, categories.rare)}
    det_counts = np.bincount(cat, minlength=n_cat)
    rows = []
    for k, c in enumerate(categories.categories):
        subject, verb, obj = categories.names(k)
        rows.append({"hoi_id": c.id, "subject": subject, "verb": verb, "object": obj, "rare": bool(c.rare),
                     "n_gt": int(n_gt[k]), "n_det": int(det_counts[k]),
                     "ap_default": float(ap_default[k]), "ap_known_object": float(ap_known[k])})
    info = {"ap_method": ap_method, "iou_threshold": iou_threshold, "inclusive_pixels": inclusive_pixels,
            "n_images": len(g.file_names), "n_detections": int(d.cat.size),
            "n_detections_ignored": int(d.cat.size - d_ids.size),
            "n_gt_pairs": int(listed_gt.size), "n_gt_pairs_ignored": int(g.cat.size - listed_gt.size),
            "n_categories": n_cat, "n_categories_with_gt": int(has_gt.sum()),
            "n_rare_with_gt": int((has_gt & categories.rare).sum()),
            "n_categories_without_gt": int((~has_gt).sum())}
    return HOIMapResult(summary, rows, info)


# ----------------------------------------------------------------------------- FGAHOI adapter

def _to_numpy(value, dtype=None) -> np.ndarray:
    if hasattr(value, "detach"):          # a torch tensor (the pickled dump holds CPU tensors)
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _triplet_nms(sub_boxes: np.ndarray, obj_boxes: np.ndarray, triplets: np.ndarray, scores: np.ndarray,
                 threshold: float) -> np.ndarray:
    """Greedy NMS within each triplet (same subject class, object class, verb): best score first
    (ties in input order), a pair whose IoU(subject) * IoU(object) with a kept pair of its triplet
    exceeds `threshold` is dropped; IoUs with FGAHOI's +1 pixel convention. Sorted kept indices."""
    same = triplets[:, None] == triplets[None, :]
    shared = same.sum(axis=1) > 1
    if not shared.any():
        return np.arange(scores.size)
    idx = np.nonzero(shared)[0]                     # only triplets with several pairs can lose one
    overlap = box_iou(sub_boxes[idx], sub_boxes[idx], True) * box_iou(obj_boxes[idx], obj_boxes[idx], True)
    suppress = same[np.ix_(idx, idx)] & (overlap > threshold)
    removed = np.zeros(idx.size, dtype=bool)
    for i in np.argsort(-scores[idx], kind="stable").tolist():
        if not removed[i]:
            removed |= suppress[i]
            removed[i] = False
    keep = np.ones(scores.size, dtype=bool)
    keep[idx[removed]] = False
    return np.nonzero(keep)[0]


def _listed_table(categories: HOICategories, object_ids: np.ndarray, verbs: np.ndarray) -> np.ndarray:
    """[subject label, verb column, object label] -> is a listed HOI category (the correct_mat)."""
    s, v, o = np.meshgrid(object_ids, verbs, object_ids, indexing="ij")
    return categories.lookup(s.reshape(-1), v.reshape(-1), o.reshape(-1)).reshape(s.shape) >= 0


def read_fgahoi(path, gt=None, categories: HOICategories | None = None, *, allow_pickle: bool = False,
                file_names: Sequence[str] | None = None, object_ids: Sequence[int] = HICO_OBJECT_IDS,
                verb_ids: Sequence[int] | None = None, max_hois: int | None = FGAHOI_MAX_HOIS,
                triplet_nms: float | None = FGAHOI_NMS_THRESHOLD) -> list[dict]:
    """Convert FGAHOI's raw evaluation output to the detection layout of this module.

    What FGAHOI produces (xiaomabufei/FGAHOI and the fork jiuntian/FGAHOI that InteractDiffusion's
    author used; QPIC/QAHOI lineage): `PostProcessHOI` returns, per image, a dict of tensors
      labels      (2N,)   N subject labels (all `subject_category_id` = 0) then N object labels:
                          0-based CONTIGUOUS indices into the 80 HICO classes,
      boxes       (2N, 4) xyxy pixels of the image as given to the detector (subjects, then objects),
      verb_scores (N, 117) sigmoid verb scores times the object score, column v = verb id v + 1,
      sub_ids (N,) = 0..N-1, obj_ids (N,) = N..2N-1   (N = 100 top (query, class) pairs),
    and its `hico_eval.py` pairs these with the loader's targets in dataset order. The fork's
    evaluator reads them back from a pickle `preds_gts_<epoch>.pkl` = {"preds": [...], "gts":
    [...], "epoch", "use_nms", "nms_thresh"} (gts entries carry "file_name"); the code that writes
    that file is not in the public sources seen, so its exact keys beyond these are an assumption.

    Accepted here: that pickle (only with `allow_pickle=True`; it needs torch installed to unpickle
    tensors - trust its source), or a JSON file with the same content (a list of per-image dicts,
    or {"preds": [...], "gts": [...]}). File names come from each pred's "file_name", else from the
    "gts" entries' "file_name", else from `file_names` (in the same order); otherwise it is an
    error.

    Conversion, as FGAHOI's evaluator does it: object label l -> `object_ids[l]` (default: the
    80 COCO ids ascending, FGAHOI's `valid_obj_ids`; subject label 0 -> 1, person); verb column
    v -> `verb_ids[v]` (default v + 1); every (pair, verb) becomes one HOI with score
    verb_scores[pair, verb]; with `categories`, triplets that are not a listed category are
    dropped (FGAHOI multiplies them by the 0 of `corre_hico.npy`); the `max_hois` (100) best per
    image are kept; then triplet NMS (`triplet_nms` = 0.5, None to skip): within one
    (subject class, object class, verb), a pair whose IoU(subject) * IoU(object) with a better
    kept pair exceeds the threshold is dropped (+1 pixel IoUs, as FGAHOI's `pairwise_nms`).
    With `gt`, the result is validated like `read_detections`."""
    path = Path(path)
    if not path.is_file():
        raise HOIEvalError(f"{path}: FGAHOI output file not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise HOIEvalError(f"{path}: not valid JSON ({err})") from None
    else:
        if not allow_pickle:
            raise HOIEvalError(f"{path}: a pickle (FGAHOI's preds_gts_*.pkl) can run code when loaded; pass "
                               "allow_pickle=True (CLI --allow-pickle) only if you trust its source, or give "
                               "the same content as .json")
        with path.open("rb") as handle:
            data = pickle.load(handle)  # noqa: S301 - explicitly allowed by the caller
    gts = None
    if isinstance(data, dict):
        if "preds" not in data:
            raise HOIEvalError(f"{path}: expected a list of per-image predictions or a dict with 'preds'")
        data, gts = data["preds"], data.get("gts")
    if not isinstance(data, list):
        raise HOIEvalError(f"{path}: expected a list of per-image predictions, got {type(data).__name__}")
    if file_names is not None and len(file_names) != len(data):
        raise HOIEvalError(f"{path}: {len(data)} images but {len(file_names)} file_names")
    object_ids = np.asarray(object_ids, dtype=np.int64)
    listed_table = None

    out = []
    for n, pred in enumerate(data):
        where = f"{path}: image {n}"
        if not isinstance(pred, dict):
            raise HOIEvalError(f"{where}: expected a dict of labels, boxes, verb_scores, sub_ids, obj_ids")
        name = pred.get("file_name")
        if name is None and gts is not None and n < len(gts) and isinstance(gts[n], dict):
            name = gts[n].get("file_name", gts[n].get("filename"))
        if name is None and file_names is not None:
            name = file_names[n]
        if not isinstance(name, str):
            raise HOIEvalError(f"{where}: no file name (none in the prediction or its 'gts' entry): "
                               "pass file_names in dataset order")
        where = f"{path}: image {name!r}"
        try:
            labels = _to_numpy(pred["labels"]).reshape(-1)
            boxes = _to_numpy(pred["boxes"], np.float64).reshape(-1, 4)
            verb_scores = _to_numpy(pred["verb_scores"], np.float64)
            sub_ids = _to_numpy(pred["sub_ids"]).reshape(-1)
            obj_ids = _to_numpy(pred["obj_ids"]).reshape(-1)
        except KeyError as err:
            raise HOIEvalError(f"{where}: missing {err.args[0]!r} (expected labels, boxes, verb_scores, "
                               "sub_ids, obj_ids)") from None
        except (TypeError, ValueError) as err:
            raise HOIEvalError(f"{where}: malformed arrays ({err})") from None
        if verb_scores.ndim != 2 or verb_scores.shape[0] != sub_ids.size or sub_ids.size != obj_ids.size:
            raise HOIEvalError(f"{where}: verb_scores {verb_scores.shape} must be (pairs, verbs) with "
                               f"{sub_ids.size} sub_ids and {obj_ids.size} obj_ids")
        if labels.size != boxes.shape[0]:
            raise HOIEvalError(f"{where}: {labels.size} labels but {boxes.shape[0]} boxes")
        bad = np.nonzero((labels < 0) | (labels >= object_ids.size) | (labels != np.round(labels)))[0]
        if bad.size:
            raise HOIEvalError(f"{where}: labels[{bad[0]}] = {labels[bad[0]]}: not an object label 0..{object_ids.size - 1} "
                               f"(contiguous indices into object_ids, {object_ids.size} classes)")
        for key, ids in (("sub_ids", sub_ids), ("obj_ids", obj_ids)):
            if ids.size and (ids.min() < 0 or ids.max() >= labels.size):
                raise HOIEvalError(f"{where}: {key}: indices outside 0..{labels.size - 1}")
        verbs = np.arange(1, verb_scores.shape[1] + 1) if verb_ids is None else np.asarray(verb_ids, np.int64)
        if verbs.size != verb_scores.shape[1]:
            raise HOIEvalError(f"{where}: verb_scores has {verb_scores.shape[1]} columns, verb_ids {verbs.size}")
        label = labels.astype(np.int64)
        class_ids = object_ids[label]
        pair = np.repeat(np.arange(sub_ids.size), verbs.size)
        column = np.tile(np.arange(verbs.size), sub_ids.size)
        score = verb_scores.reshape(-1)
        s, o = sub_ids[pair].astype(np.int64), obj_ids[pair].astype(np.int64)
        if categories is not None:
            if listed_table is None or listed_table.shape[1] != verbs.size:
                listed_table = _listed_table(categories, object_ids, verbs)
            listed = listed_table[label[s], column, label[o]]
            s, o, column, score = s[listed], o[listed], column[listed], score[listed]
        order = np.argsort(-score, kind="stable")[:max_hois]
        s, o, verb, score = s[order], o[order], verbs[column[order]], score[order]
        if triplet_nms is not None and score.size:
            triplets = (class_ids[s] * (verbs.max() + 1) + verb) * (object_ids.max() + 1) + class_ids[o]
            keep = _triplet_nms(boxes[s], boxes[o], triplets, score, triplet_nms)
            s, o, verb, score = s[keep], o[keep], verb[keep], score[keep]
        out.append({"file_name": name,
                    "predictions": [{"bbox": box, "category_id": c}
                                    for box, c in zip(boxes.tolist(), class_ids.tolist())],
                    "hoi_prediction": [{"subject_id": a, "object_id": b, "category_id": c, "score": x}
                                       for a, b, c, x in zip(s.tolist(), o.tolist(), verb.astype(np.int64).tolist(),
                                                             score.tolist())]})
    if gt is not None:
        gt_data, _ = _load_json_list(gt, "ground truth")
        _check_against_gt(_parse_images(out, str(path), _DET_FIELDS, categories), _gt_names(gt_data))
    return out


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation.hico_map",
                                     description="HICO-DET HOI detection mAP (Full/Rare/Non-rare x Default/Known Object).")
    parser.add_argument("--gt", required=True, help="ground truth, detector JSON (test_hico.json)")
    parser.add_argument("--pred", required=True, help="detections (JSON layout, or FGAHOI output with --format fgahoi)")
    table = parser.add_mutually_exclusive_group()
    table.add_argument("--categories", help="categories.json with hoi_categories and rare flags (toy / custom)")
    table.add_argument("--train", help="trainval_hico.json: HICO's 600 (verb, object) categories, rare = < 10 pairs")
    parser.add_argument("--format", choices=("json", "fgahoi"), default="json")
    parser.add_argument("--csv", help="write the per-category APs here")
    parser.add_argument("--ap", choices=AP_METHODS, default="voc11",
                        help="voc11: 11-point interpolated AP of the HICO-DET code (default); all_point: VOC2010+")
    parser.add_argument("--inclusive-pixels", action="store_true", help="IoU with +1 widths (official MATLAB convention)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow reading a pickled FGAHOI dump (trusted files only)")
    parser.add_argument("--no-triplet-nms", action="store_true", help="FGAHOI: skip the triplet NMS")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.categories:
            categories = HOICategories.from_file(args.categories)
        elif args.train:
            categories = HOICategories.hico(train_records=args.train)
        else:
            raise HOIEvalError("give the HOI categories: --categories categories.json (with rare flags) "
                               "or --train trainval_hico.json (HICO-DET's 600 categories)")
        gt = read_ground_truth(args.gt, categories)
        if args.format == "fgahoi":
            pred = read_fgahoi(args.pred, gt, categories, allow_pickle=args.allow_pickle,
                               triplet_nms=None if args.no_triplet_nms else FGAHOI_NMS_THRESHOLD)
        else:
            pred = args.pred
        result = evaluate_hoi_map(gt, pred, categories, ap_method=args.ap, inclusive_pixels=args.inclusive_pixels)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.table())
    if args.csv:
        print(f"per-category APs written to {result.write_csv(args.csv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
