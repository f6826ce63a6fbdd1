"""The toy HOI detector (evaluation/toy_detector.py) on scenes rendered through dataset.toy."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from dataset.toy import HOI_CATEGORIES, OBJECT_BY_ID, categories_dict, group_partners, render_image, render_scene
from evaluation.hico_map import box_iou
from evaluation.toy_detector import DEFAULT_WEIGHTS, ToyHOIDetector, main, pair_crop


def iou(a, b) -> float:
    return float(box_iou(a, b)[0, 0])


@pytest.fixture(scope="module")
def detector():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{DEFAULT_WEIGHTS} missing: run scripts/train_toy_detector.py")
    return ToyHOIDetector.load()


def check_layout(det: dict):
    assert set(det) == {"file_name", "predictions", "hoi_prediction"}
    preds = det["predictions"]
    for p in preds:
        assert set(p) == {"bbox", "category_id"}
        x1, y1, x2, y2 = p["bbox"]
        assert all(isinstance(v, int) for v in p["bbox"]) and x1 < x2 and y1 < y2
        assert p["category_id"] in OBJECT_BY_ID
    valid = {(h.subject_id, h.verb_id, h.object_id) for h in HOI_CATEGORIES}
    for h in det["hoi_prediction"]:
        assert set(h) == {"subject_id", "object_id", "category_id", "score"}
        s, o = preds[h["subject_id"]], preds[h["object_id"]]
        assert OBJECT_BY_ID[s["category_id"]].kind == "subject"
        assert (s["category_id"], h["category_id"], o["category_id"]) in valid   # plausible combos only
        assert isinstance(h["score"], float) and 0.0 <= h["score"] <= 1.0
    json.dumps(det)   # plain JSON types


def pair_hypotheses(det, sbox, scat, obox, ocat):
    """Verb hypotheses (sorted by score) of the detected pairs matching a GT pair (IoU >= 0.5)."""
    P = det["predictions"]
    hs = [h for h in det["hoi_prediction"]
          if P[h["subject_id"]]["category_id"] == scat and iou(P[h["subject_id"]]["bbox"], sbox) >= 0.5
          and P[h["object_id"]]["category_id"] == ocat and iou(P[h["object_id"]]["bbox"], obox) >= 0.5]
    return sorted(hs, key=lambda h: -h["score"])


def test_every_hoi_category_detected_with_its_verb_first(detector):
    """One scene per HOI category (two seeds, beside another interaction): the GT pair is found
    with both boxes right and, for a clear majority, its verb ranked first."""
    found = first = total = 0
    for seed in (11, 12):
        rng = np.random.default_rng(seed)
        for h in HOI_CATEGORIES:
            img, ann, _ = render_scene(rng, 32, hois=[h.id, 1 + (h.id + seed) % len(HOI_CATEGORIES)])
            det = detector.detect([img])[0]
            check_layout(det)
            gt = ann["hoi_annotation"][0]
            s, o = ann["annotations"][gt["subject_id"]], ann["annotations"][gt["object_id"]]
            hyps = pair_hypotheses(det, s["bbox"], s["category_id"], o["bbox"], o["category_id"])
            total += 1
            found += bool(hyps)
            first += bool(hyps) and hyps[0]["category_id"] == gt["category_id"]
            # every valid verb of the pair is offered, so a wrong first guess still leaves recall
            assert gt["category_id"] in [x["category_id"] for x in hyps] or not hyps
    assert found >= 0.95 * total, (found, total)
    assert first >= 0.9 * total, (first, total)


def test_the_verb_comes_from_the_pose_not_the_boxes(detector):
    """A scene and the same scene with the group partner's verb have the same boxes to the pixel;
    the detector still names each one's own verb (and the pair crop it reads differs)."""
    right = total = 0
    for h in HOI_CATEGORIES:
        for partner in group_partners(h):
            for seed in (21, 22):
                dets, crops = [], []
                for cat in (h, partner):
                    img, ann, masks = render_scene(seed, 32, hois=[cat.id])
                    det = detector.detect([img])[0]
                    s, o = (ann["annotations"][i] for i in (0, 1))
                    hyps = pair_hypotheses(det, s["bbox"], s["category_id"], o["bbox"], o["category_id"])
                    dets.append(hyps[0]["category_id"] if hyps else None)
                    pixels = np.asarray(img, dtype=np.float64)
                    crops.append(pair_crop(pixels, np.array(ann["background"], dtype=np.float64), masks[0], s["bbox"],
                                           masks[1], o["bbox"]))
                total += 2
                right += (dets[0] == h.verb_id) + (dets[1] == partner.verb_id)
                assert not np.array_equal(crops[0], crops[1])
    assert right >= 0.95 * total, (right, total)


