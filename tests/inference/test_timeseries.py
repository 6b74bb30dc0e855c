"""Tests for ``inference.timeseries``: held-out scores given their history and
leave-future-out cross-validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from inference.batch import SequenceBatch
from inference.contract import SequenceModel
from inference.timeseries import (
    concatenate_in_time,
    conditional_label,
    conditional_log_prob,
    conditional_log_prob_steps,
    posterior_step_log_likelihoods,
    prefix,
    psis_lfo,
    psis_lfo_model,
    rolling_origin,
    split_in_time,
    step_log_likelihoods,
    unconditional_log_prob,
)
from zoo.hmm import CategoricalHMM
from zoo.lgssm import LinearGaussianSSM
from zoo.rnn import gru

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# HMM: brute-force enumeration of every state path
# ---------------------------------------------------------------------------
def sticky_hmm() -> CategoricalHMM:
    """Two sticky states that start almost surely in state 0 and emit mostly 0 / mostly 2."""
    return CategoricalHMM.from_probs(
        torch.tensor([0.95, 0.05], dtype=torch.float64),
        torch.tensor([[0.95, 0.05], [0.05, 0.95]], dtype=torch.float64),
        torch.tensor([[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]], dtype=torch.float64),
    ).double()


def brute_force_hmm_log_prob(model: CategoricalHMM, codes: list[int]) -> float:
    initial, transition, emission = (
        p.detach() for p in (model.initial_probs, model.transition_probs, model.emission_probs)
    )
    total = 0.0
    for path in itertools.product(range(initial.shape[0]), repeat=len(codes)):
        p = initial[path[0]] * emission[path[0], codes[0]]
        for t in range(1, len(codes)):
            p = p * transition[path[t - 1], path[t]] * emission[path[t], codes[t]]
        total += float(p)
    return math.log(total)


def test_hmm_conditional_score_is_log_p_all_minus_log_p_history_by_enumeration():
    model = sticky_hmm()
    codes = [0, 2, 2, 2, 2, 2]  # history in state 1 (emitting 2s) that the initial state does not favour
    history, future = torch.tensor([codes[:4]]), torch.tensor([codes[4:]])
    brute = brute_force_hmm_log_prob(model, codes) - brute_force_hmm_log_prob(model, codes[:4])
    conditional = conditional_log_prob(model, history, future)
    assert conditional.item() == pytest.approx(brute, abs=1e-10)
    steps = conditional_log_prob_steps(model, history, future)
    assert steps.shape == (1, 2)
    step_one = brute_force_hmm_log_prob(model, codes[:5]) - brute_force_hmm_log_prob(model, codes[:4])
    assert steps[0, 0].item() == pytest.approx(step_one, abs=1e-10)
    assert steps.sum().item() == pytest.approx(brute, abs=1e-10)
    # Scored from the initial state, the two 2s look like a switch to a rare state: at least 2 nats worse.
    unconditioned = unconditional_log_prob(model, future)
    assert unconditioned.item() == pytest.approx(brute_force_hmm_log_prob(model, codes[4:]), abs=1e-10)
    assert conditional.item() - unconditioned.item() > 2.0


def test_hmm_conditional_score_with_unequal_lengths_and_an_empty_history():
    model = sticky_hmm()
    sequences = [[0, 0, 1, 2], [2, 2], [1, 0, 0]]
    splits = [1, 0, 1]  # the second history is empty: its conditional score is the plain score
    history = SequenceBatch.from_sequences([torch.tensor(s[:k]) for s, k in zip(sequences, splits)])
    future = SequenceBatch.from_sequences([torch.tensor(s[k:]) for s, k in zip(sequences, splits)])
    expected = [
        brute_force_hmm_log_prob(model, s) - (brute_force_hmm_log_prob(model, s[:k]) if k else 0.0)
        for s, k in zip(sequences, splits)
    ]
    got = conditional_log_prob(model, history, future)
    assert got.tolist() == pytest.approx(expected, abs=1e-10)
    steps = conditional_log_prob_steps(model, history, future)
    assert steps.sum(-1).tolist() == pytest.approx(expected, abs=1e-10)
    assert steps[1, 2].item() == 0.0  # padding of the second future


# ---------------------------------------------------------------------------
# Kalman model: a dense joint Gaussian
# ---------------------------------------------------------------------------
def kalman_model() -> LinearGaussianSSM:
    return LinearGaussianSSM.from_params(
        torch.tensor([[0.98, 0.1], [0.0, 0.9]], dtype=torch.float64),
        torch.tensor([[1.0, 0.5]], dtype=torch.float64),
        torch.tensor([[0.3, 0.05], [0.05, 0.2]], dtype=torch.float64),
        torch.tensor([[0.4]], dtype=torch.float64),
        torch.tensor([0.0, 0.0], dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
    )


def dense_joint(model: LinearGaussianSSM, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(T,)`` and covariance ``(T, T)`` of ``x_{1:T}`` (p = 1) written out densely."""
    a, b = model._point()["transition_matrix"], model._point()["observation_matrix"]
    q, r = model._point()["transition_cov"], model._point()["observation_cov"]
    m0, p0 = model._point()["initial_mean"], model._point()["initial_cov"]
    means, covs = [m0], [p0]
    for _ in range(1, length):
        means.append(a @ means[-1])
        covs.append(a @ covs[-1] @ a.T + q)
    state_cov = torch.zeros(length, length, 2, 2, dtype=torch.float64)
    for t in range(length):
        for s in range(t, length):
            block = torch.linalg.matrix_power(a, s - t) @ covs[t]  # Cov(S_s, S_t)
            state_cov[s, t], state_cov[t, s] = block, block.T
    mean = torch.stack([b @ m for m in means]).reshape(length)
    cov = torch.einsum("ij,stjk,lk->sitl", b, state_cov, b).reshape(length, length) + r[0, 0] * torch.eye(length)
    return mean.detach(), cov.detach()


