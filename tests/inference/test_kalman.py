"""Tests for the linear-Gaussian state-space kernels in ``inference.kalman``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from statsmodels.tsa.statespace.kalman_smoother import KalmanSmoother

from inference.kalman import (
    KalmanFiltered,
    forecast,
    kalman_filter,
    log_marginal,
    rts_smoother,
    sample_states,
)


def random_system(state_dim: int, obs_dim: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """A random stable system: (A, Q, H, R, initial_mean, initial_cov)."""
    gen = torch.Generator().manual_seed(seed)

    def spd(dim: int) -> torch.Tensor:
        root = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        return root @ root.T + 0.3 * torch.eye(dim, dtype=torch.float64)

    transition = torch.randn(state_dim, state_dim, generator=gen, dtype=torch.float64)
    transition = 0.9 * transition / torch.linalg.eigvals(transition).abs().max()
    params = (
        transition,
        spd(state_dim),
        torch.randn(obs_dim, state_dim, generator=gen, dtype=torch.float64),
        spd(obs_dim),
        torch.randn(state_dim, generator=gen, dtype=torch.float64),
        spd(state_dim),
    )
    return tuple(value.to(dtype) for value in params)


def joint_gaussian(params: tuple[torch.Tensor, ...], num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense mean ``(T d + T p,)`` and covariance of ``(S_1..S_T, X_1..X_T)``."""
    transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov = params
    state_dim = transition.shape[0]
    # S = M @ (S_1, w_2, ..., w_T) with M block lower-triangular of powers of A.
    mixing = torch.zeros(num_steps * state_dim, num_steps * state_dim, dtype=torch.float64)
    for t in range(num_steps):
        for s in range(t + 1):
            mixing[t * state_dim : (t + 1) * state_dim, s * state_dim : (s + 1) * state_dim] = (
                torch.linalg.matrix_power(transition, t - s)
            )
    innovations_cov = torch.block_diag(initial_cov, *([transition_cov] * (num_steps - 1)))
    innovations_mean = torch.cat([initial_mean, torch.zeros((num_steps - 1) * state_dim, dtype=torch.float64)])
    state_mean = mixing @ innovations_mean
    state_cov = mixing @ innovations_cov @ mixing.T
    emit = torch.block_diag(*([obs_matrix] * num_steps))
    mean = torch.cat([state_mean, emit @ state_mean])
    cov = torch.cat(
        [
            torch.cat([state_cov, state_cov @ emit.T], 1),
            torch.cat([emit @ state_cov, emit @ state_cov @ emit.T + torch.block_diag(*([obs_cov] * num_steps))], 1),
        ]
    )
    return mean, cov


def brute_force_posterior(params, observations: torch.Tensor):
    """Log marginal of the observed entries and the posterior mean/cov of all states, ``observations (T, p)``."""
    num_steps, obs_dim = observations.shape
    state_dim = params[0].shape[0]
    mean, cov = joint_gaussian(params, num_steps)
    num_state = num_steps * state_dim
    observed = num_state + torch.nonzero(~torch.isnan(observations.reshape(-1)))[:, 0]
    values = observations.reshape(-1)[observed - num_state]
    if len(observed) == 0:
        return torch.tensor(0.0, dtype=torch.float64), mean[:num_state], cov[:num_state, :num_state]
    obs_mean, obs_cov = mean[observed], cov[observed][:, observed]
    log_prob = torch.distributions.MultivariateNormal(obs_mean, obs_cov).log_prob(values)
    cross = cov[:num_state][:, observed]
    post_mean = mean[:num_state] + cross @ torch.linalg.solve(obs_cov, values - obs_mean)
    post_cov = cov[:num_state, :num_state] - cross @ torch.linalg.solve(obs_cov, cross.T)
    return log_prob, post_mean, post_cov


