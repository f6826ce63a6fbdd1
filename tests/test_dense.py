"""DenseDiffusion: the modulation against a slow reference, the prompt's phrase spans, the masks
(box, polygon, PNG, COCO RLE) and the pipeline's use of them."""
from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hoi.records import ConditionError, Interaction, Segment
from interact.controls.segments import DenseControl, DenseLayout, DenseWeights, decode_rle, rasterize, segments_from_interactions
from interact.pipeline import InteractDiffusionPipeline
from helpers import TINY_CONFIG
from ldm.modules.attention import CrossAttention

TINY = TINY_CONFIG
FAST = dict(steps=4, height=32, width=32, progress=False, output_type="pt", sampler="ddim")


# ----------------------------------------------------------------------------- the formula


def slow_attention(layer: CrossAttention, x, context, heads, same, size, weight, t):
    """softmax(sim') v with the logits modulated one entry at a time; `same` [q][k] (R) and `size`
    [q] (S) for this row, or None for an unmodulated row."""
    q, k, v = layer.to_q(x), layer.to_k(context), layer.to_v(context)
    d = q.shape[-1] // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        qh, kh, vh = (m[:, h * d:(h + 1) * d] for m in (q, k, v))
        for i in range(qh.shape[0]):
            sim = [float(qh[i] @ kh[j]) / math.sqrt(d) for j in range(kh.shape[0])]
            if same is not None:
                top, bottom = max(sim), min(sim)
                strength = size[i] * weight * (t / 1000) ** 5
                sim = [s + strength * (top - s) if same[i][j] else s - strength * (s - bottom)
                       for j, s in enumerate(sim)]
            p = torch.tensor(sim, dtype=torch.float64).softmax(0).to(q.dtype)
            out[i, h * d:(h + 1) * d] = p @ vh
    return layer.to_out(out)


def _layout():
    """Two rows (conditional, unconditional) of a 4x4 image with two overlapping segments; the
    phrases' tokens at 1-2 and 4 of 6."""
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[:, 0, :2, :3] = True        # 6 pixels
    masks[:, 1, 1:4, 2:4] = True      # 6 pixels, overlapping the first at (1, 2)
    spans = torch.zeros(2, 2, 6, dtype=torch.bool)
    spans[:, 0, 1:3] = True
    spans[:, 1, 4] = True
    return DenseLayout(masks, spans, torch.tensor([True, False]))


def _maps(layout):
    """R for self- and cross-attention and S, written out per pixel from the masks."""
    m = layout.masks[0].flatten(1).tolist()   # [S][16]
    spans = layout.spans[0].tolist()
    area = [sum(row) for row in m]
    pixels = range(16)
    same_self = [[any(m[n][p] and m[n][q] for n in range(2)) for q in pixels] for p in pixels]
    same_cross = [[any(m[n][p] and spans[n][j] for n in range(2)) for j in range(6)] for p in pixels]
    size = [1 - sum(area[n] for n in range(2) if m[n][p]) / 16 for p in pixels]
    return same_self, same_cross, size


