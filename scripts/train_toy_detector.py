"""Train the toy HOI detector's verb CNN (evaluation/toy_detector.py) and write assets/toy_detector.pt.

Training pairs come from scenes rendered by the toy world's generator
(`dataset.toy.render_scene`, every HOI category sampled alike), half of them degraded by
Gaussian noise, blur and a colour cast, then put through the detector's own colour rules and
instance step, so the CNN sees the crops and masks it will see at test time. A detected pair
whose boxes both match a ground-truth interaction (IoU >= 0.5, same categories) is labelled
with its verb, every other candidate pair "no interaction".

It also measures what the issue asks of the toy world: a classifier on the pair's box
geometry alone (the ground-truth boxes; evaluation.toy_detector.pair_features), trained and
tested within each geometry group, should be near chance (1 / verbs in the group), while the
pixel CNN is not. Deterministic by --seed; a few minutes on 2 CPU threads.

    python scripts/train_toy_detector.py [--scenes 6000 --steps 2500 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.toy import VERB_BY_ID, VERBS, render_scene  # noqa: E402
from dataset.toy.world import DEFAULT_SIZE  # noqa: E402
from evaluation.hico_map import box_iou  # noqa: E402
from evaluation.toy_detector import (CROP, DEFAULT_WEIGHTS, N_VERBS, ToyHOIDetector, VerbNet,  # noqa: E402
                                     pair_features, scene_pairs)


def degrade(img: Image.Image, rng: np.random.Generator, noise: float, blur: float, cast: float) -> np.ndarray:
    """An HxWx3 float image with up to `noise` Gaussian noise (std, 0-255), a Gaussian blur of
    up to `blur` pixels and a colour cast of up to +-`cast` per channel, each drawn uniformly."""
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, blur)))
    a = np.asarray(img, dtype=np.float64)
    a = a + rng.uniform(-cast, cast, 3) + rng.normal(0, rng.uniform(0, noise), a.shape)
    return np.clip(a, 0, 255)


def labelled_pairs(img: np.ndarray, ann: dict):
    """Crops, valid masks and labels (0 = no interaction, else the verb id) of an image's
    detected candidate pairs."""
    inst, pairs, crops, masks = scene_pairs(img)
    gt = ann["annotations"]
    gt_boxes = np.array([a["bbox"] for a in gt], dtype=np.float64)
    match = {}
    for k, i in enumerate(inst):
        ious = box_iou(np.array([i["bbox"]], dtype=np.float64), gt_boxes)[0]
        ious[[a["category_id"] != i["category_id"] for a in gt]] = 0
        if ious.max() >= 0.5:
            match[k] = int(ious.argmax())
    verb_of = {(h["subject_id"], h["object_id"]): h["category_id"] for h in ann["hoi_annotation"]}
    labels = [verb_of.get((match.get(si, -1), match.get(oi, -2)), 0) for si, oi in pairs]
    return crops, masks, labels


def build_data(n_scenes: int, seed: int, size: int, degraded: float = 0.5):
    """(crops fp16 [P,5,CROP,CROP], masks [P,1+N], labels [P], geometry rows for the baseline)."""
    rng = np.random.default_rng([seed, 1])
    C, M, Y, G = [], [], [], []
    for _ in range(n_scenes):
        image, ann, _ = render_scene(rng, size)
        hard = rng.random() < degraded
        img = degrade(image, rng, 12.0, 0.8, 12.0) if hard else np.asarray(image, dtype=np.float64)
        crops, masks, labels = labelled_pairs(img, ann)
        C.append(crops.astype(np.float16))
        M.append(masks)
        Y += labels
        for h in ann["hoi_annotation"]:
            a = ann["annotations"]
            G.append((pair_features(a[h["subject_id"]]["bbox"], a[h["object_id"]]["bbox"]), h["category_id"]))
    return (torch.from_numpy(np.concatenate(C)), torch.from_numpy(np.concatenate(M)),
            torch.tensor(Y, dtype=torch.long), G)


def train(crops, masks, labels, steps: int, seed: int, width: int, batch: int = 128, lr: float = 2e-3) -> VerbNet:
    torch.manual_seed(seed)
    net = VerbNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        logits = net(crops[idx].float()).masked_fill(~masks[idx], -1e9)
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    return net.eval()


@torch.no_grad()
def accuracy(net: VerbNet, crops, masks, labels) -> dict:
    pred = torch.cat([net(crops[i:i + 512].float()).masked_fill(~masks[i:i + 512], -1e9).argmax(1)
                      for i in range(0, len(labels), 512)])
    positive = labels > 0
    return {"pairs": round(float((pred == labels).float().mean()), 4),
            "interacting_pairs_verb": round(float((pred[positive] == labels[positive]).float().mean()), 4)}


def geometry_baseline(train_rows, test_rows, seed: int, steps: int = 1500) -> dict:
    """Per geometry group: accuracy of an MLP on the pair's box geometry alone, choosing among
    the group's verbs, on held-out scenes; chance is 1 / (verbs in the group)."""
    out = {}
    for group in sorted({v.group for v in VERBS}):
        verbs = [v.id for v in VERBS if v.group == group]
        rows = [(f, verbs.index(v)) for f, v in train_rows if v in verbs]
        test = [(f, verbs.index(v)) for f, v in test_rows if v in verbs]
        x = torch.tensor([f for f, _ in rows], dtype=torch.float32)
        y = torch.tensor([c for _, c in rows])
        mean, std = x.mean(0), x.std(0) + 1e-6
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                  torch.nn.ReLU(), torch.nn.Linear(64, len(verbs)))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(net((x - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            xt = torch.tensor([f for f, _ in test], dtype=torch.float32)
            yt = torch.tensor([c for _, c in test])
            acc = float((net((xt - mean) / std).argmax(1) == yt).float().mean())
            train_acc = float((net((x - mean) / std).argmax(1) == y).float().mean())
        out[group] = {"verbs": [VERB_BY_ID[v].name for v in verbs], "chance": round(1 / len(verbs), 3),
                      "test_accuracy": round(acc, 4), "train_accuracy": round(train_acc, 4), "test_pairs": len(test)}
    return out


def measure_map(detector: ToyHOIDetector, data: Path, n: int | None, seed: int) -> dict | None:
    """Default-setting mAP of the full detector on the real toy test images (clean, and with noise,
    blur and a colour cast together), if the data set is there."""
    gt_path = data / "annotations" / "test_hico.json"
    cats = data / "annotations" / "categories.json"
    if not gt_path.is_file() or not cats.is_file():
        return None
    from evaluation.hico_map import HOICategories, evaluate_hoi_map
    gt = json.loads(gt_path.read_text())[:n]
    categories = HOICategories.from_file(cats)
    rng = np.random.default_rng([seed, 9])
    out = {"images": len(gt)}
    for name, (noise, blur, cast) in {"clean": (0, 0, 0), "noise_blur_cast": (10.0, 0.6, 12.0)}.items():
        det = []
        for rec in gt:
            with Image.open(data / "images" / "test" / rec["file_name"]) as im:
                img = degrade(im.convert("RGB"), rng, noise, blur, cast) if noise else np.asarray(im.convert("RGB"))
            d = detector.detect([img])[0]
            d["file_name"] = rec["file_name"]
            det.append(d)
        r = evaluate_hoi_map(gt, det, categories)
        out[name] = {k: round(v, 2) for k, v in r.summary["default"].items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6000)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--width", type=int, default=24, help="channels of the CNN's first layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side of the rendered training scenes")
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--data", default=str(ROOT / "data" / "toy"), help="toy data set for the test mAP")
    ap.add_argument("--eval_images", type=int, default=None, help="test images for the mAP (default all)")
    args = ap.parse_args(argv)
    for name in ("scenes", "steps", "width"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.size < 32:
        ap.error(f"--size {args.size}: the toy world draws at least 32 px")
    if args.eval_images is not None and args.eval_images < 1:
        ap.error(f"--eval_images {args.eval_images}: must be at least 1")
    t0 = time.time()
    crops, masks, labels, geometry = build_data(args.scenes, args.seed, args.size)
    print(f"{len(labels)} pairs ({int((labels > 0).sum())} interacting) from {args.scenes} scenes "
          f"in {time.time() - t0:.0f}s", flush=True)
    val = build_data(1000, args.seed + 1000, args.size)
    net = train(crops, masks, labels, args.steps, args.seed, args.width)
    train_s = time.time() - t0
    heldout = accuracy(net, *val[:3])
    print(f"trained in {train_s:.0f}s; held-out scenes: {json.dumps(heldout)}")
    baseline = geometry_baseline(geometry, val[3], args.seed)
    print("box geometry alone, within each group:", json.dumps(baseline))
    meta = {"seed": args.seed, "steps": args.steps, "scenes": args.scenes, "width": args.width, "size": args.size,
            "data": f"dataset.toy.render_scene({args.size} px, all HOI categories alike), half degraded (noise <= 12, "
                    "blur <= 0.8 px, cast <= 12), through the detector's own instance step",
            "train_seconds": round(train_s, 1), "heldout": heldout, "geometry_only_within_group": baseline}
    m = measure_map(ToyHOIDetector(net, meta), Path(args.data), args.eval_images, args.seed)
    if m is not None:
        print("test mAP (Default):", json.dumps(m))
    meta["test_map_default"] = m
    blob = {"kind": "pixel_cnn", "width": args.width, "crop": CROP, "n_verbs": N_VERBS,
            "state_dict": {k: v.half() for k, v in net.state_dict().items()}, "metadata": meta}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from hoi.io import atomic_save
    atomic_save(blob, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
