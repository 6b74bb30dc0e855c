"""The sequential forward, backward, Viterbi and backward-sampling recursions as numba kernels (CPU, float64).

See :mod:`inference.discrete` for the model, the conventions and the algorithms. The kernels are
compiled lazily, on their first call (``cache=True``: to disk, next to this file). numba checks a
cached kernel against the time stamp of its own file only, so the kernels that call one another
(``_exp_shifted``, ``_inverse_cdf``) all live here.
"""

from __future__ import annotations

import numba
import numpy as np

from ._common import _SAFE_FASTMATH

# --------------------------------------------------------------------------------------
# Numba kernels (CPU, float64, scaled probability space)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH, inline="always")
def _first_step(initial, emitted, unnormalised, alpha):  # pragma: no cover
    """Step 1 of the scaled forward recursion: ``unnormalised = initial * emitted`` and ``alpha``
    that normalised (the two may be the same array). Returns the normalising constant
    (``alpha`` is all zeros when it is 0)."""
    num_states = alpha.shape[0]
    total = 0.0
    for k in range(num_states):
        value = initial[k] * emitted[k]
        unnormalised[k] = value
        total += value
    inv = 1.0 / total if total > 0.0 else 0.0
    for k in range(num_states):
        alpha[k] = unnormalised[k] * inv
    return total


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH, inline="always")
def _forward_step(prev, trans_t, emitted, unnormalised, alpha):  # pragma: no cover
    """One step of the scaled forward recursion, shared by :func:`_forward_kernel` and
    :func:`_categorical_forward_kernel`: ``unnormalised = (prev @ trans) * emitted`` and ``alpha``
    that normalised.

    ``trans_t`` is the transposed (``[to, from]``, C-contiguous) transition matrix, so the product
    is contiguous dot products with its rows, accumulated in a register (reassociation lets LLVM
    vectorise them). ``unnormalised`` must not alias ``prev``; ``alpha`` may alias either (``prev``
    is read only before ``alpha`` is written). Returns the normalising constant (``alpha`` is all
    zeros when it is 0). ``inline="always"``: inlined into the kernels at numba's IR level (as a
    plain call it cost up to 50% at K = 2)."""
    num_states = alpha.shape[0]
    total = 0.0
    for j in range(num_states):
        row = trans_t[j]
        acc = 0.0
        for i in range(num_states):
            acc += prev[i] * row[i]
        acc *= emitted[j]
        unnormalised[j] = acc
        total += acc
    inv = 1.0 / total if total > 0.0 else 0.0
    for j in range(num_states):
        alpha[j] = unnormalised[j] * inv
    return total


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _forward_kernel(initial_probs, transition_probs, emission_probs, lengths, filtered, scales):  # pragma: no cover
    """Scaled forward pass. Writes normalised alphas into ``filtered`` (zeros-initialised)
    and the per-step normalising constants into ``scales`` (1 on padding)."""
    num_seq, num_steps, num_states = emission_probs.shape
    for n in range(num_seq):
        init = initial_probs[0] if initial_probs.shape[0] == 1 else initial_probs[n]
        trans = transition_probs[0] if transition_probs.shape[0] == 1 else transition_probs[n]
        trans_t = np.ascontiguousarray(trans.T)
        length = lengths[n]
        for t in range(length, num_steps):
            scales[n, t] = 1.0
        if length == 0:
            continue
        scales[n, 0] = _first_step(init, emission_probs[n, 0], filtered[n, 0], filtered[n, 0])
        for t in range(1, length):
            cur = filtered[n, t]
            scales[n, t] = _forward_step(filtered[n, t - 1], trans_t, emission_probs[n, t], cur, cur)


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _exp_shifted(log_values, out):  # pragma: no cover
    """``out = exp(log_values - max)`` over all entries; returns the max (0 when it is not finite)."""
    flat = log_values.ravel()
    shift = -np.inf
    for value in flat:
        if value > shift:
            shift = value
    if not np.isfinite(shift):
        shift = 0.0
    out_flat = out.ravel()
    for index in range(flat.size):
        out_flat[index] = np.exp(flat[index] - shift)
    return shift


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _fused_forward_kernel(
    log_initial,
    log_transition,
    log_emission,
    lengths,
    store,
    initial_probs,
    transition_probs,
    emission_probs,
    filtered,
    scales,
    log_normalizer,
):  # pragma: no cover
    """Scaled forward pass from the log potentials themselves (the shifts and ``exp`` done here,
    row by row, instead of as whole-array tensor operations before the call).

    The recursion is written out here rather than calling :func:`_forward_step`: through the
    helper this kernel measured 5-7% slower at K = 8 (the other two forward kernels did not).

    Writes ``log_normalizer`` (N,). With ``store``, also what :func:`_backward_kernel` needs:
    the shifted ``exp`` potentials (``initial_probs`` (NP, K), ``transition_probs`` (NA, K, K),
    ``emission_probs`` (N, T, K)), the normalised alphas ``filtered`` (zeros-initialised) and
    the per-step constants ``scales`` (1 on padding); without it those are not written
    (and may have 0 steps).
    """
    num_seq, num_steps, num_states = log_emission.shape
    init_shifts = np.empty(initial_probs.shape[0])
    trans_shifts = np.empty(transition_probs.shape[0])
    for n in range(initial_probs.shape[0]):
        init_shifts[n] = _exp_shifted(log_initial[n], initial_probs[n])
    for n in range(transition_probs.shape[0]):
        trans_shifts[n] = _exp_shifted(log_transition[n], transition_probs[n])
    alpha = np.empty(num_states)
    cur = np.empty(num_states)
    emitted = np.empty(num_states)
    trans_t = np.empty((num_states, num_states))
    cached = -1
    for n in range(num_seq):
        ni = 0 if initial_probs.shape[0] == 1 else n
        na = 0 if transition_probs.shape[0] == 1 else n
        if na != cached:
            trans_t[:, :] = transition_probs[na].T
            cached = na
        length = lengths[n]
        if store:
            for t in range(length, num_steps):
                scales[n, t] = 1.0
        if length == 0:
            log_normalizer[n] = 0.0
            continue
        total_log = init_shifts[ni] + (length - 1) * trans_shifts[na]
        for t in range(length):
            row = log_emission[n, t]
            shift = -np.inf
            for k in range(num_states):
                if row[k] > shift:
                    shift = row[k]
            if not np.isfinite(shift):
                shift = 0.0
            for k in range(num_states):
                emitted[k] = np.exp(row[k] - shift)
            if store:
                emission_probs[n, t] = emitted
            total = 0.0
            if t == 0:
                for k in range(num_states):
                    value = initial_probs[ni, k] * emitted[k]
                    cur[k] = value
                    total += value
            else:
                for j in range(num_states):
                    weights = trans_t[j]
                    acc = 0.0
                    for i in range(num_states):
                        acc += alpha[i] * weights[i]
                    acc *= emitted[j]
                    cur[j] = acc
                    total += acc
            inv = 1.0 / total if total > 0.0 else 0.0
            for k in range(num_states):
                alpha[k] = cur[k] * inv
            if store:
                scales[n, t] = total
                filtered[n, t] = alpha
            total_log += np.log(total) + shift
        log_normalizer[n] = total_log


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _categorical_forward_kernel(
    log_initial,
    log_transition,
    log_emission_table,
    codes,
    lengths,
    store,
    transition_probs,
    table_probs,
    filtered,
    scales,
    log_normalizer,
):  # pragma: no cover
    """Scaled forward pass with the emission potentials gathered from a table inside the loop.

    ``log_emission_table`` ``(K, V)``: the emission log potential of each state and symbol;
    ``codes`` ``(N, T)`` int64 symbols (padding may hold anything). Writes ``log_normalizer``,
    ``transition_probs`` ``(1, K, K)`` and ``table_probs`` ``(V, K)``, the shifted ``exp``
    potentials; with ``store``, also ``filtered`` and ``scales`` as :func:`_fused_forward_kernel`.
    Nothing of size ``T K`` is formed outside the recursion. Returns ``False`` if a code is
    outside ``[0, V)``.
    """
    num_states, num_symbols = log_emission_table.shape
    num_seq, num_steps = codes.shape
    initial_probs = np.empty(num_states)
    init_shift = _exp_shifted(log_initial, initial_probs)
    trans_shift = _exp_shifted(log_transition, transition_probs[0])
    # Per symbol: exp(log B[:, v] - max_k log B[k, v]) and that max (0 when not finite).
    table_shifts = np.empty(num_symbols)
    for v in range(num_symbols):
        shift = -np.inf
        for k in range(num_states):
            if log_emission_table[k, v] > shift:
                shift = log_emission_table[k, v]
        if not np.isfinite(shift):
            shift = 0.0
        table_shifts[v] = shift
        for k in range(num_states):
            table_probs[v, k] = np.exp(log_emission_table[k, v] - shift)
    trans_t = np.ascontiguousarray(transition_probs[0].T)
    alpha = np.empty(num_states)
    cur = np.empty(num_states)
    for n in range(num_seq):
        length = lengths[n]
        if store:
            for t in range(length, num_steps):
                scales[n, t] = 1.0
        if length == 0:
            log_normalizer[n] = 0.0
            continue
        total_log = init_shift + (length - 1) * trans_shift
        for t in range(length):
            code = codes[n, t]
            if code < 0 or code >= num_symbols:
                return False
            if t == 0:
                total = _first_step(initial_probs, table_probs[code], cur, alpha)
            else:
                total = _forward_step(alpha, trans_t, table_probs[code], cur, alpha)
            if store:
                scales[n, t] = total
                filtered[n, t] = alpha
            total_log += np.log(total) + table_shifts[code]
        log_normalizer[n] = total_log
    return True


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _categorical_backward_kernel(
    transition_probs, table_probs, codes, lengths, filtered, scales, weights, grad_initial, grad_transition, grad_table
):  # pragma: no cover
    """:func:`_backward_kernel` for :func:`_categorical_forward_kernel`'s outputs, summed over the
    batch with ``weights`` (N,) as it goes: ``grad_initial`` (K,) the posterior of the first
    state, ``grad_transition`` (K, K) the expected transition counts, ``grad_table`` (K, V)
    the posterior marginals scattered by symbol (all zeros-initialised). No ``(N, T, K)``
    array is formed besides ``filtered``."""
    num_seq, num_steps = codes.shape
    num_states = filtered.shape[2]
    trans = transition_probs[0]
    trans_t = np.ascontiguousarray(trans.T)
    beta = np.ones(num_states)
    beta_prev = np.empty(num_states)
    step_weights = np.zeros((num_steps, num_states))
    for n in range(num_seq):
        length = lengths[n]
        if length == 0:
            continue
        weight = weights[n]
        beta[:] = 1.0
        code = codes[n, length - 1]
        for k in range(num_states):
            grad_table[k, code] += weight * filtered[n, length - 1, k]
        for t in range(length - 1, 0, -1):
            scale = scales[n, t]
            inv = 1.0 / scale if scale > 0.0 else 0.0
            emitted = table_probs[codes[n, t]]
            step = step_weights[t]
            for j in range(num_states):
                step[j] = emitted[j] * beta[j] * inv
            for i in range(num_states):
                beta_prev[i] = 0.0
            for j in range(num_states):
                value = step[j]
                if value != 0.0:
                    row = trans_t[j]
                    for i in range(num_states):
                        beta_prev[i] += value * row[i]
            beta, beta_prev = beta_prev, beta
            code = codes[n, t - 1]
            for k in range(num_states):
                grad_table[k, code] += weight * filtered[n, t - 1, k] * beta[k]
        for k in range(num_states):
            grad_initial[k] += weight * filtered[n, 0, k] * beta[k]
        if length > 1:
            counts = np.dot(np.ascontiguousarray(filtered[n, : length - 1].T), step_weights[1:length])
            for i in range(num_states):
                for j in range(num_states):
                    grad_transition[i, j] += weight * counts[i, j] * trans[i, j]


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _backward_kernel(
    transition_probs, emission_probs, lengths, filtered, scales, state_marginals, transition_counts
):  # pragma: no cover
    """Scaled backward pass. Writes smoothed marginals and expected transition counts
    (both zeros-initialised) from the outputs of :func:`_forward_kernel`."""
    num_seq, num_steps, num_states = emission_probs.shape
    for n in range(num_seq):
        trans = transition_probs[0] if transition_probs.shape[0] == 1 else transition_probs[n]
        trans_t = np.ascontiguousarray(trans.T)
        length = lengths[n]
        if length == 0:
            continue
        beta = np.ones(num_states)
        beta_prev = np.empty(num_states)
        # weights_t = e_t * beta_t / c_t, kept for all steps: the expected counts
        # sum_t alpha_{t-1} weights_t^T are then one matrix product (BLAS) after the loop
        # instead of a rank-one update per step (the dominant cost at large K).
        step_weights = np.zeros((length, num_states))
        counts = transition_counts[n]
        for k in range(num_states):
            state_marginals[n, length - 1, k] = filtered[n, length - 1, k]
        for t in range(length - 1, 0, -1):
            scale = scales[n, t]
            inv = 1.0 / scale if scale > 0.0 else 0.0
            weights = step_weights[t]
            for j in range(num_states):
                weights[j] = emission_probs[n, t, j] * beta[j] * inv
            prev = filtered[n, t - 1]
            for i in range(num_states):
                beta_prev[i] = 0.0
            # beta_prev = trans @ weights, as contiguous updates with rows of trans.T.
            for j in range(num_states):
                weight = weights[j]
                if weight != 0.0:
                    row = trans_t[j]
                    for i in range(num_states):
                        beta_prev[i] += weight * row[i]
            beta, beta_prev = beta_prev, beta
            for k in range(num_states):
                state_marginals[n, t - 1, k] = prev[k] * beta[k]
        if length > 1:
            counts[:, :] = np.dot(np.ascontiguousarray(filtered[n, : length - 1].T), step_weights[1:])
        for i in range(num_states):
            for j in range(num_states):
                counts[i, j] *= trans[i, j]


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _viterbi_kernel(log_initial, log_transition_t, log_emission, lengths, paths, log_joint):  # pragma: no cover
    """Max-product in log space with int32 back-pointers; ``log_transition_t`` is ``[to, from]``.
    ``paths`` must be filled with -1 and ``log_joint`` with 0."""
    num_seq, num_steps, num_states = log_emission.shape
    for n in range(num_seq):
        init = log_initial[0] if log_initial.shape[0] == 1 else log_initial[n]
        trans_t = log_transition_t[0] if log_transition_t.shape[0] == 1 else log_transition_t[n]
        length = lengths[n]
        if length == 0:
            continue
        backpointers = np.empty((length, num_states), dtype=np.int32)
        delta = np.empty(num_states)
        new_delta = np.empty(num_states)
        for k in range(num_states):
            delta[k] = init[k] + log_emission[n, 0, k]
        for t in range(1, length):
            for j in range(num_states):
                row = trans_t[j]
                best = delta[0] + row[0]
                best_index = 0
                for i in range(1, num_states):
                    score = delta[i] + row[i]
                    if score > best:
                        best = score
                        best_index = i
                new_delta[j] = best + log_emission[n, t, j]
                backpointers[t, j] = best_index
            delta, new_delta = new_delta, delta
        best = delta[0]
        state = 0
        for k in range(1, num_states):
            if delta[k] > best:
                best = delta[k]
                state = k
        log_joint[n] = best
        paths[n, length - 1] = state
        for t in range(length - 1, 0, -1):
            state = backpointers[t, state]
            paths[n, t - 1] = state


