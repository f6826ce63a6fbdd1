"""HICO-DET readers, preprocessing and the dataset: every input file is written here."""
import dataclasses
import json
import warnings

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image, ImageDraw

from dataset.hico import (DataError, DataWarning, load_category_file, read_detector_json, read_hico_mat,
                          read_torch_files)
from dataset.hico_names import OBJECT_NAMES, VERB_NAMES, phrase
from dataset.hoi_dataset import HOIDataset, build_dataset, flip_decision
from dataset.sample import HOIRecord, RawHOI
from hoi.records import collate_samples
from dataset.transforms import preprocess, transform_box
from hoi.captions import caption_from_triplets, ing_form

# ----------------------------------------------------------------------------- one scene, three formats

VERB = {name: i for i, name in VERB_NAMES.items()}
OBJ = {name: i for i, name in OBJECT_NAMES.items()}

# file name -> (width, height, caption, [(verb, object, person box, object box)]), xyxy pixels.
SCENE = {
    "img_a.jpg": (64, 48, "a person on a bike", [
        ("ride", "bicycle", (2, 4, 30, 44), (20, 20, 60, 46)),
        ("hold", "umbrella", (2, 4, 30, 44), (0, 0, 24, 12)),
    ]),
    "img_b.jpg": (40, 50, None, [("no_interaction", "dog", (5, 5, 25, 45), (20, 30, 40, 50))]),
    "img_c.jpg": (50, 50, None, [  # two people holding the same cup: one .mat hoi, two connections
        ("hold", "cup", (0, 0, 20, 40), (15, 10, 25, 20)),
        ("hold", "cup", (25, 5, 50, 50), (15, 10, 25, 20)),
    ]),
}


def expected_records(image_dir, with_caption=True):
    return [HOIRecord(name, image_dir / name, w, h,
                      [RawHOI("person", phrase(v), o, tuple(map(float, sb)), tuple(map(float, ob)))
                       for v, o, sb, ob in hois], caption if with_caption else None)
            for name, (w, h, caption, hois) in SCENE.items()]


def write_images(folder, scene=SCENE):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h, *_) in scene.items():
        Image.new("RGB", (w, h), (120, 30, 200)).save(folder / name)
    return folder


def detector_json_entries(scene=SCENE, sizes=True):
    entries = []
    for name, (w, h, caption, hois) in scene.items():
        annotations, pairs, index = [], [], {}

        def ann(box, category):
            if (box, category) not in index:
                index[(box, category)] = len(annotations)
                annotations.append({"bbox": list(box), "category_id": category})
            return index[(box, category)]
        for verb, obj, sb, ob in hois:
            pairs.append({"subject_id": ann(sb, OBJ["person"]), "object_id": ann(ob, OBJ[obj]),
                          "category_id": VERB[verb]})
        entry = {"file_name": name, "annotations": annotations, "hoi_annotation": pairs}
        if sizes:
            entry.update(width=w, height=h)
        if caption is not None:
            entry["caption"] = caption
        entries.append(entry)
    return entries


