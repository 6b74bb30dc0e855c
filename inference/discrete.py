r"""Exact inference kernels for discrete-state Markov chains (hidden Markov models).

Every function takes the same three potentials and optional lengths:

* ``log_initial``    ``(K,)`` or ``(N, K)``: log potentials of :math:`s_1`;
* ``log_transition`` ``(K, K)`` or ``(N, K, K)``: log potentials indexed ``[from, to]``;
* ``log_emission``   ``(N, T, K)``: :math:`\log p(x_t \mid s_t = k)`; padded steps are ignored;
* ``lengths``        ``(N,)`` integer or ``None`` (every sequence has ``T`` steps).

Potentials need not be normalised: the log normaliser is

.. math:: \log Z = \log \sum_{s_{1:L}} \pi(s_1) e(1, s_1) \prod_{t=2}^{L} A(s_{t-1}, s_t) e(t, s_t),

and a length-0 sequence has :math:`\log Z = 0`. Outputs have the dtype and device of
``log_emission``.

Algorithms
----------
*Sequential, scaled probability space.* The forward recursion
:math:`\alpha_t = (\alpha_{t-1} \tilde A) \circ \tilde e_t`, renormalised at every step,
with :math:`\tilde e_t = \exp(\log e_t - \max_k \log e_{t,k})` and
:math:`\tilde A = \exp(\log A - \max \log A)`; the log normaliser is the sum of the
log normalising constants :math:`\log c_t` plus the subtracted maxima. The backward
recursion :math:`\beta_{t-1} = \tilde A (\tilde e_t \circ \beta_t) / c_t` gives the
smoothed marginals :math:`\gamma_t = \alpha_t \circ \beta_t` and the expected transition
counts :math:`\sum_t \alpha_{t-1}(i) \tilde A_{ij} \tilde e_t(j) \beta_t(j) / c_t`.
These are exactly the gradients of :math:`\log Z` with respect to ``log_emission``,
``log_transition`` and ``log_initial``, so :func:`log_marginal` is a
:class:`torch.autograd.Function` whose backward pass is one backward recursion (exact,
not a finite-difference or unrolled graph). On CPU the recursions are numba kernels in
float64 (float32 inputs are converted and results cast back), looping over sequences in
one compiled call; they run single-threaded (and release the GIL) because numba's
OpenMP pool spin-waits against torch's own threads and slowed the surrounding
tensor code several-fold. On other devices a torch loop over time does the same in the
input dtype.
Scaling keeps every quantity in ``[0, 1]``; its only failure mode is a transition
potential more than ~700 nats below the largest one on every path carrying the mass, which
underflows to zero (the log-space parallel path has no such limit).

*Parallel, log space.* Steps ``2..L`` become matrices
:math:`M_t(i, j) = \log A(i, j) + \log e_t(j)` (padded steps are the log-identity: 0 on
the diagonal, :math:`-\infty` elsewhere) combined by a tree reduction (log normaliser)
or an associative scan (filtering) of log-semiring matrix products, ``O(log T)`` depth.
Posterior marginals come from autograd of the log normaliser. Viterbi uses the max-plus
semiring; the MAP path is read off the gradient of the max-plus normaliser, which
``torch.max`` routes through exactly one argmax per product (a consistent backtrack, even
under ties). Forward-filter backward-sample draws with a torch loop over time.

Memory
------
Sequential paths use ``O(N T K)`` (the filtered marginals, plus ``int32`` back-pointers
for Viterbi); nothing of size ``T K^2`` is ever built. The parallel path materialises
``O(N T K^2)`` (``O(N T K^3)`` for Viterbi) and :func:`pair_marginals` is ``O(N T K^2)``
by definition.

Dispatch (``method="auto"``)
----------------------------
CPU: the numba sequential kernels. Other devices (CUDA): the parallel scan when its
working set fits in a quarter of the free device memory, else the torch sequential loop.
``"sequential"`` means numba on CPU and the torch loop elsewhere; ``"parallel"`` is the
scan on any device.

Example:
    >>> log_initial = torch.zeros(2)
    >>> log_transition = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).log()
    >>> log_emission = torch.randn(3, 5, 2)
    >>> log_marginal(log_initial, log_transition, log_emission).shape
    torch.Size([3])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .validation import check_lengths
from .validation import valid_mask as _valid_mask

__all__ = [
    "Filtered",
    "MAPPath",
    "Smoothed",
    "filter",
    "forward_backward",
    "log_marginal",
    "log_marginal_categorical",
    "pair_marginals",
    "sample_paths",
    "viterbi",
]

_METHODS = ("auto", "sequential", "parallel")
# Reassociation lets LLVM vectorise the sums; no "nnan"/"ninf": -inf log potentials reach the Viterbi kernel.
_SAFE_FASTMATH = {"contract", "reassoc", "nsz"}


class Filtered(NamedTuple):
    """Result of :func:`filter`.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood of each sequence.
        filtered: ``(N, T, K)`` :math:`p(s_t \\mid x_{1:t})`; zeros on padded steps.
    """

    log_normalizer: Tensor
    filtered: Tensor


class Smoothed(NamedTuple):
    """Result of :func:`forward_backward`.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood of each sequence.
        state_marginals: ``(N, T, K)`` :math:`p(s_t \\mid x_{1:L})`; zeros on padded steps.
        transition_counts: ``(N, K, K)`` :math:`\\sum_t p(s_{t-1}=i, s_t=j \\mid x)`,
            the expected transition counts of the E-step of EM.
    """

    log_normalizer: Tensor
    state_marginals: Tensor
    transition_counts: Tensor


class MAPPath(NamedTuple):
    """Result of :func:`viterbi`.

    Attributes:
        path: ``(N, T)`` int64 most probable state path; ``-1`` on padded steps.
        log_joint: ``(N,)`` log potential of that path (0 for empty sequences).
    """

    path: Tensor
    log_joint: Tensor


# --------------------------------------------------------------------------------------
# Input checking and dispatch
# --------------------------------------------------------------------------------------


def _check_float(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {value.dtype}")
    return value


def _prepare(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate inputs; return ``(NP, K)`` initial, ``(NA, K, K)`` transition, emission, lengths."""
    log_emission = _check_float("log_emission", log_emission)
    if log_emission.dim() != 3 or log_emission.shape[-1] < 1:
        raise ValueError(f"log_emission: expected shape (N, T, K) with K >= 1, got {tuple(log_emission.shape)}")
    num_seq, num_steps, num_states = log_emission.shape
    dtype, device = log_emission.dtype, log_emission.device

    log_initial = _check_float("log_initial", log_initial)
    if log_initial.shape not in ((num_states,), (num_seq, num_states)):
        raise ValueError(
            f"log_initial: expected shape ({num_states},) or ({num_seq}, {num_states}), got {tuple(log_initial.shape)}"
        )
    log_transition = _check_float("log_transition", log_transition)
    if log_transition.shape not in ((num_states, num_states), (num_seq, num_states, num_states)):
        raise ValueError(
            f"log_transition: expected shape ({num_states}, {num_states}) or "
            f"({num_seq}, {num_states}, {num_states}), got {tuple(log_transition.shape)}"
        )
    for name, value in (("log_initial", log_initial), ("log_transition", log_transition)):
        if value.device != device:
            raise ValueError(f"{name}: expected device {device} (that of log_emission), got {value.device}")

    lengths = check_lengths(lengths, num_seq, num_steps, device)
    log_initial = log_initial.to(dtype).reshape(-1, num_states)
    log_transition = log_transition.to(dtype).reshape(-1, num_states, num_states)
    return log_initial, log_transition, log_emission, lengths