def test_empty_background_gives_nothing(detector):
    for colour in ((200, 220, 210), (240, 185, 230)):
        img = Image.new("RGB", (32, 32), colour)
        det = detector.detect([img])[0]
        assert det["predictions"] == [] and det["hoi_prediction"] == []
    noisy = np.clip(np.full((32, 32, 3), 215.0) + np.random.default_rng(0).normal(0, 10, (32, 32, 3)), 0, 255)
    det = detector.detect([Image.fromarray(noisy.astype(np.uint8))])[0]
    assert det["hoi_prediction"] == []


def test_input_forms_agree_and_other_sizes_work(detector):
    img, ann, _ = render_scene(np.random.default_rng(3), 32, hois=[1, 21])
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    a = detector.detect([img])[0]
    assert detector.detect(x[None])[0] == a                       # uint8 tensor [B,3,H,W]
    f = detector.detect(x[None].float() / 255)[0]                 # float tensor in [0, 1]
    assert f["predictions"] == a["predictions"]
    key = lambda d: sorted((h["subject_id"], h["object_id"], h["category_id"]) for h in d["hoi_prediction"])
    assert key(f) == key(a)
    assert sorted(h["score"] for h in f["hoi_prediction"]) == pytest.approx(sorted(h["score"] for h in a["hoi_prediction"]), abs=1e-4)
    assert a["file_name"] is None and len(a["hoi_prediction"]) > 0
    # a 64-pixel scene: boxes are in its own pixel frame
    img, ann, _ = render_scene(np.random.default_rng(4), 64, hois=[7])
    det = detector.detect([img])[0]
    check_layout(det)
    gt = ann["hoi_annotation"][0]
    s, o = ann["annotations"][gt["subject_id"]], ann["annotations"][gt["object_id"]]
    hyps = pair_hypotheses(det, s["bbox"], s["category_id"], o["bbox"], o["category_id"])
    assert hyps and hyps[0]["category_id"] == gt["category_id"]


def _map(detector, records, images, tmp_path):
    from evaluation.hico_map import HOICategories, evaluate_hoi_map
    cats_path = tmp_path / "categories.json"
    cats_path.write_text(json.dumps(categories_dict()))
    dets = detector.detect(images)
    for d, r in zip(dets, records):
        d["file_name"] = r["file_name"]
    return evaluate_hoi_map(records, dets, HOICategories.from_file(cats_path)).summary["default"]


def _test_images(n):
    records, images = [], []
    for i in range(n):
        img, ann, _ = render_image(0, "test", i)
        records.append({"file_name": f"test_{i:06d}.png", "width": img.width, "height": img.height,
                        "annotations": ann["annotations"], "hoi_annotation": ann["hoi_annotation"]})
        images.append(img)
    return records, images


def test_map_on_generated_test_images(detector, tmp_path):
    pytest.importorskip("evaluation.hico_map")
    records, images = _test_images(100)
    assert _map(detector, records, images, tmp_path)["full"] >= 0.9
    # degraded like a generative model's output: blur, a colour cast, noise
    rng = np.random.default_rng(0)
    bad = []
    for im in images:
        a = np.asarray(im.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float64)
        a = a + rng.uniform(-12, 12, 3) + rng.normal(0, 10, a.shape)
        bad.append(Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)))
    assert _map(detector, records, bad, tmp_path)["full"] >= 0.85


def test_detect_folder_and_cli(detector, tmp_path):
    records, images = _test_images(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for r, im in zip(records, images):
        im.save(folder / r["file_name"])
    dets = detector.detect_folder(folder, records)
    assert [d["file_name"] for d in dets] == [r["file_name"] for r in records]
    gt = tmp_path / "test_hico.json"
    gt.write_text(json.dumps(records))
    out = tmp_path / "det" / "detections.json"
    assert main(["--images", str(folder), "--gt", str(gt), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert len(written) == 3
    for d, ref in zip(written, dets):
        check_layout(d)
        assert d == json.loads(json.dumps(ref))


def test_load_errors_and_metadata(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match="train_toy_detector"):
        ToyHOIDetector.load(tmp_path / "missing.pt")
    old = tmp_path / "old.pt"
    torch.save({"state_dict": {}, "n_features": 22}, old)   # the earlier geometry-MLP layout
    with pytest.raises(ValueError, match="retrain"):
        ToyHOIDetector.load(old)
    meta = detector.metadata
    assert {"seed", "steps", "data", "geometry_only_within_group", "test_map_default"} <= set(meta)
    for group in meta["geometry_only_within_group"].values():   # box geometry alone: near chance
        assert abs(group["test_accuracy"] - group["chance"]) < 0.06
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    blob = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values())