def struct_array(rows, fields, column=False):
    """A MATLAB struct array for scipy.io.savemat (1xN, or Nx1 like list_action)."""
    arr = np.zeros((len(rows), 1) if column else (1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr.flat[i][f] = row[f]
    return arr


def mat_boxes(boxes):
    return struct_array([{"x1": float(b[0]), "x2": float(b[2]), "y1": float(b[1]), "y2": float(b[3])}
                         for b in boxes], ["x1", "x2", "y1", "y2"])


HOI_FIELDS = ["id", "bboxhuman", "bboxobject", "connection", "invis"]


def write_mat(path, scene=SCENE, extra_hoi=None):
    """The official layout: bbox_train[i] = {filename, size{width,height,depth}, hoi[]}, each hoi
    one HOI category with its human/object boxes and 1-based (human, object) connections."""
    actions = []  # (object, verb), the 1-based rows of list_action
    images = []
    for name, (w, h, _, hois) in scene.items():
        grouped = {}
        for verb, obj, sb, ob in hois:
            grouped.setdefault((obj, verb), []).append((sb, ob))
        entries = []
        for (obj, verb), pairs in grouped.items():
            if (obj, verb) not in actions:
                actions.append((obj, verb))
            humans = list(dict.fromkeys(sb for sb, _ in pairs))
            objects = list(dict.fromkeys(ob for _, ob in pairs))
            connection = np.array([[humans.index(sb) + 1, objects.index(ob) + 1] for sb, ob in pairs], float)
            entries.append({"id": float(actions.index((obj, verb)) + 1), "bboxhuman": mat_boxes(humans),
                            "bboxobject": mat_boxes(objects), "connection": connection, "invis": 0.0})
        if extra_hoi and name in extra_hoi:
            entries.append(extra_hoi[name])
        images.append({"filename": name, "size": {"width": float(w), "height": float(h), "depth": 3.0},
                       "hoi": struct_array(entries, HOI_FIELDS)})
    list_action = struct_array([{"nname": o, "vname": v} for o, v in actions], ["nname", "vname"], column=True)
    scipy.io.savemat(path, {"bbox_train": struct_array(images, ["filename", "size", "hoi"]),
                            "list_action": list_action})
    return path


def write_torch_files(folder, scene=SCENE):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h, caption, hois) in scene.items():
        xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
        torch.save({"image": Image.new("RGB", (w, h), (1, 2, 3)), "caption": caption,
                    "hois": [{"subject_xywh": xywh(sb), "object_xywh": xywh(ob), "subject": "person",
                              "object": obj, "action": verb, "subject_embedding": torch.zeros(4)}
                             for verb, obj, sb, ob in hois]}, folder / f"{name}.pth")
    return folder


def plain(records, drop_caption=False):
    """Records without the image source, sorted by key, for comparing formats."""
    return sorted(((r.key, r.width, r.height, tuple(r.hois), None if drop_caption else r.caption)
                   for r in records))


def test_name_lists():
    assert len(OBJECT_NAMES) == 80 and len(VERB_NAMES) == 117
    assert VERB_NAMES[1] == "adjust" and VERB_NAMES[58] == "no_interaction" and VERB_NAMES[117] == "zip"
    assert OBJECT_NAMES[1] == "person" and OBJECT_NAMES[90] == "toothbrush" and 12 not in OBJECT_NAMES
    assert phrase("no_interaction") == "no interaction" and phrase("hair_drier") == "hair drier"


def test_three_formats_give_identical_records(tmp_path):
    images = write_images(tmp_path / "images")
    invisible = {"id": 1.0, "bboxhuman": np.zeros((0, 0)), "bboxobject": np.zeros((0, 0)),
                 "connection": np.zeros((0, 0)), "invis": 1.0}
    mat = write_mat(tmp_path / "anno_bbox.mat", extra_hoi={"img_b.jpg": invisible})
    (tmp_path / "trainval_hico.json").write_text(json.dumps(detector_json_entries()))
    (tmp_path / "nosize.json").write_text(json.dumps(detector_json_entries(sizes=False)))
    torch_dir = write_torch_files(tmp_path / "pth")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here may be skipped
        from_mat, mat_report = read_hico_mat(mat, images)
        from_json, json_report = read_detector_json(tmp_path / "trainval_hico.json", images)
        from_header, _ = read_detector_json(tmp_path / "nosize.json", images)
        from_torch, torch_report = read_torch_files(torch_dir)

    assert from_json == expected_records(images)
    assert from_header == from_json
    assert plain(from_mat) == plain(expected_records(images, with_caption=False))
    assert plain(from_torch) == plain(from_json)
    assert all(r.image_path is None and r.image.size == (r.width, r.height) for r in from_torch)
    assert (mat_report.total, mat_report.skipped, json_report.fraction, torch_report.counts) == (3, 0, 0.0, {})
    lazy, _ = read_torch_files(torch_dir, inline_images=False)
    assert plain(lazy) == plain(from_torch) and all(r.image is None and r.image_path.suffix == ".pth" for r in lazy)


def test_category_file_names_subjects(tmp_path):
    images = write_images(tmp_path / "images", {"t.jpg": (32, 32, None, [])})
    categories = {"objects": [{"id": 1, "name": "robot"}, {"id": 2, "name": "red_ball"}],
                  "verbs": [{"id": 1, "name": "kick"}, {"id": 2, "name": "look_at"}],
                  "hoi_categories": [{"id": 1, "verb_id": 1, "object_id": 2}]}
    (tmp_path / "categories.json").write_text(json.dumps(categories))
    objects, verbs = load_category_file(tmp_path / "categories.json")
    assert objects == {1: "robot", 2: "red_ball"} and verbs == {1: "kick", 2: "look_at"}
    entry = {"file_name": "t.jpg", "annotations": [{"bbox": [0, 0, 10, 10], "category_id": 1},
                                                   {"bbox": [5, 5, 20, 30], "category_id": 2}],
             "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 2}]}
    (tmp_path / "a.json").write_text(json.dumps([entry]))
    records, _ = read_detector_json(tmp_path / "a.json", images, objects, verbs)
    assert records[0].hois == [RawHOI("robot", "look at", "red ball", (0, 0, 10, 10), (5, 5, 20, 30))]


# ----------------------------------------------------------------------------- bad input

def test_bad_detector_json_samples_are_skipped_and_counted(tmp_path):
    scene = {f"ok{i}.jpg": (40, 40, None, [("hold", "cup", (0, 0, 20, 20), (10, 10, 30, 30))]) for i in range(3)}
    scene.update({name: (40, 40, None, [("hold", "cup", (0, 0, 20, 20), (10, 10, 30, 30))])
                  for name in ("nofield.jpg", "outside.jpg", "unknown.jpg", "empty.jpg")})
    images = write_images(tmp_path / "images", scene)
    entries = detector_json_entries(scene)
    entries.append({"file_name": "missing.jpg", "width": 40, "height": 40, "annotations": [], "hoi_annotation": []})
    by_name = {e["file_name"]: e for e in entries}
    del by_name["nofield.jpg"]["hoi_annotation"][0]["category_id"]
    by_name["outside.jpg"]["annotations"][1]["bbox"] = [10, 10, 41, 30]
    by_name["unknown.jpg"]["annotations"][1]["category_id"] = 12  # a gap in the COCO ids
    by_name["empty.jpg"]["hoi_annotation"] = []
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(entries))

    with pytest.warns(DataWarning) as caught:
        records, report = read_detector_json(path, images, max_skip_fraction=1.0)
    assert sorted(r.key for r in records) == ["ok0.jpg", "ok1.jpg", "ok2.jpg"]
    assert report.counts == {"missing field": 1, "bad box": 1, "unknown category": 1, "no interactions": 1,
                             "missing image": 1}
    assert (report.total, report.skipped) == (8, 5) and report.fraction == pytest.approx(5 / 8)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 5 and all("\n" not in m and m.startswith("bad.json: ") for m in messages)
    for key, where in [("nofield.jpg", "hoi_annotation[0].category_id"), ("outside.jpg", "annotations[1].bbox"),
                       ("unknown.jpg", "annotations[1].category_id"), ("missing.jpg", "file_name")]:
        assert any(key in m and where in m for m in messages), (key, where, messages)

    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"5 of 8 samples.*bad box: 1"):
        read_detector_json(path, images)


