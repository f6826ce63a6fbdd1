"""Tests for the interaction control (interact/controls/interactions.py) and interact.fuser (CPU, tiny sizes).

Numerical code is checked against independent computations written here with
explicit loops (docs/reference.md §1 for the tokenizer, docs/reference.md §2 for the fuser).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from hoi.records import ConditionError, Interaction, MAX_INTERACTIONS, between, check_interactions
from interact.controls.interactions import Grounding, HOIPositionNet, build_grounding, interactions_from_record
from interact.fuser import GatedSelfAttentionDense, attach_fusers
from interact.controls.tokens import fourier_embed
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from helpers import (C, CTX, DHEAD, HEADS, HID, IN, NMAX, OUT, attention_reference, dense_reference,
                     fourier_reference, fuser_inputs, layer_norm_reference, random_fuser, random_grounding_inputs,
                     randomize_)


# --------------------------------------------------------------------------- Fourier


def test_fourier_embed_closed_form():
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.25, 0.6, 0.9]],
                          [[0.33, 0.01, 0.5, 0.77], [0.9, 0.8, 0.95, 0.99]]], dtype=torch.float64)
    got = fourier_embed(boxes)
    assert got.shape == (2, 2, 64)
    for b in range(2):
        for n in range(2):
            want = torch.tensor(fourier_reference(boxes[b, n].tolist()), dtype=torch.float64)
            torch.testing.assert_close(got[b, n], want, rtol=0, atol=1e-12)
    # float32 path agrees too.
    torch.testing.assert_close(fourier_embed(boxes.float()), got.float(), rtol=0, atol=1e-5)


def test_fourier_embed_has_no_pi_factor():
    # f_0 = 1: the first entry is sin(x0) itself, not sin(pi * x0).
    e = fourier_embed(torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.float64))
    assert e[0, 0].item() == pytest.approx(math.sin(0.5), abs=1e-12)
    assert e[0, 4].item() == pytest.approx(math.cos(0.5), abs=1e-12)


# --------------------------------------------------------------------------- between


def between_reference(s, o):
    xs = sorted([s[0], s[2], o[0], o[2]])
    ys = sorted([s[1], s[3], o[1], o[3]])
    return [xs[1], ys[1], xs[2], ys[2]]


@pytest.mark.parametrize("subject, obj, expected", [
    # disjoint: gap in x (0.3..0.6), overlap band in y (0.2..0.4)
    ((0.1, 0.1, 0.3, 0.4), (0.6, 0.2, 0.9, 0.8), (0.3, 0.2, 0.6, 0.4)),
    # disjoint in both axes: the gap rectangle between the corners
    ((0.0, 0.0, 0.2, 0.3), (0.5, 0.7, 1.0, 1.0), (0.2, 0.3, 0.5, 0.7)),
    # overlapping: the intersection
    ((0.1, 0.1, 0.5, 0.5), (0.3, 0.2, 0.8, 0.9), (0.3, 0.2, 0.5, 0.5)),
    # nested: the inner box
    ((0.1, 0.1, 0.9, 0.9), (0.3, 0.4, 0.5, 0.6), (0.3, 0.4, 0.5, 0.6)),
])
def test_between_hand_cases(subject, obj, expected):
    s, o = torch.tensor(subject, dtype=torch.float64), torch.tensor(obj, dtype=torch.float64)
    want = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(between(s, o), want)
    torch.testing.assert_close(between(o, s), want)  # symmetric in subject/object


def test_between_batched_matches_loop_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(3, 5, 2, generator=g) * 0.5
    s = torch.cat([lo, lo + 0.05 + torch.rand(3, 5, 2, generator=g) * 0.45], -1)
    lo = torch.rand(3, 5, 2, generator=g) * 0.5
    o = torch.cat([lo, lo + 0.05 + torch.rand(3, 5, 2, generator=g) * 0.45], -1)
    got = between(s, o)
    assert got.shape == (3, 5, 4)
    for b in range(3):
        for n in range(5):
            want = torch.tensor(between_reference(s[b, n].tolist(), o[b, n].tolist()))
            torch.testing.assert_close(got[b, n], want)
    assert torch.equal(between(o, s), got)


def test_interaction_action_box_is_between():
    it = Interaction("person", "riding", "horse", (0.1, 0.2, 0.4, 0.9), (0.3, 0.5, 0.95, 0.8))
    assert it.action_box == pytest.approx((0.3, 0.5, 0.4, 0.8))


# --------------------------------------------------------------------------- HOIPositionNet

def tiny_position_net(seed=0) -> HOIPositionNet:
    torch.manual_seed(seed)
    net = HOIPositionNet(in_dim=IN, out_dim=OUT, hidden_dim=HID, max_interactions=NMAX)
    randomize_(net, seed + 1)  # nulls start at zero: make them distinguishable
    return net.double().eval()


def mlp_reference(seq: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    silu = lambda t: t * torch.sigmoid(t)  # noqa: E731
    h = silu(x @ seq[0].weight.T + seq[0].bias)
    h = silu(h @ seq[2].weight.T + seq[2].bias)
    return h @ seq[4].weight.T + seq[4].bias


def position_net_reference(net, sb, ab, ob, masks, se, ae, oe):
    """Token by token, docs/reference.md §1: roles 0 subject, 1 object, 2 action; order [S, A, O]."""
    b, n = masks.shape
    out = torch.zeros(b, 3 * n, net.out_dim, dtype=torch.float64)
    inst = net.interaction_embedding.emb.weight
    role = net.role_embedding_table.emb.weight
    for i in range(b):
        for j in range(n):
            real = masks[i, j] == 1
            for kind, (boxes, emb, mlp, null_text, role_row, offset) in enumerate([
                (sb, se, net.linears, net.null_positive_feature, 0, 0),
                (ab, ae, net.linear_action, net.null_action_feature, 2, n),
                (ob, oe, net.linears, net.null_positive_feature, 1, 2 * n),
            ]):
                if real:
                    text = emb[i, j]
                    pos = torch.tensor(fourier_reference(boxes[i, j].tolist()), dtype=torch.float64)
                else:
                    text, pos = null_text, net.null_position_feature
                tok = mlp_reference(mlp, torch.cat([text, pos])[None])[0]
                out[i, offset + j] = tok + inst[j] + role[role_row]
    return out


@torch.no_grad()
def test_position_net_matches_token_by_token_reference():
    net = tiny_position_net()
    args = random_grounding_inputs(2, NMAX, seed=3)
    got = net(*args)
    assert got.shape == (2, 3 * NMAX, OUT)
    want = position_net_reference(net, *args)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@torch.no_grad()
def test_position_net_padding_ignores_garbage_and_uses_nulls():
    net = tiny_position_net(seed=4)
    garbage = random_grounding_inputs(2, NMAX, seed=5, garbage_padding=True)
    clean = list(garbage)
    pad = garbage[3] == 0
    for idx in (0, 1, 2, 4, 5, 6):
        clean[idx] = garbage[idx].clone()
        clean[idx][pad] = 0
    a, b = net(*garbage), net(*clean)
    assert torch.equal(a, b)
    # a padded slot's subject token is exactly the null-feature token
    null_subject = mlp_reference(net.linears, torch.cat([net.null_positive_feature, net.null_position_feature])[None])[0]
    j = 2  # padded in item 0
    torch.testing.assert_close(
        a[0, j], null_subject + net.interaction_embedding.emb.weight[j] + net.role_embedding_table.emb.weight[0],
        rtol=0, atol=1e-10)
    null_action = mlp_reference(net.linear_action, torch.cat([net.null_action_feature, net.null_position_feature])[None])[0]
    torch.testing.assert_close(
        a[0, NMAX + j], null_action + net.interaction_embedding.emb.weight[j] + net.role_embedding_table.emb.weight[2],
        rtol=0, atol=1e-10)


@torch.no_grad()
def test_position_net_without_action_tokens_is_the_full_one_minus_actions():
    """The GLIGEN-style ablation (action_tokens=False): same subject and object tokens as the
    full tokenizer with the same weights, no action tokens, no action parameters."""
    full = tiny_position_net(seed=11)
    boxes_only = HOIPositionNet(IN, OUT, max_interactions=NMAX, hidden_dim=full.linears[0].out_features,
                                action_tokens=False).double()
    assert not any("_action" in k for k in boxes_only.state_dict())
    missing, unexpected = boxes_only.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all("_action" in k for k in unexpected) and unexpected
    args = random_grounding_inputs(2, NMAX, seed=12)
    want = full(*args)
    got = boxes_only(*args)
    assert boxes_only.num_tokens == got.shape[1] == 2 * NMAX
    torch.testing.assert_close(got, torch.cat([want[:, :NMAX], want[:, 2 * NMAX:]], 1), rtol=0, atol=0)


@torch.no_grad()
def test_position_net_rejects_too_many_slots():
    net = tiny_position_net()
    args = random_grounding_inputs(2, NMAX + 1, seed=6, garbage_padding=False)
    with pytest.raises(ValueError, match=str(NMAX)):
        net(*args)


@torch.no_grad()
def test_position_net_accepts_build_grounding_output():
    """build_grounding -> HOIPositionNet keyword interface; padded slots equal the null grounding's."""
    net = tiny_position_net(seed=9).float()
    table = {p: torch.randn(IN) for p in ["person", "ride", "horse", "hold", "cup"]}
    batch = [[Interaction("person", "ride", "horse", (0.1, 0.1, 0.5, 0.9), (0.3, 0.4, 0.9, 1.0))],
             [Interaction("person", "hold", "cup", (0.0, 0.0, 0.6, 1.0), (0.5, 0.5, 0.7, 0.7)),
              Interaction("person", "ride", "horse", (0.2, 0.2, 0.4, 0.4), (0.1, 0.3, 0.8, 0.8))]]
    g = build_grounding(batch, lambda ps: torch.stack([table[p] for p in ps]), IN, max_interactions=NMAX)
    tokens = net(**g.as_kwargs())
    null_tokens = net(**g.null().as_kwargs())
    assert tokens.shape == (2, 3 * NMAX, OUT)
    for i, n_real in enumerate([1, 2]):
        for role in range(3):
            for j in range(NMAX):
                same = torch.equal(tokens[i, role * NMAX + j], null_tokens[i, role * NMAX + j])
                assert same == (j >= n_real), (i, role, j)


