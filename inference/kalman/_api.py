"""The public functions of :mod:`inference.kalman` and the dispatch to the backends.

See :mod:`inference.kalman` for the model, the conventions, the algorithms and *Dispatch*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    KalmanFiltered,
    KalmanForecast,
    KalmanSmoothed,
    _choose_backend,
    _FilterState,
    _Params,
    _prepare,
    _Raw,
    _stored,
    _symmetrise,
)
from ._numba import _numba_filter, _numba_smoother
from ._scan import _parallel_filter, _parallel_smoother
from ._score import _fused, _LogMarginal
from ._torch_loop import _smoother_gains, _torch_filter, _torch_smoother
from .diffuse import _combine, _finish, _initial_posterior, _not_identified_error


def _run_filter(
    params: _Params, diffuse: bool, method: str, steady_state: bool, store: bool = True
) -> tuple[_Raw, _FilterState, str]:
    if not isinstance(diffuse, bool):
        raise TypeError(f"diffuse: expected a bool, got {type(diffuse).__name__}")
    backend = _choose_backend(params, method)

    def run(start_params: _Params, store_moments: bool) -> _Raw:
        if backend == "numba":
            return _numba_filter(start_params, diffuse, store_moments, steady_state)
        if backend == "parallel":
            return _parallel_filter(start_params, diffuse)
        return _torch_filter(start_params, diffuse)

    if diffuse:
        # The diffuse filter runs given S_1 = c + u (u flat); the result does not depend on c,
        # but with c far from the data the combination cancels large terms. A first pass from
        # c = 0 estimates E[S_1 | x]; the second runs from there (gradients: c is a constant).
        with torch.no_grad():
            first = run(params._replace(initial_mean=torch.zeros_like(params.initial_mean)), False)
            first_posterior = _initial_posterior(
                _stored(first.final_info_matrix, "final_info_matrix"),
                _stored(first.final_info_vector, "final_info_vector"),
            )
        if not bool(first_posterior.identified.all()):
            raise _not_identified_error(first_posterior.identified)
        params = params._replace(initial_mean=first_posterior.mean.to(params.initial_mean.dtype))
    raw = run(params, store)
    return raw, _finish(raw, diffuse), backend


def _mask_steps(values: Tensor, valid: Tensor) -> Tensor:
    """Zero ``values`` ``(N, T, ...)`` at padded steps (``values`` itself when there are none)."""
    if bool(valid.all()):
        return values
    shape = valid.shape + (1,) * (values.dim() - 2)
    return torch.where(valid.reshape(shape), values, torch.zeros((), dtype=values.dtype, device=values.device))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def kalman_filter(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanFiltered:
    """Kalman filter: log marginal likelihood and filtered and one-step predicted moments.

    Args:
        (model arguments): see the docstring of :mod:`inference.kalman` (shapes and the
            missing-value convention).
        diffuse: exact diffuse initialisation (improper flat prior on :math:`S_1`;
            ``initial_mean``/``initial_cov`` are shape-checked and ignored). See the docstring
            of :mod:`inference.kalman`.
        method: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see *Dispatch* in the docstring
            of :mod:`inference.kalman`).
        steady_state: let the numba kernel switch to the converged gain of a time-invariant
            system (exact to ~1e-12 relative; see the docstring of :mod:`inference.kalman`).
            ``False`` runs the full update at every step.

    Returns:
        :class:`KalmanFiltered`; moments are zero at padded steps (and NaN, with ``diffuse``,
        where the observations so far do not identify the state).
    """
    params = _prepare(
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
    )
    _raw, state, _backend = _run_filter(params, diffuse, method, steady_state)
    return KalmanFiltered(
        log_normalizer=state.log_normalizer,
        filtered_mean=_mask_steps(_stored(state.filtered_mean, "filtered_mean"), state.valid),
        filtered_cov=_mask_steps(_stored(state.filtered_cov, "filtered_cov"), state.valid),
        predicted_mean=_mask_steps(_stored(state.predicted_mean, "predicted_mean"), state.valid),
        predicted_cov=_mask_steps(_stored(state.predicted_cov, "predicted_cov"), state.valid),
        step_log_likelihood=_mask_steps(_stored(state.step_log_likelihood, "step_log_likelihood"), state.valid),
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
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> Tensor:
    """Log marginal likelihood :math:`\\log p(x_{1:L})` over the observed entries.

    Differentiable with respect to every input. On CPU (``method="auto"``) the gradient
    comes from one smoother pass (Fisher's identity, see ``_LogMarginal``): covariance
    inputs are read through their symmetric part, and it is not twice differentiable;
    ``method="sequential"`` differentiates the torch loop instead (any order). Without
    gradients, on CPU, nothing of size ``T d^2`` is stored.

    Args:
        (model arguments), diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        ``(N,)`` log normaliser of each sequence (0 for a length-0 sequence); with
        ``diffuse``, Durbin & Koopman's exact diffuse log-likelihood.
    """
    params = _prepare(
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
    )
    if not isinstance(diffuse, bool):
        raise TypeError(f"diffuse: expected a bool, got {type(diffuse).__name__}")
    backend = _choose_backend(params, method)
    if backend == "torch" and method == "auto" and params.observations.device.type == "cpu":
        # Gradients on CPU: the numba filter and, in the same compiled call, the smoother's score.
        return _LogMarginal.apply(*params, diffuse, steady_state)
    if backend == "numba":
        # Both diffuse passes and the diffuse term in one compiled call (no torch work per call).
        log_normalizer, _ = _fused(params, diffuse, steady_state, with_score=False)
        return torch.from_numpy(log_normalizer).to(device=params.observations.device, dtype=params.observations.dtype)
    return _run_filter(params, diffuse, method, steady_state, store=False)[1].log_normalizer


def rts_smoother(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanSmoothed:
    """Rauch–Tung–Striebel smoother: posterior marginals and lag-one covariances.

    Args:
        (model arguments), diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        :class:`KalmanSmoothed`; zero at padded steps.
    """
    params = _prepare(
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
    )
    raw, state, backend = _run_filter(params, diffuse, method, steady_state)
    if backend == "numba":
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _numba_smoother(params, raw)
    elif backend == "parallel":
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _parallel_smoother(params, raw)
    else:
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _torch_smoother(params, raw)
    if diffuse:
        posterior = _stored(state.initial_posterior, "initial_posterior")
        smoothed_basis = _stored(smoothed_basis, "smoothed_basis")
        smoothed_mean, smoothed_cov = _combine(
            smoothed_mean, smoothed_cov, smoothed_basis, posterior.mean[:, None], posterior.cov[:, None]
        )
        cross = smoothed_basis[:, 1:] @ posterior.cov[:, None] @ smoothed_basis[:, :-1].transpose(-1, -2)
        lag_one_cov = lag_one_cov + torch.cat([torch.zeros_like(cross[:, :1]), cross], 1)
    return KalmanSmoothed(
        log_normalizer=state.log_normalizer,
        smoothed_mean=_mask_steps(smoothed_mean, state.valid),
        smoothed_cov=_mask_steps(smoothed_cov, state.valid),
        lag_one_cov=_mask_steps(lag_one_cov, state.valid),  # zero at t = 0 by construction
    )


def _draw(mean: Tensor, cov: Tensor, standard: Tensor) -> Tensor:
    """``mean + root(cov) @ standard``; a PSD square root where ``cov`` is singular."""
    cov = _symmetrise(cov)
    chol, status = torch.linalg.cholesky_ex(cov)
    if bool((status != 0).any()):
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        root = eigenvectors * eigenvalues.clamp(min=0).sqrt()[..., None, :]
        chol = torch.where((status != 0)[..., None, None], root, chol)
    return mean + (chol @ standard[..., None])[..., 0]


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
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> Tensor:
    """Draw state paths from :math:`p(s_{1:L} \\mid x_{1:L})` by forward-filter backward-sample.

    Args:
        (model arguments): see the docstring of :mod:`inference.kalman`.
        num_samples: number of independent paths per sequence (>= 1).
        generator: optional random generator (on the device of ``observations``).
        diffuse, method, steady_state: as in :func:`kalman_filter` (the backward pass is a torch loop).

    Returns:
        ``(num_samples, N, T, d)`` sampled states; zero at padded steps.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    params = _prepare(
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
    )
    raw, state, _backend = _run_filter(params, diffuse, method, steady_state)
    raw_filtered_mean = _stored(raw.filtered_mean, "filtered_mean")
    filtered_cov = _stored(raw.filtered_cov, "filtered_cov")
    predicted_cov = _stored(raw.predicted_cov, "predicted_cov")
    num_seq, num_steps, state_dim = raw_filtered_mean.shape
    dtype, device = raw_filtered_mean.dtype, raw_filtered_mean.device
    # (1 or S, N, T, d)
    filtered_mean, predicted_mean = raw_filtered_mean[None], _stored(raw.predicted_mean, "predicted_mean")[None]
    if diffuse:
        # Draw s_1 from its flat-prior posterior, then the path given s_1 (the conditional filter).
        posterior = _stored(state.initial_posterior, "initial_posterior")
        initial = _draw(
            posterior.mean,
            posterior.cov,
            torch.randn(num_samples, num_seq, state_dim, generator=generator, dtype=dtype, device=device),
        )
        filtered_basis = _stored(raw.filtered_basis, "filtered_basis")
        predicted_basis = _stored(raw.predicted_basis, "predicted_basis")
        filtered_mean = filtered_mean + (filtered_basis @ initial[:, :, None, :, None])[..., 0]
        predicted_mean = predicted_mean + (predicted_basis @ initial[:, :, None, :, None])[..., 0]
    noise = torch.randn(num_samples, num_seq, num_steps, state_dim, generator=generator, dtype=dtype, device=device)
    sample = _draw(filtered_mean[:, :, -1], filtered_cov[:, -1], noise[:, :, -1])  # (S, N, d)
    samples = [sample]
    if num_steps > 1:
        gains = _smoother_gains(params, raw)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            cond_mean = filtered_mean[:, :, t] + (gain @ (sample - predicted_mean[:, :, t + 1])[..., None])[..., 0]
            cond_cov = filtered_cov[:, t] - gain @ predicted_cov[:, t + 1] @ gain.transpose(-1, -2)
            # Where step t+1 is padding, S_t is the last valid state (or carries it): draw it from
            # its filtered law, as the conditional covariance there is exactly zero.
            next_valid = raw.valid[:, t + 1]
            cond_mean = torch.where(next_valid[:, None], cond_mean, filtered_mean[:, :, t])
            cond_cov = torch.where(next_valid[:, None, None], cond_cov, filtered_cov[:, t])
            sample = _draw(cond_mean, cond_cov, noise[:, :, t])
            samples.append(sample)
    paths = torch.stack(samples[::-1], 2)  # (S, N, T, d)
    return torch.where(raw.valid[None, :, :, None], paths, torch.zeros((), dtype=dtype, device=device))


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
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanForecast:
    """Predictive moments of the ``steps`` states and observations after each sequence's end.

    Each sequence is forecast from its own length ``L``: step ``k`` is time ``L + k``. A
    length-0 sequence is forecast from the prior, so its first step is :math:`S_1`.

    Args:
        (model arguments): see the docstring of :mod:`inference.kalman`.
        steps: forecast horizon (>= 1).
        diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        :class:`KalmanForecast`.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    params = _prepare(
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
    )
    _raw, state, _backend = _run_filter(params, diffuse, method, steady_state, store=False)
    # Padded steps carry the filtered moments of the last valid step to step T.
    mean, cov = state.final_mean, state.final_cov
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
