"""Tests for ldm.modules.attention and the UNet (ldm.modules.diffusionmodules.openaimodel).

CPU, fp32, tiny sizes; the full SD v1.x size is only built on the meta device.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from interact.fuser import GatedSelfAttentionDense, attach_fusers
from interact.controls.interactions import HOIPositionNet
from helpers import open_gates, with_tokens
from ldm.modules.attention import (
    BasicTransformerBlock,
    CrossAttention,
    GroupNorm32,
    attention_backend,
    get_attention_backend,
    multihead_attention,
)
from ldm.modules.diffusionmodules.openaimodel import UNetModel, timestep_embedding

CTX = 16
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
            num_heads=4, context_dim=CTX, norm_groups=8)

RELEASED_FUSER_BLOCKS = (
    [f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block.1"]
    + [f"output_blocks.{i}.1" for i in range(3, 12)]
)


# --------------------------------------------------------------------------- attention


def attention_loop(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v, one batch item and one head at a time, float64."""
    q, k, v = q.double(), k.double(), v.double()
    b, nq, inner = q.shape
    d = inner // heads
    out = torch.zeros(b, nq, inner, dtype=torch.float64)
    for i in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            sim = q[i, :, sl] @ k[i, :, sl].T / math.sqrt(d)
            w = torch.exp(sim - sim.max(-1, keepdim=True).values)
            out[i, :, sl] = (w / w.sum(-1, keepdim=True)) @ v[i, :, sl]
    return out


def qkv(seed=0, b=2, nq=5, nk=7, heads=4, d=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nq, heads * d, generator=g), torch.randn(b, nk, heads * d, generator=g),
            torch.randn(b, nk, heads * d, generator=g))


@torch.no_grad()
@pytest.mark.parametrize("nq, nk", [(5, 7), (9, 9), (1, 90)])
def test_multihead_attention_backends_agree_with_loop(nq, nk):
    q, k, v = qkv(nq=nq, nk=nk)
    assert get_attention_backend() == "sdpa"
    sdpa = multihead_attention(q, k, v, 4)
    with attention_backend("naive"):
        assert get_attention_backend() == "naive"
        naive = multihead_attention(q, k, v, 4)
    assert get_attention_backend() == "sdpa"
    assert sdpa.shape == naive.shape == (2, nq, 12)
    torch.testing.assert_close(sdpa, naive, rtol=0, atol=1e-5)
    ref = attention_loop(q, k, v, 4).float()
    torch.testing.assert_close(sdpa, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(naive, ref, rtol=0, atol=1e-5)


def test_multihead_attention_heads_are_separate():
    # Changing one head's keys must leave the other heads' outputs unchanged.
    q, k, v = qkv(seed=1)
    base = multihead_attention(q, k, v, 4)
    k2 = k.clone()
    k2[..., 3:6] = torch.randn(k2[..., 3:6].shape, generator=torch.Generator().manual_seed(9)) * 3  # head 1 only (d = 3)
    changed = multihead_attention(q, k2, v, 4)
    assert torch.equal(changed[..., :3], base[..., :3])
    assert torch.equal(changed[..., 6:], base[..., 6:])
    assert (changed[..., 3:6] - base[..., 3:6]).abs().max() > 1e-3


def test_attention_backend_rejects_unknown_and_restores_after_error():
    with pytest.raises(ValueError, match="flash"):
        with attention_backend("flash"):
            pass
    assert get_attention_backend() == "sdpa"
    with pytest.raises(RuntimeError):
        with attention_backend("naive"):
            raise RuntimeError("boom")
    assert get_attention_backend() == "sdpa"


@torch.no_grad()
def test_cross_attention_layer_matches_reference():
    torch.manual_seed(0)
    attn = CrossAttention(12, 10, heads=2, dim_head=5).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 6, 12, generator=g), torch.randn(2, 4, 10, generator=g)
    ref = attention_loop(x @ attn.to_q.weight.T, ctx @ attn.to_k.weight.T, ctx @ attn.to_v.weight.T, 2).float()
    ref = ref @ attn.to_out[0].weight.T + attn.to_out[0].bias
    torch.testing.assert_close(attn(x, ctx), ref, rtol=0, atol=1e-5)
    with attention_backend("naive"):
        torch.testing.assert_close(attn(x, ctx), ref, rtol=0, atol=1e-5)
    # self-attention when context is None
    torch.testing.assert_close(attn.to_k.in_features, 10)
    sa = CrossAttention(12, None, heads=3, dim_head=4).eval()
    ref = attention_loop(x @ sa.to_q.weight.T, x @ sa.to_k.weight.T, x @ sa.to_v.weight.T, 3).float()
    torch.testing.assert_close(sa(x), ref @ sa.to_out[0].weight.T + sa.to_out[0].bias, rtol=0, atol=1e-5)


