"""Box-aware fuser attention (interaction.box_attention): each visual token attends to an
interaction token only where the token's region covers the token's grid cell. Checked against
slow references written here (a cell-by-cell overlap loop, explicit masked softmax) and for the
properties the option promises: locality, and no change at all under the null grounding."""
from __future__ import annotations

import math

import pytest
import torch

from interact.fuser import GatedCrossAttentionDense, GatedSelfAttentionDense, region_mask
from interact.controls.interactions import HOIPositionNet
from helpers import (C, CTX, IN, NMAX, OUT, attention_reference, dense_reference, layer_norm_reference,
                     random_fuser, random_grounding_inputs)

GRID = (3, 4)
NV = GRID[0] * GRID[1]


def region_mask_reference(regions, h, w):
    """Loop over cells: a cell [j/w, (j+1)/w] x [i/h, (i+1)/h] and a region overlap when their
    closed intervals meet on both axes."""
    b, t, _ = regions.shape
    out = torch.zeros(b, h * w, t, dtype=torch.bool)
    for bi in range(b):
        for ti in range(t):
            x0, y0, x1, y1 = regions[bi, ti].tolist()
            for i in range(h):
                for j in range(w):
                    out[bi, i * w + j, ti] = x0 <= (j + 1) / w and x1 >= j / w and y0 <= (i + 1) / h and y1 >= i / h
    return out


def test_region_mask_matches_the_cell_loop():
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(2, 7, 2, 2, generator=g, dtype=torch.float64)
    regions = torch.cat([corners.min(2).values, corners.max(2).values], dim=-1)
    regions[0, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])        # the whole image
    regions[0, 1] = torch.tensor([0.5, 0.2, 0.5, 0.7])        # zero width, on a cell edge (w = 4)
    regions[1, 0] = torch.tensor([0.30, 0.40, 0.30, 0.40])    # a point
    got = region_mask(regions, GRID)
    assert torch.equal(got, region_mask_reference(regions, *GRID))
    assert got[0, :, 0].all() and got[0, :, 1].sum() == 2 * 3 and got[1, :, 0].sum() == 1


def gated(f, x, out, scale):
    x = x + scale * math.tanh(f.alpha_attn.item()) * (out @ f.attn.to_out[0].weight.T + f.attn.to_out[0].bias)
    return dense_reference(f, x, scale)


def self_reference(f, x, tokens, mask, scale):
    n = x.shape[1]
    h = layer_norm_reference(torch.cat([x, tokens @ f.linear.weight.T + f.linear.bias], dim=1), f.norm1)
    full = torch.cat([torch.ones(x.shape[0], n, n, dtype=torch.bool), mask], dim=2)
    out = attention_reference(h[:, :n] @ f.attn.to_q.weight.T, h @ f.attn.to_k.weight.T,
                                     h @ f.attn.to_v.weight.T, f.attn.heads, full)
    return gated(f, x, out, scale)


def cross_reference(f, x, tokens, mask, scale):
    visual = layer_norm_reference(x, f.norm1)
    tokens = layer_norm_reference(tokens @ f.linear.weight.T + f.linear.bias, f.norm_objs)
    reached = mask.any(-1, keepdim=True)
    out = attention_reference(visual @ f.attn.to_q.weight.T, tokens @ f.attn.to_k.weight.T,
                                     tokens @ f.attn.to_v.weight.T, f.attn.heads, mask | ~reached)
    return gated(f, x, out * reached, scale)


def box_fuser(cls, seed, box_attention=True):
    return random_fuser(cls, seed, box_attention=box_attention)


def grounded_inputs(seed, n_tokens=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, NV, C, generator=g, dtype=torch.float64)
    tokens = torch.randn(2, n_tokens, CTX, generator=g, dtype=torch.float64)
    corners = torch.rand(2, n_tokens, 2, 2, generator=g, dtype=torch.float64)
    regions = torch.cat([corners.min(2).values, corners.max(2).values], dim=-1) * 0.6
    return x, tokens, regions


