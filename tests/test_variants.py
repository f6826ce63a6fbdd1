"""The reproduction study's variants: the cross-attention fuser (gatedCA), fusers that see
their tokens' grid positions, and typed role embeddings; checked against slow references
written here, and for the properties that let released checkpoints load unchanged."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hoi.records import Interaction
from interact.fuser import GatedCrossAttentionDense, GatedSelfAttentionDense, grid_positions
from interact.controls.interactions import ACTION, OBJECT, SUBJECT, HOIPositionNet, role_type_loss, typed_role_defaults
from ldm.modules.attention import attention_backend
from helpers import (C, CTX, DHEAD, HEADS, IN, NMAX, OUT, SHAPES, Squares, attention_reference, dense_reference,
                     fourier_reference, fuser_inputs, layer_norm_reference, random_fuser, random_grounding_inputs,
                     randomize_, tiny_train_config)

pytestmark = pytest.mark.filterwarnings("ignore:training the interaction control on a randomly initialised")

# --------------------------------------------------------------------------- fusers


def cell_positions_reference(h, w):
    """Row-major cells as normalised xyxy boxes, Fourier-embedded one by one."""
    rows = [fourier_reference([j / w, i / h, (j + 1) / w, (i + 1) / h]) for i in range(h) for j in range(w)]
    return torch.tensor(rows, dtype=torch.float64)


def cross_fuser_reference(f, x, tokens, scale, grid=None):
    """gatedCA written out: queries from norm1(x) (+ the cells' projected positions), keys
    and values from norm_objs(linear(tokens)) alone."""
    visual = layer_norm_reference(x, f.norm1)
    if grid is not None:
        visual = visual + cell_positions_reference(*grid) @ f.visual_position.weight.T + f.visual_position.bias
    tokens = layer_norm_reference(tokens @ f.linear.weight.T + f.linear.bias, f.norm_objs)
    out = attention_reference(visual @ f.attn.to_q.weight.T, tokens @ f.attn.to_k.weight.T,
                              tokens @ f.attn.to_v.weight.T, f.attn.heads)
    x = x + scale * math.tanh(f.alpha_attn.item()) * (out @ f.attn.to_out[0].weight.T + f.attn.to_out[0].bias)
    return dense_reference(f, x, scale)


def self_fuser_reference(f, x, tokens, scale, grid=None):
    """gatedSA with positions: the visual rows of norm1(cat[x, linear(tokens)]) get the cells'
    projected positions, then full self-attention; only visual rows are kept."""
    n = x.shape[1]
    h = layer_norm_reference(torch.cat([x, tokens @ f.linear.weight.T + f.linear.bias], dim=1), f.norm1)
    if grid is not None:
        pos = cell_positions_reference(*grid) @ f.visual_position.weight.T + f.visual_position.bias
        h = torch.cat([h[:, :n] + pos, h[:, n:]], dim=1)
    out = attention_reference(h @ f.attn.to_q.weight.T, h @ f.attn.to_k.weight.T, h @ f.attn.to_v.weight.T,
                              f.attn.heads)[:, :n]
    x = x + scale * math.tanh(f.alpha_attn.item()) * (out @ f.attn.to_out[0].weight.T + f.attn.to_out[0].bias)
    return dense_reference(f, x, scale)


GRID = (2, 5)  # NV = 10 visual tokens in fuser_inputs


@torch.no_grad()
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_cross_attention_fuser_matches_slow_reference(scale):
    f = random_fuser(GatedCrossAttentionDense, 1)
    x, tokens = fuser_inputs(n_tokens=6, seed=2)
    torch.testing.assert_close(f.fuse(x, tokens, scale), cross_fuser_reference(f, x, tokens, scale), rtol=0, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize("cls, reference", [(GatedCrossAttentionDense, cross_fuser_reference),
                                            (GatedSelfAttentionDense, self_fuser_reference)])
def test_fusers_with_grid_positions_match_slow_reference(cls, reference):
    f = random_fuser(cls, 3, visual_positions=True)
    x, tokens = fuser_inputs(n_tokens=6, seed=4)
    torch.testing.assert_close(f.fuse(x, tokens, 1.0, GRID), reference(f, x, tokens, 1.0, GRID), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="grid"):
        f.fuse(x, tokens, 1.0, (3, 3))


def test_grid_positions_are_the_cells_fourier_boxes():
    torch.testing.assert_close(grid_positions(3, 4, dtype=torch.float64), cell_positions_reference(3, 4),
                               rtol=0, atol=1e-12)


@torch.no_grad()
def test_positions_break_permutation_equivariance():
    """Without positions, shuffling the visual tokens shuffles the output the same way (the
    fuser cannot tell where a token is); with them it does not."""
    x, tokens = fuser_inputs(n_tokens=6, seed=5)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))
    for positions in (False, True):
        f = random_fuser(GatedCrossAttentionDense, 7, visual_positions=positions)
        gap = (f.fuse(x[:, perm], tokens, 1.0, GRID) - f.fuse(x, tokens, 1.0, GRID)[:, perm]).abs().max()
        assert (gap > 1e-3) if positions else (gap < 1e-12)


@pytest.mark.parametrize("positions", [False, True])
def test_cross_fuser_inits_are_identity_and_zero_outputs_trains(positions):
    torch.manual_seed(0)
    x, tokens = torch.randn(2, 6, C), torch.randn(2, 3, CTX)
    for init in ("zero_gates", "zero_outputs"):
        f = GatedCrossAttentionDense(C, CTX, HEADS, DHEAD, init=init, visual_positions=positions)
        out = f.fuse(x, tokens, 1.0, (2, 3))
        assert torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()  # zero_outputs: the output layers get gradient at once
    assert f.attn.to_out[0].weight.grad.abs().sum() > 0 and f.ff.net[2].weight.grad.abs().sum() > 0


@torch.no_grad()
def test_cross_fuser_keys_are_the_interaction_tokens_only():
    """Changing one visual token changes the other tokens' outputs under self-attention (they
    attend to it) but not under cross-attention (keys come from the interaction tokens)."""
    x, tokens = fuser_inputs(n_tokens=6, seed=6)
    x2 = x.clone()
    x2[:, 0] = torch.randn(x.shape[0], x.shape[2], dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    for cls, coupled in ((GatedSelfAttentionDense, True), (GatedCrossAttentionDense, False)):
        f = random_fuser(cls, 8)
        gap = (f.fuse(x2, tokens)[:, 1:] - f.fuse(x, tokens)[:, 1:]).abs().max()
        assert (gap > 1e-3) if coupled else (gap < 1e-12)


def attention_flops(cls, n_visual, n_tokens, dim=64):
    f = cls(dim, 48, 4, dim // 4).eval()
    x, tokens = torch.randn(1, n_visual, dim), torch.randn(1, n_tokens, 48)
    # The naive backend's einsums are counted; CPU SDPA kernels are not (see evaluation/benchmark.py).
    with torch.no_grad(), attention_backend("naive"), FlopCounterMode(display=False) as counter:
        f.attend(x, tokens, None, None)
    return counter.get_total_flops()


def test_cross_attention_costs_what_its_shapes_say():
    """FLOPs of the attention part: self-attention's scores grow with N_visual x (N_visual +
    N_tokens), cross-attention's with N_visual x N_tokens. Count the matmuls by hand."""
    nv, no, d = 256, 12, 64
    per_key = 2 * nv * d * 2  # q.k and attn.v, per key
    projections_sa = 2 * nv * d * d + 2 * 2 * (nv + no) * d * d + 2 * no * 48 * d  # q, k+v, linear(tokens)
    projections_ca = 2 * nv * d * d + 2 * 2 * no * d * d + 2 * no * 48 * d
    assert attention_flops(GatedSelfAttentionDense, nv, no, d) == projections_sa + per_key * (nv + no)
    assert attention_flops(GatedCrossAttentionDense, nv, no, d) == projections_ca + per_key * no


