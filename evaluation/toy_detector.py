"""A small HOI detector for the toy HOI world (`dataset/toy`), used to measure generated images.

How the toy detector works
--------------------------
The toy world draws every category in its own flat key colour on a pastel background
(`dataset/toy/categories.py`), and every verb with its own pose geometry (`world.py`). The
detector (`evaluation/toy_detector.py`) reads a scene in three steps:

1. **Pixels to categories.** The background colour is estimated (the most common colour,
   refined by a median). Each pixel is compared with every key colour *and with its blends
   with the background*: for key colour k the pixel is projected onto the segment
   background -> k, giving a blend weight alpha and a residual distance. The best key
   minimises residual + 0.3 * (1 - alpha) * |k - background|, so a blurred edge between a
   blue person and the background stays "person" instead of matching some third colour.
   Pixels closer to the background (alpha < 0.5) are background; pixels far from every
   key colour and its blends are "unknown foreground". Skin counts as person, the tape
   colour as box, black details as skateboard (its wheels); a lone black dot (an eye) is
   too small to be an instance.
2. **Categories to instances.** For each object category, its pixels are grouped into
   8-connected components, first bridged across pixels of *other* foreground colours within
   a few pixels (an occluding arm or leg splits a bicycle into pieces; those pieces are
   rejoined, but two same-coloured instances separated by background stay apart). Subjects
   are drawn over their objects, so they are not bridged; instead a subject component that
   holds two or more eyes (black dots enclosed by it: two same-category subjects touching)
   is split between them by geodesic growth from each eye's head. Each component of at
   least a few pixels is one instance; its box is the bounds of its pixels (right/bottom
   exclusive, like the ground truth). Its confidence falls with a poor colour fit (mean
   residual) and a small size.
3. **Pairs to verbs.** Every subject (person, robot, dog) is paired with every object whose
   category forms at least one HOI category with it. A small MLP (`assets/toy_detector.pt`,
   trained by `scripts/train_toy_detector.py` on scenes rendered by the generator, every
   HOI category sampled alike) reads box geometry only - the object's box relative to the
   subject's, mirrored so the object is on the right, scaled by the subject's height, plus
   overlaps and the two categories - and gives probabilities over "no interaction" and the
   verbs that are valid for that pair. Each valid verb becomes one HOI prediction scored
   p(verb) * confidence(subject) * confidence(object), so an uncertain pair or a ragged
   instance ranks low rather than vanishing, and the mAP of a degraded image set degrades
   gracefully. Every valid verb of a pair is emitted (probability floored at 1e-4): a
   low-ranked hypothesis costs little precision and keeps recall reachable. Without
   weights, a fixed prior (uniform over the valid verbs) is used.

Measured on the 1000 real toy test images (HICO-DET 11-point mAP, Default Full / Rare /
Non-rare): 92.4 / 92.2 / 92.4 (Known Object the same: every image holds its objects);
with Gaussian noise sigma 10/255: 91.8; Gaussian blur radius 0.6 px: 89.4; a colour cast of
up to +-12 per channel: 91.7; all three at once: 85.9. About 50 images/s on one CPU thread.
Training the MLP (16000 rendered scenes, 4000 steps) takes about 2.5 minutes on one thread;
the weights are 28 kB in fp16 with their metadata (seed, steps, data, measured mAP).

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
from PIL import Image
from scipy import ndimage

from dataset.toy.categories import BOX_TAPE, DETAIL, HOI_CATEGORIES, OBJECTS, SKIN, VERBS

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "toy_detector.pt"

N_VERBS = len(VERBS)
SUBJECT_IDS = tuple(o.id for o in OBJECTS if o.kind == "subject")
OBJECT_IDS = tuple(o.id for o in OBJECTS if o.kind == "object")
# Pixel labels beyond the object category ids (1-11): black details (eyes, wheels), skin
# (person heads and hands), the box's tape.
DARK, SKIN_LABEL, TAPE_LABEL = 0, 12, 13
PALETTE: tuple[tuple[tuple[int, int, int], int], ...] = (
    tuple((o.colour, o.id) for o in OBJECTS) + ((SKIN, SKIN_LABEL), (BOX_TAPE, TAPE_LABEL), (DETAIL, DARK)))
# the pixel labels that make up each category
PARTS = {o.id: (o.id,) for o in OBJECTS}
PARTS[1] = (1, SKIN_LABEL)
PARTS[5] = (5, TAPE_LABEL)
PARTS[11] = (11, DARK)      # the skateboard's wheels; isolated eyes are too small to count

# valid verbs per (subject category, object category): {(s, o): [verb ids]}
VALID_VERBS: dict[tuple[int, int], list[int]] = {}
for _h in HOI_CATEGORIES:
    VALID_VERBS.setdefault((_h.subject_id, _h.object_id), []).append(_h.verb_id)

BLEND_PENALTY = 0.3      # weight of (1 - alpha) * |key - background| in the colour score
MAX_RESIDUAL = 55.0      # farther than this from every key colour blend: unknown foreground
BG_DISTANCE = 35.0       # unknown pixels closer than this to the background are background
N_FEATURES = 22
VERB_FLOOR = 1e-4        # least probability given to a valid verb of a detected pair


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


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius + radius


def _heads(comp_mask: np.ndarray, labels: np.ndarray, cat: int) -> list[np.ndarray]:
    """Head seeds of one subject component: its eyes (small black dots enclosed by it), each
    grown to its person's skin head or a few pixels of a robot's or dog's head."""
    dark, n = ndimage.label(ndimage.binary_dilation(comp_mask) & (labels == DARK), structure=_EIGHT)
    if n < 2:
        return []
    skin = None
    if cat == 1:
        skin, _ = ndimage.label(comp_mask & (labels == SKIN_LABEL), structure=_EIGHT)
    seeds = []
    for i in range(1, n + 1):
        eye = dark == i
        ring = ndimage.binary_dilation(eye, _EIGHT) & ~eye
        if eye.sum() > 16 or (comp_mask & ring).sum() < 0.5 * ring.sum():
            continue
        seed = (ndimage.binary_dilation(eye, _EIGHT) & comp_mask) | eye
        if skin is not None:
            heads = np.unique(skin[ring])
            seed |= np.isin(skin, heads[heads > 0])
        seeds.append(seed)
    return seeds


