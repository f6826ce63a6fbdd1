"""FGAHOI's raw evaluation output converted to the detection layout (see `read_fgahoi`)."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset.hico_names import OBJECT_NAMES

from .categories import HOICategories
from .metric import box_iou
from .parsing import (_DET_FIELDS, HOIEvalError, _check_against_gt, _gt_names, _load_json_list, _parse_images,
                      _read_json)

# FGAHOI's contiguous object label -> COCO category id (its `valid_obj_ids`): the 80 HICO ids ascending.
HICO_OBJECT_IDS: tuple[int, ...] = tuple(sorted(OBJECT_NAMES))
FGAHOI_MAX_HOIS = 100        # FGAHOI/QPIC keep the 100 best (pair, verb) triplets per image
FGAHOI_NMS_THRESHOLD = 0.5   # FGAHOI's --nms_thresh default (triplet NMS on, --use_nms default True)


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


def _load_dump(path: Path, allow_pickle: bool) -> tuple[list, list | None]:
    """The per-image predictions of an FGAHOI dump (JSON, or a pickle when allowed) and its
    "gts" entries (None when it has none)."""
    if path.suffix.lower() == ".json":
        data = _read_json(path, "FGAHOI output")
    else:
        if not path.is_file():
            raise HOIEvalError(f"{path}: FGAHOI output file not found")
        if not allow_pickle:
            raise HOIEvalError(f"{path}: a pickle (FGAHOI's preds_gts_*.pkl) can run code when loaded; pass "
                               "allow_pickle=True (CLI --allow-pickle) only if you trust its source, or give "
                               "the same content as .json")
        try:
            with path.open("rb") as handle:
                data = pickle.load(handle)  # noqa: S301 - explicitly allowed by the caller
        except Exception as err:  # unpickling fails in many ways (truncated, not a pickle, missing class)
            raise HOIEvalError(f"{path}: not a pickled FGAHOI dump ({type(err).__name__}: {err})") from None
    gts = None
    if isinstance(data, dict):
        if "preds" not in data:
            raise HOIEvalError(f"{path}: expected a list of per-image predictions or a dict with 'preds'")
        data, gts = data["preds"], data.get("gts")
    if not isinstance(data, list):
        raise HOIEvalError(f"{path}: expected a list of per-image predictions, got {type(data).__name__}")
    return data, gts


def _image_name(pred: dict, n: int, gts: list | None, file_names: Sequence[str] | None, where: str) -> str:
    """Image n's file name: the prediction's own, else its "gts" entry's, else file_names[n]."""
    name = pred.get("file_name")
    if name is None and gts is not None and n < len(gts) and isinstance(gts[n], dict):
        name = gts[n].get("file_name", gts[n].get("filename"))
    if name is None and file_names is not None:
        name = file_names[n]
    if not isinstance(name, str):
        raise HOIEvalError(f"{where}: no file name (none in the prediction or its 'gts' entry): "
                           "pass file_names in dataset order")
    return name


@dataclass(frozen=True)
class _ImageOutput:
    """One image of PostProcessHOI's output, checked for consistent shapes and indices."""
    labels: np.ndarray        # (2N,) contiguous object labels
    boxes: np.ndarray         # (2N, 4) xyxy
    verb_scores: np.ndarray   # (N, verbs)
    sub_ids: np.ndarray       # (N,) indices into labels / boxes
    obj_ids: np.ndarray


def _image_output(pred: dict, where: str, n_objects: int) -> _ImageOutput:
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
    bad = np.nonzero((labels < 0) | (labels >= n_objects) | (labels != np.round(labels)))[0]
    if bad.size:
        raise HOIEvalError(f"{where}: labels[{bad[0]}] = {labels[bad[0]]}: not an object label 0..{n_objects - 1} "
                           f"(contiguous indices into object_ids, {n_objects} classes)")
    for key, ids in (("sub_ids", sub_ids), ("obj_ids", obj_ids)):
        if ids.size and (ids.min() < 0 or ids.max() >= labels.size):
            raise HOIEvalError(f"{where}: {key}: indices outside 0..{labels.size - 1}")
    return _ImageOutput(labels, boxes, verb_scores, sub_ids, obj_ids)


def _image_detections(name: str, out: _ImageOutput, object_ids: np.ndarray, verbs: np.ndarray,
                      listed_table: np.ndarray | None, max_hois: int | None, triplet_nms: float | None) -> dict:
    """One image in the detection layout: every (pair, verb) scored, unlisted triplets dropped
    (with a `listed_table`), the `max_hois` best kept, then triplet NMS."""
    label = out.labels.astype(np.int64)
    class_ids = object_ids[label]
    pair = np.repeat(np.arange(out.sub_ids.size), verbs.size)
    column = np.tile(np.arange(verbs.size), out.sub_ids.size)
    score = out.verb_scores.reshape(-1)
    s, o = out.sub_ids[pair].astype(np.int64), out.obj_ids[pair].astype(np.int64)
    if listed_table is not None:
        listed = listed_table[label[s], column, label[o]]
        s, o, column, score = s[listed], o[listed], column[listed], score[listed]
    order = np.argsort(-score, kind="stable")[:max_hois]
    s, o, verb, score = s[order], o[order], verbs[column[order]], score[order]
    if triplet_nms is not None and score.size:
        triplets = (class_ids[s] * (verbs.max() + 1) + verb) * (object_ids.max() + 1) + class_ids[o]
        keep = _triplet_nms(out.boxes[s], out.boxes[o], triplets, score, triplet_nms)
        s, o, verb, score = s[keep], o[keep], verb[keep], score[keep]
    return {"file_name": name,
            "predictions": [{"bbox": box, "category_id": c}
                            for box, c in zip(out.boxes.tolist(), class_ids.tolist())],
            "hoi_prediction": [{"subject_id": a, "object_id": b, "category_id": c, "score": x}
                               for a, b, c, x in zip(s.tolist(), o.tolist(), verb.astype(np.int64).tolist(),
                                                     score.tolist())]}


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
    data, gts = _load_dump(path, allow_pickle)
    if file_names is not None and len(file_names) != len(data):
        raise HOIEvalError(f"{path}: {len(data)} images but {len(file_names)} file_names")
    object_ids = np.asarray(object_ids, dtype=np.int64)
    listed_tables: dict[int, np.ndarray] = {}   # by the number of verb columns

    out = []
    for n, pred in enumerate(data):
        where = f"{path}: image {n}"
        if not isinstance(pred, dict):
            raise HOIEvalError(f"{where}: expected a dict of labels, boxes, verb_scores, sub_ids, obj_ids")
        name = _image_name(pred, n, gts, file_names, where)
        where = f"{path}: image {name!r}"
        arrays = _image_output(pred, where, object_ids.size)
        n_verbs = arrays.verb_scores.shape[1]
        verbs = np.arange(1, n_verbs + 1) if verb_ids is None else np.asarray(verb_ids, np.int64)
        if verbs.size != n_verbs:
            raise HOIEvalError(f"{where}: verb_scores has {n_verbs} columns, verb_ids {verbs.size}")
        listed_table = None
        if categories is not None:
            if verbs.size not in listed_tables:
                listed_tables[verbs.size] = _listed_table(categories, object_ids, verbs)
            listed_table = listed_tables[verbs.size]
        out.append(_image_detections(name, arrays, object_ids, verbs, listed_table, max_hois, triplet_nms))
    if gt is not None:
        gt_data, _ = _load_json_list(gt, "ground truth")
        _check_against_gt(_parse_images(out, str(path), _DET_FIELDS, categories), _gt_names(gt_data))
    return out