def test_bad_mat_and_torch_samples_are_skipped(tmp_path):
    scene = dict(SCENE)
    scene["img_d.jpg"] = (30, 30, None, [("hold", "cup", (0, 0, 20, 31), (5, 5, 10, 10))])  # leaves the image
    images = write_images(tmp_path / "images", scene)
    (images / "img_b.jpg").unlink()
    mat = write_mat(tmp_path / "anno_bbox.mat", scene)
    with pytest.warns(DataWarning) as caught:
        records, report = read_hico_mat(mat, images, max_skip_fraction=0.5)
    assert sorted(r.key for r in records) == ["img_a.jpg", "img_c.jpg"]
    assert report.counts == {"bad box": 1, "missing image": 1}
    assert any("img_d.jpg" in str(w.message) and "hoi[0].bboxhuman[0]" in str(w.message) for w in caught)

    folder = write_torch_files(tmp_path / "pth")
    data = torch.load(folder / "img_a.jpg.pth", weights_only=False)
    del data["hois"][1]["action"]
    torch.save(data, folder / "img_a.jpg.pth")
    with pytest.warns(DataWarning, match=r"img_a\.jpg\.pth: hois\[1\]\.action: missing"):
        records, report = read_torch_files(folder, max_skip_fraction=0.5)
    assert len(records) == 2 and report.counts == {"missing field": 1}
    with pytest.warns(DataWarning), pytest.raises(DataError, match="missing field: 1"):
        read_torch_files(folder)


# ----------------------------------------------------------------------------- preprocessing

def record_with(width, height, hois, caption=None):
    return HOIRecord("r.jpg", None, width, height,
                     [RawHOI("person", a, o, tuple(map(float, sb)), tuple(map(float, ob))) for a, o, sb, ob in hois],
                     caption)