def test_kalman_conditional_score_equals_the_dense_conditional_gaussian():
    model = kalman_model()
    with torch.no_grad():
        series = model.sample(1, 12, generator=torch.Generator().manual_seed(3)).values  # (1, 12, 1)
    series[0, :, 0] += torch.linspace(0, 12, 12, dtype=torch.float64)  # a series drifting far from the prior mean
    history, future = series[:, :9], series[:, 9:]
    mean, cov = dense_joint(model, 12)
    h, f = slice(0, 9), slice(9, 12)
    gain = cov[f, h] @ torch.linalg.inv(cov[h, h])
    conditional_mean = mean[f] + gain @ (series[0, h, 0] - mean[h])
    conditional_cov = cov[f, f] - gain @ cov[h, f]
    expected = torch.distributions.MultivariateNormal(conditional_mean, conditional_cov).log_prob(series[0, f, 0])
    got = conditional_log_prob(model, history, future)
    # 1e-6: the filter switches to its steady-state gain once the covariance has converged.
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert conditional_log_prob_steps(model, history, future).sum().item() == pytest.approx(expected.item(), abs=1e-6)
    # The Kalman filter's own step terms give the same per-step scores as prefix differences.
    kalman_steps = conditional_log_prob_steps(
        model, history, future, step_log_probs=lambda m, b: m.filter(b.values, b.lengths).step_log_likelihood
    )
    assert torch.allclose(kalman_steps, conditional_log_prob_steps(model, history, future), atol=1e-9)
    # From the initial state (mean 0) the future, which continues a history near 12, costs > 10 nats more.
    unconditioned = torch.distributions.MultivariateNormal(mean[:3], cov[:3, :3]).log_prob(series[0, f, 0])
    assert unconditional_log_prob(model, future).item() == pytest.approx(unconditioned.item(), abs=1e-6)
    assert got.item() - unconditioned.item() > 10.0


