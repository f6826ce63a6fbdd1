"""The toy HOI score of generated images: the toy detector's HICO-style mAP against the layouts
the images were generated from (what `scripts/demo.sh` prints).

    python -m evaluation.toy_score --folder outputs/demo --input examples/toy_layouts.json

Image i of the folder is `inference_batch.py`'s output for record i (`00000.png`, ...). With a
handful of layouts the mAP is coarse; `scripts/reproduce_table.py` measures it on 250 (`--n`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.hico_map import HOICategories, HOIEvalError, evaluate_hoi_map


def layouts_to_ground_truth(records: list[dict], file_names: list[str], sizes: list[tuple[int, int]],
                            source: str = "layouts") -> list[dict]:
    """Layout records (normalised boxes, toy-world phrases) -> HICO-DET detector JSON records in
    pixels. A subject or object with the same phrase and box is one instance."""
    from dataset.toy.categories import OBJECT_BY_NAME, VERB_BY_NAME
    from interact.controls.interactions import interactions_from_record
    out = []
    for i, (record, name, (width, height)) in enumerate(zip(records, file_names, sizes)):
        annotations, index, hois = [], {}, []

        def instance(phrase, box, role):
            if phrase not in OBJECT_BY_NAME:
                raise HOIEvalError(f"{source}: record {i}: {role} phrase {phrase!r} is not a toy world category "
                                   f"({', '.join(sorted(OBJECT_BY_NAME))})")
            key = (phrase, tuple(box))
            if key not in index:
                index[key] = len(annotations)
                x0, y0, x1, y1 = box
                annotations.append({"bbox": [x0 * width, y0 * height, x1 * width, y1 * height],
                                    "category_id": OBJECT_BY_NAME[phrase].id})
            return index[key]

        for it in interactions_from_record(record, f"{source}: record {i}"):
            if it.action not in VERB_BY_NAME:
                raise HOIEvalError(f"{source}: record {i}: action phrase {it.action!r} is not a toy world verb "
                                   f"({', '.join(sorted(VERB_BY_NAME))})")
            hois.append({"subject_id": instance(it.subject, it.subject_box, "subject"),
                         "object_id": instance(it.object, it.object_box, "object"),
                         "category_id": VERB_BY_NAME[it.action].id})
        out.append({"file_name": name, "annotations": annotations, "hoi_annotation": hois})
    return out


def toy_score(folder, layouts_path, detector=None):
    """(HOIMapResult, detections) for the images of a batch output folder."""
    from PIL import Image

    from evaluation.toy_detector import ToyHOIDetector
    from interact.batch import output_paths, read_layouts
    folder = Path(folder)
    records = read_layouts(layouts_path)
    images = [output_paths(folder, i)["image"] for i in range(len(records))]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise HOIEvalError(f"{folder}: {len(missing)} of {len(records)} images missing (e.g. {missing[0]}); "
                           f"generate them from {layouts_path} first")
    sizes = []
    for path in images:
        with Image.open(path) as im:
            sizes.append(im.size)
    gt = layouts_to_ground_truth(records, [p.name for p in images], sizes, str(layouts_path))
    detector = detector or ToyHOIDetector.load()
    detections = detector.detect_folder(folder, gt)
    return evaluate_hoi_map(gt, detections, HOICategories.toy()), detections


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", required=True, help="inference_batch.py's output folder")
    p.add_argument("--input", required=True, help="the layouts file the images were generated from")
    args = p.parse_args(argv)
    from interact.batch import BatchError
    try:
        result, _ = toy_score(args.folder, args.input)
    except (HOIEvalError, FileNotFoundError, BatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    s = result.summary["default"]
    n = sum(r["n_gt"] for r in result.per_category)
    print(f"toy HOI score (toy detector mAP, Default setting, {n} interactions in "
          f"{sum(1 for r in result.per_category if r['n_gt'])} categories): "
          f"Full {100 * s['full']:.1f}, Rare {100 * s['rare']:.1f}, Non-rare {100 * s['non_rare']:.1f}"
          .replace("nan", "-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