# --------------------------------------------------------------------------- typed roles


def typed_net(seed=0, offsets=True):
    torch.manual_seed(seed)
    net = HOIPositionNet(in_dim=IN, out_dim=OUT, hidden_dim=32, max_interactions=NMAX, role_embedding="typed")
    randomize_(net, seed + 1)
    if not offsets:
        with torch.no_grad():
            net.type_offsets.zero_()
    return net.double().eval()


def fixed_twin(typed: HOIPositionNet) -> HOIPositionNet:
    fixed = HOIPositionNet(in_dim=IN, out_dim=OUT, hidden_dim=32, max_interactions=NMAX).double()
    state = {k: v for k, v in typed.state_dict().items() if k in fixed.state_dict()}
    fixed.load_state_dict(state)
    return fixed.eval()


@torch.no_grad()
def test_typed_roles_add_the_type_mixture_of_offsets():
    """token(typed) = token(fixed) + mask * sum_k p_k * offsets[role, k], p = softmax(classifier(phrase))."""
    net = typed_net(seed=2)
    args = random_grounding_inputs(2, NMAX, seed=3)
    got, base = net(*args), fixed_twin(net)(*args)
    sb, ab, ob, masks, se, ae, oe = args
    silu = lambda t: t * torch.sigmoid(t)  # noqa: E731
    for block, (emb, role, classifier) in enumerate([(se, SUBJECT, net.entity_classifier),
                                                      (ae, ACTION, net.action_classifier),
                                                      (oe, OBJECT, net.entity_classifier)]):
        for b in range(2):
            for n in range(NMAX):
                logits = silu(emb[b, n] @ classifier[0].weight.T + classifier[0].bias) @ classifier[2].weight.T \
                    + classifier[2].bias
                p = torch.exp(logits) / torch.exp(logits).sum()
                want = base[b, block * NMAX + n]
                if masks[b, n] == 1:
                    want = want + p[0] * net.type_offsets[role, 0] + p[1] * net.type_offsets[role, 1]
                torch.testing.assert_close(got[b, block * NMAX + n], want, rtol=0, atol=1e-10)


