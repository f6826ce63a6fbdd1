"""The toy HOI world: procedural scenes of figures interacting with objects.

A scene is built in three steps:
1. plan (`plan_image`): which HOI categories appear. Cheap, no drawing, so the category counts
   of a whole split can be computed without rendering.
2. layout: each interaction is built as a *group* (subject posed for the verb, object placed by
   the verb's geometry group; local coordinates with the subject's feet at the origin), then
   placed by rejection sampling with a gap between groups (a grid fallback guarantees every
   planned interaction is placed, so plans and images always agree).
3. draw: every instance is drawn into the image and into its own mask with the same primitive
   calls (flat key colours, no anti-aliasing), so its box is exactly the bounds of its pixels.

Geometry is in units of `u`, the height of a subject in pixels, a fraction of the image size,
so the drawing scales with `--size`. Every pose reaches the same extent (one limb ends at
`REACH` in front, the back arm at the same place behind), so a subject's box does not depend on
its verb; the verbs of one geometry group place the object alike, so their pairs' boxes come
from one distribution and only the pose tells them apart (docs/toy_world.md).

Determinism: image `index` of `split` depends only on (seed, split, index): its plan comes from
a hash of those, its drawing from a numpy generator seeded with [seed, split code, index]. Rare
categories are placed at fixed train indices (see `rare_schedule`), so a shorter train split is
always a prefix of a longer one.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .categories import (HOI_BY_ID, HOI_CATEGORIES, OBJECT_BY_NAME, RARE_SPAN, RGB, SKIN, VERB_BY_NAME,
                         group_partners, hoi_names)

Point = tuple[float, float]

SPLITS = {"train": 0, "test": 1}
# Image side in pixels. 32: each 2x2 patch of the toy model's first stage holds 12 values, few
# enough that a 2-core CPU learns to denoise them cleanly within an hour (docs/toy_world.md has
# the measurements against 48 and 64); every drawing scales with the size.
DEFAULT_SIZE = 32
MAX_INTERACTIONS = 3
N_INTERACTIONS_P = (0.25, 0.45, 0.30)   # P(1, 2, 3 interactions)
# P(the second interaction is the first's group partner: same subject and object categories,
# the other verb of the same geometry group). Such an image's caption names both verbs, and
# only the binding of each verb to its own pair says which subject does which.
TWIN_P = 0.5
# Subject height as a fraction of the image size, by the number of interactions.
SCALE_RANGE = {1: (0.58, 0.74), 2: (0.44, 0.56), 3: (0.36, 0.44)}
GAP = 2        # pixels kept free between two interactions
MARGIN = 1     # pixels kept free at the image border

# The figure, in units of u (y up from the feet is negative: image rows grow downward).
HEAD_R = 0.11
SHOULDER_Y = -0.74
HIP_Y = -0.45
REACH = 0.34            # where the reaching limb ends, in front of the body axis
REST_HAND = (0.10, -0.46)   # a hanging arm's hand (x toward the facing side for the front arm)
FOOT_X = 0.09           # standing feet, either side of the body axis


def colour(name: str) -> RGB:
    return OBJECT_BY_NAME[name].colour


# ---------------------------------------------------------------------------------------------
# Shapes and instances


@dataclass
class Shape:
    """One drawing primitive. `xy` is flat: points for line/poly, (cx, cy, r) for disc,
    (x0, y0, x1, y1) for rect."""
    kind: str
    xy: tuple[float, ...]
    fill: RGB
    width: int = 1

    def moved(self, dx: float, dy: float) -> "Shape":
        if self.kind == "disc":
            cx, cy, r = self.xy
            xy = (cx + dx, cy + dy, r)
        else:
            xy = tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(self.xy))
        return Shape(self.kind, xy, self.fill, self.width)

    def bounds(self) -> tuple[float, float, float, float]:
        if self.kind == "disc":
            cx, cy, r = self.xy
            return cx - r, cy - r, cx + r, cy + r
        xs, ys = self.xy[0::2], self.xy[1::2]
        pad = self.width / 2 if self.kind == "line" else 0.0
        return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad

    def draw(self, draw: ImageDraw.ImageDraw, fill) -> None:
        k, xy = self.kind, self.xy
        if k == "line":
            draw.line(list(xy), fill=fill, width=self.width)
        elif k == "poly":
            draw.polygon(list(xy), fill=fill)
        elif k == "rect":
            draw.rectangle(list(xy), fill=fill)
        elif k == "disc":
            cx, cy, r = xy
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            raise ValueError(f"unknown shape {k!r}")


@dataclass
class Instance:
    """A drawable thing of one category, with named points (hand, foot, ...) for tests."""
    category: str
    shapes: list[Shape] = field(default_factory=list)
    points: dict[str, Point] = field(default_factory=dict)

    def translate(self, dx: float, dy: float) -> None:
        self.shapes = [s.moved(dx, dy) for s in self.shapes]
        self.points = {k: (x + dx, y + dy) for k, (x, y) in self.points.items()}

    def bounds(self) -> tuple[float, float, float, float]:
        return _union([s.bounds() for s in self.shapes])


def _union(boxes):
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


def limb_width(u: float) -> int:
    """Arms and legs share one width (whole pixels, at least 2), so whichever limb reaches
    out, the subject's box is the same."""
    return max(2, int(round(0.085 * u)))