class AddFuser(torch.nn.Module):
    """Stand-in for a module in the fuser slot: reads its own entry ("mine") of the controls
    mapping, records its input and adds scale * mean(tokens)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, controls, grid=None):
        tokens, scale = controls["mine"]
        self.seen.append((x.clone(), scale))
        return x + scale * tokens.mean(dim=1, keepdim=True)


@torch.no_grad()
def test_transformer_block_order_self_fuser_cross_ff():
    torch.manual_seed(0)
    blk = BasicTransformerBlock(8, 2, 4, context_dim=6).eval()
    blk.fuser = AddFuser()
    g = torch.Generator().manual_seed(1)
    x, ctx, tokens = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 6, generator=g), torch.randn(2, 4, 8, generator=g)
    got = blk(x, ctx, {"mine": (tokens, 0.25), "someone else's": None})
    h = x + blk.attn1(blk.norm1(x))
    torch.testing.assert_close(blk.fuser.seen[0][0], h, rtol=0, atol=0)  # fuser sees x after self-attention
    assert blk.fuser.seen[0][1] == 0.25
    h = h + 0.25 * tokens.mean(dim=1, keepdim=True)
    h = h + blk.attn2(blk.norm2(h), ctx)
    h = h + blk.ff(blk.norm3(h))
    torch.testing.assert_close(got, h, rtol=0, atol=1e-6)


def test_transformer_block_checkpointing_same_values_and_grads():
    torch.manual_seed(0)
    plain = BasicTransformerBlock(8, 2, 4, context_dim=6).train()
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 6, generator=g)
    outs = []
    for blk in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        y = blk(xi, ctx)
        (y ** 2).sum().backward()
        outs.append((y.detach(), xi.grad, [p.grad for p in blk.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for a, b in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(a, b)


def test_groupnorm32_computes_in_float32():
    torch.manual_seed(0)
    gn = GroupNorm32(2, 4, eps=1e-6)
    x = (torch.randn(1, 4, 3, 3) * 3 + 100).to(torch.bfloat16)
    out = gn(x)
    assert out.dtype == torch.bfloat16
    want = F.group_norm(x.float(), 2, gn.weight, gn.bias, 1e-6).to(torch.bfloat16)
    assert torch.equal(out, want)


def test_tiny_unet_runs_in_half_precision_weights():
    """`--half` casts the whole model: GroupNorm32's half weights must not clash with its fp32 compute."""
    torch.manual_seed(0)
    unet = UNetModel(**TINY).eval()
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, CTX)
    with torch.no_grad():
        ref = unet(x, torch.tensor([10]), ctx)
        out = unet.to(torch.bfloat16)(x.bfloat16(), torch.tensor([10]), ctx.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.1)


# --------------------------------------------------------------------------- timestep embedding


@pytest.mark.parametrize("dim", [8, 7, 320])
def test_timestep_embedding_closed_form(dim):
    ts = [0, 1, 17, 500, 999]
    got = timestep_embedding(torch.tensor(ts), dim)
    assert got.shape == (len(ts), dim) and got.dtype == torch.float32
    half = dim // 2
    for r, t in enumerate(ts):
        want = [math.cos(t * math.exp(-math.log(10000.0) * i / half)) for i in range(half)]
        want += [math.sin(t * math.exp(-math.log(10000.0) * i / half)) for i in range(half)]
        if dim % 2:
            want.append(0.0)
        # t up to 999 in float32 arguments: a few ulps of 1e3 radians
        torch.testing.assert_close(got[r], torch.tensor(want), rtol=0, atol=2e-4)


# --------------------------------------------------------------------------- UNet


def tiny_unet(seed=0, fusers=False, alpha=None) -> UNetModel:
    torch.manual_seed(seed)
    unet = UNetModel(**TINY)
    if fusers:
        attach_fusers(unet, CTX)
        if alpha is not None:
            open_gates(unet, alpha, -alpha)
    return unet.eval()


def unet_inputs(b=2, n_tokens=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700][:b] + [300] * max(0, b - 2))
    ctx = torch.randn(b, 5, CTX, generator=g)
    tokens = torch.randn(b, n_tokens, CTX, generator=g)
    return x, t, ctx, tokens


@torch.no_grad()
def test_tiny_unet_shape_determinism_and_conditioning():
    unet = tiny_unet()
    x, t, ctx, _ = unet_inputs()
    out = unet(x, t, ctx)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert torch.equal(unet(x, t, ctx), out)
    # the prompt and the timestep both reach the output
    assert (unet(x, t, ctx + 1.0) - out).abs().max() > 1e-4
    assert (unet(x, t + 100, ctx) - out).abs().max() > 1e-4
    # a scalar timestep is broadcast over the batch
    same_t = unet(x, torch.tensor([42, 42]), ctx)
    torch.testing.assert_close(unet(x, torch.tensor(42), ctx), same_t, rtol=0, atol=0)


