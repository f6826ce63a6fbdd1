"""The paper's table from real runs (`python scripts/reproduce_table.py --world hico`): FID/KID
of generated image folders against the real test images, and HOI detection mAP from the
detection files of a HOI detector (FGAHOI) run on them."""
from __future__ import annotations

from evaluation.hico_map import HOICategories, evaluate_hoi_map, read_detections, read_fgahoi, read_ground_truth
from evaluation.table_stats import CEILING_ROW


def run_hico(rows: list[tuple[str, str, str]], real: str, gt_path: str, train_path: str | None,
             categories_path: str | None, extractor: str, weights: str | None, fmt: str = "json",
             allow_pickle: bool = False, ceiling: str | None = None, device: str = "cpu") -> dict:
    """`rows`: (name, generated image folder, detections file). `ceiling`: detections on the
    real test images (the real-data row)."""
    from evaluation.fid_kid import build_extractor, compute_fid_kid
    gt = read_ground_truth(gt_path)
    if categories_path:
        categories = HOICategories.from_file(categories_path)
    else:
        if train_path is None:
            raise ValueError("--train trainval_hico.json (for the rare categories) or --categories is needed")
        categories = HOICategories.hico(train_records=read_ground_truth(train_path))
    feature_net = build_extractor(extractor, weights, device)

    def detections(path):
        if fmt == "fgahoi":
            return read_fgahoi(path, gt, categories, allow_pickle=allow_pickle)
        return read_detections(path, gt, categories)

    results = {}
    for name, folder, dets in rows:
        metrics = compute_fid_kid(real, folder, feature_net, device=device)
        results[name] = {**metrics, "map": evaluate_hoi_map(gt, detections(dets), categories).summary}
    if ceiling:
        results[CEILING_ROW] = {"map": evaluate_hoi_map(gt, detections(ceiling), categories).summary}
    return results
