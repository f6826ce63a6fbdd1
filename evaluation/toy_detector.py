"""A small HOI detector for the toy HOI world (`dataset/toy`), used to measure generated images.

How the toy detector works
--------------------------
The toy world draws every category in its own flat key colour on a pastel background
(`dataset/toy/categories.py`), and every verb as a pose of the subject; the verbs of one
geometry group put the object in the same place, so the pose is all that tells them apart
(docs/toy_world.md). The detector reads a scene in three steps:

1. **Pixels to categories.** The background colour is estimated (the most common colour,
   refined by a median). Each pixel is compared with every key colour *and with its blends
   with the background*: for key colour k the pixel is projected onto the segment
   background -> k, giving a blend weight alpha and a residual distance. The best key
   minimises residual + 0.3 * (1 - alpha) * |k - background|, so a blurred edge between a
   blue person and the background stays "person" instead of matching some third colour.
   Pixels closer to the background (alpha < 0.5) are background; pixels far from every
   key colour and its blends are "unknown foreground". Skin counts as person.
2. **Categories to instances.** Each category's pixels are grouped into 8-connected
   components (the world keeps interactions apart, so touching same-category instances do
   not occur in real scenes). Each component of at least a few pixels is one instance; its
   box is the bounds of its pixels (right/bottom exclusive, like the ground truth). Its
   confidence falls with a poor colour fit (mean residual) and a small size.
3. **Pairs to verbs, from pixels.** Every subject is paired with every object. The pair's
   pixels are cut out (the box around both, plus a margin, mirrored so that the object lies
   to the right, padded to a square and resized to 32x32) with two more channels, the
   subject's and the object's masks, and a small CNN (`assets/toy_detector.pt`, trained by
   `scripts/train_toy_detector.py` on rendered scenes put through steps 1-2, degraded by
   noise, blur and colour casts) gives probabilities over "no interaction" and the verbs.
   Each verb becomes one HOI prediction scored p(verb) * confidence(subject) *
   confidence(object), so an uncertain pair or a ragged instance ranks low rather than
   vanishing, and the mAP of a degraded image set degrades gracefully. Every verb of a pair is
   emitted (probability floored at 1e-4): a low-ranked hypothesis costs little precision and
   keeps recall reachable. Without weights, a uniform verb prior is used.

The verb comes from the subject's pose, not from the boxes: within a geometry group a
classifier on the pair's box geometry alone is at chance (the training script measures it).
The measured mAP and its conditions are in the weights' metadata (`ToyHOIDetector.metadata`)
and in docs/toy_world.md.

Output layout (one dict per image, the common HOI detector layout):
`{"file_name", "predictions": [{"bbox": [x1, y1, x2, y2], "category_id"}],
"hoi_prediction": [{"subject_id", "object_id", "category_id" (verb), "score"}]}`.

    python -m evaluation.toy_detector --images data/toy/images/test \
        --gt data/toy/annotations/test_hico.json --out detections.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from dataset.toy.categories import HOI_CATEGORIES, OBJECTS, SKIN, VERBS
from hoi.pickles import RefusedPickle, UnreadablePickle, load_torch

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "toy_detector.pt"

N_VERBS = len(VERBS)
SUBJECT_IDS = tuple(o.id for o in OBJECTS if o.kind == "subject")
OBJECT_IDS = tuple(o.id for o in OBJECTS if o.kind == "object")
SKIN_LABEL = max(o.id for o in OBJECTS) + 1   # a pixel label beyond the category ids
PALETTE: tuple[tuple[tuple[int, int, int], int], ...] = tuple((o.colour, o.id) for o in OBJECTS) + ((SKIN, SKIN_LABEL),)
# the pixel labels that make up each category
PARTS = {o.id: (o.id,) for o in OBJECTS}
PARTS[1] = (1, SKIN_LABEL)

# valid verbs per (subject category, object category): {(s, o): [verb ids]}
VALID_VERBS: dict[tuple[int, int], list[int]] = {}
for _h in HOI_CATEGORIES:
    VALID_VERBS.setdefault((_h.subject_id, _h.object_id), []).append(_h.verb_id)

BLEND_PENALTY = 0.3      # weight of (1 - alpha) * |key - background| in the colour score
MAX_RESIDUAL = 55.0      # farther than this from every key colour blend: unknown foreground
BG_DISTANCE = 35.0       # unknown pixels closer than this to the background are background
VERB_FLOOR = 1e-4        # least probability given to a valid verb of a detected pair
CROP = 32                # side of the pair crop the verb CNN reads
CROP_MARGIN = 0.08       # margin around the pair's box, as a fraction of its longer side
N_GEOMETRY = 14          # pair_features without the categories (the geometry-only baseline)


# ---------------------------------------------------------------------------------------------
# Step 1: pixels to category labels


def estimate_background(img: np.ndarray) -> np.ndarray:
    """The background colour of an HxWx3 float image: the most common 16-level colour bin,
    refined by the median of the pixels near it."""
    q = np.clip(img // 16, 0, 15).astype(np.int64)
    key = (q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]).ravel()
    top = np.bincount(key, minlength=4096).argmax()
    flat = img.reshape(-1, 3)
    centre = flat[key == top].mean(0)
    near = flat[np.linalg.norm(flat - centre, axis=1) < 30]
    return np.median(near, axis=0) if len(near) else centre


def classify_pixels(img: np.ndarray, bg: np.ndarray | None = None):
    """Label every pixel of an HxWx3 float (0-255) image. Returns (labels, residual, bg):
    labels int [H, W] with -1 background, -2 unknown foreground, else a PALETTE label;
    residual float [H, W], the colour fit distance."""
    bg = estimate_background(img) if bg is None else bg
    keys = np.array([c for c, _ in PALETTE], dtype=np.float64)
    labels_of = np.array([lab for _, lab in PALETTE])
    p = img.reshape(-1, 3).astype(np.float64) - bg                     # [N, 3]
    v = keys - bg                                                        # [K, 3]
    vv = np.maximum((v * v).sum(1), 1e-6)
    alpha = np.clip(p @ v.T / vv, 0.0, 1.0)                              # [N, K]
    resid = np.linalg.norm(p[:, None, :] - alpha[..., None] * v[None], axis=2)
    score = resid + BLEND_PENALTY * (1.0 - alpha) * np.sqrt(vv)
    best = score.argmin(1)
    rows = np.arange(len(p))
    a, r = alpha[rows, best], resid[rows, best]
    lab = labels_of[best].copy()
    far_from_bg = np.linalg.norm(p, axis=1) > BG_DISTANCE
    lab[a < 0.5] = -1
    lab[(r > MAX_RESIDUAL)] = -2
    lab[(r > MAX_RESIDUAL) & ~far_from_bg] = -1
    h, w = img.shape[:2]
    return lab.reshape(h, w), r.reshape(h, w), bg


# ---------------------------------------------------------------------------------------------
# Step 2: labels to instances

_EIGHT = np.ones((3, 3), dtype=bool)


def find_instances(img: np.ndarray, labels=None) -> list[dict]:
    """Instances of an HxWx3 float (0-255) image: [{"bbox", "category_id", "score", "mask"}].
    `labels`: classify_pixels' output when already computed."""
    h, w = img.shape[:2]
    scale = min(h, w) / 64.0
    min_px = max(3, int(round(3 * scale * scale)))
    labels, resid, _ = classify_pixels(img) if labels is None else labels
    out = []
    for cat in (o.id for o in OBJECTS):
        own = labels == cat
        if not own.any():
            continue
        mask = np.isin(labels, PARTS[cat])
        comp, n = ndimage.label(mask, structure=_EIGHT)
        for i in range(1, n + 1):
            m = comp == i
            npx = int(m.sum())
            n_own = int((m & own).sum())
            if npx < min_px or n_own < max(1, npx // 3):
                continue
            ys, xs = np.nonzero(m)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            fit = float(np.exp(-resid[m].mean() / 40.0))
            size = min(1.0, npx / (4.0 * min_px))
            out.append({"bbox": [x1, y1, x2, y2], "category_id": cat,
                        "score": max(0.02, fit * size), "mask": m})
    return out


# ---------------------------------------------------------------------------------------------
# Step 3: pairs to verbs


def pair_crop(img: np.ndarray, bg: np.ndarray, smask: np.ndarray, sbox, omask: np.ndarray, obox) -> np.ndarray:
    """[5, CROP, CROP] float32: the pair's pixels (minus the background colour, /255) and the
    subject and object masks, in the box around both plus a margin, mirrored so the object's
    centre is right of the subject's, padded to a square (with background) and resized."""
    x0, y0 = min(sbox[0], obox[0]), min(sbox[1], obox[1])
    x1, y1 = max(sbox[2], obox[2]), max(sbox[3], obox[3])
    side = max(x1 - x0, y1 - y0)
    side = side + 2 * max(1.0, CROP_MARGIN * side)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    n = int(math.ceil(side))
    stack = np.concatenate([(img - bg) / 255.0, smask[..., None], omask[..., None]], axis=2).astype(np.float32)
    canvas = np.zeros((n, n, 5), np.float32)
    h, w = img.shape[:2]
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + n, w), min(top + n, h)
    canvas[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = stack[sy0:sy1, sx0:sx1]
    if (obox[0] + obox[2]) < (sbox[0] + sbox[2]):
        canvas = canvas[:, ::-1]
    t = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(CROP, CROP), mode="area")[0].numpy()