def test_flip_hand_computed_and_involution():
    # 40x40 into 40: no resize or crop, only the flip x -> 40 - x.
    assert transform_box((4, 8, 14, 20), 40, 40, 40, flip=True) == (26, 8, 36, 20)
    box = (3.5, 1.0, 17.25, 30.0)
    flipped = transform_box(box, 40, 40, 40, flip=True)
    assert transform_box(flipped, 40, 40, 40, flip=True) == box


def drawn_box(tensor):
    """Pixel-edge box of the bright pixels (drawn white on black)."""
    ys, xs = torch.nonzero(tensor[0] > 0, as_tuple=True)
    return (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)


@pytest.mark.parametrize("width,height", [(90, 60), (60, 90), (75, 45)])
def test_crop_resize_and_flip_follow_the_drawn_pixels(width, height):
    # Box edges on multiples of 15 px land on whole pixels after scaling 30 px -> 32 etc.
    box = (30, 15, 60, 45)
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    record = record_with(width, height, [("hold", "cup", box, (0, 0, width, height))])
    size = 32 if height != 45 else 24
    plain_sample = preprocess(record, image, size=size, flip=False)
    flipped_sample = preprocess(record, image, size=size, flip=True)
    assert plain_sample.image.shape == (3, size, size)
    assert torch.equal(flipped_sample.image, plain_sample.image.flip(-1))
    for sample in (plain_sample, flipped_sample):
        expected = tuple(v * size for v in sample.interactions[0].subject_box)
        assert drawn_box(sample.image) == pytest.approx(expected, abs=1e-6)
    x0, y0, x1, y1 = plain_sample.interactions[0].subject_box
    assert flipped_sample.interactions[0].subject_box == pytest.approx((1 - x1, y0, 1 - x0, y1))


def test_crop_geometry_by_hand():
    # 100x50 -> 50: no scale, crop x offset 25; an odd leftover (101 wide) floors to 25 as well.
    assert transform_box((10, 10, 40, 30), 100, 50, 50, False) == (0, 10, 15, 30)  # clipped at the left
    assert transform_box((80, 0, 100, 50), 100, 50, 50, False) == (50, 0, 50, 50)  # entirely outside
    assert transform_box((30, 0, 40, 10), 101, 50, 50, False) == (5, 0, 15, 10)
    # 200x100 -> 50: scale 0.5, resized 100x50, offset 25.
    assert transform_box((60, 20, 120, 80), 200, 100, 50, False) == (5, 10, 35, 40)


def test_clipping_and_small_boxes_drop_their_interaction():
    image = Image.new("RGB", (100, 50))
    record = record_with(100, 50, [
        ("hold", "cup", (10, 10, 40, 30), (30, 0, 70, 50)),     # subject clipped to (0,10,15,30)
        ("ride", "horse", (30, 0, 70, 50), (0, 0, 20, 10)),     # object entirely outside the crop
        ("hold", "kite", (30, 0, 70, 50), (40, 40, 41, 42)),    # object 2 px < 0.001 * 2500
        ("kick", "ball", (30, 0, 70, 50), (40, 40, 43, 41)),    # object 3 px: kept
    ])
    sample = preprocess(record, image, size=50, min_area=0.001)
    assert [it.action for it in sample.interactions] == ["hold", "kick"]
    assert sample.interactions[0].subject_box == pytest.approx((0, 0.2, 0.3, 0.6))
    assert sample.caption == "a person holding a cup, a person kicking a ball"


def test_top_interactions_by_area_largest_first():
    image = Image.new("RGB", (100, 100))
    hois = [("hold", f"thing{i}", (0, 0, 10 + i, 10), (50, 50, 60, 60)) for i in range(35)]
    sample = preprocess(record_with(100, 100, hois[::-1]), image, size=100, max_interactions=30)
    assert [it.object for it in sample.interactions] == [f"thing{i}" for i in range(34, 4, -1)]


def test_image_modes_and_range():
    for mode, color in [("L", 255), ("RGBA", (0, 0, 0, 0)), ("CMYK", (0, 0, 0, 0)), ("P", 3)]:
        image = Image.new(mode, (20, 30), color)
        sample = preprocess(record_with(20, 30, [("hold", "cup", (0, 0, 10, 10), (5, 5, 20, 20))]), image, size=16)
        assert sample.image.shape == (3, 16, 16) and sample.image.dtype == torch.float32
        assert -1 <= sample.image.min() and sample.image.max() <= 1
    with pytest.raises(DataError, match="r.jpg: image is 20x20"):
        preprocess(record_with(20, 30, []), Image.new("RGB", (20, 20)), size=16)


