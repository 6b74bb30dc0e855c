"""Distributions of the linear-Gaussian state-space family.

* :class:`GaussianChain` — the Gauss–Markov prior of whole state paths (the
  ``latent="sampled"`` form's ``"states"`` site);
* :class:`SmoothingPosterior` — the exact smoothing posterior of the states given a
  filter's output (the guide of the states), reparametrised by backward sampling;
* :func:`observation_log_density` — :math:`\\sum_t \\log N(x_t; B s_t, \\Sigma)` over the
  observed entries;
* the covariance sites' :data:`positive_definite_matrix` and :class:`InverseWishart`
  (defined in :mod:`zoo.params`, shared with the HMM family).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor

from inference import kalman
from inference.validation import valid_mask
from zoo.params import InverseWishart, VectorToPositiveDefinite, positive_definite_matrix, symmetrise

__all__ = [
    "GaussianChain",
    "InverseWishart",
    "SmoothingPosterior",
    "VectorToPositiveDefinite",
    "observation_log_density",
    "positive_definite_matrix",
]

_LOG_2PI = math.log(2 * math.pi)
#: Former private names, kept importable from :mod:`zoo.lgssm`.
_InverseWishart = InverseWishart
_VectorToPositiveDefinite = VectorToPositiveDefinite


class GaussianChain(TorchDistribution):
    """Prior of whole state paths ``(N, T, d)``: :math:`S_1 \\sim N(\\mu_0, \\Sigma_0)`,
    :math:`S_t \\sim N(A S_{t-1}, \\Gamma)`; steps at or after a sequence's length are
    ignored by ``log_prob`` (vectorised over time) and zero in draws."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, initial_mean, initial_cov, transition_matrix, transition_cov, lengths, num_steps) -> None:
        self.initial_mean, self.transition_matrix = initial_mean, transition_matrix
        self.initial_tril = torch.linalg.cholesky(initial_cov)
        self.transition_tril = torch.linalg.cholesky(transition_cov)
        self.lengths = lengths
        dim = initial_mean.shape[-1]
        super().__init__(lengths.shape, torch.Size((num_steps, dim)))

    def log_prob(self, states: Tensor) -> Tensor:
        valid = valid_mask(self.lengths, self.event_shape[0]).to(states.dtype)  # (N, T)
        first = dist.MultivariateNormal(self.initial_mean, scale_tril=self.initial_tril).log_prob(states[..., 0, :])
        predicted = states[..., :-1, :] @ self.transition_matrix.T
        steps = dist.MultivariateNormal(torch.zeros_like(self.initial_mean), scale_tril=self.transition_tril)
        rest = steps.log_prob(states[..., 1:, :] - predicted) * valid[:, 1:]
        return first * valid[:, 0] + rest.sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            noise = torch.randn(shape, dtype=self.initial_mean.dtype, device=self.initial_mean.device)
            state = self.initial_mean + (self.initial_tril @ noise[..., 0, :, None])[..., 0]
            states = [state]
            for t in range(1, shape[-2]):
                state = state @ self.transition_matrix.T + (self.transition_tril @ noise[..., t, :, None])[..., 0]
                states.append(state)
            paths = torch.stack(states, -2)
            return paths * valid_mask(self.lengths, shape[-2])[..., None].to(paths.dtype)


