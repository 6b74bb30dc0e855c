"""Kalman filter and RTS smoother with an observation covariance that changes at every step (zoo.dtm.kalman_filter).

Self-contained: it shares no code with the other kernels of :mod:`inference.kalman`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


# --------------------------------------------------------------------------
# Time-varying observation noise (identity observation matrix): the kernel of the
# discrete Kalman filter's Gaussian (Laplace) pseudo-observations (zoo.dtm.kalman_filter), whose
# covariance R_t changes at every step. Self-contained: it shares no code with the
# kernels above.
# --------------------------------------------------------------------------
def _symmetric_part(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


class VaryingNoiseSmoothed(NamedTuple):
    """Filtered and smoothed moments of :func:`kalman_smoother_varying_noise`.

    Attributes:
        filtered_mean: ``(T, D)``; filtered_cov: ``(T, D, D)``.
        smoothed_mean: ``(T, D)``; smoothed_cov: ``(T, D, D)``.
        log_normalizer: ``()`` log-density of the observed steps' observations.
    """

    filtered_mean: Tensor
    filtered_cov: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    log_normalizer: Tensor


def kalman_smoother_varying_noise(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    observation_covs: Tensor,
    observed: Tensor | None = None,
) -> VaryingNoiseSmoothed:
    r"""Kalman filter and RTS smoother with an observation covariance that changes at every step.

    :math:`S_0 \sim N(m_0, P_0)`, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, Q)`,
    :math:`y_t = S_t + e_t`, :math:`e_t \sim N(0, R_t)` (identity observation matrix).
    Steps with ``observed[t]`` False get no update and add nothing to the log-normaliser.

    Args:
        transition_matrix: ``(D, D)`` :math:`A`.
        transition_cov: ``(D, D)`` :math:`Q`.
        initial_mean: ``(D,)`` :math:`m_0`.
        initial_cov: ``(D, D)`` :math:`P_0`.
        observations: ``(T, D)`` :math:`y`.
        observation_covs: ``(T, D, D)`` :math:`R_t` (symmetric positive definite where observed).
        observed: ``(T,)`` bool (None: every step).

    Returns:
        :class:`VaryingNoiseSmoothed`. Differentiable in every argument.

    Example:
        >>> out = kalman_smoother_varying_noise(torch.eye(2), 0.1 * torch.eye(2), torch.zeros(2), torch.eye(2),
        ...                                     torch.randn(5, 2), torch.eye(2).expand(5, 2, 2))
        >>> out.smoothed_mean.shape, out.log_normalizer.shape
        (torch.Size([5, 2]), torch.Size([]))
    """
    if observations.dim() != 2:
        raise ValueError(f"observations: expected (T, D), got {tuple(observations.shape)}")
    T, D = observations.shape
    for name, value, shape in (
        ("transition_matrix", transition_matrix, (D, D)),
        ("transition_cov", transition_cov, (D, D)),
        ("initial_mean", initial_mean, (D,)),
        ("initial_cov", initial_cov, (D, D)),
        ("observation_covs", observation_covs, (T, D, D)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
    if observed is None:
        observed = torch.ones(T, dtype=torch.bool)
    elif tuple(observed.shape) != (T,):
        raise ValueError(f"observed: expected shape ({T},), got {tuple(observed.shape)}")
    A, Q = transition_matrix, transition_cov
    eye = torch.eye(D, dtype=observations.dtype, device=observations.device)
    means, covs, pred_means, pred_covs = [], [], [], []
    log_normalizer = observations.new_zeros(())
    mean, cov = initial_mean, initial_cov
    for t in range(T):
        if t > 0:
            mean, cov = A @ mean, A @ cov @ A.T + Q
        pred_means.append(mean)
        pred_covs.append(cov)
        if bool(observed[t]):
            chol = torch.linalg.cholesky(_symmetric_part(cov + observation_covs[t]))
            residual = observations[t] - mean
            whitened = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
            log_normalizer = (
                log_normalizer - 0.5 * (whitened.pow(2).sum() + D * math.log(2 * math.pi)) - chol.diagonal().log().sum()
            )
            gain = torch.cholesky_solve(cov, chol).T  # cov (cov + R_t)^{-1}
            mean = mean + gain @ residual
            cov = _symmetric_part((eye - gain) @ cov)
        means.append(mean)
        covs.append(cov)
    smoothed_means, smoothed_covs = [means[-1]], [covs[-1]]
    for t in range(T - 2, -1, -1):
        # G_t = P_t A^T (P_{t+1|t})^{-1}, by a solve with the symmetric predicted covariance
        smoother_gain = torch.linalg.solve(pred_covs[t + 1], A @ covs[t]).T
        smoothed_means.insert(0, means[t] + smoother_gain @ (smoothed_means[0] - pred_means[t + 1]))
        smoothed_covs.insert(
            0, _symmetric_part(covs[t] + smoother_gain @ (smoothed_covs[0] - pred_covs[t + 1]) @ smoother_gain.T)
        )
    return VaryingNoiseSmoothed(
        torch.stack(means), torch.stack(covs), torch.stack(smoothed_means), torch.stack(smoothed_covs), log_normalizer
    )