def test_captions():
    assert [ing_form(v) for v in ("ride", "hold", "look_at", "sit_on", "run", "lie_on", "see", "open", "eat",
                                  "row", "board", "hop_on", "no_interaction", "swing", "dribble", "stir")] == [
        "riding", "holding", "looking at", "sitting on", "running", "lying on", "seeing", "opening", "eating",
        "rowing", "boarding", "hopping on", "with", "swinging", "dribbling", "stirring"]
    # a phrase already in its -ing form (the README's "feeding") is kept, not "feedinging"
    assert [ing_form(v) for v in ("feeding", "holding up", "riding", "bring", "sing")] == [
        "feeding", "holding up", "riding", "bringing", "singing"]
    p, d = (0, 0, 10, 10), (20, 20, 30, 30)
    hois = [RawHOI("person", "ride", "bicycle", p, d), RawHOI("person", "hold", "umbrella", p, d),
            RawHOI("dog", "chase", "ball", d, p), RawHOI("person", "no interaction", "elephant", d, p)]
    assert caption_from_triplets(hois[:2]) == "a person riding a bicycle and holding an umbrella"
    assert caption_from_triplets(hois) == ("a person riding a bicycle and holding an umbrella, "
                                           "a dog chasing a ball, a person with an elephant")
    record = record_with(40, 40, [("ride", "bicycle", p, d)], caption="given")
    assert preprocess(record, Image.new("RGB", (40, 40)), size=8).caption == "given"


# ----------------------------------------------------------------------------- dataset and config

def toy_config(tmp_path, **overrides):
    root = tmp_path / "data"
    write_images(root / "images" / "train")
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "trainval_hico.json").write_text(json.dumps(detector_json_entries()))
    cfg = {"format": "detector_json", "root": str(root),
           "train": {"annotations": "annotations/trainval_hico.json", "images": "images/train"},
           "image_size": 16, "random_flip": True, "min_box_area": 0.001, "max_skip_fraction": 0.01}
    cfg.update(overrides)
    return cfg