def _memory_budget(device: torch.device) -> float:
    """Bytes the parallel path may use on ``device``: a quarter of free CUDA memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / 4
    return float(2**30)


def _choose_backend(method: str, device: torch.device, work_bytes: float) -> str:
    """Map ``method`` to ``"numba"``, ``"torch"`` (sequential loop) or ``"parallel"``."""
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method == "parallel":
        return "parallel"
    if device.type == "cpu":
        return "numba"
    if method == "sequential":
        return "torch"
    # The scan keeps a few (N, T, K, K)-sized temporaries alive at once.
    return "parallel" if 4 * work_bytes <= _memory_budget(device) else "torch"


def _scan_bytes(log_emission: Tensor, power: int = 2) -> float:
    num_seq, num_steps, num_states = log_emission.shape
    return float(num_seq * num_steps * num_states**power * log_emission.element_size())


def _shift(values: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Max over ``dims`` (kept), with non-finite maxima (all ``-inf``) replaced by 0."""
    shift = values.amax(dim=dims, keepdim=True)
    return torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))


# --------------------------------------------------------------------------------------
# Numba kernels (CPU, float64, scaled probability space)
# --------------------------------------------------------------------------------------


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
        alpha = filtered[n, 0]
        total = 0.0
        for k in range(num_states):
            alpha[k] = init[k] * emission_probs[n, 0, k]
            total += alpha[k]
        scales[n, 0] = total
        inv = 1.0 / total if total > 0.0 else 0.0
        for k in range(num_states):
            alpha[k] *= inv
        for t in range(1, length):
            prev = filtered[n, t - 1]
            cur = filtered[n, t]
            # cur = prev @ trans as contiguous dot products with rows of trans.T, accumulated
            # in a register (reassociation lets LLVM vectorise them).
            total = 0.0
            for j in range(num_states):
                row = trans_t[j]
                acc = 0.0
                for i in range(num_states):
                    acc += prev[i] * row[i]
                acc *= emission_probs[n, t, j]
                cur[j] = acc
                total += acc
            scales[n, t] = total
            inv = 1.0 / total if total > 0.0 else 0.0
            for j in range(num_states):
                cur[j] *= inv


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
            emitted = table_probs[code]
            total = 0.0
            if t == 0:
                for k in range(num_states):
                    value = initial_probs[k] * emitted[k]
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


class _ScaledPotentials(NamedTuple):
    """Float64 CPU numpy potentials with their subtracted maxima (as torch tensors)."""

    initial_probs: np.ndarray  # (NP, K)
    transition_probs: np.ndarray  # (NA, K, K)
    emission_probs: np.ndarray  # (N, T, K), float32 or float64
    lengths: np.ndarray  # (N,) int64
    initial_shift: Tensor  # (NP,)
    transition_shift: Tensor  # (NA,)
    emission_shift: Tensor  # (N, T)


