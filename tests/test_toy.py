"""The toy HOI world (dataset.toy): determinism, boxes against pixels, vocabulary, verb
geometry, the rare-category rule and the CLI. Only a handful of images are generated."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import toy
from dataset.toy import (HOI_CATEGORIES, OBJECT_BY_ID, RARE_SPAN, VERB_BY_NAME, count_hois, find_hoi, generate,
                         group_partners, plan_image, render_image, render_scene)
from dataset.toy.__main__ import main as toy_main
from dataset.toy.world import GROUP_HEIGHT, OBJECT_SHAPES, POSE_LIMB, limb_width, make_object, pose_points

REPO_ROOT = Path(__file__).resolve().parents[1]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load(out: Path, split: str = "train") -> list[dict]:
    return json.loads((out / "annotations" / toy.ANNOTATION_FILES[split]).read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """12 train + 4 test images, seed 0."""
    return generate(tmp_path_factory.mktemp("toy") / "out", train=12, test=4, progress=False)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_and_splits_are_prefixes(small, tmp_path):
    a = generate(tmp_path / "a", train=12, test=4, progress=False)
    assert files(a) == files(small)
    assert toy.is_complete(a) and not list(a.rglob("*.tmp"))

    short = generate(tmp_path / "short", train=5, test=2, progress=False)
    for i in range(5):
        name = f"images/train/train_{i:06d}.png"
        assert (short / name).read_bytes() == (small / name).read_bytes()
    assert load(short) == load(small)[:5]
    assert load(short, "test") == load(small, "test")[:2]

    other = generate(tmp_path / "other", train=5, test=2, seed=1, progress=False)
    assert load(other) != load(short)
    first = "images/train/train_000000.png"
    assert (other / first).read_bytes() != (short / first).read_bytes()


def test_output_does_not_depend_on_workers(small, tmp_path):
    # 70 images make two chunks, so two workers really split the work.
    par = generate(tmp_path / "par", train=70, test=0, workers=2, progress=False)
    entries = load(par)
    assert entries[:12] == load(small)
    for i in (12, 64, 69):   # the second chunk came from another process: compare in-process
        img, ann, _ = render_image(0, "train", i)
        assert entries[i]["annotations"] == ann["annotations"]
        assert np.array_equal(np.asarray(Image.open(par / f"images/train/train_{i:06d}.png")), np.asarray(img))


# --- boxes against pixels ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_boxes_are_tight_around_the_drawn_masks(size):
    for i in range(25):
        img, ann, masks = render_image(3, "train", i, size)
        pix = np.asarray(img)
        assert img.size == (size, size) and img.mode == "RGB"
        assert len(masks) == len(ann["annotations"])
        for a, m in zip(ann["annotations"], masks):
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            ys, xs = np.nonzero(m)
            # inside the box, and touching all four edges (x1/y1 are exclusive edges)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            # where the mask is set, something was drawn
            assert (pix[m] != ann["background"]).any(axis=-1).all()


def test_png_colours_lie_inside_their_category_boxes(small):
    """From the PNG and JSON alone: each category's key colour appears only inside the boxes of
    that category (overlaps may hide colour, never move it), and every instance shows some."""
    for split in ("train", "test"):
        for e in load(small, split):
            pix = np.asarray(Image.open(small / "images" / split / e["file_name"]).convert("RGB"))
            assert pix.shape == (e["height"], e["width"], 3)
            for cat in {a["category_id"] for a in e["annotations"]}:
                inside = np.zeros(pix.shape[:2], bool)
                for a in e["annotations"]:
                    if a["category_id"] == cat:
                        x0, y0, x1, y1 = a["bbox"]
                        inside[y0:y1, x0:x1] = True
                coloured = (pix == OBJECT_BY_ID[cat].colour).all(axis=-1)
                assert coloured.any() and not (coloured & ~inside).any()
            for a in e["annotations"]:
                x0, y0, x1, y1 = a["bbox"]
                assert (pix[y0:y1, x0:x1] == OBJECT_BY_ID[a["category_id"]].colour).all(axis=-1).any()


# --- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_is_consistent():
    assert [o.kind for o in toy.OBJECTS].count("subject") == 2 and [o.kind for o in toy.OBJECTS].count("object") == 3
    for seq in (toy.OBJECTS, toy.VERBS, HOI_CATEGORIES):
        assert [x.id for x in seq] == list(range(1, len(seq) + 1))
    assert len({o.colour for o in toy.OBJECTS}) == len(toy.OBJECTS)
    assert all(min(o.colour) < 185 for o in toy.OBJECTS)   # never a pastel background
    # every group holds at least two verbs, and every (subject, verb, object) is a category, so
    # neither the categories nor the geometry of a pair tell the verbs of a group apart
    groups = {}
    for v in toy.VERBS:
        groups.setdefault(v.group, []).append(v.name)
    assert len(groups) >= 2 and all(len(g) >= 2 for g in groups.values())
    subjects = [o for o in toy.OBJECTS if o.kind == "subject"]
    objects = [o for o in toy.OBJECTS if o.kind == "object"]
    assert len(HOI_CATEGORIES) == len(subjects) * len(toy.VERBS) * len(objects)
    assert len({(h.subject_id, h.verb_id, h.object_id) for h in HOI_CATEGORIES}) == len(HOI_CATEGORIES)
    assert find_hoi("robot", "point at", "kite").verb_id == VERB_BY_NAME["point at"].id
    for h in HOI_CATEGORIES:
        partners = group_partners(h)
        assert len(partners) == len(groups[toy.VERB_BY_ID[h.verb_id].group]) - 1
        assert all((p.subject_id, p.object_id) == (h.subject_id, h.object_id) and p.verb_id != h.verb_id
                   for p in partners)


def test_drawing_tables_cover_the_vocabulary_and_refuse_unknown_names():
    """Every verb has a pose, every geometry group a height, every object a shape; a name the
    tables lack is refused by name rather than drawn as something else."""
    assert set(POSE_LIMB) == {v.name for v in toy.VERBS}
    assert set(GROUP_HEIGHT) == {v.group for v in toy.VERBS}
    assert set(OBJECT_SHAPES) == {o.name for o in toy.OBJECTS if o.kind == "object"}
    with pytest.raises(KeyError, match="'juggle'"):
        pose_points("juggle", 20.0, 1)
    with pytest.raises(KeyError, match="'hat'"):
        make_object("hat", 20.0)


def test_hoi_annotations_refer_to_listed_categories(small):
    cats = json.loads((small / "annotations/categories.json").read_text())
    kinds = {o["id"]: o["kind"] for o in cats["objects"]}
    listed = {h["id"]: (h["subject_id"], h["verb_id"], h["object_id"]) for h in cats["hoi_categories"]}
    assert cats["seed"] == 0 and cats["size"] == toy.world.DEFAULT_SIZE
    assert {v["name"]: v["group"] for v in cats["verbs"]} == {v.name: v.group for v in toy.VERBS}
    for split in ("train", "test"):
        entries = load(small, split)
        assert [e["file_name"] for e in entries] == [f"{split}_{i:06d}.png" for i in range(len(entries))]
        counts = {str(h.id): 0 for h in HOI_CATEGORIES}
        for e in entries:
            assert 1 <= len(e["hoi_annotation"]) <= 3
            assert len(e["annotations"]) == 2 * len(e["hoi_annotation"])   # a subject and an object each
            n = len(e["annotations"])
            subjects = [h["subject_id"] for h in e["hoi_annotation"]]
            assert len(set(subjects)) == len(subjects)     # one interaction per subject
            for h in e["hoi_annotation"]:
                assert 0 <= h["subject_id"] < n and 0 <= h["object_id"] < n
                s = e["annotations"][h["subject_id"]]["category_id"]
                o = e["annotations"][h["object_id"]]["category_id"]
                assert kinds[s] == "subject" and kinds[o] == "object"
                assert listed[h["hoi_category_id"]] == (s, h["category_id"], o)
                counts[str(h["hoi_category_id"])] += 1
        assert cats["counts"][split] == counts


# --- geometry groups and poses ----------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128])
def test_verbs_of_a_group_share_box_geometry_and_differ_only_in_pose(size):
    """The same scene drawn with a category and with its group partner (the other verb): every
    box is the same to the pixel, the objects are drawn identically, and the subjects' pixels
    differ: only the pose carries the verb."""
    for h in HOI_CATEGORIES:
        for partner in group_partners(h):
            for seed in range(3):
                for others in ([], [find_hoi("person", "hold", "ball").id]):
                    img_a, a, masks_a = render_scene(seed, size, [h.id, *others])
                    img_b, b, masks_b = render_scene(seed, size, [partner.id, *others])
                    assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]
                    assert np.array_equal(masks_a[1], masks_b[1])                 # the object
                    differ = (masks_a[0] ^ masks_b[0]).sum()                      # the subject
                    assert differ >= 0.1 * masks_a[0].sum(), (h, partner, seed, size)
                    assert a["hoi_annotation"][0]["category_id"] != b["hoi_annotation"][0]["category_id"]


def near(p, box, tol=1.5) -> bool:
    x0, y0, x1, y1 = box
    return x0 - tol <= p[0] <= x1 + tol and y0 - tol <= p[1] <= y1 + tol


def check_pose(verb: str, sb, ob, sp: dict) -> None:
    """What each verb's pose looks like, from the boxes and the subject's keypoints."""
    sh = sb[3] - sb[1]
    down = sb[3] - limb_width(sh) - 0.5    # a standing foot's end point is half a limb width above the ground
    facing = 1 if (ob[0] + ob[2]) > (sb[0] + sb[2]) else -1
    hand, foot, shoulder = sp["hand"], sp["foot"], sp["shoulder"]
    assert (hand[0] - shoulder[0]) * facing > 0                      # the front hand is on the object's side
    if verb in ("hold", "wave at"):                                  # group "hand": object at shoulder height
        assert ob[1] - 1 <= shoulder[1] <= ob[3] + 1
        assert foot[1] > down                                        # both feet down
    else:                                                            # group "ground": object on the ground
        assert abs(ob[3] - sb[3]) <= 1
    if verb == "hold":
        assert near(hand, ob, tol=0.1 * sh) and abs(hand[1] - shoulder[1]) < 0.05 * sh   # arm straight out
    elif verb == "wave at":
        assert hand[1] < (ob[1] + ob[3]) / 2 and hand[1] < shoulder[1] - 0.1 * sh      # raised above it
    elif verb == "kick":
        assert near(foot, ob, tol=0.1 * sh) and foot[1] < sb[3] - 0.15 * sh                # foot raised to it
        assert hand[1] > shoulder[1] + 0.2 * sh                                            # arms down
    elif verb == "point at":
        assert hand[1] < (ob[1] + ob[3]) / 2 and hand[1] > shoulder[1] + 0.2 * sh      # down toward it
        assert foot[1] > down                                                              # both feet down
    else:
        raise AssertionError(f"no pose check for {verb!r}")


@pytest.mark.parametrize("verb", [v.name for v in toy.VERBS])
def test_pose_of_each_verb(verb):
    hois = [h for h in HOI_CATEGORIES if h.verb_id == VERB_BY_NAME[verb].id]
    assert hois
    for h in hois:
        for size in (32, 64):
            for seed in range(4):
                # alone, and beside two other interactions (smaller figures)
                for forced in ([h.id], [h.id, 1, 17]):
                    _, ann, _ = render_scene(seed, size, forced)
                    hoi = ann["hoi_annotation"][0]
                    assert hoi["hoi_category_id"] == h.id
                    s, o = hoi["subject_id"], hoi["object_id"]
                    check_pose(verb, ann["annotations"][s]["bbox"], ann["annotations"][o]["bbox"], ann["points"][s])


def test_many_images_hold_same_group_twins():
    """Images where two subjects of one category act on the same kind of object with the two
    verbs of a group: their caption names both verbs and cannot say which subject does which."""
    n, twins, multi = 2000, 0, 0
    for i in range(n):
        hois = [toy.HOI_BY_ID[h] for h in plan_image(0, "test", i).hois]
        multi += len(hois) >= 2
        twins += any(b in group_partners(a) for a in hois for b in hois)
    assert multi / n > 0.7 and twins / n > 0.3


def test_render_scene_rejects_bad_requests():
    with pytest.raises(ValueError):
        render_scene(0, 64, [1, 2, 3, 4])
    with pytest.raises(ValueError):
        render_scene(0, 64, [999])
    img, ann, _ = render_scene(np.random.default_rng(5), 64)   # a random plan
    assert img.size == (64, 64) and ann["hoi_annotation"]


# --- the rare rule ----------------------------------------------------------------------------


def test_rare_categories_have_fixed_small_quotas():
    train = count_hois(0, "train", RARE_SPAN)
    for h in HOI_CATEGORIES:
        if h.rare:
            assert 1 <= train[h.id] <= 9 and train[h.id] == h.quota
        else:
            assert train[h.id] >= 50
    assert 5 <= len(toy.RARE_IDS) <= 10
    # the schedule is fixed by index, so a shorter split holds the rare instances of its prefix
    head = count_hois(0, "train", 3000)
    expected = {h: sum(1 for i, ids in toy.rare_schedule().items() if i < 3000 for x in ids if x == h)
                for h in toy.RARE_IDS}
    assert {h: head[h] for h in toy.RARE_IDS} == expected
    test = count_hois(0, "test", 1000)
    assert min(test.values()) >= 5   # every category, rare included, is in the test split


# --- CLI --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_refuses_a_non_empty_out_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "dataset.toy", "generate", "--out", str(out), "--train", "2",
                        "--test", "1", "--quiet"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    assert toy_main(["generate", "--out", str(out), "--train", "2", "--test", "1", "--quiet", "--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine"            # unrelated files survive
    assert toy.is_complete(out) and len(load(out)) == 2
    assert "--train 2 --test 1" in (out / "README.txt").read_text()
    # a second overwrite with fewer images leaves no stale ones behind
    assert toy_main(["generate", "--out", str(out), "--train", "1", "--test", "1", "--quiet", "--overwrite"]) == 0
    assert [p.name for p in (out / "images/train").iterdir()] == ["train_000000.png"]


def test_cli_layouts_rebuild_the_demo_input_and_bad_paths_get_one_line(tmp_path, capsys):
    """examples/toy_layouts.json is what `python -m dataset.toy layouts` writes, byte for byte."""
    out = tmp_path / "layouts.json"
    assert toy_main(["layouts", "--out", str(out), "--n", "24"]) == 0
    assert out.read_bytes() == (REPO_ROOT / "examples" / "toy_layouts.json").read_bytes()
    capsys.readouterr()
    assert toy_main(["layouts", "--out", str(tmp_path), "--n", "2"]) == 2       # a folder, not a file
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")


def test_fresh_layouts_for_a_control_are_batch_records_the_score_reads(tmp_path):
    """`layouts --control interaction --seed S`: fresh scenes (another seed than the data set's),
    written as records every control parses and the toy score turns into ground truth."""
    from evaluation.toy_score import layouts_to_ground_truth
    from interact.batch import parse_records, read_layouts
    out = tmp_path / "fresh.json"
    assert toy_main(["layouts", "--control", "interaction", "--n", "5", "--seed", "7", "--out", str(out)]) == 0
    records = read_layouts(out)
    parsed = parse_records(records, str(out))
    assert len(parsed) == 5 and all(set(p.layout) == {"interaction"} and p.layout["interaction"] for p in parsed)
    demo = json.loads((REPO_ROOT / "examples" / "toy_layouts.json").read_text())[:5]
    assert [r["prompt"] for r in records] != [r["prompt"] for r in demo]   # not the data set's test scenes
    gt = layouts_to_ground_truth(records, [f"{i}.png" for i in range(5)], [(32, 32)] * 5)
    assert [len(g["hoi_annotation"]) for g in gt] == [len(p.layout["interaction"]) for p in parsed]


def test_a_folder_of_another_world_is_not_current(small, tmp_path):
    assert toy.is_current(small, size=32) and toy.world_mismatch(small, size=32) is None
    assert "32-px" in toy.world_mismatch(small, size=64)
    old = tmp_path / "old"
    shutil.copytree(small, old)
    meta_path = old / "annotations" / "categories.json"
    meta = json.loads(meta_path.read_text())
    meta["hoi_categories"] = meta["hoi_categories"][:-1]
    meta_path.write_text(json.dumps(meta))
    assert not toy.is_current(old, size=32) and "vocabulary" in toy.world_mismatch(old, size=32)


def test_cli_size_64_scales_images_and_boxes(small, tmp_path):
    out = tmp_path / "big"
    assert toy_main(["generate", "--out", str(out), "--train", "12", "--test", "0", "--size", "64",
                     "--quiet", "--workers", "1"]) == 0
    big = load(out)
    assert json.loads((out / "annotations/categories.json").read_text())["size"] == 64
    heights = {32: [], 64: []}
    for e32, e64 in zip(load(small), big):
        assert Image.open(out / "images/train" / e64["file_name"]).size == (64, 64)
        assert e64["width"] == e64["height"] == 64
        # same plan at both sizes; the drawing scales with the image
        assert [h["hoi_category_id"] for h in e64["hoi_annotation"]] == \
               [h["hoi_category_id"] for h in e32["hoi_annotation"]]
        for size, e in ((32, e32), (64, e64)):
            for h in e["hoi_annotation"]:
                b = e["annotations"][h["subject_id"]]["bbox"]
                assert 0 <= b[0] < b[2] <= size and 0 <= b[1] < b[3] <= size
                heights[size].append(b[3] - b[1])
    ratio = np.mean(heights[64]) / np.mean(heights[32])
    assert 1.6 < ratio < 2.4


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError):
        generate(tmp_path / "x", train=1, test=0, size=16, progress=False)
    assert toy_main(["generate", "--out", str(tmp_path / "y"), "--seed", "-1", "--quiet"]) == 2