@torch.no_grad()
def test_typed_roles_with_zero_offsets_equal_the_fixed_ones():
    net = typed_net(seed=4, offsets=False)
    args = random_grounding_inputs(2, NMAX, seed=5)
    torch.testing.assert_close(net(*args), fixed_twin(net)(*args), rtol=0, atol=0)


def test_typed_roles_are_differentiable_in_the_classifier():
    net = typed_net(seed=6).float()
    args = [a.float() for a in random_grounding_inputs(2, NMAX, seed=7)]
    net(*args).pow(2).sum().backward()
    for name in ("entity_classifier.0.weight", "action_classifier.2.weight", "type_offsets"):
        assert dict(net.named_parameters())[name].grad.abs().sum() > 0, name


def test_role_embedding_value_is_checked():
    with pytest.raises(ValueError, match="role_embedding"):
        HOIPositionNet(in_dim=IN, out_dim=OUT, role_embedding="learned")


def test_role_type_loss_is_cross_entropy_over_labelled_slots():
    net = typed_net(seed=8).float()
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, 2, NMAX, IN, generator=g)
    labels = torch.randint(0, 2, (3, 2, NMAX), generator=g)
    labels[:, 1, 2:] = -1  # padded slots
    labels[2, 0, 0] = -1   # an unknown phrase
    total, count = 0.0, 0
    for role in (SUBJECT, OBJECT, ACTION):
        classifier = net.action_classifier if role == ACTION else net.entity_classifier
        for b in range(2):
            for n in range(NMAX):
                if labels[role, b, n] < 0:
                    continue
                logits = classifier(embeddings[role, b, n]).detach()
                total += float(torch.logsumexp(logits, 0) - logits[labels[role, b, n]])
                count += 1
    got = role_type_loss(net, embeddings, labels)
    assert math.isclose(float(got.detach()), total / count, rel_tol=1e-5)
    empty = role_type_loss(net, embeddings, torch.full_like(labels, -1))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_typed_defaults_are_zero_offsets_and_deterministic_classifiers():
    net = typed_net(seed=9)
    a, b = typed_role_defaults(net), typed_role_defaults(net)
    assert set(a) == {"position_net." + k for k in net.state_dict() if k.startswith(
        ("entity_classifier.", "action_classifier.", "type_offsets"))}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not a["position_net.type_offsets"].any()
    state = torch.random.get_rng_state()
    typed_role_defaults(net)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone
    net_copy = copy.deepcopy(net)
    assert all(torch.equal(x, y) for x, y in zip(net.parameters(), net_copy.parameters()))


# --------------------------------------------------------------------------- type labels


def test_hico_role_types_cover_every_object_and_verb():
    from dataset.hico_names import OBJECT_NAMES, VERB_NAMES
    from dataset.role_types import CONTACT, HUMAN, NON_CONTACT, NON_HUMAN, hico_role_types
    types = hico_role_types()
    assert len(types.entities) == 80 and len(types.actions) == 117
    assert [n for n in OBJECT_NAMES.values() if types.entity(n) == HUMAN] == ["person"]
    assert types.entity("sports ball") == NON_HUMAN and types.entity("hair drier") == NON_HUMAN
    assert types.action("no_interaction") == NON_CONTACT and types.action("watch") == NON_CONTACT
    assert types.action("hold") == CONTACT and types.action("ride") == CONTACT and types.action("kick") == CONTACT
    assert all(types.action(v) in (CONTACT, NON_CONTACT) for v in VERB_NAMES.values())
    assert types.action("juggle") == -1  # not a HICO verb: unlabelled


