"""HICO-DET HOI mAP: hand-built cases with known answers, a slow reference, the CLI, bad inputs,
the FGAHOI adapter. Every input file is written here."""
import json
import math
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset.hico_names import OBJECT_NAMES, VERB_NAMES
from evaluation.hico_map import (HICO_OBJECT_IDS, HOICategories, HOICategory, HOIEvalError, average_precision,
                                 evaluate_hoi_map, main, read_detections, read_fgahoi, read_ground_truth)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY = REPO_ROOT / "data" / "toy" / "annotations"
V = {name: i for i, name in VERB_NAMES.items()}       # HICO verb ids by name
O = {name: i for i, name in OBJECT_NAMES.items()}     # HICO (COCO) object ids by name

# A small table: objects (subjects included), verbs, HOI categories (subject, verb, object).
OBJECTS = {1: "person", 2: "robot", 4: "ball", 7: "cup"}
VERBS = {1: "hold", 2: "kick"}
TABLE = {1: (1, 1, 4), 2: (1, 2, 4), 3: (1, 1, 7), 4: (2, 1, 7)}   # id -> (subject, verb, object)


def categories(rare=(), table=TABLE):
    return HOICategories([HOICategory(i, s, v, o, i in rare) for i, (s, v, o) in table.items()], OBJECTS, VERBS)


def gt_image(name, boxes, pairs):
    """boxes: [(object id, xyxy)]; pairs: [(subject index, object index, verb id)]."""
    return {"file_name": name, "annotations": [{"bbox": list(b), "category_id": c} for c, b in boxes],
            "hoi_annotation": [{"subject_id": s, "object_id": o, "category_id": v} for s, o, v in pairs]}


def det_image(name, boxes, hois):
    """hois: [(subject index, object index, verb id, score)]."""
    return {"file_name": name, "predictions": [{"bbox": list(b), "category_id": c} for c, b in boxes],
            "hoi_prediction": [{"subject_id": s, "object_id": o, "category_id": v, "score": x}
                               for s, o, v, x in hois]}


P1, B1 = (0, 0, 10, 20), (20, 0, 30, 10)      # a person and a ball
P2, B2 = (40, 0, 50, 20), (60, 0, 70, 10)     # another person and ball, far away


def ap_of(result, hoi_id, setting="ap_default"):
    return next(r[setting] for r in result.per_category if r["hoi_id"] == hoi_id)


# ----------------------------------------------------------------------------- known answers

@pytest.fixture(scope="module")
def toy_annotations(tmp_path_factory):
    """data/toy's annotations, or a small toy world written here (a fresh clone has no data)."""
    if (TOY / "categories.json").is_file():
        return TOY
    from dataset.toy.generate import generate
    out = tmp_path_factory.mktemp("toy")
    generate(out, train=1, test=300, workers=1, progress=False)
    return out / "annotations"


def test_perfect_detections_on_the_toy_test_set_give_ap_one(toy_annotations):
    cats = HOICategories.from_file(toy_annotations / "categories.json")
    gt = read_ground_truth(toy_annotations / "test_hico.json", cats)
    dets = [{"file_name": g["file_name"], "predictions": g["annotations"],
             "hoi_prediction": [dict(h, score=1.0) for h in g["hoi_annotation"]]} for g in gt]
    result = evaluate_hoi_map(gt, dets, cats)
    from dataset.toy import HOI_CATEGORIES, RARE_IDS
    assert len(result.per_category) == len(HOI_CATEGORIES)
    assert all(r["n_gt"] > 0 and r["ap_default"] == 1.0 and r["ap_known_object"] == 1.0 for r in result.per_category)
    assert result.summary == {s: {"full": 1.0, "rare": 1.0, "non_rare": 1.0} for s in ("default", "known_object")}
    assert result.info["n_rare_with_gt"] == len(RARE_IDS)


