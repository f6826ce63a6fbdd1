"""The paper's table (FACTS §5) in miniature: FID, KID and HOI detection mAP per model row.

Toy world (`python scripts/reproduce_table.py --world toy`), every step reused when its output
exists, so a killed run picks up where it stopped:
1. the toy world's data (`python -m dataset.toy generate`);
2. the text-to-image backbone (configs/toy_base.yaml), the counterpart of SD v1.x;
3. one fine-tune per row from that backbone, same budget each: text only (captions only),
   box only (GLIGEN-style subject/object tokens), InteractDiffusion (subject/action/object),
   and the reproduction study's variants of it: typed role embeddings, the cross-attention
   fuser, both. Rows with `seeds` > 1 are trained that many times (train.seed 0, 1, ...);
4. images for the first `n` toy test layouts (caption + boxes), per row (its first seed);
5. FID/KID (toy feature net) against the real test images, and HOI mAP of the toy detector on
   the generated images against the layouts; the real images' own mAP is the ceiling row. Also
   the mAP over the categories with a non-human subject (robot, dog) and over the non-contact
   ones (look at);
6. the layout gain (evaluation/layout_gain.py) of every seed on `gain_n` test samples: all of
   them, those with a non-human subject, those with a non-contact action; mean ± std over seeds.

Real runs (`--world hico`): the same table from generated image folders and the detection files
of a HOI detector (FGAHOI) run on them.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation.hico_map import HOICategories, evaluate_hoi_map, read_detections, read_fgahoi, read_ground_truth

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = (("default", "full"), ("default", "rare"), ("default", "non_rare"),
                  ("known_object", "full"), ("known_object", "rare"), ("known_object", "non_rare"))


@dataclass(frozen=True)
class ToyRow:
    name: str
    config: str
    run: str
    grounded: bool  # whether the row is given the layout's boxes
    seeds: int = 1  # training runs with train.seed 0 .. seeds-1

    def run_name(self, seed: int) -> str:
        return self.run if seed == 0 else f"{self.run}_seed{seed}"


TOY_BASE = ToyRow("backbone", "configs/toy_base.yaml", "toy_base", False)
TOY_ROWS = (
    ToyRow("text only", "configs/toy_text_only.yaml", "toy_text_only", False),
    ToyRow("box only (GLIGEN-style tokens)", "configs/toy_boxes_only.yaml", "toy_boxes_only", True),
    ToyRow("InteractDiffusion", "configs/toy_hoi.yaml", "toy_interact", True, seeds=3),
    ToyRow("InteractDiffusion + typed roles", "configs/toy_typed.yaml", "toy_typed", True, seeds=3),
    ToyRow("InteractDiffusion + cross-attention fuser", "configs/toy_cross_attention.yaml", "toy_cross_attention",
           True, seeds=3),
    ToyRow("InteractDiffusion + typed roles + cross-attention fuser", "configs/toy_typed_cross_attention.yaml",
           "toy_typed_cross_attention", True, seeds=3),
)
BASELINE_ROW = "InteractDiffusion"  # the variants are compared with it


# ----------------------------------------------------------------------------- toy world steps

def ensure_toy_data(root: Path, log=print) -> None:
    from dataset.toy.generate import generate, is_complete
    if is_complete(root):
        return
    log(f"[table] generating the toy world in {root} (20000 train + 1000 test images)")
    generate(root, overwrite=True)


def train_row(row: ToyRow, runs: Path, backbone: Path | None, data_root: Path, seed: int = 0, log=print) -> Path:
    """runs/<row.run_name(seed)>/model_final.pth, trained (or resumed) when missing."""
    final = runs / row.run_name(seed) / "model_final.pth"
    if final.is_file():
        log(f"[table] {row.name} (seed {seed}): reusing {final}")
        return final
    from interact.trainer import Trainer, load_training_config
    config = load_training_config(REPO_ROOT / row.config)
    config.data.root = str(data_root)
    config.train["seed"] = seed
    log(f"[table] {row.name} (seed {seed}): training {row.config}" + (f" from {backbone}" if backbone else ""))
    Trainer(config, runs / row.run_name(seed), sd_ckpt=backbone).run()
    return final


def toy_test_layouts(config_path, data_root: Path, n: int):
    """The first `n` test samples of the toy world: (file name, caption, interactions, image)."""
    from interact.trainer import load_training_config
    from dataset.hoi_dataset import build_dataset
    config = load_training_config(config_path)
    config.data.root = str(data_root)
    dataset = build_dataset(config.data, "test", seed=0)
    if n > len(dataset):
        raise ValueError(f"n = {n}: the toy test split has only {len(dataset)} images")
    return [dataset.get(i, 0) for i in range(n)]


def generate_row(row: ToyRow, ckpt: Path, samples, out: Path, batch_size: int = 25, seed: int = 0,
                 device: str | None = None, log=print) -> Path:
    """One image per test layout, named as the real test image; existing images are kept."""
    from interact.checkpoint import atomic_write
    from interact.pipeline import InteractDiffusionPipeline
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i, s in enumerate(samples) if not (out / Path(s.key).name).is_file()]
    if not todo:
        return out
    pipe = InteractDiffusionPipeline.from_checkpoint(ckpt, config=REPO_ROOT / row.config, device=device)
    log(f"[table] {row.name}: generating {len(todo)} images into {out}")
    from tqdm import tqdm
    for start in tqdm(range(0, len(todo), batch_size), desc=row.name, unit="batch"):
        chunk = todo[start:start + batch_size]
        images = pipe([samples[i].caption for i in chunk],
                      [samples[i].interactions if row.grounded else [] for i in chunk],
                      seed=[seed + i for i in chunk], progress=False)
        for i, image in zip(chunk, images):
            atomic_write(out / Path(samples[i].key).name, lambda tmp, im=image: im.save(tmp, format="PNG"))
    return out


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


def score_images(folder: Path, gt: list[dict], categories: HOICategories, detector, role_types) -> dict:
    detections = detector.detect_folder(folder, gt, progress=True)
    result = evaluate_hoi_map(gt, detections, categories)
    return {"map": result.summary, "map_groups": category_group_map(result.per_category, role_types)}


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
    from interact.checkpoint import atomic_write, file_digest
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


def run_toy(n: int = 500, data_root="data/toy", runs="runs", out="runs/table_toy", device=None,
            gain_n: int = 200, log=print) -> dict:
    from evaluation.fid_kid import compute_fid_kid, read_image
    from evaluation.toy_detector import ToyHOIDetector
    from evaluation.toy_features import load_toy_extractor
    data_root, runs, out = Path(data_root), Path(runs), Path(out)
    start = time.perf_counter()
    ensure_toy_data(data_root, log)
    backbone = train_row(TOY_BASE, runs, None, data_root, log=log)
    samples = toy_test_layouts(REPO_ROOT / TOY_BASE.config, data_root, max(n, gain_n))
    gain_samples, samples = samples[:gain_n], samples[:n]
    names = {Path(s.key).name for s in samples}
    annotations = data_root / "annotations"
    gt = [r for r in read_ground_truth(annotations / "test_hico.json") if r["file_name"] in names]
    categories = HOICategories.from_file(annotations / "categories.json")
    detector, extractor = ToyHOIDetector.load(), load_toy_extractor()
    from dataset.role_types import toy_role_types
    role_types = toy_role_types()
    groups = sample_groups(gain_samples, role_types)
    real_folder = data_root / "images" / "test"
    real_images = torch.stack([((s.image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for s in samples])

    results = {}
    for row in TOY_ROWS:
        ckpts = [train_row(row, runs, backbone, data_root, seed, log) for seed in range(row.seeds)]
        folder = generate_row(row, ckpts[0], samples, out / row.run, device=device, log=log)
        fake = torch.stack([read_image(folder / Path(s.key).name) for s in samples])
        # KID subsets of half the images, so that they differ and the std means something.
        metrics = compute_fid_kid(real_images, fake, extractor, kid_subset_size=min(1000, max(2, n // 2)),
                                  progress=False)
        results[row.name] = {**metrics, **score_images(folder, gt, categories, detector, role_types),
                             "seeds": row.seeds}
        if row.grounded:
            per_seed = [layout_gains(row, ckpt, gain_samples, groups, device) for ckpt in ckpts]
            results[row.name]["layout_gain"] = {g: mean_std([s[g] for s in per_seed]) for g in groups}
        log(f"[table] {row.name}: FID {metrics['fid']:.2f}, mAP Default Full "
            f"{100 * results[row.name]['map']['default']['full']:.2f}")
    results["real images (detector ceiling)"] = score_images(real_folder, gt, categories, detector, role_types)
    results["_meta"] = {"n": n, "gain_n": gain_n, "seconds": time.perf_counter() - start, "data": str(data_root),
                        "gain_groups": {g: sum(mask) for g, mask in groups.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(results) + "\n" + variant_table(results))
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


def difference(a: dict, b: dict) -> dict:
    """a - b of two mean_std results, with the standard error of the difference of the means."""
    se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) if min(a["n"], b["n"]) > 1 else float("nan")
    return {"mean": a["mean"] - b["mean"], "se": se}


def variant_table(results: dict, baseline: str = BASELINE_ROW) -> str:
    """The rows that have a layout gain: the gain (%) overall, on samples with a non-human
    subject and on samples with a non-contact action (mean ± std over seeds), the change from
    the baseline row (± its standard error), and the first seed's mAP over the non-human-subject
    and non-contact categories."""
    head = ["model", "seeds", "layout gain", "non-human subject", "non-contact", f"gain vs {baseline}",
            "mAP non-human subj.", "mAP non-contact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results.get(baseline, {}).get("layout_gain")
    for name, r in results.items():
        if name.startswith("_") or "layout_gain" not in r:
            continue
        gain = r["layout_gain"]
        if base is None or name == baseline:
            versus = "-"
        else:
            d = difference(gain["all"], base["all"])
            versus = f"{100 * d['mean']:+.3f}" + ("" if math.isnan(d["se"]) else f" ± {100 * d['se']:.3f}")
        groups = r.get("map_groups", {})
        cells = [name, str(gain["all"]["n"]), _pm(gain["all"]), _pm(gain["non_human_subject"]),
                 _pm(gain["non_contact"]), versus, _fmt(100 * groups.get("non_human_subject", float("nan")), 2),
                 _fmt(100 * groups.get("non_contact", float("nan")), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: dict) -> str:
    """Rows as the paper's table: FID, KID (mean ± std) and mAP (%) Full/Rare/Non-rare in the
    Default and Known Object settings."""
    head = ["model", "FID", "KID", "Def Full", "Def Rare", "Def Non-rare", "KO Full", "KO Rare", "KO Non-rare"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        kid = "-" if "kid_mean" not in r else f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
        cells = [name, _fmt(r.get("fid"), 2), kid]
        cells += [_fmt(100 * r["map"][setting][group], 2) for setting, group in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
