"""Noise schedule, DDIM and PLMS: closed forms, oracles and hand-unrolled references."""

import math

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler, make_uniform_timesteps
from ldm.models.diffusion.plms import PLMSSampler
from ldm.models.diffusion.schedule import BUFFER_NAMES, NoiseSchedule


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule()


def _bcast(v, x):
    return v.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


# ---------------------------------------------------------------- schedule


def test_schedule_matches_float64_closed_form(sched):
    T = 1000
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / (T - 1)) ** 2 for i in range(T)]
    betas = torch.tensor(betas, dtype=torch.float64)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    acs, running = [], 1.0
    for b in betas.tolist():
        running *= 1.0 - b
        acs.append(running)
    ac = torch.tensor(acs, dtype=torch.float64)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    var = betas * (1 - ac_prev) / (1 - ac)
    expected = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": ac.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": var,
        "posterior_log_variance_clipped": torch.log(torch.clamp(var, min=1e-20)),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
    }
    buffers = dict(sched.named_buffers())
    assert list(buffers) == list(expected)
    for name, ref in expected.items():
        got = buffers[name]
        assert got.dtype == torch.float32 and got.shape == (T,), name
        torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-9, msg=name)
    # LDM clipping: index 0 (zero variance) holds log(1e-20).
    assert buffers["posterior_variance"][0].item() == 0.0
    assert buffers["posterior_log_variance_clipped"][0].item() == pytest.approx(math.log(1e-20), rel=1e-6)


def test_schedule_names_match_manifest(sched, manifest):
    rows = [(key, list(shape)) for key, shape in manifest.get("diffusion", {}).items()]
    assert rows, "manifest has no diffusion section"
    assert [(n, list(b.shape)) for n, b in sched.state_dict().items()] == rows
    assert list(BUFFER_NAMES) == [k for k, _ in rows]


def test_schedule_roundtrip_and_state_dict_load(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g)
    noise = torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 500, 999])
    xt = sched.q_sample(x0, t, noise)
    a = sched.alphas_cumprod[t]
    torch.testing.assert_close(xt, _bcast(a.sqrt(), x0) * x0 + _bcast((1 - a).sqrt(), x0) * noise)
    torch.testing.assert_close(sched.predict_x0(xt, t, noise), x0, atol=2e-5, rtol=1e-5)
    other = NoiseSchedule(linear_end=0.02)
    other.load_state_dict(sched.state_dict())
    torch.testing.assert_close(other.betas, sched.betas)


def test_schedule_rejects_unknown_kind():
    with pytest.raises(ValueError, match="schedule"):
        NoiseSchedule(schedule="cosine")


# ---------------------------------------------------------------- timesteps


def test_uniform_timesteps(sched):
    ts = DDIMSampler(sched, steps=50).timesteps
    assert ts.dtype == torch.long
    assert ts.tolist() == list(range(981, 0, -20))
    assert PLMSSampler(sched, steps=50).timesteps.tolist() == ts.tolist()
    assert DDIMSampler(sched, steps=1).timesteps.tolist() == [1]
    assert DDIMSampler(sched, steps=500).timesteps.tolist() == list(range(999, 0, -2))
    # steps == T: LDM's +1 would index t = 1000, so the grid is every training step.
    assert DDIMSampler(sched, steps=1000).timesteps.tolist() == list(range(999, -1, -1))
    # Non-divisors still give exactly `steps` distinct, in-range timesteps.
    for steps in (3, 7, 333, 501, 999):
        ts = make_uniform_timesteps(1000, steps)
        assert len(ts) == steps and len(set(ts.tolist())) == steps
        assert 0 <= ts.min() and ts.max() <= 999


def test_ddpm_limit_sigmas_equal_posterior_variance(sched):
    # eta = 1 on the full grid is ancestral DDPM sampling.
    s = DDIMSampler(sched, steps=1000, eta=1.0)
    t = s.timesteps[:-1]
    torch.testing.assert_close(s.sigmas[:-1] ** 2, sched.posterior_variance[t].double(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, True])