def _split_subjects(mask: np.ndarray, labels: np.ndarray, cat: int) -> np.ndarray:
    """Components of a subject mask as an int label image, a component with several heads
    (touching same-category subjects) split between them by geodesic growth from the heads."""
    comp, n = ndimage.label(mask, structure=_EIGHT)
    out = np.zeros_like(comp)
    k = 0
    for i in range(1, n + 1):
        cm = comp == i
        seeds = _heads(cm, labels, cat) if cm.sum() > 20 else []
        if len(seeds) < 2:
            k += 1
            out[cm] = k
            continue
        region = np.zeros_like(comp)
        for j, sd in enumerate(seeds):
            region[sd & (region == 0)] = j + 1
        while True:   # grow every region by one pixel at a time inside the component
            free = cm & (region == 0)
            if not free.any():
                break
            grown = ndimage.grey_dilation(region, footprint=_EIGHT)
            take = free & (grown > 0)
            if not take.any():
                break
            region[take] = grown[take]
        region[cm & (region == 0)] = 1
        for j in range(len(seeds)):
            k += 1
            out[cm & (region == j + 1)] = k
    return out


def find_instances(img: np.ndarray) -> list[dict]:
    """Instances of an HxWx3 float (0-255) image: [{"bbox", "category_id", "score", "mask"}]."""
    h, w = img.shape[:2]
    scale = min(h, w) / 64.0
    min_px = max(3, int(round(3 * scale * scale)))
    labels, resid, _ = classify_pixels(img)
    fg = labels != -1
    bridge = _disk(max(2, int(round(3 * scale))))
    out = []
    for cat in (o.id for o in OBJECTS):
        own = labels == cat
        if not own.any():
            continue
        mask = np.isin(labels, PARTS[cat])
        if cat in SUBJECT_IDS:   # drawn over their objects, so never bridged; touching ones split
            joined = _split_subjects(mask, labels, cat)
        else:   # pieces split by an occluding limb are rejoined across other foreground pixels
            joined = mask | (ndimage.binary_dilation(mask, bridge) & fg)
        if joined.dtype == bool:
            comp, n = ndimage.label(joined, structure=_EIGHT)
        else:
            comp, n = joined, int(joined.max())
        for i in range(1, n + 1):
            m = (comp == i) & mask
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


