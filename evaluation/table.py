"""The paper's table (FACTS §5) in miniature: FID, KID and HOI detection mAP per model row.

Toy world (`python scripts/reproduce_table.py --world toy`), every step reused when its output
exists, so a killed run picks up where it stopped:
1. the toy world's data (`python -m dataset.toy generate`);
2. the text-to-image backbone (configs/toy_base.yaml), the counterpart of SD v1.x;
3. one fine-tune per row from that backbone, same budget each: text only (captions only),
   box only (GLIGEN-style subject/object tokens), InteractDiffusion (subject/action/object);
4. images for the first `n` toy test layouts (caption + boxes), per row;
5. FID/KID (toy feature net) against the real test images, and HOI mAP of the toy detector on
   the generated images against the layouts; the real images' own mAP is the ceiling row.

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


TOY_BASE = ToyRow("backbone", "configs/toy_base.yaml", "toy_base", False)
TOY_ROWS = (
    ToyRow("text only", "configs/toy_text_only.yaml", "toy_text_only", False),
    ToyRow("box only (GLIGEN-style tokens)", "configs/toy_boxes_only.yaml", "toy_boxes_only", True),
    ToyRow("InteractDiffusion", "configs/toy_hoi.yaml", "toy_interact", True),
)


# ----------------------------------------------------------------------------- toy world steps

def ensure_toy_data(root: Path, log=print) -> None:
    from dataset.toy.generate import generate, is_complete
    if is_complete(root):
        return
    log(f"[table] generating the toy world in {root} (20000 train + 1000 test images)")
    generate(root, overwrite=True)


def train_row(row: ToyRow, runs: Path, backbone: Path | None, data_root: Path, log=print) -> Path:
    """runs/<row.run>/model_final.pth, trained (or resumed) when missing."""
    final = runs / row.run / "model_final.pth"
    if final.is_file():
        log(f"[table] {row.name}: reusing {final}")
        return final
    from interact.trainer import Trainer, load_training_config
    config = load_training_config(REPO_ROOT / row.config)
    config.data.root = str(data_root)
    log(f"[table] {row.name}: training {row.config}" + (f" from {backbone}" if backbone else ""))
    Trainer(config, runs / row.run, sd_ckpt=backbone).run()
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


def score_images(folder: Path, gt: list[dict], categories: HOICategories, detector) -> dict:
    detections = detector.detect_folder(folder, gt, progress=True)
    return evaluate_hoi_map(gt, detections, categories).summary


def run_toy(n: int = 500, data_root="data/toy", runs="runs", out="runs/table_toy", device=None,
            log=print) -> dict:
    from evaluation.fid_kid import compute_fid_kid, read_image
    from evaluation.toy_detector import ToyHOIDetector
    from evaluation.toy_features import load_toy_extractor
    data_root, runs, out = Path(data_root), Path(runs), Path(out)
    start = time.perf_counter()
    ensure_toy_data(data_root, log)
    backbone = train_row(TOY_BASE, runs, None, data_root, log)
    samples = toy_test_layouts(REPO_ROOT / TOY_BASE.config, data_root, n)
    names = {Path(s.key).name for s in samples}
    annotations = data_root / "annotations"
    gt = [r for r in read_ground_truth(annotations / "test_hico.json") if r["file_name"] in names]
    categories = HOICategories.from_file(annotations / "categories.json")
    detector, extractor = ToyHOIDetector.load(), load_toy_extractor()
    real_folder = data_root / "images" / "test"
    real_images = torch.stack([((s.image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for s in samples])

    results = {}
    for row in TOY_ROWS:
        ckpt = train_row(row, runs, backbone, data_root, log)
        folder = generate_row(row, ckpt, samples, out / row.run, device=device, log=log)
        fake = torch.stack([read_image(folder / Path(s.key).name) for s in samples])
        # KID subsets of half the images, so that they differ and the std means something.
        metrics = compute_fid_kid(real_images, fake, extractor, kid_subset_size=min(1000, max(2, n // 2)),
                                  progress=False)
        results[row.name] = {**metrics, "map": score_images(folder, gt, categories, detector)}
        log(f"[table] {row.name}: FID {metrics['fid']:.2f}, mAP Default Full "
            f"{100 * results[row.name]['map']['default']['full']:.2f}")
    results["real images (detector ceiling)"] = {"map": score_images(real_folder, gt, categories, detector)}
    results["_meta"] = {"n": n, "seconds": time.perf_counter() - start, "data": str(data_root)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(markdown_table(results))
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
