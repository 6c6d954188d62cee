"""The flow math: steps, Gaussian log-probs, chains and their recomputation."""

import math

import pytest
import torch

from rllib_pirl.flow import (
    LearnedNoiseExploration,
    SDEExploration,
    bounded_std,
    chain_log_prob,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    ode_step,
    reduce_log_prob,
    sample_chain,
    sde_step,
    time_grid,
)


def test_time_grid_runs_from_noise_to_action():
    grid = time_grid(4)
    assert torch.allclose(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError, match="K"):
        time_grid(0)


def test_gaussian_log_prob_and_entropy_match_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(64, 5, 3, generator=g), torch.randn(64, 5, 3, generator=g)
    std = torch.rand(64, 5, 3, generator=g) + 0.05
    ref = torch.distributions.Normal(mean, std)
    assert torch.allclose(gaussian_log_prob(x, mean, std), ref.log_prob(x), atol=1e-5)
    assert torch.allclose(gaussian_entropy(std), ref.entropy(), atol=1e-6)


def test_gaussian_kl_matches_torch_normal():
    g = torch.Generator().manual_seed(1)
    mean_p, mean_q = torch.randn(32, 5, 3, generator=g), torch.randn(32, 5, 3, generator=g)
    std_p, std_q = torch.rand(32, 5, 3, generator=g) + 0.05, torch.rand(32, 5, 3, generator=g) + 0.05
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_p, std_p), torch.distributions.Normal(mean_q, std_q)
    )
    assert torch.allclose(gaussian_kl(mean_p, std_p, mean_q, std_q), expected, atol=1e-5)
    assert torch.allclose(gaussian_kl(mean_p, std_p, mean_p, std_p), torch.zeros_like(mean_p), atol=1e-6)


def test_ode_step_is_euler():
    x, v = torch.ones(2, 3, 4), torch.full((2, 3, 4), 2.0)
    assert torch.allclose(ode_step(x, v, 1.0, 0.25), torch.full((2, 3, 4), 0.5))


@pytest.mark.parametrize("t", [1.0, 0.75, 0.5, 0.25])
def test_sde_step_with_noise_level_zero_is_the_ode_step(t):
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(8, 5, 7, generator=g), torch.randn(8, 5, 7, generator=g)
    mean, std = sde_step(x, v, torch.full((8,), t), 0.25, noise_level=0.0)
    assert torch.allclose(mean, ode_step(x, v, t, 0.25), atol=1e-6)
    assert torch.all(std == 0)


@pytest.mark.parametrize("t", [1.0, 0.6, 0.2])
def test_sde_step_takes_one_float_time_or_per_row_times(t):
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(8, 5, 7, generator=g), torch.randn(8, 5, 7, generator=g)
    mean_f, std_f = sde_step(x, v, t, 0.2, noise_level=0.7)
    mean_t, std_t = sde_step(x, v, torch.full((8,), t), 0.2, noise_level=0.7)
    assert torch.allclose(mean_f, mean_t, atol=1e-5) and torch.allclose(std_f, std_t, atol=1e-6)
    # and both equal the formula written out: x − dt·[v + σ²/(2t)·(x + (1 − t)·v)]
    ts = min(t, 0.8)
    sigma2 = 0.49 * ts / (1 - ts)
    expected = x - 0.2 * (v + sigma2 / (2 * t) * (x + (1 - t) * v))
    assert torch.allclose(mean_f, expected, atol=1e-5)
    assert torch.allclose(std_f, torch.full_like(std_f, math.sqrt(0.2 * sigma2)), atol=1e-6)


def test_sde_step_avoids_the_pole_at_t_equal_one():
    x, v = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    mean, std = sde_step(x, v, 1.0, 0.25, noise_level=0.5)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    # σ at t = 1 uses t = 1 − dt: a·sqrt(0.75/0.25); std = sqrt(dt)·σ.
    assert torch.allclose(std, torch.full_like(std, math.sqrt(0.25) * 0.5 * math.sqrt(3.0)))


def test_bounded_std_stays_in_range():
    std = bounded_std(torch.linspace(-20, 20, 101), 0.08, 0.16)
    assert std.min() >= 0.08 - 1e-6 and std.max() <= 0.16 + 1e-6
    assert math.isclose(bounded_std(torch.zeros(()), 0.08, 0.16).item(), math.sqrt(0.08 * 0.16), rel_tol=1e-5)