def pair_features(sbox, obox) -> list[float]:
    """Box geometry of one (subject, object) pair, for the geometry-only baseline: the object box
    relative to the subject's (mirrored so the object lies to the right, scaled by the subject's
    height), sizes, overlaps and gaps."""
    sx1, sy1, sx2, sy2 = (float(v) for v in sbox)
    ox1, oy1, ox2, oy2 = (float(v) for v in obox)
    H = max(sy2 - sy1, 1.0)
    scx = (sx1 + sx2) / 2
    if (ox1 + ox2) / 2 < scx:   # mirror about the subject's centre
        ox1, ox2 = 2 * scx - ox2, 2 * scx - ox1
    sw, ow, oh = sx2 - sx1, max(ox2 - ox1, 1.0), max(oy2 - oy1, 1.0)
    iw = max(0.0, min(sx2, ox2) - max(sx1, ox1))
    ih = max(0.0, min(sy2, oy2) - max(sy1, oy1))
    inter = iw * ih
    gx = max(0.0, ox1 - sx2)
    gy = max(0.0, sy1 - oy2, oy1 - sy2)
    return [(ox1 - scx) / H, (ox2 - scx) / H, (oy1 - sy2) / H, (oy2 - sy2) / H,
            ((ox1 + ox2) / 2 - scx) / H, ((oy1 + oy2) / 2 - sy1) / H,
            sw / H, ow / H, oh / H, math.log(ow / oh), inter / (ow * oh), inter / (sw * H), gx / H, gy / H]


