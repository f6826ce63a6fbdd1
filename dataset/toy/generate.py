"""Write a toy HOI data set to disk: PNGs plus HICO-DET-style detector JSON.

Layout of `out`:
    images/train/train_000000.png ...   images/test/test_000000.png ...
    annotations/trainval_hico.json, annotations/test_hico.json, annotations/categories.json
    README.txt
The JSON files are written after every image, each through a temporary file and a rename,
and categories.json last of all: a generation that was killed has no categories.json
(`is_complete` checks this).
"""
from __future__ import annotations

import json
import os
import shutil
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from hoi.io import atomic_write

from .categories import HOI_CATEGORIES, OBJECT_BY_ID, RARE_SPAN, VERB_BY_ID, categories_dict
from .world import DEFAULT_SIZE, plan_image, render_image

ANNOTATION_FILES = {"train": "trainval_hico.json", "test": "test_hico.json"}
CHUNK = 64   # images per worker task


def is_complete(out: str | Path) -> bool:
    """True when `out` holds a finished generation (categories.json is written last)."""
    return (Path(out) / "annotations" / "categories.json").is_file()


def world_mismatch(out: str | Path, size: int = DEFAULT_SIZE) -> str | None:
    """Why the finished data set in `out` is not this world drawn at `size` (None when it is):
    a folder left by an older world must not be trained on silently."""
    meta = json.loads((Path(out) / "annotations" / "categories.json").read_text())
    if meta.get("size") != size:
        return f"{out} holds {meta.get('size')}-px toy images, this world draws {size} px"
    if any(meta.get(k) != v for k, v in categories_dict().items()):
        return f"{out} holds another toy world's vocabulary ({len(meta.get('hoi_categories', []))} HOI categories)"
    return None


def is_current(out: str | Path, size: int = DEFAULT_SIZE) -> bool:
    """True when `out` holds a finished generation of this world at `size`."""
    return is_complete(out) and world_mismatch(out, size) is None


def count_hois(seed: int, split: str, n: int) -> dict[int, int]:
    """Instances per HOI category id in the first n images of a split, from the plans alone."""
    counts = {h.id: 0 for h in HOI_CATEGORIES}
    for i in range(n):
        for h in plan_image(seed, split, i).hois:
            counts[h] += 1
    return counts


def _render_chunk(job):
    """Render and save images [start, stop) of one split; return their JSON entries."""
    seed, split, start, stop, size, folder = job
    entries = []
    for i in range(start, stop):
        name = f"{split}_{i:06d}.png"
        img, ann, _ = render_image(seed, split, i, size)
        img.save(os.path.join(folder, name), format="PNG")
        entries.append({"file_name": name, "width": size, "height": size,
                        "annotations": ann["annotations"], "hoi_annotation": ann["hoi_annotation"]})
    return entries


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj) + "\n"))


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace the toy data in it")
        # Remove only what a generation writes, never unrelated files a user keeps there.
        for sub in ("images/train", "images/test", "annotations"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "README.txt").unlink(missing_ok=True)


def command_line(train: int, test: int, size: int, seed: int) -> str:
    return f"python -m dataset.toy generate --out DIR --train {train} --test {test} --size {size} --seed {seed}"


