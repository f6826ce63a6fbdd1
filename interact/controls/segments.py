"""The segment control: DenseDiffusion's attention modulation (Kim et al. 2023), training-free, on
any SD v1.x UNet.

A prompt comes with segments: phrases of the prompt, each with the region it describes (a box,
a polygon, a binary mask or COCO RLE; `Segment` in hoi/records.py). Two things happen:

1. In the prompt's text embedding, each segment phrase's tokens are replaced by the phrase
   encoded alone (so "a red ball" in a long prompt carries only its own meaning).
2. For the first `dense_steps` of the sampling steps, on the conditional branch of guidance
   only, every self- and cross-attention layer of the UNet (not the fusers) changes its logits
   sim = q.k / sqrt(d) before the softmax, per query row:

       sim += R * S * w * t^5 * (rowmax - sim)
       sim -= (1 - R) * S * w * t^5 * (sim - rowmin)

   t = timestep / 1000; R = 1 where query and key belong to one segment (self-attention: both
   pixels in a segment; cross-attention: the pixel in segment n and the token in segment n's
   phrase span); S = 1 - (summed area of the segments holding the query pixel) / HW, which is
   1 - area/HW for a pixel in one segment and 1 outside every segment; w = 1.0 for
   cross-attention and 0.3 for self-attention. Pairs inside a segment are pulled towards the row's
   largest logit, the others towards its smallest, strongly early (t^5) and for small segments.
   Masks are resized to each layer's feature map by nearest-neighbour sampling.

The modulation travels with the batch (`DenseLayout` is this control's input in `Cond`: the
unconditional rows carry none) and reaches the attention layers as a `DenseControl`, the
"attention" entry of the UNet's controls mapping, made per forward with that forward's
timesteps; there is no global state. Layers without an active row take the fast SDPA path; the
others compute the logits explicitly.

Records: `segments`, a list of {"phrase": ..., one of "box", "polygon", "mask" (a PNG path,
relative to the layouts file), "rle"}; in Python, lists of hoi.records.Segment.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hoi.records import ConditionError, Segment, check_box, check_phrase
from interact.controls.base import Control, register


# ----------------------------------------------------------------------------- masks

def decode_rle(rle, field: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLE ({"size": [h, w], "counts": list of ints, or the compressed string}) -> bool [h, w].
    Runs alternate 0s and 1s, starting with 0s, in column-major order. The compressed string
    stores each run in 5-bit groups (offset 48, bit 0x20 = more groups follow, bit 0x10 of the last
    group = negative), and from the fourth run on, as the difference to the run two before.
    `shape`: the size the mask must have, checked before anything is decoded."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ConditionError(f"{field} = {_short(rle)}: expected COCO RLE {{'size': [h, w], 'counts': ...}}")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ConditionError(f"{field}.size = {size!r}: expected [height, width], positive integers")
    h, w = size
    if shape is not None and (h, w) != tuple(shape):  # before decoding: a huge size would allocate it
        raise ConditionError(f"{field}.size = {size!r} (height x width) does not match the image, "
                             f"{shape[0]}x{shape[1]}")
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _rle_string_counts(counts.encode() if isinstance(counts, str) else counts, field)
    elif not isinstance(counts, (list, tuple)) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise ConditionError(f"{field}.counts: expected a list of run lengths or a compressed string")
    if any(c < 0 for c in counts):
        raise ConditionError(f"{field}.counts: a negative run length; the RLE does not decode")
    if sum(counts) != h * w:
        raise ConditionError(f"{field}: the runs cover {sum(counts)} pixels, size {h}x{w} has {h * w}; "
                             f"the RLE does not decode")
    values = np.zeros(h * w, dtype=bool)
    position = 0
    for i, run in enumerate(counts):
        if i % 2:
            values[position:position + run] = True
        position += run
    return values.reshape(w, h).T  # column-major


def _rle_string_counts(data: bytes, field: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(data):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ConditionError(f"{field}.counts: the compressed string ends inside a run; the RLE does "
                                     f"not decode")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ConditionError(f"{field}.counts: character {chr(data[p])!r} is not in the RLE alphabet; "
                                     f"the RLE does not decode")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rasterize(segment: Segment, height: int, width: int, field: str) -> torch.Tensor:
    """The segment's region as bool [height, width] (the image's size); raises ConditionError
    naming `field` for a region that is not given once, has the wrong size, is not binary or is
    empty."""
    given = [name for name in ("box", "polygon", "mask", "rle") if getattr(segment, name) is not None]
    if len(given) != 1:
        raise ConditionError(f"{field}: give exactly one of box, polygon, mask, rle (got "
                             f"{', '.join(given) or 'none'})")
    kind = given[0]
    where = f"{field}.{kind}"
    if kind == "box":
        x0, y0, x1, y1 = check_box(segment.box, where)
        region = np.zeros((height, width), dtype=bool)
        region[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    elif kind == "polygon":
        region = _polygon(segment.polygon, height, width, where)
    elif kind == "mask":
        region = _binary_mask(segment.mask, where)
    else:
        region = decode_rle(segment.rle, where, (height, width))
    if region.shape != (height, width):
        raise ConditionError(f"{where}: {region.shape[0]}x{region.shape[1]} (height x width) does not match the "
                             f"image, {height}x{width}")
    if not region.any():
        raise ConditionError(f"{where}: the region is empty at {height}x{width}")
    return torch.from_numpy(np.ascontiguousarray(region))


def _polygon(points, height: int, width: int, field: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    def number(v) -> bool:  # "0.1" would pass float(); JSON booleans are ints
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    try:
        pairs = [(x, y) for x, y in points] if not isinstance(points, (str, bytes, dict)) else None
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or not all(number(x) and number(y) for x, y in pairs):
        raise ConditionError(f"{field} = {_short(points)}: expected normalised [x, y] points (numbers)")
    xy = [(float(x) * width, float(y) * height) for x, y in pairs]
    if len(xy) < 3 or not all(0 <= v <= 1 for p in pairs for v in p):
        raise ConditionError(f"{field} = {_short(points)}: expected at least 3 [x, y] points in [0, 1]")
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(xy, fill=1)
    return np.asarray(canvas, dtype=bool)


def _binary_mask(mask, field: str) -> np.ndarray:
    """A PNG path or an array; nonzero = inside. Values must be two levels: 0 and one other."""
    if isinstance(mask, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(mask) as image:
                array = np.asarray(image.convert("L"))
        except FileNotFoundError:
            raise ConditionError(f"{field} = {str(mask)!r}: no such file") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ConditionError(f"{field} = {str(mask)!r}: not a readable image ({err})") from None
    else:
        array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if array.ndim != 2:
            raise ConditionError(f"{field}: expected a 2-d mask, got shape {array.shape}")
    levels = np.unique(array)
    if len(levels) > 2 or (len(levels) == 2 and levels[0] != 0):
        shown = ", ".join(str(v) for v in levels[:5]) + (", ..." if len(levels) > 5 else "")
        raise ConditionError(f"{field}: not a binary mask (values {shown}); use 0 outside and one value inside")
    return array != 0


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- the prompt's tokens

def phrase_span(prompt_ids: Sequence[int], phrase_ids: Sequence[int],
                taken: Sequence[tuple[int, int]] = ()) -> tuple[int, int] | None:
    """[start, end) of the first occurrence of `phrase_ids` in `prompt_ids` that overlaps no span
    in `taken` (else the first occurrence), or None. A phrase given for two segments ("a person
    holding a ball, a person kicking a ball") so takes its occurrences in order."""
    n = len(phrase_ids)
    found = [(start, start + n) for start in range(len(prompt_ids) - n + 1)
             if list(prompt_ids[start:start + n]) == list(phrase_ids)]
    free = [s for s in found if all(s[1] <= a or b <= s[0] for a, b in taken)]
    return (free or found or [None])[0]


def text_tokens(ids: torch.Tensor, eos_id: int) -> list[int]:
    """The text tokens of one tokenized row [BOS, text..., EOS, pad...]."""
    row = ids.tolist()
    end = row.index(eos_id, 1) if eos_id in row[1:] else len(row)
    return row[1:end]


# ----------------------------------------------------------------------------- the Cond field

@dataclass(frozen=True)
class DenseWeights:
    self_attention: float = 0.3
    cross_attention: float = 1.0


@dataclass
class DenseLayout:
    """Segments of a batch, padded: `masks` bool [B, S, H, W] at the image's size, `spans` bool
    [B, S, L] (the phrase's tokens in the prompt), `active` bool [B] (rows that are modulated;
    the unconditional branch and prompts without segments are not), and the weights of the
    modulation. This control's input in Cond."""
    masks: torch.Tensor
    spans: torch.Tensor
    active: torch.Tensor
    weights: DenseWeights = DenseWeights()

    @classmethod
    def absent(cls, batch: int, length: int, height: int = 1, width: int = 1) -> "DenseLayout":
        """Rows without segments (inactive)."""
        return cls(torch.zeros(batch, 0, height, width, dtype=torch.bool),
                   torch.zeros(batch, 0, length, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool))

    def to(self, device=None, dtype=None) -> "DenseLayout":  # masks stay bool whatever the dtype
        return DenseLayout(self.masks.to(device), self.spans.to(device), self.active.to(device), self.weights)

    def null(self) -> "DenseLayout":
        return DenseLayout(self.masks, self.spans, torch.zeros_like(self.active), self.weights)

    @classmethod
    def cat(cls, layouts: Sequence["DenseLayout"]) -> "DenseLayout":
        segments = max(d.masks.shape[1] for d in layouts)
        height = max(d.masks.shape[2] for d in layouts)
        width = max(d.masks.shape[3] for d in layouts)
        if any(d.masks.shape[1] and d.masks.shape[2:] != (height, width) for d in layouts):
            raise ValueError("segment masks of one batch must have one size (the images')")
        masks = torch.cat([_pad(d.masks, (segments, height, width)) for d in layouts])
        spans = torch.cat([_pad(d.spans, (segments, d.spans.shape[2])) for d in layouts])
        weights = next((d.weights for d in layouts if d.active.any()), layouts[0].weights)
        return cls(masks, spans, torch.cat([d.active for d in layouts]), weights)

    @property
    def any_active(self) -> bool:
        return bool(self.active.any())


def _pad(tensor: torch.Tensor, shape: tuple) -> torch.Tensor:
    out = torch.zeros((tensor.shape[0], *shape), dtype=tensor.dtype, device=tensor.device)
    out[(slice(None), *[slice(0, s) for s in tensor.shape[1:]])] = tensor
    return out


@dataclass
class PlacedSegment:
    phrase: str
    span: tuple[int, int]   # [start, end) of its tokens in the prompt's token ids (BOS at 0)
    mask: torch.Tensor      # bool [H, W]


def place_segments(prompt: str, segments: Sequence[Segment], tokenize: Callable[[list[str]], torch.Tensor],
                   eos_id: int, height: int, width: int, where: str) -> list[PlacedSegment]:
    """Each segment's token span in the prompt and its mask at the image's size; raises
    ConditionError naming `where`, the segment and the bad value."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConditionError(f"{where}: segments need a prompt (their phrases are found in it), got {prompt!r}")
    for j, segment in enumerate(segments):
        if not isinstance(segment, Segment):
            raise ConditionError(f"{where}, segment {j}: expected a Segment, got {type(segment).__name__}")
    phrases = [check_phrase(s.phrase, f"{where}, segment {j}.phrase") for j, s in enumerate(segments)]
    tokens = text_tokens(tokenize([prompt])[0], eos_id)
    phrase_ids = tokenize(phrases)
    placed, taken = [], []
    for j, (segment, phrase) in enumerate(zip(segments, phrases)):
        span = phrase_span(tokens, text_tokens(phrase_ids[j], eos_id), taken)
        if span is None:
            raise ConditionError(f"{where}, segment {j}.phrase = {phrase!r}: not found in the prompt {prompt!r}")
        placed.append(PlacedSegment(phrase, (span[0] + 1, span[1] + 1),  # + 1: the prompt's BOS
                                    rasterize(segment, height, width, f"{where}, segment {j}")))
        taken.append(span)
    return placed


def build_dense(prompts: Sequence[str], segments: Sequence[Sequence[Segment]] | None, context: torch.Tensor,
                tokenize: Callable[[list[str]], torch.Tensor], encode: Callable[[list[str]], torch.Tensor],
                eos_id: int, height: int, width: int, replace_phrases: bool = True,
                weights: DenseWeights = DenseWeights()) -> tuple[torch.Tensor, DenseLayout | None]:
    """The prompts' context with every segment phrase's tokens replaced by the phrase encoded
    alone (unless not `replace_phrases`), and the DenseLayout of the batch (None without
    segments). `segments`: one list per prompt (None: none)."""
    b, length = context.shape[:2]
    if segments is None or not any(segments):
        return context, None
    if len(segments) != b:
        raise ConditionError(f"segments: {len(segments)} lists for {b} prompts; give one list per prompt")
    count = max(len(s) for s in segments)
    masks = torch.zeros(b, count, height, width, dtype=torch.bool)
    spans = torch.zeros(b, count, length, dtype=torch.bool)
    context = context.clone()
    for i, items in enumerate(segments):
        if not items:
            continue
        placed = place_segments(prompts[i], items, tokenize, eos_id, height, width, f"prompt {i}")
        alone = encode([p.phrase for p in placed]).to(context.device, context.dtype) if replace_phrases else None
        for j, p in enumerate(placed):
            start, end = p.span
            if replace_phrases:
                context[i, start:end] = alone[j, 1:1 + end - start]
            spans[i, j, start:end] = True
            masks[i, j] = p.mask
    active = torch.tensor([bool(items) for items in segments])
    return context, DenseLayout(masks, spans, active, weights)


def segments_from_interactions(interactions) -> list[Segment]:
    """The segments a layout implies: each interaction's subject and object phrase with its box
    (each distinct phrase and box once). For prompts written from the triplets, whose phrases all
    occur in them (the toy world's captions)."""
    seen, out = set(), []
    for it in interactions:
        for phrase, box in ((it.subject, it.subject_box), (it.object, it.object_box)):
            if (phrase, tuple(box)) not in seen:
                seen.add((phrase, tuple(box)))
                out.append(Segment(phrase, box=tuple(box)))
    return out


# ----------------------------------------------------------------------------- in the attention layers

def modulate(sim: torch.Tensor, same: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """sim [b, heads, q, k]; same (R) bool [b, q, k]; strength (S * w * t^5) [b, q]."""
    coef = strength[:, None, :, None].to(sim.dtype)
    rowmax = sim.amax(dim=-1, keepdim=True)
    rowmin = sim.amin(dim=-1, keepdim=True)
    return torch.where(same[:, None], sim + coef * (rowmax - sim), sim - coef * (sim - rowmin))


class DenseControl:
    """What the UNet's attention layers get for one forward: `self_attention(grid)` and
    `cross_attention(grid)` return a function sim -> sim for the layer's logits [B, heads, q, k]
    (B the forward's batch), or None where nothing is modulated. Maps are built once per feature
    map size and reused by every layer of that size."""

    def __init__(self, layout: DenseLayout, timesteps: torch.Tensor):
        self.layout, self.weights = layout, layout.weights
        self.rows = layout.active.nonzero().flatten()
        self.t5 = (timesteps[self.rows].float() / 1000) ** 5
        self._maps: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _at(self, grid: tuple[int, int]):
        """(masks [b, S, h*w] float, S [b, h*w]) of the active rows at this feature map size."""
        if grid not in self._maps:
            masks = self.layout.masks[self.rows].float()
            masks = F.interpolate(masks, size=grid, mode="nearest").flatten(2)  # [b, S, hw]
            area = masks.sum(-1, keepdim=True)                                  # [b, S, 1]
            size = 1 - (masks * area).sum(1) / masks.shape[-1]                  # [b, hw]
            self._maps[grid] = (masks, size)
        return self._maps[grid]

    def _apply(self, same: torch.Tensor, size: torch.Tensor, weight: float):
        strength = size * weight * self.t5[:, None].to(size.device)
        rows = self.rows

        def apply(sim: torch.Tensor) -> torch.Tensor:
            sim = sim.clone()
            sim[rows] = modulate(sim[rows], same, strength)
            return sim
        return apply

    def self_attention(self, grid: tuple[int, int]):
        if not len(self.rows):
            return None
        masks, size = self._at(grid)
        same = torch.einsum("bnq,bnk->bqk", masks, masks) > 0
        return self._apply(same, size, self.weights.self_attention)

    def cross_attention(self, grid: tuple[int, int]):
        if not len(self.rows):
            return None
        masks, size = self._at(grid)
        spans = self.layout.spans[self.rows].float()
        same = torch.einsum("bnq,bnk->bqk", masks, spans) > 0
        return self._apply(same, size, self.weights.cross_attention)


# ----------------------------------------------------------------------------- records and the control

SEGMENT_REGIONS = ("box", "polygon", "mask", "rle")
SEGMENT_COLOUR = (240, 150, 20)


def segments_from_record(record: dict, where: str = "record", base_dir: str | None = None) -> list[Segment]:
    """A record's `segments` list as Segments ([] without one); mask paths relative to
    `base_dir`. The regions are checked when rasterized at the image's size."""
    items = record.get("segments", [])
    if not isinstance(items, list):
        raise ConditionError(f"{where}: segments = {items!r}: expected a list of objects")
    out = []
    for j, item in enumerate(items):
        field = f"{where}, segment {j}"
        if not isinstance(item, dict):
            raise ConditionError(f"{field}: expected an object with phrase and one of {', '.join(SEGMENT_REGIONS)}")
        unknown = sorted(str(k) for k in item if k not in ("phrase", *SEGMENT_REGIONS))
        if unknown:
            raise ConditionError(f"{field}: unknown key(s) {', '.join(unknown)} (a segment has phrase and one of "
                                 f"{', '.join(SEGMENT_REGIONS)})")
        phrase = check_phrase(item.get("phrase"), f"{field}.phrase")
        mask = item.get("mask")
        if isinstance(mask, str) and base_dir is not None and not os.path.isabs(mask):
            mask = os.path.join(base_dir, mask)
        out.append(Segment(phrase, box=item.get("box"), polygon=item.get("polygon"), mask=mask, rle=item.get("rle")))
    return out


@register
class SegmentControl(Control):
    name = "segments"
    title = "DenseDiffusion"
    record_keys = ("segments",)
    record_label = "segments"
    slot = "segments"
    example = {"prompt": "a person holding a cup", "segments": [{"phrase": "person", "box": [0.1, 0.1, 0.5, 0.9]},
                                                               {"phrase": "cup", "polygon": [[0.5, 0.4], [0.8, 0.4],
                                                                                             [0.65, 0.7]]}]}
    item_type = Segment
    trained = False

    @classmethod
    def parse(cls, record, where, base_dir=None):
        if "segments" not in record:
            return None
        items = segments_from_record(record, where, base_dir)
        if items and not (isinstance(record.get("prompt"), str) and record["prompt"].strip()):
            raise ConditionError(f"{where}: segments need a prompt (their phrases are found in it)")
        return items

    @classmethod
    def precheck(cls, items, where, image_size):
        for j, segment in enumerate(items):
            rasterize(segment, *image_size, f"{where}, segment {j}")

    @classmethod
    def sidecar(cls, record, items):
        return {"segments": record["segments"]} if items else {}   # as the layouts file gives them

    @classmethod
    def draw(cls, draw, items, size, image_size):
        from interact.controls.drawing import draw_box
        h, w = image_size
        for n, segment in enumerate(items):
            region = rasterize(segment, h, w, f"segment {n}")
            ys, xs = region.nonzero(as_tuple=True)
            box = (xs.min().item() / w, ys.min().item() / h, (xs.max().item() + 1) / w, (ys.max().item() + 1) / h)
            draw_box(draw, box, f"{n}:{segment.phrase}", SEGMENT_COLOUR, size)

    def check(self, items, where, prompt="", text=None, image_size=None):
        if items and text is not None and image_size is not None:
            place_segments(prompt, items, text.tokenize, text.eos_id, *image_size, where)
        return items

    def build(self, captions, batch, text, context, image_size, options):
        if not any(batch):
            return context, None
        if image_size is None:
            raise ValueError("segments need the image_size (height, width) their masks are drawn at")
        replace = getattr(options, "dense_phrase_embeddings", True)
        weights = DenseWeights(getattr(options, "dense_self_weight", DenseWeights.self_attention),
                               getattr(options, "dense_cross_weight", DenseWeights.cross_attention))
        return build_dense(captions, batch, context, text.tokenize, text.encode, text.eos_id, *image_size, replace,
                           weights)

    def entries(self, input: DenseLayout, timesteps, scale):
        if scale == 0 or not input.any_active:
            return {}
        return {"attention": DenseControl(input, timesteps)}

    def step_scale(self, step_index, steps, options):
        return 1.0 if step_index < int(options.dense_steps * steps) else 0.0