def pair_features(sbox, scat: int, obox, ocat: int) -> list[float]:
    """Geometry of one (subject, object) pair: the object box relative to the subject's
    (mirrored so the object lies to the right, scaled by the subject's height), sizes,
    overlaps and the two categories."""
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
    f = [(ox1 - scx) / H, (ox2 - scx) / H, (oy1 - sy2) / H, (oy2 - sy2) / H,
         ((ox1 + ox2) / 2 - scx) / H, ((oy1 + oy2) / 2 - sy1) / H,
         sw / H, ow / H, oh / H, math.log(ow / oh), inter / (ow * oh), inter / (sw * H),
         gx / H, gy / H]
    f += [1.0 if scat == s else 0.0 for s in SUBJECT_IDS]
    f += [1.0 if ocat in (4,) else 0.0, 1.0 if ocat in (5,) else 0.0, 1.0 if ocat in (7, 6) else 0.0,
          1.0 if ocat in (8,) else 0.0, 1.0 if ocat in (9, 10, 11) else 0.0]
    return f


class VerbNet(torch.nn.Module):
    """MLP over pair_features -> logits over [no interaction, verb 1..7]."""

    def __init__(self, n_in: int = N_FEATURES, hidden: int = 96):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1 + N_VERBS))

    def forward(self, x):
        return self.net(x)


def valid_mask(scat: int, ocat: int) -> np.ndarray:
    """Bool [1 + N_VERBS]: "no interaction" and the verbs valid for this category pair."""
    m = np.zeros(1 + N_VERBS, dtype=bool)
    m[0] = True
    for v in VALID_VERBS.get((scat, ocat), ()):
        m[v] = True
    return m


# ---------------------------------------------------------------------------------------------
# The detector


def _to_arrays(images) -> list[np.ndarray]:
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
    """Colour-rule instances + a box-geometry verb MLP (see the module docstring)."""

    def __init__(self, net: VerbNet | None = None, metadata: dict | None = None,
                 min_score: float = 0.0):
        self.net = net.eval() if net is not None else None
        self.metadata = metadata or {}
        self.min_score = min_score

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
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = VerbNet(blob.get("n_features", N_FEATURES), blob.get("hidden", 96))
        net.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
        return cls(net, blob.get("metadata", {}))

    def verb_probs(self, feats: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """[P, 1 + N_VERBS] probabilities, zero outside each pair's valid mask."""
        if self.net is None:
            logits = np.zeros(masks.shape)
            logits[:, 0] = 1.0
        else:
            with torch.no_grad():
                logits = self.net(torch.tensor(feats, dtype=torch.float32)).double().numpy()
        logits = np.where(masks, logits, -np.inf)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    def detect_one(self, img: np.ndarray) -> dict:
        inst = find_instances(img)
        preds = [{"bbox": i["bbox"], "category_id": i["category_id"]} for i in inst]
        pairs, feats, masks = [], [], []
        for si, s in enumerate(inst):
            if s["category_id"] not in SUBJECT_IDS:
                continue
            for oi, o in enumerate(inst):
                if (s["category_id"], o["category_id"]) not in VALID_VERBS:
                    continue
                pairs.append((si, oi))
                feats.append(pair_features(s["bbox"], s["category_id"], o["bbox"], o["category_id"]))
                masks.append(valid_mask(s["category_id"], o["category_id"]))
        hois = []
        if pairs:
            probs = self.verb_probs(np.array(feats), np.array(masks))
            for (si, oi), p in zip(pairs, probs):
                conf = inst[si]["score"] * inst[oi]["score"]
                for v in VALID_VERBS[(inst[si]["category_id"], inst[oi]["category_id"])]:
                    # every valid verb is kept (floored): a low-ranked hypothesis still adds recall
                    sc = float(max(p[v], VERB_FLOOR) * conf)
                    if sc >= self.min_score:
                        hois.append({"subject_id": si, "object_id": oi, "category_id": v,
                                     "score": round(sc, 6)})
        hois.sort(key=lambda h: -h["score"])
        return {"file_name": None, "predictions": preds, "hoi_prediction": hois}

    def detect(self, images) -> list[dict]:
        """HOI detections of a batch: uint8 tensor [B,3,H,W] (or float in [0,1]), or a list of
        PIL images / HxWx3 arrays. One dict per image, file_name None."""
        return [self.detect_one(a) for a in _to_arrays(images)]

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
        try:
            from evaluation.hico_map import HOICategories, evaluate_hoi_map
        except ImportError:
            return 0
        r = evaluate_hoi_map(gt, det, HOICategories.from_file(cats))
        print(r.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