def test_false_positive_ranked_first_gives_half():
    # 1 GT; ranked: FP (wrong object box), TP -> recall [0, 1], precision [0, 1/2].
    # 11-point: every threshold t has max precision 1/2 at recall >= t -> 1/2; all-point: 1 * 1/2.
    gt = [gt_image("a.jpg", [(1, P1), (4, B1)], [(0, 1, 1)])]
    dets = [det_image("a.jpg", [(1, P1), (4, B1), (4, B2)], [(0, 2, 1, 0.9), (0, 1, 1, 0.8)])]
    for method in ("voc11", "all_point"):
        result = evaluate_hoi_map(gt, dets, categories(), ap_method=method)
        assert ap_of(result, 1) == pytest.approx(0.5, abs=1e-12)
        assert result.summary["default"]["full"] == pytest.approx(0.5, abs=1e-12)


def test_duplicate_detection_counts_once():
    # 2 GT pairs; ranked: TP (pair 1), duplicate of pair 1 (FP), TP (pair 2):
    # recall [1/2, 1/2, 1], precision [1, 1/2, 2/3].
    # 11-point: t = 0..0.5 (6 points) -> 1, t = 0.6..1 (5 points) -> 2/3: (6 + 10/3) / 11 = 28/33.
    # all-point: 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = [gt_image("a.jpg", [(1, P1), (4, B1), (1, P2), (4, B2)], [(0, 1, 1), (2, 3, 1)])]
    dup = (1, 1, 11, 21)   # IoU with P1 = 90/110 > 0.5
    dets = [det_image("a.jpg", [(1, P1), (4, B1), (1, dup), (1, P2), (4, B2)],
                      [(0, 1, 1, 0.9), (2, 1, 1, 0.8), (3, 4, 1, 0.7)])]
    assert ap_of(evaluate_hoi_map(gt, dets, categories()), 1) == pytest.approx(28 / 33, abs=1e-12)
    assert ap_of(evaluate_hoi_map(gt, dets, categories(), ap_method="all_point"), 1) == pytest.approx(5 / 6, abs=1e-12)
    # the duplicate ranked last costs nothing: both pairs found at precision 1 first
    dets[0]["hoi_prediction"][1]["score"] = 0.1
    assert ap_of(evaluate_hoi_map(gt, dets, categories()), 1) == 1.0


def test_iou_just_below_half_on_one_box_fails():
    gt = [gt_image("a.jpg", [(1, (0, 0, 10, 10)), (4, (20, 0, 30, 10))], [(0, 1, 1)])]

    def ap(subject_box, object_box):
        dets = [det_image("a.jpg", [(1, subject_box), (4, object_box)], [(0, 1, 1, 0.5)])]
        return ap_of(evaluate_hoi_map(gt, dets, categories()), 1)

    # continuous areas: [20, 0, 30, h] against [20, 0, 30, 10] has IoU h / 10
    assert ap((0, 0, 10, 10), (20, 0, 30, 5)) == 1.0          # IoU exactly 0.5 matches
    assert ap((0, 0, 10, 10), (20, 0, 30, 4.99)) == 0.0       # object 0.499, subject perfect
    assert ap((0, 0, 10, 4.99), (20, 0, 30, 10)) == 0.0       # subject 0.499, object perfect
    # with +1 pixel areas (the official MATLAB convention) [20,0,30,5] has IoU 66/121 -> still a match
    dets = [det_image("a.jpg", [(1, (0, 0, 10, 10)), (4, (20, 0, 30, 4.5))], [(0, 1, 1, 0.5)])]
    assert ap_of(evaluate_hoi_map(gt, dets, categories()), 1) == 0.0                           # 0.45
    assert ap_of(evaluate_hoi_map(gt, dets, categories(), inclusive_pixels=True), 1) == 1.0    # 60.5/121