# ---------------------------------------------------------------------------
# RNN: score the concatenation, subtract the history's terms
# ---------------------------------------------------------------------------
def test_rnn_conditional_score_is_the_concatenation_minus_the_history_terms():
    torch.manual_seed(0)
    model = gru("categorical", num_symbols=5, hidden_size=8, embedding_dim=4).double()
    model.reset_parameters(torch.Generator().manual_seed(1))
    model.eval()
    generator = torch.Generator().manual_seed(2)
    full = torch.randint(0, 5, (3, 11), generator=generator)
    lengths = torch.tensor([11, 9, 6])
    splits = torch.tensor([7, 3, 6])  # the third future is empty
    history = SequenceBatch.from_sequences([full[n, :k] for n, k in enumerate(splits.tolist())])
    future = SequenceBatch.from_sequences(
        [full[n, k:l] for n, (k, l) in enumerate(zip(splits.tolist(), lengths.tolist()))]
    )
    with torch.no_grad():
        terms = model.log_prob_steps(full, lengths)  # (3, 11)
    expected = torch.stack([terms[n, k:l].sum() for n, (k, l) in enumerate(zip(splits.tolist(), lengths.tolist()))])
    assert torch.allclose(conditional_log_prob(model, history, future), expected, atol=1e-10)
    steps = conditional_log_prob_steps(model, history, future)
    for n, (k, l) in enumerate(zip(splits.tolist(), lengths.tolist())):
        assert torch.allclose(steps[n, : l - k], terms[n, k:l], atol=1e-10)
    hooked = conditional_log_prob_steps(
        model, history, future, step_log_probs=lambda m, b: m.log_prob_steps(b.values, b.lengths)
    )
    assert torch.allclose(hooked, steps, atol=1e-10)


# ---------------------------------------------------------------------------
# Bounds: labelled, common random numbers
# ---------------------------------------------------------------------------
class NoisyBound(SequenceModel):
    """A stand-in for a stochastic bound: the sum of the values plus N(0, 1) noise per sequence."""

    exact_likelihood = False
    likelihood_kind = "ELBO"

    def log_prob(self, values, lengths=None):
        mask = torch.arange(values.shape[1]) < lengths.unsqueeze(-1)
        return (values * mask).sum(-1) + torch.randn(values.shape[0], dtype=values.dtype)


def test_bound_difference_is_labelled_and_uses_common_random_numbers():
    model = NoisyBound()
    assert conditional_label(model) == "difference of ELBO bounds (not a bound)"
    assert conditional_label(sticky_hmm()) == "exact"
    history = torch.tensor([[1.0, 2.0, 3.0]])
    future = SequenceBatch(torch.tensor([[4.0, 5.0]]), torch.tensor([2]))
    # Same seed for both terms: the noise cancels, leaving exactly the future's sum.
    assert conditional_log_prob(model, history, future).item() == pytest.approx(9.0, abs=1e-12)
    assert conditional_log_prob(model, history, future, seed=None).item() != pytest.approx(9.0, abs=1e-3)


def test_split_prefix_and_concatenation_round_trip_and_reject_bad_input():
    batch = SequenceBatch.from_sequences([torch.arange(6), torch.arange(4)])
    history, future = split_in_time(batch, 3)
    assert history.lengths.tolist() == [3, 3] and future.lengths.tolist() == [3, 1]
    again = concatenate_in_time(history, future)
    assert torch.equal(again.values, batch.values) and torch.equal(again.lengths, batch.lengths)
    assert prefix(batch, 5).lengths.tolist() == [5, 4]
    with pytest.raises(ValueError, match="same number of sequences"):
        concatenate_in_time(history, future[0])
    with pytest.raises(ValueError, match="origin"):
        split_in_time(batch, -1)


# ---------------------------------------------------------------------------
# Leave-future-out cross-validation
# ---------------------------------------------------------------------------
LEVEL_VARS = torch.exp(torch.linspace(math.log(0.05), math.log(5.0), 15, dtype=torch.float64))
NOISE_VARS = torch.exp(torch.linspace(math.log(0.1), math.log(5.0), 15, dtype=torch.float64))