def test_full_size_position_net_matches_manifest(manifest):
    expected = {k[len("position_net."):]: v for k, v in manifest["model"].items()
                if k.startswith("position_net.")}
    assert len(expected) == 17
    with torch.device("meta"):
        net = HOIPositionNet()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == expected
    assert net.num_tokens == 90


# --------------------------------------------------------------------------- conditions: validation

GOOD = dict(subject="person", action="kick", object="ball",
            subject_box=(0.1, 0.1, 0.5, 0.9), object_box=(0.6, 0.7, 0.8, 0.9))


@pytest.mark.parametrize("field, value, fragment", [
    ("subject_box", (0.1, 0.1, 1.2, 0.9), "1.2"),          # outside [0, 1]
    ("object_box", (-0.1, 0.1, 0.5, 0.9), "-0.1"),         # outside [0, 1]
    ("subject_box", (0.5, 0.1, 0.2, 0.9), "0.5"),          # inverted x
    ("object_box", (0.1, 0.8, 0.5, 0.3), "0.8"),           # inverted y
    ("subject_box", (0.2, 0.1, 0.2, 0.9), "0.2"),          # zero width
    ("object_box", (0.1, 0.3, 0.5, 0.3), "0.3"),           # zero height
    ("subject_box", (float("nan"), 0.1, 0.5, 0.9), "nan"),
    ("object_box", (0.1, 0.1, float("inf"), 0.9), "inf"),
    ("subject_box", (0.1, 0.1, 0.5), "0.5"),                # wrong length
    ("object_box", (0.1, 0.1, 0.5, 0.6, 0.7), "0.7"),      # wrong length
    ("object_box", None, "None"),
    ("subject", "", "''"),
    ("action", "   ", "'   '"),
    ("object", None, "None"),
])
def test_interaction_validation_names_field_and_value(field, value, fragment):
    kwargs = dict(GOOD, **{field: value})
    with pytest.raises(ConditionError) as info:
        Interaction(**kwargs)
    msg = str(info.value)
    assert msg.startswith(field + " "), msg
    assert fragment in msg, msg