class VerbNet(torch.nn.Module):
    """CNN over a pair crop [5, CROP, CROP] -> logits over [no interaction, verb 1..N]."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(5, c, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),        # 16
            torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),    # 8
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),  # 4
            torch.nn.Flatten(), torch.nn.Linear(2 * c * 16, 4 * c), torch.nn.ReLU(),
            torch.nn.Linear(4 * c, 1 + N_VERBS))

    def forward(self, x):
        return self.net(x)


def valid_mask(scat: int, ocat: int) -> np.ndarray:
    """Bool [1 + N_VERBS]: "no interaction" and the verbs valid for this category pair."""
    m = np.zeros(1 + N_VERBS, dtype=bool)
    m[0] = True
    for v in VALID_VERBS.get((scat, ocat), ()):
        m[v] = True
    return m


def scene_pairs(img: np.ndarray, labels=None):
    """Instances of one image and every (subject, object) candidate pair with its crop and
    valid-verb mask: (instances, [(si, oi)], crops [P, 5, CROP, CROP], masks [P, 1 + N_VERBS])."""
    labels = classify_pixels(img) if labels is None else labels
    bg = labels[2]
    inst = find_instances(img, labels)
    pairs, crops, masks = [], [], []
    for si, s in enumerate(inst):
        if s["category_id"] not in SUBJECT_IDS:
            continue
        for oi, o in enumerate(inst):
            if (s["category_id"], o["category_id"]) not in VALID_VERBS:
                continue
            pairs.append((si, oi))
            crops.append(pair_crop(img, bg, s["mask"], s["bbox"], o["mask"], o["bbox"]))
            masks.append(valid_mask(s["category_id"], o["category_id"]))
    crops = np.stack(crops) if crops else np.zeros((0, 5, CROP, CROP), np.float32)
    return inst, pairs, crops, np.array(masks, dtype=bool).reshape(-1, 1 + N_VERBS)


# ---------------------------------------------------------------------------------------------
# The detector


def to_arrays(images) -> list[np.ndarray]:
    """uint8/float tensor [B,3,H,W] (float in [0,1]), a list of PIL images, or HxWx3 arrays
    -> list of HxWx3 float64 arrays in 0..255."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images[None]
        x = images.detach().cpu()
        x = x.double() if x.dtype == torch.uint8 else x.double().clamp(0, 1) * 255.0
        return [a.permute(1, 2, 0).numpy() for a in x]
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(np.asarray(im.convert("RGB"), dtype=np.float64))
        else:
            a = np.asarray(im)
            out.append(a.astype(np.float64) * (255.0 if a.dtype.kind == "f" and a.max() <= 1.0 else 1.0))
    return out