def _limb(a: Point, b: Point, width: int, fill: RGB) -> list[Shape]:
    # Round caps: a joint reads as one body, and the limb's extent is its end point +- width/2
    # whatever its angle.
    return [Shape("line", (*a, *b), fill, width)] + [Shape("disc", (*p, width / 2), fill) for p in (a, b)]


# ---------------------------------------------------------------------------------------------
# Subjects. Local frame: the feet on y = 0, y grows downward, d = +1 faces right, -1 left.

def _at(u: float, d: int, x: float, y: float) -> Point:
    """A point given in units of u, x toward the facing side, in pixels."""
    return d * x * u, y * u


# Each verb's pose moves one limb end away from the rest pose; the others hang or stand.
# {verb: (which limb end, where it goes as a function of (u, d, limb width))}
def _hold(u: float, d: int, w: int) -> Point:
    return _at(u, d, REACH, SHOULDER_Y)    # front arm straight out at shoulder height


def _wave_at(u: float, d: int, w: int) -> Point:
    return d * REACH * u, -u + w / 2 + 0.02 * u   # raised to the top of the head


def _kick(u: float, d: int, w: int) -> Point:
    return _at(u, d, REACH, -0.17)         # front leg swung forward


def _point_at(u: float, d: int, w: int) -> Point:
    return _at(u, d, REACH, -0.30)         # front arm pointing down


POSE_LIMB: dict[str, tuple[str, Callable[[float, int, int], Point]]] = {
    "hold": ("hand", _hold),
    "wave at": ("hand", _wave_at),
    "kick": ("foot", _kick),
    "point at": ("hand", _point_at),
}
POSES = tuple(POSE_LIMB)


def pose_points(verb: str, u: float, d: int) -> dict[str, Point]:
    """The end points of the four limbs for a verb: front/back hand, front/back foot."""
    if verb not in POSE_LIMB:
        raise KeyError(f"no pose for verb {verb!r}")
    w = limb_width(u)
    ground = -w / 2    # a standing foot's stroke ends on the ground line
    points = {"hand": _at(u, d, *REST_HAND), "hand2": _at(u, d, -REST_HAND[0], REST_HAND[1]),
              "foot": (d * FOOT_X * u, ground), "foot2": (-d * FOOT_X * u, ground)}
    limb, place = POSE_LIMB[verb]
    points[limb] = place(u, d, w)
    return points