@pytest.mark.parametrize("field", ["subject_box", "object_box"])
def test_interaction_rejects_string_box(field):
    with pytest.raises(ConditionError, match=field):
        Interaction(**dict(GOOD, **{field: "0011"}))
    with pytest.raises(ConditionError, match=field):  # JSON booleans are not coordinates
        Interaction(**dict(GOOD, **{field: [False, False, True, True]}))


def test_interaction_valid_is_normalised():
    it = Interaction("  person ", "kick", "ball", [0, 0, 1, 1], (0.25, 0.5, 0.75, 1))
    assert it.subject == "person"
    assert it.subject_box == (0.0, 0.0, 1.0, 1.0)
    assert all(isinstance(v, float) for v in it.object_box)


def record(n, where_bad=None, **bad):
    r = {
        "prompt": "a photo",
        "subject_phrases": ["person"] * n,
        "action_phrases": ["hold"] * n,
        "object_phrases": [f"thing{i}" for i in range(n)],
        "subject_boxes": [[0.0, 0.0, 0.5, 0.5]] * n,
        "object_boxes": [[0.5, 0.5, 1.0, 1.0]] * n,
    }
    for k, v in bad.items():
        r[k] = list(r[k])
        r[k][where_bad] = v
    return r


def test_interactions_from_record_parses():
    items = interactions_from_record(record(3))
    assert [it.object for it in items] == ["thing0", "thing1", "thing2"]
    assert items[1].subject_box == (0.0, 0.0, 0.5, 0.5)
    assert items[1].action_box == pytest.approx((0.5, 0.5, 0.5, 0.5))


