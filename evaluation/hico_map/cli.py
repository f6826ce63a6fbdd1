"""The command line: `python -m evaluation.hico_map --gt ... --pred ...` (see the package docstring)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .categories import HOICategories
from .fgahoi import FGAHOI_NMS_THRESHOLD, read_fgahoi
from .metric import AP_METHODS, evaluate_hoi_map
from .parsing import HOIEvalError
from .readers import read_ground_truth


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
    if args.csv and Path(args.csv).is_dir():   # refused before the (possibly long) evaluation
        print(f"error: --csv {args.csv}: is a directory; give a file path such as "
              f"{Path(args.csv) / 'per_category_ap.csv'}", file=sys.stderr)
        return 1
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
