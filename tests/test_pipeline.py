"""Pipeline behaviour on the tiny config: guidance, seeds, scheduled sampling, batching, bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from hoi.records import ConditionError, Interaction
from interact.pipeline import InteractDiffusionPipeline, SamplingOptions, fuser_scale
from helpers import TINY_CONFIG, open_gates, with_tokens

TINY = TINY_CONFIG
FAST = dict(steps=3, height=32, width=32, progress=False, output_type="pt")


def person_touching_cat(shift=0.0):
    return Interaction("person", "touching", "cat", (0.05 + shift, 0.1, 0.5, 0.9), (0.55, 0.5, 0.95, 0.95))


@pytest.fixture(scope="module")
def pipe():
    # Random fusers start with zero gates (identity); open them so interactions matter.
    p = InteractDiffusionPipeline.from_config(TINY, seed=0, device="cpu")
    open_gates(p.model)
    return p


def test_fuser_scale_schedule():
    assert [fuser_scale(i, 10, 0.3) for i in range(10)] == [1.0] * 3 + [0.0] * 7
    assert [fuser_scale(i, 50, 1.0) for i in range(50)] == [1.0] * 50
    assert [fuser_scale(i, 7, 0.0) for i in range(7)] == [0.0] * 7


def test_same_seed_same_image_and_seed_matters(pipe):
    a = pipe("a person touching a cat", [person_touching_cat()], seed=3, **FAST)
    b = pipe("a person touching a cat", [person_touching_cat()], seed=3, **FAST)
    c = pipe("a person touching a cat", [person_touching_cat()], seed=4, **FAST)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_image_does_not_depend_on_batch(pipe):
    alone0 = pipe("a person touching a cat", [person_touching_cat()], seed=10, **FAST)
    alone1 = pipe("a cat", [], seed=11, **FAST)
    both = pipe(["a person touching a cat", "a cat"], [[person_touching_cat()], []], seed=[10, 11], **FAST)
    torch.testing.assert_close(both[:1], alone0, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], alone1, atol=1e-5, rtol=0)


def test_batch_with_different_interaction_counts(pipe):
    two = [person_touching_cat(), Interaction("person", "holding", "cup", (0.1, 0.1, 0.4, 0.6), (0.3, 0.3, 0.4, 0.4))]
    out = pipe(["p", "q", "r"], [two, [person_touching_cat()], []], seed=0, **FAST)
    assert out.shape == (3, 3, 32, 32)
    assert 0 <= out.min() and out.max() <= 1


def test_interactions_change_the_image(pipe):
    with_hoi = pipe("a person touching a cat", [person_touching_cat()], seed=5, **FAST)
    moved = pipe("a person touching a cat", [person_touching_cat(shift=0.3)], seed=5, **FAST)
    without = pipe("a person touching a cat", None, seed=5, **FAST)
    assert (with_hoi - without).abs().max() > 1e-4
    # Random weights: the box moves the image only slightly, but deterministically so.
    assert (with_hoi - moved).abs().max() > 1e-6


def test_scheduled_sampling_zero_equals_no_fusers(pipe):
    """beta = 0 turns every fuser off at every step: the interactions then have no effect."""
    off = pipe("a person touching a cat", [person_touching_cat()], seed=5, scheduled_sampling=0.0, **FAST)
    without = pipe("a person touching a cat", None, seed=5, scheduled_sampling=0.0, **FAST)
    assert torch.equal(off, without)


def test_scheduled_sampling_runs_fusers_on_the_first_steps_only(pipe):
    calls = []
    fuser = pipe.model.unet.transformer_blocks()[0][1].fuser
    handle = fuser.register_forward_hook(lambda *a: calls.append(1))
    step_calls = []
    unet = pipe.model.unet
    original = unet.forward

    def counting_forward(*args, **kwargs):
        before = len(calls)
        out = original(*args, **kwargs)
        step_calls.append(len(calls) - before)
        return out

    unet.forward = counting_forward
    try:
        pipe("p", [person_touching_cat()], seed=0, sampler="ddim", scheduled_sampling=0.5,
             **{**FAST, "steps": 4})
    finally:
        unet.forward = original
        handle.remove()
    assert step_calls == [1, 1, 0, 0]  # int(0.5 * 4) = 2 steps with fusers, CFG batched in one forward


def test_guidance_unconditional_branch_gets_null_grounding_and_negative_prompt(pipe):
    seen = []
    unet = pipe.model.unet
    original = unet.forward

    def spy(x, t, context, controls=None):
        seen.append((context.clone(), controls["interaction"].tokens.clone()))
        return original(x, t, context, controls)

    unet.forward = spy
    try:
        pipe("a person touching a cat", [person_touching_cat()], negative_prompt="blurry", seed=0,
             guidance_scale=7.5, sampler="ddim", **{**FAST, "steps": 1})
    finally:
        unet.forward = original
    context, tokens = seen[0]
    model = pipe.model
    cond_ctx = model.text_encoder.encode(["a person touching a cat"])
    neg_ctx = model.text_encoder.encode(["blurry"])
    torch.testing.assert_close(context, torch.cat([cond_ctx, neg_ctx]))
    pn = model.interaction_tokenizer
    n, d = pn.max_interactions, pn.in_dim
    null_tokens = pn(torch.zeros(1, n, 4), torch.zeros(1, n, 4), torch.zeros(1, n, 4), torch.zeros(1, n),
                     torch.zeros(1, n, d), torch.zeros(1, n, d), torch.zeros(1, n, d))
    torch.testing.assert_close(tokens[1:], null_tokens)
    assert (tokens[:1] - null_tokens).abs().max() > 1e-3


def test_guidance_combines_branches(pipe):
    """One DDIM step: the guided eps is e_u + g (e_c - e_u), recomputed here from the UNet."""
    seen = []
    unet = pipe.model.unet
    original = unet.forward

    def spy(x, t, context, controls=None):
        out = original(x, t, context, controls)
        seen.append((x, t, out))
        return out

    unet.forward = spy
    try:
        guided = pipe("p", [person_touching_cat()], seed=0, guidance_scale=3.0, sampler="ddim",
                      **{**FAST, "steps": 1, "output_type": "pt"})
    finally:
        unet.forward = original
    x, t, out = seen[0]
    e_c, e_u = out.chunk(2)
    eps = e_u + 3.0 * (e_c - e_u)
    sched = pipe.model.diffusion
    a = sched.alphas_cumprod[t[0]]
    a_prev = sched.alphas_cumprod[0]
    x0 = (x[:1] - (1 - a).sqrt() * eps) / a.sqrt()
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    expected = pipe.model.decode_latents(x_prev)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options, field", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(guidance_scale=float("nan")), "guidance_scale"), (dict(sampler="euler"), "sampler"),
    (dict(scheduled_sampling=1.5), "scheduled_sampling"), (dict(height=30), "height"), (dict(width=0), "width"),
    (dict(sampler="plms", eta=0.5), "eta"), (dict(seed=[1, 2]), "seed"),
])
def test_bad_options_name_the_field(pipe, options, field):
    kwargs = {**FAST, **options}
    with pytest.raises(ValueError, match=field):
        pipe("p", [person_touching_cat()], **kwargs)


def test_too_many_interactions_and_mismatched_lists(pipe):
    with pytest.raises(ConditionError, match="at most 30"):
        pipe("p", [person_touching_cat()] * 31, **FAST)
    with pytest.raises(ValueError, match="one list per prompt"):
        pipe(["p", "q"], [[person_touching_cat()]], **FAST)


def test_unset_options_come_from_the_config_then_the_schema(pipe):
    """SamplingOptions is the one source of defaults: the tiny config's sampling section sets
    steps 20 and 32x32; eta, which it does not set, comes from the schema."""
    import dataclasses
    from hoi.schema import defaults
    from interact.pipeline import SamplingOptions
    options = pipe.resolve_options()
    assert isinstance(options, SamplingOptions)
    assert (options.steps, options.height, options.width, options.eta) == (20, 32, 32, defaults(SamplingOptions)["eta"])
    assert pipe.resolve_options(steps=3, guidance_scale=2).guidance_scale == 2.0  # ints are floats here
    assert list(pipe.check_call_options()) == [f.name for f in dataclasses.fields(SamplingOptions)]


def test_schema_samplers_are_the_pipeline_samplers():
    import typing
    from interact.pipeline import SAMPLERS, SamplingOptions
    assert set(typing.get_args(typing.get_type_hints(SamplingOptions)["sampler"])) == set(SAMPLERS)


@pytest.mark.parametrize("section, message", [
    ({"stepz": 10}, "sampling.stepz: unknown option; known: " + ", ".join(sorted(
        f.name for f in dataclasses.fields(SamplingOptions)))),
    ({"steps": "10"}, "sampling.steps = '10': expected int"),
    ({"guidance_scale": "high"}, "sampling.guidance_scale = 'high': expected float"),
    ({"scheduled_sampling": 2.0}, "sampling.scheduled_sampling = 2.0: out of range (must be in [0, 1])"),
])
def test_config_sampling_section_is_checked_against_the_schema(section, message):
    from interact.model import load_config
    from omegaconf import OmegaConf
    config = OmegaConf.merge(load_config(TINY), {"sampling": section})
    with pytest.raises(ValueError) as err:
        InteractDiffusionPipeline.from_config(config, device="cpu")
    assert str(err.value) == message


def test_model_limits_of_the_options(pipe):
    with pytest.raises(ValueError, match=r"^steps = 1001: must be an integer in \[1, 1000\]$"):
        pipe.resolve_options(steps=1001)
    with pytest.raises(ValueError, match=r"^eta = 0.5: only sampler .ddim. takes eta \(sampler .plms.\)$"):
        pipe.resolve_options(sampler="plms", eta=0.5)
    with pytest.raises(ValueError, match=r"^sampling.eta = -1.0: out of range \(must be >= 0\)$"):
        pipe.resolve_options(sampler="ddim", eta=-1.0)
# --------------------------------------------------------------------------- condition / denoise


def test_cond_null_cat_and_to(tiny_model):
    from interact.conditions import Cond
    cond = tiny_model.condition(["a person touching a cat", "a cat"], [[person_touching_cat()], []])
    assert len(cond) == 2 and cond.controls["interaction"].masks.sum() == 1
    null = cond.null()
    assert torch.equal(null.context, cond.context)   # the caption stays (the trainer's null-grounding step)
    assert all(not t.any() for t in null.controls["interaction"].as_kwargs().values())
    negative = torch.zeros_like(cond.context)
    assert torch.equal(cond.null(context=negative).context, negative)
    both = Cond.cat([cond, null])
    assert len(both) == 4 and torch.equal(both.context[2:], cond.context)
    assert torch.equal(both.controls["interaction"].subject_boxes[:2], cond.controls["interaction"].subject_boxes)
    assert not both.controls["interaction"].masks[2:].any()
    wide = cond.to(dtype=torch.float64)
    assert wide.context.dtype == wide.controls["interaction"].masks.dtype == torch.float64


def test_a_new_control_input_is_one_more_entry_and_no_caller_changes(tiny_model):
    """Cond carries any control's input through null, cat and to; rows of a cond without it get
    its class's `absent`."""
    from dataclasses import dataclass
    from interact.conditions import Cond

    @dataclass
    class Depth:
        maps: torch.Tensor

        def to(self, device=None, dtype=None):
            return Depth(self.maps.to(device=device, dtype=dtype))

        def null(self):
            return Depth(torch.zeros_like(self.maps))

        @classmethod
        def cat(cls, items):
            return cls(torch.cat([d.maps for d in items]))

        @classmethod
        def absent(cls, batch, length):
            return cls(torch.full((batch, 4, 4), -1.0))

    base = tiny_model.condition(["p"], [[person_touching_cat()]])
    cond = Cond(base.context, {**base.controls, "depth": Depth(torch.ones(1, 4, 4))})
    guided = Cond.cat([cond, cond.null(), base]).to(dtype=torch.float64)
    assert guided.controls["depth"].maps.dtype == torch.float64
    assert guided.controls["depth"].maps[0].eq(1).all() and not guided.controls["depth"].maps[1].any()
    assert guided.controls["depth"].maps[2].eq(-1).all()


