"""The toy score (layouts -> ground truth -> detector mAP), the table (evaluation/table_stats.py,
experiments/) and checkpoint packing."""
import json
import math

import pytest
import torch

from dataset.toy import OBJECT_BY_ID, VERB_BY_ID, render_image
from evaluation.hico_map import HOICategories, HOIEvalError
from evaluation.table_stats import markdown_table
from evaluation.toy_score import layouts_to_ground_truth, main as toy_score_main, toy_score


def scene_layout(index):
    """A rendered toy test scene and its layout record (normalised boxes, toy phrases)."""
    image, ann, _ = render_image(0, "test", index)
    w, h = ann["width"], ann["height"]
    boxes = [[b["bbox"][0] / w, b["bbox"][1] / h, b["bbox"][2] / w, b["bbox"][3] / h] for b in ann["annotations"]]
    names = [OBJECT_BY_ID[b["category_id"]].name for b in ann["annotations"]]
    hois = ann["hoi_annotation"]
    record = {"prompt": "toy scene", "subject_phrases": [names[x["subject_id"]] for x in hois],
              "action_phrases": [VERB_BY_ID[x["category_id"]].name for x in hois],
              "object_phrases": [names[x["object_id"]] for x in hois],
              "subject_boxes": [boxes[x["subject_id"]] for x in hois], "object_boxes": [boxes[x["object_id"]] for x in hois]}
    return image, ann, record


def test_layouts_become_pixel_ground_truth_with_shared_instances():
    record = {"prompt": "p", "subject_phrases": ["person", "person"], "action_phrases": ["hold", "kick"],
              "object_phrases": ["ball", "ball"], "subject_boxes": [[0.1, 0.2, 0.5, 0.9]] * 2,
              "object_boxes": [[0.5, 0.5, 0.6, 0.6], [0.6, 0.8, 0.7, 0.9]]}
    (gt,) = layouts_to_ground_truth([record], ["00000.png"], [(64, 32)])
    assert gt["file_name"] == "00000.png"
    assert len(gt["annotations"]) == 3  # one person (same phrase and box), two balls
    assert gt["annotations"][0]["bbox"] == pytest.approx([6.4, 6.4, 32.0, 28.8])
    assert [h["subject_id"] for h in gt["hoi_annotation"]] == [0, 0]
    verbs = {v.name: v.id for v in VERB_BY_ID.values()}
    assert [h["category_id"] for h in gt["hoi_annotation"]] == [verbs["hold"], verbs["kick"]]
    bad = dict(record, object_phrases=["ball", "horse"])
    with pytest.raises(HOIEvalError, match="record 0.*'horse'"):
        layouts_to_ground_truth([bad], ["00000.png"], [(64, 64)], "layouts.json")
    with pytest.raises(HOIEvalError, match="record 0.*'feeding'"):
        layouts_to_ground_truth([dict(record, action_phrases=["hold", "feeding"])], ["x.png"], [(64, 64)])


def test_toy_score_is_high_on_real_scenes_and_low_on_blank_images(tmp_path, capsys):
    from evaluation.toy_detector import DEFAULT_WEIGHTS
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip("toy detector weights missing")
    records = []
    for i in range(4):
        image, _, record = scene_layout(i)
        image.save(tmp_path / f"{i:05d}.png")
        records.append(record)
    layouts = tmp_path / "layouts.json"
    layouts.write_text(json.dumps(records))
    result, detections = toy_score(tmp_path, layouts)
    assert result.summary["default"]["full"] >= 0.8
    assert toy_score_main(["--folder", str(tmp_path), "--input", str(layouts)]) == 0
    assert "toy HOI score" in capsys.readouterr().out
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(4):
        from PIL import Image
        Image.new("RGB", (64, 64), (230, 220, 210)).save(blank / f"{i:05d}.png")
    assert toy_score(blank, layouts)[0].summary["default"]["full"] == 0.0
    (blank / "00003.png").unlink()
    with pytest.raises(HOIEvalError, match="1 of 4 images missing"):
        toy_score(blank, layouts)


def test_toy_categories_match_the_generated_file(tmp_path):
    from dataset.toy import categories_dict
    path = tmp_path / "categories.json"
    path.write_text(json.dumps(categories_dict()))
    a, b = HOICategories.toy(), HOICategories.from_file(path)
    assert a.categories == b.categories and a.object_names == b.object_names and a.verb_names == b.verb_names


def test_markdown_table_shape_and_formatting():
    m = {"default": {"full": 0.5, "rare": float("nan"), "non_rare": 0.25},
         "known_object": {"full": 0.75, "rare": 0.1, "non_rare": 1.0}}
    text = markdown_table({"A": {"fid": 12.345, "kid_mean": 0.01234, "kid_std": 0.002, "map": m},
                           "ceiling": {"map": m}, "_meta": {"n": 3}})
    lines = text.strip().splitlines()
    assert len(lines) == 4 and lines[0].count("|") == 10
    assert lines[2] == "| A | 12.35 | 0.0123 ± 0.0020 | 50.00 | - | 25.00 | 75.00 | 10.00 | 100.00 |"
    assert lines[3].startswith("| ceiling | - | - | 50.00 |")