def test_record_list_lengths_disagree():
    r = record(3)
    r["object_boxes"] = r["object_boxes"][:2]
    with pytest.raises(ConditionError) as info:
        interactions_from_record(r, where="layouts.json[4]")
    msg = str(info.value)
    assert msg.startswith("layouts.json[4]")
    assert "object_boxes=2" in msg and "subject_boxes=3" in msg


def test_record_missing_field():
    r = record(2)
    del r["action_phrases"]
    with pytest.raises(ConditionError, match=r"record 7: missing field\(s\) action_phrases"):
        interactions_from_record(r, where="record 7")


def test_record_field_not_a_list():
    r = record(2)
    r["subject_boxes"] = "0,0,1,1"
    with pytest.raises(ConditionError, match="subject_boxes"):
        interactions_from_record(r)


@pytest.mark.parametrize("field, value, fragment", [
    ("subject_boxes", [0.1, 0.1, 1.5, 0.4], "1.5"),
    ("object_boxes", [0.6, 0.6, 0.4, 0.9], "0.6"),
    ("action_phrases", "", "''"),
    ("object_phrases", " ", "' '"),
])
def test_record_error_names_record_interaction_and_field(field, value, fragment):
    with pytest.raises(ConditionError) as info:
        interactions_from_record(record(4, 2, **{field: value}), where="record 11")
    msg = str(info.value)
    assert msg.startswith("record 11, interaction 2: " + field + " "), msg
    assert fragment in msg


def test_record_with_too_many_interactions():
    assert len(interactions_from_record(record(MAX_INTERACTIONS))) == MAX_INTERACTIONS
    with pytest.raises(ConditionError) as info:
        interactions_from_record(record(MAX_INTERACTIONS + 1), where="record 5")
    msg = str(info.value)
    assert msg.startswith("record 5: ") and "31" in msg and "30" in msg


def test_check_interactions_limit_and_types():
    items = [Interaction(**GOOD)] * (MAX_INTERACTIONS + 1)
    assert len(check_interactions(items[:MAX_INTERACTIONS])) == MAX_INTERACTIONS
    with pytest.raises(ConditionError) as info:
        check_interactions(items, where="record 3")
    msg = str(info.value)
    assert msg.startswith("record 3: ") and "31" in msg and "30" in msg
    with pytest.raises(ConditionError, match=r"interactions\[1\]"):
        check_interactions([items[0], ("person", "hold", "cup")])


# --------------------------------------------------------------------------- build_grounding


class FakeEncoder:
    def __init__(self, dim, seed=0):
        self.dim, self.calls, self.table = dim, [], {}
        self.g = torch.Generator().manual_seed(seed)

    def vec(self, phrase):
        if phrase not in self.table:
            self.table[phrase] = torch.randn(self.dim, generator=self.g)
        return self.table[phrase]

    def __call__(self, phrases):
        self.calls.append(list(phrases))
        return torch.stack([self.vec(p) for p in phrases])


def sample_batch():
    return [
        [Interaction("person", "ride", "horse", (0.1, 0.1, 0.5, 0.9), (0.3, 0.4, 0.9, 1.0)),
         Interaction("person", "feed", "horse", (0.0, 0.2, 0.3, 0.6), (0.5, 0.5, 0.9, 0.9))],
        [],
        [Interaction("dog", "chase", "person", (0.6, 0.6, 0.9, 0.95), (0.05, 0.1, 0.3, 0.5))],
    ]