def test_category_without_gt_is_excluded_and_rare_split_follows_flags():
    gt = [gt_image("a.jpg", [(1, P1), (4, B1), (7, B2)], [(0, 1, 1), (0, 2, 1)])]   # hold ball, hold cup
    dets = [det_image("a.jpg", [(1, P1), (4, B1), (7, B2), (4, (0, 30, 5, 35))],
                      [(0, 1, 1, 0.9),     # hold ball: TP
                       (0, 3, 1, 0.8),     # hold ball, wrong ball box: FP ranked after the TP -> AP 1
                       (0, 2, 1, 0.7),     # hold cup: TP
                       (0, 1, 2, 0.6)])]   # kick ball: category 2 has no GT anywhere
    result = evaluate_hoi_map(gt, dets, categories(rare={3}))
    rows = {r["hoi_id"]: r for r in result.per_category}
    assert rows[1]["ap_default"] == 1.0 and rows[3]["ap_default"] == 1.0
    assert rows[2]["n_gt"] == 0 and math.isnan(rows[2]["ap_default"]) and rows[2]["n_det"] == 1
    assert math.isnan(rows[4]["ap_default"])
    assert result.info["n_categories_with_gt"] == 2 and result.info["n_categories_without_gt"] == 2
    assert result.summary["default"] == {"full": 1.0, "rare": 1.0, "non_rare": 1.0}

    # now category 3 (rare) at 1/2 and category 1 (non-rare) at 1: Full is their mean
    dets = [det_image("a.jpg", [(1, P1), (4, B1), (7, B2), (7, (0, 30, 5, 35))],
                      [(0, 1, 1, 0.9), (0, 3, 1, 0.95), (0, 2, 1, 0.1)])]   # hold cup: FP first, then TP
    result = evaluate_hoi_map(gt, dets, categories(rare={3}))
    assert ap_of(result, 3) == pytest.approx(0.5) and ap_of(result, 1) == 1.0
    assert result.summary["default"]["rare"] == pytest.approx(0.5)
    assert result.summary["default"]["non_rare"] == 1.0
    assert result.summary["default"]["full"] == pytest.approx(0.75)
    # no rare category present: Rare is NaN, not 0
    result = evaluate_hoi_map(gt, dets, categories(rare={2}))
    assert math.isnan(result.summary["default"]["rare"]) and math.isnan(result.summary["known_object"]["rare"])


def test_known_object_ignores_images_without_the_object():
    gt = [gt_image("a.jpg", [(1, P1), (4, B1)], [(0, 1, 1)]),         # a ball here
          gt_image("b.jpg", [(1, P1), (7, B1)], [(0, 1, 1)])]         # only a cup here
    dets = [det_image("a.jpg", [(1, P1), (4, B1)], [(0, 1, 1, 0.5)]),
            det_image("b.jpg", [(1, P1), (4, B1)], [(0, 1, 1, 0.9)])]  # "hold ball" where no ball is known
    result = evaluate_hoi_map(gt, dets, categories())
    assert ap_of(result, 1) == pytest.approx(0.5)                      # the FP ranks first
    assert ap_of(result, 1, "ap_known_object") == 1.0                  # b.jpg is not looked at
    assert ap_of(result, 3) == 0.0 and ap_of(result, 3, "ap_known_object") == 0.0   # hold cup: not detected
    assert result.summary["default"]["full"] == pytest.approx(0.25)
    assert result.summary["known_object"]["full"] == pytest.approx(0.5)


def test_unlisted_triplets_are_ignored_and_subject_class_matters_for_the_toy_table():
    gt = [gt_image("a.jpg", [(2, P1), (7, B1)], [(0, 1, 1)])]           # robot holds cup: category 4
    dets = [det_image("a.jpg", [(2, P1), (7, B1), (1, P1)],
                      [(2, 1, 1, 0.9),     # person holds cup: category 3, no GT -> not in any mean
                       (0, 1, 2, 0.8),     # robot kicks cup: not a listed category -> ignored
                       (0, 1, 1, 0.1)])]   # robot holds cup: TP
    result = evaluate_hoi_map(gt, dets, categories())
    assert ap_of(result, 4) == 1.0 and result.info["n_detections_ignored"] == 1
    assert result.summary["default"]["full"] == 1.0