def test_condition_defaults_caches_and_a_ready_grounding(tiny_model):
    items = [[person_touching_cat()], []]
    cond = tiny_model.condition(["p", "q"], items)
    # no interactions: every slot empty, the null grounding
    plain = tiny_model.condition(["p", "q"])
    for name, t in plain.controls["interaction"].as_kwargs().items():
        assert torch.equal(t, getattr(cond.controls["interaction"].null(), name)), name
    # caches plug in as the encoders and give the same tensors
    calls = {"captions": 0, "phrases": 0}

    def captions(texts):
        calls["captions"] += 1
        return tiny_model.text_encoder.encode(texts)

    def phrases(texts):
        calls["phrases"] += 1
        return tiny_model.text_encoder.encode_pooled(texts)

    cached = tiny_model.condition(["p", "q"], items, encode_captions=captions, encode_phrases=phrases)
    assert calls == {"captions": 1, "phrases": 1}
    assert torch.equal(cached.context, cond.context)
    assert torch.equal(cached.controls["interaction"].subject_embeddings, cond.controls["interaction"].subject_embeddings)
    # a ready Grounding is taken as it is: no phrase encoding
    ready = tiny_model.condition(["p", "q"], cond.controls["interaction"], encode_phrases=phrases)
    assert calls["phrases"] == 1 and torch.equal(ready.controls["interaction"].action_boxes, cond.controls["interaction"].action_boxes)