@pytest.mark.parametrize("state_dim", [1, 2, 3])
@pytest.mark.parametrize("obs_dim", [1, 2])
def test_matches_dense_joint_gaussian_with_missing(state_dim, obs_dim):
    num_steps = 5
    params = random_system(state_dim, obs_dim, seed=10 * state_dim + obs_dim)
    gen = torch.Generator().manual_seed(state_dim + 7 * obs_dim)
    observations = torch.randn(3, num_steps, obs_dim, generator=gen, dtype=torch.float64) * 2
    observations[0, 1] = float("nan")  # whole row
    observations[1, 3, 0] = float("nan")  # single entry (whole row when p = 1)
    observations[1, 0] = float("nan")
    observations[2, 4, -1] = float("nan")
    smoothed = rts_smoother(*params, observations)
    filtered = kalman_filter(*params, observations)
    torch.testing.assert_close(smoothed.log_normalizer, filtered.log_normalizer, rtol=0, atol=0)
    for n in range(observations.shape[0]):
        log_prob, post_mean, post_cov = brute_force_posterior(params, observations[n])
        torch.testing.assert_close(filtered.log_normalizer[n], log_prob, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(smoothed.smoothed_mean[n].reshape(-1), post_mean, rtol=1e-8, atol=1e-8)
        for t in range(num_steps):
            block = slice(t * state_dim, (t + 1) * state_dim)
            torch.testing.assert_close(smoothed.smoothed_cov[n, t], post_cov[block, block], rtol=1e-8, atol=1e-8)
            if t > 0:
                previous = slice((t - 1) * state_dim, t * state_dim)
                torch.testing.assert_close(smoothed.lag_one_cov[n, t], post_cov[block, previous], rtol=1e-8, atol=1e-8)
        assert torch.all(smoothed.lag_one_cov[n, 0] == 0)
        # The filtered moments at the last step are the smoothed ones; at t they condition on x_{1:t}.
        _, filt_mean, filt_cov = brute_force_posterior(
            params, torch.cat([observations[n, :3], torch.full_like(observations[n, 3:], float("nan"))])
        )
        torch.testing.assert_close(
            filtered.filtered_mean[n, 2], filt_mean[2 * state_dim : 3 * state_dim], rtol=1e-8, atol=1e-8
        )
        torch.testing.assert_close(
            filtered.predicted_mean[n, 3], filt_mean[3 * state_dim : 4 * state_dim], rtol=1e-8, atol=1e-8
        )
        torch.testing.assert_close(
            filtered.filtered_cov[n, 2],
            filt_cov[2 * state_dim : 3 * state_dim, 2 * state_dim : 3 * state_dim],
            rtol=1e-8,
            atol=1e-8,
        )


@pytest.mark.parametrize("state_dim", [1, 4])
def test_matches_statsmodels(state_dim):
    obs_dim, num_steps = 2, 40
    params = random_system(state_dim, obs_dim, seed=100 + state_dim)
    gen = torch.Generator().manual_seed(state_dim)
    observations = torch.randn(num_steps, obs_dim, generator=gen, dtype=torch.float64) * 3
    observations[5, 1] = float("nan")
    observations[9] = float("nan")
    transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov = (v.numpy() for v in params)
    reference = KalmanSmoother(k_endog=obs_dim, k_states=state_dim, k_posdef=state_dim)
    reference.bind(np.asfortranarray(observations.numpy().T))
    reference["design"] = obs_matrix
    reference["obs_cov"] = obs_cov
    reference["transition"] = transition
    reference["selection"] = np.eye(state_dim)
    reference["state_cov"] = transition_cov
    reference.initialize_known(initial_mean, initial_cov)
    reference.tolerance = 0  # no switch to the steady-state filter
    result = reference.smooth()

    filtered = kalman_filter(*params, observations[None])
    smoothed = rts_smoother(*params, observations[None])
    expected_llf = float(result.llf_obs.sum())
    assert abs(float(filtered.log_normalizer[0]) - expected_llf) <= 1e-8 * abs(expected_llf)
    np.testing.assert_allclose(filtered.filtered_mean[0].numpy(), result.filtered_state.T, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        filtered.filtered_cov[0].numpy(), result.filtered_state_cov.transpose(2, 0, 1), rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(
        filtered.predicted_mean[0].numpy(), result.predicted_state[:, :-1].T, rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(smoothed.smoothed_mean[0].numpy(), result.smoothed_state.T, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        smoothed.smoothed_cov[0].numpy(), result.smoothed_state_cov.transpose(2, 0, 1), rtol=1e-8, atol=1e-9
    )


def test_masked_batch_equals_one_by_one():
    state_dim, obs_dim, num_steps = 3, 2, 8
    params = random_system(state_dim, obs_dim, seed=3)
    gen = torch.Generator().manual_seed(3)
    observations = torch.randn(4, num_steps, obs_dim, generator=gen, dtype=torch.float64)
    observations[1, 2, 1] = float("nan")
    observations[2, 0] = float("nan")
    lengths = torch.tensor([8, 5, 1, 0])
    # Padding content must not matter.
    observations[1, 5:] = 1e6
    observations[3] = float("nan")
    filtered = kalman_filter(*params, observations, lengths)
    smoothed = rts_smoother(*params, observations, lengths)
    ahead = forecast(*params, observations, lengths, steps=3)
    for n, length in enumerate(lengths.tolist()):
        valid = slice(0, length)
        assert torch.all(filtered.filtered_mean[n, length:] == 0)
        assert torch.all(smoothed.smoothed_cov[n, length:] == 0)
        if length == 0:
            assert float(filtered.log_normalizer[n]) == 0.0
            torch.testing.assert_close(ahead.state_mean[n, 0], params[4])
            torch.testing.assert_close(ahead.state_cov[n, 0], params[5])
            continue
        single = observations[n : n + 1, valid]
        one = kalman_filter(*params, single)
        one_smoothed = rts_smoother(*params, single)
        one_ahead = forecast(*params, single, steps=3)
        torch.testing.assert_close(filtered.log_normalizer[n], one.log_normalizer[0], rtol=1e-12, atol=1e-12)
        for batch_value, single_value in (
            (filtered.filtered_mean, one.filtered_mean),
            (filtered.filtered_cov, one.filtered_cov),
            (filtered.predicted_mean, one.predicted_mean),
            (filtered.predicted_cov, one.predicted_cov),
            (smoothed.smoothed_mean, one_smoothed.smoothed_mean),
            (smoothed.smoothed_cov, one_smoothed.smoothed_cov),
            (smoothed.lag_one_cov, one_smoothed.lag_one_cov),
        ):
            torch.testing.assert_close(batch_value[n, valid], single_value[0], rtol=1e-10, atol=1e-12)
        for batch_value, single_value in zip(ahead, one_ahead):
            torch.testing.assert_close(batch_value[n], single_value[0], rtol=1e-10, atol=1e-12)


def test_batched_parameters_equal_shared():
    params_a = random_system(2, 2, seed=5)
    params_b = random_system(2, 2, seed=6)
    gen = torch.Generator().manual_seed(5)
    observations = torch.randn(2, 6, 2, generator=gen, dtype=torch.float64)
    stacked = tuple(torch.stack([a, b]) for a, b in zip(params_a, params_b))
    batched = rts_smoother(*stacked, observations)
    first = rts_smoother(*params_a, observations[:1])
    second = rts_smoother(*params_b, observations[1:])
    for batch_value, first_value, second_value in zip(batched, first, second):
        torch.testing.assert_close(batch_value, torch.cat([first_value, second_value]), rtol=1e-12, atol=1e-12)


def test_gradcheck_log_marginal():
    params = random_system(2, 1, seed=8)
    gen = torch.Generator().manual_seed(8)
    observations = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64)
    observations[1, 2] = float("nan")
    lengths = torch.tensor([4, 3])

    def objective(transition, transition_root, obs_matrix, obs_log_scale, initial_mean, initial_root):
        # Parametrise the covariances through roots so every perturbation stays positive definite.
        eye = torch.eye(2, dtype=torch.float64)
        transition_cov = transition_root @ transition_root.T + 0.1 * eye
        initial_cov = initial_root @ initial_root.T + 0.1 * eye
        obs_cov = obs_log_scale.exp().reshape(1, 1)
        return log_marginal(
            transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov, observations, lengths
        )

    inputs = (
        params[0].clone().requires_grad_(),
        torch.linalg.cholesky(params[1]).requires_grad_(),
        params[2].clone().requires_grad_(),
        params[3].log().reshape(1).requires_grad_(),
        params[4].clone().requires_grad_(),
        torch.linalg.cholesky(params[5]).requires_grad_(),
    )
    assert torch.autograd.gradcheck(objective, inputs)


def test_ffbs_matches_smoother():
    state_dim, obs_dim, num_samples = 2, 1, 4000
    params = random_system(state_dim, obs_dim, seed=11)
    gen = torch.Generator().manual_seed(11)
    observations = torch.randn(2, 5, obs_dim, generator=gen, dtype=torch.float64)
    observations[0, 2] = float("nan")
    lengths = torch.tensor([5, 3])
    smoothed = rts_smoother(*params, observations, lengths)
    samples = sample_states(
        *params, observations, lengths, num_samples=num_samples, generator=torch.Generator().manual_seed(0)
    )
    assert samples.shape == (num_samples, 2, 5, state_dim)
    assert torch.all(samples[:, 1, 3:] == 0)
    sample_mean = samples.mean(0)
    std = smoothed.smoothed_cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.all((sample_mean - smoothed.smoothed_mean).abs() <= 6 * std / num_samples**0.5)
    centred = samples - smoothed.smoothed_mean
    sample_cov = torch.einsum("snti,sntj->ntij", centred, centred) / num_samples
    # Var of a centred second moment is (S_ii S_jj + S_ij^2) / n for a Gaussian.
    cov = smoothed.smoothed_cov
    var_diag = cov.diagonal(dim1=-2, dim2=-1)
    cov_std = ((var_diag[..., :, None] * var_diag[..., None, :] + cov.square()) / num_samples).sqrt()
    assert torch.all((sample_cov - cov).abs() <= 6 * cov_std + 1e-12)
    # Lag-one covariance of consecutive sampled states.
    lag_sample = torch.einsum("si,sj->ij", centred[:, 0, 4], centred[:, 0, 3]) / num_samples
    lag_std = (
        (var_diag[0, 4][:, None] * var_diag[0, 3][None, :] + smoothed.lag_one_cov[0, 4].square()) / num_samples
    ).sqrt()
    assert torch.all((lag_sample - smoothed.lag_one_cov[0, 4]).abs() <= 6 * lag_std)


def test_forecast_matches_brute_force_predictive():
    state_dim, obs_dim, num_steps, steps = 2, 2, 4, 2
    params = random_system(state_dim, obs_dim, seed=13)
    gen = torch.Generator().manual_seed(13)
    observations = torch.randn(1, num_steps, obs_dim, generator=gen, dtype=torch.float64)
    observations[0, 1, 0] = float("nan")
    ahead = forecast(*params, observations, steps=steps)
    # Brute force: the joint over T + steps steps with the future observations missing.
    extended = torch.cat([observations[0], torch.full((steps, obs_dim), float("nan"), dtype=torch.float64)])
    _, post_mean, post_cov = brute_force_posterior(params, extended)
    mean, cov = joint_gaussian(params, num_steps + steps)
    for k in range(steps):
        block = slice((num_steps + k) * state_dim, (num_steps + k + 1) * state_dim)
        torch.testing.assert_close(ahead.state_mean[0, k], post_mean[block], rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(ahead.state_cov[0, k], post_cov[block, block], rtol=1e-8, atol=1e-8)
    # One-step predictive of X_{T+1}: condition the dense joint on x_{1:T}.
    num_state = (num_steps + steps) * state_dim
    observed = num_state + torch.nonzero(~torch.isnan(extended.reshape(-1)))[:, 0]
    target = num_state + num_steps * obs_dim + torch.arange(obs_dim)
    values = extended.reshape(-1)[observed - num_state]
    cross = cov[target][:, observed]
    solve = torch.linalg.solve(cov[observed][:, observed], torch.cat([(values - mean[observed])[:, None], cross.T], 1))
    expected_mean = mean[target] + cross @ solve[:, 0]
    expected_cov = cov[target][:, target] - cross @ solve[:, 1:]
    torch.testing.assert_close(ahead.observation_mean[0, 0], expected_mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ahead.observation_cov[0, 0], expected_cov, rtol=1e-8, atol=1e-8)


def _float32_local_level(num_steps: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    gen = torch.Generator().manual_seed(21)
    level = torch.cumsum(0.1 * torch.randn(num_steps, generator=gen, dtype=torch.float64), 0)
    observations = (level + torch.randn(num_steps, generator=gen, dtype=torch.float64)).reshape(1, -1, 1)
    observations[0, ::97] = float("nan")  # gaps restart the full update (and the steady-state detection)
    params64 = (
        torch.eye(1, dtype=torch.float64),
        torch.full((1, 1), 0.01, dtype=torch.float64),
        torch.eye(1, dtype=torch.float64),
        torch.eye(1, dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        torch.full((1, 1), 100.0, dtype=torch.float64),
    )
    return params64, observations


def _check_float32_run(num_steps: int, backend: str) -> None:
    params64, observations = _float32_local_level(num_steps)
    result64 = kalman_filter(*params64, observations)
    params32 = tuple(value.float() for value in params64)
    if backend == "torch":
        result32 = _on_torch_path(kalman_filter, params32, observations.float())
    else:
        result32 = kalman_filter(*params32, observations.float())
    assert isinstance(result32, KalmanFiltered) and result32.log_normalizer.dtype == torch.float32
    assert torch.all(result32.filtered_cov > 0) and torch.all(result32.predicted_cov > 0)
    assert torch.isfinite(result32.log_normalizer).all()
    relative = abs(float(result32.log_normalizer) - float(result64.log_normalizer)) / abs(
        float(result64.log_normalizer)
    )
    assert relative < 1e-4


def test_float32_long_local_level_is_stable():
    _check_float32_run(100_000, "numba")
    _check_float32_run(2_000, "torch")


@pytest.mark.slow
def test_float32_torch_loop_is_stable_for_1e5_steps():
    _check_float32_run(100_000, "torch")


def test_gradcheck_diffuse_log_marginal():
    params = random_system(2, 1, seed=9)
    gen = torch.Generator().manual_seed(9)
    observations = torch.randn(2, 5, 1, generator=gen, dtype=torch.float64)
    observations[0, 1] = float("nan")
    lengths = torch.tensor([5, 4])

    def objective(transition, transition_root, obs_matrix, obs_log_scale):
        transition_cov = transition_root @ transition_root.T + 0.1 * torch.eye(2, dtype=torch.float64)
        return log_marginal(
            transition,
            transition_cov,
            obs_matrix,
            obs_log_scale.exp().reshape(1, 1),
            params[4],
            params[5],
            observations,
            lengths,
            diffuse=True,
        )

    inputs = (
        params[0].clone().requires_grad_(),
        torch.linalg.cholesky(params[1]).requires_grad_(),
        params[2].clone().requires_grad_(),
        params[3].log().reshape(1).requires_grad_(),
    )
    assert torch.autograd.gradcheck(objective, inputs)


def test_bad_inputs_raise():
    params = random_system(2, 1, seed=0)
    observations = torch.zeros(2, 3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="observations"):
        log_marginal(*params, observations[0])
    with pytest.raises(ValueError, match="observation_matrix"):
        log_marginal(params[0], params[1], torch.zeros(2, 2, dtype=torch.float64), *params[3:], observations)
    with pytest.raises(ValueError, match="transition_cov"):
        log_marginal(params[0], torch.eye(3, dtype=torch.float64), *params[2:], observations)
    with pytest.raises(ValueError, match="initial_mean"):
        log_marginal(*params[:4], torch.zeros(3, 2, dtype=torch.float64), params[5], observations)
    with pytest.raises(ValueError, match="initial_cov.*dtype"):
        log_marginal(*params[:5], params[5].float(), observations)
    with pytest.raises(ValueError, match="lengths"):
        log_marginal(*params, observations, torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="lengths"):
        log_marginal(*params, observations, torch.tensor([3.0, 1.0]))
    with pytest.raises(TypeError, match="transition_matrix"):
        log_marginal(params[0].numpy(), *params[1:], observations)
    with pytest.raises(ValueError, match="steps"):
        forecast(*params, observations, steps=0)
    with pytest.raises(ValueError, match="num_samples"):
        sample_states(*params, observations, num_samples=0)
    with pytest.raises(ValueError, match="method"):
        log_marginal(*params, observations, method="scan")
    with pytest.raises(TypeError, match="diffuse"):
        log_marginal(*params, observations, diffuse=1)


# --------------------------------------------------------------------------------------
# Exact diffuse initialisation, per-step log densities, numba vs torch
# --------------------------------------------------------------------------------------


def _on_torch_path(function, params, *args, **kwargs):
    """Call a kernel with ``params[0]`` requiring grad, which forces the torch loop; detach the result."""
    with torch.enable_grad():
        result = function(params[0].clone().requires_grad_(), *params[1:], *args, **kwargs)
    if isinstance(result, torch.Tensor):
        return result.detach()
    return type(result)(*(value.detach() for value in result))


def _nile_local_level():
    statsmodels_api = pytest.importorskip("statsmodels.api")
    volume = statsmodels_api.datasets.nile.load_pandas().data["volume"].to_numpy(dtype=np.float64, copy=True)
    one = torch.ones(1, 1, dtype=torch.float64)
    params = (one, 1469.1 * one, one, 15099.0 * one, torch.zeros(1, dtype=torch.float64), 1e6 * one)
    return volume, params


def test_diffuse_nile_log_likelihood_matches_durbin_koopman():
    volume, params = _nile_local_level()
    observations = torch.from_numpy(volume).reshape(1, -1, 1)
    value = float(log_marginal(*params, observations, diffuse=True))
    torch_value = float(_on_torch_path(log_marginal, params, observations, diffuse=True))
    print(f"Nile exact diffuse log-likelihood: {value:.4f} (torch loop {torch_value:.4f})")
    assert round(value, 4) == -633.4646  # Durbin & Koopman (2012), section 7.2 (q/2 log(kappa) convention)
    assert abs(torch_value - value) <= 1e-10 * abs(value)
    filtered = kalman_filter(*params, observations, diffuse=True)
    torch.testing.assert_close(filtered.step_log_likelihood.sum(-1), filtered.log_normalizer, rtol=1e-12, atol=0)
    # The local level is identified by the first observation: the filtered level is x_1, variance sigma_eps^2.
    assert float(filtered.filtered_mean[0, 0, 0]) == pytest.approx(volume[0], rel=1e-12)
    assert float(filtered.filtered_cov[0, 0, 0, 0]) == pytest.approx(15099.0, rel=1e-12)


def test_approximate_diffuse_matches_statsmodels_default():
    statsmodels_api = pytest.importorskip("statsmodels.api")
    volume, params = _nile_local_level()
    model = statsmodels_api.tsa.UnobservedComponents(volume, "llevel")
    # statsmodels' default: approximate diffuse (a_1 = 0, P_1 = 1e6) with the first term burnt.
    assert model.ssm.initialization.initialization_type == "approximate_diffuse"
    assert model.ssm.initialization.approximate_diffuse_variance == 1e6
    assert model.loglikelihood_burn == 1
    expected = model.loglike(np.array([15099.0, 1469.1]))
    filtered = kalman_filter(*params, torch.from_numpy(volume).reshape(1, -1, 1))
    ours = float(filtered.step_log_likelihood[:, 1:].sum(-1))
    print(f"Nile approximate-diffuse log-likelihood, first term dropped: {ours:.4f} (statsmodels {expected:.4f})")
    assert round(expected, 4) == -632.5377
    assert abs(ours - expected) <= 1e-8 * abs(expected)


def _missing_pattern(observations: torch.Tensor) -> torch.Tensor:
    observations = observations.clone()
    observations[0, 3] = float("nan")
    observations[1, 0, 0] = float("nan")
    observations[1, 1] = float("nan")
    observations[2, 5, -1] = float("nan")
    return observations


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_diffuse_equals_large_kappa_limit(backend):
    state_dim, obs_dim, num_steps, kappa = 2, 1, 12, 1e8
    params = random_system(state_dim, obs_dim, seed=31)
    gen = torch.Generator().manual_seed(31)
    observations = _missing_pattern(torch.randn(3, num_steps, obs_dim, generator=gen, dtype=torch.float64) * 2)
    lengths = torch.tensor([12, 9, 6])
    wide = (*params[:4], torch.zeros(state_dim, dtype=torch.float64), kappa * torch.eye(state_dim, dtype=torch.float64))
    call = (lambda fn, p, *a, **k: fn(*p, *a, **k)) if backend == "numba" else _on_torch_path
    diffuse_filtered = call(kalman_filter, params, observations, lengths, diffuse=True)
    diffuse_smoothed = call(rts_smoother, params, observations, lengths, diffuse=True)
    wide_filtered = call(kalman_filter, wide, observations, lengths)
    wide_smoothed = call(rts_smoother, wide, observations, lengths)
    # p_kappa(x) -> (2 pi kappa)^{-d/2} \int p(x | s_1) ds_1, and D&K's L_d = lim kappa^{d/2} L_kappa.
    limit = wide_filtered.log_normalizer + 0.5 * state_dim * math.log(kappa)
    torch.testing.assert_close(diffuse_filtered.log_normalizer, limit, rtol=1e-6, atol=1e-6)
    # Moments agree wherever the diffuse posterior is proper (here: from the second observed step on).
    for n, first in enumerate([1, 3, 1]):
        valid = slice(first, int(lengths[n]))
        assert torch.isnan(diffuse_filtered.filtered_mean[n, first - 1]).all()
        for ours, wide_value in (
            (diffuse_filtered.filtered_mean, wide_filtered.filtered_mean),
            (diffuse_filtered.filtered_cov, wide_filtered.filtered_cov),
            (diffuse_filtered.step_log_likelihood[:, 1:], wide_filtered.step_log_likelihood[:, 1:]),
        ):
            torch.testing.assert_close(ours[n, valid], wide_value[n, valid], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            diffuse_filtered.predicted_mean[n, first + 1 : int(lengths[n])],
            wide_filtered.predicted_mean[n, first + 1 : int(lengths[n])],
            rtol=1e-5,
            atol=1e-5,
        )
    for ours, wide_value in zip(diffuse_smoothed[1:], wide_smoothed[1:]):
        torch.testing.assert_close(ours, wide_value, rtol=1e-5, atol=1e-5)
    ahead = forecast(*params, observations, lengths, steps=2, diffuse=True)
    wide_ahead = forecast(*wide, observations, lengths, steps=2)
    for ours, wide_value in zip(ahead, wide_ahead):
        torch.testing.assert_close(ours, wide_value, rtol=1e-5, atol=1e-5)


def test_diffuse_not_identified_raises():
    params = random_system(2, 1, seed=3)
    observations = torch.randn(2, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    observations[1] = float("nan")
    with pytest.raises(ValueError, match=r"diffuse=True.*sequences \[1\]"):
        log_marginal(*params, observations, diffuse=True)
    with pytest.raises(ValueError, match="identify"):
        _on_torch_path(kalman_filter, params, observations, diffuse=True)
    # A = 0 forgets S_1 after one step: one scalar observation cannot identify a 2-d state.
    stateless = (torch.zeros(2, 2, dtype=torch.float64), *params[1:])
    with pytest.raises(ValueError, match="identify"):
        rts_smoother(*stateless, observations[:1], diffuse=True)
    # Ignored, but still checked.
    with pytest.raises(ValueError, match="initial_cov"):
        log_marginal(*params[:5], torch.eye(3, dtype=torch.float64), observations, diffuse=True)


@pytest.mark.parametrize("diffuse", [False, True])
def test_step_log_likelihood_is_prefix_increment(diffuse):
    state_dim, obs_dim, num_steps = 2, 2, 7
    params = random_system(state_dim, obs_dim, seed=41)
    gen = torch.Generator().manual_seed(41)
    observations = torch.randn(1, num_steps, obs_dim, generator=gen, dtype=torch.float64)
    observations[0, 3] = float("nan")
    observations[0, 5, 1] = float("nan")
    filtered = kalman_filter(*params, observations, diffuse=diffuse)
    # log p(x_{1:t}) from the filter run on each prefix (here both steps of x_1 identify s_1).
    prefixes = torch.stack(
        [log_marginal(*params, observations, torch.tensor([t]), diffuse=diffuse)[0] for t in range(1, num_steps + 1)]
    )
    increments = torch.diff(prefixes, prepend=prefixes.new_zeros(1))
    torch.testing.assert_close(filtered.step_log_likelihood[0], increments, rtol=1e-10, atol=1e-10)
    assert float(filtered.step_log_likelihood[0, 3]) == 0.0
    torch.testing.assert_close(filtered.step_log_likelihood.sum(-1), filtered.log_normalizer, rtol=1e-12, atol=1e-12)


def _long_batch(state_dim: int, obs_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences long enough for the steady state, with a gap and padding."""
    gen = torch.Generator().manual_seed(seed)
    observations = torch.randn(3, 200, obs_dim, generator=gen, dtype=torch.float64) * 2
    observations[0, 100:104] = float("nan")
    observations[0, 150, 0] = float("nan")
    observations[1, 5] = float("nan")
    observations[2, 150:] = 1e6  # padding
    return observations, torch.tensor([200, 181, 150])


@pytest.mark.parametrize("state_dim,obs_dim,diffuse", [(1, 1, False), (3, 2, True), (4, 4, False), (2, 1, True)])
def test_numba_matches_torch_loop(state_dim, obs_dim, diffuse):
    from inference.kalman import _common, _numba

    params = random_system(state_dim, obs_dim, seed=50 + state_dim)
    observations, lengths = _long_batch(state_dim, obs_dim, seed=state_dim)
    reference_filtered = _on_torch_path(kalman_filter, params, observations, lengths, diffuse=diffuse)
    reference_smoothed = _on_torch_path(rts_smoother, params, observations, lengths, diffuse=diffuse)
    prepared = _common._prepare(*params, observations, lengths)
    assert (_numba._numba_filter(prepared, diffuse, True, True).steady_epoch > 0).sum() > 100
    for steady_state in (True, False):
        filtered = kalman_filter(*params, observations, lengths, diffuse=diffuse, steady_state=steady_state)
        smoothed = rts_smoother(*params, observations, lengths, diffuse=diffuse, steady_state=steady_state)
        value = log_marginal(*params, observations, lengths, diffuse=diffuse, steady_state=steady_state)
        torch.testing.assert_close(value, reference_filtered.log_normalizer, rtol=1e-10, atol=1e-10)
        for ours, reference in zip(filtered, reference_filtered):
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10, equal_nan=True)
        for ours, reference in zip(smoothed, reference_smoothed):
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_diffuse_ffbs_matches_smoother():
    state_dim, obs_dim, num_samples = 2, 1, 4000
    params = random_system(state_dim, obs_dim, seed=61)
    gen = torch.Generator().manual_seed(61)
    observations = torch.randn(2, 6, obs_dim, generator=gen, dtype=torch.float64)
    observations[0, 2] = float("nan")
    lengths = torch.tensor([6, 4])
    smoothed = rts_smoother(*params, observations, lengths, diffuse=True)
    samples = sample_states(
        *params,
        observations,
        lengths,
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(1),
        diffuse=True,
    )
    assert torch.all(samples[:, 1, 4:] == 0)
    std = smoothed.smoothed_cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert torch.all((samples.mean(0) - smoothed.smoothed_mean).abs() <= 6 * std / num_samples**0.5)
    centred = samples - smoothed.smoothed_mean
    sample_cov = torch.einsum("snti,sntj->ntij", centred, centred) / num_samples
    cov = smoothed.smoothed_cov
    var_diag = cov.diagonal(dim1=-2, dim2=-1)
    cov_std = ((var_diag[..., :, None] * var_diag[..., None, :] + cov.square()) / num_samples).sqrt()
    assert torch.all((sample_cov - cov).abs() <= 6 * cov_std + 1e-12)


# --------------------------------------------------------------------------------------
# Parallel-in-time (associative scan) filter and smoother
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state_dim,obs_dim,diffuse", [(1, 1, False), (3, 2, False), (3, 2, True), (2, 1, True)])
def test_parallel_matches_sequential(state_dim, obs_dim, diffuse):
    params = random_system(state_dim, obs_dim, seed=70 + state_dim)
    observations, _ = _long_batch(state_dim, obs_dim, seed=state_dim)
    observations = observations[:, :45]
    observations[0, 20:23] = float("nan")
    lengths = torch.tensor([45, 33, 18])
    sequential = (
        kalman_filter(*params, observations, lengths, diffuse=diffuse),
        rts_smoother(*params, observations, lengths, diffuse=diffuse),
    )
    parallel = (
        kalman_filter(*params, observations, lengths, diffuse=diffuse, method="parallel"),
        rts_smoother(*params, observations, lengths, diffuse=diffuse, method="parallel"),
    )
    for ours_result, reference_result in zip(parallel, sequential):
        for ours, reference in zip(ours_result, reference_result):
            torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-8, equal_nan=True)
    torch.testing.assert_close(
        log_marginal(*params, observations, lengths, diffuse=diffuse, method="parallel"),
        sequential[0].log_normalizer,
        rtol=1e-10,
        atol=1e-10,
    )
    for ours, reference in zip(
        forecast(*params, observations, lengths, steps=2, diffuse=diffuse, method="parallel"),
        forecast(*params, observations, lengths, steps=2, diffuse=diffuse),
    ):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-8)


def test_parallel_single_step_and_float32():
    params = random_system(2, 2, seed=80)
    gen = torch.Generator().manual_seed(80)
    one_step = torch.randn(2, 1, 2, generator=gen, dtype=torch.float64)
    for ours, reference in zip(rts_smoother(*params, one_step, method="parallel"), rts_smoother(*params, one_step)):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    observations = torch.randn(2, 300, 2, generator=gen, dtype=torch.float64)
    observations[1, 100:130] = float("nan")
    reference = rts_smoother(*params, observations)
    result32 = rts_smoother(*(value.float() for value in params), observations.float(), method="parallel")
    assert result32.smoothed_cov.dtype == torch.float32
    assert torch.all(result32.smoothed_cov.diagonal(dim1=-2, dim2=-1) > 0)
    torch.testing.assert_close(result32.log_normalizer.double(), reference.log_normalizer, rtol=1e-4, atol=0)
    torch.testing.assert_close(result32.smoothed_mean.double(), reference.smoothed_mean, rtol=1e-3, atol=1e-3)


def test_gradcheck_parallel_log_marginal():
    params = random_system(2, 1, seed=8)
    gen = torch.Generator().manual_seed(8)
    observations = torch.randn(2, 5, 1, generator=gen, dtype=torch.float64)
    observations[1, 2] = float("nan")
    lengths = torch.tensor([5, 3])

    def objective(transition, transition_root, obs_matrix, initial_mean):
        transition_cov = transition_root @ transition_root.T + 0.1 * torch.eye(2, dtype=torch.float64)
        return log_marginal(
            transition,
            transition_cov,
            obs_matrix,
            params[3],
            initial_mean,
            params[5],
            observations,
            lengths,
            method="parallel",
        )

    inputs = (
        params[0].clone().requires_grad_(),
        torch.linalg.cholesky(params[1]).requires_grad_(),
        params[2].clone().requires_grad_(),
        params[4].clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(objective, inputs)
    # The same gradient as the sequential torch loop.
    with torch.enable_grad():
        parallel_grad = torch.autograd.grad(objective(*inputs).sum(), inputs)
        sequential = log_marginal(
            inputs[0],
            inputs[1] @ inputs[1].T + 0.1 * torch.eye(2, dtype=torch.float64),
            inputs[2],
            params[3],
            inputs[3],
            params[5],
            observations,
            lengths,
        )
        sequential_grad = torch.autograd.grad(sequential.sum(), inputs)
    for ours, reference in zip(parallel_grad, sequential_grad):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["auto", "parallel"])
def test_diffuse_is_translation_invariant_far_from_zero(method):
    # A near-static local level far from 0: the flat prior makes the likelihood invariant to
    # shifting the data; a naive start at 0 loses ~1e-7 relative here to cancellation.
    gen = torch.Generator().manual_seed(5)
    observations = 1e4 + torch.randn(1, 3000, 1, generator=gen, dtype=torch.float64)
    one = torch.eye(1, dtype=torch.float64)
    params = (one, 1e-8 * one, one, one, torch.zeros(1, dtype=torch.float64), one)
    far = log_marginal(*params, observations, diffuse=True, method=method)
    near = log_marginal(*params, observations - 1e4, diffuse=True, method=method)
    torch.testing.assert_close(far, near, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------
# Gradients by the smoother (Fisher's identity) against the torch loop's autograd
# --------------------------------------------------------------------------------------


def _gradient_problem(seed: int, state_dim: int = 3, obs_dim: int = 2):
    """A batch of 3 sequences with missing entries, a missing row and padding (lengths 9, 6, 4)."""
    gen = torch.Generator().manual_seed(seed)
    params = random_system(state_dim, obs_dim, seed=seed)
    observations = 3.0 * torch.randn(3, 9, obs_dim, generator=gen, dtype=torch.float64) + 5.0
    observations[0, 2, 0] = float("nan")
    observations[1, 3] = float("nan")
    observations[2, 1, -1] = float("nan")
    observations[1, 7:] = float("nan")  # padding may hold anything
    return params, observations, torch.tensor([9, 6, 4])


def _kernel_inputs(leaves, cov_form: str):
    """The kernel's arguments from unconstrained leaves: roots (full) or log-variances (diagonal)."""
    transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov, observations = leaves
    if cov_form == "diag":
        transition_cov, obs_cov, initial_cov = (
            torch.diag_embed(value.exp()) for value in (transition_cov, obs_cov, initial_cov)
        )
    else:
        transition_cov, obs_cov, initial_cov = (
            root @ root.transpose(-1, -2) for root in (transition_cov, obs_cov, initial_cov)
        )
    return transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov, observations


@pytest.mark.parametrize("diffuse", [False, True])
@pytest.mark.parametrize("cov_form", ["full", "diag"])
@pytest.mark.parametrize("per_sequence", [False, True])
def test_smoother_gradient_matches_torch_loop(diffuse, cov_form, per_sequence):
    state_dim, obs_dim = 3, 2
    params, observations, lengths = _gradient_problem(21, state_dim, obs_dim)
    if cov_form == "diag":
        covs = [value.diagonal().log() for value in (params[1], params[3], params[5])]
    else:
        covs = [torch.linalg.cholesky(value) for value in (params[1], params[3], params[5])]
    leaves = [params[0], covs[0], params[2], covs[1], params[4], covs[2], observations]
    if per_sequence:  # a parameter per sequence: the gradient is that sequence's alone
        leaves[:6] = [
            value.expand(3, *value.shape)
            * (1.0 + 0.1 * torch.arange(3.0, dtype=torch.float64)).reshape(3, *(1,) * value.dim())
            for value in leaves[:6]
        ]
    weights = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)  # a non-uniform upstream gradient
    gradients = {}
    for method in ("auto", "sequential"):  # auto: numba + smoother; sequential: the torch loop
        inputs = [value.clone().requires_grad_() for value in leaves]
        value = log_marginal(*_kernel_inputs(inputs, cov_form), lengths, diffuse=diffuse, method=method)
        grads = torch.autograd.grad((weights * value).sum(), inputs, allow_unused=True)
        gradients[method] = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)]
        gradients[method + " value"] = value.detach()
    torch.testing.assert_close(gradients["auto value"], gradients["sequential value"], rtol=1e-12, atol=1e-10)
    names = [
        "transition_matrix",
        "transition_cov",
        "observation_matrix",
        "observation_cov",
        "initial_mean",
        "initial_cov",
        "observations",
    ]
    for name, ours, reference in zip(names, gradients["auto"], gradients["sequential"]):
        reference = torch.nan_to_num(reference)
        scale = reference.abs().max()
        if diffuse and name in ("initial_mean", "initial_cov"):
            assert ours.abs().max() == 0, name  # the diffuse start has no prior parameters
            continue
        assert scale > 0, name
        assert (ours - reference).abs().max() <= 1e-8 * scale, (name, ours, reference)
    # Missing entries and padding carry no gradient.
    observed = ~torch.isnan(observations) & (torch.arange(9) < lengths[:, None])[..., None]
    assert gradients["auto"][6][~observed].abs().max() == 0
    assert gradients["auto"][6][observed].abs().min() > 0


@pytest.mark.parametrize("diffuse", [False, True])
def test_gradcheck_smoother_gradient(diffuse):
    """gradcheck of the autograd Function itself (covariances through roots stay positive definite)."""
    state_dim, obs_dim = 2, 2
    params, observations, lengths = _gradient_problem(5, state_dim, obs_dim)
    roots = [torch.linalg.cholesky(value) for value in (params[1], params[3], params[5])]
    inputs = tuple(
        value.clone().requires_grad_()
        for value in (params[0], roots[0], params[2], roots[1], params[4], roots[2], observations)
    )

    def objective(*leaves):
        return log_marginal(*_kernel_inputs(leaves, "full"), lengths, diffuse=diffuse)

    assert torch.autograd.gradcheck(objective, inputs)


def test_smoother_gradient_float32_and_steady_state():
    """float32 inputs get float32 gradients (computed in float64); with the steady-state
    filter and smoother on a long sequence the gradient still equals the torch loop's."""
    params, _, _ = _gradient_problem(3, 2, 1)
    gen = torch.Generator().manual_seed(3)
    observations = torch.randn(2, 300, 1, generator=gen, dtype=torch.float64)
    leaves = [value.clone().requires_grad_() for value in params]
    log_marginal(*leaves, observations).sum().backward()
    reference = [value.clone().requires_grad_() for value in params]
    log_marginal(*reference, observations, method="sequential").sum().backward()
    # Covariances are read through their symmetric part: compare with the loop's symmetrised gradient.
    expected_grads = [
        0.5 * (value.grad + value.grad.T) if index in (1, 3, 5) else value.grad for index, value in enumerate(reference)
    ]
    for ours, expected in zip(leaves, expected_grads):
        torch.testing.assert_close(ours.grad, expected, rtol=1e-8, atol=1e-10)
    leaves32 = [value.detach().float().requires_grad_() for value in params]
    log_marginal(*leaves32, observations.float()).sum().backward()
    for ours, expected in zip(leaves32, expected_grads):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad, expected.float(), rtol=1e-4, atol=1e-4)


def test_gradient_fit_of_nile_reaches_the_em_optimum():
    """L-BFGS on the Nile local level by the smoother's gradient, from variances 1 and 1,
    reaches the diffuse-likelihood optimum (Durbin & Koopman: 15099, 1469.1)."""
    from zoo.lgssm import LinearGaussianSSM

    volume, _ = _nile_local_level()
    values = torch.as_tensor(volume).reshape(1, -1, 1)
    model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=1.0, dtype=torch.float64)
    parameters = [value for value in model.parameters() if value.requires_grad]
    optimizer = torch.optim.LBFGS(
        parameters, lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = -model.log_prob(values).sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    with torch.no_grad():
        point = model._point()
    assert abs(float(point["observation_cov"].reshape(())) / 15099.0 - 1) < 2e-3
    assert abs(float(point["transition_cov"].reshape(())) / 1469.1 - 1) < 2e-3
    with torch.no_grad():
        assert abs(float(model.log_prob(values).sum()) - -633.4646) < 1e-3


@pytest.mark.parametrize("diffuse", [False, True])
def test_fused_gradient_batch_equals_one_by_one(diffuse):
    """The fused value-and-score kernel reuses one sequence's scratch arrays across the batch:
    a short sequence before a long one, and a length-0 one, give each sequence's own value
    and gradient (the length-0 one: value 0, gradient 0)."""
    params, observations, _ = _gradient_problem(8, 2, 2)
    observations = torch.cat([observations, observations[:1]], 0)  # 4 sequences
    lengths = torch.tensor([4, 9, 0, 6])
    per_sequence = [value.expand(4, *value.shape).clone().requires_grad_() for value in params]
    values = log_marginal(*per_sequence, observations, lengths, diffuse=diffuse)
    values.sum().backward()
    assert values[2] == 0 and all(value.grad[2].abs().max() == 0 for value in per_sequence)
    for n in (0, 1, 3):
        alone = [value[n].detach().clone().requires_grad_() for value in per_sequence]
        value = log_marginal(*alone, observations[n : n + 1], lengths[n : n + 1], diffuse=diffuse)
        value.sum().backward()
        torch.testing.assert_close(values[n].detach(), value[0].detach(), rtol=1e-12, atol=1e-12)
        for ours, reference in zip(per_sequence, alone):
            if diffuse and reference is alone[4] or diffuse and reference is alone[5]:
                continue
            torch.testing.assert_close(ours.grad[n], reference.grad, rtol=1e-10, atol=1e-12)


def test_fused_gradient_path_raises_the_filters_errors():
    """With gradients, the fused kernel names the same problems as the value path."""
    params = random_system(2, 1, seed=3)
    observations = torch.randn(2, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    observations[1] = float("nan")
    leaf = params[0].clone().requires_grad_()
    with pytest.raises(ValueError, match=r"diffuse=True.*sequences \[1\]"):
        log_marginal(leaf, *params[1:], observations, diffuse=True)
    bad_noise = -1e6 * torch.eye(1, dtype=torch.float64)  # H P H^T + R < 0 at the first step
    with pytest.raises(ValueError, match="observation_cov"):
        log_marginal(leaf, params[1], params[2], bad_noise, *params[4:], observations[:1])


def _broken_steady_state_problem():
    """Two long sequences: the first reaches the steady state, loses it over a missing
    stretch and at a partially observed step, and reaches it again; the second is padded."""
    params = random_system(3, 2, seed=31)
    gen = torch.Generator().manual_seed(31)
    observations = 2.0 * torch.randn(2, 400, 2, generator=gen, dtype=torch.float64) + 1.0
    observations[0, 150:170] = float("nan")  # a missing stretch
    observations[0, 260, 1] = float("nan")  # a partially observed step
    observations[1, 330:] = float("nan")  # padding
    return params, observations, torch.tensor([400, 330])


@pytest.mark.parametrize("steady_state", [True, False])
def test_smoother_gradient_with_a_broken_steady_state_matches_torch_loop(steady_state):
    """The compact path (one covariance per steady-state epoch, the smoother's sums counted
    over converged stretches) gives the torch loop's gradient to 1e-8 when the steady state
    is reached, broken by missing data and reached again."""
    from inference.kalman import _common, _numba

    params, observations, lengths = _broken_steady_state_problem()
    prepared = _common._prepare(*params, observations, lengths)
    epochs = _numba._numba_filter(prepared, False, True, True).steady_epoch
    assert int(epochs[0].max()) >= 3 and (epochs > 0).sum() > 500  # three epochs in sequence 0
    leaves = [
        params[0],
        *(torch.linalg.cholesky(params[index]) if index in (1, 3, 5) else params[index] for index in range(1, 6)),
        observations,
    ]
    weights = torch.tensor([0.6, -1.7], dtype=torch.float64)
    gradients = {}
    for method in ("auto", "sequential"):
        inputs = [value.clone().requires_grad_() for value in leaves]
        value = log_marginal(*_kernel_inputs(inputs, "full"), lengths, method=method, steady_state=steady_state)
        grads = torch.autograd.grad((weights * value).sum(), inputs)
        gradients[method] = [torch.nan_to_num(grad) for grad in grads]
        gradients[method + " value"] = value.detach()
    torch.testing.assert_close(gradients["auto value"], gradients["sequential value"], rtol=1e-12, atol=1e-10)
    for index, (ours, reference) in enumerate(zip(gradients["auto"], gradients["sequential"])):
        scale = reference.abs().max()
        assert scale > 0, index
        assert (ours - reference).abs().max() <= 1e-8 * scale, index


def test_compact_smoother_sums_equal_the_stored_smoother():
    """The smoother that writes no T d^2 array (compact filter covariances, sums counted over
    converged stretches) gives the sums of the per-step smoother's covariances."""
    from inference.kalman import _common, _numba

    params, observations, lengths = _broken_steady_state_problem()
    prepared = _common._prepare(*params, observations, lengths)
    raw = _numba._numba_filter(prepared, False, True, True)
    _, smoothed_cov, lag_one_cov, _ = _numba._numba_smoother(prepared, raw)
    arrays = [_numba._as_numpy(value) for value in prepared[:7]]
    num_seq, num_steps, dim = 2, 400, 3
    lengths_np = lengths.numpy()
    filtered = {
        name: np.empty(shape)
        for name, shape in (
            ("step_ll", (num_seq, num_steps)),
            ("final_mean", (num_seq, dim)),
            ("final_cov", (num_seq, dim, dim)),
            ("final_basis", (num_seq, dim, dim)),
            ("final_info_matrix", (num_seq, dim, dim)),
            ("final_info_vector", (num_seq, dim)),
            ("predicted_mean", (num_seq, num_steps, dim)),
            ("predicted_cov", (num_seq, num_steps, dim, dim)),
            ("filtered_mean", (num_seq, num_steps, dim)),
            ("filtered_cov", (num_seq, num_steps, dim, dim)),
            ("predicted_basis", (num_seq, 0, dim, dim)),
            ("filtered_basis", (num_seq, 0, dim, dim)),
            ("info_matrix", (num_seq, 0, dim, dim)),
            ("info_vector", (num_seq, 0, dim)),
        )
    }
    filtered["predicted_cov"][:] = np.nan  # the compact filter must not need what it did not write
    filtered["filtered_cov"][:] = np.nan
    steady_epoch = np.zeros((num_seq, num_steps), np.int64)
    cov_source = np.full((num_seq, num_steps), -1, np.int64)
    slot = np.full((num_seq, num_steps), -1, np.int64)
    num_incomplete = np.zeros(1, np.int64)
    status = np.zeros(num_seq, np.int64)
    _numba._filter_kernel(
        *arrays[:6],
        arrays[6],
        lengths_np,
        False,
        _common._STEADY_TOL,
        True,
        True,
        *filtered.values(),
        steady_epoch,
        cov_source,
        slot,
        num_incomplete,
        status,
    )
    valid = np.arange(num_steps) < lengths_np[:, None]
    steady = steady_epoch > 0
    assert (cov_source[valid & steady] != np.nonzero(valid & steady)[1]).sum() > 500  # epochs are shared
    assert np.isnan(filtered["filtered_cov"][valid]).any()  # steady steps wrote no covariance
    incomplete = np.isnan(arrays[6]).any(-1) & valid  # the filter numbers these steps in order
    np.testing.assert_array_equal(slot, np.where(incomplete, np.cumsum(incomplete).reshape(num_seq, num_steps) - 1, -1))
    assert num_incomplete[0] == incomplete.sum() == 21
    incomplete_cov = np.empty((int(incomplete.sum()), dim, dim))
    smoothed_mean = np.empty((num_seq, num_steps, dim))
    sums = [np.zeros((num_seq, dim, dim)) for _ in range(4)]
    _numba._smoother_sums_kernel(
        arrays[0],
        filtered["filtered_mean"],
        filtered["filtered_cov"],
        filtered["predicted_mean"],
        filtered["predicted_cov"],
        cov_source,
        lengths_np,
        steady_epoch,
        _common._SMOOTHER_STEADY_TOL,
        slot,
        smoothed_mean,
        incomplete_cov,
        *sums,
        status,
    )
    assert not status.any()
    smoothed_cov, lag_one_cov = smoothed_cov.numpy(), lag_one_cov.numpy()
    for n, length in enumerate(lengths_np):
        expected = [
            smoothed_cov[n, :length].sum(0),
            smoothed_cov[n, 0],
            smoothed_cov[n, length - 1],
            lag_one_cov[n, 1:length].sum(0),
        ]
        for ours, reference in zip(sums, expected):
            np.testing.assert_allclose(ours[n], reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())
    np.testing.assert_allclose(incomplete_cov, smoothed_cov[incomplete], rtol=1e-12, atol=0)