def test_invalid_steps_raise(sched, steps):
    for cls in (DDIMSampler, PLMSSampler):
        with pytest.raises(ValueError, match="steps"):
            cls(sched, steps=steps)


def test_invalid_steps_message_names_value(sched):
    with pytest.raises(ValueError, match=r"steps=1001"):
        DDIMSampler(sched, steps=1001)


def test_plms_rejects_eta(sched):
    with pytest.raises(ValueError, match="eta"):
        PLMSSampler(sched, steps=10, eta=0.5)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(sched, steps=10, eta=-0.1)


# ---------------------------------------------------------------- oracles


def _point_mass_eps(sched, x0):
    ac = sched.alphas_cumprod.double()

    def eps_fn(x, t, i):
        a = _bcast(ac[t], x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return eps_fn


@pytest.mark.parametrize("cls,steps", [(DDIMSampler, 50), (PLMSSampler, 50), (DDIMSampler, 7), (PLMSSampler, 4)])
def test_point_mass_oracle_recovers_x0(sched, cls, steps):
    # With the exact eps of a point mass, eps is constant along the eta=0
    # trajectory, so the result is the closed form at alphas_cumprod[0].
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    xT = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64)
    sampler = cls(sched, steps=steps)
    out = sampler.sample(_point_mass_eps(sched, x0), xT, progress=False)
    a_T = sched.alphas_cumprod[sampler.timesteps[0]].double()
    a_0 = sched.alphas_cumprod[0].double()
    eps = (xT - a_T.sqrt() * x0) / (1 - a_T).sqrt()
    expected = a_0.sqrt() * x0 + (1 - a_0).sqrt() * eps
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # The clean estimate from the final state is x0 itself.
    torch.testing.assert_close(sched.predict_x0(out, torch.zeros(2, dtype=torch.long), eps), x0, atol=1e-4, rtol=0)