def generate(out: str | Path, train: int = 20000, test: int = 1000, size: int = DEFAULT_SIZE, seed: int = 0,
             workers: int = 1, overwrite: bool = False, progress: bool = True) -> Path:
    """Generate the toy HOI data set into `out` (see the module docstring). The result depends
    only on (train, test, size, seed), not on `workers`. Returns `out` as a Path."""
    out = Path(out)
    if train < 0 or test < 0:
        raise ValueError("--train and --test must be >= 0")
    if size < 32:
        raise ValueError(f"--size must be at least 32, got {size}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    _prepare(out, overwrite)
    (out / "annotations").mkdir(parents=True, exist_ok=True)

    jobs = []
    for split, n in (("train", train), ("test", test)):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(seed, split, a, min(a + CHUNK, n), size, str(folder)) for a in range(0, n, CHUNK)]

    entries = {"train": [], "test": []}
    bar = tqdm(total=train + test, unit="img", disable=not progress, desc="toy world")
    pool = Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap(_render_chunk, jobs) if pool else map(_render_chunk, jobs)
        for job, chunk in zip(jobs, results):   # imap keeps job order: output is worker-independent
            entries[job[1]] += chunk
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()

    counts = {}
    for split in ("train", "test"):
        _write_json(out / "annotations" / ANNOTATION_FILES[split], entries[split])
        c = {h.id: 0 for h in HOI_CATEGORIES}
        for e in entries[split]:
            for h in e["hoi_annotation"]:
                c[h["hoi_category_id"]] += 1
        counts[split] = {str(k): v for k, v in c.items()}

    n_rare = sum(h.rare for h in HOI_CATEGORIES)
    (out / "README.txt").write_text(
        f"Toy HOI world: {train} train and {test} test RGB images of {size}x{size} pixels, seed {seed}, "
        f"written by `{command_line(train, test, size, seed)}` (InteractDiffusion, dataset/toy). Each "
        "image shows 1-3 interactions (a person or robot posed for a verb with its ball, box or kite; "
        "the verbs come in pairs that share the box geometry) on a pastel background. annotations/trainval_hico.json and test_hico.json "
        "follow the HICO-DET detector JSON (file_name, annotations with xyxy pixel boxes whose right "
        "and bottom edges are exclusive, hoi_annotation with subject_id, object_id, verb category_id, "
        "hoi_category_id); annotations/categories.json lists the objects, verbs and "
        f"{len(HOI_CATEGORIES)} HOI categories with per-split instance counts. {n_rare} categories are "
        f"rare: each has a fixed quota of 1-9 instances within the first {RARE_SPAN} train images and "
        "none elsewhere in train, while the test split samples every category alike. Image i of a "
        "split depends only on (seed, split, i), so a smaller split is a prefix of a larger one. "
        "categories.json is written last; without it the generation did not finish.\n")
    meta = categories_dict()
    meta.update({"seed": seed, "size": size, "num_images": {"train": train, "test": test},
                 "counts": counts})
    _write_json(out / "annotations" / "categories.json", meta)
    return out


def scene_triplets(ann: dict) -> list:
    """A rendered scene's interactions with normalised boxes (4 decimals), as RawHOIs."""
    from dataset.sample import RawHOI
    w, h = ann["width"], ann["height"]
    boxes = [[round(b["bbox"][0] / w, 4), round(b["bbox"][1] / h, 4), round(b["bbox"][2] / w, 4),
              round(b["bbox"][3] / h, 4)] for b in ann["annotations"]]
    names = [OBJECT_BY_ID[b["category_id"]].name for b in ann["annotations"]]
    return [RawHOI(names[x["subject_id"]], VERB_BY_ID[x["category_id"]].name, names[x["object_id"]],
                   tuple(boxes[x["subject_id"]]), tuple(boxes[x["object_id"]])) for x in ann["hoi_annotation"]]


def interaction_fields(triplets: list) -> dict:
    """The interaction control's record keys (interact/controls/interactions.py)."""
    return {"subject_phrases": [t.subject for t in triplets], "action_phrases": [t.action for t in triplets],
            "object_phrases": [t.object for t in triplets], "subject_boxes": [list(t.subject_box) for t in triplets],
            "object_boxes": [list(t.object_box) for t in triplets]}


# Each control trained or measured on the toy world writes its record keys from a scene here
# (the data set knows no model code, so the fields are written here, in the controls' key names).
LAYOUT_FIELDS = {"interaction": interaction_fields}


def layout_record(ann: dict, source: str, control: str = "interaction") -> dict:
    """A rendered scene's annotations as a layout record of inference_batch.py for `control`
    (normalised boxes, the caption the training data would give it)."""
    from hoi.captions import caption_from_triplets
    triplets = scene_triplets(ann)
    return {"prompt": caption_from_triplets(triplets), **LAYOUT_FIELDS[control](triplets), "source": source}


def write_layouts(out: str | Path, n: int = 24, first: int = 0, seed: int = 0, control: str = "interaction") -> Path:
    """The layouts of test scenes first .. first+n-1 of the world drawn with `seed` (rendered here,
    no data set needed; seed 0 gives the data set's own test scenes, any other seed fresh ones) as
    one JSON list of `control`'s records, written atomically."""
    if n < 1 or first < 0 or seed < 0:
        raise ValueError(f"--n {n}, --first {first}, --seed {seed}: need n >= 1, first >= 0, seed >= 0")
    if control not in LAYOUT_FIELDS:
        raise ValueError(f"--control {control}: the toy world writes layouts for {', '.join(LAYOUT_FIELDS)}")
    records = [layout_record(render_image(seed, "test", i)[1], f"toy test image test_{i:06d}.png (seed {seed})",
                             control) for i in range(first, first + n)]
    text = "[\n" + ",\n".join("  " + json.dumps(r) for r in records) + "\n]\n"
    out = Path(out)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return out
