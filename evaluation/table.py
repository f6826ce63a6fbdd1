"""The paper's table (docs/reference.md §5) in miniature: FID, KID and HOI detection mAP per model row.

Toy world (`python scripts/reproduce_table.py --world toy [--rows KEY,...]`), every step kept on
disk and reused, so a killed run picks up where it stopped and the table can be built one row
per command:
1. the toy world's data (`python -m dataset.toy generate`);
2. per row and training seed, a model trained from scratch with the row's config, the same
   budget for every row (configs/toy_*.yaml; runs/toy_<key>[_seed<k>]);
3. images for the first `n` toy test layouts (caption + boxes; the text-only row gets the
   captions alone), the same sampling seeds for every row;
4. HOI mAP of the toy detector on them against the layouts (the real images' own mAP is the
   ceiling row), with a bootstrap interval over the layouts; FID/KID (toy feature net) against
   the real test images; the layout gain (evaluation/layout_gain.py) on `gain_n` test samples;
5. the table: per row the mean over its seeds, and the comparisons the paper's claim rests on
   (InteractDiffusion against box only and text only), each difference with its standard error
   from the layouts (paired bootstrap) and the seeds together.

Real runs (`--world hico`): the same table from generated image folders and the detection files
of a HOI detector (FGAHOI) run on them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.hico_map import (HOICategories, box_iou, evaluate_hoi_map, read_detections, read_fgahoi,
                                 read_ground_truth)

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = (("default", "full"), ("default", "rare"), ("default", "non_rare"),
                  ("known_object", "full"), ("known_object", "rare"), ("known_object", "non_rare"))


@dataclass(frozen=True)
class ToyRow:
    key: str        # the row's name on the command line; its runs are runs/toy_<key>[_seed<k>]
    name: str
    config: str
    grounded: bool  # whether the row is given the layout's boxes
    seeds: int = 1  # training runs with train.seed 0 .. seeds-1

    def run_name(self, seed: int) -> str:
        return f"toy_{self.key}" + ("" if seed == 0 else f"_seed{seed}")


TOY_ROWS = (
    ToyRow("text_only", "text only", "configs/toy_text_only.yaml", False),
    ToyRow("boxes", "box only (GLIGEN-style tokens)", "configs/toy_boxes_only.yaml", True, seeds=2),
    ToyRow("interact", "InteractDiffusion", "configs/toy_hoi.yaml", True, seeds=2),
    ToyRow("typed", "InteractDiffusion + typed roles", "configs/toy_typed.yaml", True),
    ToyRow("cross_attention", "InteractDiffusion + cross-attention fuser", "configs/toy_cross_attention.yaml", True,
           seeds=2),
    ToyRow("typed_cross_attention", "InteractDiffusion + typed roles + cross-attention fuser",
           "configs/toy_typed_cross_attention.yaml", True),
    ToyRow("boxes_plain", "box only, plain fuser (the paper's)", "configs/toy_boxes_only_plain.yaml", True),
    ToyRow("interact_plain", "InteractDiffusion, plain fuser (the paper's)", "configs/toy_hoi_plain.yaml", True),
)
ROW_BY_KEY = {r.key: r for r in TOY_ROWS}
BASELINE_ROW = "InteractDiffusion"  # the variants are compared with it
CEILING_ROW = "real images (detector ceiling)"
# (row, compared with): the differences the paper's claim rests on
COMPARISONS = (("interact", "boxes"), ("interact", "text_only"), ("interact_plain", "boxes_plain"),
               ("interact", "interact_plain"))


def select_rows(keys: str | None) -> list[ToyRow]:
    """`keys`: comma-separated row keys, or None for every row."""
    if not keys:
        return list(TOY_ROWS)
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in ROW_BY_KEY]
    if unknown:
        raise ValueError(f"--rows {keys}: unknown row(s) {unknown}; rows: {', '.join(ROW_BY_KEY)}")
    return [ROW_BY_KEY[k] for k in wanted]


# ----------------------------------------------------------------------------- toy world steps

def ensure_toy_data(root: Path, log=print) -> None:
    from dataset.toy.generate import generate, is_complete, world_mismatch
    if is_complete(root):
        reason = world_mismatch(root)
        if reason:
            raise ValueError(f"{reason}; regenerate it: python -m dataset.toy generate --out {root} --overwrite")
        return
    log(f"[table] generating the toy world in {root} (20000 train + 1000 test images)")
    generate(root, overwrite=True)


def train_row(row: ToyRow, runs: Path, data_root: Path, seed: int = 0, device: str | None = None,
              log=print) -> Path:
    """runs/<row.run_name(seed)>/model_final.pth, trained (or resumed) when missing."""
    final = runs / row.run_name(seed) / "model_final.pth"
    if final.is_file():
        log(f"[table] {row.name} (seed {seed}): reusing {final}")
        return final
    from dataset.hoi_dataset import build_training_inputs
    from interact.trainer import Trainer, load_training_config
    config = load_training_config(REPO_ROOT / row.config)
    config.data.root = str(data_root)
    config.train["seed"] = seed
    log(f"[table] {row.name} (seed {seed}): training {row.config} into {runs / row.run_name(seed)}")
    dataset, role_types = build_training_inputs(config, progress=True)
    Trainer(config, runs / row.run_name(seed), dataset, role_types=role_types, device=device or "auto").run()
    return final


def toy_test_layouts(config_path, data_root: Path, n: int):
    """The first `n` test samples of the toy world: (file name, caption, interactions, image)."""
    from interact.trainer import load_training_config
    from dataset.hoi_dataset import build_dataset
    config = load_training_config(config_path)
    config.data.root = str(data_root)
    config.data.in_memory = False
    dataset = build_dataset(config.data, "test", seed=0)
    if n > len(dataset):
        raise ValueError(f"n = {n}: the toy test split has only {len(dataset)} images")
    return [dataset.get(i, 0) for i in range(n)]


def generate_row(row: ToyRow, ckpt: Path, samples, out: Path, batch_size: int = 25, seed: int = 0,
                 device: str | None = None, log=print) -> tuple[Path, float]:
    """One image per test layout, named as the real test image; existing images are kept while
    they come from the same checkpoint (its digest is kept in <out>/../images_from.txt).
    Returns the folder and the seconds per image of what was generated now (NaN if nothing)."""
    import shutil
    from hoi.io import atomic_write, file_digest
    from interact.pipeline import InteractDiffusionPipeline
    marker, digest = out.parent / "images_from.txt", file_digest(ckpt)
    if out.is_dir() and (not marker.is_file() or marker.read_text().strip() != digest):
        log(f"[table] {row.name}: {out} was generated from another checkpoint; generating it anew")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, lambda tmp: Path(tmp).write_text(digest + "\n"))
    todo = [i for i, s in enumerate(samples) if not (out / Path(s.key).name).is_file()]
    if not todo:
        return out, float("nan")
    pipe = InteractDiffusionPipeline.from_checkpoint(ckpt, config=REPO_ROOT / row.config, device=device)
    log(f"[table] {row.name}: generating {len(todo)} images into {out}")
    from tqdm import tqdm
    start = time.perf_counter()
    for first in tqdm(range(0, len(todo), batch_size), desc=row.name, unit="batch"):
        chunk = todo[first:first + batch_size]
        images = pipe([samples[i].caption for i in chunk],
                      [samples[i].interactions if row.grounded else [] for i in chunk],
                      seed=[seed + i for i in chunk], progress=False)
        for i, image in zip(chunk, images):
            atomic_write(out / Path(samples[i].key).name, lambda tmp, im=image: im.save(tmp, format="PNG"))
    return out, (time.perf_counter() - start) / len(todo)


def category_group_map(per_category: list[dict], role_types) -> dict:
    """Default-setting mAP over the categories with a non-human subject, and over those with a
    non-contact verb (categories without ground truth left out, as in every mean)."""
    from dataset.role_types import NON_CONTACT, NON_HUMAN
    groups = {"non_human_subject": lambda r: role_types.entity(r["subject"]) == NON_HUMAN,
              "non_contact": lambda r: role_types.action(r["verb"]) == NON_CONTACT}
    out = {}
    for name, member in groups.items():
        aps = [r["ap_default"] for r in per_category if member(r) and not math.isnan(r["ap_default"])]
        out[name] = sum(aps) / len(aps) if aps else float("nan")
    return out


def sample_groups(samples, role_types) -> dict[str, list[bool]]:
    """Which samples have a non-human subject, and which a non-contact action."""
    from dataset.role_types import NON_CONTACT, NON_HUMAN
    return {"all": [True] * len(samples),
            "non_human_subject": [any(role_types.entity(it.subject) == NON_HUMAN for it in s.interactions)
                                  for s in samples],
            "non_contact": [any(role_types.action(it.action) == NON_CONTACT for it in s.interactions)
                            for s in samples]}


def layout_gains(row: ToyRow, ckpt: Path, samples, groups: dict, device=None) -> dict[str, float]:
    """The layout gain of one trained run, overall and per sample group; kept beside the
    checkpoint (layout_gain_n<N>.json) and reused while the checkpoint is the same file."""
    from evaluation.layout_gain import layout_losses
    from hoi.io import atomic_write, file_digest
    from interact.pipeline import InteractDiffusionPipeline
    cache = ckpt.parent / f"layout_gain_n{len(samples)}.json"
    digest = file_digest(ckpt)
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("checkpoint") == digest and set(saved["gains"]) == set(groups):
            return saved["gains"]
    pipe = InteractDiffusionPipeline.from_checkpoint(ckpt, config=REPO_ROOT / row.config, device=device)
    losses = layout_losses(pipe.model, samples, device=pipe.device, progress=True)
    gains = {name: losses.gain(torch.tensor(mask)) for name, mask in groups.items()}
    atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps({"checkpoint": digest, "gains": gains})))
    return gains


def mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "n": n, "values": values}


# ----------------------------------------------------------------------------- scores and bootstrap

def bootstrap_indices(n: int, reps: int, seed: int = 0) -> np.ndarray:
    """[reps, n] resampled layout indices; the same draws serve every row, so differences are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def resampled(records: list[dict], index: np.ndarray) -> list[dict]:
    """The records at `index` (with repeats), renamed so that each copy is its own image."""
    return [dict(records[i], file_name=f"{k}:{records[i]['file_name']}") for k, i in enumerate(index)]