def figure(kind: str, verb: str, u: float, d: int) -> Instance:
    """A person (blue body, skin head) or a robot (grey, square head) posed for `verb`."""
    w = limb_width(u)
    c = colour(kind)
    p = pose_points(verb, u, d)
    hip, shoulder = (0.0, HIP_Y * u), (0.0, SHOULDER_Y * u)
    neck = (0.0, (-1 + 2 * HEAD_R) * u)
    head = (0.0, (-1 + HEAD_R) * u)
    torso_w = max(3, int(round(0.15 * u))) + (1 if kind == "robot" else 0)
    s: list[Shape] = []
    for foot in (p["foot2"], p["foot"]):
        s += _limb(hip, foot, w, c)
    s.append(Shape("line", (*hip, *neck), c, torso_w))
    for hand in (p["hand2"], p["hand"]):
        s += _limb(shoulder, hand, w, c)
    r = HEAD_R * u
    if kind == "person":
        s.append(Shape("disc", (*head, r), SKIN))
    else:
        s.append(Shape("rect", (head[0] - r, head[1] - r, head[0] + r, head[1] + r), c))
    return Instance(kind, s, {"head": head, "shoulder": shoulder, "hip": hip, **p})


# ---------------------------------------------------------------------------------------------
# Objects. Local frame: centred on the origin.


def _ball(s: float) -> tuple[Shape, ...]:
    return (Shape("disc", (0.0, 0.0, 0.135 * s), colour("ball")),)


def _box(s: float) -> tuple[Shape, ...]:
    h = 0.13 * s
    return (Shape("rect", (-h, -h, h, h), colour("box")),)


def _kite(s: float) -> tuple[Shape, ...]:
    w, h = 0.13 * s, 0.17 * s
    return (Shape("poly", (0.0, -h, w, 0.0, 0.0, h, -w, 0.0), colour("kite")),)


# {object name: its shapes for a nominal size s}
OBJECT_SHAPES: dict[str, Callable[[float], tuple[Shape, ...]]] = {"ball": _ball, "box": _box, "kite": _kite}


def make_object(name: str, s: float) -> Instance:
    """An object of nominal size s (pixels, comparable to a subject's height u)."""
    if name not in OBJECT_SHAPES:
        raise KeyError(f"unknown toy object {name!r}")
    return Instance(name, list(OBJECT_SHAPES[name](s)), {"centre": (0.0, 0.0)})


def _hand_height(u: float, half_h: float, rng: np.random.Generator) -> float:
    return SHOULDER_Y * u + rng.uniform(-0.04, 0.04) * u


def _ground_height(u: float, half_h: float, rng: np.random.Generator) -> float:
    return -half_h    # resting on the ground line


# {geometry group: the object's centre height in the subject's frame}
GROUP_HEIGHT: dict[str, Callable[[float, float, np.random.Generator], float]] = {
    "hand": _hand_height, "ground": _ground_height}