def _scaled_potentials(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor
) -> _ScaledPotentials:
    log_initial, log_transition = (x.detach().to("cpu", torch.float64) for x in (log_initial, log_transition))
    # Emissions stay in their own dtype (float32 or float64): the kernels accumulate in
    # float64 either way, and skipping the float64 copy halves the memory traffic of the
    # (N, T, K) array, the largest cost outside the recursion itself.
    log_emission = log_emission.detach().to("cpu")
    if log_emission.dtype not in (torch.float32, torch.float64):
        log_emission = log_emission.to(torch.float64)
    initial_shift = _shift(log_initial, (-1,))
    transition_shift = _shift(log_transition, (-2, -1))
    emission_shift = _shift(log_emission, (-1,))
    return _ScaledPotentials(
        initial_probs=(log_initial - initial_shift).exp_().contiguous().numpy(),
        transition_probs=(log_transition - transition_shift).exp_().contiguous().numpy(),
        emission_probs=(log_emission - emission_shift).exp_().contiguous().numpy(),
        lengths=lengths.detach().to("cpu", torch.long).contiguous().numpy(),
        initial_shift=initial_shift.reshape(-1),
        transition_shift=transition_shift.reshape(-1),
        emission_shift=emission_shift.squeeze(-1).to(torch.float64),
    )


def _numba_forward(potentials: _ScaledPotentials) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Run the forward kernel; return float64 CPU log normaliser, filtered and scales."""
    num_seq, num_steps, num_states = potentials.emission_probs.shape
    filtered = np.zeros((num_seq, num_steps, num_states))
    scales = np.empty((num_seq, num_steps))
    _forward_kernel(
        potentials.initial_probs,
        potentials.transition_probs,
        potentials.emission_probs,
        potentials.lengths,
        filtered,
        scales,
    )
    lengths = torch.from_numpy(potentials.lengths)
    valid = _valid_mask(lengths, num_steps)
    log_normalizer = (torch.from_numpy(scales).log() + potentials.emission_shift * valid).sum(-1)
    log_normalizer = log_normalizer + (lengths > 0) * potentials.initial_shift
    log_normalizer = log_normalizer + (lengths - 1).clamp(min=0) * potentials.transition_shift
    return log_normalizer, filtered, scales


def _numba_backward(
    potentials: _ScaledPotentials, filtered: np.ndarray, scales: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    num_seq, num_steps, num_states = filtered.shape
    state_marginals = np.zeros_like(filtered)
    transition_counts = np.zeros((num_seq, num_states, num_states))
    _backward_kernel(
        potentials.transition_probs,
        potentials.emission_probs,
        potentials.lengths,
        filtered,
        scales,
        state_marginals,
        transition_counts,
    )
    return state_marginals, transition_counts


class _NumbaLogMarginal(torch.autograd.Function):
    """``log Z`` by the fused numba forward kernel; exact gradients by the backward kernel."""

    @staticmethod
    def forward(ctx, log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> Tensor:
        store = any(ctx.needs_input_grad[:3])
        initial = log_initial.detach().to("cpu", torch.float64).contiguous().numpy()
        transition = log_transition.detach().to("cpu", torch.float64).contiguous().numpy()
        # Emissions stay in their own dtype (float32 or float64): the kernel accumulates in
        # float64 either way, and skipping a float64 copy halves the traffic of the (N, T, K) array.
        emission = log_emission.detach().to("cpu")
        if emission.dtype not in (torch.float32, torch.float64):
            emission = emission.to(torch.float64)
        emission = emission.contiguous().numpy()
        num_seq, num_steps, num_states = emission.shape
        stored_steps = num_steps if store else 0
        initial_probs = np.empty(initial.shape)
        transition_probs = np.empty(transition.shape)
        emission_probs = np.empty((num_seq, stored_steps, num_states), dtype=emission.dtype)
        filtered = np.zeros((num_seq, stored_steps, num_states))
        scales = np.empty((num_seq, stored_steps))
        log_normalizer = np.empty(num_seq)
        lengths_array = lengths.detach().to("cpu", torch.long).contiguous().numpy()
        _fused_forward_kernel(
            initial,
            transition,
            emission,
            lengths_array,
            store,
            initial_probs,
            transition_probs,
            emission_probs,
            filtered,
            scales,
            log_normalizer,
        )
        if store:
            empty = torch.empty(0)
            potentials = _ScaledPotentials(
                initial_probs, transition_probs, emission_probs, lengths_array, empty, empty, empty
            )
            ctx.state = (potentials, filtered, scales)
            ctx.shapes = (log_initial.shape[0], log_transition.shape[0])
        return torch.from_numpy(log_normalizer).to(device=log_emission.device, dtype=log_emission.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        potentials, filtered, scales = ctx.state
        num_initial, num_transition = ctx.shapes
        state_marginals, transition_counts = _numba_backward(potentials, filtered, scales)
        grad = grad_output.detach().to("cpu", torch.float64)
        marginals = torch.from_numpy(state_marginals)
        options = dict(device=grad_output.device, dtype=grad_output.dtype)
        grad_emission = grad_initial = grad_transition = None
        if ctx.needs_input_grad[2]:
            grad_emission = (grad[:, None, None] * marginals).to(**options)
        if ctx.needs_input_grad[0]:
            grad_initial = (
                grad[:, None] * marginals[:, 0]
                if marginals.shape[1]
                else torch.zeros(grad.shape[0], marginals.shape[-1], dtype=torch.float64)
            )
            if num_initial == 1:
                grad_initial = grad_initial.sum(0, keepdim=True)
            grad_initial = grad_initial.to(**options)
        if ctx.needs_input_grad[1]:
            grad_transition = grad[:, None, None] * torch.from_numpy(transition_counts)
            if num_transition == 1:
                grad_transition = grad_transition.sum(0, keepdim=True)
            grad_transition = grad_transition.to(**options)
        return grad_initial, grad_transition, grad_emission, None


# --------------------------------------------------------------------------------------
# Torch sequential backend (any device, scaled space, input dtype)
# --------------------------------------------------------------------------------------


def _torch_forward(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Differentiable scaled forward loop; returns ``(log_normalizer (N,), filtered (N, T, K))``."""
    num_seq, num_steps, num_states = log_emission.shape
    if num_steps == 0:
        return log_emission.new_zeros(num_seq), log_emission.new_zeros(num_seq, 0, num_states)
    emission_shift = _shift(log_emission, (-1,))
    emission_probs = (log_emission - emission_shift).exp()
    emission_shift = emission_shift.squeeze(-1)
    transition_shift = _shift(log_transition, (-2, -1))
    transition_probs = (log_transition - transition_shift).exp()
    initial_shift = _shift(log_initial, (-1,))
    valid = _valid_mask(lengths, num_steps)

    def normalise(unnormalised: Tensor) -> tuple[Tensor, Tensor]:
        total = unnormalised.sum(-1, keepdim=True)
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        return unnormalised / safe_total, total.squeeze(-1).log()

    alpha, log_scale = normalise((log_initial - initial_shift).exp() * emission_probs[:, 0])
    zero = log_scale.new_zeros(())
    log_normalizer = torch.where(valid[:, 0], log_scale + emission_shift[:, 0] + initial_shift[..., 0], zero)
    filtered = [alpha * valid[:, 0, None]]
    for t in range(1, num_steps):
        predicted = (alpha.unsqueeze(-2) @ transition_probs).squeeze(-2)
        new_alpha, log_scale = normalise(predicted * emission_probs[:, t])
        step_valid = valid[:, t]
        alpha = torch.where(step_valid[:, None], new_alpha, alpha)
        step_log = log_scale + emission_shift[:, t] + transition_shift.reshape(-1)
        log_normalizer = log_normalizer + torch.where(step_valid, step_log, zero)
        filtered.append(alpha * step_valid[:, None])
    return log_normalizer, torch.stack(filtered, 1)