def test_pack_halves_weights_and_loads_into_fp32_model(tmp_path):
    from helpers import TINY_CONFIG
    from interact.checkpoint import load_weights, pack, read_file, save_checkpoint
    from interact.model import build_model
    torch.manual_seed(0)
    model = build_model(TINY_CONFIG)
    src = tmp_path / "full.pth"
    save_checkpoint(src, model, iters=7)
    packed = pack(src, tmp_path / "packed.pth")
    assert "iters" not in packed and "diffusion" not in packed
    assert all(v.dtype == torch.float16 for v in packed["model"].values() if v.is_floating_point())
    assert (tmp_path / "packed.pth").stat().st_size < 0.6 * src.stat().st_size
    fresh = build_model(TINY_CONFIG, device="meta")
    load_weights(fresh, tmp_path / "packed.pth", purpose="generate")  # rebuilds the schedule, which the pack leaves out
    fresh = fresh.float()
    for name, value in model.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[name], value.half().float())
    torch.testing.assert_close(fresh.diffusion.alphas_cumprod, model.diffusion.alphas_cumprod)  # rebuilt, fp32
    assert not math.isnan(float(read_file(tmp_path / "packed.pth")["model"][next(iter(packed["model"]))].float().sum()))


def test_hico_route_assembles_rows_from_folders_and_detection_files(tmp_path):
    """--world hico: FID/KID from image folders, mAP from detector files; exercised on toy
    scenes with a categories file (no HICO data here)."""
    from dataset.toy import categories_dict
    from experiments.hico_table import run_hico
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    gt = []
    for i in range(6):
        image, ann, _ = render_image(0, "test", i)
        image.save(real / f"{i}.png")
        image.transpose(0).save(fake / f"{i}.png")  # mirrored: same statistics, different images
        gt.append({"file_name": f"{i}.png", "annotations": ann["annotations"], "hoi_annotation": ann["hoi_annotation"]})
    perfect = [{"file_name": g["file_name"], "predictions": g["annotations"],
                "hoi_prediction": [dict(h, score=1.0) for h in g["hoi_annotation"]]} for g in gt]
    empty = [{"file_name": g["file_name"], "predictions": [], "hoi_prediction": []} for g in gt]
    paths = {}
    for name, value in (("gt", gt), ("perfect", perfect), ("empty", empty), ("categories", categories_dict())):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(value))
    results = run_hico([("A", str(fake), str(paths["perfect"])), ("B", str(real), str(paths["empty"]))],
                       str(real), str(paths["gt"]), None, str(paths["categories"]), "toy", None,
                       ceiling=str(paths["perfect"]))
    assert results["A"]["map"]["default"]["full"] == 1.0 and results["B"]["map"]["default"]["full"] == 0.0
    assert results["B"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert results["A"]["fid"] > 1.0
    assert results["real images (detector ceiling)"]["map"]["known_object"]["full"] == 1.0
    with pytest.raises(ValueError, match="--train"):
        run_hico([("A", str(fake), str(paths["perfect"]))], str(real), str(paths["gt"]), None, None, "toy", None)


def test_toy_table_is_assembled_from_the_rows_scored_so_far(tmp_path):
    """Rows whose seeds all have scores (for this n) enter the table; the others are listed as
    missing; the comparisons use the paired bootstrap draws and the seeds."""
    from evaluation.table_stats import CEILING_ROW
    from experiments.toy_table import ROW_BY_KEY, assemble_toy

    def scores(full, draws, n=4, fid=10.0, detector="def"):
        m = {"full": full, "rare": full, "non_rare": full}
        return {"key": f"abc:{detector}:n{n}", "map": {"default": m, "known_object": m}, "bootstrap": draws,
                "map_groups": {"non_human_subject": full, "non_contact": full}, "fid": fid, "kid_mean": 0.01,
                "kid_std": 0.002, "layout_gain": 0.3}

    def write(key, seed, value):
        path = tmp_path / ROW_BY_KEY[key].run_name(seed) / "scores.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(value))

    write("interact", 0, scores(0.8, [0.8, 0.7, 0.9]))
    write("interact", 1, scores(0.6, [0.6, 0.5, 0.7]))
    write("boxes", 0, scores(0.4, [0.4, 0.4, 0.5]))
    write("boxes", 1, scores(0.4, [0.4, 0.3, 0.4], n=8))          # scored for another n: not this table's
    write("text_only", 0, scores(0.05, [0.05, 0.05, 0.1]))
    write("typed", 0, scores(0.7, [0.7, 0.6, 0.8], detector="old"))  # scored by another detector
    real = scores(1.0, [1.0, 1.0, 1.0])
    results = assemble_toy(tmp_path, 4, real, 12.0, "def")
    meta = results["_meta"]
    assert "boxes" in meta["missing"] and "typed" in meta["missing"] and "interact" not in meta["missing"] and "text_only" not in meta["missing"]
    row = results["InteractDiffusion"]
    assert row["map"]["default"]["full"] == pytest.approx(0.7) and row["seeds"] == 2
    assert row["bootstrap"] == pytest.approx([0.7, 0.6, 0.8])
    assert set(meta["comparisons"]) == {"interact - text_only"}
    c = meta["comparisons"]["interact - text_only"]
    assert c["difference"] == pytest.approx(0.65) and c["se_seeds"] == pytest.approx(math.sqrt(0.02 / 2))
    assert results[CEILING_ROW]["map"]["default"]["full"] == 1.0
    table = (tmp_path / "table.md").read_text()
    assert "| InteractDiffusion | 2 | 10.00 (10.00, 10.00) |" in table and "| text only | 1 |" in table
    assert "InteractDiffusion − text only | +65.00 |" in table


def test_reproduce_table_refuses_unknown_rows_and_bad_numbers(capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reproduce_table import main
    assert main(["--world", "toy", "--rows", "interact,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "text_only" in err     # one line, the known rows listed
    with pytest.raises(SystemExit):
        main(["--world", "toy", "--bootstrap", "3"])
    assert "--bootstrap 3" in capsys.readouterr().err


def test_pair_verbs_split_twin_scenes_and_count_found_pairs_and_right_verbs():
    """Twin scene: two persons, one holding, one waving at a ball (same boxes geometry); the
    detector finds both pairs but gives one the wrong verb. Other scene: a kick that is missed."""
    from dataset.toy import VERB_BY_NAME, find_hoi
    from evaluation.table_stats import is_twin_scene, pair_verb_accuracy

    def hoi(s, o, verb, subject="person", obj="ball"):
        return {"subject_id": s, "object_id": o, "category_id": VERB_BY_NAME[verb].id,
                "hoi_category_id": find_hoi(subject, verb, obj).id}

    person, ball = 1, 4
    boxes = [[0, 0, 10, 20], [10, 5, 14, 9], [16, 0, 26, 20], [26, 5, 30, 9]]
    twin = {"file_name": "a.png", "annotations": [{"bbox": b, "category_id": c} for b, c in
                                                  zip(boxes, [person, ball, person, ball])],
            "hoi_annotation": [hoi(0, 1, "hold"), hoi(2, 3, "wave at")]}
    other = {"file_name": "b.png", "annotations": [{"bbox": boxes[0], "category_id": person},
                                                   {"bbox": [10, 16, 14, 20], "category_id": ball}],
             "hoi_annotation": [hoi(0, 1, "kick")]}
    mixed = {**twin, "hoi_annotation": [hoi(0, 1, "hold"), hoi(2, 3, "kick")]}   # different groups
    assert is_twin_scene(twin) and not is_twin_scene(other) and not is_twin_scene(mixed)

    hold, wave = VERB_BY_NAME["hold"].id, VERB_BY_NAME["wave at"].id
    # boxes one pixel off (IoU well above 0.5); the second pair's best verb is wrong
    predictions = [{"bbox": [b[0] + 1, b[1], b[2] + 1, b[3]], "category_id": 1} for b in boxes]
    detections = [{"file_name": "a.png", "predictions": predictions, "hoi_prediction": [
                      {"subject_id": 0, "object_id": 1, "category_id": hold, "score": 0.9},
                      {"subject_id": 0, "object_id": 1, "category_id": wave, "score": 0.1},
                      {"subject_id": 2, "object_id": 3, "category_id": hold, "score": 0.8},
                      {"subject_id": 2, "object_id": 3, "category_id": wave, "score": 0.2}]},
                  {"file_name": "b.png", "predictions": [{"bbox": [20, 0, 30, 20], "category_id": 1},
                                                          {"bbox": [0, 28, 4, 32], "category_id": 5}],
                   "hoi_prediction": [{"subject_id": 0, "object_id": 1, "category_id": 3, "score": 0.9}]}]
    result = pair_verb_accuracy([twin, other], detections)
    assert result["twin"] == {"pairs": 2, "found": 1.0, "verb_right": 0.5}
    assert result["other"]["pairs"] == 1 and result["other"]["found"] == 0.0
    assert math.isnan(result["other"]["verb_right"])


def test_comparison_table_shows_row_names_or_keys():
    from evaluation.table_stats import comparison_table
    results = {"_meta": {"comparisons": {"a - b": {"difference": 0.1, "se": 0.02, "se_layouts": 0.02, "se_seeds": 0.0,
                                                   "z": 5.0}}}}
    assert "| Alpha − b | +10.00 | 2.00 (2.00, 0.00) | 5.0 |" in comparison_table(results, {"a": "Alpha"})
    assert "| a − b |" in comparison_table(results)
    assert comparison_table({"_meta": {}}) == ""