def map_full(gt: list[dict], detections: list[dict], categories: HOICategories) -> float:
    return evaluate_hoi_map(gt, detections, categories).summary["default"]["full"]


def bootstrap_map(gt: list[dict], detections: list[dict], categories: HOICategories,
                  draws: np.ndarray) -> np.ndarray:
    """Default Full mAP of each bootstrap draw of the layouts."""
    return np.array([map_full(resampled(gt, d), resampled(detections, d), categories) for d in draws])


def score_run(folder: Path, gt: list[dict], categories: HOICategories, detector, role_types, extractor,
              real_images, draws: np.ndarray, key: str, log=print) -> dict:
    """The scores of one folder of images for the table: detections (kept in
    <folder>/../detections.json), mAP, bootstrap draws of mAP, FID/KID (when `extractor`).
    Cached in <folder>/../scores.json under `key` (what the images came from)."""
    from hoi.io import atomic_write
    cache = folder.parent / "scores.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key and len(saved.get("bootstrap", [])) == len(draws):
            return saved
    log(f"[table] scoring {folder}")
    detections = detector.detect_folder(folder, gt, progress=True)
    for d in detections:
        d.pop("mask", None)
    atomic_write(folder.parent / "detections.json", lambda tmp: Path(tmp).write_text(json.dumps(detections)))
    result = evaluate_hoi_map(gt, detections, categories)
    scores = {"key": key, "map": result.summary, "map_groups": category_group_map(result.per_category, role_types),
              "bootstrap": bootstrap_map(gt, detections, categories, draws).tolist()}
    if extractor is not None:
        from evaluation.fid_kid import compute_fid_kid, read_image
        fake = torch.stack([read_image(folder / g["file_name"]) for g in gt])
        # KID subsets of half the images, so that they differ and the std means something.
        scores.update(compute_fid_kid(real_images, fake, extractor, kid_subset_size=max(2, len(gt) // 2),
                                      progress=False))
    atomic_write(cache, lambda tmp: Path(tmp).write_text(json.dumps(scores)))
    return scores


def is_twin_scene(record: dict) -> bool:
    """A toy test image holding two interactions of group-partner categories (same subject and
    object classes, the same box geometry, different verbs): the caption names both verbs and
    cannot say which subject does which."""
    from dataset.toy import group_partners
    ids = [h["hoi_category_id"] for h in record["hoi_annotation"]]
    return any(b in {p.id for p in group_partners(a)} for i, a in enumerate(ids) for b in ids[i + 1:])


def pair_verb_accuracy(gt: list[dict], detections: list[dict], iou_threshold: float = 0.5) -> dict[str, dict]:
    """Per scene kind ("twin" / "other", see is_twin_scene): of the ground-truth pairs, the share
    the detector found (a detected pair with both boxes at IoU >= iou_threshold) and, of those,
    the share whose highest-scoring detected verb is the right one. A model that places the
    figures but not the verbs finds the pairs and guesses the verb of twins (chance 50%)."""
    by_name = {d["file_name"]: d for d in detections}
    counts = {kind: [0, 0, 0] for kind in ("twin", "other")}    # pairs, found, verb right
    for record in gt:
        c = counts["twin" if is_twin_scene(record) else "other"]
        det = by_name.get(record["file_name"], {"predictions": [], "hoi_prediction": []})
        boxes = np.array([p["bbox"] for p in det["predictions"]], dtype=np.float64).reshape(-1, 4)
        for h in record["hoi_annotation"]:
            c[0] += 1
            if not len(boxes):
                continue
            sub_iou = box_iou(np.asarray(record["annotations"][h["subject_id"]]["bbox"]), boxes)[0]
            obj_iou = box_iou(np.asarray(record["annotations"][h["object_id"]]["bbox"]), boxes)[0]
            hits = [p for p in det["hoi_prediction"]
                    if sub_iou[p["subject_id"]] >= iou_threshold and obj_iou[p["object_id"]] >= iou_threshold]
            if hits:
                c[1] += 1
                c[2] += max(hits, key=lambda p: p["score"])["category_id"] == h["category_id"]
    return {kind: {"pairs": n, "found": found / n if n else float("nan"),
                   "verb_right": right / found if found else float("nan")}
            for kind, (n, found, right) in counts.items()}


def summarise_row(seeds: list[dict]) -> dict:
    """A row of the table from its seeds' scores: means over seeds, the seeds' spread, the
    bootstrap interval of the seed-mean Default Full mAP."""
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    out = {"seeds": len(seeds), "map": {s: {g: mean([x["map"][s][g] for x in seeds]) for g in ("full", "rare", "non_rare")}
                                       for s in ("default", "known_object")},
           "map_groups": {g: mean([x["map_groups"][g] for x in seeds]) for g in seeds[0]["map_groups"]},
           "map_full_seeds": [x["map"]["default"]["full"] for x in seeds]}
    draws = np.mean([x["bootstrap"] for x in seeds], axis=0)
    out["bootstrap"] = draws.tolist()
    out["map_full_ci"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    if "fid" in seeds[0]:
        out["fid"] = mean([x["fid"] for x in seeds])
        out["fid_seeds"] = [x["fid"] for x in seeds]
        out["kid_mean"] = mean([x["kid_mean"] for x in seeds])
        out["kid_std"] = math.sqrt(mean([x["kid_std"] ** 2 for x in seeds]) / len(seeds))
    if all("pair_verbs" in x for x in seeds):
        out["pair_verbs"] = {kind: {k: mean([x["pair_verbs"][kind][k] for x in seeds]) for k in ("found", "verb_right")}
                             for kind in seeds[0]["pair_verbs"]}
    for extra in ("layout_gain", "seconds_per_image"):
        if extra in seeds[0]:
            out[extra] = mean_std([x[extra] for x in seeds]) if extra == "layout_gain" else \
                mean([x[extra] for x in seeds])
    return out


def compare(a: dict, b: dict) -> dict:
    """Default Full mAP of row a minus row b, with its standard error: the paired bootstrap over
    the layouts and, where both rows have several seeds, the spread between seeds."""
    diff = a["map"]["default"]["full"] - b["map"]["default"]["full"]
    se_layouts = float(np.std(np.array(a["bootstrap"]) - np.array(b["bootstrap"]), ddof=1))
    se_seeds = 0.0
    for row in (a, b):
        values = row["map_full_seeds"]
        if len(values) > 1:
            se_seeds += float(np.var(values, ddof=1)) / len(values)
    se = math.sqrt(se_layouts ** 2 + se_seeds)
    z = diff / se if se > 0 else (float("nan") if diff == 0 else math.copysign(float("inf"), diff))
    return {"difference": diff, "se": se, "se_layouts": se_layouts, "se_seeds": math.sqrt(se_seeds), "z": z}


def run_toy(rows: list[ToyRow] | None = None, n: int = 250, data_root="data/toy", runs="runs", out="runs/table_toy",
            device=None, gain_n: int = 200, bootstrap: int = 200, train: bool = True, log=print) -> dict:
    """Train (or reuse), generate and score the given rows (default all), then assemble the table
    from every row scored so far; rows not scored yet are listed in `_meta.missing`."""
    from dataset.role_types import toy_role_types
    from evaluation.toy_detector import ToyHOIDetector
    from evaluation.toy_features import load_toy_extractor
    from hoi.io import file_digest
    rows = TOY_ROWS if rows is None else rows
    data_root, runs, out = Path(data_root), Path(runs), Path(out)
    start = time.perf_counter()
    ensure_toy_data(data_root, log)
    samples = toy_test_layouts(REPO_ROOT / ROW_BY_KEY["interact"].config, data_root, max(n, gain_n))
    gain_samples, samples = samples[:gain_n], samples[:n]
    names = [Path(s.key).name for s in samples]
    annotations = data_root / "annotations"
    by_name = {r["file_name"]: r for r in read_ground_truth(annotations / "test_hico.json")}
    gt = [by_name[name] for name in names]
    categories = HOICategories.from_file(annotations / "categories.json")
    detector, extractor = ToyHOIDetector.load(), load_toy_extractor()
    role_types = toy_role_types()
    groups = sample_groups(gain_samples, role_types)
    real_images = torch.stack([((s.image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for s in samples])
    draws = bootstrap_indices(n, bootstrap)
    detector_key = file_digest(detector.path) if detector.path is not None else "prior"

    for row in rows:
        for seed in range(row.seeds):
            run = runs / row.run_name(seed)
            if not (run / "model_final.pth").is_file() and not train:
                log(f"[table] {row.name} (seed {seed}): not trained ({run}); skipped")
                continue
            ckpt = train_row(row, runs, data_root, seed, device, log)
            folder, per_image = generate_row(row, ckpt, samples, out / row.run_name(seed) / "images", device=device,
                                             log=log)
            key = f"{file_digest(ckpt)}:{detector_key}:n{n}"
            scores = score_run(folder, gt, categories, detector, role_types, extractor, real_images, draws, key, log)
            extra = {}
            if "pair_verbs" not in scores:
                detections = json.loads((folder.parent / "detections.json").read_text())
                extra["pair_verbs"] = pair_verb_accuracy(gt, detections)
            if not math.isnan(per_image):
                extra["seconds_per_image"] = per_image
            if row.grounded:
                extra["layout_gain"] = layout_gains(row, ckpt, gain_samples, groups, device)["all"]
            if extra:
                scores.update(extra)
                from hoi.io import atomic_write
                atomic_write(folder.parent / "scores.json", lambda tmp: Path(tmp).write_text(json.dumps(scores)))
            log(f"[table] {row.name} (seed {seed}): mAP Default Full {100 * scores['map']['default']['full']:.2f}, "
                f"FID {scores['fid']:.2f}")
    real = score_real(data_root, out, gt, categories, detector, role_types, draws, f"real:{detector_key}:n{n}", log)
    real["pair_verbs"] = pair_verb_accuracy(gt, json.loads((out / "real" / "detections.json").read_text()))
    return assemble_toy(out, n, real, time.perf_counter() - start, detector_key)


def score_real(data_root: Path, out: Path, gt, categories, detector, role_types, draws, key: str, log=print) -> dict:
    """The ceiling: the detector on the real test images (scores kept under out/real/)."""
    import shutil
    from hoi.io import atomic_write
    folder = out / "real" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for g in gt:
        if not (folder / g["file_name"]).is_file():   # (two table commands may run side by side)
            atomic_write(folder / g["file_name"],
                         lambda tmp, name=g["file_name"]: shutil.copyfile(data_root / "images" / "test" / name, tmp))
    return score_run(folder, gt, categories, detector, role_types, None, None, draws, key, log)


def assemble_toy(out: Path, n: int, real: dict, seconds: float, detector_key: str) -> dict:
    """The table from every row whose seeds are all scored under `out`, on `n` layouts, by the
    detector whose digest is `detector_key` (a row scored by an older detector is missing)."""
    results, missing = {}, []
    summaries = {}
    for row in TOY_ROWS:
        seeds = []
        for seed in range(row.seeds):
            path = out / row.run_name(seed) / "scores.json"
            if path.is_file():
                seeds.append(json.loads(path.read_text()))
        if len(seeds) < row.seeds or any(not s["key"].endswith(f":{detector_key}:n{n}") for s in seeds):
            missing.append(row.key)
            continue
        summaries[row.key] = results[row.name] = summarise_row(seeds)
    results[CEILING_ROW] = {"map": real["map"], "bootstrap": real["bootstrap"], "map_full_seeds": [real["map"]["default"]["full"]],
                            "map_full_ci": [float(np.percentile(real["bootstrap"], 2.5)),
                                            float(np.percentile(real["bootstrap"], 97.5))], "seeds": 0}
    if "pair_verbs" in real:
        results[CEILING_ROW]["pair_verbs"] = real["pair_verbs"]
    comparisons = {}
    for a, b in COMPARISONS:
        if a in summaries and b in summaries:
            comparisons[f"{a} - {b}"] = compare(summaries[a], summaries[b])
    results["_meta"] = {"n": n, "seconds": seconds, "missing": missing, "comparisons": comparisons,
                        "ceiling": real["map"]["default"]["full"]}
    out.mkdir(parents=True, exist_ok=True)
    from hoi.io import atomic_write
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    text = "\n".join([markdown_table(results), comparison_table(results), variant_table(results),
                      pair_verb_table(results)])
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
    return results


# ----------------------------------------------------------------------------- real runs

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
        results["real images (detector ceiling)"] = {"map": evaluate_hoi_map(gt, detections(ceiling),
                                                                             categories).summary}
    return results


# ----------------------------------------------------------------------------- the table

def _fmt(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pm(stats: dict, scale: float = 100.0, digits: int = 3) -> str:
    if stats["n"] < 2:
        return _fmt(scale * stats["mean"], digits)
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"


def markdown_table(results: dict) -> str:
    """Rows as the paper's table: FID, KID (mean ± std) and mAP (%) Full/Rare/Non-rare in the
    Default and Known Object settings; with the toy table's extras (seeds, the 95% bootstrap
    interval of Default Full over the layouts, seconds per image) when the rows have them."""
    toy = any("map_full_ci" in r for k, r in results.items() if not k.startswith("_"))
    head = ["model"] + (["seeds"] if toy else []) + ["FID", "KID", "Def Full"] + (["95% interval"] if toy else []) + \
        ["Def Rare", "Def Non-rare", "KO Full", "KO Rare", "KO Non-rare"] + (["s / image"] if toy else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        kid = "-" if "kid_mean" not in r else f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
        fid = _fmt(r.get("fid"), 2)
        if toy and len(r.get("fid_seeds", [])) > 1:
            fid += " (" + ", ".join(f"{v:.2f}" for v in r["fid_seeds"]) + ")"
        cells = [name] + ([str(r.get("seeds") or "-")] if toy else []) + [fid, kid]
        values = [_fmt(100 * r["map"][setting][group], 2) for setting, group in METRIC_COLUMNS]
        cells.append(values[0])
        if toy:
            ci = r.get("map_full_ci")
            cells.append("-" if ci is None else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}")
        cells += values[1:]
        if toy:
            cells.append(_fmt(r.get("seconds_per_image"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(results: dict) -> str:
    """The differences the claim rests on, in Default Full mAP points, with their standard errors."""
    comparisons = results.get("_meta", {}).get("comparisons", {})
    if not comparisons:
        return ""
    names = {r.key: r.name for r in TOY_ROWS}
    lines = ["| comparison | difference | SE (layouts, seeds) | z |", "|---|---|---|---|"]
    for key, c in comparisons.items():
        a, b = key.split(" - ")
        lines.append(f"| {names[a]} − {names[b]} | {100 * c['difference']:+.2f} | {100 * c['se']:.2f} "
                     f"({100 * c['se_layouts']:.2f}, {100 * c['se_seeds']:.2f}) | {c['z']:.1f} |")
    return "\n".join(lines) + "\n"


def variant_table(results: dict, baseline: str = BASELINE_ROW) -> str:
    """The rows that have a layout gain: the gain (%) (mean ± std over seeds), and the mAP over the
    non-human-subject and non-contact categories."""
    head = ["model", "seeds", "layout gain", "mAP non-human subj.", "mAP non-contact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_") or "layout_gain" not in r:
            continue
        groups = r.get("map_groups", {})
        cells = [name, str(r["layout_gain"]["n"]), _pm(r["layout_gain"]),
                 _fmt(100 * groups.get("non_human_subject", float("nan")), 2),
                 _fmt(100 * groups.get("non_contact", float("nan")), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pair_verb_table(results: dict) -> str:
    """Verbs of the pairs the detector found, in twin scenes and in the others (pair_verb_accuracy)."""
    head = ["model", "pairs found, twin scenes", "verb right, twin scenes", "pairs found, other", "verb right, other"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_") or "pair_verbs" not in r:
            continue
        v = r["pair_verbs"]
        lines.append("| " + " | ".join([name] + [_fmt(100 * v[kind][k], 1) for kind in ("twin", "other")
                                                 for k in ("found", "verb_right")]) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""