def test_hico_table_looks_up_verb_and_object_only():
    records = []
    for k in range(12):   # (hold, cup): 12 training pairs -> non-rare; (kick, sports ball): 1 -> rare
        records.append(gt_image(f"t{k}.jpg", [(1, P1), (O["cup"], B1)], [(0, 1, V["hold"])]))
    records.append(gt_image("t_rare.jpg", [(1, P1), (O["sports ball"], B1)], [(0, 1, V["kick"])]))
    cats = HOICategories.hico(train_records=records, expected=None)
    # ids in (object id, verb id) order when the records carry none
    assert [(c.id, c.verb_id, c.object_id, c.rare) for c in cats.categories] == \
        [(1, V["kick"], O["sports ball"], True), (2, V["hold"], O["cup"], False)]
    assert cats.names(0) == ("person", "kick", "sports ball")
    with pytest.raises(HOIEvalError, match="600"):
        HOICategories.hico(train_records=records)
    with pytest.raises(HOIEvalError, match="trainval_hico.json"):
        HOICategories.hico()
    # official ids carried by the records are used
    for r in records:
        for h in r["hoi_annotation"]:
            h["hoi_category_id"] = 77 if h["category_id"] == V["hold"] else 5
    cats = HOICategories.hico(train_records=records, expected=None)
    assert sorted(cats.ids.tolist()) == [5, 77]
    # FGAHOI's files: hoi_list_new.json (official ids) and hoi_id_to_num.json (rare flags)
    hoi_list = [{"id": "001", "object": "cup", "object_cat": O["cup"], "verb": "hold", "verb_id": V["hold"]},
                {"id": "002", "object": "sports_ball", "object_cat": O["sports ball"], "verb": "kick", "verb_id": V["kick"]}]
    cats = HOICategories.hico(hoi_list=hoi_list, hoi_id_to_num={"001": {"rare": False}, "002": {"rare": True}},
                              expected=None)
    assert [(c.id, c.verb_id, c.object_id, c.rare) for c in cats.categories] == \
        [(1, V["hold"], O["cup"], False), (2, V["kick"], O["sports ball"], True)]
    with pytest.raises(HOIEvalError, match="hoi_id_to_num"):
        HOICategories.hico(hoi_list=hoi_list, expected=None)
    # 600 categories from a complete table
    pairs = [(v, o) for o in sorted(OBJECT_NAMES) for v in range(1, 9)][:600]
    full = [gt_image(f"f{k}.jpg", [(1, P1), (o, B1)], [(0, 1, v)] * (1 if k % 5 == 0 else 10))
            for k, (v, o) in enumerate(pairs)]
    cats = HOICategories.hico(train_records=full)
    assert len(cats) == 600 and int(cats.rare.sum()) == 120


# ----------------------------------------------------------------------------- slow reference

def ref_iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def ref_ap(hits, n_gt, method):
    tp = fp = 0
    rec, prec = [], []
    for hit in hits:
        tp, fp = tp + hit, fp + (not hit)
        rec.append(tp / n_gt)
        prec.append(tp / (tp + fp))
    if method == "voc11":
        total = 0.0
        for k in range(11):
            ps = [p for r, p in zip(rec, prec) if r >= k / 10]
            total += max(ps) if ps else 0.0
        return total / 11
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def reference_map(gt, dets, table, method, known_object):
    """Plain loops: per category, detections over images sorted by score (stable), each matched to
    the unmatched-or-not GT pair of best min-IoU in its image, TP if >= 0.5 and not yet matched."""
    key = {v: k for k, v in table.items()}
    gt_by_name = {g["file_name"]: g for g in gt}
    image_order = [g["file_name"] for g in gt]
    aps = {}
    for cat, (s, v, o) in table.items():
        pairs = {}   # image -> list of (subject box, object box)
        for g in gt:
            anns = g["annotations"]
            pairs[g["file_name"]] = [(anns[h["subject_id"]]["bbox"], anns[h["object_id"]]["bbox"])
                                     for h in g["hoi_annotation"]
                                     if key.get((anns[h["subject_id"]]["category_id"], h["category_id"],
                                                 anns[h["object_id"]]["category_id"])) == cat]
        n_gt = sum(len(p) for p in pairs.values())
        if n_gt == 0:
            continue
        found = []
        for d in sorted(dets, key=lambda d: image_order.index(d["file_name"])):
            name, boxes = d["file_name"], d["predictions"]
            if known_object and not any(a["category_id"] == o for a in gt_by_name[name]["annotations"]):
                continue
            for h in d["hoi_prediction"]:
                triplet = (boxes[h["subject_id"]]["category_id"], h["category_id"], boxes[h["object_id"]]["category_id"])
                if key.get(triplet) == cat:
                    found.append((h["score"], name, boxes[h["subject_id"]]["bbox"], boxes[h["object_id"]]["bbox"]))
        found = sorted(found, key=lambda f: -f[0])
        taken = {name: [False] * len(p) for name, p in pairs.items()}
        hits = []
        for _, name, sb, ob in found:
            best, best_j = -1.0, None
            for j, (gs, go) in enumerate(pairs[name]):
                overlap = min(ref_iou(sb, gs), ref_iou(ob, go))
                if overlap > best:
                    best, best_j = overlap, j
            hit = best >= 0.5 and not taken[name][best_j]
            if hit:
                taken[name][best_j] = True
            hits.append(hit)
        aps[cat] = ref_ap(hits, n_gt, method)
    return aps


