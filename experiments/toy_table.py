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

The statistics and tables are evaluation/table_stats.py; real runs (`--world hico`) are
experiments/hico_table.py.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.hico_map import HOICategories, evaluate_hoi_map, read_ground_truth
from evaluation.table_stats import (CEILING_ROW, bootstrap_indices, bootstrap_map, category_group_map, compare,
                                    comparison_table, markdown_table, pair_verb_accuracy, pair_verb_table,
                                    sample_groups, summarise_row, variant_table)
from evaluation.toy_samples import toy_test_layouts

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToyRow:
    key: str        # the row's name on the command line; its runs are runs/toy_<key>[_seed<k>]
    name: str
    config: str
    grounded: bool  # whether the row is given the layout's boxes
    seeds: int = 1  # training runs with train.seed 0 .. seeds-1
    # A row of sampling variants: a fixed checkpoint instead of training (repository-relative), and
    # the pipeline's call options that differ from the config's (sampler, steps, ...).
    checkpoint: str = ""
    sampling: tuple[tuple[str, object], ...] = ()
    # Scored on the first n test layouts with at least this many interactions (0: the first n).
    min_interactions: int = 0
    trained_as: str = ""     # a row that reuses another row's trained runs (its key)
    segments: bool = False   # DenseDiffusion with the layout's subject and object boxes as segments

    def run_name(self, seed: int) -> str:
        """Its images' and scores' folder in the table (and its training run's under runs/)."""
        return f"toy_{self.key}" + ("" if seed == 0 else f"_seed{seed}")

    def train_name(self, seed: int) -> str:
        """Its training run's folder under runs/."""
        return f"toy_{self.trained_as or self.key}" + ("" if seed == 0 else f"_seed{seed}")