def test_build_dataset_and_collate(tmp_path):
    dataset = build_dataset(toy_config(tmp_path), "train", seed=3)
    assert len(dataset) == 3 and dataset.random_flip and dataset.reader_report.skipped == 0
    batch = collate_samples([dataset[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 16, 16) and batch["keys"] == list(SCENE)
    assert batch["captions"][0] == "a person on a bike"
    assert batch["captions"][2] == "a person holding a cup, a person holding a cup"  # two people, one cup
    assert [len(items) for items in batch["controls"]["interaction"]] == [2, 1, 2]


def test_build_dataset_from_mat_and_torch_files(tmp_path):
    root = tmp_path
    write_images(root / "images")
    write_mat(root / "anno_bbox.mat")
    write_torch_files(root / "pth")
    mat = build_dataset({"format": "hico_mat", "root": str(root), "image_size": 8,
                         "train": {"annotations": "anno_bbox.mat", "images": "images"}}, "train", 0)
    files = build_dataset({"format": "torch_files", "root": str(root), "image_size": 8,
                           "train": {"annotations": "pth"}}, "train", 0)
    assert [r.hois for r in mat.records] == [r.hois for r in sorted(files.records, key=lambda r: r.key)]
    assert files[0].image.shape == (3, 8, 8)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.batchsize: unknown option"):
        build_dataset(toy_config(tmp_path, batchsize=4), "train", 0)
    with pytest.raises(ValueError, match=r"data\.image_size = '16'"):
        build_dataset(toy_config(tmp_path / "b", image_size="16"), "train", 0)
    with pytest.raises(ValueError, match=r"data\.random_flip = 1"):
        build_dataset(toy_config(tmp_path / "c", random_flip=1), "train", 0)
    with pytest.raises(ValueError, match=r"data\.format = 'coco'"):
        build_dataset(toy_config(tmp_path / "d", format="coco"), "train", 0)
    cfg = toy_config(tmp_path / "e")
    with pytest.raises(ValueError, match=r"data\.test: missing"):
        build_dataset(cfg, "test", 0)
    with pytest.raises(ValueError, match=r"data\.train\.image: unknown key"):
        build_dataset(dict(cfg, train={"annotations": "x.json", "image": "y"}), "train", 0)
    with pytest.raises(FileNotFoundError, match=r"data\.train\.annotations: .*nope\.json"):
        build_dataset(dict(cfg, train={"annotations": "nope.json", "images": "images/train"}), "train", 0)
    with pytest.raises(FileNotFoundError, match=r"data\.train\.images: .*nowhere"):
        build_dataset(dict(cfg, train={"annotations": "annotations/trainval_hico.json", "images": "nowhere"}),
                      "train", 0)
    with pytest.raises(FileNotFoundError, match=r"data\.categories: .*cats\.json"):
        build_dataset(dict(cfg, categories="cats.json"), "train", 0)


@pytest.mark.parametrize("values, message", [
    ({"root": "."}, "data.format: missing; one of hico_mat, detector_json, torch_files"),
    ({"format": "detector_json", "categories": 3}, "data.categories = 3: expected a file path"),
    ({"format": "detector_json", "train": "annotations.json"},
     "data.train = 'annotations.json': expected {annotations: ..., images: ...}"),
    ({"format": "detector_json", "min_box_area": 1.5}, "data.min_box_area = 1.5: out of range (must be in [0, 1))"),
    ({"format": "detector_json", "max_interactions": 0}, "data.max_interactions = 0: out of range (must be in [1, 30])"),
    (["format"], "data: expected a mapping, got list"),
])
def test_data_options_name_the_key(values, message):
    from dataset.options import check_data_options
    with pytest.raises(ValueError) as err:
        check_data_options(values)
    assert str(err.value) == message


def test_builder_and_dataset_share_the_schema_defaults(tmp_path):
    """HOIDataset's keyword defaults are the `data:` section's (verify_images once disagreed)."""
    import inspect
    from dataset.options import DataOptions
    defaults = DataOptions(format="detector_json")
    params = inspect.signature(HOIDataset).parameters
    assert params["verify_images"].default is defaults.verify_images is True
    assert params["min_area"].default == defaults.min_box_area
    assert params["max_skip_fraction"].default == defaults.max_skip_fraction
    assert params["max_interactions"].default == defaults.max_interactions
    assert params["random_flip"].default == defaults.random_flip
    built = build_dataset(toy_config(tmp_path), "train", seed=0)
    assert built.size == 16 and built.min_area == defaults.min_box_area


def test_flip_is_deterministic_per_seed_epoch_index(tmp_path):
    flips = [flip_decision(0, 0, i) for i in range(400)]
    assert flips == [flip_decision(0, 0, i) for i in range(400)]
    assert 150 < sum(flips) < 250
    assert flips != [flip_decision(0, 1, i) for i in range(400)]
    assert flips != [flip_decision(1, 0, i) for i in range(400)]

    records = [record_with(20, 20, [("hold", "cup", (0, 0, 5, 20), (10, 0, 20, 20))])] * 8
    image = Image.new("RGB", (20, 20))
    ImageDraw.Draw(image).rectangle((0, 0, 4, 19), fill=(255, 255, 255))  # asymmetric, so a flip shows
    records = [dataclasses.replace(r, image=image) for r in records]
    a, b = HOIDataset(records, 8, seed=5), HOIDataset(records, 8, seed=5)  # b: a resumed run
    for epoch in (0, 3):
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert [a[i].interactions for i in range(8)] == [b[i].interactions for i in range(8)]
        assert [a.flips(i) for i in range(8)] == [flip_decision(5, epoch, i) for i in range(8)]
        assert all(torch.equal(a.get(i, epoch).image, b[i].image) for i in range(8))
    flipped = next(i for i in range(8) if flip_decision(5, 0, i) != flip_decision(5, 3, i))
    first, second = a.get(flipped, 0), a.get(flipped, 3)
    assert torch.equal(first.image, second.image.flip(-1)) and not torch.equal(first.image, second.image)
    assert first.interactions != second.interactions
    assert not any(HOIDataset(records, 8, random_flip=False).flips(i) for i in range(8))


def test_corrupt_image(tmp_path):
    images = write_images(tmp_path / "images")
    (images / "img_b.jpg").write_bytes(b"not an image")
    records = expected_records(images)
    with pytest.raises(DataError, match="img_b.jpg: cannot read image"):
        HOIDataset(records, 8, verify_images=False)[1]  # no up-front check: the read fails
    with pytest.warns(DataWarning, match="img_b.jpg: image: .*cannot be read"):
        dataset = HOIDataset(records, 8, verify_images=True, max_skip_fraction=0.5)
    assert [r.key for r in dataset.records] == ["img_a.jpg", "img_c.jpg"]
    with pytest.warns(DataWarning), pytest.raises(DataError, match="unreadable image: 1"):
        HOIDataset(records, 8, verify_images=True)
