"""The per-image JSON layout shared by ground truth and detections (see the package docstring):
loading a file, validating it as a whole with flat numpy checks, and naming the file, image and
field of the first bad item."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


class HOIEvalError(ValueError):
    """Evaluation input that cannot be used; the message names the file, the image and the field."""


def _index(sorted_ids: np.ndarray, values) -> np.ndarray:
    """Positions of `values` in the sorted id array, -1 where a value is not there."""
    values = np.asarray(values)
    if sorted_ids.size == 0 or values.size == 0:
        return np.full(values.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == values, pos, -1)


class CategoryTable(Protocol):
    """What validation needs of a category table (`categories.HOICategories` is one)."""
    source: str
    object_ids: np.ndarray
    verb_ids: np.ndarray
    ids: np.ndarray
    ids_defined: bool

    def lookup(self, subject_ids, verb_ids, object_ids) -> np.ndarray: ...


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


def _read_json(path: Path, what: str):
    """The content of the JSON file `path`; one HOIEvalError naming the file when it is missing,
    binary or not JSON."""
    if not path.is_file():
        raise HOIEvalError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise HOIEvalError(f"{path}: not a JSON {what} file (binary content, not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise HOIEvalError(f"{path}: not valid JSON ({err})") from None


def _load_json_list(value, what: str) -> tuple[list, str]:
    """(list, source name) from a path to a JSON list or from an in-memory list."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        data, source = _read_json(path, what), str(path)
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


@dataclass
class _Items:
    """A file's entries gathered into flat Python lists, before any numeric check."""
    names: list = field(default_factory=list)
    boxes: list = field(default_factory=list)     # bbox values, all images one after the other
    labels: list = field(default_factory=list)
    rows: list = field(default_factory=list)      # (subject, object, verb[, score]) per pair
    hoi_ids: list = field(default_factory=list)   # ground truth only
    n_boxes: list = field(default_factory=list)   # per image
    n_pairs: list = field(default_factory=list)


def _gather(data: list, source: str, f: _Fields) -> _Items:
    """Every image's file name (unique), boxes and pairs; an entry whose items are not the
    expected dicts is diagnosed at once."""
    items, seen = _Items(), {}
    for n, entry in enumerate(data):
        name, where = _image_header(entry, n, source, f)
        if name in seen:
            raise HOIEvalError(f"{where}: listed twice (entries {seen[name]} and {n})")
        seen[name] = n
        items.names.append(name)
        boxes_in, pairs_in = entry[f.boxes], entry[f.pairs]
        try:
            items.boxes.extend([b["bbox"] for b in boxes_in])
            items.labels.extend([b["category_id"] for b in boxes_in])
            if f.scored:
                items.rows.extend([(h["subject_id"], h["object_id"], h["category_id"], h["score"]) for h in pairs_in])
            else:
                items.rows.extend([(h["subject_id"], h["object_id"], h["category_id"]) for h in pairs_in])
                items.hoi_ids.extend([h.get("hoi_category_id") for h in pairs_in])
        except (KeyError, TypeError, AttributeError):
            _diagnose(entry, where, f)
            raise HOIEvalError(f"{where}: malformed {f.boxes} or {f.pairs}") from None
        items.n_boxes.append(len(boxes_in))
        items.n_pairs.append(len(pairs_in))
    return items


def _to_batch(data: list, source: str, f: _Fields, items: _Items) -> _Batch:
    """The gathered items as flat arrays, checked all at once: numbers of the right kind and
    shape, finite well-formed boxes, integral in-range box indices. A failing check reruns the
    precise item-by-item check on the first image concerned."""
    names, n_boxes, n_pairs = items.names, items.n_boxes, items.n_pairs
    width = 4 if f.scored else 3

    def first_bad_image(bad_box=None, bad_pair=None):
        n = int(np.searchsorted(box_start, bad_box, side="right") - 1) if bad_box is not None \
            else int(image[bad_pair])
        _diagnose(data[n], f"{source}: image {names[n]!r}", f)
        raise HOIEvalError(f"{source}: image {names[n]!r}: malformed {f.boxes} or {f.pairs}")

    box_start = np.concatenate(([0], np.cumsum(n_boxes))).astype(np.int64)
    pair_start = np.concatenate(([0], np.cumsum(n_pairs))).astype(np.int64)
    image = np.repeat(np.arange(len(names)), n_pairs)
    try:  # dtypes are inferred: a string, None or nested list shows as a wrong kind or shape
        boxes = np.array(items.boxes) if items.boxes else np.zeros((0, 4))
        labels = np.array(items.labels) if items.labels else np.zeros(0, np.int64)
        pairs = np.array(items.rows) if items.rows else np.zeros((0, width))
        ok = (boxes.dtype.kind in "iuf" and labels.dtype.kind in "iu" and pairs.dtype.kind in "iuf"
              and boxes.shape == (len(items.boxes), 4) and pairs.shape == (len(items.rows), width))
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
    return _Batch(source, names, boxes, labels, box_start, pair_start, image, sub, obj, verb,
                  pairs[:, 3].copy() if f.scored else None, items.hoi_ids)


def _attach_categories(batch: _Batch, f: _Fields, cats: CategoryTable, check_ids: bool) -> None:
    """Check the object and verb ids against `cats`, set `batch.cat`, and (ground truth with a
    table whose ids are defined) check every given hoi_category_id against its triplet."""
    source, names, labels, verb = batch.source, batch.file_names, batch.labels, batch.verb
    sub, obj, hoi_ids = batch.sub, batch.obj, batch.hoi_ids
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


def _parse_images(data: list, source: str, f: _Fields, cats: CategoryTable | None,
                  check_ids: bool = True) -> _Batch:
    """Validate a whole file at once (flat numpy checks); a failing check reruns the precise
    item-by-item check on the image concerned, whose error names the file, image and field.
    With `cats`, also the ids, and `cat` (category positions) is set."""
    batch = _to_batch(data, source, f, _gather(data, source, f))
    if cats is not None:
        _attach_categories(batch, f, cats, check_ids)
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