def local_level() -> LinearGaussianSSM:
    return LinearGaussianSSM.local_level(0.5, 1.0, initial="prior", initial_var=10.0, dtype=torch.float64)


def kalman_steps(model, batch):
    return model.filter(batch.values, batch.lengths).step_log_likelihood


@pytest.fixture(scope="module")
def simulated_series():
    truth = LinearGaussianSSM.local_level(0.5, 1.0, initial="prior", initial_var=10.0, dtype=torch.float64)
    with torch.no_grad():
        return truth.sample(1, 60, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def grid_posterior(simulated_series):
    """An exact posterior on a 15 x 15 grid of (level variance, noise variance), flat in logs:
    the grid's per-step terms ``(G, T)`` and a ``fit_posterior(i)`` drawing 300 grid points
    from the posterior given the first ``i`` steps (seeded by ``i``)."""
    model = local_level()
    grid = torch.cartesian_prod(LEVEL_VARS, NOISE_VARS)  # (G, 2)
    draws = {"transition_var": grid[:, :1], "observation_var": grid[:, 1:]}
    terms = posterior_step_log_likelihoods(model, simulated_series, draws, step_log_probs=kalman_steps)  # (G, T)

    def fit_posterior(origin: int) -> torch.Tensor:
        log_posterior = terms[:, :origin].sum(-1)
        probs = torch.softmax(log_posterior, 0)
        index = torch.multinomial(probs, 300, replacement=True, generator=torch.Generator().manual_seed(origin))
        return terms[index]

    return terms, fit_posterior


def test_posterior_step_terms_restore_the_point_values_and_match_log_prob(simulated_series, grid_posterior):
    terms, _ = grid_posterior
    model = local_level()
    before = {k: v.clone() for k, v in model.parameter_values().items()}
    model.set_parameter_values({"transition_var": LEVEL_VARS[3:4], "observation_var": NOISE_VARS[7:8]})
    expected = model.log_prob(simulated_series.values).item()
    assert terms[3 * 15 + 7].sum().item() == pytest.approx(expected, abs=1e-8)
    fresh = local_level()
    posterior_step_log_likelihoods(fresh, simulated_series, {"transition_var": LEVEL_VARS[:2, None]})
    assert all(torch.equal(fresh.parameter_values()[k], before[k]) for k in before)


def exact_lfo(fit_posterior, origins, horizon):
    """Refit at every origin; the term is the log of the mean predictive density over draws."""
    terms = []
    for origin in origins:
        draws = fit_posterior(origin)
        predictive = draws[:, origin : origin + horizon].sum(-1)
        terms.append(torch.logsumexp(predictive, 0) - math.log(predictive.numel()))
    return torch.stack(terms)


@pytest.mark.parametrize("horizon", [1, 3])
def test_psis_lfo_with_threshold_zero_is_exact_lfo(grid_posterior, horizon):
    _, fit_posterior = grid_posterior
    result = psis_lfo(fit_posterior, 60, first_origin=20, horizon=horizon, k_threshold=0.0)
    origins = list(range(20, 60 - horizon + 1))
    reference = exact_lfo(fit_posterior, origins, horizon)
    assert result.origins.tolist() == origins
    assert torch.allclose(result.pointwise, reference, atol=1e-10)
    assert result.elpd == pytest.approx(float(reference.sum()), abs=1e-8)
    assert result.num_refits == len(origins) - 1 and result.method == "exact"
    assert result.se == pytest.approx(math.sqrt(len(origins)) * float(reference.std()), rel=1e-10)


def test_psis_lfo_with_the_default_threshold_stays_within_its_standard_error(grid_posterior):
    _, fit_posterior = grid_posterior
    origins = list(range(20, 60))
    reference = exact_lfo(fit_posterior, origins, 1)
    result = psis_lfo(fit_posterior, 60, first_origin=20, horizon=1)
    assert abs(result.elpd - float(reference.sum())) < result.se
    # Importance sampling does its job: far fewer refits than origins, and the per-origin
    # terms agree with the exact ones to the Monte Carlo error of 300 draws (a tenth of a nat).
    assert result.num_refits < len(origins) // 4
    assert (result.pointwise - reference).abs().max() < 0.2
    assert (result.pointwise - reference).abs().mean() < 0.05
    refit_here = torch.tensor([origin in result.refit_origins for origin in origins])
    assert torch.isnan(result.pareto_k[0]) and bool((result.pareto_k[1:][~refit_here[1:]] <= 0.7).all())
    assert bool((result.pareto_k[1:][refit_here[1:]] > 0.7).all())


def test_rolling_origin_refits_at_the_asked_origins_and_conditions_between(simulated_series):
    fits = []
    cache = {}

    def refit(history: SequenceBatch) -> LinearGaussianSSM:
        # The grid MAP given the history: a real (if coarse) refit.
        fits.append(history.max_length)
        if history.max_length in cache:
            return cache[history.max_length]
        best, best_value = None, -math.inf
        for level in LEVEL_VARS[::3]:
            for noise in NOISE_VARS[::3]:
                model = LinearGaussianSSM.local_level(
                    float(level), float(noise), initial="prior", initial_var=10.0, dtype=torch.float64
                )
                value = model.log_prob(history.values).item()
                if value > best_value:
                    best, best_value = model, value
        cache[history.max_length] = best
        return best

    result = rolling_origin(
        local_level(),
        simulated_series,
        first_origin=40,
        horizon=2,
        refit=refit,
        refit_every=5,
        step_log_probs=kalman_steps,
    )
    origins = list(range(40, 59))
    assert fits == origins[::5] and list(result.refit_origins) == origins[::5] and result.num_refits == 3
    expected = []
    for position, origin in enumerate(origins):
        fitted_at = origins[(position // 5) * 5]
        model = refit(prefix(simulated_series, fitted_at))
        history, future = split_in_time(simulated_series, origin, 2)
        expected.append(conditional_log_prob(model, history, future).item())
    assert result.pointwise.tolist() == pytest.approx(expected, abs=1e-6)
    # Without refits the one model is scored at every origin.
    fixed = rolling_origin(local_level(), simulated_series, first_origin=40, horizon=2)
    assert fixed.num_refits == 0 and fixed.refit_origins == ()
    steps = step_log_likelihoods(local_level(), simulated_series)
    assert fixed.pointwise[0].item() == pytest.approx(steps[0, 40:42].sum().item(), abs=1e-10)


def test_lfo_rejects_bad_origins(grid_posterior, simulated_series):
    _, fit_posterior = grid_posterior
    with pytest.raises(ValueError, match="first_origin"):
        psis_lfo(fit_posterior, 60, first_origin=60)
    with pytest.raises(ValueError, match="one length"):
        rolling_origin(
            local_level(), SequenceBatch.from_sequences([torch.zeros(5, 1), torch.zeros(4, 1)]), first_origin=1
        )
    with pytest.raises(ValueError, match=r"\(S, 60\)"):
        psis_lfo(lambda origin: torch.zeros(3, 10), 60, first_origin=20)


def test_psis_lfo_model_fits_draws_on_the_history_and_scores_them_through_the_model(simulated_series):
    seen = []
    generator = torch.Generator().manual_seed(4)
    fixed = {
        "transition_var": LEVEL_VARS[torch.randint(0, 15, (12,), generator=generator)].unsqueeze(-1),
        "observation_var": NOISE_VARS[torch.randint(0, 15, (12,), generator=generator)].unsqueeze(-1),
    }

    def fit_draws(history):
        seen.append(history.max_length)
        return fixed

    result = psis_lfo_model(
        local_level(), simulated_series, fit_draws, first_origin=50, k_threshold=0.0, step_log_probs=kalman_steps
    )
    assert seen == list(range(50, 60))
    terms = posterior_step_log_likelihoods(local_level(), simulated_series, fixed)  # prefix differences
    expected = [torch.logsumexp(terms[:, i], 0) - math.log(12) for i in range(50, 60)]
    assert result.pointwise.tolist() == pytest.approx([float(e) for e in expected], abs=1e-8)
