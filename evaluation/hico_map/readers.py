"""Reading the ground truth and detections in the per-image JSON layout, validated."""
from __future__ import annotations

from .categories import HOICategories
from .parsing import _DET_FIELDS, _GT_FIELDS, _check_against_gt, _gt_names, _load_json_list, _parse_images


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