@torch.no_grad()
@pytest.mark.parametrize("cls, reference", [(GatedSelfAttentionDense, self_reference),
                                            (GatedCrossAttentionDense, cross_reference)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_box_attention_fusers_match_slow_reference(cls, reference, scale):
    f = box_fuser(cls, 1)
    x, tokens, regions = grounded_inputs(2)
    mask = region_mask_reference(regions, *GRID)
    assert not mask.all() and mask.any()
    if cls is GatedCrossAttentionDense:
        assert not mask.any(-1).all()    # some cells see no token: their attention output is zero
    torch.testing.assert_close(f.fuse(x, tokens, scale, GRID, regions), reference(f, x, tokens, mask, scale), rtol=0,
                               atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("cls", [GatedSelfAttentionDense, GatedCrossAttentionDense])
def test_a_token_reaches_only_the_cells_of_its_region(cls):
    """Changing token 0's content changes the fuser's attention output in the cells its region
    covers and nowhere else (the feed-forward branch is per cell too)."""
    f = box_fuser(cls, 3)
    x, tokens, regions = grounded_inputs(4)
    other = tokens.clone()
    other[:, 0] += 5.0
    moved = (f.fuse(x, other, 1.0, GRID, regions) - f.fuse(x, tokens, 1.0, GRID, regions)).abs().amax(-1)
    covered = region_mask(regions, GRID)[..., 0]
    assert (moved[covered] > 1e-6).all() and (moved[~covered] == 0).all()


@torch.no_grad()
@pytest.mark.parametrize("cls", [GatedSelfAttentionDense, GatedCrossAttentionDense])
def test_whole_image_regions_equal_the_plain_fuser(cls):
    """Padded slots cover the whole image, so under the null grounding (every slot padded) box
    attention computes exactly what the plain fuser computes with the same weights."""
    boxed, plain = box_fuser(cls, 5), box_fuser(cls, 5, box_attention=False)
    plain.load_state_dict(boxed.state_dict())
    x, tokens, regions = grounded_inputs(6)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64).expand_as(regions)
    torch.testing.assert_close(boxed.fuse(x, tokens, 1.0, GRID, whole), plain.fuse(x, tokens, 1.0, GRID), rtol=0,
                               atol=1e-12)
    with pytest.raises(ValueError, match="regions"):
        boxed.fuse(x, tokens, 1.0, GRID)


@pytest.mark.parametrize("action_tokens", [True, False])
def test_token_regions(action_tokens):
    torch.manual_seed(0)
    net = HOIPositionNet(in_dim=IN, out_dim=OUT, hidden_dim=32, max_interactions=NMAX, box_attention="boxes",
                         action_tokens=action_tokens).double()
    inputs = random_grounding_inputs(2, NMAX, seed=1)   # padded slots hold garbage boxes
    tokens = net(*inputs)
    sb, ab, ob, m = inputs[:4]
    regions = net.token_regions(sb, ab, ob, m)
    roles = [sb, ab, ob] if action_tokens else [sb, ob]     # token order: subjects, actions, objects
    assert tokens.shape == (2, len(roles) * NMAX, OUT) and regions.shape == (2, len(roles) * NMAX, 4)
    for b in range(m.shape[0]):
        for n in range(NMAX):
            for k, boxes in enumerate(roles):
                region = regions[b, k * NMAX + n].tolist()
                assert region == ([0.0, 0.0, 1.0, 1.0] if m[b, n] == 0 else boxes[b, n].tolist())
    # the tokens themselves are the plain tokenizer's
    plain = HOIPositionNet(in_dim=IN, out_dim=OUT, hidden_dim=32, max_interactions=NMAX,
                           action_tokens=action_tokens).double()
    plain.load_state_dict(net.state_dict())
    torch.testing.assert_close(tokens, plain(*inputs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="box_attention"):
        HOIPositionNet(in_dim=IN, out_dim=OUT, box_attention="pair")


def test_a_file_trained_with_box_attention_names_the_switch_when_the_config_lacks_it(tmp_path):
    """Box attention has no weights of its own: the file's stored config says it was on."""
    from omegaconf import OmegaConf

    from interact.checkpoint import CheckpointError, load_weights, save_checkpoint
    from interact.model import build_model
    from helpers import TINY_CONFIG
    boxed = OmegaConf.load(TINY_CONFIG)
    boxed.interaction.box_attention = "boxes"
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "boxed.pth", build_model(boxed))
    load_weights(build_model(boxed, device="meta"), tmp_path / "boxed.pth", purpose="generate")  # the same switch: loads
    with pytest.raises(CheckpointError, match="box_attention = boxes"):
        load_weights(build_model(TINY_CONFIG, device="meta"), tmp_path / "boxed.pth", purpose="generate")
    # and the other way: a plain file's stored config says it was off
    save_checkpoint(tmp_path / "plain.pth", build_model(TINY_CONFIG))
    with pytest.raises(CheckpointError, match="box_attention = none"):
        load_weights(build_model(boxed, device="meta"), tmp_path / "plain.pth", purpose="generate")