class ToyHOIDetector:
    """Colour-rule instances + a pixel CNN for each pair's verb (see the module docstring)."""

    def __init__(self, net: VerbNet | None = None, metadata: dict | None = None, min_score: float = 0.0,
                 path: Path | None = None):
        self.net = net.eval() if net is not None else None
        self.metadata = metadata or {}
        self.min_score = min_score
        self.path = path   # the weights file, when loaded from one

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ToyHOIDetector":
        """The detector with weights from `path` (default: the shipped assets/toy_detector.pt;
        without it, a uniform verb prior)."""
        if path is None:
            path = DEFAULT_WEIGHTS
            if not path.is_file():
                return cls()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"toy detector weights not found: {path} "
                                    "(train them with python scripts/train_toy_detector.py)")
        try:
            blob = load_torch(path)
        except (RefusedPickle, UnreadablePickle) as err:
            raise ValueError(f"{path}: {err}; not weights of this toy detector") from None
        if not isinstance(blob, dict) or blob.get("kind") != "pixel_cnn":
            raise ValueError(f"{path}: not weights of this toy detector (a pixel CNN); retrain them with "
                             "python scripts/train_toy_detector.py")
        net = VerbNet(blob["width"])
        net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        return cls(net, blob.get("metadata", {}), path=path)

    def verb_probs(self, crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """[P, 1 + N_VERBS] probabilities, zero outside each pair's valid mask."""
        if self.net is None:
            logits = np.zeros(masks.shape)
        else:
            with torch.no_grad():
                logits = self.net(torch.from_numpy(crops)).double().numpy()
        logits = np.where(masks, logits, -np.inf)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    def detect_one(self, img: np.ndarray) -> dict:
        inst, pairs, crops, masks = scene_pairs(img)
        preds = [{"bbox": i["bbox"], "category_id": i["category_id"]} for i in inst]
        hois = []
        if pairs:
            probs = self.verb_probs(crops, masks)
            for (si, oi), p in zip(pairs, probs):
                conf = inst[si]["score"] * inst[oi]["score"]
                for v in VALID_VERBS[(inst[si]["category_id"], inst[oi]["category_id"])]:
                    # every valid verb is kept (floored): a low-ranked hypothesis still adds recall
                    sc = float(max(p[v], VERB_FLOOR) * conf)
                    if sc >= self.min_score:
                        hois.append({"subject_id": si, "object_id": oi, "category_id": v, "score": round(sc, 6)})
        hois.sort(key=lambda h: -h["score"])
        return {"file_name": None, "predictions": preds, "hoi_prediction": hois}

    def detect(self, images) -> list[dict]:
        """HOI detections of a batch: uint8 tensor [B,3,H,W] (or float in [0,1]), or a list of
        PIL images / HxWx3 arrays. One dict per image, file_name None."""
        return [self.detect_one(a) for a in to_arrays(images)]

    def detect_folder(self, folder: str | Path, gt_records: list[dict], progress: bool = False) -> list[dict]:
        """Detections for the images named by `gt_records` (their "file_name") in `folder`."""
        folder = Path(folder)
        out = []
        records = gt_records
        if progress:
            from tqdm import tqdm
            records = tqdm(gt_records, unit="img", desc="toy detector")
        for rec in records:
            with Image.open(folder / rec["file_name"]) as im:
                det = self.detect([im.convert("RGB")])[0]
            det["file_name"] = rec["file_name"]
            out.append(det)
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the toy HOI detector over a folder of images.")
    ap.add_argument("--images", required=True, help="folder of the images named in --gt")
    ap.add_argument("--gt", required=True, help="HICO-DET-style JSON whose records name the images")
    ap.add_argument("--out", required=True, help="detections JSON to write")
    ap.add_argument("--weights", default=None, help="verb weights (default: assets/toy_detector.pt)")
    ap.add_argument("--categories", default=None,
                    help="categories.json; when given (or found beside --gt), the mAP is printed")
    args = ap.parse_args(argv)
    gt = json.loads(Path(args.gt).read_text())
    det = ToyHOIDetector.load(args.weights).detect_folder(args.images, gt, progress=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(det) + "\n")
    print(f"wrote {len(det)} records to {args.out}")
    cats = Path(args.categories) if args.categories else Path(args.gt).parent / "categories.json"
    if cats.is_file():
        from evaluation.hico_map import HOICategories, evaluate_hoi_map
        r = evaluate_hoi_map(gt, det, HOICategories.from_file(cats))
        print(r.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