def test_condition_wants_one_interaction_list_per_caption(tiny_model):
    with pytest.raises(ValueError, match="interactions: 1 lists for 2 captions"):
        tiny_model.condition(["p", "q"], [[person_touching_cat()]])


@torch.no_grad()
def test_denoise_is_the_tokenizer_then_the_unet(pipe):
    model = pipe.model
    cond = model.condition(["a person touching a cat"], [[person_touching_cat()]])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, model.unet.in_channels, 8, 8, generator=g)
    t = torch.tensor([500])
    tokens = model.interaction_tokenizer(**cond.controls["interaction"].as_kwargs())
    for scale in (1.0, 0.5):
        want = model.unet(x, t, cond.context, with_tokens(tokens, scale))
        assert torch.equal(model.denoise(x, t, cond, scale), want)
    assert (model.denoise(x, t, cond) - model.denoise(x, t, cond.null())).abs().max() > 1e-4


# --------------------------------------------------------------------------- samplers, fuser schedule, reference_compat


def _gligen_alpha_schedule(length, beta, decay):
    """GLIGEN's alpha generator, written out: [1] * int(beta L), then a linear decay of int(decay L)
    values numpy.arange(0, 1, 1/L1) reversed, then zeros."""
    import numpy as np
    on, fading = int(beta * length), int(decay * length)
    falling = list(np.arange(0, 1, 1 / fading)[::-1]) if fading else []
    return [1.0] * on + [float(v) for v in falling] + [0.0] * (length - on - fading)


