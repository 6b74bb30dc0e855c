"""The parallel-in-time Kalman filter and RTS smoother (associative scans; any device, autograd).

See *Parallel in time* in :mod:`inference.kalman`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._common import _LOG_2PI, _Params, _Raw, _stored, _symmetrise
from ._torch_loop import _smoother_gains

# --------------------------------------------------------------------------------------
# Parallel-in-time filter and smoother (associative scans; any device, autograd)
# --------------------------------------------------------------------------------------


def _associative_scan(elements: tuple[Tensor, ...], combine) -> tuple[Tensor, ...]:
    """Inclusive prefix combination along time (dim 1) of a tuple of ``(N, T, ...)`` tensors.

    ``combine(earlier, later)`` must be associative; depth ``O(log T)``, work ``O(T)``.
    """
    num_steps = elements[0].shape[1]
    if num_steps < 2:
        return elements
    odd = _associative_scan(
        combine(tuple(e[:, 0:-1:2] for e in elements), tuple(e[:, 1::2] for e in elements)), combine
    )  # prefixes ending at steps 1, 3, 5, ...
    rest = tuple(e[:, 2::2] for e in elements)
    if num_steps % 2 == 0:
        even = combine(tuple(o[:, :-1] for o in odd), rest)
    else:
        even = combine(odd, rest)
    even = tuple(torch.cat([e[:, :1], v], 1) for e, v in zip(elements, even))  # prefixes ending at 0, 2, 4, ...
    result = []
    for even_value, odd_value in zip(even, odd):
        interleaved = torch.stack([even_value[:, : odd_value.shape[1]], odd_value], 2).flatten(1, 2)
        if num_steps % 2:
            interleaved = torch.cat([interleaved, even_value[:, -1:]], 1)
        result.append(interleaved)
    return tuple(result)


def _combine_filter_elements(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Särkkä & García-Fernández (2021), eq. (11)-(12): combination of filtering elements.

    An element ``(A, b, C, eta, J)`` stands for :math:`p(s_k \\mid s_{i-1}, x_{i:k}) =
    \\mathcal N(A s_{i-1} + b, C)` and :math:`p(x_{i:k} \\mid s_{i-1}) \\propto
    \\exp(-\\tfrac12 s^\\top J s + s^\\top \\eta)`; ``b`` and ``eta`` have several columns
    (the mean and the diffuse basis).
    """
    a_i, b_i, c_i, eta_i, j_i = earlier
    a_j, b_j, c_j, eta_j, j_j = later
    eye = torch.eye(a_i.shape[-1], dtype=a_i.dtype, device=a_i.device)
    num_cols = b_i.shape[-1]
    # (I + C_i J_j)^{-1} [A_i, b_i + C_i eta_j, C_i]
    solved = torch.linalg.solve(eye + c_i @ j_j, torch.cat([a_i, b_i + c_i @ eta_j, c_i], -1))
    state_dim = a_i.shape[-1]
    solved_a, solved_b, solved_c = solved.split([state_dim, num_cols, state_dim], -1)
    combined_a = a_j @ solved_a
    combined_b = a_j @ solved_b + b_j
    combined_c = _symmetrise(a_j @ solved_c @ a_j.transpose(-1, -2) + c_j)
    # (I + J_j C_i)^{-1} [eta_j - J_j b_i, J_j A_i]
    solved = torch.linalg.solve(eye + j_j @ c_i, torch.cat([eta_j - j_j @ b_i, j_j @ a_i], -1))
    solved_eta, solved_j = solved.split([num_cols, state_dim], -1)
    a_i_t = a_i.transpose(-1, -2)
    combined_eta = a_i_t @ solved_eta + eta_i
    combined_j = _symmetrise(a_i_t @ solved_j + j_i)
    return combined_a, combined_b, combined_c, combined_eta, combined_j