class SmoothingPosterior(TorchDistribution):
    """The exact posterior :math:`p(s_{1:L} \\mid x_{1:L})` of a linear-Gaussian model, from
    its filter: :math:`S_L \\sim N(m_L, P_L)` and :math:`S_t \\mid S_{t+1} \\sim N(m_t + J_t
    (S_{t+1} - m_{t+1|t}), P_t - J_t P_{t+1|t} J_t^\\top)`. Draws are reparametrised
    (backward sampling); ``log_prob`` sums the same backward conditionals, vectorised over time."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, filtered: kalman.KalmanFiltered, transition_matrix: Tensor, lengths: Tensor) -> None:
        mean, cov = filtered.filtered_mean, filtered.filtered_cov  # (N, T, d), (N, T, d, d)
        num_seq, num_steps, dim = mean.shape
        eye = torch.eye(dim, dtype=mean.dtype, device=mean.device)
        valid = valid_mask(lengths, num_steps)
        has_next = torch.zeros_like(valid)
        has_next[:, :-1] = valid[:, 1:]  # step t has a real successor
        predicted_next = torch.zeros_like(filtered.predicted_cov)
        predicted_next[:, :-1] = filtered.predicted_cov[:, 1:]
        predicted_next = torch.where(has_next[..., None, None], predicted_next, eye)
        predicted_mean_next = torch.zeros_like(mean)
        predicted_mean_next[:, :-1] = filtered.predicted_mean[:, 1:]
        # J_t = P_t A^T P_{t+1|t}^{-1}
        gain = torch.cholesky_solve(transition_matrix @ cov, torch.linalg.cholesky(predicted_next)).transpose(-1, -2)
        gain = torch.where(has_next[..., None, None], gain, torch.zeros_like(gain))
        cond_cov = torch.where(has_next[..., None, None], cov - gain @ predicted_next @ gain.transpose(-1, -2), cov)
        cond_cov = torch.where(valid[..., None, None], symmetrise(cond_cov), eye)
        self.filtered_mean, self.gain, self.predicted_mean_next = mean, gain, predicted_mean_next
        self.cond_tril = torch.linalg.cholesky(cond_cov)
        self.valid, self.has_next = valid, has_next
        super().__init__(torch.Size((num_seq,)), torch.Size((num_steps, dim)))

    def _cond_mean(self, next_states: Tensor) -> Tensor:
        return self.filtered_mean + (self.gain @ (next_states - self.predicted_mean_next)[..., None])[..., 0]

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        dtype, device = self.filtered_mean.dtype, self.filtered_mean.device
        noise = torch.randn(shape, dtype=dtype, device=device)
        num_steps = shape[-2]
        state = torch.zeros(shape[:-2] + shape[-1:], dtype=dtype, device=device)
        states = []
        for t in range(num_steps - 1, -1, -1):
            cond_mean = (
                self.filtered_mean[:, t]
                + (self.gain[:, t] @ (state - self.predicted_mean_next[:, t])[..., None])[..., 0]
            )
            state = cond_mean + (self.cond_tril[:, t] @ noise[..., t, :, None])[..., 0]
            state = state * self.valid[:, t, None].to(state.dtype)
            states.append(state)
        return torch.stack(states[::-1], -2)

    def log_prob(self, states: Tensor) -> Tensor:
        next_states = torch.cat([states[..., 1:, :], torch.zeros_like(states[..., :1, :])], -2)
        residual = states - self._cond_mean(next_states)
        whitened = torch.linalg.solve_triangular(self.cond_tril, residual[..., None], upper=False)[..., 0]
        log_det = self.cond_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        dim = states.shape[-1]
        log_density = -0.5 * whitened.square().sum(-1) - log_det - 0.5 * dim * _LOG_2PI
        return (log_density * self.valid.to(states.dtype)).sum(-1)


def observation_log_density(
    values: Tensor, lengths: Tensor, states: Tensor, observation_matrix: Tensor, observation_cov: Tensor
) -> Tensor:
    """``(..., N)`` :math:`\\sum_t \\log N(x_t; B s_t, \\Sigma)` over the observed entries of real steps."""
    num_steps, obs_dim = values.shape[-2:]
    observed = ~values.isnan() & valid_mask(lengths, num_steps)[..., None]
    mask = observed.to(values.dtype)
    filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
    residual = (filled - states @ observation_matrix.T) * mask
    # Missing entries get unit variance, uncorrelated with the rest, and a zero residual:
    # each adds exactly log N(0; 0, 1), taken back below.
    cov = observation_cov * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1 - mask)
    tril = torch.linalg.cholesky(cov)
    whitened = torch.linalg.solve_triangular(tril, residual[..., None], upper=False)[..., 0]
    log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    per_step = -0.5 * (whitened.square().sum(-1) + log_det + mask.sum(-1) * _LOG_2PI)
    return per_step.sum(-1)