@pytest.mark.parametrize("kind", ["self", "cross"])
@torch.no_grad()
def test_modulation_matches_a_slow_reference(kind):
    torch.manual_seed(0)
    heads, dim, ctx_dim = 2, 8, 6
    layer = CrossAttention(dim, None if kind == "self" else ctx_dim, heads, dim // heads).double()
    x = torch.randn(2, 16, dim, dtype=torch.float64)
    context = x if kind == "self" else torch.randn(2, 6, ctx_dim, dtype=torch.float64)
    layout, t = _layout(), 700
    weights = DenseWeights(self_attention=0.3, cross_attention=1.0)
    control = DenseControl(dataclasses.replace(layout, weights=weights), torch.tensor([t, t]))
    modulate = control.self_attention((4, 4)) if kind == "self" else control.cross_attention((4, 4))
    got = layer(x, None if kind == "self" else context, modulate=modulate)
    same_self, same_cross, size = _maps(layout)
    same, weight = (same_self, 0.3) if kind == "self" else (same_cross, 1.0)
    expected0 = slow_attention(layer, x[0], context[0], heads, same, size, weight, t)
    expected1 = slow_attention(layer, x[1], context[1], heads, None, None, 0, t)   # unconditional: untouched
    # (the strength S w t^5 is computed in float32: 1e-7 relative)
    torch.testing.assert_close(got[0], expected0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(got[1], expected1, rtol=1e-9, atol=1e-10)
    plain = layer(x, None if kind == "self" else context)
    assert (got[0] - plain[0]).abs().max() > 1e-3 and torch.allclose(got[1], plain[1])


def test_masks_are_resized_to_each_layer_by_nearest_sampling():
    layout = _layout()
    layout = DenseLayout(layout.masks.repeat_interleave(2, 2).repeat_interleave(2, 3), layout.spans, layout.active)
    coarse = DenseControl(layout, torch.tensor([500, 500]))._at((4, 4))
    fine = DenseControl(_layout(), torch.tensor([500, 500]))._at((4, 4))
    torch.testing.assert_close(coarse[0], fine[0])
    torch.testing.assert_close(coarse[1], fine[1])


def test_no_active_row_keeps_the_fast_path():
    layout = _layout().null()
    control = DenseControl(layout, torch.tensor([500, 500]))
    assert control.self_attention((4, 4)) is None and control.cross_attention((4, 4)) is None


# ----------------------------------------------------------------------------- masks


def rle_counts(mask: np.ndarray) -> list[int]:
    """Column-major runs, starting with 0s (COCO)."""
    flat = mask.T.reshape(-1).astype(int)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed counts, written from its description: 5-bit groups + 48, 0x20 = more,
    deltas to the run two before from the fourth run on."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            group = x & 0x1F
            x >>= 5
            more = x != -1 if group & 0x10 else x != 0
            out.append(chr((group | (0x20 if more else 0)) + 48))
            if not more:
                break
    return "".join(out)


def test_rle_hand_example_and_compressed_round_trip():
    # 3x2 (h x w), column-major: column 0 = [0, 1, 1], column 1 = [1, 0, 0]
    mask = decode_rle({"size": [3, 2], "counts": [1, 3, 2]}, "rle")
    assert mask.tolist() == [[False, True], [True, False], [True, False]]
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((17, 23)) < 0.4
        counts = rle_counts(m)
        assert np.array_equal(decode_rle({"size": [17, 23], "counts": counts}, "rle"), m)
        assert np.array_equal(decode_rle({"size": [17, 23], "counts": rle_string(counts)}, "rle"), m)


def test_box_polygon_png_and_array_masks(tmp_path):
    box = rasterize(Segment("a", box=(0.25, 0.0, 0.75, 0.5)), 8, 8, "s")
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 2:6] = True
    assert torch.equal(box, expected)
    square = rasterize(Segment("a", polygon=[[0.25, 0.0], [0.75, 0.0], [0.75, 0.5], [0.25, 0.5]]), 8, 8, "s")
    assert square[1:3, 3:5].all() and not square[6:, :].any() and not square[:, 7].any()
    png = tmp_path / "m.png"
    Image.fromarray(expected.numpy().astype(np.uint8) * 255).save(png)
    assert torch.equal(rasterize(Segment("a", mask=str(png)), 8, 8, "s"), expected)
    assert torch.equal(rasterize(Segment("a", mask=expected.numpy()), 8, 8, "s"), expected)


@pytest.mark.parametrize("segment, message", [
    (Segment("a", mask=np.ones((4, 8))), "s.mask: 4x8 (height x width) does not match the image, 8x8"),
    (Segment("a", mask=np.arange(64).reshape(8, 8)), "s.mask: not a binary mask (values 0, 1, 2, 3, 4, ...)"),
    (Segment("a", mask=np.zeros((8, 8))), "s.mask: the region is empty at 8x8"),
    (Segment("a", rle={"size": [8, 8], "counts": [3, 4]}), "s.rle: the runs cover 7 pixels, size 8x8 has 64"),
    (Segment("a", rle={"size": [8, 8], "counts": "\x7f"}), "s.rle.counts: character '\\x7f' is not in the RLE"),
    (Segment("a", box=(0.1, 0.1, 0.5, 0.5), rle={"size": [8, 8], "counts": [64]}),
     "s: give exactly one of box, polygon, mask, rle (got box, rle)"),
    (Segment("a"), "s: give exactly one of box, polygon, mask, rle (got none)"),
    (Segment("a", box=(0.5, 0.1, 0.2, 0.5)), "s.box = (0.5, 0.1, 0.2, 0.5): need x0 < x1"),
])
def test_bad_masks_are_one_line_naming_the_segment(segment, message):
    with pytest.raises(ConditionError) as err:
        rasterize(segment, 8, 8, "s")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pipe():
    return InteractDiffusionPipeline.from_config(TINY, seed=0, device="cpu")


def test_phrase_tokens_are_replaced_by_the_phrase_alone(pipe):
    model = pipe.model
    prompt = "a red ball next to a tall tree"
    cond = model.condition([prompt], segments=[[Segment("tall tree", box=(0.5, 0, 1, 1))]], image_size=(32, 32))
    ids = model.text_encoder.tokenize([prompt])[0].tolist()
    tree = model.text_encoder.tokenize(["tall tree"])[0].tolist()[1:3]
    start = next(i for i in range(len(ids)) if ids[i:i + 2] == tree)
    alone = model.text_encoder.encode(["tall tree"])[0]
    plain = model.text_encoder.encode([prompt])[0]
    torch.testing.assert_close(cond.context[0, start:start + 2], alone[1:3])
    keep = [i for i in range(len(ids)) if not start <= i < start + 2]
    torch.testing.assert_close(cond.context[0, keep], plain[keep])
    assert cond.controls["segments"].spans[0, 0].nonzero().flatten().tolist() == [start, start + 1]


def test_modulation_runs_on_the_conditional_rows_for_its_steps_only(pipe):
    unet, original, seen = pipe.model.unet, pipe.model.unet.forward, []

    def spy(x, t, context, controls=None):
        hook = (controls or {}).get("attention")
        seen.append(None if hook is None else hook.rows.tolist())
        return original(x, t, context, controls)
    unet.forward = spy
    segments = [Segment("ball", box=(0.1, 0.1, 0.5, 0.5))]
    try:
        pipe(["a ball", "a tree"], segments=[segments, []], seed=0, dense_steps=0.5, **FAST)
    finally:
        unet.forward = original
    # rows: "a ball", "a tree", then the two unconditional rows; int(0.5 * 4) = 2 modulated steps
    assert seen == [[0], [0], None, None]


def test_segments_change_the_image_and_stack_with_interactions_and_the_sampler(pipe):
    plain = pipe("a ball and a tree", seed=1, **FAST)
    dense = pipe("a ball and a tree", segments=[Segment("ball", box=(0, 0, 0.5, 0.5))], seed=1, **FAST)
    assert (dense - plain).abs().max() > 1e-4
    off = pipe("a ball and a tree", segments=[Segment("ball", box=(0, 0, 0.5, 0.5))], seed=1, dense_steps=0.0,
               **FAST)
    assert (off - dense).abs().max() > 1e-6   # the replaced phrase embedding alone still acts
    hoi = Interaction("person", "hold", "ball", (0.1, 0.1, 0.5, 0.9), (0.5, 0.5, 0.7, 0.7))
    both = pipe("a person holding a ball", [hoi], segments=segments_from_interactions([hoi]), multi_instance=0.5,
                seed=1, **FAST)
    assert both.shape == (1, 3, 32, 32) and torch.isfinite(both).all()


@pytest.mark.parametrize("prompt, segment, message", [
    ("a ball", Segment("tree", box=(0, 0, 1, 1)), "prompt 0, segment 0.phrase = 'tree': not found in the prompt"),
    ("", Segment("tree", box=(0, 0, 1, 1)), "prompt 0: segments need a prompt"),
    ("a ball", Segment("ball", mask=np.ones((8, 8))), "prompt 0, segment 0.mask: 8x8 (height x width) does not "
                                                      "match the image, 32x32"),
])
def test_bad_segments_name_the_prompt_and_segment(pipe, prompt, segment, message):
    with pytest.raises(ConditionError) as err:
        pipe(prompt, segments=[segment], **FAST)
    assert str(err.value).startswith(message)


def test_segments_from_a_layout():
    a = Interaction("person", "hold", "ball", (0.1, 0.1, 0.5, 0.9), (0.5, 0.5, 0.7, 0.7))
    b = Interaction("person", "kick", "ball", (0.1, 0.1, 0.5, 0.9), (0.6, 0.1, 0.9, 0.3))
    assert segments_from_interactions([a, b]) == [Segment("person", box=a.subject_box), Segment("ball", box=a.object_box),
                                                  Segment("ball", box=b.object_box)]


def test_a_repeated_phrase_takes_its_occurrences_in_order():
    from interact.controls.segments import phrase_span
    prompt = [5, 7, 9, 5, 7, 2, 7]
    assert phrase_span(prompt, [5, 7]) == (0, 2)
    assert phrase_span(prompt, [5, 7], taken=[(0, 2)]) == (3, 5)
    assert phrase_span(prompt, [5, 7], taken=[(0, 2), (3, 5)]) == (0, 2)   # all taken: the first again
    assert phrase_span(prompt, [9, 9]) is None


def test_phrase_replacement_can_be_left_out(pipe):
    prompt, segments = "a ball next to a tree", [Segment("tree", box=(0.5, 0, 1, 1))]
    kept = pipe.model.condition([prompt], segments=[segments], image_size=(32, 32), replace_phrases=False)
    torch.testing.assert_close(kept.context, pipe.model.text_encoder.encode([prompt]))
    assert kept.controls["segments"].any_active
    with_it = pipe(prompt, segments=segments, seed=3, **FAST)
    without = pipe(prompt, segments=segments, seed=3, dense_phrase_embeddings=False, **FAST)
    assert (with_it - without).abs().max() > 1e-6