def _combine_smoother_elements(later: tuple[Tensor, ...], earlier: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Composition of backward affine kernels ``s_k = E s_{k+1} + g + N(0, L)`` (scan runs backwards)."""
    e_later, g_later, l_later = later
    e_earlier, g_earlier, l_earlier = earlier
    return (
        e_earlier @ e_later,
        e_earlier @ g_later + g_earlier,
        _symmetrise(e_earlier @ l_later @ e_earlier.transpose(-1, -2) + l_earlier),
    )


def _parallel_filter(params: _Params, diffuse: bool) -> _Raw:
    """The filter by an associative scan; the log densities from the one-step predictions."""
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype, device = observations.dtype, observations.device
    valid = _valid_mask(params.lengths, num_steps)
    observed = ~torch.isnan(observations) & valid[..., None]
    mask = observed.to(dtype)  # (N, T, p)
    values = torch.where(observed, observations, torch.zeros((), dtype=dtype, device=device))
    state_eye = torch.eye(state_dim, dtype=dtype, device=device)
    obs_matrix = params.observation_matrix[:, None] * mask[..., None]  # (N, T, p, d)
    obs_cov = params.observation_cov[:, None] * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1.0 - mask)
    transition = torch.where(valid[..., None, None], params.transition_matrix[:, None], state_eye)  # into step t
    noise = torch.where(valid[..., None, None], params.transition_cov[:, None], torch.zeros_like(state_eye))
    obs_matrix_t = obs_matrix.transpose(-1, -2)
    num_cols = 1 + state_dim if diffuse else 1

    # Step 1: the filtered moments of S_1 (prior N(m_0, P_0); with diffuse, m = 0, P = 0, basis I).
    if diffuse:
        first_mean = params.initial_mean[..., None]  # the reference point of the diffuse start
        first_cols = torch.cat([first_mean, state_eye.expand(num_seq, state_dim, state_dim)], -1)
        first_cov = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
    else:
        prior_mean, prior_cov = params.initial_mean, params.initial_cov
        cross = prior_cov @ obs_matrix_t[:, 0]
        chol = torch.linalg.cholesky(_symmetrise(obs_matrix[:, 0] @ cross + obs_cov[:, 0]))
        gain = torch.cholesky_solve(cross.transpose(-1, -2), chol).transpose(-1, -2)
        innovation = values[:, 0] - (obs_matrix[:, 0] @ prior_mean[..., None])[..., 0]
        first_cols = (prior_mean + (gain @ innovation[..., None])[..., 0])[..., None]
        residual_op = state_eye - gain @ obs_matrix[:, 0]
        first_cov = _symmetrise(
            residual_op @ prior_cov @ residual_op.transpose(-1, -2) + gain @ obs_cov[:, 0] @ gain.transpose(-1, -2)
        )

    # Steps 2..T: elements of eq. (10) (Joseph form for C).
    cross = noise @ obs_matrix_t  # (N, T, d, p)
    chol = torch.linalg.cholesky(_symmetrise(obs_matrix @ cross + obs_cov))
    gain = torch.cholesky_solve(cross.transpose(-1, -2), chol).transpose(-1, -2)  # (N, T, d, p)
    residual_op = state_eye - gain @ obs_matrix
    element_a = residual_op @ transition
    element_b = torch.zeros(num_seq, num_steps, state_dim, num_cols, dtype=dtype, device=device)
    element_b[..., :1] = gain @ values[..., None]
    element_c = _symmetrise(
        residual_op @ noise @ residual_op.transpose(-1, -2) + gain @ obs_cov @ gain.transpose(-1, -2)
    )
    emitted = obs_matrix @ transition  # H F (N, T, p, d)
    emitted_t = emitted.transpose(-1, -2)
    element_eta = torch.zeros_like(element_b)
    element_eta[..., :1] = emitted_t @ torch.cholesky_solve(values[..., None], chol)
    element_j = _symmetrise(emitted_t @ torch.cholesky_solve(emitted, chol))
    zero_matrix = torch.zeros_like(first_cov)
    first = (zero_matrix, first_cols, first_cov, torch.zeros_like(first_cols), zero_matrix)
    elements = tuple(
        torch.cat([start[:, None], later[:, 1:]], 1)
        for start, later in zip(first, (element_a, element_b, element_c, element_eta, element_j))
    )
    _a, filtered_cols, filtered_cov, _eta, _j = _associative_scan(elements, _combine_filter_elements)

    # One-step predictions and the log densities, all steps at once.
    if diffuse:
        initial_cols = first_cols
        initial_cov = first_cov
    else:
        initial_cols = params.initial_mean[..., None]
        initial_cov = params.initial_cov
    predicted_cols = torch.cat([initial_cols[:, None], transition[:, 1:] @ filtered_cols[:, :-1]], 1)
    predicted_cov = torch.cat(
        [
            initial_cov[:, None],
            _symmetrise(transition[:, 1:] @ filtered_cov[:, :-1] @ transition[:, 1:].transpose(-1, -2) + noise[:, 1:]),
        ],
        1,
    )
    innovation = values - (obs_matrix @ predicted_cols[..., :1])[..., 0]
    innovation_chol = torch.linalg.cholesky(_symmetrise(obs_matrix @ predicted_cov @ obs_matrix_t + obs_cov))
    whitened = torch.linalg.solve_triangular(innovation_chol, innovation[..., None], upper=False)[..., 0]
    log_det = 2.0 * innovation_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    step_ll = -0.5 * (whitened.square().sum(-1) + log_det + mask.sum(-1) * _LOG_2PI)
    info_matrix = info_vector = None
    if diffuse:
        white_basis = torch.linalg.solve_triangular(innovation_chol, obs_matrix @ predicted_cols[..., 1:], upper=False)
        info_matrix = torch.cumsum(white_basis.transpose(-1, -2) @ white_basis, 1)
        info_vector = torch.cumsum((white_basis.transpose(-1, -2) @ whitened[..., None])[..., 0], 1)
    return _Raw(
        step_log_likelihood=step_ll,
        filtered_mean=filtered_cols[..., 0],
        filtered_cov=filtered_cov,
        predicted_mean=predicted_cols[..., 0],
        predicted_cov=predicted_cov,
        filtered_basis=filtered_cols[..., 1:] if diffuse else None,
        predicted_basis=predicted_cols[..., 1:] if diffuse else None,
        info_matrix=info_matrix,
        info_vector=info_vector,
        final_mean=filtered_cols[:, -1, :, 0],
        final_cov=filtered_cov[:, -1],
        final_basis=filtered_cols[:, -1, :, 1:] if diffuse else None,
        final_info_matrix=info_matrix[:, -1] if info_matrix is not None else None,
        final_info_vector=info_vector[:, -1] if info_vector is not None else None,
        steady_epoch=None,
        valid=valid,
    )


def _parallel_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother by a backward associative scan: mean, cov, lag-one cov, basis."""
    filtered_mean = _stored(raw.filtered_mean, "filtered_mean")
    filtered_cov, predicted_cov = _stored(raw.filtered_cov, "filtered_cov"), _stored(raw.predicted_cov, "predicted_cov")
    num_seq, num_steps, state_dim = filtered_mean.shape
    diffuse = raw.filtered_basis is not None
    filtered_cols = filtered_mean[..., None]
    predicted_cols = _stored(raw.predicted_mean, "predicted_mean")[..., None]
    if raw.filtered_basis is not None:
        filtered_cols = torch.cat([filtered_cols, raw.filtered_basis], -1)
        predicted_cols = torch.cat([predicted_cols, _stored(raw.predicted_basis, "predicted_basis")], -1)
    gains = filtered_cov.new_zeros(num_seq, num_steps, state_dim, state_dim)
    if num_steps > 1:
        gains = torch.cat([_smoother_gains(params, raw), gains[:, :1]], 1)  # E_T = 0
    next_cols = torch.cat([predicted_cols[:, 1:], torch.zeros_like(predicted_cols[:, :1])], 1)
    next_cov = torch.cat([predicted_cov[:, 1:], torch.zeros_like(predicted_cov[:, :1])], 1)
    element_g = filtered_cols - gains @ next_cols
    element_l = _symmetrise(filtered_cov - gains @ next_cov @ gains.transpose(-1, -2))
    reversed_elements = tuple(value.flip(1) for value in (gains, element_g, element_l))
    _e, smoothed_cols, smoothed_cov = (
        value.flip(1) for value in _associative_scan(reversed_elements, _combine_smoother_elements)
    )
    lag_one = smoothed_cov[:, 1:] @ gains[:, :-1].transpose(-1, -2)
    lag_one_cov = torch.cat([torch.zeros_like(smoothed_cov[:, :1]), lag_one], 1)
    return (smoothed_cols[..., 0], smoothed_cov, lag_one_cov, smoothed_cols[..., 1:] if diffuse else None)