def _torch_viterbi(log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> MAPPath:
    num_seq, num_steps, num_states = log_emission.shape
    paths = torch.full((num_seq, num_steps), -1, dtype=torch.long, device=log_emission.device)
    if num_steps == 0:
        return MAPPath(paths, log_emission.new_zeros(num_seq))
    valid = _valid_mask(lengths, num_steps)
    delta = log_initial + log_emission[:, 0]
    backpointers = []
    for t in range(1, num_steps):
        best, best_index = (delta[:, :, None] + log_transition).max(dim=1)
        delta = torch.where(valid[:, t, None], best + log_emission[:, t], delta)
        backpointers.append(best_index)
    log_joint, state = delta.max(dim=-1)
    for t in range(num_steps - 1, -1, -1):
        if t < num_steps - 1:
            previous = backpointers[t].gather(1, state[:, None]).squeeze(1)
            state = torch.where(t < lengths - 1, previous, state)
        paths[:, t] = torch.where(valid[:, t], state, paths[:, t])
    return MAPPath(paths, torch.where(lengths > 0, log_joint, log_joint.new_zeros(())))


def _torch_backward_sample(transition_probs: Tensor, filtered: Tensor, lengths: Tensor, uniforms: Tensor) -> Tensor:
    """Backward sampling with a torch loop; ``uniforms`` (S, N, T) -> paths (S, N, T)."""
    num_samples = uniforms.shape[0]
    num_seq, num_steps, num_states = filtered.shape
    paths = torch.full((num_samples, num_seq, num_steps), -1, dtype=torch.long, device=filtered.device)
    # rows [to, :] = potentials from every state into `to`
    into = transition_probs.transpose(-1, -2).expand(num_seq, num_states, num_states)
    into = into.unsqueeze(0).expand(num_samples, -1, -1, -1)
    state = torch.zeros(num_samples, num_seq, dtype=torch.long, device=filtered.device)
    for t in range(num_steps - 1, -1, -1):
        weights = filtered[:, t].expand(num_samples, -1, -1)
        if t < num_steps - 1:
            index = state[..., None, None].expand(-1, -1, 1, num_states)
            conditioned = weights * into.gather(2, index).squeeze(2)
            weights = torch.where((t < lengths - 1)[None, :, None], conditioned, weights)
        cumulative = weights.cumsum(-1)
        target = uniforms[..., t, None] * cumulative[..., -1:]
        drawn = (cumulative <= target).sum(-1).clamp(max=num_states - 1)
        state = drawn
        paths[..., t] = torch.where(t < lengths, drawn, paths[..., t])
    return paths


# --------------------------------------------------------------------------------------
# Parallel backend (any device, log space)
# --------------------------------------------------------------------------------------


class _SafeLog(torch.autograd.Function):
    """``log`` whose gradient stays finite at 0 (the matching terms have zero weight)."""

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:
        ctx.save_for_backward(value)
        return value.log()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (value,) = ctx.saved_tensors
        return grad / value.clamp(min=torch.finfo(value.dtype).tiny)


def _log_matmul_exp(left: Tensor, right: Tensor) -> Tensor:
    """Log-semiring matrix product ``log(exp(left) @ exp(right))`` through a BLAS matmul."""
    finfo = torch.finfo(left.dtype)
    left_shift = left.detach().amax(-1, keepdim=True).clamp(min=finfo.min)
    right_shift = right.detach().amax(-2, keepdim=True).clamp(min=finfo.min)
    product = torch.matmul((left - left_shift).exp(), (right - right_shift).exp())
    return _SafeLog.apply(product) + left_shift + right_shift


def _max_plus(left: Tensor, right: Tensor) -> Tensor:
    """Max-plus matrix product; ``torch.max`` sends gradient to one argmax only."""
    return (left[..., :, :, None] + right[..., None, :, :]).max(dim=-2).values


def _tree_reduce(matrices: Tensor, combine: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Ordered product ``M_1 ... M_T`` of ``(N, T, K, K)`` by pairwise combination."""
    while matrices.shape[1] > 1:
        paired = combine(matrices[:, 0:-1:2], matrices[:, 1::2])
        if matrices.shape[1] % 2:
            paired = torch.cat([paired, matrices[:, -1:]], 1)
        matrices = paired
    return matrices[:, 0]


def _associative_scan(matrices: Tensor, combine: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Inclusive prefix products of ``(N, T, K, K)`` along time (Blelloch-style recursion)."""
    num_steps = matrices.shape[1]
    if num_steps < 2:
        return matrices
    odd = _associative_scan(combine(matrices[:, 0:-1:2], matrices[:, 1::2]), combine)
    if num_steps % 2 == 0:
        even = combine(odd[:, :-1], matrices[:, 2::2])
    else:
        even = combine(odd, matrices[:, 2::2])
    even = torch.cat([matrices[:, :1], even], 1)  # prefixes ending at steps 0, 2, 4, ...
    interleaved = torch.stack([even[:, : odd.shape[1]], odd], 2).flatten(1, 2)
    if num_steps % 2:
        interleaved = torch.cat([interleaved, even[:, -1:]], 1)
    return interleaved


def _step_matrices(log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> Tensor:
    """``(N, T-1, K, K)`` log matrices of steps 2..T, log-identity on padded steps."""
    num_seq, num_steps, num_states = log_emission.shape
    matrices = log_transition[:, None] + log_emission[:, 1:, None, :]
    identity = torch.full(
        (num_states, num_states), -torch.inf, dtype=log_emission.dtype, device=log_emission.device
    ).fill_diagonal_(0.0)
    valid = _valid_mask(lengths, num_steps)[:, 1:, None, None]
    return torch.where(valid, matrices.expand(num_seq, -1, -1, -1), identity)


def _parallel_log_normalizer(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor
) -> Tensor:
    num_seq, num_steps, num_states = log_emission.shape
    if num_steps == 0:
        return log_emission.new_zeros(num_seq)
    log_alpha = log_initial + log_emission[:, 0]  # (N, K)
    if num_steps > 1:
        product = _tree_reduce(_step_matrices(log_transition, log_emission, lengths), _log_matmul_exp)
        log_alpha = torch.logsumexp(log_alpha[:, :, None] + product, dim=1)
    return torch.where(lengths > 0, torch.logsumexp(log_alpha, -1), log_alpha.new_zeros(()))


def _parallel_filter(log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> Filtered:
    num_seq, num_steps, num_states = log_emission.shape
    if num_steps == 0:
        return Filtered(log_emission.new_zeros(num_seq), log_emission.new_zeros(num_seq, 0, num_states))
    log_first = log_initial.expand(num_seq, -1) + log_emission[:, 0]
    log_alpha = log_first[:, None]
    if num_steps > 1:
        prefixes = _associative_scan(_step_matrices(log_transition, log_emission, lengths), _log_matmul_exp)
        later = torch.logsumexp(log_first[:, None, :, None] + prefixes, dim=2)  # (N, T-1, K)
        log_alpha = torch.cat([log_alpha, later], 1)
    # Padded steps are identities, so the last step carries the full normaliser.
    log_normalizer = torch.logsumexp(log_alpha[:, -1], -1)
    valid = _valid_mask(lengths, num_steps)
    filtered = torch.softmax(log_alpha, -1) * valid[..., None]
    return Filtered(torch.where(lengths > 0, log_normalizer, log_normalizer.new_zeros(())), filtered)


def _parallel_viterbi(log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor) -> MAPPath:
    num_seq, num_steps, num_states = log_emission.shape
    paths = torch.full((num_seq, num_steps), -1, dtype=torch.long, device=log_emission.device)
    if num_steps == 0:
        return MAPPath(paths, log_emission.new_zeros(num_seq))
    with torch.enable_grad():
        emission = log_emission.detach().requires_grad_()
        score = (log_initial.detach() + emission[:, 0]).expand(num_seq, -1)  # (N, K)
        if num_steps > 1:
            product = _tree_reduce(_step_matrices(log_transition.detach(), emission, lengths), _max_plus)
            score = (score[:, :, None] + product).flatten(1)
        log_joint = score.max(dim=-1).values
        (indicator,) = torch.autograd.grad(log_joint.sum(), emission)
    valid = _valid_mask(lengths, num_steps)
    paths = torch.where(valid, indicator.argmax(-1), paths)
    return MAPPath(paths, torch.where(lengths > 0, log_joint.detach(), log_joint.new_zeros(())))


# --------------------------------------------------------------------------------------
# Posteriors by autograd (torch and parallel backends)
# --------------------------------------------------------------------------------------


def _smoothed_by_autograd(
    log_normalizer_fn: Callable[..., Tensor],
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    lengths: Tensor,
) -> Smoothed:
    num_seq, num_steps, num_states = log_emission.shape
    with torch.enable_grad():
        emission = log_emission.detach().requires_grad_()
        transition = log_transition.detach().expand(num_seq, -1, -1).clone().requires_grad_()
        log_normalizer = log_normalizer_fn(log_initial.detach(), transition, emission, lengths)
        grads = (None, None)
        if log_normalizer.requires_grad:  # False when there are no time steps at all
            grads = torch.autograd.grad(log_normalizer.sum(), (emission, transition), allow_unused=True)
    state_marginals, transition_counts = (
        torch.zeros_like(leaf) if grad is None else grad for grad, leaf in zip(grads, (emission, transition))
    )
    return Smoothed(log_normalizer.detach(), state_marginals, transition_counts)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def log_marginal(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    lengths: Tensor | None = None,
    *,
    method: str = "auto",
) -> Tensor:
    r"""Log marginal likelihood :math:`\log \sum_{s} \pi(s_1) e_1(s_1) \prod_t A(s_{t-1}, s_t) e_t(s_t)`.

    Differentiable with exact gradients with respect to all three potentials (the
    posterior marginals, expected transition counts and initial-state posterior).

    Args:
        log_initial: ``(K,)`` or ``(N, K)`` log potentials of the first state.
        log_transition: ``(K, K)`` or ``(N, K, K)`` log potentials, ``[from, to]``.
        log_emission: ``(N, T, K)`` per-step log likelihood of each state.
        lengths: ``(N,)`` integer number of real steps, or ``None`` for all ``T``.
        method: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see the module docstring).

    Returns:
        ``(N,)`` log normaliser; 0 for empty sequences.

    Example:
        >>> log_marginal(torch.zeros(2), torch.zeros(2, 2), torch.zeros(1, 3, 2)).exp()
        tensor([16.])
    """
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission))
    if backend == "numba":
        return _NumbaLogMarginal.apply(*args)
    if backend == "torch":
        return _torch_forward(*args)[0]
    return _parallel_log_normalizer(*args)


class _CategoricalLogMarginal(torch.autograd.Function):
    """``log Z`` of a chain with categorical emissions, the gather inside the numba kernel."""

    @staticmethod
    def forward(
        ctx, log_initial: Tensor, log_transition: Tensor, log_emission_table: Tensor, codes: Tensor, lengths: Tensor
    ) -> Tensor:
        store = any(ctx.needs_input_grad[:3])
        as_array = lambda value: value.detach().to("cpu", torch.float64).contiguous().numpy()  # noqa: E731
        table = as_array(log_emission_table)
        codes_array = codes.detach().to("cpu", torch.long).contiguous().numpy()
        lengths_array = lengths.detach().to("cpu", torch.long).contiguous().numpy()
        num_seq, num_steps = codes_array.shape
        num_states, num_symbols = table.shape
        stored_steps = num_steps if store else 0
        transition_probs = np.empty((1, num_states, num_states))
        table_probs = np.empty((num_symbols, num_states))
        filtered = np.zeros((num_seq, stored_steps, num_states))
        scales = np.empty((num_seq, stored_steps))
        log_normalizer = np.empty(num_seq)
        if not _categorical_forward_kernel(
            as_array(log_initial),
            as_array(log_transition),
            table,
            codes_array,
            lengths_array,
            store,
            transition_probs,
            table_probs,
            filtered,
            scales,
            log_normalizer,
        ):
            raise ValueError(f"codes: expected symbol codes in [0, {num_symbols}) at every valid step")
        if store:
            ctx.state = (codes_array, lengths_array, transition_probs, table_probs, filtered, scales)
        return torch.from_numpy(log_normalizer).to(device=log_emission_table.device, dtype=log_emission_table.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        codes, lengths, transition_probs, table_probs, filtered, scales = ctx.state
        weights = grad_output.detach().to("cpu", torch.float64).contiguous().numpy()
        num_symbols, num_states = table_probs.shape
        grad_initial, grad_transition = np.zeros(num_states), np.zeros((num_states, num_states))
        grad_table = np.zeros((num_states, num_symbols))
        _categorical_backward_kernel(
            transition_probs,
            table_probs,
            codes,
            lengths,
            filtered,
            scales,
            weights,
            grad_initial,
            grad_transition,
            grad_table,
        )
        options = dict(device=grad_output.device, dtype=grad_output.dtype)
        grad_initial, grad_transition, grad_table = (
            torch.from_numpy(value).to(**options) if needed else None
            for value, needed in zip((grad_initial, grad_transition, grad_table), ctx.needs_input_grad[:3])
        )
        return grad_initial, grad_transition, grad_table, None, None


def log_marginal_categorical(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission_table: Tensor,
    codes: Tensor,
    lengths: Tensor | None = None,
    *,
    method: str = "auto",
) -> Tensor:
    """:func:`log_marginal` with ``log_emission = log_emission_table.T[codes]``, the gather done
    inside the compiled forward recursion (CPU, ``method="auto"``), so no ``(N, T, K)`` array
    is formed in torch and the table's gradient is a scatter of the posterior marginals.

    Args:
        log_initial: ``(K,)`` log potentials of the first state (shared by the batch).
        log_transition: ``(K, K)`` log potentials, ``[from, to]``.
        log_emission_table: ``(K, V)`` emission log potential of each state and symbol.
        codes: ``(N, T)`` integer symbols in ``[0, V)`` (padding may hold any valid code).
        lengths: ``(N,)`` or ``None``.
        method: as :func:`log_marginal`; other than ``"auto"`` on CPU, the gather is done in
            torch and :func:`log_marginal` called.

    Returns:
        ``(N,)`` log normaliser.
    """
    if log_emission_table.dim() != 2 or log_initial.dim() != 1 or log_transition.dim() != 2:
        raise ValueError(
            "log_marginal_categorical: expected log_initial (K,), log_transition (K, K) and "
            f"log_emission_table (K, V), got {tuple(log_initial.shape)}, {tuple(log_transition.shape)}, "
            f"{tuple(log_emission_table.shape)}"
        )
    if codes.dim() != 2 or codes.is_floating_point():
        raise ValueError(f"codes: expected integer symbols of shape (N, T), got {codes.dtype} {tuple(codes.shape)}")
    if method != "auto" or log_emission_table.device.type != "cpu":
        return log_marginal(log_initial, log_transition, log_emission_table.T[codes], lengths, method=method)
    # The checks of log_marginal, on a zero-stride stand-in for the (N, T, K) potentials.
    stand_in = log_emission_table[:, :1].T.expand(codes.shape[0], codes.shape[1], log_emission_table.shape[0])
    log_initial, log_transition, _, lengths = _prepare(log_initial, log_transition, stand_in, lengths)
    return _CategoricalLogMarginal.apply(log_initial[0], log_transition[0], log_emission_table, codes, lengths)


def filter(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,  # noqa: A001 (public name)
    lengths: Tensor | None = None,
    *,
    method: str = "auto",
) -> Filtered:
    r"""Forward filtering: :math:`p(s_t \mid x_{1:t})` and the log normaliser.

    Args and shapes as in :func:`log_marginal`. Results are not differentiable (use
    :func:`log_marginal` for gradients).

    Returns:
        :class:`Filtered` with ``log_normalizer (N,)`` and ``filtered (N, T, K)``.
    """
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission))
    dtype, device = log_emission.dtype, log_emission.device
    if backend == "numba":
        log_normalizer, filtered, _scales = _numba_forward(_scaled_potentials(*args))
        return Filtered(
            log_normalizer.to(device=device, dtype=dtype), torch.from_numpy(filtered).to(device=device, dtype=dtype)
        )
    with torch.no_grad():
        if backend == "torch":
            return Filtered(*_torch_forward(*args))
        return _parallel_filter(*args)


def forward_backward(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    lengths: Tensor | None = None,
    *,
    method: str = "auto",
) -> Smoothed:
    r"""Forward-backward smoothing: :math:`p(s_t \mid x)` and expected transition counts.

    Args and shapes as in :func:`log_marginal`. Results are not differentiable.

    Returns:
        :class:`Smoothed` with ``log_normalizer (N,)``, ``state_marginals (N, T, K)``
        and ``transition_counts (N, K, K)``.
    """
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission))
    dtype, device = log_emission.dtype, log_emission.device
    if backend == "numba":
        potentials = _scaled_potentials(*args)
        log_normalizer, filtered, scales = _numba_forward(potentials)
        state_marginals, transition_counts = _numba_backward(potentials, filtered, scales)
        return Smoothed(
            *(
                torch.as_tensor(x).to(device=device, dtype=dtype)
                for x in (log_normalizer, state_marginals, transition_counts)
            )
        )
    log_normalizer_fn = (lambda *a: _torch_forward(*a)[0]) if backend == "torch" else _parallel_log_normalizer
    return _smoothed_by_autograd(log_normalizer_fn, *args)