# --- Flow-SDE keeps the marginals of the ODE (1-D Gaussian target, exact velocity) ---
TARGET_MEAN, TARGET_STD = 1.5, 0.5


def exact_velocity(x, t):
    """v(x, t) = E[ε − a | x_t = x] for a ~ N(m, s²), x_t = t·ε + (1 − t)·a:
    (t − (1 − t)s²)/Var_t · (x − (1 − t)m) − m, Var_t = t² + (1 − t)²s²."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    s2 = TARGET_STD**2
    var = t**2 + (1 - t) ** 2 * s2
    return (t - (1 - t) * s2) / var * (x - (1 - t) * TARGET_MEAN) - TARGET_MEAN


def sample_target(num_steps, noise_level, n, with_score=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    grid, dt = time_grid(num_steps, dtype=torch.float64), 1.0 / num_steps
    for k in range(num_steps):
        t = grid[k].expand(n)
        v = exact_velocity(x, t)
        mean, std = sde_step(x, v, t, dt, noise_level)
        if not with_score:  # negative control: noise without the score correction
            mean = ode_step(x, v, t, dt)
        x = mean + std * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.mean().item(), x.var().item()


@pytest.mark.parametrize("noise_level", [0.3, 0.5, 1.0])
def test_flow_sde_reproduces_the_target_marginal(noise_level):
    # n = 100k samples: standard errors 0.0016 (mean) and 0.0011 (variance 0.25);
    # Euler bias at K = 400 measured ≤ 0.002 on the variance (the ODE alone: 0.2483).
    # Tolerance 0.01 is > 4× (bias + 2 SE), yet 50× smaller than the error of the
    # same noise without the score term (variance 0.71, checked below).
    mean, var = sample_target(400, noise_level, n=100_000)
    assert abs(mean - TARGET_MEAN) < 0.01
    assert abs(var - TARGET_STD**2) < 0.01


def test_marginal_check_detects_a_missing_score_correction():
    _, var = sample_target(400, 0.5, n=100_000, with_score=False)
    assert abs(var - TARGET_STD**2) > 0.1


# --- chains ---------------------------------------------------------------------------
def _toy_velocity(seed=0, hidden=16, dim=3):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.Tanh())
    out = torch.nn.Linear(hidden, dim)
    head = torch.nn.Linear(hidden, dim)

    def velocity_fn(x, t):
        h = net(torch.cat([x, t.view(-1, 1, 1).expand(*x.shape[:2], 1)], dim=-1))
        return out(h), h

    return velocity_fn, (lambda h: bounded_std(head(h), 0.08, 0.16))


def test_flow_noise_chain_log_prob_is_the_sum_of_its_step_terms():
    velocity_fn, std_fn = _toy_velocity()
    K = 4
    chain = sample_chain(velocity_fn, torch.randn(6, 5, 3), K, LearnedNoiseExploration(std_fn))
    assert chain.steps.tolist() == [list(range(K))] * 6
    # Independently: log N(x_0; 0, I) + Σ_k log N(x_{k+1}; x_k − dt·v_k, σ_k²).
    x = chain.latents
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])
    for k in range(K):
        t = torch.full((6,), 1 - k / K)
        v, h = velocity_fn(x[:, k], t)
        step = torch.distributions.Normal(x[:, k] - v / K, std_fn(h))
        expected = expected + step.log_prob(x[:, k + 1])
    assert torch.allclose(chain.log_prob, expected, atol=1e-5)


def test_flow_sde_chain_has_one_stochastic_step_and_recomputes_exactly():
    velocity_fn, _ = _toy_velocity(seed=3)
    K = 5
    torch.manual_seed(7)
    chain = sample_chain(velocity_fn, torch.randn(10, 4, 3), K, SDEExploration(0.5))
    k_star = chain.steps[0, 0].item()
    assert chain.steps.shape == (10, 1) and (chain.steps == k_star).all()
    # Every other step is the ODE step.
    x = chain.latents
    for k in range(K):
        if k == k_star:
            continue
        v, _ = velocity_fn(x[:, k], torch.full((10,), 1 - k / K))
        assert torch.allclose(x[:, k + 1], ode_step(x[:, k], v, None, 1 / K), atol=1e-6)
    # The learner's recomputation of the stored transition gives the same log-prob,
    # also when rows of different calls (different k*) are mixed.
    other = sample_chain(velocity_fn, torch.randn(10, 4, 3), K, SDEExploration(0.5))
    latents = torch.cat([chain.latents, other.latents])
    steps = torch.cat([chain.steps, other.steps])
    again = chain_log_prob(velocity_fn, latents, steps, SDEExploration(0.5))
    assert torch.allclose(again.log_prob, torch.cat([chain.log_prob, other.log_prob]), atol=1e-5)


def test_flow_sde_with_all_steps_stochastic_sums_every_sde_step():
    velocity_fn, _ = _toy_velocity(seed=4)
    K = 4
    chain = sample_chain(velocity_fn, torch.randn(6, 5, 3), K, SDEExploration(0.5, all_steps=True))
    assert chain.steps.tolist() == [list(range(K))] * 6
    # Independently: Σ_k log N(x_{k+1}; mean_k, σ_k²) of the K SDE steps (no prior term).
    x = chain.latents
    expected = torch.zeros_like(x[:, 0])
    for k in range(K):
        t = torch.full((6,), 1 - k / K)
        v, _ = velocity_fn(x[:, k], t)
        mean, std = sde_step(x[:, k], v, t, 1 / K, 0.5)
        expected = expected + torch.distributions.Normal(mean, std).log_prob(x[:, k + 1])
    assert torch.allclose(chain.log_prob, expected, atol=1e-5)
    again = chain_log_prob(velocity_fn, chain.latents, chain.steps, SDEExploration(0.5, all_steps=True))
    assert torch.allclose(again.log_prob, chain.log_prob, atol=1e-5)


def test_deterministic_chain_is_the_ode():
    velocity_fn, _ = _toy_velocity(seed=5)
    x0 = torch.randn(3, 2, 3)
    chain = sample_chain(velocity_fn, x0, 3)
    x = x0
    for k in range(3):
        v, _ = velocity_fn(x, torch.full((3,), 1 - k / 3))
        x = x - v / 3
    assert torch.allclose(chain.actions, x, atol=1e-6)
    assert chain.steps.shape == (3, 0) and torch.all(chain.log_prob == 0)


def test_log_prob_reductions_crop_to_chunk_and_real_dims():
    lp = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    per_element = reduce_log_prob(lp, action_chunk=2, action_dim=3, reduction="per_element")
    assert per_element.shape == (2, 6)
    assert torch.equal(per_element, lp[:, :2, :3].flatten(1))
    summed = reduce_log_prob(lp, 2, 3, "sum")
    assert summed.shape == (2, 1) and torch.equal(summed[:, 0], lp[:, :2, :3].sum((1, 2)))
    with pytest.raises(ValueError, match="per_element"):
        reduce_log_prob(lp, 2, 3, "mean")


@pytest.mark.parametrize("kind", ["sde", "noise"])
def test_chain_kl_to_a_reference_is_the_sum_of_its_stochastic_steps_kls(kind):
    """KL(p_θ ‖ p_ref) of stored chains: zero against itself; against another policy the sum
    over the chain's stochastic transitions of torch's Gaussian KL at the stored x_k."""
    velocity_fn, std_fn = _toy_velocity(seed=6)
    ref_velocity_fn, ref_std_fn = _toy_velocity(seed=8)
    K = 4
    if kind == "sde":
        mine, theirs = SDEExploration(0.5), SDEExploration(0.5)
    else:
        mine, theirs = LearnedNoiseExploration(std_fn), LearnedNoiseExploration(ref_std_fn)
    chain = sample_chain(velocity_fn, torch.randn(8, 5, 3), K, mine)
    same = chain_log_prob(velocity_fn, chain.latents, chain.steps, mine, (velocity_fn, mine))
    assert torch.allclose(same.kl, torch.zeros_like(same.kl), atol=1e-6)
    assert chain_log_prob(velocity_fn, chain.latents, chain.steps, mine).kl is None

    other = chain_log_prob(velocity_fn, chain.latents, chain.steps, mine, (ref_velocity_fn, theirs))
    x, expected = chain.latents, torch.zeros(8, 5, 3)
    for k in chain.steps[0].tolist():
        t = torch.full((8,), 1 - k / K)
        steps = []
        for fn, exploration in ((velocity_fn, mine), (ref_velocity_fn, theirs)):
            v, h = fn(x[:, k], t)
            steps.append(torch.distributions.Normal(*exploration.transition(x[:, k], v, h, t, 1 / K)))
        expected = expected + torch.distributions.kl_divergence(*steps)
    assert (expected > 0).all()
    assert torch.allclose(other.kl, expected, atol=1e-5)
    # The gradient flows into this policy only (the reference is evaluated without one).
    assert other.kl.requires_grad