def test_point_mass_float32(sched):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    xT = torch.randn(1, 4, 8, 8, generator=g)
    ac = sched.alphas_cumprod

    def eps_fn(x, t, i):
        a = _bcast(ac[t], x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    for cls in (DDIMSampler, PLMSSampler):
        out = cls(sched, steps=50).sample(eps_fn, xT, progress=False)
        assert out.dtype == torch.float32
        a_0 = ac[0]
        assert (out - a_0.sqrt() * x0).abs().max() < 0.2  # only sqrt(1-a_0)~0.03 of noise left
        x0_hat = sched.predict_x0(out, torch.zeros(1, dtype=torch.long), eps_fn(out, torch.zeros(1, dtype=torch.long), 0))
        torch.testing.assert_close(x0_hat, x0, atol=1e-3, rtol=0)


# DDIM is first order (about -2% std at 100 steps), PLMS converges much faster,
# and eta = 1 (stochastic) slowest, hence the per-case step counts and tolerances.
@pytest.mark.parametrize(
    "cls,eta,steps,batch,tol",
    [(DDIMSampler, 0.0, 500, 256, 0.01), (PLMSSampler, 0.0, 100, 256, 0.01), (DDIMSampler, 1.0, 200, 128, 0.03)],
)
def test_gaussian_data_oracle_gives_data_std(sched, cls, eta, steps, batch, tol):
    s = 0.5
    ac = sched.alphas_cumprod.double()

    def eps_fn(x, t, i):
        a = _bcast(ac[t], x)
        return (1 - a).sqrt() * x / (a * s * s + 1 - a)

    g = torch.Generator().manual_seed(3)
    xT = torch.randn(batch, 4, 8, 8, generator=g, dtype=torch.float64)
    out = cls(sched, steps=steps, eta=eta).sample(eps_fn, xT, generator=g, progress=False)
    # The chain ends at alphas_cumprod[0], where the marginal std is:
    target = math.sqrt(ac[0].item() * s * s + 1 - ac[0].item())
    # The std estimate's standard error is ~0.5/sqrt(2 * 65536) ~ 0.0014 (0.002 for batch 128).
    assert abs(out.std().item() - target) < tol
    assert abs(out.mean().item()) < 0.01


# ---------------------------------------------------------------- PLMS reference


def test_plms_matches_hand_unrolled_reference(sched):
    g = torch.Generator().manual_seed(4)
    xT = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    c = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    ac = sched.alphas_cumprod.double()

    def f(x, t):
        return 0.3 * x + 1e-3 * t * c

    def eps_fn(x, t, i):
        assert bool((t == t[0]).all())
        return f(x, float(t[0]))

    def ddim(x, e, t, t_prev):
        a, ap = ac[t], ac[t_prev]
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        return ap.sqrt() * x0 + (1 - ap).sqrt() * e

    # 5 steps of 1000: t = 801, 601, 401, 201, 1, then t_prev = 0. Covers Heun + orders 2, 3, 4 (twice).
    x = xT
    e0 = f(x, 801)
    e0n = f(ddim(x, e0, 801, 601), 601)
    x = ddim(x, 0.5 * e0 + 0.5 * e0n, 801, 601)
    e1 = f(x, 601)
    x = ddim(x, 1.5 * e1 - 0.5 * e0, 601, 401)
    e2 = f(x, 401)
    x = ddim(x, (23 * e2 - 16 * e1 + 5 * e0) / 12, 401, 201)
    e3 = f(x, 201)
    x = ddim(x, (55 * e3 - 59 * e2 + 37 * e1 - 9 * e0) / 24, 201, 1)
    e4 = f(x, 1)
    x = ddim(x, (55 * e4 - 59 * e3 + 37 * e2 - 9 * e1) / 24, 1, 0)

    sampler = PLMSSampler(sched, steps=5)
    assert sampler.timesteps.tolist() == [801, 601, 401, 201, 1]
    out = sampler.sample(eps_fn, xT, progress=False)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)

    # And only the first 3 steps, on a 3-step grid of a 30-step schedule (t = 21, 11, 1).
    small = NoiseSchedule(timesteps=30)
    ac = small.alphas_cumprod.double()
    x = xT
    e0 = f(x, 21)
    x = ddim(x, 0.5 * e0 + 0.5 * f(ddim(x, e0, 21, 11), 11), 21, 11)
    e1 = f(x, 11)
    x = ddim(x, 1.5 * e1 - 0.5 * e0, 11, 1)
    e2 = f(x, 1)
    x = ddim(x, (23 * e2 - 16 * e1 + 5 * e0) / 12, 1, 0)
    out = PLMSSampler(small, steps=3).sample(eps_fn, xT, progress=False)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_single_step_samplers(sched):
    # steps == 1: one DDIM step from t=1 to t=0; PLMS skips the Heun correction.
    xT = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    calls = []

    def eps_fn(x, t, i):
        calls.append(int(t[0]))
        return 0.1 * x

    a, ap = sched.alphas_cumprod[1].double(), sched.alphas_cumprod[0].double()
    e = 0.1 * xT
    expected = ap.sqrt() * (xT - (1 - a).sqrt() * e) / a.sqrt() + (1 - ap).sqrt() * e
    for cls in (DDIMSampler, PLMSSampler):
        calls.clear()
        torch.testing.assert_close(cls(sched, steps=1).sample(eps_fn, xT, progress=False), expected)
        assert calls == [1]


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize("cls", [DDIMSampler, PLMSSampler])
def test_eps_fn_and_callback_contract(sched, cls):
    seen, cb = [], []

    def eps_fn(x, t, i):
        assert t.dtype == torch.long and t.shape == (3,) and t.device == x.device
        seen.append((i, int(t[0])))
        return torch.zeros_like(x)

    sampler = cls(sched, steps=4)
    sampler.sample(eps_fn, torch.randn(3, 2, 4, 4), progress=False, callback=lambda i, x: cb.append((i, x.shape)))
    if cls is DDIMSampler:
        assert seen == [(0, 751), (1, 501), (2, 251), (3, 1)]
    else:  # Heun on the first step: step_index 0 twice, second call at the next timestep
        assert seen == [(0, 751), (0, 501), (1, 501), (2, 251), (3, 1)]
    assert cb == [(i, torch.Size([3, 2, 4, 4])) for i in range(4)]