def pair_marginals(
    log_initial: Tensor, log_transition: Tensor, log_emission: Tensor, lengths: Tensor | None = None
) -> Tensor:
    r"""Pairwise posteriors :math:`p(s_t = i, s_{t+1} = j \mid x)`.

    Computed as the gradient of the parallel log normaliser with respect to the
    per-step log matrices, so memory is ``O(N T K^2)``: meant for small problems.

    Args and shapes as in :func:`log_marginal`.

    Returns:
        ``(N, T-1, K, K)``; zeros where step ``t+1`` is padding.
    """
    log_initial, log_transition, log_emission, lengths = _prepare(log_initial, log_transition, log_emission, lengths)
    num_seq, num_steps, num_states = log_emission.shape
    if num_steps < 2:
        return log_emission.new_zeros(num_seq, max(num_steps - 1, 0), num_states, num_states)
    with torch.enable_grad():
        steps = (log_transition[:, None] + log_emission[:, 1:, None, :]).detach()
        steps = steps.expand(num_seq, -1, -1, -1).clone().requires_grad_()
        identity = torch.full(
            (num_states, num_states), -torch.inf, dtype=steps.dtype, device=steps.device
        ).fill_diagonal_(0.0)
        valid = _valid_mask(lengths, num_steps)[:, 1:, None, None]
        product = _tree_reduce(torch.where(valid, steps, identity), _log_matmul_exp)
        log_first = (log_initial + log_emission[:, 0]).detach()
        log_normalizer = torch.logsumexp((log_first[:, :, None] + product).flatten(1), -1)
        log_normalizer = torch.where(lengths > 0, log_normalizer, log_normalizer.new_zeros(()))
        (grad,) = torch.autograd.grad(log_normalizer.sum(), steps)
    return grad