def place_object(o: Instance, group: str, u: float, d: int, rng: np.random.Generator) -> None:
    """Put the object where its verb's geometry group says, in the subject's frame. The draw
    depends on the group only, never on the verb."""
    if group not in GROUP_HEIGHT:
        raise KeyError(f"unknown geometry group {group!r}")
    b = o.bounds()
    half_w, half_h = (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
    w = limb_width(u)
    near_edge = REACH * u + w / 2 + rng.uniform(-0.01, 0.05) * u   # just past the reaching limb
    y = GROUP_HEIGHT[group](u, half_h, rng)
    o.translate(d * (near_edge + half_w), y)


# ---------------------------------------------------------------------------------------------
# Groups: one subject posed for one verb with its object.


@dataclass
class Group:
    hoi: int
    subject: Instance
    object: Instance

    def bounds(self):
        return _union([self.subject.bounds(), self.object.bounds()])

    def translate(self, dx, dy):
        self.subject.translate(dx, dy)
        self.object.translate(dx, dy)


def build_group(hoi: int, u: float, d: int, rng: np.random.Generator) -> Group:
    """Subject and object of one HOI category, posed for the verb, subject's feet at the origin."""
    subj, verb, obj = hoi_names(hoi)
    o = make_object(obj, u * rng.uniform(0.9, 1.1))
    place_object(o, VERB_BY_NAME[verb].group, u, d, rng)
    return Group(hoi, figure(subj, verb, u, d), o)


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Plan:
    hois: tuple[int, ...]


def rare_schedule() -> dict[int, list[int]]:
    """{train image index: rare HOI ids placed there}. Rare category k (0-based among the rare
    ones) with quota q goes to images floor((m + 0.5) * RARE_SPAN / q) + k, m < q: its count
    is exactly q in any train split of RARE_SPAN images or more, and the same schedule
    restricted to the prefix for fewer (a shorter split is a prefix of a longer one)."""
    out: dict[int, list[int]] = {}
    rare = [h for h in HOI_CATEGORIES if h.rare]
    for k, h in enumerate(rare):
        for m in range(h.quota):
            out.setdefault(int((m + 0.5) * RARE_SPAN / h.quota) + k, []).append(h.id)
    return out


_RARE_AT = rare_schedule()
_COMMON = tuple(h.id for h in HOI_CATEGORIES if not h.rare)
_ALL = tuple(h.id for h in HOI_CATEGORIES)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws image `index` of `split` (its plan comes from `plan_image`)."""
    return np.random.default_rng([seed, SPLITS[split], index])


def _uniforms(*key) -> Iterator[float]:
    """An endless stream of uniforms in [0, 1) determined by `key`: a hash in counter mode.
    Planning uses it instead of a numpy generator because it is ~50x cheaper to start, so
    the counts of a 20000-image split take a fraction of a second."""
    for block in itertools.count():
        h = hashlib.blake2b(repr((key, block)).encode(), digest_size=64).digest()
        for i in range(0, 64, 8):
            yield (int.from_bytes(h[i:i + 8], "little") >> 11) / 2.0 ** 53


def _pick(u: float, probs) -> int:
    """The index whose cumulative probability interval holds u."""
    acc = 0.0
    for i, p in enumerate(probs):
        acc += p
        if u < acc:
            return i
    return len(probs) - 1


def _plan(uniform: Callable[[], float], pool, forced=()) -> Plan:
    n = max(_pick(uniform(), N_INTERACTIONS_P) + 1, len(forced))
    hois = [int(pool[int(uniform() * len(pool))]) for _ in range(n - len(forced))]
    twin = uniform() < TWIN_P
    if twin and len(hois) >= 2:
        partners = [p.id for p in group_partners(hois[0]) if p.id in pool]
        if partners:
            hois[1] = partners[int(uniform() * len(partners))]
    for h in forced:   # rare ones at a random position among the others
        hois.insert(int(uniform() * (len(hois) + 1)), h)
    # a random order: which interaction comes first in the caption says nothing
    order = sorted(range(len(hois)), key=lambda _: uniform())
    return Plan(tuple(hois[i] for i in order))


def plan_image(seed: int, split: str, index: int) -> Plan:
    """What image `index` of `split` shows. Train: common categories uniformly, rare ones only
    at their scheduled indices; test: every category uniformly."""
    stream = _uniforms("toy-plan", seed, SPLITS[split], index)
    uniform = stream.__next__
    if split == "train":
        return _plan(uniform, _COMMON, _RARE_AT.get(index, ()))
    return _plan(uniform, _ALL)


# ---------------------------------------------------------------------------------------------
# Layout and rendering


def _apart(a, b, gap: float) -> bool:
    """True when boxes a and b are at least `gap` apart along x or along y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _fit(g: Group, cell, rng) -> bool:
    """Move g to a random position inside cell (x0, y0, x1, y1); False if it is too big."""
    b = g.bounds()
    x0, y0 = cell[0] + MARGIN - b[0], cell[1] + MARGIN - b[1]
    x1, y1 = cell[2] - MARGIN - b[2], cell[3] - MARGIN - b[3]
    if x1 < x0 or y1 < y0:
        return False
    g.translate(rng.uniform(x0, x1), rng.uniform(y0, y1))
    return True


def _random_layout(hois, size, rng, tries: int = 25) -> list[Group] | None:
    lo, hi = SCALE_RANGE[len(hois)]
    groups: list[Group] = []
    for hoi in hois:
        for _ in range(tries):
            g = build_group(hoi, rng.uniform(lo, hi) * size, 1 if rng.random() < 0.5 else -1, rng)
            if _fit(g, (0, 0, size, size), rng) and all(_apart(g.bounds(), o.bounds(), GAP) for o in groups):
                groups.append(g)
                break
        else:
            return None
    return groups


def _grid_layout(hois, size, rng) -> list[Group]:
    """Fallback that always succeeds: one interaction per cell, shrunk until it fits."""
    n = len(hois)
    half = size / 2
    cells = {1: [(0, 0, size, size)],
             2: [(0, 0, half, size), (half, 0, size, size)],
             3: [(x, y, x + half, y + half) for y in (0, half) for x in (0, half)]}[n]
    cells = [cells[i] for i in rng.permutation(len(cells))]
    groups = []
    for hoi, cell in zip(hois, cells):
        # the cells touch: keep half the gap free on each side
        inner = (cell[0] + GAP / 2, cell[1] + GAP / 2, cell[2] - GAP / 2, cell[3] - GAP / 2)
        u = SCALE_RANGE[n][0] * size
        d = 1 if rng.random() < 0.5 else -1
        while True:
            g = build_group(hoi, u, d, rng)
            if _fit(g, inner, rng):
                break
            u *= 0.9
        groups.append(g)
    return groups


def layout(hois, size: int, rng: np.random.Generator) -> list[Group]:
    for _ in range(4):
        groups = _random_layout(hois, size, rng)
        if groups is not None:
            return groups
    return _grid_layout(hois, size, rng)


def background_colour(rng: np.random.Generator) -> RGB:
    """A random pastel: every channel in [185, 240], so it never equals a key colour."""
    return tuple(int(v) for v in rng.integers(185, 241, 3))


def render_scene(rng_or_seed=0, size: int = DEFAULT_SIZE, hois=None):
    """Render one scene.

    rng_or_seed: a numpy Generator or an int seed. hois: HOI category ids to show (at most
    MAX_INTERACTIONS; None: a random plan over all categories).
    Returns (PIL RGB image, annotations dict, masks): the dict has "width", "height",
    "annotations" ([{"bbox": [x0, y0, x1, y1] pixel edges, x1/y1 exclusive, "category_id"}],
    subject then object of each interaction, in hois order), "hoi_annotation", "background"
    (RGB) and "points" (per annotation: named keypoints such as "hand", "foot", "head", in
    pixels); masks are bool [size, size] arrays, one per annotation, each the instance's own
    drawn pixels (before any occlusion)."""
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if hois is None:
        hois = _plan(rng.random, _ALL).hois
    hois = [int(h) for h in hois]
    if not 1 <= len(hois) <= MAX_INTERACTIONS or any(h not in HOI_BY_ID for h in hois):
        raise ValueError(f"hois must be 1-{MAX_INTERACTIONS} HOI category ids, got {hois}")

    bg = background_colour(rng)
    groups = layout(hois, size, rng)

    instances: list[Instance] = []
    hoi_ann = []
    for g in groups:
        h = HOI_BY_ID[g.hoi]
        hoi_ann.append({"subject_id": len(instances), "object_id": len(instances) + 1,
                        "category_id": h.verb_id, "hoi_category_id": h.id})
        instances += [g.subject, g.object]

    img = Image.new("RGB", (size, size), bg)
    canvas = ImageDraw.Draw(img)
    mask_of = {}
    for g in groups:
        for inst in (g.object, g.subject):   # the reaching hand or foot over the object
            mask = Image.new("L", (size, size), 0)
            pen = ImageDraw.Draw(mask)
            for s in inst.shapes:
                s.draw(canvas, s.fill)
                s.draw(pen, 255)
            mask_of[id(inst)] = mask

    anns, masks, points = [], [], []
    for inst in instances:
        m = mask_of[id(inst)]
        box = m.getbbox()
        if box is None:   # cannot happen with placements inside the image; fail loudly if it does
            raise RuntimeError(f"empty {inst.category} instance")
        anns.append({"bbox": list(box), "category_id": OBJECT_BY_NAME[inst.category].id})
        masks.append(np.asarray(m) > 0)
        points.append({k: [round(x, 2), round(y, 2)] for k, (x, y) in inst.points.items()})
    ann = {"width": size, "height": size, "annotations": anns, "hoi_annotation": hoi_ann,
           "background": list(bg), "points": points}
    return img, ann, masks


def render_image(seed: int, split: str, index: int, size: int = DEFAULT_SIZE):
    """Image `index` of `split` exactly as `generate` writes it: (image, annotations, masks)."""
    return render_scene(image_rng(seed, split, index), size, plan_image(seed, split, index).hois)