def test_full_size_unet_with_fusers_and_position_net_matches_manifest(manifest):
    expected = manifest["model"]
    assert len(expected) == 975
    with torch.device("meta"):
        unet = UNetModel()
        n = attach_fusers(unet, 768)
        unet.position_net = HOIPositionNet()
    assert n == 16
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]} == {}

    names = [name for name, _ in unet.transformer_blocks()]
    assert names == [f"{b}.transformer_blocks.0" for b in RELEASED_FUSER_BLOCKS]
    widths = {}
    for name, blk in unet.transformer_blocks():
        assert isinstance(blk.fuser, GatedSelfAttentionDense)
        assert blk.fuser.attn.heads == 8
        fuser_keys = [k for k in expected if k.startswith(name + ".fuser.")]
        assert len(fuser_keys) == 17
        widths[name] = blk.fuser.linear.out_features
    assert set(widths.values()) == {320, 640, 1280}


@torch.no_grad()
def test_zero_gate_fusers_leave_unet_unchanged():
    x, t, ctx, tokens = unet_inputs()
    base = tiny_unet()(x, t, ctx)
    fused = tiny_unet(fusers=True)  # same seed: same backbone weights (fusers created after)
    assert torch.equal(fused(x, t, ctx), base)
    assert torch.equal(fused(x, t, ctx, with_tokens(tokens)), base)


def count_fuser_calls(unet):
    """Counts the fusers' computations (`fuse`: a fuser without its entry, or at scale 0, adds
    nothing and computes nothing)."""
    counter = {"n": 0}

    def counted(fuse):
        def wrapper(*args, **kwargs):
            counter["n"] += 1
            return fuse(*args, **kwargs)
        return wrapper

    blocks = [blk for _, blk in unet.transformer_blocks()]
    for blk in blocks:
        blk.fuser.fuse = counted(blk.fuser.fuse)

    class Restore:
        def remove(self):
            for blk in blocks:
                del blk.fuser.fuse
    return counter, [Restore()]


@torch.no_grad()
def test_fuser_scale_zero_equals_no_tokens_and_skips_fuser():
    unet = tiny_unet(fusers=True, alpha=0.7)
    x, t, ctx, tokens = unet_inputs()
    counter, handles = count_fuser_calls(unet)
    no_tokens = unet(x, t, ctx, None)
    assert counter["n"] == 0
    off = unet(x, t, ctx, with_tokens(tokens, 0.0))
    assert counter["n"] == 0
    assert torch.equal(off, no_tokens)
    on = unet(x, t, ctx, with_tokens(tokens, 1.0))
    assert counter["n"] == 7
    assert (on - no_tokens).abs().max() > 1e-4
    half = unet(x, t, ctx, with_tokens(tokens, 0.5))
    assert (half - on).abs().max() > 1e-5 and (half - no_tokens).abs().max() > 1e-5
    # the tokens themselves matter
    assert (unet(x, t, ctx, with_tokens(tokens + 1.0)) - on).abs().max() > 1e-4
    for h in handles:
        h.remove()


@torch.no_grad()
def test_fused_unet_with_90_tokens_and_empty_tokens():
    unet = tiny_unet(fusers=True, alpha=0.5)
    x, t, ctx, tokens = unet_inputs(n_tokens=3 * 30)
    out = unet(x, t, ctx, with_tokens(tokens))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out - unet(x, t, ctx)).abs().max() > 1e-4
    # zero grounding tokens: the fuser still runs (gated self-attention over the visual tokens only)
    empty = unet(x, t, ctx, with_tokens(tokens[:, :0]))
    assert empty.shape == x.shape and torch.isfinite(empty).all()
    assert (empty - out).abs().max() > 1e-4


@torch.no_grad()
def test_fused_unet_batch_independence():
    unet = tiny_unet(fusers=True, alpha=0.9)
    x, t, ctx, tokens = unet_inputs(n_tokens=3 * 30, seed=3)
    both = unet(x, t, ctx, with_tokens(tokens))
    for i in range(2):
        alone = unet(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], with_tokens(tokens[i:i + 1]))
        torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=1e-5)
    # and the two items really were conditioned differently
    swapped = unet(x, t, ctx, with_tokens(tokens.flip(0)))
    assert (swapped - both).abs().max() > 1e-4


@torch.no_grad()
def test_naive_and_sdpa_backends_agree_on_fused_unet():
    unet = tiny_unet(fusers=True, alpha=0.6)
    x, t, ctx, tokens = unet_inputs()
    sdpa = unet(x, t, ctx, with_tokens(tokens))
    with attention_backend("naive"):
        naive = unet(x, t, ctx, with_tokens(tokens))
    torch.testing.assert_close(sdpa, naive, rtol=0, atol=1e-4)
