"""The HICO-DET metric: box IoU, matching detections to ground-truth pairs, AP per category
and the mAP of each group and setting (the protocol is in the package docstring)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .categories import HOICategories
from .parsing import _DET_FIELDS, _GT_FIELDS, _Batch, _check_against_gt, _index, _load_json_list, _parse_images

IOU_THRESHOLD = 0.5
AP_METHODS = ("voc11", "all_point")


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