@pytest.mark.parametrize("length, beta, decay", [(50, 0.3, 0.0), (50, 0.3, 0.4), (50, 0.0, 1.0), (20, 0.5, 0.25),
                                                 (7, 0.2, 0.5)])
def test_fuser_scale_with_decay_is_gligens_alpha_schedule(length, beta, decay):
    assert [fuser_scale(i, length, beta, decay) for i in range(length)] == _gligen_alpha_schedule(length, beta, decay)


def _spy_fuser_scales(pipe, **options):
    """The fuser scale the UNet gets at each forward."""
    unet, original, scales = pipe.model.unet, pipe.model.unet.forward, []

    def spy(x, t, context, controls=None):
        entry = (controls or {}).get("interaction")
        scales.append(0.0 if entry is None else entry.scale)
        return original(x, t, context, controls)
    unet.forward = spy
    try:
        out = pipe("p", [person_touching_cat()], seed=0, **{**FAST, **options})
    finally:
        unet.forward = original
    return out, scales


@pytest.mark.parametrize("sampler", ["plms", "ddim", "dpmpp_2m", "unipc", "euler_a"])
def test_every_sampler_runs_the_fuser_schedule_by_step_index(pipe, sampler):
    out, scales = _spy_fuser_scales(pipe, sampler=sampler, steps=8, scheduled_sampling=0.5, scheduled_decay=0.25)
    expected = [fuser_scale(i, 8, 0.5, 0.25) for i in range(8)]  # 1, 1, 1, 1, 0.5, 0, 0, 0
    if sampler == "plms":
        expected = expected[:1] + expected  # its first (Heun) step calls the model twice at step 0
    assert scales == expected
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_reference_noise_is_the_reference_scripts_rng_sequence():
    """The reference seeds the global generator once; per record it draws the noise, then one
    randn_like per DDIM update (PLMS: steps + 1). Simulated here with the global generator."""
    from interact.pipeline import reference_noise
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.diffusion.plms import PLMSSampler
    from ldm.models.diffusion.schedule import NoiseSchedule
    shape = (4, 8, 8)
    for sampler, updates in ((PLMSSampler(NoiseSchedule(), 5), 6), (DDIMSampler(NoiseSchedule(), 5), 5)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(489)
            expected = []
            for _ in range(3):
                x = torch.randn(1, *shape)
                expected.append(x)
                for _ in range(updates):
                    torch.randn_like(x)
        got = reference_noise(torch.Generator().manual_seed(489), 3, shape, sampler)
        assert torch.equal(got, torch.cat(expected))


def test_reference_compat_defaults_seeding_and_pixels(pipe):
    from interact.pipeline import REFERENCE_NEGATIVE_PROMPT
    o = pipe.resolve_options(reference_compat=True)
    assert (o.steps, o.negative_prompt) == (50, REFERENCE_NEGATIVE_PROMPT)
    assert pipe.resolve_options(reference_compat=True, sampler="ddim").steps == 250
    assert pipe.resolve_options(reference_compat=True, steps=7, negative_prompt="x").steps == 7
    ref = dict(FAST, reference_compat=True, steps=4)
    both = pipe(["a person touching a cat", "a cat"], [[person_touching_cat()], []], seed=3, **ref)
    gen = torch.Generator().manual_seed(3)
    first = pipe("a person touching a cat", [person_touching_cat()], generator=gen, **ref)
    second = pipe("a cat", [], generator=gen, **ref)  # the generator carries on where the first call left it
    torch.testing.assert_close(torch.cat([first, second]), both, atol=1e-5, rtol=0)
    plain = pipe(["a person touching a cat", "a cat"], [[person_touching_cat()], []], seed=3, **dict(FAST, steps=4))
    assert (plain[1] - both[1]).abs().max() > 1e-3  # without it image i has its own seed
    pil = pipe("a cat", [], seed=3, **{**ref, "output_type": "pil"})[0]
    import numpy as np
    floor = (pipe("a cat", [], seed=3, **ref)[0].clamp(0, 1) * 255).floor().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(pil), floor)