@numba.njit(cache=True)
def _inverse_cdf(weights, uniform):  # pragma: no cover
    """Index drawn from unnormalised ``weights`` with one uniform in [0, 1)."""
    total = 0.0
    for k in range(weights.shape[0]):
        total += weights[k]
    target = uniform * total
    cumulative = 0.0
    index = 0
    for k in range(weights.shape[0]):
        cumulative += weights[k]
        if cumulative <= target:
            index += 1
    return min(index, weights.shape[0] - 1)


@numba.njit(cache=True, nogil=True, fastmath=_SAFE_FASTMATH)
def _backward_sample_kernel(transition_probs, filtered, lengths, uniforms, paths):  # pragma: no cover
    """Backward sampling from filtered marginals; ``paths`` (S, N, T) prefilled with -1."""
    num_samples = uniforms.shape[0]
    num_seq, num_steps, num_states = filtered.shape
    for n in range(num_seq):
        trans = transition_probs[0] if transition_probs.shape[0] == 1 else transition_probs[n]
        length = lengths[n]
        if length == 0:
            continue
        weights = np.empty(num_states)
        for s in range(num_samples):
            for k in range(num_states):
                weights[k] = filtered[n, length - 1, k]
            state = _inverse_cdf(weights, uniforms[s, n, length - 1])
            paths[s, n, length - 1] = state
            for t in range(length - 2, -1, -1):
                for k in range(num_states):
                    weights[k] = filtered[n, t, k] * trans[k, state]
                state = _inverse_cdf(weights, uniforms[s, n, t])
                paths[s, n, t] = state