def viterbi(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    lengths: Tensor | None = None,
    *,
    method: str = "auto",
) -> MAPPath:
    r"""Most probable state path :math:`\arg\max_s \log p(s, x)` (max-product).

    Args and shapes as in :func:`log_marginal`. Ties are broken towards the lowest
    state index on the sequential paths.

    Returns:
        :class:`MAPPath` with ``path (N, T)`` int64 (-1 on padding) and ``log_joint (N,)``.
    """
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission, power=3) / 2)
    if backend == "numba":
        log_initial, log_transition, log_emission, lengths = (x.detach().cpu() for x in args)
        num_seq, num_steps, _ = log_emission.shape
        paths = np.full((num_seq, num_steps), -1, dtype=np.int64)
        log_joint = np.zeros(num_seq)
        # The kernel scans rows of the transposed ([to, from]) matrix contiguously.
        log_transition_t = log_transition.double().transpose(-1, -2).contiguous().numpy()
        _viterbi_kernel(
            log_initial.double().contiguous().numpy(),
            log_transition_t,
            log_emission.double().contiguous().numpy(),
            lengths.numpy(),
            paths,
            log_joint,
        )
        device, dtype = args[2].device, args[2].dtype
        return MAPPath(torch.from_numpy(paths).to(device), torch.from_numpy(log_joint).to(device=device, dtype=dtype))
    with torch.no_grad():
        if backend == "torch":
            return _torch_viterbi(*args)
        return _parallel_viterbi(*args)


