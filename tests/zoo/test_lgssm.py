"""The linear-Gaussian state-space family against a dense joint Gaussian (brute force),
between its two Pyro forms, and by parameter recovery; constructors and bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from inference.batch import SequenceBatch
from inference.fit import fit
from zoo.lgssm import (PARAMETER_NAMES, Imputation, LinearGaussianSSM, _InverseWishart, _VectorToPositiveDefinite,
                       positive_definite_matrix)

DTYPE = torch.float64


def random_params(d, p, seed, stable=0.8):
    """Random system: a contraction A, full positive-definite covariances."""
    g = torch.Generator().manual_seed(seed)

    def spd(k, scale):
        m = torch.randn(k, k, generator=g, dtype=DTYPE)
        return scale * (m @ m.T / k + 0.5 * torch.eye(k, dtype=DTYPE))

    a = torch.randn(d, d, generator=g, dtype=DTYPE)
    a = stable * a / torch.linalg.matrix_norm(a, 2)
    return {"transition_matrix": a, "observation_matrix": torch.randn(p, d, generator=g, dtype=DTYPE),
            "transition_cov": spd(d, 0.5), "observation_cov": spd(p, 0.3),
            "initial_mean": torch.randn(d, generator=g, dtype=DTYPE), "initial_cov": spd(d, 1.0)}


def make_model(d, p, seed, **kwargs):
    params = random_params(d, p, seed)
    return LinearGaussianSSM.from_params(*(params[name] for name in PARAMETER_NAMES), **kwargs)


def dense_joint(model, length):
    """Mean and covariance of the stacked (S_1..S_T, X_1..X_T), built from the definition."""
    a, b = model.transition_matrix.detach(), model.observation_matrix.detach()
    q, r = model.transition_cov.detach(), model.observation_cov.detach()
    m0, p0 = model.initial_mean.detach(), model.initial_cov.detach()
    d, p = b.shape[1], b.shape[0]
    means, covs = [m0], [p0]
    for _ in range(1, length):
        means.append(a @ means[-1])
        covs.append(a @ covs[-1] @ a.T + q)
    state_cov = torch.zeros(length * d, length * d, dtype=DTYPE)
    for t in range(length):
        for s in range(t + 1):
            block = torch.linalg.matrix_power(a, t - s) @ covs[s]  # Cov(S_t, S_s)
            state_cov[t * d:(t + 1) * d, s * d:(s + 1) * d] = block
            state_cov[s * d:(s + 1) * d, t * d:(t + 1) * d] = block.T
    emit = torch.block_diag(*[b] * length)
    obs_cov = emit @ state_cov @ emit.T + torch.block_diag(*[r] * length)
    state_mean = torch.cat(means)
    joint_mean = torch.cat([state_mean, emit @ state_mean])
    joint_cov = torch.cat([torch.cat([state_cov, state_cov @ emit.T], 1),
                           torch.cat([emit @ state_cov, obs_cov], 1)])
    return joint_mean, joint_cov


def dense_posterior(model, x):
    """Log-likelihood, state posterior (mean (T, d), cov (T*d, T*d)) and the conditional of
    the missing entries of one sequence ``x (T, p)``, by Gaussian conditioning."""
    length, p = x.shape
    d = model.state_dim
    mean, cov = dense_joint(model, length)
    flat = x.reshape(-1)
    obs = torch.cat([torch.zeros(length * d, dtype=torch.bool), ~flat.isnan()])
    hidden = ~obs
    solve = torch.linalg.solve(cov[obs][:, obs], torch.cat([cov[hidden][:, obs].T, (flat[~flat.isnan()] - mean[obs])[:, None]], 1))
    cond_mean = mean[hidden] + cov[hidden][:, obs] @ solve[:, -1]
    cond_cov = cov[hidden][:, hidden] - cov[hidden][:, obs] @ solve[:, :-1]
    log_like = dist.MultivariateNormal(mean[obs], cov[obs][:, obs]).log_prob(flat[~flat.isnan()])
    k = length * d
    missing = flat.isnan()
    return log_like, cond_mean[:k].reshape(length, d), cond_cov[:k, :k], cond_mean[k:], cond_cov[k:, k:].diagonal(), missing


def with_gaps(x):
    x = x.clone()
    x[0, 1, 0] = float("nan")  # a single entry
    x[0, 2] = float("nan")  # a whole row
    return x


@pytest.mark.parametrize("d, p, length, seed", [(1, 1, 5, 0), (2, 3, 4, 1), (3, 2, 5, 2)])
def test_exact_inference_matches_a_dense_joint_gaussian(d, p, length, seed):
    model = make_model(d, p, seed)
    x = with_gaps(model.sample(1, length, torch.Generator().manual_seed(seed)).values)
    log_like, state_mean, state_cov, missing_mean, missing_var, missing = dense_posterior(model, x[0])
    assert torch.allclose(model.log_prob(x).detach()[0], log_like, rtol=1e-10, atol=1e-10)
    smoothed = model.smooth(x)
    assert torch.allclose(smoothed.smoothed_mean[0], state_mean, atol=1e-9)
    for t in range(length):
        assert torch.allclose(smoothed.smoothed_cov[0, t], state_cov[t * d:(t + 1) * d, t * d:(t + 1) * d], atol=1e-9)
    imputed = model.impute(x)
    assert isinstance(imputed, Imputation)
    flat_mean, flat_var = imputed.mean[0].reshape(-1), imputed.var[0].reshape(-1)
    assert torch.allclose(flat_mean[missing], missing_mean, atol=1e-9)
    assert torch.allclose(flat_var[missing], missing_var, atol=1e-9)
    assert torch.equal(flat_mean[~missing], x[0].reshape(-1)[~missing]) and (flat_var[~missing] == 0).all()


def test_burn_drops_the_first_terms_exactly():
    model = make_model(2, 2, 3)
    x = with_gaps(model.sample(2, 5, torch.Generator().manual_seed(0)).values)
    for burn in (1, 2):
        dense_all = dense_posterior(model, x[0])[0]
        dense_head = dense_posterior(model, x[0, :burn])[0] if not x[0, :burn].isnan().all() else 0.0
        got = model.log_prob(x, burn=burn).detach()[0]
        assert torch.allclose(got, dense_all - dense_head, rtol=1e-10)
    assert torch.allclose(model.log_prob(x, burn=9).detach(), torch.zeros(2, dtype=DTYPE))


def test_masked_batch_equals_one_by_one():
    model = make_model(2, 3, 4)
    lengths = torch.tensor([7, 1, 4])
    values = with_gaps(model.sample(3, 7, torch.Generator().manual_seed(0)).values)
    together = model.log_prob(values, lengths).detach()
    smoothed = model.smooth(values, lengths)
    imputed = model.impute(values, lengths)
    for n, length in enumerate(lengths.tolist()):
        alone = values[n:n + 1, :length]
        assert torch.allclose(together[n], model.log_prob(alone).detach()[0], rtol=1e-12)
        assert torch.allclose(smoothed.smoothed_mean[n, :length], model.smooth(alone).smoothed_mean[0], atol=1e-12)
        assert torch.allclose(imputed.mean[n, :length], model.impute(alone).mean[0], atol=1e-12, equal_nan=True)
        assert (imputed.mean[n, length:] == 0).all() and (imputed.var[n, length:] == 0).all()


def test_from_params_round_trip_and_config_rebuild():
    params = random_params(2, 3, 5)
    model = LinearGaussianSSM.from_params(*(params[name] for name in PARAMETER_NAMES),
                                          learn=("transition_cov", "observation_matrix"))
    for name, value in params.items():
        assert torch.allclose(getattr(model, name).detach(), value, atol=1e-12), name
    assert set(model.parameter_sites()) == {"transition_cov", "observation_matrix"}
    assert model.fixed_names == ("transition_matrix", "observation_cov", "initial_mean", "initial_cov")
    rebuilt = LinearGaussianSSM(**model.config()).to(DTYPE)
    rebuilt.load_state_dict(model.state_dict())
    x = model.sample(2, 6, torch.Generator().manual_seed(0)).values
    assert torch.allclose(rebuilt.log_prob(x), model.log_prob(x))
    # Parameter sites round trip through set_parameter_values.
    start = dict(params, transition_cov=torch.eye(2, dtype=DTYPE), observation_matrix=torch.zeros(3, 2, dtype=DTYPE))
    other = LinearGaussianSSM.from_params(*(start[name] for name in PARAMETER_NAMES),
                                          learn=("transition_cov", "observation_matrix"))
    assert not torch.allclose(other.log_prob(x), model.log_prob(x))
    other.set_parameter_values(model.parameter_values())
    assert torch.allclose(other.log_prob(x), model.log_prob(x), rtol=1e-12)
    assert model.num_parameters == 3 + 6


def test_structured_constructors():
    level = LinearGaussianSSM.local_level(2.0, 3.0, initial="prior", dtype=DTYPE)
    assert level.state_dim == level.obs_dim == 1
    assert torch.equal(level.transition_matrix, torch.ones(1, 1, dtype=DTYPE))
    assert level.transition_cov.item() == pytest.approx(2.0) and level.observation_cov.item() == pytest.approx(3.0)
    assert set(level.parameter_sites()) == {"transition_var", "observation_var"}
    trend = LinearGaussianSSM.local_linear_trend(1.0, 0.5, 2.0, initial="prior", dtype=DTYPE)
    assert torch.equal(trend.transition_matrix, torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=DTYPE))
    assert torch.equal(trend.observation_matrix, torch.tensor([[1.0, 0.0]], dtype=DTYPE))
    assert torch.allclose(trend.transition_cov, torch.diag(torch.tensor([1.0, 0.5], dtype=DTYPE)))
    assert set(trend.parameter_sites()) == {"transition_var", "observation_cov"}
    assert trend.site_dims()["transition_var"] == ("state",)
    # The local linear trend's second difference of the signal is white noise: its sample obeys it.
    batch, states = trend.sample_with_states(1, 4000, torch.Generator().manual_seed(0))
    slope_steps = states[0, 1:, 1] - states[0, :-1, 1]
    assert abs(slope_steps.var().item() - 0.5) < 0.05


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.log_prob(torch.zeros(2, 5)), r"shape \(N, T, 3\)"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 2, dtype=DTYPE)), r"shape \(N, T, 3\)"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=torch.long)), "float observations"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=DTYPE), torch.tensor([1.0, 2.0])), "lengths"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=DTYPE), burn=-1), "burn"),
        (lambda m: m.log_prob(torch.full((1, 2, 3), float("inf"), dtype=DTYPE)), "infinite"),
        (lambda m: m.sample(0, 5), "num_sequences"),
        (lambda m: m.set_values({"transition_cov": -torch.eye(2, dtype=DTYPE)}), "positive-definite"),
        (lambda m: m.set_values({"observation_matrix": torch.zeros(2, 2, dtype=DTYPE)}), r"shape \(3, 2\)"),
        (lambda m: m.set_parameter_values({"nope": torch.zeros(1)}), "unknown site"),
        (lambda m: LinearGaussianSSM(0, 2), "state_dim"),
        (lambda m: LinearGaussianSSM(2, 2, transition_cov_type="banded"), "transition_cov_type"),
        (lambda m: LinearGaussianSSM(2, 2, fixed={"gamma": torch.eye(2)}), "unknown parameter"),
        (lambda m: LinearGaussianSSM(2, 2, fixed={"observation_cov": torch.ones(2, 2)}), "positive-definite"),
        (lambda m: LinearGaussianSSM(2, 2, latent="sampled", initial="diffuse"), "latent='sampled'"),
        (lambda m: LinearGaussianSSM.from_params(torch.eye(2), torch.ones(3, 3), torch.eye(2), torch.eye(3),
                                                 torch.zeros(2), torch.eye(2)), r"observation_matrix: expected shape \(p, 2\)"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, message):
    model = make_model(2, 3, 0)
    with pytest.raises(ValueError, match=message):
        call(model)