def random_world(seed):
    rng = random.Random(seed)

    def box():
        x, y = rng.uniform(0, 40), rng.uniform(0, 40)
        return [round(x, 1), round(y, 1), round(x + rng.uniform(3, 20), 1), round(y + rng.uniform(3, 20), 1)]

    def jitter(b):
        return [round(v + rng.uniform(-1.2, 1.2), 1) for v in b] if rng.random() < 0.85 else box()

    gt, dets = [], []
    for n in range(40):
        anns = [(rng.choice([1, 1, 2]), box()) for _ in range(rng.randint(1, 2))] + \
               [(rng.choice([4, 7]), box()) for _ in range(rng.randint(1, 3))]
        n_sub = sum(1 for c, _ in anns if c in (1, 2))
        pairs = [(rng.randrange(n_sub), rng.randrange(n_sub, len(anns)), rng.choice([1, 2]))
                 for _ in range(rng.randint(0, 3))]
        gt.append(gt_image(f"img{n}.jpg", anns, pairs))
        if rng.random() < 0.15:
            continue   # an image without detections
        preds = [(c, jitter(b)) for c, b in anns] + [(rng.choice([1, 4, 7]), box())]
        hois = [(rng.randrange(len(preds)), rng.randrange(len(preds)), rng.choice([1, 2]),
                 round(rng.random(), 1)) for _ in range(rng.randint(0, 8))]   # rounded: many ties
        hois += [(s, o, v, round(rng.random(), 1)) for s, o, v in pairs for _ in range(rng.randint(0, 3))]
        rng.shuffle(hois)
        dets.append(det_image(f"img{n}.jpg", preds, hois))
    rng.shuffle(dets)   # file order of images does not matter
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference_on_random_detections(seed):
    gt, dets = random_world(seed)
    cats = categories(rare={2, 4})
    for method in ("voc11", "all_point"):
        result = evaluate_hoi_map(gt, dets, cats, ap_method=method)
        for setting, known in (("ap_default", False), ("ap_known_object", True)):
            expected = reference_map(gt, dets, TABLE, method, known)
            got = {r["hoi_id"]: r[setting] for r in result.per_category if r["n_gt"] > 0}
            assert got.keys() == expected.keys()
            for k in expected:
                assert got[k] == pytest.approx(expected[k], abs=1e-12), (seed, method, setting, k)
            summary = result.summary["known_object" if known else "default"]
            assert summary["full"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
            rare = [expected[k] for k in expected if k in (2, 4)]
            if rare:
                assert summary["rare"] == pytest.approx(np.mean(rare), abs=1e-12)


def test_average_precision_closed_forms():
    assert average_precision([], []) == 0.0
    # recall exactly 0.3 reaches the 0.3 threshold (k / 10, not np.arange's 0.30000000000000004)
    assert average_precision([0.1, 0.2, 0.3], [1.0, 1.0, 1.0]) == pytest.approx(4 / 11)
    assert average_precision([0.5, 1.0], [1.0, 0.5], "all_point") == pytest.approx(0.75)
    with pytest.raises(ValueError):
        average_precision([1.0], [1.0], "coco")


# ----------------------------------------------------------------------------- CLI and files

def write_world(tmp_path):
    gt = [gt_image("a.jpg", [(1, P1), (4, B1)], [(0, 1, 1)]),
          gt_image("b.jpg", [(2, P2), (7, B2)], [(0, 1, 1)])]
    dets = [det_image("a.jpg", [(1, P1), (4, B1), (4, B2)], [(0, 2, 1, 0.9), (0, 1, 1, 0.8)]),
            det_image("b.jpg", [(2, P2), (7, B2)], [(0, 1, 1, 0.7)])]
    cat_file = {"objects": [{"id": i, "name": n} for i, n in OBJECTS.items()],
                "verbs": [{"id": i, "name": n} for i, n in VERBS.items()],
                "hoi_categories": [{"id": i, "subject_id": s, "verb_id": v, "object_id": o, "rare": i == 4}
                                   for i, (s, v, o) in TABLE.items()]}
    paths = {}
    for name, data in (("gt", gt), ("pred", dets), ("categories", cat_file)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths, gt, dets


def test_cli_prints_table_and_writes_csv(tmp_path, capsys):
    paths, _, _ = write_world(tmp_path)
    out_csv = tmp_path / "out" / "per_category.csv"
    code = main(["--gt", str(paths["gt"]), "--pred", str(paths["pred"]), "--categories", str(paths["categories"]),
                 "--csv", str(out_csv)])
    printed = capsys.readouterr().out
    assert code == 0
    # category 1 (non-rare): AP 0.5; category 4 (rare): AP 1 -> Full 75, Rare 100, Non-rare 50
    default = next(line for line in printed.splitlines() if line.startswith("Default"))
    assert default.split()[1:] == ["75.00", "100.00", "50.00"]
    known = next(line for line in printed.splitlines() if line.startswith("Known Object"))
    assert known.split()[2:] == ["75.00", "100.00", "50.00"]
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "hoi_id,subject,verb,object,rare,n_gt,n_det,ap_default,ap_known_object"
    assert rows[1] == "1,person,hold,ball,False,1,2,0.5,0.5"
    assert rows[2].startswith("2,person,kick,ball,False,0,0,,")   # no GT: empty AP cells
    # no category table: a clear error, exit 1
    assert main(["--gt", str(paths["gt"]), "--pred", str(paths["pred"])]) == 1
    assert "--train trainval_hico.json" in capsys.readouterr().err


def test_cli_refuses_a_csv_directory_before_reading_anything(tmp_path, capsys):
    """--csv naming a directory is refused at once: the ground truth given does not even exist."""
    code = main(["--gt", str(tmp_path / "missing.json"), "--pred", str(tmp_path / "missing.json"),
                 "--categories", str(tmp_path / "missing.json"), "--csv", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: --csv {tmp_path}: is a directory") and "missing.json" not in err


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, pickle.dumps({"preds": []})], ids=["random", "pickle"])
def test_cli_names_a_binary_detections_file(tmp_path, capsys, content):
    paths, _, _ = write_world(tmp_path)
    binary = tmp_path / "detections.bin"
    binary.write_bytes(content)
    for flag, value in (("--pred", binary), ("--gt", binary)):
        args = {"--gt": str(paths["gt"]), "--pred": str(paths["pred"]), flag: str(value)}
        code = main([a for kv in args.items() for a in kv] + ["--categories", str(paths["categories"])])
        err = capsys.readouterr().err
        what = "detections" if flag == "--pred" else "ground truth"
        assert code == 1 and err == f"error: {binary}: not a JSON {what} file (binary content, not UTF-8 text)\n"


def test_fgahoi_reader_names_a_binary_or_broken_dump(tmp_path):
    as_json = tmp_path / "preds.json"
    as_json.write_bytes(bytes(range(256)))
    with pytest.raises(HOIEvalError, match=r"preds\.json: not a JSON FGAHOI output file \(binary content"):
        read_fgahoi(as_json)
    as_pickle = tmp_path / "preds_gts_1.pkl"
    as_pickle.write_bytes(b"\x80\x04 this is not a pickle")
    with pytest.raises(HOIEvalError, match=r"preds_gts_1\.pkl: not a pickled FGAHOI dump \("):
        read_fgahoi(as_pickle, allow_pickle=True)


def test_module_runs_as_a_script():
    done = subprocess.run([sys.executable, "-m", "evaluation.hico_map", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--categories" in done.stdout and "fgahoi" in done.stdout


@pytest.mark.parametrize("mutate, fragments", [
    (lambda g, d: d[0].update(file_name="zzz.jpg"), ["pred.json", "'zzz.jpg'", "not an image of the ground truth"]),
    (lambda g, d: d[1]["hoi_prediction"][0].update(category_id=99),
     ["pred.json", "'b.jpg'", "hoi_prediction[0].category_id = 99", "verb"]),
    (lambda g, d: d[0]["hoi_prediction"][1].update(subject_id=3),
     ["pred.json", "'a.jpg'", "hoi_prediction[1].subject_id = 3", "out of range"]),
    (lambda g, d: d[0]["hoi_prediction"][0].update(score=float("nan")),
     ["pred.json", "'a.jpg'", "hoi_prediction[0].score"]),
    (lambda g, d: d[0]["predictions"][2].update(bbox=[5, 5, 1, 9]), ["pred.json", "'a.jpg'", "predictions[2].bbox"]),
    (lambda g, d: d[0]["predictions"][2].update(bbox=[5, 5, 9]), ["pred.json", "'a.jpg'", "predictions[2].bbox"]),
    (lambda g, d: d[0]["predictions"][0].update(category_id=3), ["pred.json", "'a.jpg'", "predictions[0].category_id = 3"]),
    (lambda g, d: g[1]["hoi_annotation"][0].update(object_id=5), ["gt.json", "'b.jpg'", "hoi_annotation[0].object_id = 5"]),
    (lambda g, d: g[0]["hoi_annotation"][0].update(hoi_category_id=3), ["gt.json", "'a.jpg'", "hoi_category_id = 3"]),
    (lambda g, d: d.append(d[0]), ["pred.json", "'a.jpg'", "listed twice"]),
])
def test_bad_inputs_name_file_image_and_field(tmp_path, mutate, fragments):
    paths, gt, dets = write_world(tmp_path)
    mutate(gt, dets)
    paths["gt"].write_text(json.dumps(gt))
    paths["pred"].write_text(json.dumps(dets))
    cats = HOICategories.from_file(paths["categories"])
    with pytest.raises(HOIEvalError) as info:
        read_detections(paths["pred"], read_ground_truth(paths["gt"], cats), cats)
    message = str(info.value)
    assert all(fragment in message for fragment in fragments), message
    assert isinstance(info.value, ValueError)


def test_in_memory_and_file_inputs_agree(tmp_path):
    paths, gt, dets = write_world(tmp_path)
    cats = HOICategories.from_file(paths["categories"])
    from_files = evaluate_hoi_map(paths["gt"], paths["pred"], cats)
    assert evaluate_hoi_map(gt, dets, cats).summary == from_files.summary
    assert read_detections(paths["pred"], paths["gt"], cats) == dets


# ----------------------------------------------------------------------------- FGAHOI adapter

def fgahoi_dump():
    """Two images in FGAHOI's PostProcessHOI layout: N = 3 (query, class) pairs per image,
    labels 0-based into the 80 HICO classes (0 = person), 117 verb columns."""
    person, cup, dog = 0, HICO_OBJECT_IDS.index(O["cup"]), HICO_OBJECT_IDS.index(O["dog"])
    hold, ride = V["hold"] - 1, V["ride"] - 1     # verb columns (verb id - 1)
    near = [0.5, 0.5, 10.5, 20.5]                 # +1-pixel IoUs with P1 0.87 and B1 0.91: product > 0.5
    preds = []
    for name in ("a.jpg", "b.jpg"):
        scores = np.zeros((3, 117))
        scores[0, hold] = 0.9              # person holds cup (the GT pair)
        scores[0, ride] = 0.95             # person rides cup: not a listed category -> dropped
        scores[1, hold] = 0.8              # a near duplicate of pair 0: removed by the triplet NMS
        scores[2, hold] = 0.3              # person holds dog: not listed -> dropped
        preds.append({"labels": [person] * 3 + [cup, cup, dog],
                      "boxes": [list(P1), near, list(P2), list(B1), [20.5, 0, 30.5, 10], list(B2)],
                      "verb_scores": scores.tolist(), "sub_ids": [0, 1, 2], "obj_ids": [3, 4, 5]})
    return {"preds": preds, "gts": [{"file_name": "a.jpg"}, {"file_name": "b.jpg"}], "epoch": -1}


def hico_cats():
    train = [gt_image("t.jpg", [(1, P1), (O["cup"], B1), (O["dog"], B2)], [(0, 1, V["hold"])] * 12 + [(0, 2, V["ride"])])]
    return HOICategories.hico(train_records=train, expected=None)   # (hold, cup) and (ride, dog)


def test_fgahoi_adapter_converts_labels_verbs_and_filters(tmp_path):
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(fgahoi_dump()))
    cats = hico_cats()
    gt = [gt_image(n, [(1, P1), (O["cup"], B1)], [(0, 1, V["hold"])]) for n in ("a.jpg", "b.jpg")]
    dets = read_fgahoi(path, gt, cats)
    assert [d["file_name"] for d in dets] == ["a.jpg", "b.jpg"]
    assert [p["category_id"] for p in dets[0]["predictions"]] == [1, 1, 1, O["cup"], O["cup"], O["dog"]]
    # listed triplets only, the duplicate gone; (ride, dog) is listed and kept at score 0, as FGAHOI keeps it
    assert dets[0]["hoi_prediction"] == [{"subject_id": 0, "object_id": 3, "category_id": V["hold"], "score": 0.9},
                                         {"subject_id": 2, "object_id": 5, "category_id": V["ride"], "score": 0.0}]
    # without NMS and without the category filter everything is kept, best first, top max_hois
    raw = read_fgahoi(path, triplet_nms=None, max_hois=4)
    assert [(h["subject_id"], h["category_id"], h["score"]) for h in raw[0]["hoi_prediction"]] == \
        [(0, V["ride"], 0.95), (0, V["hold"], 0.9), (1, V["hold"], 0.8), (2, V["hold"], 0.3)]
    # NMS without the category filter: the duplicate goes, the rest stays
    assert len(read_fgahoi(path, max_hois=4)[0]["hoi_prediction"]) == 3
    result = evaluate_hoi_map(gt, dets, cats)
    assert result.summary["default"]["full"] == 1.0
    # a pickle needs the explicit flag
    pkl = tmp_path / "preds_gts_-1.pkl"
    pkl.write_bytes(pickle.dumps({k: v for k, v in fgahoi_dump().items()}))
    with pytest.raises(HOIEvalError, match="allow_pickle"):
        read_fgahoi(pkl, gt, cats)
    assert read_fgahoi(pkl, gt, cats, allow_pickle=True) == dets
    # names only by order: file_names must be given
    no_names = fgahoi_dump()
    del no_names["gts"]
    path.write_text(json.dumps(no_names))
    with pytest.raises(HOIEvalError, match="file_names"):
        read_fgahoi(path, gt, cats)
    assert read_fgahoi(path, gt, cats, file_names=["a.jpg", "b.jpg"]) == dets
    # a label outside the 80 classes
    bad = fgahoi_dump()
    bad["preds"][1]["labels"][4] = 80
    path.write_text(json.dumps(bad))
    with pytest.raises(HOIEvalError, match=r"'b.jpg'.*labels\[4\] = 80"):
        read_fgahoi(path, gt, cats)


def test_cli_with_fgahoi_format_and_hico_table(tmp_path, capsys):
    pred = tmp_path / "preds.json"
    pred.write_text(json.dumps(fgahoi_dump()))
    train = tmp_path / "trainval_hico.json"
    train.write_text(json.dumps([gt_image("t.jpg", [(1, P1), (O["cup"], B1)], [(0, 1, V["hold"])])]))
    gt = tmp_path / "test_hico.json"
    gt.write_text(json.dumps([gt_image(n, [(1, P1), (O["cup"], B1)], [(0, 1, V["hold"])]) for n in ("a.jpg", "b.jpg")]))
    # the tiny training file has 2 categories, not 600: the CLI says so
    assert main(["--gt", str(gt), "--pred", str(pred), "--train", str(train), "--format", "fgahoi"]) == 1
    assert "600" in capsys.readouterr().err
