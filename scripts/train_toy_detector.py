"""Train the toy HOI detector's verb MLP (evaluation/toy_detector.py) and write assets/toy_detector.pt.

The MLP reads box geometry only, so its training data are the ground-truth boxes of scenes
rendered by the toy world's generator (`dataset.toy.render_scene`, every HOI category sampled
alike), each pair also seen with its box edges jittered by a pixel. Deterministic by --seed;
about two minutes on one CPU thread.

    OMP_NUM_THREADS=1 python scripts/train_toy_detector.py [--scenes 16000 --steps 4000 --seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.toy import render_scene  # noqa: E402
from evaluation.toy_detector import (DEFAULT_WEIGHTS, N_FEATURES, SUBJECT_IDS, VALID_VERBS,  # noqa: E402
                                     ToyHOIDetector, VerbNet, pair_features, valid_mask)


def scene_pairs(ann: dict, rng: np.random.Generator, jitter: int):
    """(features, valid masks, labels) of every plausible (subject, object) pair of one scene;
    label 0 is "no interaction", else the verb id."""
    anns = ann["annotations"]
    verb_of = {(h["subject_id"], h["object_id"]): h["category_id"] for h in ann["hoi_annotation"]}
    size = ann["width"]
    boxes = []
    for a in anns:
        b = np.array(a["bbox"], dtype=np.float64)
        if jitter:
            b = b + rng.integers(-jitter, jitter + 1, 4)
            b[2], b[3] = max(b[2], b[0] + 1), max(b[3], b[1] + 1)
            b = np.clip(b, 0, size)
        boxes.append(b)
    feats, masks, labels = [], [], []
    for si, s in enumerate(anns):
        if s["category_id"] not in SUBJECT_IDS:
            continue
        for oi, o in enumerate(anns):
            key = (s["category_id"], o["category_id"])
            if key not in VALID_VERBS:
                continue
            feats.append(pair_features(boxes[si], key[0], boxes[oi], key[1]))
            masks.append(valid_mask(*key))
            labels.append(verb_of.get((si, oi), 0))
    return feats, masks, labels


def build_data(n_scenes: int, seed: int):
    rng = np.random.default_rng([seed, 1])
    jit = np.random.default_rng([seed, 2])
    F, M, Y = [], [], []
    for i in range(n_scenes):
        _, ann, _ = render_scene(rng, 64)
        for jitter in (0, 1):
            f, m, y = scene_pairs(ann, jit, jitter)
            F += f
            M += m
            Y += y
    return (torch.tensor(np.array(F), dtype=torch.float32), torch.tensor(np.array(M)),
            torch.tensor(Y, dtype=torch.long))


def train(feats, masks, labels, steps: int, seed: int, batch: int = 512, lr: float = 3e-3) -> VerbNet:
    torch.manual_seed(seed)
    net = VerbNet(N_FEATURES)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        logits = net(feats[idx]).masked_fill(~masks[idx], -1e9)
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == steps - 1:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    return net.eval()


def accuracy(net: VerbNet, feats, masks, labels) -> float:
    with torch.no_grad():
        pred = net(feats).masked_fill(~masks, -1e9).argmax(1)
    return float((pred == labels).float().mean())


def measure_map(net: VerbNet, data: Path, n: int | None) -> dict | None:
    """Default-setting mAP of the full detector on the real toy test images, if available."""
    gt_path = data / "annotations" / "test_hico.json"
    cats = data / "annotations" / "categories.json"
    try:
        from evaluation.hico_map import HOICategories, evaluate_hoi_map
    except ImportError:
        return None
    if not gt_path.is_file() or not cats.is_file():
        return None
    gt = json.loads(gt_path.read_text())[:n]
    det = ToyHOIDetector(net).detect_folder(data / "images" / "test", gt)
    r = evaluate_hoi_map(gt, det, HOICategories.from_file(cats))
    return {"images": len(gt), "default": r.summary["default"], "known_object": r.summary.get("known_object")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=16000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--data", default=str(ROOT / "data" / "toy"), help="toy data set for the test mAP")
    ap.add_argument("--eval_images", type=int, default=None, help="test images for the mAP (default all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    feats, masks, labels = build_data(args.scenes, args.seed)
    print(f"{len(labels)} pairs from {args.scenes} scenes in {time.time() - t0:.0f}s", flush=True)
    val = build_data(1000, args.seed + 1000)
    net = train(feats, masks, labels, args.steps, args.seed)
    train_s = time.time() - t0
    print(f"trained in {train_s:.0f}s; pair accuracy on held-out scenes {accuracy(net, *val):.4f}")
    m = measure_map(net, Path(args.data), args.eval_images)
    if m is not None:
        print("test mAP:", json.dumps(m))
    meta = {"seed": args.seed, "steps": args.steps, "scenes": args.scenes,
            "data": "dataset.toy.render_scene(64 px, all 31 HOI categories uniformly), GT boxes, +-1 px jitter",
            "train_seconds": round(train_s, 1), "heldout_pair_accuracy": round(accuracy(net, *val), 4),
            "test_map": m}
    blob = {"state_dict": {k: v.half() for k, v in net.state_dict().items()},
            "n_features": N_FEATURES, "hidden": net.net[0].out_features, "metadata": meta}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
