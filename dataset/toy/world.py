"""The toy HOI world: procedural scenes of stick-figure subjects interacting with objects.

A scene is built in three steps:
1. plan (`plan_image`): which HOI categories appear and how many distractor objects. Cheap,
   no drawing, so category counts of a whole split can be computed without rendering.
2. layout: each interaction is built as a *group* (subject + object posed for the verb,
   in local coordinates with the subject's ground point at the origin), then placed by
   rejection sampling with an overlap cap (a grid fallback guarantees every planned
   interaction is placed, so plans and images always agree).
3. draw: every instance is drawn into the image and into its own mask with the same
   primitive calls (no anti-aliasing), so its box is exactly the bounds of its drawn pixels.

Geometry is expressed in units of `u`, the height of a standing person in pixels, and `u`
is a fraction of the image size, so the drawing scales with `--size`.

Determinism: image `index` of `split` depends only on (seed, split, index): its plan comes
from a hash of those, its drawing from a numpy generator seeded with [seed, split code, index].
Rare categories are placed at fixed train indices (see `rare_schedule`), so a shorter
train split is always a prefix of a longer one.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .categories import (BOX_TAPE, DETAIL, HOI_BY_ID, HOI_CATEGORIES, OBJECT_BY_NAME, OBJECT_NAMES,
                         RARE_SPAN, RGB, SKIN, hoi_names)

Point = tuple[float, float]

SPLITS = {"train": 0, "test": 1}
MAX_INTERACTIONS = 4
N_INTERACTIONS_P = (0.3, 0.3, 0.22, 0.18)   # P(1..4 interactions)
N_DISTRACTORS_P = (0.45, 0.35, 0.2)         # P(0..2 distractors)
# Person height as a fraction of the image size, by the number of interactions.
SCALE_RANGE = {1: (0.50, 0.68), 2: (0.38, 0.50), 3: (0.30, 0.38), 4: (0.27, 0.34)}
MAX_OVERLAP = 0.12   # intersection / smaller area, between two interactions' boxes
MARGIN = 1           # pixels kept free at the image border


def colour(name: str) -> RGB:
    return OBJECT_BY_NAME[name].colour


# ---------------------------------------------------------------------------------------------
# Shapes and instances


@dataclass
class Shape:
    """One drawing primitive. `xy` is flat: points for line/poly, (cx, cy, r) for disc/ring/
    half_disc/dot, (x0, y0, x1, y1) for rect. A dot is a pixel-snapped square (an eye):
    one pixel when r < 1, where a tiny disc would come out as a "+"."""
    kind: str
    xy: tuple[float, ...]
    fill: RGB
    width: int = 1

    def moved(self, dx: float, dy: float) -> "Shape":
        if self.kind in ("disc", "ring", "half_disc", "dot"):
            cx, cy, r = self.xy
            xy = (cx + dx, cy + dy, r)
        else:
            xy = tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(self.xy))
        return Shape(self.kind, xy, self.fill, self.width)

    def bounds(self) -> tuple[float, float, float, float]:
        if self.kind in ("disc", "ring", "half_disc", "dot"):
            cx, cy, r = self.xy
            r = max(r, 0.5)
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
        elif k == "dot":
            x, y, h = round(xy[0]), round(xy[1]), int(xy[2])
            draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
        else:
            cx, cy, r = xy
            box = [cx - r, cy - r, cx + r, cy + r]
            if k == "disc":
                draw.ellipse(box, fill=fill)
            elif k == "ring":
                draw.ellipse(box, outline=fill, width=self.width)
            else:  # upper half disc (an umbrella canopy)
                draw.pieslice(box, 180, 360, fill=fill)


@dataclass
class Instance:
    """A drawable thing of one category, with named points (hand, grip, ...) for posing."""
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


def _w(v: float) -> int:
    """A line width in whole pixels, at least 1."""
    return max(1, int(round(v)))


def _r(v: float) -> float:
    """A disc radius that PIL still draws (at least one pixel)."""
    return max(0.6, v)


def _limb(a: Point, b: Point, width: int, fill: RGB, round_ends: bool = True) -> list[Shape]:
    shapes = [Shape("line", (*a, *b), fill, width)]
    if round_ends and width >= 3:   # rounded joints read as one body, not loose sticks
        shapes += [Shape("disc", (*p, width / 2), fill) for p in (a, b)]
    return shapes


def _along(p: Point, angle: float, length: float, d: int) -> Point:
    """The point `length` from p in direction `angle` (degrees from straight down, positive
    toward the facing side d)."""
    a = math.radians(angle)
    return p[0] + d * math.sin(a) * length, p[1] + math.cos(a) * length


def _toward(p: Point, q: Point, length: float) -> Point:
    dx, dy = q[0] - p[0], q[1] - p[1]
    n = math.hypot(dx, dy) or 1.0
    return p[0] + dx / n * length, p[1] + dy / n * length


# ---------------------------------------------------------------------------------------------
# Subjects. Local frame: the ground is y = 0, y grows downward, d = +1 faces right, -1 left.

LEG, ARM, TORSO, HEAD_R = 0.45, 0.33, 0.30, 0.10   # fractions of u (person height)


def biped(kind: str, u: float, d: int, arms=(12.0, -12.0), legs=(10.0, -10.0), lean: float = 0.0,
          hip: Point | None = None, look: Point | None = None) -> Instance:
    """A person or a robot. `arms`/`legs` are (front, back): an angle in degrees from straight
    down (positive toward the facing side) or a target point the limb reaches to. The hip
    defaults to the height at which the lower standing foot touches the ground."""
    leg_w = _w(0.075 * u) if kind == "person" else _w(0.06 * u)
    if hip is None:   # the thick foot rests on the ground line, not half its width below it
        downs = [math.cos(math.radians(a)) for a in legs if not isinstance(a, tuple)]
        hip = (0.0, -LEG * u * max(downs) - leg_w / 2)
    up = math.radians(lean)
    tdir = (d * math.sin(up), -math.cos(up))            # torso direction, leaning toward d
    shoulder = (hip[0] + tdir[0] * 0.27 * u, hip[1] + tdir[1] * 0.27 * u)
    neck = (hip[0] + tdir[0] * TORSO * u, hip[1] + tdir[1] * TORSO * u)
    head = (hip[0] + tdir[0] * (TORSO + HEAD_R) * u, hip[1] + tdir[1] * (TORSO + HEAD_R) * u)
    hands = [a if isinstance(a, tuple) else _along(shoulder, a, ARM * u, d) for a in arms]
    feet = [g if isinstance(g, tuple) else _along(hip, g, LEG * u, d) for g in legs]
    look = look if look is not None else (head[0] + d * u, head[1])
    r = HEAD_R * u
    eye = _toward(head, look, 0.5 * r)

    c = colour(kind)
    s: list[Shape] = []
    if kind == "person":
        limb_w, hand_fill = _w(0.07 * u), SKIN
        s += _limb(hip, feet[1], leg_w, c) + _limb(shoulder, hands[1], limb_w, c)
        s += _limb(hip, neck, _w(0.12 * u), c)
        s += _limb(hip, feet[0], leg_w, c)
        s += [Shape("disc", (*head, _r(r)), SKIN), Shape("dot", (*eye, 0.2 * r), DETAIL)]
        s += _limb(shoulder, hands[0], limb_w, c)
        s += [Shape("disc", (*h, _r(0.045 * u)), hand_fill) for h in hands]
    else:  # robot: square head with an antenna, boxy body, mechanical (square-ended) limbs
        limb_w = leg_w
        s += _limb(hip, feet[1], leg_w, c, False) + _limb(shoulder, hands[1], limb_w, c, False)
        s += [Shape("line", (*hip, *neck), c, _w(0.2 * u))]
        s += _limb(hip, feet[0], leg_w, c, False)
        for fx, fy in feet:   # flat boots: the sole lies on the ground whatever the leg angle
            x0, x1 = sorted((fx - 0.03 * u * d, fx + 0.06 * u * d))
            s.append(Shape("rect", (x0, fy - leg_w / 2, x1, fy + leg_w / 2), c))
        top = head[1] - r
        s += [Shape("line", (head[0], top, head[0], top - 0.08 * u), c, _w(0.025 * u)),
              Shape("disc", (head[0], top - 0.08 * u, _r(0.03 * u)), c),
              Shape("rect", (head[0] - r, head[1] - r, head[0] + r, head[1] + r), c),
              Shape("dot", (*eye, 0.2 * r), DETAIL)]
        s += _limb(shoulder, hands[0], limb_w, c, False)
    points = {"hip": hip, "shoulder": shoulder, "head": head, "eye": eye, "hand": hands[0],
              "hand2": hands[1], "foot": feet[0], "foot2": feet[1], "mouth": head}
    return Instance(kind, s, points)


def dog(u: float, d: int, head: Point | None = None, look: Point | None = None,
        ground: float = 0.0) -> Instance:
    """A dog in side view: horizontal body on four legs, head up front, tail up behind."""
    c = colour("dog")
    body_y = ground - 0.34 * u
    rear, front = (-0.24 * u * d, body_y), (0.18 * u * d, body_y)
    head = head if head is not None else (0.30 * u * d, ground - 0.54 * u)
    r = 0.10 * u
    snout = (head[0] + 0.09 * u * d, head[1] + 0.03 * u)
    mouth = (head[0] + 0.15 * u * d, head[1] + 0.04 * u)
    look = look if look is not None else (head[0] + d * u, head[1])
    eye = _toward(head, look, 0.5 * r)
    leg_w = _w(0.06 * u)
    feet = [(x * u * d, ground) for x in (0.16, 0.10, -0.13, -0.20)]
    s: list[Shape] = []
    for f in feet:
        s += _limb((f[0], body_y), f, leg_w, c, False)
    s += _limb(rear, (-0.34 * u * d, body_y - 0.16 * u), _w(0.04 * u), c)         # tail
    s += _limb(rear, front, _w(0.16 * u), c)                                         # body
    s += _limb((0.14 * u * d, body_y - 0.03 * u), head, _w(0.09 * u), c)            # neck
    s += [Shape("disc", (*head, _r(r)), c), Shape("disc", (*snout, _r(0.06 * u)), c),
          Shape("poly", (head[0] - 0.06 * u * d, head[1] - 0.04 * u,               # ear
                         head[0] - 0.12 * u * d, head[1] + 0.10 * u,
                         head[0] - 0.01 * u * d, head[1] + 0.02 * u), c),
          Shape("dot", (*eye, 0.2 * r), DETAIL)]
    points = {"head": head, "eye": eye, "mouth": mouth, "foot": feet[0], "foot2": feet[-1],
              "hip": rear, "shoulder": front}
    return Instance("dog", s, points)


# ---------------------------------------------------------------------------------------------
# Objects. Local frame: the bottom centre at the origin (kite: the bottom tip), facing d.


def make_object(name: str, s: float, d: int = 1) -> Instance:
    """An object of nominal size s (pixels, comparable to a person's height u) with named
    points: "grip" (where a hand holds it), "push" (where hands push it), "top", "centre"."""
    c = colour(name)
    if name == "ball":
        r = 0.12 * s
        shapes = [Shape("disc", (0.0, -r, _r(r)), c)]
        pts = {"grip": (-0.6 * r * d, -r), "centre": (0.0, -r), "top": (0.0, -2 * r), "r": (r, r)}
    elif name == "box":
        w = 0.32 * s
        h = 0.85 * w
        shapes = [Shape("rect", (-w / 2, -h, w / 2, 0.0), c),
                  Shape("rect", (-0.07 * w, -h, 0.07 * w, 0.0), BOX_TAPE)]
        pts = {"grip": (-0.35 * w * d, -0.5 * h), "push": (-w / 2 * d, -0.95 * h), "centre": (0.0, -h / 2),
               "top": (0.0, -h), "wh": (w, h)}
    elif name == "umbrella":
        stick, r = 0.42 * s, 0.26 * s
        shapes = [Shape("line", (0.0, 0.0, 0.0, -stick), c, _w(0.04 * s)),
                  Shape("line", (0.0, 0.0, -0.05 * s * d, 0.0), c, _w(0.04 * s)),     # handle hook
                  Shape("half_disc", (0.0, -stick, r), c)]
        pts = {"grip": (0.0, -0.03 * s), "centre": (0.0, -stick - r / 2), "top": (0.0, -stick - r)}
    elif name == "cup":
        w, h = 0.17 * s, 0.2 * s
        hx = -(0.5 * w + 0.04 * s) * d    # the handle faces the holder
        shapes = [Shape("poly", (-0.38 * w, 0.0, 0.38 * w, 0.0, 0.5 * w, -h, -0.5 * w, -h), c),
                  Shape("ring", (hx, -0.55 * h, _r(0.065 * s)), c, _w(0.03 * s))]
        pts = {"grip": (hx, -0.55 * h), "centre": (0.0, -h / 2), "top": (0.0, -h)}
    elif name == "kite":
        w, h = 0.26 * s, 0.34 * s
        shapes = [Shape("poly", (0.0, 0.0, w / 2, -0.35 * h, 0.0, -h, -w / 2, -0.35 * h), c),
                  Shape("line", (0.0, 0.0, 0.04 * s, 0.07 * s, -0.03 * s, 0.13 * s, 0.03 * s, 0.19 * s),
                        c, 1)]    # tail
        pts = {"grip": (0.0, 0.0), "centre": (0.0, -0.4 * h), "top": (0.0, -h)}
    elif name == "bicycle":
        r, lw = 0.17 * s, _w(0.04 * s)
        rear, front, bb = (-0.3 * s * d, -r), (0.3 * s * d, -r), (0.0, -r)
        seat, head_tube, bar = (-0.1 * s * d, -0.48 * s), (0.2 * s * d, -0.42 * s), (0.22 * s * d, -0.52 * s)
        shapes = [Shape("ring", (*rear, r), c, lw), Shape("ring", (*front, r), c, lw),
                  Shape("line", (*rear, *bb, *seat, *rear), c, lw),
                  Shape("line", (*seat, *head_tube, *front), c, lw),
                  Shape("line", (*bb, *head_tube, *bar, bar[0] + 0.06 * s * d, bar[1]), c, lw),
                  Shape("line", (seat[0] - 0.06 * s, seat[1], seat[0] + 0.06 * s, seat[1]), c, _w(0.05 * s))]
        pts = {"seat": (seat[0], seat[1] - 0.02 * s), "bar": bar, "push": seat, "grip": bar,
               "pedal": (0.06 * s * d, bb[1] + 0.07 * s), "pedal2": (-0.06 * s * d, bb[1] - 0.05 * s),
               "centre": (0.0, -0.3 * s), "top": (0.0, -0.52 * s)}
    elif name == "chair":
        lw, hw, seat_y, back_y = _w(0.05 * s), 0.15 * s, -0.28 * s, -0.62 * s
        back_x = -hw * d     # the backrest faces the subject
        shapes = [Shape("line", (-hw, seat_y, hw, seat_y), c, lw),
                  Shape("line", (-hw, seat_y, -hw, 0.0), c, lw),
                  Shape("line", (hw, seat_y, hw, 0.0), c, lw),
                  Shape("line", (back_x, seat_y, back_x, back_y), c, lw)]
        pts = {"grip": (back_x, back_y), "push": (back_x, back_y + 0.03 * s), "seat": (0.0, seat_y),
               "centre": (0.0, -0.31 * s), "top": (back_x, back_y)}
    elif name == "skateboard":
        hl, top, bottom = 0.3 * s, -0.1 * s, -0.055 * s
        shapes = [Shape("rect", (-hl, top, hl, bottom), c),
                  Shape("line", (hl, top, hl + 0.05 * s, top - 0.04 * s), c, _w(0.04 * s)),
                  Shape("line", (-hl, top, -hl - 0.05 * s, top - 0.04 * s), c, _w(0.04 * s)),
                  Shape("disc", (0.2 * s, -0.035 * s, _r(0.035 * s)), DETAIL),
                  Shape("disc", (-0.2 * s, -0.035 * s, _r(0.035 * s)), DETAIL)]
        pts = {"deck": (0.0, top), "grip": (-hl * d, top), "centre": (0.0, top), "top": (0.0, top)}
    else:
        raise KeyError(f"unknown toy object {name!r}")
    return Instance(name, shapes, pts)


def _ball_edge(r: float, height: float) -> float:
    """Half-width of a ball of radius r resting on the ground, at `height` above the ground."""
    return math.sqrt(max(r * r - (height - r) ** 2, 0.0))


# ---------------------------------------------------------------------------------------------
# Groups: one subject posed for one verb with its object.


@dataclass
class Group:
    hoi: int
    subject: Instance
    object: Instance
    object_first: bool      # draw order: the object behind the subject

    def bounds(self):
        return _union([self.subject.bounds(), self.object.bounds()])

    def translate(self, dx, dy):
        self.subject.translate(dx, dy)
        self.object.translate(dx, dy)


def build_group(hoi: int, u: float, d: int, rng: np.random.Generator) -> Group:
    """Subject and object of one HOI category, posed for the verb, subject's feet at the origin."""
    subj, verb, obj = hoi_names(hoi)

    def j(a: float, spread: float = 5.0) -> float:   # small pose jitter
        return a + rng.uniform(-spread, spread)

    s = u * rng.uniform(0.9, 1.1)                       # object size jitter
    if subj == "dog":
        sub, o, first = _dog_group(verb, obj, u, d, s, rng)
        return Group(hoi, sub, o, first)

    def person(**kw) -> Instance:
        return biped(subj, u, d, **kw)

    first = True
    if verb == "hold":
        if obj == "kite":
            sub = person(arms=(j(150), j(-15)))
            hand = sub.points["hand"]
            o = make_object("kite", s, d)
            tip = (hand[0] + d * u * rng.uniform(0.25, 0.4), hand[1] - u * rng.uniform(0.3, 0.45))
            o.translate(*tip)
            o.shapes.append(Shape("line", (*hand, *tip), colour("kite"), 1))   # the string
            o.points["grip"] = hand
            first = False
        else:
            sub = person(arms=(j(110) if obj == "umbrella" else j(72, 8), j(-12)))
            o = _attach(make_object(obj, s, d), "grip", sub.points["hand"])
    elif verb == "kick":
        sub = person(legs=(j(57, 4), j(-5, 2)), arms=(j(-35), j(35)))
        foot = sub.points["foot"]
        height = -foot[1]
        # sized so the raised foot meets the object's near side, not the air above it
        need = height / (0.85 * (0.24 if obj == "ball" else 0.272))
        o = make_object(obj, max(s, need), d)
        if obj == "ball":
            r = o.points["r"][0]
            o.translate(foot[0] + d * 0.8 * _ball_edge(r, height), 0.0)
        else:   # box: its near side at the foot, slightly overlapping
            w = o.points["wh"][0]
            o.translate(foot[0] + d * (w / 2 - 0.02 * u), 0.0)
    elif verb == "ride":
        o = make_object(obj, s, d)
        if obj == "bicycle":
            p = o.points
            sub = person(hip=p["seat"], lean=j(25), legs=(p["pedal"], p["pedal2"]),
                         arms=(p["bar"], (p["bar"][0] - 0.03 * u * d, p["bar"][1] + 0.02 * u)))
        else:   # skateboard: stand on the deck, arms out for balance
            sub = person(legs=(j(20, 3), j(-20, 3)), arms=(j(80), j(-80)))
            sub.translate(0.0, o.points["deck"][1])
    elif verb == "look at":
        o = make_object(obj, s, d)
        sub0 = person()
        front = sub0.bounds()[2] if d > 0 else -sub0.bounds()[0]
        ob = o.bounds()
        half = (ob[2] - ob[0]) / 2
        gap = u * rng.uniform(0.3, 0.55)
        y = -u * rng.uniform(0.75, 1.0) if obj == "kite" else 0.0
        o.translate(d * (front + gap + half), y)
        sub = person(look=o.points["centre"])
    elif verb == "carry":
        sub = person(arms=(j(165, 4), j(-165, 4)))
        h1, h2 = sub.points["hand"], sub.points["hand2"]
        o = make_object(obj, s * (0.8 if obj == "chair" else 1.0), d)
        o.translate((h1[0] + h2[0]) / 2, min(h1[1], h2[1]) + 0.03 * u)
    elif verb == "push":
        lean, legs = j(22, 3), (j(35, 3), j(-35, 3))
        sub0 = person(lean=lean, legs=legs)
        sh = sub0.points["shoulder"]
        if obj == "box":   # a crate whose top edge is a little below the shoulder: arms reach forward
            top = -sh[1] - u * rng.uniform(0.1, 0.2)
            o = make_object("box", top / (0.95 * 0.85 * 0.32), d)
        else:
            o = make_object(obj, s, d)
        target_y = o.points["push"][1]
        dy = target_y - sh[1]
        dx = math.sqrt(max((ARM * u) ** 2 - dy * dy, 0.0))
        hand = (sh[0] + d * dx, target_y)
        o = _attach(o, "push", hand)
        sub = person(lean=lean, legs=legs, arms=(hand, (hand[0], hand[1] + 0.04 * u)))
    elif verb == "throw":
        sub = person(arms=(j(140), j(-40)), legs=(j(18, 3), j(-18, 3)))
        hand, sh = sub.points["hand"], sub.points["shoulder"]
        o = make_object(obj, s, d)
        c = o.points["centre"]
        dist = math.hypot(hand[0] - sh[0], hand[1] - sh[1]) + u * rng.uniform(0.3, 0.4)
        ball = _toward(sh, hand, dist)
        o.translate(ball[0] - c[0], ball[1] - c[1])
        first = False
    else:
        raise KeyError(verb)
    return Group(hoi, sub, o, first)


def _attach(o: Instance, point: str, at: Point) -> Instance:
    """Move o so that its named point lands on `at`."""
    p = o.points[point]
    o.translate(at[0] - p[0], at[1] - p[1])
    return o


def _dog_group(verb, obj, u, d, s, rng):
    if verb == "look at":
        o = make_object(obj, s, d)
        front = dog(u, d).bounds()[2] if d > 0 else -dog(u, d).bounds()[0]
        ob = o.bounds()
        gap = u * rng.uniform(0.3, 0.55)
        y = -u * rng.uniform(0.7, 0.95) if obj == "kite" else 0.0
        o.translate(d * (front + gap + (ob[2] - ob[0]) / 2), y)
        return dog(u, d, look=o.points["centre"]), o, True
    if verb == "hold":     # in the mouth, drawn over the snout
        sub = dog(u, d)
        o = make_object(obj, s * 0.85, d)
        m, c = sub.points["mouth"], o.points["centre"]
        o.translate(m[0] + d * 0.5 * (o.bounds()[2] - o.bounds()[0]) / 2 - c[0], m[1] - c[1])
        return sub, o, False
    if verb == "push":     # head down, nose against the object on the ground
        sub = dog(u, d, head=(0.34 * u * d, -0.22 * u))
        o = make_object(obj, s, d)
        m = sub.points["mouth"]
        r = o.points["r"][0]
        o.translate(m[0] + d * 0.8 * _ball_edge(r, -m[1]), 0.0)
        return sub, o, False
    if verb == "ride":     # standing on the deck
        o = make_object(obj, s, d)
        return dog(u, d, ground=o.points["deck"][1]), o, True
    raise KeyError(verb)


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Plan:
    hois: tuple[int, ...]
    n_distractors: int


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
    nd = _pick(uniform(), N_DISTRACTORS_P)
    hois = [int(pool[int(uniform() * len(pool))]) for _ in range(n - len(forced))]
    for h in forced:   # rare ones at a random position among the others
        hois.insert(int(uniform() * (len(hois) + 1)), h)
    return Plan(tuple(hois), nd)


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


def _overlap(a, b) -> float:
    """Intersection over the smaller area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1e-6)


def _fit(g: Group, cell, rng) -> bool:
    """Move g to a random position inside cell (x0, y0, x1, y1); False if it is too big."""
    b = g.bounds()
    x0, y0, x1, y1 = cell[0] + MARGIN - b[0], cell[1] + MARGIN - b[1], cell[2] - MARGIN - b[2], cell[3] - MARGIN - b[3]
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
            if _fit(g, (0, 0, size, size), rng) and all(
                    _overlap(g.bounds(), o.bounds()) <= MAX_OVERLAP for o in groups):
                groups.append(g)
                break
        else:
            return None
    return groups


def _grid_layout(hois, size, rng) -> list[Group]:
    """Fallback that always succeeds: one interaction per cell, shrunk until it fits."""
    n = len(hois)
    half = size / 2
    if n == 1:
        cells = [(0, 0, size, size)]
    elif n == 2:
        cells = [(0, 0, half, size), (half, 0, size, size)]
    else:
        cells = [(x, y, x + half, y + half) for y in (0, half) for x in (0, half)]
    cells = [cells[i] for i in rng.permutation(len(cells))]
    groups = []
    lo = SCALE_RANGE[n][0]
    for hoi, cell in zip(hois, cells):
        u = lo * size
        d = 1 if rng.random() < 0.5 else -1
        while True:
            g = build_group(hoi, u, d, rng)
            if _fit(g, cell, rng):
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


def _distractors(n: int, groups: list[Group], size: int, rng) -> list[Instance]:
    """Up to n loose objects, kept clear of every interaction (dropped if there is no room)."""
    if n == 0:
        return []
    pad = 0.1 * size    # so a loose object does not read as part of an interaction
    keep_out = [(b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad) for b in (g.bounds() for g in groups)]
    lo, hi = SCALE_RANGE[max(1, len(groups))]
    out: list[Instance] = []
    for _ in range(n):
        name = OBJECT_NAMES[int(rng.integers(len(OBJECT_NAMES)))]
        o = make_object(name, rng.uniform(lo, hi) * size * 0.8, 1 if rng.random() < 0.5 else -1)
        for _ in range(10):
            b = o.bounds()
            x0, x1 = MARGIN - b[0], size - MARGIN - b[2]
            y0, y1 = MARGIN - b[1], size - MARGIN - b[3]
            if x1 < x0 or y1 < y0:
                break
            dx, dy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            nb = (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy)
            if all(_overlap(nb, k) == 0 for k in keep_out + [i.bounds() for i in out]):
                o.translate(dx, dy)
                out.append(o)
                break
    return out


def background_colour(rng: np.random.Generator) -> RGB:
    """A random pastel: every channel in [185, 240], so it never equals a key colour."""
    return tuple(int(v) for v in rng.integers(185, 241, 3))


def render_scene(rng_or_seed=0, size: int = 64, hois=None, n_distractors: int | None = None):
    """Render one scene.

    rng_or_seed: a numpy Generator or an int seed. hois: HOI category ids to show (at most 4;
    None: a random plan over all categories). n_distractors: loose objects (None: random 0-2).
    Returns (PIL RGB image, annotations dict, masks): the dict has "width", "height",
    "annotations" ([{"bbox": [x0, y0, x1, y1] pixel edges, x1/y1 exclusive, "category_id"}],
    subjects and objects of the interactions first, in hois order, then distractors),
    "hoi_annotation", "background" (RGB) and "points" (per annotation: named keypoints such as
    "hand", "foot", "head", "eye", "grip", in pixels); masks are bool [size, size] arrays, one
    per annotation, each the instance's own drawn pixels (before any occlusion)."""
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if hois is None:
        plan = _plan(rng.random, _ALL)
        hois = plan.hois
        n_distractors = plan.n_distractors if n_distractors is None else n_distractors
    hois = [int(h) for h in hois]
    if not 1 <= len(hois) <= MAX_INTERACTIONS or any(h not in HOI_BY_ID for h in hois):
        raise ValueError(f"hois must be 1-{MAX_INTERACTIONS} HOI category ids, got {hois}")
    if n_distractors is None:
        n_distractors = int(rng.choice(len(N_DISTRACTORS_P), p=N_DISTRACTORS_P))

    bg = background_colour(rng)
    groups = layout(hois, size, rng)
    loose = _distractors(n_distractors, groups, size, rng)

    instances: list[Instance] = []
    hoi_ann = []
    for g in groups:
        h = HOI_BY_ID[g.hoi]
        hoi_ann.append({"subject_id": len(instances), "object_id": len(instances) + 1,
                        "category_id": h.verb_id, "hoi_category_id": h.id})
        instances += [g.subject, g.object]
    instances += loose

    draw_order = list(loose)
    for g in groups:
        draw_order += [g.object, g.subject] if g.object_first else [g.subject, g.object]

    img = Image.new("RGB", (size, size), bg)
    canvas = ImageDraw.Draw(img)
    mask_of = {}
    for inst in draw_order:
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
        points.append({k: [round(x, 2), round(y, 2)] for k, (x, y) in inst.points.items()
                       if k not in ("r", "wh")})
    ann = {"width": size, "height": size, "annotations": anns, "hoi_annotation": hoi_ann,
           "background": list(bg), "points": points}
    return img, ann, masks


def render_image(seed: int, split: str, index: int, size: int = 64):
    """Image `index` of `split` exactly as `generate` writes it: (image, annotations, masks)."""
    plan = plan_image(seed, split, index)
    return render_scene(image_rng(seed, split, index), size, plan.hois, plan.n_distractors)
