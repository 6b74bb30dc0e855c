"""The sequential Kalman filter and RTS smoother as torch loops over time (any device, autograd).

See :mod:`inference.kalman` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._common import _LOG_2PI, _Params, _Raw, _stored, _symmetrise

# --------------------------------------------------------------------------------------
# Sequential filter, torch loop (any device, autograd)
# --------------------------------------------------------------------------------------


def _torch_filter(params: _Params, diffuse: bool) -> _Raw:
    """Kalman filter over all ``T`` steps (padded steps: identity transition, nothing observed).

    With ``diffuse``, runs from :math:`m_1 = c` (``initial_mean``), :math:`P_1 = 0` and carries the basis
    :math:`X_t` of the dependence of the state mean on :math:`s_1` and the accumulated
    information :math:`(\\sum_t E_t^\\top F_t^{-1} E_t, \\sum_t E_t^\\top F_t^{-1} e_t)`.
    """
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype, device = observations.dtype, observations.device
    valid = _valid_mask(params.lengths, num_steps)
    observed = ~torch.isnan(observations) & valid[..., None]  # (N, T, p)
    values = torch.where(observed, observations, torch.zeros((), dtype=dtype, device=device))
    state_eye = torch.eye(state_dim, dtype=dtype, device=device)

    step_lls, filtered_means, filtered_covs, predicted_means, predicted_covs = [], [], [], [], []
    filtered_bases, predicted_bases, info_matrices, info_vectors = [], [], [], []
    if diffuse:
        mean = params.initial_mean  # the reference point of the diffuse start (see _run_filter)
        cov = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
        basis = state_eye.expand(num_seq, state_dim, state_dim)
        info_matrix = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
        info_vector = torch.zeros(num_seq, state_dim, dtype=dtype, device=device)
    else:
        mean, cov = params.initial_mean, params.initial_cov
    for t in range(num_steps):
        if t > 0:
            step_valid = valid[:, t, None, None]
            transition = torch.where(step_valid, params.transition_matrix, state_eye)
            noise = torch.where(step_valid, params.transition_cov, torch.zeros_like(state_eye))
            mean = (transition @ mean[..., None])[..., 0]
            cov = _symmetrise(transition @ cov @ transition.transpose(-1, -2) + noise)
            if diffuse:
                basis = transition @ basis
        predicted_means.append(mean)
        predicted_covs.append(cov)
        if diffuse:
            predicted_bases.append(basis)

        mask = observed[:, t].to(dtype)  # (N, p)
        obs_matrix = params.observation_matrix * mask[..., None]
        # Missing entries get unit variance, uncorrelated with the rest (docstring of inference.kalman).
        obs_cov = params.observation_cov * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1.0 - mask)
        innovation = values[:, t] - (obs_matrix @ mean[..., None])[..., 0]  # (N, p)
        cov_obs_t = cov @ obs_matrix.transpose(-1, -2)  # (N, d, p)
        innovation_cov = _symmetrise(obs_matrix @ cov_obs_t + obs_cov)
        innovation_chol = torch.linalg.cholesky(innovation_cov)
        gain = torch.cholesky_solve(cov_obs_t.transpose(-1, -2), innovation_chol).transpose(-1, -2)  # (N, d, p)
        mean = mean + (gain @ innovation[..., None])[..., 0]
        residual_op = state_eye - gain @ obs_matrix
        cov = _symmetrise(residual_op @ cov @ residual_op.transpose(-1, -2) + gain @ obs_cov @ gain.transpose(-1, -2))
        filtered_means.append(mean)
        filtered_covs.append(cov)

        whitened = torch.linalg.solve_triangular(innovation_chol, innovation[..., None], upper=False)[..., 0]
        if diffuse:
            obs_basis = obs_matrix @ basis  # (N, p, d): E_t, zero rows at missing entries
            basis = basis - gain @ obs_basis
            white_basis = torch.linalg.solve_triangular(innovation_chol, obs_basis, upper=False)
            info_matrix = info_matrix + white_basis.transpose(-1, -2) @ white_basis
            info_vector = info_vector + (white_basis.transpose(-1, -2) @ whitened[..., None])[..., 0]
            filtered_bases.append(basis)
            info_matrices.append(info_matrix)
            info_vectors.append(info_vector)
        log_det = 2.0 * innovation_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        num_observed = mask.sum(-1)
        step_lls.append(-0.5 * (whitened.square().sum(-1) + log_det + num_observed * _LOG_2PI))

    stack = lambda values: torch.stack(values, 1)  # noqa: E731
    return _Raw(
        step_log_likelihood=stack(step_lls),
        filtered_mean=stack(filtered_means),
        filtered_cov=stack(filtered_covs),
        predicted_mean=stack(predicted_means),
        predicted_cov=stack(predicted_covs),
        filtered_basis=stack(filtered_bases) if diffuse else None,
        predicted_basis=stack(predicted_bases) if diffuse else None,
        info_matrix=stack(info_matrices) if diffuse else None,
        info_vector=stack(info_vectors) if diffuse else None,
        final_mean=mean,
        final_cov=cov,
        final_basis=basis if diffuse else None,
        final_info_matrix=info_matrix if diffuse else None,
        final_info_vector=info_vector if diffuse else None,
        steady_epoch=None,
        valid=valid,
    )


def _smoother_gains(params: _Params, raw: _Raw) -> Tensor:
    """``(N, T-1, d, d)`` gains :math:`J_t = P_t A_{t+1}^\\top P_{t+1|t}^{-1}`, ``t = 0..T-2``.

    The identity where step ``t + 1`` is padding (the moments are carried there).
    """
    num_steps = raw.valid.shape[1]
    state_dim = params.transition_matrix.shape[-1]
    all_filtered_cov = _stored(raw.filtered_cov, "filtered_cov")
    state_eye = torch.eye(state_dim, dtype=all_filtered_cov.dtype, device=all_filtered_cov.device)
    next_valid = raw.valid[:, 1:, None, None]
    filtered_cov = all_filtered_cov[:, : num_steps - 1]
    predicted_chol = torch.linalg.cholesky(
        torch.where(next_valid, _stored(raw.predicted_cov, "predicted_cov")[:, 1:], state_eye)
    )
    # J^T = P_{t+1|t}^{-1} A P_t  (both covariances symmetric).
    gains = torch.cholesky_solve(params.transition_matrix[:, None] @ filtered_cov, predicted_chol).transpose(-1, -2)
    return torch.where(next_valid, gains, state_eye)


def _torch_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother, torch loop: mean, cov, lag-one cov, basis (unmasked)."""
    num_steps = raw.valid.shape[1]
    filtered_mean, filtered_cov = _stored(raw.filtered_mean, "filtered_mean"), _stored(raw.filtered_cov, "filtered_cov")
    predicted_mean = _stored(raw.predicted_mean, "predicted_mean")
    predicted_cov = _stored(raw.predicted_cov, "predicted_cov")
    filtered_basis, predicted_basis = raw.filtered_basis, raw.predicted_basis  # None without diffuse
    smoothed_means = [filtered_mean[:, -1]]
    smoothed_covs = [filtered_cov[:, -1]]
    smoothed_bases = [filtered_basis[:, -1]] if filtered_basis is not None else []
    lag_one_covs = []
    if num_steps > 1:
        gains = _smoother_gains(params, raw)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            next_mean, next_cov = smoothed_means[-1], smoothed_covs[-1]
            mean = filtered_mean[:, t] + (gain @ (next_mean - predicted_mean[:, t + 1])[..., None])[..., 0]
            cov = _symmetrise(filtered_cov[:, t] + gain @ (next_cov - predicted_cov[:, t + 1]) @ gain.transpose(-1, -2))
            lag_one_covs.append(next_cov @ gain.transpose(-1, -2))
            smoothed_means.append(mean)
            smoothed_covs.append(cov)
            if filtered_basis is not None:
                next_basis = _stored(predicted_basis, "predicted_basis")[:, t + 1]
                smoothed_bases.append(filtered_basis[:, t] + gain @ (smoothed_bases[-1] - next_basis))
    lag_one_covs.append(torch.zeros_like(smoothed_covs[0]))
    return (
        torch.stack(smoothed_means[::-1], 1),
        torch.stack(smoothed_covs[::-1], 1),
        torch.stack(lag_one_covs[::-1], 1),
        torch.stack(smoothed_bases[::-1], 1) if filtered_basis is not None else None,
    )