@pytest.mark.parametrize("options, message", [
    (dict(sampler="plms", karras_sigmas=True), "karras_sigmas = True: sampler 'plms' does not take Karras sigmas"),
    (dict(sampler="euler_a", karras_sigmas=True), "karras_sigmas = True: sampler 'euler_a' does not take Karras"),
    (dict(sampler="unipc", eta=0.5), "eta = 0.5: only sampler 'ddim' takes eta (sampler 'unipc')"),
    (dict(sampler="dpmpp_2m", reference_compat=True), "sampler = 'dpmpp_2m': reference_compat reproduces the "
                                                      "reference code, which samples with plms or ddim only"),
    (dict(reference_compat=True, steps=3), "steps = 3: the reference's grid"),
    (dict(scheduled_sampling=0.8, scheduled_decay=0.3), "scheduled_decay = 0.3: scheduled_sampling + "
                                                        "scheduled_decay = 1.1 exceeds 1"),
    (dict(sampler="dpm++"), "sampling.sampler = 'dpm++'"),
])
def test_sampler_options_a_sampler_does_not_support_are_one_line(pipe, options, message):
    with pytest.raises(ValueError) as err:
        pipe.resolve_options(**options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- multi-instance sampler


def test_instance_branches_expand_mean_and_full_rows_against_a_loop(tiny_model):
    from interact.multi_instance import instance_branches
    a = Interaction("person", "touch", "cat", (0.05, 0.1, 0.5, 0.9), (0.55, 0.5, 0.95, 0.95))
    b = Interaction("dog", "chase", "ball", (0.1, 0.5, 0.4, 0.9), (0.6, 0.7, 0.7, 0.8))
    layouts = [{"interaction": [a, b]}, {}, {"interaction": [b], "segments": ["kept on the full branch"]}]
    branches = instance_branches(["p0", "p1", "p2"], layouts, tiny_model.trained_control)
    assert branches.captions == ["p0", "a person touching a cat", "a dog chasing a ball", "p1", "p2",
                                 "a dog chasing a ball"]
    assert branches.controls == [layouts[0], {"interaction": [a]}, {"interaction": [b]}, {}, layouts[2],
                                 {"interaction": [b]}]
    assert branches.owner.tolist() == [0, 0, 0, 1, 2, 2] and branches.full.tolist() == [0, 3, 4]
    values = torch.randn(6, 2, 3)
    expected = torch.stack([values[0:3].mean(0), values[3], values[4:6].mean(0)])
    torch.testing.assert_close(branches.mean(values), expected)
    assert torch.equal(branches.full_rows(values), values[[0, 3, 4]])
    x = torch.randn(3, 5)
    assert torch.equal(branches.expand(x), x[[0, 0, 0, 1, 2, 2]])


def _instance_plms_reference(model, conds, uncond, noise, steps, mis_steps, g):
    """InstanceDiffusion's plms_instance.py, step by step, for one image: every branch (`conds`,
    the full condition first) runs PLMS from the same noise on its own latent, with its own eps
    history and its own unconditional pass, for `mis_steps` steps; then the latents are averaged
    once and PLMS goes on from the average with the full condition's history."""
    from interact.conditions import Cond
    from ldm.models.diffusion.plms import PLMSSampler
    sampler = PLMSSampler(model.diffusion, steps=steps)

    def eps(x, i, cond):
        t = sampler._t_batch(i, x)
        out_c, out_u = model.denoise(torch.cat([x, x]), torch.cat([t, t]), Cond.cat([cond, uncond]), 1.0).chunk(2)
        return model.diffusion.to_eps(x, t, out_u + g * (out_c - out_u))

    def p_sample_plms(x, i, cond, old):
        e_t = eps(x, i, cond)
        if not old:    # pseudo improved Euler: predict, evaluate at the next timestep, average
            x_prev = sampler._update(x, e_t, i)[0]
            e_prime = (e_t + eps(x_prev, i + 1, cond)) / 2
        elif len(old) == 1:
            e_prime = (3 * e_t - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e_t - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        old.append(e_t)
        if len(old) >= 4:
            old.pop(0)
        return sampler._update(x, e_prime, i)[0]

    latents, histories = [], []
    for cond in conds:
        x, old = noise.clone(), []
        for i in range(mis_steps):
            x = p_sample_plms(x, i, cond, old)
        latents.append(x)
        histories.append(old)
    x, old = torch.stack(latents).mean(0), histories[0]   # merged once; the full condition's history goes on
    for i in range(mis_steps, steps):
        x = p_sample_plms(x, i, conds[0], old)
    return model.decode_latents(x)


@torch.no_grad()
def test_multi_instance_is_instancediffusions_algorithm(pipe):
    from hoi.captions import caption_from_triplets
    two = [person_touching_cat(), Interaction("person", "holding", "cup", (0.1, 0.1, 0.4, 0.6), (0.3, 0.3, 0.4, 0.4))]
    prompt, g, steps, m = "a person touching a cat and holding a cup", 3.0, 6, 0.5
    options = {**FAST, "sampler": "plms", "steps": steps, "guidance_scale": g, "scheduled_sampling": 1.0}
    got = pipe(prompt, two, seed=2, multi_instance=m, **options)
    model = pipe.model
    conds = [model.condition([prompt], [two])] + [model.condition([caption_from_triplets([it])], [[it]]) for it in two]
    noise = torch.randn(pipe._latent_shape(32, 32), generator=torch.Generator().manual_seed(2))[None]
    expected = _instance_plms_reference(model, conds, model.condition([""]).null(), noise, steps, int(m * steps), g)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    # not the old per-step average of the branches' predictions
    assert (got - pipe(prompt, two, seed=2, **options)).abs().max() > 1e-3
    # images of a batch keep their own branches and histories: as each sampled alone
    both = pipe([prompt, "a cat"], [two, []], seed=2, multi_instance=m, **options)
    alone = pipe("a cat", [], seed=3, multi_instance=m, **options)
    torch.testing.assert_close(both, torch.cat([got, alone]), atol=2e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc", "euler_a"])
def test_multi_instance_runs_with_every_sampler(pipe, sampler):
    two = [person_touching_cat(), person_touching_cat(shift=0.2)]
    options = {**FAST, "sampler": sampler, "steps": 4}
    with_branches = pipe(["p", "q"], [two, []], seed=0, multi_instance=0.5, **options)
    assert torch.isfinite(with_branches).all()
    assert (with_branches[0] - pipe("p", two, seed=0, **options)[0]).abs().max() > 1e-4


def test_multi_instance_runs_branches_for_its_share_of_steps_only(pipe):
    two = [person_touching_cat(), person_touching_cat(shift=0.2)]
    unet, original, rows = pipe.model.unet, pipe.model.unet.forward, []

    def spy(x, *args, **kwargs):
        rows.append(x.shape[0])
        return original(x, *args, **kwargs)
    unet.forward = spy
    try:
        pipe(["p", "q"], [two, []], seed=0, sampler="ddim", multi_instance=0.5, **{**FAST, "steps": 4})
    finally:
        unet.forward = original
    # int(0.5 * 4) = 2 steps of 4 branches (p, its two interactions, q), each with its own
    # unconditional row, then 2 images + 2 unconditional rows
    assert rows == [8, 8, 4, 4]


def test_multi_instance_leaves_an_image_without_interactions_alone(pipe):
    alone = pipe("a cat", [], seed=4, **FAST)
    torch.testing.assert_close(pipe("a cat", [], seed=4, multi_instance=0.36, **FAST), alone, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"^sampling.multi_instance = 1.5: out of range \(must be in \[0, 1\]\)$"):
        pipe("a cat", [], multi_instance=1.5, **FAST)