def test_build_grounding_padding_masks_boxes_embeddings():
    enc, batch, n, d = FakeEncoder(6), sample_batch(), 4, 6
    g = build_grounding(batch, enc, d, max_interactions=n)
    # each distinct phrase encoded exactly once, in one call
    assert len(enc.calls) == 1
    assert sorted(enc.calls[0]) == sorted({"person", "ride", "horse", "feed", "dog", "chase"})
    assert len(enc.calls[0]) == 6
    for t in (g.subject_boxes, g.object_boxes, g.action_boxes):
        assert t.shape == (3, n, 4)
    for t in (g.subject_embeddings, g.object_embeddings, g.action_embeddings):
        assert t.shape == (3, n, d)
    assert g.masks.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    for i, items in enumerate(batch):
        for j in range(n):
            if j < len(items):
                it = items[j]
                assert g.subject_boxes[i, j].tolist() == pytest.approx(it.subject_box)
                assert g.object_boxes[i, j].tolist() == pytest.approx(it.object_box)
                assert g.action_boxes[i, j].tolist() == pytest.approx(
                    between_reference(it.subject_box, it.object_box))
                assert torch.equal(g.subject_embeddings[i, j], enc.table[it.subject])
                assert torch.equal(g.action_embeddings[i, j], enc.table[it.action])
                assert torch.equal(g.object_embeddings[i, j], enc.table[it.object])
            else:
                for t in g.as_kwargs().values():
                    assert not t[i, j].any(), (i, j)


def test_build_grounding_no_phrases_skips_encoder():
    enc = FakeEncoder(5)
    g = build_grounding([[], []], enc, 5, max_interactions=3)
    assert enc.calls == []
    assert g.subject_embeddings.shape == (2, 3, 5)
    assert all(not t.any() for t in g.as_kwargs().values())


def test_build_grounding_errors():
    batch = sample_batch()
    with pytest.raises(ConditionError, match="batch item 0"):
        build_grounding(batch, FakeEncoder(4), 4, max_interactions=1)
    with pytest.raises(ValueError, match="phrase encoder returned"):
        build_grounding(batch, lambda ps: torch.zeros(len(ps), 3), 4, max_interactions=4)


def test_grounding_null_and_cat():
    g = build_grounding(sample_batch(), FakeEncoder(6), 6, max_interactions=4)
    null = g.null()
    for name, t in null.as_kwargs().items():
        assert t.shape == getattr(g, name).shape and t.dtype == getattr(g, name).dtype
        assert not t.any()
    both = Grounding.cat([g, null])
    for name, t in both.as_kwargs().items():
        assert t.shape[0] == 6
        assert torch.equal(t[:3], getattr(g, name))
        assert torch.equal(t[3:], getattr(null, name))
    d = g.to(dtype=torch.float64)
    assert d.masks.dtype == torch.float64 and torch.equal(d.masks.float(), g.masks)


# --------------------------------------------------------------------------- fuser

def tiny_fuser(seed, alpha_attn, alpha_dense, dtype=torch.float64):
    f = random_fuser(GatedSelfAttentionDense, seed)
    with torch.no_grad():
        f.alpha_attn.fill_(alpha_attn)
        f.alpha_dense.fill_(alpha_dense)
    return f.to(dtype)


def fuser_reference(f, x, tokens, scale):
    """docs/reference.md §2 written out: full self-attention over [x, linear(tokens)], explicit softmax."""
    n_visual = x.shape[1]
    o = tokens @ f.linear.weight.T + f.linear.bias
    h = layer_norm_reference(torch.cat([x, o], dim=1), f.norm1)
    out = attention_reference(h @ f.attn.to_q.weight.T, h @ f.attn.to_k.weight.T, h @ f.attn.to_v.weight.T,
                              f.attn.heads)
    attn_out = out[:, :n_visual] @ f.attn.to_out[0].weight.T + f.attn.to_out[0].bias
    x = x + scale * math.tanh(f.alpha_attn.item()) * attn_out
    return dense_reference(f, x, scale)


@torch.no_grad()
def test_fuser_zero_gates_is_identity():
    f = tiny_fuser(0, 0.0, 0.0, dtype=torch.float32)
    x, tokens = fuser_inputs(torch.float32)
    assert torch.equal(f.fuse(x, tokens), x)
    assert torch.equal(f.fuse(x, tokens, scale=0.7), x)


