"""The sequential Kalman filter and RTS smoother as numba kernels (CPU, float64).

See :mod:`inference.kalman` for the model, the conventions and the algorithms. The kernels are
compiled lazily, on their first call (``cache=True``: to disk, next to this file).
``_cholesky_in_place`` and ``_forward_substitute`` are also called by the kernels of
:mod:`._score`, whose cache does not see edits to this file (touch ``_score.py`` after them).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._common import _FASTMATH, _SMOOTHER_STEADY_TOL, _STEADY_TOL, _Params, _Raw, _stored

# --------------------------------------------------------------------------------------
# Sequential filter and smoother, numba (CPU, float64)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _cholesky_in_place(matrix, size):  # pragma: no cover
    """Lower Cholesky factor of ``matrix[:size, :size]`` in place; False if not positive definite."""
    for j in range(size):
        acc = matrix[j, j]
        for k in range(j):
            acc -= matrix[j, k] * matrix[j, k]
        if not acc > 0.0:
            return False
        root = np.sqrt(acc)
        matrix[j, j] = root
        for i in range(j + 1, size):
            acc = matrix[i, j]
            for k in range(j):
                acc -= matrix[i, k] * matrix[j, k]
            matrix[i, j] = acc / root
        for i in range(j):
            matrix[i, j] = 0.0
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward_substitute(chol, size, rhs, num_cols):  # pragma: no cover
    """``rhs[:size, :num_cols] <- chol[:size, :size]^{-1} rhs`` (lower triangular)."""
    for i in range(size):
        inv = 1.0 / chol[i, i]
        for c in range(num_cols):
            acc = rhs[i, c]
            for k in range(i):
                acc -= chol[i, k] * rhs[k, c]
            rhs[i, c] = acc * inv


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_gain(A, predicted_next, filtered, chol, rhs, gain, dim):  # pragma: no cover
    """The RTS gain ``J = P_t A^T P_{t+1|t}^{-1}`` into ``gain`` (d, d), through ``J^T = P_{t+1|t}^{-1} A P_t``
    by a Cholesky factor of ``predicted_next`` in ``chol`` and two triangular solves in ``rhs`` (scratch,
    d x d each). False where ``predicted_next`` is not positive definite."""
    chol[:, :] = predicted_next
    if not _cholesky_in_place(chol, dim):
        return False
    for i in range(dim):
        for j in range(dim):
            acc = 0.0
            for k in range(dim):
                acc += A[i, k] * filtered[k, j]
            rhs[i, j] = acc
    _forward_substitute(chol, dim, rhs, dim)
    for i in range(dim - 1, -1, -1):  # back substitution with chol^T
        inv = 1.0 / chol[i, i]
        for c in range(dim):
            acc = rhs[i, c]
            for k in range(i + 1, dim):
                acc -= chol[k, i] * rhs[k, c]
            rhs[i, c] = acc * inv
    for i in range(dim):
        for j in range(dim):
            gain[i, j] = rhs[j, i]
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoothed_mean_step(gain, smoothed_next, predicted_next, filtered, diff_vec, out, dim):  # pragma: no cover
    """The RTS mean ``m_t = f_t + J (m_{t+1} - p_{t+1})`` into ``out`` (d,); ``diff_vec`` (d,) scratch."""
    for i in range(dim):
        diff_vec[i] = smoothed_next[i] - predicted_next[i]
    for i in range(dim):
        acc = filtered[i]
        for j in range(dim):
            acc += gain[i, j] * diff_vec[j]
        out[i] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _times_transpose(matrix, gain, out, dim):  # pragma: no cover
    """``out = matrix @ gain^T`` (d, d): the lag-one covariance ``C_{t+1} = V_{t+1} J^T``."""
    for i in range(dim):
        for j in range(dim):
            acc = 0.0
            for k in range(dim):
                acc += matrix[i, k] * gain[j, k]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoothed_cov_step(gain, next_cov, predicted_next, filtered, diff, work, out, dim):  # pragma: no cover
    """The RTS covariance ``V_t = sym(P_t) + J (V_{t+1} - P_{t+1|t}) J^T`` into ``out`` (d, d), with
    ``diff`` and ``work`` as scratch. Returns ``(max |V_t - V_{t+1}|, max |V_t|)``, the smoother's
    steady-state test."""
    for i in range(dim):
        for j in range(dim):
            diff[i, j] = next_cov[i, j] - predicted_next[i, j]
    for i in range(dim):  # work = J diff
        for j in range(dim):
            work[i, j] = 0.0
        for k in range(dim):
            g_ik = gain[i, k]
            for j in range(dim):
                work[i, j] += g_ik * diff[k, j]
    change = 0.0
    scale = 0.0
    for i in range(dim):
        for j in range(i + 1):
            acc = 0.0
            for k in range(dim):
                acc += work[i, k] * gain[j, k]
            value = 0.5 * (filtered[i, j] + filtered[j, i]) + acc
            out[i, j] = value
            out[j, i] = value
            change = max(change, abs(value - next_cov[i, j]))
            scale = max(scale, abs(value))
    return change, scale


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _filter_kernel(
    transition,
    transition_cov,
    obs_matrix,
    obs_cov,
    initial_mean,
    initial_cov,
    observations,
    lengths,
    diffuse,
    steady_tol,
    store,
    compact,
    step_ll,
    final_mean,
    final_cov,
    final_basis,
    final_info_matrix,
    final_info_vector,
    predicted_mean,
    predicted_cov,
    filtered_mean,
    filtered_cov,
    predicted_basis,
    filtered_basis,
    info_matrix,
    info_vector,
    steady_epoch,
    cov_source,
    incomplete_slot,
    num_incomplete,
    status,
):  # pragma: no cover
    """Kalman filter of every sequence; see :func:`_numba_filter` for the arrays.

    ``status[n]`` is set to 1 when an innovation covariance is not positive definite.
    With ``store``, ``cov_source[n, t]`` is the step whose stored covariances are those of
    step ``t``: ``t`` itself, except with ``compact``, where a step updated by the cached
    steady-state gain writes no covariance (they are the epoch's, stored at the step that
    entered it, whose index it gives) and padded steps write none: over a steady-state
    epoch the filter writes one pair of ``d x d`` covariances, not two per step. With
    ``store``, the valid steps with a missing entry are numbered in the order ``(n, t)``
    (``incomplete_slot[n, t]``, ``-1`` at the other valid steps, left as given at padded
    ones) and ``num_incomplete[0]`` is their count.
    """
    num_seq, num_steps, obs_dim = observations.shape
    dim = transition.shape[1]
    log_2pi = np.log(2.0 * np.pi)
    mean = np.empty(dim)
    work_vec = np.empty(dim)
    cov = np.empty((dim, dim))
    work = np.empty((dim, dim))
    prev_pred = np.empty((dim, dim))
    basis = np.zeros((dim, dim))
    work_basis = np.empty((dim, dim))
    observed = np.empty(obs_dim, np.int64)
    chol = np.empty((obs_dim, obs_dim))
    white_cross = np.empty((obs_dim, dim))  # L^{-1} H_k P
    white = np.empty((obs_dim, 1))
    white_basis = np.empty((obs_dim, dim))
    ss_white_cross = np.empty((obs_dim, dim))
    ss_chol = np.empty((obs_dim, obs_dim))
    ss_filtered = np.empty((dim, dim))
    ss_predicted = np.empty((dim, dim))
    info_mat = np.zeros((dim, dim))
    info_vec = np.zeros(dim)
    for n in range(num_seq):
        A = transition[n]
        Q = transition_cov[n]
        H = obs_matrix[n]
        R = obs_cov[n]
        length = lengths[n]
        if diffuse:
            mean[:] = initial_mean[n]  # the reference point of the diffuse start
            cov[:, :] = 0.0
            basis[:, :] = 0.0
            for i in range(dim):
                basis[i, i] = 1.0
        else:
            mean[:] = initial_mean[n]
            cov[:, :] = initial_cov[n]
        info_mat[:, :] = 0.0
        info_vec[:] = 0.0
        steady = False
        prev_full = False
        epoch = 0
        epoch_step = 0  # the step that entered the current steady-state epoch
        ss_log_det = 0.0
        for t in range(length):
            candidate = False
            chol_used = chol
            cross_used = white_cross
            if t > 0:
                for i in range(dim):
                    acc = 0.0
                    for j in range(dim):
                        acc += A[i, j] * mean[j]
                    work_vec[i] = acc
                mean[:] = work_vec
                if diffuse:
                    for i in range(dim):
                        for j in range(dim):
                            work_basis[i, j] = 0.0
                        for k in range(dim):
                            a_ik = A[i, k]
                            for j in range(dim):
                                work_basis[i, j] += a_ik * basis[k, j]
                    basis[:, :] = work_basis
                if not steady:
                    for i in range(dim):
                        for j in range(dim):
                            work[i, j] = 0.0
                        for k in range(dim):
                            a_ik = A[i, k]
                            for j in range(dim):
                                work[i, j] += a_ik * cov[k, j]
                    for i in range(dim):
                        for j in range(dim):
                            acc = 0.0
                            for k in range(dim):
                                acc += work[i, k] * A[j, k]
                            cov[i, j] = acc + Q[i, j]
                    diff = 0.0
                    scale = 0.0
                    for i in range(dim):
                        for j in range(i + 1):
                            value = 0.5 * (cov[i, j] + cov[j, i])
                            cov[i, j] = value
                            cov[j, i] = value
                            diff = max(diff, abs(value - prev_pred[i, j]))
                            scale = max(scale, abs(value))
                    candidate = prev_full and diff <= steady_tol * scale
                    prev_pred[:, :] = cov
            else:
                prev_pred[:, :] = cov
            num_obs = 0
            for j in range(obs_dim):
                if not np.isnan(observations[n, t, j]):
                    observed[num_obs] = j
                    num_obs += 1
            steady_step = num_obs == obs_dim and steady
            if store:
                if num_obs < obs_dim:
                    incomplete_slot[n, t] = num_incomplete[0]
                    num_incomplete[0] += 1
                else:
                    incomplete_slot[n, t] = -1
                predicted_mean[n, t] = mean
                if not (compact and steady_step):
                    predicted_cov[n, t] = ss_predicted if steady else cov
                cov_source[n, t] = epoch_step if compact and steady_step else t
                if diffuse:
                    predicted_basis[n, t] = basis

            ll = 0.0
            if steady_step:
                # Steady state: the gain and innovation covariance are those cached at convergence.
                for a in range(obs_dim):
                    acc = observations[n, t, a]
                    for j in range(dim):
                        acc -= H[a, j] * mean[j]
                    white[a, 0] = acc
                _forward_substitute(ss_chol, obs_dim, white, 1)
                square = 0.0
                for a in range(obs_dim):
                    square += white[a, 0] * white[a, 0]
                    w_a = white[a, 0]
                    for i in range(dim):
                        mean[i] += ss_white_cross[a, i] * w_a
                ll = -0.5 * (square + ss_log_det + obs_dim * log_2pi)
                chol_used = ss_chol
                cross_used = ss_white_cross
                if store:
                    steady_epoch[n, t] = epoch
            else:
                if steady:
                    cov[:, :] = ss_predicted  # leave the steady state at a partially observed step
                    steady = False
                if num_obs > 0:
                    # white_cross = L^{-1} H_k P (k x d); chol = H_k P H_k^T + R_k
                    for a in range(num_obs):
                        row = observed[a]
                        for i in range(dim):
                            acc = 0.0
                            for j in range(dim):
                                acc += H[row, j] * cov[j, i]
                            white_cross[a, i] = acc
                    for a in range(num_obs):
                        for c in range(a + 1):
                            acc = R[observed[a], observed[c]]
                            for j in range(dim):
                                acc += white_cross[a, j] * H[observed[c], j]
                            chol[a, c] = acc
                            chol[c, a] = acc
                    if not _cholesky_in_place(chol, num_obs):
                        status[n] = 1
                        break
                    _forward_substitute(chol, num_obs, white_cross, dim)
                    log_det = 0.0
                    for a in range(num_obs):
                        row = observed[a]
                        acc = observations[n, t, row]
                        for j in range(dim):
                            acc -= H[row, j] * mean[j]
                        white[a, 0] = acc
                        log_det += 2.0 * np.log(chol[a, a])
                    _forward_substitute(chol, num_obs, white, 1)
                    square = 0.0
                    for a in range(num_obs):
                        square += white[a, 0] * white[a, 0]
                        w_a = white[a, 0]
                        for i in range(dim):
                            mean[i] += white_cross[a, i] * w_a
                    for i in range(dim):
                        for j in range(i + 1):
                            acc = 0.0
                            for a in range(num_obs):
                                acc += white_cross[a, i] * white_cross[a, j]
                            value = 0.5 * (cov[i, j] + cov[j, i]) - acc
                            cov[i, j] = value
                            cov[j, i] = value
                    ll = -0.5 * (square + log_det + num_obs * log_2pi)
                    chol_used = chol
                    cross_used = white_cross
                    if num_obs == obs_dim and candidate and steady_tol > 0.0:
                        ss_white_cross[:, :] = white_cross
                        ss_chol[:, :] = chol
                        ss_log_det = log_det
                        ss_filtered[:, :] = cov
                        ss_predicted[:, :] = prev_pred
                        steady = True
                        epoch += 1
                        epoch_step = t
                        if store:
                            steady_epoch[n, t] = epoch
                prev_full = num_obs == obs_dim
            if diffuse and num_obs > 0:
                # E_t = H_k X_t whitened; X_t <- X_t - K_t E_t; information += E^T F^{-1} (E, e).
                for a in range(num_obs):
                    row = observed[a]
                    for j in range(dim):
                        acc = 0.0
                        for k in range(dim):
                            acc += H[row, k] * basis[k, j]
                        white_basis[a, j] = acc
                _forward_substitute(chol_used, num_obs, white_basis, dim)
                for a in range(num_obs):
                    for i in range(dim):
                        c_ai = cross_used[a, i]
                        for j in range(dim):
                            basis[i, j] -= c_ai * white_basis[a, j]
                for i in range(dim):
                    for j in range(dim):
                        acc = 0.0
                        for a in range(num_obs):
                            acc += white_basis[a, i] * white_basis[a, j]
                        info_mat[i, j] += acc
                    acc = 0.0
                    for a in range(num_obs):
                        acc += white_basis[a, i] * white[a, 0]
                    info_vec[i] += acc
            step_ll[n, t] = ll
            if store:
                filtered_mean[n, t] = mean
                if not (compact and steady_step):
                    filtered_cov[n, t] = ss_filtered if steady else cov
                if diffuse:
                    filtered_basis[n, t] = basis
                    info_matrix[n, t] = info_mat
                    info_vector[n, t] = info_vec
        if steady:
            cov[:, :] = ss_filtered
        final_mean[n] = mean
        final_cov[n] = cov
        if diffuse:
            final_basis[n] = basis
            final_info_matrix[n] = info_mat
            final_info_vector[n] = info_vec
        if store and not compact:
            for t in range(length, num_steps):
                predicted_mean[n, t] = mean
                predicted_cov[n, t] = cov
                filtered_mean[n, t] = mean
                filtered_cov[n, t] = cov
                if diffuse:
                    predicted_basis[n, t] = basis
                    filtered_basis[n, t] = basis
                    info_matrix[n, t] = info_mat
                    info_vector[n, t] = info_vec


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_kernel(
    transition,
    filtered_mean,
    filtered_cov,
    predicted_mean,
    predicted_cov,
    lengths,
    steady_epoch,
    steady_tol,
    diffuse,
    filtered_basis,
    predicted_basis,
    smoothed_mean,
    smoothed_cov,
    lag_one_cov,
    smoothed_basis,
    status,
):  # pragma: no cover
    """RTS smoother of every sequence (arrays zero-initialised; padded steps stay zero).

    Within a steady-state epoch of the filter the gain is reused, and once two successive
    smoothed covariances agree to ``steady_tol`` relative, so are the smoothed and lag-one
    covariances (only the means are updated).
    """
    num_seq, num_steps, dim = filtered_mean.shape
    gain = np.empty((dim, dim))
    chol = np.empty((dim, dim))
    rhs = np.empty((dim, dim))
    diff = np.empty((dim, dim))
    work = np.empty((dim, dim))
    diff_vec = np.empty(dim)
    ss_cov = np.empty((dim, dim))
    ss_lag = np.empty((dim, dim))
    for n in range(num_seq):
        A = transition[n]
        length = lengths[n]
        if length == 0:
            continue
        last = length - 1
        smoothed_mean[n, last] = filtered_mean[n, last]
        smoothed_cov[n, last] = filtered_cov[n, last]
        if diffuse:
            smoothed_basis[n, last] = filtered_basis[n, last]
        cached_epoch = 0
        cov_epoch = 0
        for t in range(last - 1, -1, -1):
            epoch = steady_epoch[n, t]
            if epoch == 0 or epoch != cached_epoch:
                if not _smoother_gain(A, predicted_cov[n, t + 1], filtered_cov[n, t], chol, rhs, gain, dim):
                    status[n] = 1
                    break
                cached_epoch = epoch
            _smoothed_mean_step(
                gain,
                smoothed_mean[n, t + 1],
                predicted_mean[n, t + 1],
                filtered_mean[n, t],
                diff_vec,
                smoothed_mean[n, t],
                dim,
            )
            next_cov = smoothed_cov[n, t + 1]
            if epoch > 0 and epoch == cov_epoch:
                # The backward Riccati recursion has converged within this steady-state epoch.
                smoothed_cov[n, t] = ss_cov
                lag_one_cov[n, t + 1] = ss_lag
            else:
                # cov = P_t + J (next_cov - P_{t+1|t}) J^T; lag_{t+1} = next_cov J^T
                change, scale = _smoothed_cov_step(
                    gain, next_cov, predicted_cov[n, t + 1], filtered_cov[n, t], diff, work, smoothed_cov[n, t], dim
                )
                _times_transpose(next_cov, gain, lag_one_cov[n, t + 1], dim)
                if epoch > 0 and change <= steady_tol * scale:
                    cov_epoch = epoch
                    ss_cov[:, :] = smoothed_cov[n, t]
                    _times_transpose(ss_cov, gain, ss_lag, dim)
            if diffuse:
                for i in range(dim):
                    for j in range(dim):
                        diff[i, j] = smoothed_basis[n, t + 1, i, j] - predicted_basis[n, t + 1, i, j]
                for i in range(dim):
                    for j in range(dim):
                        acc = filtered_basis[n, t, i, j]
                        for k in range(dim):
                            acc += gain[i, k] * diff[k, j]
                        smoothed_basis[n, t, i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_sums_kernel(
    transition,
    filtered_mean,
    filtered_cov,
    predicted_mean,
    predicted_cov,
    cov_source,
    lengths,
    steady_epoch,
    steady_tol,
    incomplete_slot,
    smoothed_mean,
    incomplete_cov,
    sum_cov,
    first_cov,
    last_cov,
    sum_lag,
    status,
):  # pragma: no cover
    """RTS smoother of every sequence that writes no ``T d^2`` array: the smoothed means,
    and the sums of the smoothed covariances the score needs.

    Reads the filter's compact covariances (``cov_source``, see :func:`_filter_kernel`).
    The recursion is :func:`_smoother_kernel`'s, with the same reuse of the gain within a
    steady-state epoch and of the converged smoothed and lag-one covariances once two
    successive smoothed covariances agree to ``steady_tol`` relative; over such a
    converged stretch the sums take count x the converged matrices. Writes, per sequence
    ``n`` of length ``L > 0``: ``smoothed_mean[n, :L]``; ``sum_cov[n]`` = sum of
    :math:`V_t` over ``t < L``, ``first_cov[n]`` = :math:`V_1`, ``last_cov[n]`` = :math:`V_L`,
    ``sum_lag[n]`` = sum of :math:`C_t = \\operatorname{Cov}(s_t, s_{t-1})` over ``1 <= t < L``;
    and :math:`V_t` into ``incomplete_cov[incomplete_slot[n, t]]`` at the steps with a
    missing entry (slot ``>= 0``; only they need their own covariance in the score).
    """
    num_seq, num_steps, dim = filtered_mean.shape
    gain = np.empty((dim, dim))
    chol = np.empty((dim, dim))
    rhs = np.empty((dim, dim))
    diff = np.empty((dim, dim))
    work = np.empty((dim, dim))
    diff_vec = np.empty(dim)
    next_cov = np.empty((dim, dim))  # V_{t+1}
    cov = np.empty((dim, dim))  # V_t
    ss_cov = np.empty((dim, dim))
    ss_lag = np.empty((dim, dim))
    for n in range(num_seq):
        A = transition[n]
        length = lengths[n]
        if length == 0:
            continue
        last = length - 1
        smoothed_mean[n, last] = filtered_mean[n, last]
        next_cov[:, :] = filtered_cov[n, cov_source[n, last]]
        last_cov[n] = next_cov
        sum_cov[n] = next_cov
        sum_lag[n] = 0.0
        if incomplete_slot[n, last] >= 0:
            incomplete_cov[incomplete_slot[n, last]] = next_cov
        cached_epoch = 0
        cov_epoch = 0
        converged = 0  # steps of the current converged stretch not yet added to the sums
        for t in range(last - 1, -1, -1):
            epoch = steady_epoch[n, t]
            if epoch == 0 or epoch != cached_epoch:
                if not _smoother_gain(
                    A, predicted_cov[n, cov_source[n, t + 1]], filtered_cov[n, cov_source[n, t]], chol, rhs, gain, dim
                ):
                    status[n] = 1
                    break
                cached_epoch = epoch
            _smoothed_mean_step(
                gain,
                smoothed_mean[n, t + 1],
                predicted_mean[n, t + 1],
                filtered_mean[n, t],
                diff_vec,
                smoothed_mean[n, t],
                dim,
            )
            if epoch > 0 and epoch == cov_epoch:
                # The backward Riccati recursion has converged within this steady-state epoch
                # (a steady step is fully observed: no incomplete slot to fill).
                converged += 1
                continue
            if converged > 0:
                # Leaving a converged stretch: add it, and V_{t+1} is the converged matrix.
                for i in range(dim):
                    for j in range(dim):
                        sum_cov[n, i, j] += converged * ss_cov[i, j]
                        sum_lag[n, i, j] += converged * ss_lag[i, j]
                converged = 0
                next_cov[:, :] = ss_cov
            # V_t = P_t + J (V_{t+1} - P_{t+1|t}) J^T; C_{t+1} = V_{t+1} J^T
            change, scale = _smoothed_cov_step(
                gain,
                next_cov,
                predicted_cov[n, cov_source[n, t + 1]],
                filtered_cov[n, cov_source[n, t]],
                diff,
                work,
                cov,
                dim,
            )
            _times_transpose(next_cov, gain, work, dim)  # C_{t+1}
            for i in range(dim):
                for j in range(dim):
                    sum_lag[n, i, j] += work[i, j]
                    sum_cov[n, i, j] += cov[i, j]
            if incomplete_slot[n, t] >= 0:
                incomplete_cov[incomplete_slot[n, t]] = cov
            if epoch > 0 and change <= steady_tol * scale:
                cov_epoch = epoch
                ss_cov[:, :] = cov
                _times_transpose(ss_cov, gain, ss_lag, dim)
            next_cov[:, :] = cov
        # Step 0 is never a steady step (the filter decides at t > 0), so a converged stretch
        # has ended inside the loop and next_cov is V_1 here.
        first_cov[n] = next_cov


def _as_numpy(value: Tensor) -> np.ndarray:
    return value.detach().to("cpu", torch.float64).contiguous().numpy()


def _numba_filter(params: _Params, diffuse: bool, store: bool, steady_state: bool) -> _Raw:
    """The filter by :func:`_filter_kernel`; results in the dtype of the observations.

    Without ``store`` only the per-step log densities and the final moments are returned
    (memory ``O(N T + N d^2)``).
    """
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype = observations.dtype
    inputs = [_as_numpy(value) for value in params[:7]]
    lengths = params.lengths.to("cpu", torch.long).contiguous().numpy()
    stored_steps = num_steps if store else 0
    basis_steps = stored_steps if diffuse else 0
    step_ll = np.zeros((num_seq, num_steps))
    final_mean = np.empty((num_seq, state_dim))
    final_cov = np.empty((num_seq, state_dim, state_dim))
    final_basis = np.empty((num_seq, state_dim, state_dim))
    final_info_matrix = np.empty((num_seq, state_dim, state_dim))
    final_info_vector = np.empty((num_seq, state_dim))
    predicted_mean = np.empty((num_seq, stored_steps, state_dim))
    predicted_cov = np.empty((num_seq, stored_steps, state_dim, state_dim))
    filtered_mean = np.empty((num_seq, stored_steps, state_dim))
    filtered_cov = np.empty((num_seq, stored_steps, state_dim, state_dim))
    predicted_basis = np.empty((num_seq, basis_steps, state_dim, state_dim))
    filtered_basis = np.empty((num_seq, basis_steps, state_dim, state_dim))
    info_matrix = np.empty((num_seq, basis_steps, state_dim, state_dim))
    info_vector = np.empty((num_seq, basis_steps, state_dim))
    steady_epoch = np.zeros((num_seq, stored_steps), dtype=np.int64)
    cov_source = np.empty((num_seq, stored_steps), dtype=np.int64)
    incomplete_slot = np.empty((num_seq, stored_steps), dtype=np.int64)
    status = np.zeros(num_seq, dtype=np.int64)
    _filter_kernel(  # type: ignore[call-arg]  # inputs is the 7 model arrays: mypy cannot count a list
        *inputs,
        lengths,
        diffuse,
        _STEADY_TOL if steady_state else 0.0,
        store,
        False,
        step_ll,
        final_mean,
        final_cov,
        final_basis,
        final_info_matrix,
        final_info_vector,
        predicted_mean,
        predicted_cov,
        filtered_mean,
        filtered_cov,
        predicted_basis,
        filtered_basis,
        info_matrix,
        info_vector,
        steady_epoch,
        cov_source,
        incomplete_slot,
        np.zeros(1, np.int64),
        status,
    )
    if status.any():
        raise ValueError(
            "observation_cov: the innovation covariance H P H^T + R is not positive definite "
            f"(sequences {np.nonzero(status)[0].tolist()}); observation_cov must be positive definite"
        )
    device = observations.device
    convert = lambda array: torch.from_numpy(array).to(device=device, dtype=dtype)  # noqa: E731
    return _Raw(
        step_log_likelihood=convert(step_ll),
        filtered_mean=convert(filtered_mean) if store else None,
        filtered_cov=convert(filtered_cov) if store else None,
        predicted_mean=convert(predicted_mean) if store else None,
        predicted_cov=convert(predicted_cov) if store else None,
        filtered_basis=convert(filtered_basis) if store and diffuse else None,
        predicted_basis=convert(predicted_basis) if store and diffuse else None,
        info_matrix=convert(info_matrix) if store and diffuse else None,
        info_vector=convert(info_vector) if store and diffuse else None,
        final_mean=convert(final_mean),
        final_cov=convert(final_cov),
        final_basis=convert(final_basis) if diffuse else None,
        final_info_matrix=convert(final_info_matrix) if diffuse else None,
        final_info_vector=convert(final_info_vector) if diffuse else None,
        steady_epoch=torch.from_numpy(steady_epoch) if store else None,
        valid=_valid_mask(params.lengths, num_steps),
    )


def _numba_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother by :func:`_smoother_kernel`: mean, cov, lag-one cov, basis."""
    filtered_mean = _stored(raw.filtered_mean, "filtered_mean")
    num_seq, num_steps, state_dim = filtered_mean.shape
    diffuse = raw.filtered_basis is not None
    basis_steps = num_steps if diffuse else 0
    smoothed_mean = np.zeros((num_seq, num_steps, state_dim))
    smoothed_cov = np.zeros((num_seq, num_steps, state_dim, state_dim))
    lag_one_cov = np.zeros((num_seq, num_steps, state_dim, state_dim))
    smoothed_basis = np.zeros((num_seq, basis_steps, state_dim, state_dim))
    empty = np.empty((num_seq, 0, state_dim, state_dim))
    status = np.zeros(num_seq, dtype=np.int64)
    _smoother_kernel(
        _as_numpy(params.transition_matrix),
        _as_numpy(filtered_mean),
        _as_numpy(_stored(raw.filtered_cov, "filtered_cov")),
        _as_numpy(_stored(raw.predicted_mean, "predicted_mean")),
        _as_numpy(_stored(raw.predicted_cov, "predicted_cov")),
        params.lengths.to("cpu", torch.long).contiguous().numpy(),
        _stored(raw.steady_epoch, "steady_epoch").contiguous().numpy(),
        _SMOOTHER_STEADY_TOL,
        diffuse,
        _as_numpy(raw.filtered_basis) if raw.filtered_basis is not None else empty,
        _as_numpy(_stored(raw.predicted_basis, "predicted_basis")) if diffuse else empty,
        smoothed_mean,
        smoothed_cov,
        lag_one_cov,
        smoothed_basis,
        status,
    )
    if status.any():
        raise ValueError(
            "transition_cov: a predicted covariance is not positive definite "
            f"(sequences {np.nonzero(status)[0].tolist()}); transition_cov must be positive definite"
        )
    dtype, device = filtered_mean.dtype, filtered_mean.device
    convert = lambda array: torch.from_numpy(array).to(device=device, dtype=dtype)  # noqa: E731
    return (
        convert(smoothed_mean),
        convert(smoothed_cov),
        convert(lag_one_cov),
        convert(smoothed_basis) if diffuse else None,
    )