def test_toy_role_types_and_batch_labels():
    from dataset.role_types import NON_CONTACT, toy_role_types
    from hoi.records import Interaction
    types = toy_role_types()
    box = (0.1, 0.1, 0.5, 0.5)
    batch = [[Interaction("person", "wave at", "ball", box, box), Interaction("robot", "kick", "kite", box, box)],
             [Interaction("robot", "hold", "person", box, box)]]
    labels = types.labels(batch, 3)
    assert labels.tolist() == [[[0, 1, -1], [1, -1, -1]],   # subjects: person human, robot not
                               [[1, 1, -1], [0, -1, -1]],   # objects: ball, kite; a person is human
                               [[1, 0, -1], [0, -1, -1]]]   # actions: wave at non-contact, kick / hold contact
    assert types.action("point at") == NON_CONTACT and types.entity("dog") == -1   # not in the toy world


def test_role_types_file_errors_name_the_entry(tmp_path):
    import json
    from dataset.role_types import load_role_types
    good = tmp_path / "types.json"
    good.write_text(json.dumps({"entities": {"Person": "human", "cat": "non-human"},
                                "actions": {"pet": "contact", "wave_at": "non-contact"}}))
    types = load_role_types(str(good))
    assert types.entity("person") == 0 and types.action("wave at") == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"entities": {"cat": "animal"}, "actions": {}}))
    with pytest.raises(ValueError, match=r"entities\['cat'\] = 'animal'"):
        load_role_types(str(bad))
    bad.write_text(json.dumps({"entities": {}}))
    with pytest.raises(ValueError, match="'actions' must be a mapping"):
        load_role_types(str(bad))
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_role_types(str(tmp_path / "nothere.json"))


# --------------------------------------------------------------------------- training and loading


def variant_trainer(tmp_path, interaction: dict, run="run", **train):
    from dataset.hoi_dataset import training_role_types
    from interact.trainer import Trainer
    config = tiny_train_config(tmp_path, **train)
    config.interaction.update(interaction)
    return Trainer(config, tmp_path / run, dataset=Squares(), role_types=training_role_types(config), progress=False,
                   log=lambda *a: None)


@pytest.mark.slow
def test_typed_training_needs_labels_and_fits_the_classifiers(tmp_path):
    """The classifiers learn the toy labels of the phrases they are trained on (Squares uses
    person / robot / dog, hold / kick / look at / ride)."""
    with pytest.raises(ValueError, match="train.role_types"):
        variant_trainer(tmp_path, {"role_embedding": "typed"}, run="unlabelled")
    from dataset.role_types import toy_role_types
    trainer = variant_trainer(tmp_path, {"role_embedding": "typed"}, role_types="toy", total_iters=40, lr=1e-2,
                              warmup_steps=0)
    pn = trainer.model.interaction_tokenizer
    types = toy_role_types()
    phrases = sorted({p for triple in SHAPES for p in triple})
    embeddings = trainer.model.text_encoder.encode_pooled(phrases).float()
    with torch.no_grad():
        before = pn.type_logits(embeddings, SUBJECT).clone()
    trainer.run()
    with torch.no_grad():
        entity = pn.type_logits(embeddings, SUBJECT).argmax(-1).tolist()
        action = pn.type_logits(embeddings, ACTION).argmax(-1).tolist()
    assert not torch.equal(before, pn.type_logits(embeddings, SUBJECT).detach())
    for phrase, e, a in zip(phrases, entity, action):
        if types.entity(phrase) >= 0:
            assert e == types.entity(phrase), phrase
        if types.action(phrase) >= 0:
            assert a == types.action(phrase), phrase
    assert pn.type_offsets.abs().sum() > 0  # the diffusion loss moved the typed embeddings too


def test_interaction_lr_scale_makes_two_groups_that_survive_resume(tmp_path):
    trainer = variant_trainer(tmp_path, {}, train_whole_unet=True, interaction_lr_scale=10.0, lr=1e-3,
                              warmup_steps=0, total_iters=2)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    from interact.model import is_interaction_key
    names = {id(p): n for n, p in trainer.trained.items()}
    assert all(not is_interaction_key(names[id(p)]) for p in groups[0]["params"])
    assert all(is_interaction_key(names[id(p)]) for p in groups[1]["params"])
    trainer.run()
    resumed = variant_trainer(tmp_path, {}, train_whole_unet=True, interaction_lr_scale=5.0, lr=2e-3,
                              warmup_steps=0, total_iters=4)
    assert resumed.resume()  # the command line's lr and scale win over the saved ones
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([2e-3, 1e-2])
    single = variant_trainer(tmp_path, {}, train_whole_unet=True, lr=2e-3, warmup_steps=0, total_iters=4)
    with pytest.raises(RuntimeError, match="interaction_lr_scale"):
        single.resume()