def test_eps_shape_mismatch_raises(sched):
    with pytest.raises(ValueError, match="shape"):
        DDIMSampler(sched, steps=2).sample(lambda x, t, i: x[:, :1], torch.randn(1, 2, 3, 3), progress=False)


def test_eta_noise_is_seeded(sched):
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def eps_fn(x, t, i):
        return 0.5 * x

    def run(eta, seed):
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return DDIMSampler(sched, steps=10, eta=eta).sample(eps_fn, xT, generator=gen, progress=False)

    a, b, c = run(0.7, 123), run(0.7, 123), run(0.7, 124)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    # eta = 0 draws no noise: the generator does not matter.
    torch.testing.assert_close(run(0.0, 1), run(0.0, None), rtol=0, atol=0)
    assert (run(0.0, 1) - a).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [DDIMSampler, PLMSSampler])
def test_progress_bar_shows_the_sampler_and_its_steps_and_can_be_turned_off(sched, cls, capsys):
    x_T = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))

    def sample(progress: bool):
        return cls(sched, steps=7).sample(lambda x, t, i: 0.1 * x, x_T, progress=progress)

    shown = sample(progress=True)
    bar = capsys.readouterr()
    assert f"{cls.name}:" in bar.err and "0/7" in bar.err and bar.out == ""  # e.g. "PLMS:   0%|   | 0/7 [...]"
    silent = sample(progress=False)
    assert capsys.readouterr() == ("", "")
    assert torch.isfinite(shown).all() and torch.equal(shown, silent)  # the bar changes nothing