TRAINED_ROWS = (
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
# Samplers, on one model: the embedded default (InteractDiffusion's recipe, seed 0, as shipped).
EMBEDDED = "assets/toy_interactdiffusion.pth"
SAMPLER_ROWS = tuple(
    ToyRow(f"sampler_{key}", f"InteractDiffusion (embedded), {name}", "configs/toy_hoi.yaml", True,
           checkpoint=EMBEDDED, sampling=sampling)
    for key, name, sampling in (
        ("plms25", "PLMS 25 steps (the table's)", (("sampler", "plms"), ("steps", 25))),
        ("plms50", "PLMS 50 steps (the paper's)", (("sampler", "plms"), ("steps", 50))),
        ("dpmpp20", "DPM-Solver++ 2M 20 steps", (("sampler", "dpmpp_2m"), ("steps", 20))),
        ("dpmpp20k", "DPM-Solver++ 2M Karras 20 steps", (("sampler", "dpmpp_2m"), ("steps", 20),
                                                         ("karras_sigmas", True))),
        ("unipc20", "UniPC 20 steps", (("sampler", "unipc"), ("steps", 20))),
        ("euler_a20", "Euler ancestral 20 steps", (("sampler", "euler_a"), ("steps", 20))),
    ))
# Training-free controls on the same models (the multi-instance sampler; also on the layouts
# with three interactions, the most the toy world draws, where it is meant to help).
CONTROL_ROWS = (
    ToyRow("mis", "InteractDiffusion (embedded) + multi-instance sampler 0.36", "configs/toy_hoi.yaml", True,
           checkpoint=EMBEDDED, sampling=(("multi_instance", 0.36),)),
    ToyRow("crowded", "InteractDiffusion (embedded), 3-interaction layouts", "configs/toy_hoi.yaml", True,
           checkpoint=EMBEDDED, min_interactions=3),
    ToyRow("crowded_mis", "InteractDiffusion (embedded) + multi-instance sampler 0.36, 3-interaction layouts",
           "configs/toy_hoi.yaml", True, checkpoint=EMBEDDED, sampling=(("multi_instance", 0.36),),
           min_interactions=3),
    ToyRow("dense_text_only", "text only + DenseDiffusion", "configs/toy_text_only.yaml", False,
           trained_as="text_only", segments=True),
    ToyRow("dense_text_only_attention", "text only + DenseDiffusion's attention modulation alone",
           "configs/toy_text_only.yaml", False, trained_as="text_only", segments=True,
           sampling=(("dense_phrase_embeddings", False),)),
    ToyRow("interact_dense", "InteractDiffusion (embedded) + DenseDiffusion", "configs/toy_hoi.yaml", True,
           checkpoint=EMBEDDED, segments=True),
    ToyRow("interact_dense_attention", "InteractDiffusion (embedded) + DenseDiffusion's attention modulation alone",
           "configs/toy_hoi.yaml", True, checkpoint=EMBEDDED, segments=True,
           sampling=(("dense_phrase_embeddings", False),)),
    ToyRow("interact_dense_mis", "InteractDiffusion (embedded) + DenseDiffusion + multi-instance sampler 0.36",
           "configs/toy_hoi.yaml", True, checkpoint=EMBEDDED, segments=True, sampling=(("multi_instance", 0.36),)),
)
TOY_ROWS = TRAINED_ROWS + SAMPLER_ROWS + CONTROL_ROWS
ROW_GROUPS = {"samplers": SAMPLER_ROWS, "controls": CONTROL_ROWS}


ROW_BY_KEY = {r.key: r for r in TOY_ROWS}
ROW_NAMES = {r.key: r.name for r in TOY_ROWS}
COMPARISONS = (("interact", "boxes"), ("interact", "text_only"), ("interact_plain", "boxes_plain"),
               ("interact", "interact_plain"), ("sampler_dpmpp20", "sampler_plms50"),
               ("sampler_dpmpp20k", "sampler_plms50"), ("sampler_unipc20", "sampler_plms50"),
               ("sampler_plms25", "sampler_plms50"), ("mis", "sampler_plms25"), ("crowded_mis", "crowded"),
               ("dense_text_only", "text_only"), ("dense_text_only_attention", "text_only"),
               ("interact_dense", "sampler_plms25"), ("interact_dense_attention", "sampler_plms25"),
               ("interact_dense_mis", "sampler_plms25"))


def select_rows(keys: str | None) -> list[ToyRow]:
    """`keys`: comma-separated row keys, or None for every trained row (the paper's table and its
    variants; the sampler and control rows are asked for by name, or a group as "samplers" or
    "controls")."""
    if not keys:
        return list(TRAINED_ROWS)
    keys = ",".join(",".join(r.key for r in ROW_GROUPS[k]) if k in ROW_GROUPS else k for k in keys.split(","))
    wanted = [k.strip() for k in keys.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in ROW_BY_KEY]
    if unknown:
        raise ValueError(f"--rows {keys}: unknown row(s) {unknown}; rows: {', '.join(ROW_BY_KEY)}")
    return [ROW_BY_KEY[k] for k in wanted]


# ----------------------------------------------------------------------------- steps

# Bumped when what a sampling option does changes, so that images made before are made again.
ALGORITHMS = {"multi_instance": "branches on their own latents, merged once"}


def sampling_tag(row: ToyRow) -> str:
    """What, besides the checkpoint, the row's images come from (nothing for the config's own)."""
    algorithms = [f"{k}: {v}" for k, v in ALGORITHMS.items() if k in dict(row.sampling)]
    return ((f" sampling={dict(row.sampling)}" if row.sampling else "") + (" segments" if row.segments else "")
            + (f" ({'; '.join(algorithms)})" if algorithms else ""))


def ensure_toy_data(root: Path, log=print, make: bool = True) -> None:
    """The toy world in `root`, generated there when missing and `make` (else ValueError: a
    mistyped path must not silently become a new 21,000-image world)."""
    from dataset.toy.generate import generate, is_complete, world_mismatch
    if is_complete(root):
        reason = world_mismatch(root)
        if reason:
            raise ValueError(f"{reason}; regenerate it: python -m dataset.toy generate --out {root} --overwrite")
        return
    if not make:
        state = "does not exist" if not root.exists() else "holds no complete toy world"
        raise ValueError(f"--data {root}: {state}; pass --make-data to generate the toy world there (20000 train + "
                         f"1000 test images), or give the folder that holds it")
    log(f"[table] generating the toy world in {root} (20000 train + 1000 test images)")
    generate(root, overwrite=True)


def train_row(row: ToyRow, runs: Path, data_root: Path, seed: int = 0, device: str | None = None,
              log=print) -> Path:
    """runs/<row.train_name(seed)>/model_final.pth, trained (or resumed) when missing."""
    final = runs / row.train_name(seed) / "model_final.pth"
    if final.is_file():
        log(f"[table] {row.name} (seed {seed}): reusing {final}")
        return final
    from dataset.hoi_dataset import build_training_inputs
    from interact.trainer import Trainer, load_training_config
    config = load_training_config(REPO_ROOT / row.config)
    config.data.root = str(data_root)
    config.train["seed"] = seed
    log(f"[table] {row.name} (seed {seed}): training {row.config} into {runs / row.train_name(seed)}")
    dataset, role_types = build_training_inputs(config, progress=True)
    Trainer(config, runs / row.train_name(seed), dataset, role_types=role_types, device=device or "auto").run()
    return final


def generate_row(row: ToyRow, ckpt: Path, samples, out: Path, batch_size: int = 25, seed: int = 0,
                 device: str | None = None, log=print) -> tuple[Path, float]:
    """One image per test layout, named as the real test image; existing images are kept while
    they come from the same checkpoint (its digest is kept in <out>/../images_from.txt).
    Returns the folder and the seconds per image of what was generated now (NaN if nothing)."""
    import shutil
    from hoi.io import atomic_write, file_digest
    from interact.pipeline import InteractDiffusionPipeline
    marker, digest = out.parent / "images_from.txt", file_digest(ckpt) + sampling_tag(row)
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
    sampling = dict(row.sampling)
    if row.segments:
        from interact.controls.segments import segments_from_interactions
    from tqdm import tqdm
    start = time.perf_counter()
    for first in tqdm(range(0, len(todo), batch_size), desc=row.name, unit="batch"):
        chunk = todo[first:first + batch_size]
        segments = [segments_from_interactions(samples[i].interactions) for i in chunk] if row.segments else None
        images = pipe([samples[i].caption for i in chunk],
                      [samples[i].interactions if row.grounded else [] for i in chunk], segments=segments,
                      seed=[seed + i for i in chunk], progress=False, **sampling)
        for i, image in zip(chunk, images):
            atomic_write(out / Path(samples[i].key).name, lambda tmp, im=image: im.save(tmp, format="PNG"))
    return out, (time.perf_counter() - start) / len(todo)


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


def colour_inside(folder: Path, samples) -> float:
    """The mean over images and categories of the fraction of a category's key-colour pixels that
    lie inside its layout boxes (evaluation/toy_colour.py)."""
    from PIL import Image

    from dataset.toy.categories import OBJECTS
    from evaluation.toy_colour import key_colour_inside
    colours = {o.name: o.colour for o in OBJECTS}
    fractions = []
    for s in samples:
        with Image.open(folder / Path(s.key).name) as image:
            fractions += key_colour_inside(np.asarray(image.convert("RGB")), s.interactions, colours)
    return float(np.mean(fractions)) if fractions else float("nan")


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


def run_toy(rows: list[ToyRow] | None = None, n: int = 250, data_root="data/toy", runs="runs", out="runs/table_toy",
            device=None, gain_n: int = 200, bootstrap: int = 200, train: bool = True, log=print,
            make_data: bool = True) -> dict:
    """Train (or reuse), generate and score the given rows (default all), then assemble the table
    from every row scored so far; rows not scored yet are listed in `_meta.missing`. `make_data`:
    generate the toy world in `data_root` when it is not there."""
    from dataset.role_types import toy_role_types
    from evaluation.toy_detector import ToyHOIDetector
    from evaluation.toy_features import load_toy_extractor
    from hoi.io import file_digest
    rows = TOY_ROWS if rows is None else rows
    data_root, runs, out = Path(data_root), Path(runs), Path(out)
    start = time.perf_counter()
    ensure_toy_data(data_root, log, make_data)
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
    detector_key = file_digest(detector.path) if detector.path is not None else "prior"

    def as_uint8(images):
        return torch.stack([((s.image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for s in images])

    layout_sets = {0: (samples, gt, as_uint8(samples), bootstrap_indices(n, bootstrap))}

    def layouts(min_interactions: int):
        """(samples, ground truth, real images, bootstrap draws) of the first n test layouts with
        at least `min_interactions` interactions."""
        if min_interactions not in layout_sets:
            pool = toy_test_layouts(REPO_ROOT / ROW_BY_KEY["interact"].config, data_root, len(by_name))
            chosen = [s for s in pool if len(s.interactions) >= min_interactions][:n]
            layout_sets[min_interactions] = (chosen, [by_name[Path(s.key).name] for s in chosen], as_uint8(chosen),
                                             bootstrap_indices(len(chosen), bootstrap))
        return layout_sets[min_interactions]

    for row in rows:
        samples, gt, real_images, draws = layouts(row.min_interactions)
        subset = f":min{row.min_interactions}" if row.min_interactions else ""
        for seed in range(row.seeds):
            run = runs / row.train_name(seed)
            if row.checkpoint:
                ckpt = REPO_ROOT / row.checkpoint
            elif not (run / "model_final.pth").is_file() and not train:
                log(f"[table] {row.name} (seed {seed}): not trained ({run}); skipped")
                continue
            else:
                ckpt = train_row(row, runs, data_root, seed, device, log)
            folder, per_image = generate_row(row, ckpt, samples, out / row.run_name(seed) / "images", device=device,
                                             log=log)
            key = f"{file_digest(ckpt)}{sampling_tag(row)}{subset}:{detector_key}:n{n}"
            scores = score_run(folder, gt, categories, detector, role_types, extractor, real_images, draws, key, log)
            extra = {}
            if "pair_verbs" not in scores:
                detections = json.loads((folder.parent / "detections.json").read_text())
                extra["pair_verbs"] = pair_verb_accuracy(gt, detections)
            if "colour_inside" not in scores:
                extra["colour_inside"] = colour_inside(folder, samples)
            if not math.isnan(per_image):
                extra["seconds_per_image"] = per_image
            if row.grounded and not row.checkpoint:  # (a model's layout gain does not depend on the sampler)
                extra["layout_gain"] = layout_gains(row, ckpt, gain_samples, groups, device)["all"]
            if extra:
                scores.update(extra)
                from hoi.io import atomic_write
                atomic_write(folder.parent / "scores.json", lambda tmp: Path(tmp).write_text(json.dumps(scores)))
            log(f"[table] {row.name} (seed {seed}): mAP Default Full {100 * scores['map']['default']['full']:.2f}, "
                f"FID {scores['fid']:.2f}")
    samples, gt, real_images, draws = layout_sets[0]
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
    text = "\n".join([markdown_table(results), comparison_table(results, ROW_NAMES), variant_table(results),
                      pair_verb_table(results)])
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
    return results
