r"""Exact inference kernels for linear-Gaussian state-space models (Kalman filtering).

The model, with state dimension ``d`` and observation dimension ``p`` (matrices act on
column vectors):

.. math::

    S_1 \sim \mathcal N(\mu_0, \Sigma_0), \qquad
    S_t = A S_{t-1} + w_t,\ w_t \sim \mathcal N(0, Q), \qquad
    X_t = H S_t + v_t,\ v_t \sim \mathcal N(0, R).

Every function takes the same arguments:

* ``transition_matrix``  :math:`A`        ``(d, d)`` or ``(N, d, d)``;
* ``transition_cov``     :math:`Q`        ``(d, d)`` or ``(N, d, d)``, positive definite;
* ``observation_matrix`` :math:`H`        ``(p, d)`` or ``(N, p, d)``;
* ``observation_cov``    :math:`R`        ``(p, p)`` or ``(N, p, p)``, positive definite;
* ``initial_mean``       :math:`\mu_0`    ``(d,)`` or ``(N, d)``;
* ``initial_cov``        :math:`\Sigma_0` ``(d, d)`` or ``(N, d, d)``, positive definite;
* ``observations``       ``(N, T, p)``; ``NaN`` marks a missing entry (a single entry or
  a whole row);
* ``lengths``            ``(N,)`` integer or ``None`` (every sequence has ``T`` steps);
  steps at or after a sequence's length are padding and are ignored.

Parameters without the leading ``N`` are shared by the batch. Outputs have the dtype and
device of ``observations`` (float32 or float64); the other tensors must match them.
Outputs at padded steps are zero. A length-0 sequence has log normaliser 0.

Algorithms
----------
*Filter.* A torch loop over time, batched over sequences. Prediction
:math:`m_{t|t-1} = A m_{t-1}`, :math:`P_{t|t-1} = A P_{t-1} A^\top + Q`; update with the
innovation :math:`e_t = x_t - H m_{t|t-1}`, its covariance
:math:`S_t = H P_{t|t-1} H^\top + R` (Cholesky factorised), the gain
:math:`K_t = P_{t|t-1} H^\top S_t^{-1}` (by ``cholesky_solve``) and the Joseph form
:math:`P_t = (I - K_t H) P_{t|t-1} (I - K_t H)^\top + K_t R K_t^\top`, which stays
symmetric positive semi-definite under rounding; every covariance is symmetrised. The log
normaliser is :math:`\sum_t \log \mathcal N(e_t; 0, S_t)`.

*Missing entries*, exactly and per sequence: at a step where entry ``j`` is missing, row
``j`` of :math:`H` is zeroed, row and column ``j`` of :math:`R` become those of the
identity and :math:`x_{t,j} = 0`. Then :math:`S_t` is block diagonal with a unit block for
the missing entries, :math:`e_{t,j} = 0` and column ``j`` of the gain is zero, so the
update equals that of the marginal model over the observed entries, and the log density
differs from it only by :math:`-\tfrac12 \log 2\pi` per missing entry, which is added back.

*Padding.* At padded steps every entry is missing and the transition is replaced by the
identity with zero noise, so the filtered moments are carried unchanged to step ``T``
(the forecast starts there) and the smoother and sampler need no special start: the
smoothed and sampled states of the valid steps are exactly those of the unpadded sequence.

*Smoother* (Rauch–Tung–Striebel): :math:`J_t = P_t A^\top P_{t+1|t}^{-1}`,
:math:`m^s_t = m_t + J_t (m^s_{t+1} - m_{t+1|t})`,
:math:`P^s_t = P_t + J_t (P^s_{t+1} - P_{t+1|t}) J_t^\top` and the lag-one covariance
:math:`\operatorname{Cov}(S_{t+1}, S_t \mid x) = P^s_{t+1} J_t^\top` (the cross moments of
the E-step of EM).

*Forward-filter backward-sample*: :math:`S_L \sim \mathcal N(m_L, P_L)`, then
:math:`S_t \mid S_{t+1} \sim \mathcal N(m_t + J_t (S_{t+1} - m_{t+1|t}),
P_t - J_t P_{t+1|t} J_t^\top)`.

:func:`log_marginal` is differentiable by autograd through the filter (exact gradients).
Memory is ``O(N T d^2)`` for the stored moments.

Example:
    >>> d, p = 2, 1
    >>> eye = torch.eye(d)
    >>> x = torch.randn(3, 5, p)
    >>> log_marginal(0.9 * eye, 0.1 * eye, torch.ones(p, d), torch.eye(p),
    ...              torch.zeros(d), eye, x).shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "KalmanFiltered",
    "KalmanForecast",
    "KalmanSmoothed",
    "forecast",
    "kalman_filter",
    "log_marginal",
    "rts_smoother",
    "sample_states",
]

_LOG_2PI = math.log(2.0 * math.pi)


class KalmanFiltered(NamedTuple):
    """Result of :func:`kalman_filter`. Zero at padded steps.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood :math:`\\log p(x_{1:L})`.
        filtered_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:t}]`.
        filtered_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:t})`.
        predicted_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:t-1}]`.
        predicted_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:t-1})`.
    """

    log_normalizer: Tensor
    filtered_mean: Tensor
    filtered_cov: Tensor
    predicted_mean: Tensor
    predicted_cov: Tensor


class KalmanSmoothed(NamedTuple):
    """Result of :func:`rts_smoother`. Zero at padded steps.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood.
        smoothed_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:L}]`.
        smoothed_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:L})`.
        lag_one_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t, S_{t-1} \\mid x_{1:L})`
            (rows index :math:`S_t`); zero at ``t = 0``.
    """

    log_normalizer: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    lag_one_cov: Tensor


class KalmanForecast(NamedTuple):
    """Result of :func:`forecast`: predictive moments after the end of each sequence.

    Attributes:
        state_mean: ``(N, steps, d)`` :math:`E[S_{L+k} \\mid x_{1:L}]`, ``k = 1..steps``.
        state_cov: ``(N, steps, d, d)``.
        observation_mean: ``(N, steps, p)`` :math:`E[X_{L+k} \\mid x_{1:L}]`.
        observation_cov: ``(N, steps, p, p)``.
    """

    state_mean: Tensor
    state_cov: Tensor
    observation_mean: Tensor
    observation_cov: Tensor


class _Params(NamedTuple):
    transition_matrix: Tensor  # (N, d, d)
    transition_cov: Tensor  # (N, d, d)
    observation_matrix: Tensor  # (N, p, d)
    observation_cov: Tensor  # (N, p, p)
    initial_mean: Tensor  # (N, d)
    initial_cov: Tensor  # (N, d, d)
    observations: Tensor  # (N, T, p), NaN at missing entries
    lengths: Tensor  # (N,) int64


class _FilterState(NamedTuple):
    """Unmasked filter output: padded steps carry the last valid filtered moments."""

    log_normalizer: Tensor
    filtered_mean: Tensor
    filtered_cov: Tensor
    predicted_mean: Tensor
    predicted_cov: Tensor
    valid: Tensor  # (N, T) bool


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {value.dtype}")
    return value


def _prepare(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None,
) -> _Params:
    """Validate shapes, dtypes and devices; expand the parameters to a leading ``N``."""
    observations = _check_tensor("observations", observations)
    if observations.dim() != 3 or observations.shape[1] < 1 or observations.shape[2] < 1:
        raise ValueError(
            f"observations: expected shape (N, T, p) with T >= 1 and p >= 1, got {tuple(observations.shape)}"
        )
    num_seq, num_steps, obs_dim = observations.shape
    dtype, device = observations.dtype, observations.device
    transition_matrix = _check_tensor("transition_matrix", transition_matrix)
    if transition_matrix.dim() not in (2, 3) or transition_matrix.shape[-1] < 1:
        raise ValueError(
            f"transition_matrix: expected shape (d, d) or (N, d, d), got {tuple(transition_matrix.shape)}"
        )
    state_dim = transition_matrix.shape[-1]
    expected = {
        "transition_matrix": (state_dim, state_dim),
        "transition_cov": (state_dim, state_dim),
        "observation_matrix": (obs_dim, state_dim),
        "observation_cov": (obs_dim, obs_dim),
        "initial_mean": (state_dim,),
        "initial_cov": (state_dim, state_dim),
    }
    values = {
        "transition_matrix": transition_matrix,
        "transition_cov": transition_cov,
        "observation_matrix": observation_matrix,
        "observation_cov": observation_cov,
        "initial_mean": initial_mean,
        "initial_cov": initial_cov,
    }
    expanded = {}
    for name, shape in expected.items():
        value = _check_tensor(name, values[name])
        if value.shape not in (shape, (num_seq, *shape)):
            raise ValueError(
                f"{name}: expected shape {shape} or {(num_seq, *shape)} (d={state_dim} from transition_matrix, "
                f"N={num_seq} and p={obs_dim} from observations), got {tuple(value.shape)}"
            )
        if value.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype} (that of observations), got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name}: expected device {device} (that of observations), got {value.device}")
        expanded[name] = value.expand(num_seq, *shape)

    if lengths is None:
        lengths = torch.full((num_seq,), num_steps, dtype=torch.long, device=device)
    else:
        if not isinstance(lengths, Tensor):
            raise TypeError(f"lengths: expected a torch.Tensor or None, got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise ValueError(f"lengths: expected an integer dtype (int64), got {lengths.dtype}")
        if lengths.shape != (num_seq,):
            raise ValueError(f"lengths: expected shape ({num_seq},), got {tuple(lengths.shape)}")
        lengths = lengths.to(device=device, dtype=torch.long)
        if num_seq and (int(lengths.min()) < 0 or int(lengths.max()) > num_steps):
            raise ValueError(
                f"lengths: expected values in [0, {num_steps}], got min {int(lengths.min())}, "
                f"max {int(lengths.max())}"
            )
    return _Params(**expanded, observations=observations, lengths=lengths)


def _symmetrise(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _filter(params: _Params) -> _FilterState:
    """Run the Kalman filter over all ``T`` steps (padded steps: identity transition, nothing observed)."""
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype, device = observations.dtype, observations.device
    valid = torch.arange(num_steps, device=device) < params.lengths[:, None]  # (N, T)
    observed = ~torch.isnan(observations) & valid[..., None]  # (N, T, p)
    values = torch.where(observed, observations, torch.zeros((), dtype=dtype, device=device))
    state_eye = torch.eye(state_dim, dtype=dtype, device=device)
    obs_eye = torch.eye(obs_dim, dtype=dtype, device=device)

    log_normalizer = torch.zeros(num_seq, dtype=dtype, device=device)
    filtered_means, filtered_covs, predicted_means, predicted_covs = [], [], [], []
    mean, cov = params.initial_mean, params.initial_cov
    for t in range(num_steps):
        if t > 0:
            step_valid = valid[:, t, None, None]
            transition = torch.where(step_valid, params.transition_matrix, state_eye)
            noise = torch.where(step_valid, params.transition_cov, torch.zeros_like(state_eye))
            mean = (transition @ mean[..., None])[..., 0]
            cov = _symmetrise(transition @ cov @ transition.transpose(-1, -2) + noise)
        predicted_means.append(mean)
        predicted_covs.append(cov)

        mask = observed[:, t].to(dtype)  # (N, p)
        obs_matrix = params.observation_matrix * mask[..., None]
        # Missing entries get unit variance, uncorrelated with the rest (see module docstring).
        obs_cov = params.observation_cov * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1.0 - mask)
        innovation = values[:, t] - (obs_matrix @ mean[..., None])[..., 0]  # (N, p)
        cov_obs_t = cov @ obs_matrix.transpose(-1, -2)  # (N, d, p)
        innovation_cov = _symmetrise(obs_matrix @ cov_obs_t + obs_cov)
        innovation_chol = torch.linalg.cholesky(innovation_cov)
        gain = torch.cholesky_solve(cov_obs_t.transpose(-1, -2), innovation_chol).transpose(-1, -2)  # (N, d, p)
        mean = mean + (gain @ innovation[..., None])[..., 0]
        residual_op = state_eye - gain @ obs_matrix
        cov = _symmetrise(
            residual_op @ cov @ residual_op.transpose(-1, -2) + gain @ obs_cov @ gain.transpose(-1, -2)
        )
        filtered_means.append(mean)
        filtered_covs.append(cov)

        whitened = torch.linalg.solve_triangular(innovation_chol, innovation[..., None], upper=False)[..., 0]
        log_det = 2.0 * innovation_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        num_observed = mask.sum(-1)
        log_normalizer = log_normalizer - 0.5 * (whitened.square().sum(-1) + log_det + num_observed * _LOG_2PI)

    return _FilterState(
        log_normalizer=log_normalizer,
        filtered_mean=torch.stack(filtered_means, 1),
        filtered_cov=torch.stack(filtered_covs, 1),
        predicted_mean=torch.stack(predicted_means, 1),
        predicted_cov=torch.stack(predicted_covs, 1),
        valid=valid,
    )


def _mask_steps(values: Tensor, valid: Tensor) -> Tensor:
    """Zero ``values`` ``(N, T, ...)`` at padded steps."""
    shape = valid.shape + (1,) * (values.dim() - 2)
    return torch.where(valid.reshape(shape), values, torch.zeros((), dtype=values.dtype, device=values.device))


def _smoother_gains(params: _Params, state: _FilterState) -> Tensor:
    """``(N, T-1, d, d)`` gains :math:`J_t = P_t A_{t+1}^\\top P_{t+1|t}^{-1}`, ``t = 0..T-2``."""
    num_steps = state.valid.shape[1]
    state_dim = params.transition_matrix.shape[-1]
    state_eye = torch.eye(state_dim, dtype=state.filtered_cov.dtype, device=state.filtered_cov.device)
    transition = torch.where(
        state.valid[:, 1:, None, None], params.transition_matrix[:, None], state_eye
    )  # (N, T-1, d, d)
    filtered_cov = state.filtered_cov[:, : num_steps - 1]
    predicted_chol = torch.linalg.cholesky(state.predicted_cov[:, 1:])
    # J^T = P_{t+1|t}^{-1} A P_t  (both covariances symmetric).
    return torch.cholesky_solve(transition @ filtered_cov, predicted_chol).transpose(-1, -2)


def kalman_filter(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
) -> KalmanFiltered:
    """Kalman filter: log marginal likelihood and filtered and one-step predicted moments.

    Args: see the module docstring (shapes and the missing-value convention).

    Returns:
        :class:`KalmanFiltered`; moments are zero at padded steps.
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    state = _filter(params)
    return KalmanFiltered(
        log_normalizer=state.log_normalizer,
        filtered_mean=_mask_steps(state.filtered_mean, state.valid),
        filtered_cov=_mask_steps(state.filtered_cov, state.valid),
        predicted_mean=_mask_steps(state.predicted_mean, state.valid),
        predicted_cov=_mask_steps(state.predicted_cov, state.valid),
    )


def log_marginal(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
) -> Tensor:
    """Log marginal likelihood :math:`\\log p(x_{1:L})` over the observed entries.

    Differentiable by autograd through the filter with respect to every parameter.

    Args: see the module docstring.

    Returns:
        ``(N,)`` log normaliser of each sequence (0 for a length-0 sequence).
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    return _filter(params).log_normalizer


def rts_smoother(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
) -> KalmanSmoothed:
    """Rauch–Tung–Striebel smoother: posterior marginals and lag-one covariances.

    Args: see the module docstring.

    Returns:
        :class:`KalmanSmoothed`; zero at padded steps.
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    state = _filter(params)
    num_steps = state.valid.shape[1]
    smoothed_means = [state.filtered_mean[:, -1]]
    smoothed_covs = [state.filtered_cov[:, -1]]
    lag_one_covs = []
    if num_steps > 1:
        gains = _smoother_gains(params, state)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            next_mean, next_cov = smoothed_means[-1], smoothed_covs[-1]
            mean = state.filtered_mean[:, t] + (
                gain @ (next_mean - state.predicted_mean[:, t + 1])[..., None]
            )[..., 0]
            cov = _symmetrise(
                state.filtered_cov[:, t]
                + gain @ (next_cov - state.predicted_cov[:, t + 1]) @ gain.transpose(-1, -2)
            )
            lag_one_covs.append(next_cov @ gain.transpose(-1, -2))
            smoothed_means.append(mean)
            smoothed_covs.append(cov)
    lag_one_covs.append(torch.zeros_like(smoothed_covs[0]))
    return KalmanSmoothed(
        log_normalizer=state.log_normalizer,
        smoothed_mean=_mask_steps(torch.stack(smoothed_means[::-1], 1), state.valid),
        smoothed_cov=_mask_steps(torch.stack(smoothed_covs[::-1], 1), state.valid),
        lag_one_cov=_mask_steps(torch.stack(lag_one_covs[::-1], 1), state.valid),
    )


def sample_states(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw state paths from :math:`p(s_{1:L} \\mid x_{1:L})` by forward-filter backward-sample.

    Args:
        (model arguments): see the module docstring.
        num_samples: number of independent paths per sequence (>= 1).
        generator: optional random generator (on the device of ``observations``).

    Returns:
        ``(num_samples, N, T, d)`` sampled states; zero at padded steps.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    state = _filter(params)
    num_seq, num_steps, state_dim = state.filtered_mean.shape
    dtype, device = state.filtered_mean.dtype, state.filtered_mean.device
    noise = torch.randn(num_samples, num_seq, num_steps, state_dim, generator=generator, dtype=dtype, device=device)

    def draw(mean: Tensor, cov: Tensor, standard: Tensor) -> Tensor:
        return mean + (torch.linalg.cholesky(_symmetrise(cov)) @ standard[..., None])[..., 0]

    sample = draw(state.filtered_mean[:, -1], state.filtered_cov[:, -1], noise[:, :, -1])  # (S, N, d)
    samples = [sample]
    if num_steps > 1:
        gains = _smoother_gains(params, state)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            cond_mean = state.filtered_mean[:, t] + (
                gain @ (sample - state.predicted_mean[:, t + 1])[..., None]
            )[..., 0]
            cond_cov = state.filtered_cov[:, t] - gain @ state.predicted_cov[:, t + 1] @ gain.transpose(-1, -2)
            # Where step t+1 is padding, S_t is the last valid state (or carries it): draw it from
            # its filtered law, as the conditional covariance there is exactly zero.
            next_valid = state.valid[:, t + 1]
            cond_mean = torch.where(next_valid[:, None], cond_mean, state.filtered_mean[:, t])
            cond_cov = torch.where(next_valid[:, None, None], cond_cov, state.filtered_cov[:, t])
            sample = draw(cond_mean, cond_cov, noise[:, :, t])
            samples.append(sample)
    paths = torch.stack(samples[::-1], 2)  # (S, N, T, d)
    return torch.where(state.valid[None, :, :, None], paths, torch.zeros((), dtype=dtype, device=device))


def forecast(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    steps: int = 1,
) -> KalmanForecast:
    """Predictive moments of the ``steps`` states and observations after each sequence's end.

    Each sequence is forecast from its own length ``L``: step ``k`` is time ``L + k``. A
    length-0 sequence is forecast from the prior, so its first step is :math:`S_1`.

    Args:
        (model arguments): see the module docstring.
        steps: forecast horizon (>= 1).

    Returns:
        :class:`KalmanForecast`.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    state = _filter(params)
    # Padded steps carry the filtered moments of the last valid step to step T.
    mean, cov = state.filtered_mean[:, -1], state.filtered_cov[:, -1]
    empty = params.lengths == 0
    transition, noise = params.transition_matrix, params.transition_cov
    obs_matrix, obs_cov = params.observation_matrix, params.observation_cov
    state_means, state_covs, obs_means, obs_covs = [], [], [], []
    for k in range(steps):
        mean = (transition @ mean[..., None])[..., 0]
        cov = _symmetrise(transition @ cov @ transition.transpose(-1, -2) + noise)
        if k == 0:
            mean = torch.where(empty[:, None], params.initial_mean, mean)
            cov = torch.where(empty[:, None, None], params.initial_cov, cov)
        state_means.append(mean)
        state_covs.append(cov)
        obs_means.append((obs_matrix @ mean[..., None])[..., 0])
        obs_covs.append(_symmetrise(obs_matrix @ cov @ obs_matrix.transpose(-1, -2) + obs_cov))
    return KalmanForecast(
        state_mean=torch.stack(state_means, 1),
        state_cov=torch.stack(state_covs, 1),
        observation_mean=torch.stack(obs_means, 1),
        observation_cov=torch.stack(obs_covs, 1),
    )