def sample_paths(
    log_initial: Tensor,
    log_transition: Tensor,
    log_emission: Tensor,
    lengths: Tensor | None = None,
    *,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> Tensor:
    r"""Posterior state paths :math:`s \sim p(s \mid x)` by forward-filter backward-sample.

    The draws use ``num_samples * N * T`` uniforms taken from ``generator`` (on its own
    device), so a seeded generator reproduces the samples.

    Args:
        log_initial, log_transition, log_emission, lengths, method: as in :func:`log_marginal`.
        num_samples: number of paths per sequence, ``>= 1``.
        generator: source of randomness; the global one if ``None``.

    Returns:
        ``(num_samples, N, T)`` int64 paths; -1 on padded steps.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    log_initial, log_transition, log_emission, lengths = args
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission))
    num_seq, num_steps, _ = log_emission.shape
    uniform_device = generator.device if generator is not None else torch.device("cpu")
    uniforms = torch.rand(
        (num_samples, num_seq, num_steps), generator=generator, dtype=torch.float64, device=uniform_device
    )
    if backend == "numba":
        potentials = _scaled_potentials(*args)
        _log_normalizer, filtered, _scales = _numba_forward(potentials)
        paths = np.full((num_samples, num_seq, num_steps), -1, dtype=np.int64)
        _backward_sample_kernel(
            potentials.transition_probs, filtered, potentials.lengths, uniforms.cpu().numpy(), paths
        )
        return torch.from_numpy(paths).to(log_emission.device)
    with torch.no_grad():
        if backend == "torch":
            filtered = _torch_forward(*args)[1]
        else:
            filtered = _parallel_filter(*args).filtered
        transition_probs = (log_transition - _shift(log_transition, (-2, -1))).exp()
        return _torch_backward_sample(
            transition_probs, filtered, lengths, uniforms.to(device=log_emission.device, dtype=log_emission.dtype)
        )