def test_fresh_fuser_gates_are_zero_parameters():
    f = GatedSelfAttentionDense(C, CTX, HEADS, DHEAD)
    names = dict(f.named_parameters())
    assert names["alpha_attn"].shape == () and names["alpha_attn"].item() == 0
    assert names["alpha_dense"].shape == () and names["alpha_dense"].item() == 0
    assert "scale" not in names
    assert len(f.state_dict()) == 17
    assert f.attn.to_q.bias is None and f.attn.to_k.bias is None and f.attn.to_v.bias is None


def test_zero_outputs_init_is_identity_yet_every_weight_gets_gradient():
    """fuser_init zero_outputs: identity at start like zero gates, but the attention's and
    feed-forward's weights receive gradient on the first step (with zero gates they get none)."""
    torch.manual_seed(0)
    x, tokens = torch.randn(2, 5, C), torch.randn(2, 3, CTX)
    grads = {}
    for init in ("zero_gates", "zero_outputs"):
        f = GatedSelfAttentionDense(C, CTX, HEADS, DHEAD, init=init)
        out = f.fuse(x, tokens)
        assert torch.equal(out, x)
        (out * torch.randn_like(out)).sum().backward()
        grads[init] = {n: float(p.grad.abs().sum()) if p.grad is not None else 0.0 for n, p in f.named_parameters()}
    assert grads["zero_gates"]["attn.to_q.weight"] == 0 and grads["zero_gates"]["attn.to_out.0.weight"] == 0
    assert grads["zero_outputs"]["attn.to_out.0.weight"] > 0 and grads["zero_outputs"]["ff.net.2.weight"] > 0
    assert grads["zero_outputs"]["alpha_attn"] == 0  # output layer zero: nothing to gate yet
    with pytest.raises(ValueError, match="fuser_init"):
        GatedSelfAttentionDense(C, CTX, HEADS, DHEAD, init="ones")


@torch.no_grad()
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("n_tokens", [6, 0])
def test_fuser_matches_slow_reference(scale, n_tokens):
    f = tiny_fuser(1, 0.8, -0.6)
    x, tokens = fuser_inputs(n_tokens=n_tokens, seed=2)
    torch.testing.assert_close(f.fuse(x, tokens, scale), fuser_reference(f, x, tokens, scale), rtol=0, atol=1e-10)
    # float32 module agrees with the float64 reference to float tolerance
    f32 = copy.deepcopy(f).float()
    got32 = f32.fuse(x.float(), tokens.float(), scale)
    torch.testing.assert_close(got32.double(), fuser_reference(f, x, tokens, scale), rtol=0, atol=2e-5)


@torch.no_grad()
def test_fuser_tokens_matter_and_scale_halves_attention_update():
    f = tiny_fuser(3, 1.1, 0.0)  # dense gate closed: the update is scale * attention term only
    x, tokens = fuser_inputs(seed=4)
    full = f.fuse(x, tokens, 1.0) - x
    half = f.fuse(x, tokens, 0.5) - x
    assert full.abs().max() > 1e-3
    torch.testing.assert_close(half, 0.5 * full, rtol=0, atol=1e-12)
    # the attention sees the grounding tokens: other tokens, other output
    other = f.fuse(x, tokens + 1.0, 1.0) - x
    assert (other - full).abs().max() > 1e-3


def test_attach_fusers_every_block_of_tiny_unet():
    torch.manual_seed(0)
    unet = UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                     num_heads=4, context_dim=16, norm_groups=8)
    blocks = unet.transformer_blocks()
    assert len(blocks) == 7  # 2 input, 1 middle, 4 output (attention at both levels)
    assert all(b.fuser is None for _, b in blocks)
    assert attach_fusers(unet, 24) == 7
    for name, block in blocks:
        dim = block.attn1.to_q.in_features
        assert isinstance(block.fuser, GatedSelfAttentionDense), name
        assert block.fuser.linear.in_features == 24 and block.fuser.linear.out_features == dim
        assert block.fuser.attn.heads == block.attn1.heads
        assert block.fuser.alpha_attn.item() == 0 and block.fuser.alpha_dense.item() == 0
    with pytest.raises(ValueError, match="fuser_type"):
        attach_fusers(unet, 24, fuser_type="nope")
