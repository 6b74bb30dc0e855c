"""The log marginal's gradient by the smoother (Fisher's identity), numba (CPU, float64).

See :mod:`inference.kalman` for the model, the conventions and the algorithms. The kernels are
compiled lazily, on their first call (``cache=True``: to disk, next to this file).

numba checks a cached kernel against the time stamp of its own file only: the kernels here
call ``_cholesky_in_place`` and ``_forward_substitute`` of :mod:`._numba`, so after editing
those, touch this file (or delete ``__pycache__``) or the stale compiled code is reused.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from ._common import _FASTMATH, _SMOOTHER_STEADY_TOL, _STEADY_TOL, _Params, _symmetrise
from ._numba import (
    _as_numpy,
    _cholesky_in_place,
    _filter_kernel,
    _forward_substitute,
    _smoother_kernel,
    _smoother_sums_kernel,
)
from .diffuse import _not_identified_error

# --------------------------------------------------------------------------------------
# Gradient of the log marginal by the smoother (Fisher's identity), numba (CPU, float64)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _back_substitute(chol, size, rhs, num_cols):  # pragma: no cover
    """``rhs[:size, :num_cols] <- chol[:size, :size]^{-T} rhs`` (``chol`` lower triangular)."""
    for i in range(size - 1, -1, -1):
        inv = 1.0 / chol[i, i]
        for c in range(num_cols):
            acc = rhs[i, c]
            for k in range(i + 1, size):
                acc -= chol[k, i] * rhs[k, c]
            rhs[i, c] = acc * inv


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _spd_inverse(matrix, size, chol, out):  # pragma: no cover
    """``out[:size, :size] <- matrix[:size, :size]^{-1}`` by Cholesky; False if not positive definite."""
    chol[:size, :size] = matrix[:size, :size]
    if not _cholesky_in_place(chol, size):
        return False
    out[:size, :size] = 0.0
    for i in range(size):
        out[i, i] = 1.0
    _forward_substitute(chol, size, out, size)
    _back_substitute(chol, size, out, size)
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _sandwich(left, middle, out, work):  # pragma: no cover
    """``out <- left @ middle @ left.T`` for ``left`` (a, b), ``middle`` (b, b); ``work`` (a, b)."""
    rows, inner = left.shape
    for i in range(rows):
        for j in range(inner):
            acc = 0.0
            for k in range(inner):
                acc += left[i, k] * middle[k, j]
            work[i, j] = acc
    for i in range(rows):
        for j in range(rows):
            acc = 0.0
            for k in range(inner):
                acc += work[i, k] * left[j, k]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _score_kernel(
    transition,
    transition_cov,
    obs_matrix,
    obs_cov,
    initial_mean,
    initial_cov,
    observations,
    lengths,
    smoothed_mean,
    sum_cov,
    first_cov,
    last_cov,
    sum_lag,
    incomplete_slot,
    incomplete_cov,
    diffuse,
    observation_grad,
    state_rows,
    state_rows2,
    obs_rows,
    obs_rows2,
    grad_transition,
    grad_transition_cov,
    grad_obs_matrix,
    grad_obs_cov,
    grad_initial_mean,
    grad_initial_cov,
    grad_observations,
    status,
):  # pragma: no cover
    """Score of every sequence by Fisher's identity from its smoothed means and the sums of
    its smoothed covariances (gradients zero-initialised; arrays as :func:`_smoother_sums_kernel`).

    ``status[n]`` is 1 when ``transition_cov``, 2 when ``observation_cov`` (or a sub-block of
    it), 3 when ``initial_cov`` is not positive definite. The sums over the steps
    (``sum r_t r_t^T``, ``sum r_t E[s_{t-1}]^T``, and over the fully observed steps
    ``sum w_t E[s_t]^T``, ``sum w_t w_t^T``) are matrix products (BLAS) into the scratch
    rows ``state_rows``, ``state_rows2`` ``(T, d)``, ``obs_rows``, ``obs_rows2`` ``(T, p)``
    (allocated by numpy, once per call: arrays allocated in here page-fault on every call);
    only the steps with a missing entry are visited one by one. Without
    ``observation_grad`` the fully observed steps' ``grad_observations`` are not written.
    """
    num_seq, num_steps, obs_dim = observations.shape
    dim = transition.shape[1]
    sum_rr = np.empty((dim, dim))  # sum r_t r_t^T, r_t = E[s_t] - A E[s_{t-1}]
    sum_rs = np.empty((dim, dim))  # sum r_t E[s_{t-1}]^T
    sum_prev = np.empty((dim, dim))  # sum Cov(s_{t-1})
    sum_next = np.empty((dim, dim))  # sum Cov(s_t), t >= 2
    sum_full = np.empty((dim, dim))  # sum Cov(s_t) over fully observed steps
    residual = np.empty(dim)
    square = np.empty((dim, dim))
    square2 = np.empty((dim, dim))
    inverse = np.empty((dim, dim))
    chol_state = np.empty((dim, dim))
    obs_inverse = np.empty((obs_dim, obs_dim))
    chol_obs = np.empty((obs_dim, obs_dim))
    sub_cov = np.empty((obs_dim, obs_dim))
    sub_inverse = np.empty((obs_dim, obs_dim))
    white = np.empty((obs_dim, 1))
    gain = np.empty((obs_dim, dim))  # R_O^{-1} H_O
    gain_cov = np.empty((obs_dim, dim))  # R_O^{-1} H_O Cov(s_t)
    observed = np.empty(obs_dim, np.int64)
    full_steps = np.empty(num_steps, np.int64)
    for n in range(num_seq):
        length = lengths[n]
        if length == 0:
            continue
        A = transition[n]
        Q = transition_cov[n]
        H = obs_matrix[n]
        R = obs_cov[n]
        mean = smoothed_mean[n]
        # -- transitions: grad_A = Q^{-1} E[sum (s_t - A s_{t-1}) s_{t-1}^T],
        #    grad_Q = Q^{-1} (E[sum (s_t - A s_{t-1})(.)^T] - (L-1) Q) Q^{-1} / 2
        if length > 1:
            for i in range(dim):
                for j in range(dim):
                    sum_next[i, j] = sum_cov[n, i, j] - first_cov[n, i, j]
                    sum_prev[i, j] = sum_cov[n, i, j] - last_cov[n, i, j]
            # Residuals r_t = E[s_t] - A E[s_{t-1}] as rows; their sums of outer products by BLAS.
            previous = mean[: length - 1]
            residuals = state_rows[: length - 1]
            np.dot(previous, np.ascontiguousarray(A.T), residuals)
            for t in range(length - 1):
                for i in range(dim):
                    residuals[t, i] = mean[t + 1, i] - residuals[t, i]
            np.dot(residuals.T, residuals, sum_rr)
            np.dot(residuals.T, previous, sum_rs)
            if not _spd_inverse(Q, dim, chol_state, inverse):
                status[n] = 1
                continue
            # square = sum_rs + sum_lag - A sum_prev  (the expected sum of (s_t - A s_{t-1}) s_{t-1}^T)
            for i in range(dim):
                for j in range(dim):
                    acc = sum_rs[i, j] + sum_lag[n, i, j]
                    for k in range(dim):
                        acc -= A[i, k] * sum_prev[k, j]
                    square[i, j] = acc
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += inverse[i, k] * square[k, j]
                    grad_transition[n, i, j] = acc
            # square2 = E[sum (s_t - A s_{t-1})(.)^T] - (L-1) Q
            #         = sum_rr + sum_next - sum_lag A^T - A sum_lag^T + A sum_prev A^T - (L-1) Q
            _sandwich(A, sum_prev, square2, square)
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc -= sum_lag[n, i, k] * A[j, k] + A[i, k] * sum_lag[n, j, k]
                    square[i, j] = acc
            for i in range(dim):
                for j in range(dim):
                    square2[i, j] += square[i, j] + sum_rr[i, j] + sum_next[i, j] - (length - 1) * Q[i, j]
            _sandwich(inverse, square2, square, sum_rr)
            for i in range(dim):
                for j in range(dim):
                    grad_transition_cov[n, i, j] = 0.25 * (square[i, j] + square[j, i])
        # -- observations: the gradient of sum_t log N(x_t; H s_t, R) in expectation.
        if not _spd_inverse(R, obs_dim, chol_obs, obs_inverse):
            status[n] = 2
            continue
        sum_full[:, :] = sum_cov[n]
        num_full = 0
        for t in range(length):
            slot = incomplete_slot[n, t]
            if slot < 0:
                full_steps[num_full] = t
                num_full += 1
                continue
            # sum_full = sum_cov minus the steps that are not fully observed (rare).
            cov = incomplete_cov[slot]
            for i in range(dim):
                for j in range(dim):
                    sum_full[i, j] -= cov[i, j]
            num_obs = 0
            for j in range(obs_dim):
                if not np.isnan(observations[n, t, j]):
                    observed[num_obs] = j
                    num_obs += 1
            if num_obs == 0:
                continue
            # The marginal model of the observed entries O: R_O = R[O, O], H_O = H[O].
            for a in range(num_obs):
                for b in range(num_obs):
                    sub_cov[a, b] = R[observed[a], observed[b]]
            if not _spd_inverse(sub_cov, num_obs, chol_obs, sub_inverse):
                status[n] = 2
                break
            for a in range(num_obs):
                row = observed[a]
                acc = observations[n, t, row]
                for j in range(dim):
                    acc -= H[row, j] * mean[t, j]
                white[a, 0] = acc
            for a in range(num_obs):
                acc = 0.0
                for b in range(num_obs):
                    acc += sub_inverse[a, b] * white[b, 0]
                grad_observations[n, t, observed[a]] = -acc
                for j in range(dim):
                    acc2 = 0.0
                    for b in range(num_obs):
                        acc2 += sub_inverse[a, b] * H[observed[b], j]
                    gain[a, j] = acc2
            for a in range(num_obs):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += gain[a, k] * cov[k, j]
                    gain_cov[a, j] = acc
            for a in range(num_obs):
                row = observed[a]
                w_a = -grad_observations[n, t, row]
                for j in range(dim):
                    grad_obs_matrix[n, row, j] += w_a * mean[t, j] - gain_cov[a, j]
                for b in range(num_obs):
                    acc = 0.0
                    for k in range(dim):
                        acc += gain_cov[a, k] * gain[b, k]
                    w_b = -grad_observations[n, t, observed[b]]
                    grad_obs_cov[n, row, observed[b]] += 0.5 * (w_a * w_b + acc - sub_inverse[a, b])
        if status[n] != 0:
            continue
        if num_full > 0:
            # The fully observed steps as rows: w_t = R^{-1} (x_t - H E[s_t]) (R^{-1} symmetric).
            # e_t = x_t - H E[s_t]; sum w_t E[s_t]^T = R^{-1} sum e_t E[s_t]^T, sum w_t w_t^T = R^{-1} (sum e_t e_t^T) R^{-1}.
            if num_full == length:
                full_mean = mean[:length]
                full_obs = observations[n, :length]
            else:
                full_mean = state_rows2[:num_full]
                full_obs = obs_rows2[:num_full]
                for k in range(num_full):
                    full_mean[k] = mean[full_steps[k]]
                    full_obs[k] = observations[n, full_steps[k]]
            errors = obs_rows[:num_full]
            np.dot(full_mean, np.ascontiguousarray(H.T), errors)
            for k in range(num_full):
                for a in range(obs_dim):
                    errors[k, a] = full_obs[k, a] - errors[k, a]
            sum_ws = np.dot(obs_inverse, np.dot(errors.T, full_mean))
            sum_ww = np.dot(obs_inverse, np.dot(np.dot(errors.T, errors), obs_inverse))
            if observation_grad:
                weighted = obs_rows2[:num_full]  # w_t as rows (R^{-1} symmetric)
                np.dot(errors, obs_inverse, weighted)
                for k in range(num_full):
                    t = full_steps[k]
                    for a in range(obs_dim):
                        grad_observations[n, t, a] = -weighted[k, a]
            # gain = R^{-1} H; grad_H += sum_ws - gain sum_full; grad_R += (sum_ww + gain sum_full gain^T - n R^{-1}) / 2
            for a in range(obs_dim):
                for j in range(dim):
                    acc = 0.0
                    for b in range(obs_dim):
                        acc += obs_inverse[a, b] * H[b, j]
                    gain[a, j] = acc
            _sandwich(gain, sum_full, sub_cov, gain_cov)
            for a in range(obs_dim):
                for j in range(dim):
                    grad_obs_matrix[n, a, j] += sum_ws[a, j] - gain_cov[a, j]
                for b in range(obs_dim):
                    grad_obs_cov[n, a, b] += 0.5 * (sum_ww[a, b] + sub_cov[a, b] - num_full * obs_inverse[a, b])
        # -- the initial state (not with the diffuse start, whose prior has no parameters)
        if not diffuse:
            if not _spd_inverse(initial_cov[n], dim, chol_state, inverse):
                status[n] = 3
                continue
            for i in range(dim):
                residual[i] = mean[0, i] - initial_mean[n, i]
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += inverse[i, j] * residual[j]
                grad_initial_mean[n, i] = acc
            for i in range(dim):
                for j in range(dim):
                    square2[i, j] = residual[i] * residual[j] + first_cov[n, i, j] - initial_cov[n, i, j]
            _sandwich(inverse, square2, square, sum_rr)
            for i in range(dim):
                for j in range(dim):
                    grad_initial_cov[n, i, j] = 0.25 * (square[i, j] + square[j, i])


_SCORE_ERRORS = {1: "transition_cov", 2: "observation_cov", 3: "initial_cov"}


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _initial_posterior_kernel(info_matrix, info_vector, chol, mean, cov):  # pragma: no cover
    """:func:`_initial_posterior` of one sequence: ``mean <- S^{-1} b``, ``cov <- S^{-1}``.

    Returns ``(identified, b^T S^{-1} b / 2 - log|S| / 2)``, with the same test of
    identification (pivots and diagonal against ``1e3 d eps``).
    """
    dim = info_vector.shape[0]
    tol = 1e3 * dim * 2.220446049250313e-16
    largest = 0.0
    for i in range(dim):
        for j in range(dim):
            chol[i, j] = 0.5 * (info_matrix[i, j] + info_matrix[j, i])
        mean[i] = chol[i, i]  # the diagonal, kept for the pivot test
        largest = max(largest, chol[i, i])
    if not largest > 0.0:
        return False, 0.0
    for i in range(dim):
        if not mean[i] > tol * largest:
            return False, 0.0
    if not _cholesky_in_place(chol, dim):
        return False, 0.0
    log_det_half = 0.0
    for i in range(dim):
        if not chol[i, i] * chol[i, i] > tol * mean[i]:
            return False, 0.0
        log_det_half += np.log(chol[i, i])
    for i in range(dim):
        cov[i, 0] = info_vector[i]
    _forward_substitute(chol, dim, cov, 1)
    _back_substitute(chol, dim, cov, 1)
    quadratic = 0.0
    for i in range(dim):
        mean[i] = cov[i, 0]
        quadratic += info_vector[i] * mean[i]
    cov[:, :] = 0.0
    for i in range(dim):
        cov[i, i] = 1.0
    _forward_substitute(chol, dim, cov, dim)
    _back_substitute(chol, dim, cov, dim)
    return True, 0.5 * quadratic - log_det_half


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _initial_posteriors(
    info_matrix, info_vector, lengths, posterior_mean, posterior_cov, log_normalizer, status
):  # pragma: no cover
    """:func:`_initial_posterior_kernel` of every sequence of positive length; ``status[n] = 1``
    where the state is not identified."""
    num_seq, dim = info_vector.shape
    chol = np.empty((dim, dim))
    for n in range(num_seq):
        if lengths[n] == 0:
            continue
        identified, value = _initial_posterior_kernel(
            info_matrix[n], info_vector[n], chol, posterior_mean[n], posterior_cov[n]
        )
        if not identified:
            status[n] = 1
        log_normalizer[n] = value


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _combine_diffuse_kernel(
    lengths, smoothed_basis, posterior_mean, posterior_cov, smoothed_mean, smoothed_cov, lag_one_cov
):  # pragma: no cover
    """In place, as :func:`rts_smoother`: :math:`E[s_t] = m_t + X_t \\hat s`,
    :math:`\\operatorname{Cov}(s_t) = P_t + X_t S^{-1} X_t^\top`,
    :math:`\\operatorname{Cov}(s_t, s_{t-1}) \\mathrel{+}= X_t S^{-1} X_{t-1}^\top`."""
    num_seq, _num_steps, dim = smoothed_mean.shape
    work = np.empty((dim, dim))
    work2 = np.empty((dim, dim))
    for n in range(num_seq):
        for t in range(lengths[n]):
            basis = smoothed_basis[n, t]
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += basis[i, j] * posterior_mean[n, j]
                smoothed_mean[n, t, i] += acc
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += basis[i, k] * posterior_cov[n, k, j]
                    work[i, j] = acc  # X_t S^{-1}
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += work[i, k] * basis[j, k]
                    work2[i, j] = acc
            for i in range(dim):
                for j in range(i + 1):
                    value = 0.5 * ((smoothed_cov[n, t, i, j] + work2[i, j]) + (smoothed_cov[n, t, j, i] + work2[j, i]))
                    smoothed_cov[n, t, i, j] = value
                    smoothed_cov[n, t, j, i] = value
            if t > 0:
                previous = smoothed_basis[n, t - 1]
                for i in range(dim):
                    for j in range(dim):
                        acc = 0.0
                        for k in range(dim):
                            acc += work[i, k] * previous[j, k]
                        lag_one_cov[n, t, i, j] += acc


def _fused(
    params: _Params, diffuse: bool, steady_state: bool, with_score: bool, observation_grad: bool = True
) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
    """Log marginal ``(N,)`` and, with ``with_score``, the gradients of its sum w.r.t. the
    seven inputs (``(N, ...)``, float64), on numpy arrays with no torch work per call.
    Without ``observation_grad`` the gradient w.r.t. the observations is left zero at the
    fully observed steps (it is not asked for).

    With ``diffuse``, a filter pass from ``c = 0`` (nothing stored) and the posterior mean of
    :math:`S_1` as the reference point ``c`` (see :func:`_run_filter`); the filter from there
    (moments stored only with ``with_score``) and the diffuse term; then the RTS smoother,
    the combination of its conditional moments with the posterior of :math:`S_1` (as
    :func:`rts_smoother`), the sums of the smoothed covariances, and :func:`_score_kernel`.
    Without ``diffuse`` the filter stores its covariances compactly (one pair per
    steady-state epoch) and :func:`_smoother_sums_kernel` forms the sums as it goes, so no
    ``T d^2`` array is written (the diffuse basis :math:`X_t` is per step anyway). Each
    kernel is called from Python: called from inside another compiled function, LLVM no
    longer vectorises their loops (8x slower at d = 16).
    """
    inputs = [_as_numpy(value) for value in params[:7]]
    observations = inputs[6]
    num_seq, num_steps, obs_dim = observations.shape
    dim = inputs[0].shape[-1]
    lengths = params.lengths.to("cpu", torch.long).contiguous().numpy()
    steady_tol = _STEADY_TOL if steady_state else 0.0
    stored = num_steps if with_score else 0
    status = np.zeros(num_seq, dtype=np.int64)

    def filter_pass(start: np.ndarray, store: bool) -> dict[str, np.ndarray]:
        steps = stored if store else 0
        basis = steps if diffuse else 0
        # np.empty leaves untouched pages unmapped: the compact filter's skipped steps cost nothing.
        arrays = dict(
            step_ll=np.zeros((num_seq, num_steps)),
            final_mean=np.empty((num_seq, dim)),
            final_cov=np.empty((num_seq, dim, dim)),
            final_basis=np.empty((num_seq, dim, dim)),
            final_info_matrix=np.empty((num_seq, dim, dim)),
            final_info_vector=np.empty((num_seq, dim)),
            predicted_mean=np.empty((num_seq, steps, dim)),
            predicted_cov=np.empty((num_seq, steps, dim, dim)),
            filtered_mean=np.empty((num_seq, steps, dim)),
            filtered_cov=np.empty((num_seq, steps, dim, dim)),
            predicted_basis=np.empty((num_seq, basis, dim, dim)),
            filtered_basis=np.empty((num_seq, basis, dim, dim)),
            info_matrix=np.empty((num_seq, basis, dim, dim)),
            info_vector=np.empty((num_seq, basis, dim)),
            steady_epoch=np.zeros((num_seq, steps), np.int64),
            cov_source=np.empty((num_seq, steps), np.int64),
            incomplete_slot=np.full((num_seq, steps), -1, np.int64),
            num_incomplete=np.zeros(1, np.int64),
        )
        _filter_kernel(  # type: ignore[call-arg]  # fixed-length lists of arrays: mypy cannot count them
            *inputs[:4],
            start,
            inputs[5],
            observations,
            lengths,
            diffuse,
            steady_tol,
            store,
            not diffuse,
            *arrays.values(),
            status,
        )
        if status.any():
            raise ValueError(
                "observation_cov: the innovation covariance H P H^T + R is not positive definite "
                f"(sequences {np.nonzero(status)[0].tolist()}); observation_cov must be positive definite"
            )
        return arrays

    def posterior(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, cov, value = np.zeros((num_seq, dim)), np.zeros((num_seq, dim, dim)), np.zeros(num_seq)
        _initial_posteriors(arrays["final_info_matrix"], arrays["final_info_vector"], lengths, mean, cov, value, status)
        if status.any():
            raise _not_identified_error(torch.from_numpy(status == 0))
        return mean, cov, value

    start = inputs[4]
    if diffuse:
        start, _, _ = posterior(filter_pass(np.zeros((num_seq, dim)), False))
    filtered = filter_pass(start, with_score)
    log_normalizer = filtered["step_ll"].sum(-1)
    if diffuse:
        posterior_mean, posterior_cov, diffuse_term = posterior(filtered)
        log_normalizer += diffuse_term
    if not with_score:
        return log_normalizer, None
    # The valid steps with a missing entry, numbered by the filter: the score needs their own covariances.
    incomplete_slot, num_incomplete = filtered["incomplete_slot"], int(filtered["num_incomplete"][0])
    smoothed_mean = np.empty((num_seq, num_steps, dim))  # written at every step read below
    sums = [np.zeros((num_seq, dim, dim)) for _ in range(4)]  # sum V_t, V_1, V_L, sum C_t
    if diffuse:
        smoothed_cov = np.empty((num_seq, num_steps, dim, dim))
        lag_one_cov = np.empty((num_seq, num_steps, dim, dim))  # step 0 is never read
        smoothed_basis = np.empty((num_seq, num_steps, dim, dim))
        _smoother_kernel(
            inputs[0],
            filtered["filtered_mean"],
            filtered["filtered_cov"],
            filtered["predicted_mean"],
            filtered["predicted_cov"],
            lengths,
            filtered["steady_epoch"],
            _SMOOTHER_STEADY_TOL,
            diffuse,
            filtered["filtered_basis"],
            filtered["predicted_basis"],
            smoothed_mean,
            smoothed_cov,
            lag_one_cov,
            smoothed_basis,
            status,
        )
    else:
        incomplete_cov = np.empty((num_incomplete, dim, dim))
        _smoother_sums_kernel(  # type: ignore[call-arg]  # sums is a list of 4 arrays: mypy cannot count it
            inputs[0],
            filtered["filtered_mean"],
            filtered["filtered_cov"],
            filtered["predicted_mean"],
            filtered["predicted_cov"],
            filtered["cov_source"],
            lengths,
            filtered["steady_epoch"],
            _SMOOTHER_STEADY_TOL,
            incomplete_slot,
            smoothed_mean,
            incomplete_cov,
            *sums,
            status,
        )
    if status.any():
        raise ValueError(
            "transition_cov: a predicted covariance is not positive definite "
            f"(sequences {np.nonzero(status)[0].tolist()}); transition_cov must be positive definite"
        )
    if diffuse:
        _combine_diffuse_kernel(
            lengths, smoothed_basis, posterior_mean, posterior_cov, smoothed_mean, smoothed_cov, lag_one_cov
        )
        for n, length in enumerate(lengths):
            if length > 0:
                sums[0][n] = smoothed_cov[n, :length].sum(0)
                sums[1][n], sums[2][n] = smoothed_cov[n, 0], smoothed_cov[n, length - 1]
                sums[3][n] = lag_one_cov[n, 1:length].sum(0)
        incomplete_cov = np.ascontiguousarray(smoothed_cov[incomplete_slot >= 0])  # in slot order
    grads = tuple(np.zeros((num_seq, *value.shape[1:])) for value in inputs)
    rows = [np.empty((num_steps, size)) for size in (dim, dim, obs_dim, obs_dim)]  # the score's scratch
    _score_kernel(  # type: ignore[call-arg]  # fixed-length lists of arrays: mypy cannot count them
        *inputs,
        lengths,
        smoothed_mean,
        *sums,
        incomplete_slot,
        incomplete_cov,
        diffuse,
        observation_grad,
        *rows,
        *grads,
        status,
    )
    if status.any():
        code = int(status[status != 0][0])
        raise ValueError(
            f"{_SCORE_ERRORS[code]}: not positive definite (sequences {np.nonzero(status == code)[0].tolist()})"
        )
    return log_normalizer, grads


class _LogMarginal(torch.autograd.Function):
    r"""Log marginal by the numba filter; its gradient by one smoother pass (Fisher's identity).

    The score of the model is the posterior expectation of the complete-data score,
    :math:`\nabla_\theta \log p(x) = E[\nabla_\theta \log p(s, x) \mid x]`, which for a
    linear-Gaussian model is a closed form of the smoothed moments
    :math:`\hat s_t = E[s_t]`, :math:`V_t = \operatorname{Cov}(s_t)`,
    :math:`C_t = \operatorname{Cov}(s_t, s_{t-1})` (given :math:`x_{1:L}`). With
    :math:`r_t = \hat s_t - A \hat s_{t-1}` and the sums over :math:`t = 2..L`,

    .. math::

        \partial_A = Q^{-1} \textstyle\sum (r_t \hat s_{t-1}^\top + C_t - A V_{t-1}), \quad
        \partial_Q = \tfrac12 Q^{-1} \big(\textstyle\sum [r_t r_t^\top + V_t - C_t A^\top
        - A C_t^\top + A V_{t-1} A^\top] - (L-1) Q\big) Q^{-1};

    per step, over its observed entries :math:`O` (:math:`e_t = x_O - H_O \hat s_t`,
    :math:`w_t = R_O^{-1} e_t`, :math:`Z_t = R_O^{-1} H_O`):
    :math:`\partial_{H_O} \mathrel{+}= w_t \hat s_t^\top - Z_t V_t`,
    :math:`\partial_{R_O} \mathrel{+}= \tfrac12 (w_t w_t^\top + Z_t V_t Z_t^\top - R_O^{-1})`,
    :math:`\partial_{x_O} = -w_t` (0 at missing entries and padding); and
    :math:`\partial_{\mu_0} = \Sigma_0^{-1} u`, :math:`\partial_{\Sigma_0} = \tfrac12
    \Sigma_0^{-1} (u u^\top + V_1 - \Sigma_0) \Sigma_0^{-1}` with :math:`u = \hat s_1 - \mu_0`
    (zero with the diffuse start, whose limit :math:`\kappa \to \infty` leaves only the
    flat-prior posterior in the expectation). Covariance inputs are read through their
    symmetric part, so their gradients are symmetric. Sums of the moments' covariances
    rather than of raw second moments keep the cancellation small when the states are far
    from 0. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx,
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        initial_mean,
        initial_cov,
        observations,
        lengths,
        diffuse,
        steady_state,
    ):
        # The score is computed here, with the value, in the same compiled call (the filter's
        # moments are then used at once and never leave the kernel); backward only scales it.
        params = _Params(
            transition_matrix,
            _symmetrise(transition_cov),
            observation_matrix,
            _symmetrise(observation_cov),
            initial_mean,
            _symmetrise(initial_cov),
            observations,
            lengths,
        )
        log_normalizer, ctx.score = _fused(
            params, diffuse, steady_state, with_score=True, observation_grad=ctx.needs_input_grad[6]
        )
        ctx.dtype, ctx.device = observations.dtype, observations.device
        return torch.from_numpy(log_normalizer).to(device=observations.device, dtype=observations.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        scale = grad_output.detach().to("cpu", torch.float64).numpy()
        results: list[Tensor | None] = []
        for needed, grad in zip(ctx.needs_input_grad[:7], ctx.score):
            if not needed:
                results.append(None)
                continue
            results.append(
                torch.from_numpy(grad * scale.reshape(-1, *(1,) * (grad.ndim - 1))).to(
                    device=ctx.device, dtype=ctx.dtype
                )
            )
        return (*results, None, None, None)
