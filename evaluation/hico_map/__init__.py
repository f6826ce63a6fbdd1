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

The package's modules: `parsing` (the per-image JSON layout: loading, validation, HOIEvalError),
`categories` (the HOI category tables), `readers` (ground truth and detections), `fgahoi` (FGAHOI's
raw output), `metric` (matching, AP, mAP) and `cli` (`python -m evaluation.hico_map`).
"""
from .categories import HICO_NUM_CATEGORIES, RARE_THRESHOLD, HOICategories, HOICategory
from .cli import build_parser, main
from .fgahoi import FGAHOI_MAX_HOIS, FGAHOI_NMS_THRESHOLD, HICO_OBJECT_IDS, read_fgahoi
from .metric import AP_METHODS, IOU_THRESHOLD, HOIMapResult, average_precision, box_iou, evaluate_hoi_map
from .parsing import HOIEvalError
from .readers import read_detections, read_ground_truth

__all__ = ["AP_METHODS", "FGAHOI_MAX_HOIS", "FGAHOI_NMS_THRESHOLD", "HICO_NUM_CATEGORIES", "HICO_OBJECT_IDS",
           "IOU_THRESHOLD", "RARE_THRESHOLD", "HOICategories", "HOICategory", "HOIEvalError", "HOIMapResult",
           "average_precision", "box_iou", "build_parser", "evaluate_hoi_map", "main", "read_detections",
           "read_fgahoi", "read_ground_truth"]