def test_v_parameterization_round_trip_and_closed_form():
    """v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho); to_eps inverts it given x_t."""
    sched = NoiseSchedule(parameterization="v")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = sched.q_sample(x0, t, noise)
    v = sched.training_target(x0, t, noise)
    a = sched.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(v.double(), a.sqrt() * noise.double() - (1 - a).sqrt() * x0.double(), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(sched.to_eps(x_t, t, v), noise, rtol=1e-4, atol=1e-5)
    eps_sched = NoiseSchedule()
    assert eps_sched.training_target(x0, t, noise) is noise and eps_sched.to_eps(x_t, t, v) is v
    with pytest.raises(ValueError, match="parameterization"):
        NoiseSchedule(parameterization="x0")


# ---------------------------------------------------------------- diffusers' solvers, reference grid

from ldm.models.diffusion.ddim import make_reference_timesteps  # noqa: E402
from ldm.models.diffusion.solvers import SOLVERS, SolverSampler  # noqa: E402


def _gaussian_eps(sched, std):
    """The exact noise prediction for data ~ N(0, std^2 I): E[eps | x_t] = x_t sqrt(1-a) / (a std^2 + 1 - a)."""
    ac = sched.alphas_cumprod.double()

    def eps_fn(x, t, i):
        assert t.dtype == torch.long, "the model must be given integer timesteps"
        a = ac[t].view(-1, 1, 1, 1).to(x.dtype)
        return x * (1 - a).sqrt() / (a * std**2 + 1 - a)
    return eps_fn


@pytest.mark.parametrize("kind", list(SOLVERS))
def test_solvers_land_exactly_on_a_point_mass(sched, kind):
    """Data = the constant c: the exact eps makes every x0 prediction c, so every solver, stochastic
    or not, must end on c. Fails if the adapter feeds the model the wrong input scale or timestep."""
    c = 0.3
    ac = sched.alphas_cumprod.double()

    def eps_fn(x, t, i):
        a = ac[t].view(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * c) / (1 - a).sqrt()
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = SolverSampler(sched, 12, kind).sample(eps_fn, x_T, generator=torch.Generator().manual_seed(1),
                                                progress=False)
    # (diffusers keeps its sigmas in float32: 1e-5 is its round-off, not a method error)
    torch.testing.assert_close(out, torch.full_like(out, c), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["dpmpp_2m", "unipc"])
def test_solvers_follow_the_probability_flow_ode_of_gaussian_data(sched, kind):
    """For data N(0, s^2) the probability-flow ODE has the closed form x_t = x_T sqrt(v_t / v_T),
    v_t = a_t s^2 + 1 - a_t. At 20 steps the fast solvers must be within 1% of it at their last
    point before the final denoising jump, and closer than DDIM with 50 steps."""
    std = 0.5
    eps_fn = _gaussian_eps(sched, std)
    ac = sched.alphas_cumprod.double()
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(sampler):
        states = {}
        sampler.sample(eps_fn, x_T, progress=False, callback=lambda i, x: states.__setitem__(i, x))
        t0, t_last = int(sampler.timesteps[0]), int(sampler.timesteps[-1])
        exact = x_T * ((ac[t_last] * std**2 + 1 - ac[t_last]) / (ac[t0] * std**2 + 1 - ac[t0])).sqrt()
        return float((states[sampler.steps - 2] - exact).abs().max() / exact.abs().max())

    fast = error(SolverSampler(sched, 20, kind))
    assert fast < 0.01
    assert fast < error(DDIMSampler(sched, 50))


def test_solver_timesteps_are_integers_from_the_noisiest(sched):
    for kind in SOLVERS:
        ts = SolverSampler(sched, 20, kind).timesteps
        assert ts.dtype == torch.long and len(ts) == 20 and int(ts[0]) == 999
        assert bool((ts[:-1] > ts[1:]).all())
    karras = SolverSampler(sched, 20, "dpmpp_2m", karras_sigmas=True).timesteps
    assert len(karras) == 20 and not torch.equal(karras, SolverSampler(sched, 20, "dpmpp_2m").timesteps)
    with pytest.raises(ValueError, match="karras_sigmas: sampler 'euler_a' does not take Karras sigmas"):
        SolverSampler(sched, 20, "euler_a", karras_sigmas=True)


def test_euler_ancestral_draws_from_the_generator(sched):
    eps_fn = _gaussian_eps(sched, 0.5)
    x_T = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    sampler = SolverSampler(sched, 8, "euler_a")
    run = [sampler.sample(eps_fn, x_T, generator=torch.Generator().manual_seed(s), progress=False) for s in (1, 1, 2)]
    assert torch.equal(run[0], run[1]) and not torch.allclose(run[0], run[2])


@pytest.mark.parametrize("steps", [50, 250, 30, 7])
def test_reference_grid_is_ldms_formula(steps):
    c = 1000 // steps
    expected = [t + 1 for t in range(0, 1000, c)]  # LDM's make_ddim_timesteps("uniform"), written out
    grid = make_reference_timesteps(1000, steps)
    assert grid.tolist() == expected
    sampler = PLMSSampler(NoiseSchedule(), steps, grid="reference")
    assert sampler.steps == len(expected) and sampler.timesteps.tolist() == expected[::-1]
    if 1000 % steps == 0:
        assert torch.equal(grid, make_uniform_timesteps(1000, steps))


def test_reference_grid_refuses_what_the_reference_cannot_sample():
    # 3 steps: arange(0, 1000, 333) + 1 = 1, 334, 667, 1000 -> past the schedule
    with pytest.raises(ValueError, match=r"^steps = 3: the reference's grid .* reaches timestep 1000"):
        make_reference_timesteps(1000, 3)
