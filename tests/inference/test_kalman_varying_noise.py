"""The Kalman filter/smoother with a time-varying observation covariance (identity observation matrix)."""

import pytest
import torch

from inference.kalman import kalman_filter, kalman_smoother_varying_noise, rts_smoother


def random_spd(d, generator, scale=1.0):
    m = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return scale * (m @ m.T / d + 0.5 * torch.eye(d, dtype=torch.float64))


def system(d=2, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.9 * torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    Q, P0 = random_spd(d, g, 0.3), random_spd(d, g)
    m0 = torch.randn(d, generator=g, dtype=torch.float64)
    y = torch.randn(T, d, generator=g, dtype=torch.float64)
    R = torch.stack([random_spd(d, g, 0.5) for _ in range(T)])
    return A, Q, m0, P0, y, R


def test_constant_noise_equals_the_lgssm_filter_and_smoother():
    A, Q, m0, P0, y, R = system()
    R = R[:1].expand_as(R)
    out = kalman_smoother_varying_noise(A, Q, m0, P0, y, R)
    eye = torch.eye(2, dtype=torch.float64)
    filtered = kalman_filter(A, Q, eye, R[0], m0, P0, y[None])
    smoothed = rts_smoother(A, Q, eye, R[0], m0, P0, y[None])
    assert torch.allclose(out.filtered_mean, filtered.filtered_mean[0], atol=1e-10)
    assert torch.allclose(out.filtered_cov, filtered.filtered_cov[0], atol=1e-10)
    assert torch.allclose(out.smoothed_mean, smoothed.smoothed_mean[0], atol=1e-10)
    assert torch.allclose(out.smoothed_cov, smoothed.smoothed_cov[0], atol=1e-10)
    assert torch.allclose(out.log_normalizer, filtered.log_normalizer[0], atol=1e-10)


def dense_joint(A, Q, m0, P0, R, observed):
    """Mean and covariance of (S_0..S_{T-1}, y at the observed steps) as one dense Gaussian."""
    T, d = R.shape[0], A.shape[0]
    # S = M (m0-part) + L eps: S_t = A^t S_0 + sum_{j<=t} A^{t-j} w_j
    state_cov = torch.zeros(T * d, T * d, dtype=torch.float64)
    powers = [torch.matrix_power(A, k) for k in range(T)]
    state_mean = torch.cat([powers[t] @ m0 for t in range(T)])
    for s in range(T):
        for t in range(T):
            total = powers[s] @ P0 @ powers[t].T
            for j in range(1, min(s, t) + 1):
                total = total + powers[s - j] @ Q @ powers[t - j].T
            state_cov[s * d : (s + 1) * d, t * d : (t + 1) * d] = total
    picks = torch.cat([torch.arange(t * d, (t + 1) * d) for t in range(T) if observed[t]])
    noise = torch.block_diag(*[R[t] for t in range(T) if observed[t]])
    obs_cov = state_cov[picks][:, picks] + noise
    cross = state_cov[:, picks]
    return state_mean, state_cov, state_mean[picks], obs_cov, cross


@pytest.mark.parametrize("observed", [[True] * 5, [True, False, True, False, True]])
def test_varying_noise_equals_a_dense_gaussian(observed):
    A, Q, m0, P0, y, R = system(seed=1)
    observed_t = torch.tensor(observed)
    out = kalman_smoother_varying_noise(A, Q, m0, P0, y, R, observed_t)
    state_mean, state_cov, obs_mean, obs_cov, cross = dense_joint(A, Q, m0, P0, R, observed)
    y_obs = y[observed_t].reshape(-1)
    evidence = torch.distributions.MultivariateNormal(obs_mean, obs_cov).log_prob(y_obs)
    assert torch.allclose(out.log_normalizer, evidence, atol=1e-10)
    gain = cross @ torch.linalg.inv(obs_cov)
    posterior_mean = (state_mean + gain @ (y_obs - obs_mean)).reshape(5, 2)
    posterior_cov = state_cov - gain @ cross.T
    assert torch.allclose(out.smoothed_mean, posterior_mean, atol=1e-9)
    blocks = torch.stack([posterior_cov[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] for t in range(5)])
    assert torch.allclose(out.smoothed_cov, blocks, atol=1e-9)
    # the filtered moments at the last step are the smoothed ones; and at step 2, the posterior given y_{0..2}
    assert torch.allclose(out.filtered_mean[-1], out.smoothed_mean[-1])
    prefix = kalman_smoother_varying_noise(A, Q, m0, P0, y[:3], R[:3], observed_t[:3])
    assert torch.allclose(out.filtered_mean[2], prefix.smoothed_mean[2], atol=1e-12)


def test_shapes_are_checked():
    A, Q, m0, P0, y, R = system()
    with pytest.raises(ValueError, match="observation_covs"):
        kalman_smoother_varying_noise(A, Q, m0, P0, y, R[:3])
    with pytest.raises(ValueError, match="observed"):
        kalman_smoother_varying_noise(A, Q, m0, P0, y, R, torch.ones(3, dtype=torch.bool))
