#!/usr/bin/env python
"""Train the toy world's feature extractor (evaluation/toy_features.py) and write its weights.

The CNN learns the multi-label presence of the object categories and the HOI categories
(binary cross-entropy) on the toy train split; its 256-d pooled activations are the `toy`
extractor's features for FID/KID (`python -m evaluation.fid_kid --extractor toy`). After
training it reports, on the test split, each head's mean average precision (over the
categories present in the test split), per-label accuracy and exact-match accuracy at a 0.5
threshold, and saves fp16 weights plus metadata (seed, data, steps, timings, test metrics).

Deterministic for a given seed on one thread (the default): the batches, flips and initial
weights all come from seeded generators (two runs gave identical weights). Training takes about
3.5-4.5 minutes on one CPU thread with the defaults, plus ~20 s to load the images.

Usage:
  .venv/bin/python scripts/train_toy_features.py [--data data/toy] [--out assets/toy_features.pt]
      [--steps 500] [--batch-size 64] [--lr 2e-3] [--seed 0] [--threads 1] [--train-limit N]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from evaluation.toy_features import CHANNELS, INPUT_SIZE, NUM_HOIS, NUM_OBJECTS, ToyFeatureNet  # noqa: E402

ANNOTATIONS = {"train": "trainval_hico.json", "test": "test_hico.json"}


def load_split(data: Path, split: str, limit: int | None = None):
    """Images uint8 [N, 3, H, W], object labels [N, NUM_OBJECTS] and HOI labels [N, NUM_HOIS] (0/1 float)."""
    ann_path = data / "annotations" / ANNOTATIONS[split]
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path} not found: generate the toy data with "
                                "`python -m dataset.toy generate --out data/toy`")
    entries = json.loads(ann_path.read_text())[:limit]
    images = np.empty((len(entries), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    objects = torch.zeros(len(entries), NUM_OBJECTS)
    hois = torch.zeros(len(entries), NUM_HOIS)
    for i, e in enumerate(tqdm(entries, desc=f"load {split}", unit="img", file=sys.stderr)):
        with Image.open(data / "images" / split / e["file_name"]) as im:
            im = im.convert("RGB")
            if im.size != (INPUT_SIZE, INPUT_SIZE):
                im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
            images[i] = np.asarray(im)
        for a in e["annotations"]:
            objects[i, a["category_id"] - 1] = 1
        for h in e["hoi_annotation"]:
            hois[i, h["hoi_category_id"] - 1] = 1
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), objects, hois


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one category: mean of the precision at the rank of each positive (scores sorted
    descending, ties broken by index)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def head_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    s, y = logits.numpy(), labels.numpy()
    aps = [average_precision(s[:, k], y[:, k]) for k in range(y.shape[1])]
    pred = s > 0
    return {"mAP": float(np.nanmean(aps)), "categories_in_test": int(np.sum(~np.isnan(aps))),
            "label_accuracy": float((pred == (y > 0)).mean()),
            "exact_match": float((pred == (y > 0)).all(axis=1).mean())}


@torch.no_grad()
def evaluate(model: ToyFeatureNet, images, objects, hois, batch_size: int = 250) -> dict:
    model.eval()
    obj, hoi = [], []
    for a in range(0, len(images), batch_size):
        o, h = model.heads(model(images[a:a + batch_size].float() / 255))
        obj.append(o)
        hoi.append(h)
    return {"objects": head_metrics(torch.cat(obj), objects), "hois": head_metrics(torch.cat(hoi), hois)}


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    t0 = time.perf_counter()
    x_train, o_train, h_train = load_split(data, "train", args.train_limit)
    x_test, o_test, h_test = load_split(data, "test")
    t_load = time.perf_counter() - t0

    model = ToyFeatureNet()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    n = len(x_train)
    order, pos = torch.randperm(n, generator=gen), 0
    model.train()
    t1 = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", unit="step", file=sys.stderr)
    for step in bar:
        if pos + args.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        x = x_train[idx].float() / 255
        flip = torch.rand(len(idx), generator=gen) < 0.5   # presence labels are flip-invariant
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))   # cosine decay
        for g in opt.param_groups:
            g["lr"] = lr
        o, h = model.heads(model(x))
        loss = (F.binary_cross_entropy_with_logits(o, o_train[idx])
                + F.binary_cross_entropy_with_logits(h, h_train[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    t_train = time.perf_counter() - t1
    metrics = evaluate(model, x_test, o_test, h_test)

    try:   # the data folder as the repository sees it, not a machine's absolute path
        data_name = str(data.resolve().relative_to(REPO_ROOT))
    except ValueError:
        data_name = str(data)
    meta = {"seed": args.seed, "data": data_name, "n_train": n, "n_test": len(x_test), "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
            "train_seconds": round(t_train, 1), "load_seconds": round(t_load, 1), "test_metrics": metrics,
            "torch": str(torch.__version__), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    readme = data / "README.txt"
    if readme.is_file():
        meta["data_readme"] = readme.read_text().split(". ")[0]
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "meta": meta,
            "config": {"channels": list(CHANNELS), "num_objects": NUM_OBJECTS, "num_hois": NUM_HOIS,
                       "input_size": INPUT_SIZE}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    print(f"data: {n} train / {len(x_test)} test images from {data} (loaded in {t_load:.1f} s)")
    print(f"training: {args.steps} steps of {args.batch_size}, {args.threads} thread(s): {t_train:.1f} s")
    for head, m in metrics.items():
        print(f"test {head:7s}: mAP {m['mAP']:.4f} over {m['categories_in_test']} categories, "
              f"label accuracy {m['label_accuracy']:.4f}, exact match {m['exact_match']:.4f}")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / "data" / "toy"), help="toy data set folder")
    p.add_argument("--out", default=str(REPO_ROOT / "assets" / "toy_features.pt"))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N train images")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