@pytest.mark.parametrize("fuser_type", ["gatedSA", "gatedCA"])
def test_fusers_with_positions_train_and_the_file_says_what_it_needs(tmp_path, fuser_type):
    from interact.checkpoint import CheckpointError, interaction_variant, load_weights, read_file
    from interact.model import build_model, set_interaction_options
    trainer = variant_trainer(tmp_path, {"fuser_type": fuser_type, "fuser_positions": True}, total_iters=3)
    fuser = trainer.model.unet.transformer_blocks()[0][1].fuser
    before = fuser.visual_position.weight.detach().clone()
    final = trainer.run()
    assert not torch.equal(before, fuser.visual_position.weight)
    state = read_file(final)["model"]
    assert interaction_variant(trainer.model, state) == {"fuser_type": fuser_type, "fuser_positions": True}
    other = "gatedSA" if fuser_type == "gatedCA" else "gatedCA"
    config = set_interaction_options(trainer.config, fuser_type=other)
    with pytest.raises(CheckpointError, match=f"interaction.fuser_type = {fuser_type}"):
        load_weights(build_model(config, device="meta"), final, purpose="generate")


def test_a_fixed_role_checkpoint_loads_into_a_typed_model_unchanged(tmp_path, tiny_model):
    """Released files have no typed weights: they start as the file's role embeddings, so
    every output is the same."""
    from interact.checkpoint import load_weights, save_checkpoint
    from interact.controls.interactions import build_grounding
    from interact.model import build_model, set_interaction_options
    source = copy.deepcopy(tiny_model)
    randomize_(source.interaction_tokenizer, 0)  # role embeddings that differ from a fresh init
    save_checkpoint(tmp_path / "fixed.pth", source)
    typed = build_model(set_interaction_options(source.config, role_embedding="typed"), device="meta",
                        tokenizer=source.text_encoder.tokenizer)
    load_weights(typed, tmp_path / "fixed.pth", purpose="generate")
    assert not typed.interaction_tokenizer.type_offsets.any()
    pn_fixed, pn_typed = source.interaction_tokenizer, typed.interaction_tokenizer
    box = (0.1, 0.2, 0.6, 0.9)
    batch = [[Interaction("person", "hold", "cup", box, box)], []]
    g = build_grounding(batch, source.text_encoder.encode_pooled, pn_fixed.in_dim, pn_fixed.max_interactions)
    with torch.no_grad():
        torch.testing.assert_close(pn_typed(**g.as_kwargs()), pn_fixed(**g.as_kwargs()), rtol=0, atol=0)


def test_interaction_switches_are_checked_by_name():
    from omegaconf import OmegaConf
    from interact.model import load_config, set_interaction_options
    from helpers import TINY_CONFIG
    config = load_config(TINY_CONFIG)
    with pytest.raises(ValueError, match="interaction.fuser_type = 'gatedXA'"):
        set_interaction_options(config, fuser_type="gatedXA")
    with pytest.raises(ValueError, match="unknown interaction option"):
        set_interaction_options(config, fuser="gatedCA")
    changed = set_interaction_options(config, fuser_type="gatedCA", role_embedding=None)
    assert changed.interaction.fuser_type == "gatedCA" and config.interaction.fuser_type == "gatedSA"
    bad = OmegaConf.merge(config, {"interaction": {"role_embedding": "soft"}})
    with pytest.raises(ValueError, match="interaction.role_embedding = 'soft'"):
        load_config(bad)


def test_command_lines_take_the_switches():
    import main as train_main
    import inference_batch
    args = train_main.parse_args(["--yaml_file", "x.yaml", "--fuser_type", "gatedCA", "--role_embedding", "typed"])
    assert (args.fuser_type, args.role_embedding) == ("gatedCA", "typed")
    args = inference_batch.parse_args(["--fuser_type", "gatedCA"])
    assert (args.fuser_type, args.role_embedding) == ("gatedCA", None)
    with pytest.raises(SystemExit):
        inference_batch.parse_args(["--role_embedding", "soft"])
