"""The public functions of :mod:`inference.discrete` and the dispatch to the backends.

See :mod:`inference.discrete` for the model, the conventions, the algorithms and *Dispatch*.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._autograd import (
    _CategoricalLogMarginal,
    _numba_backward,
    _numba_forward,
    _NumbaLogMarginal,
    _scaled_potentials,
)
from ._common import Filtered, MAPPath, Smoothed, _choose_backend, _prepare, _scan_bytes, _shift
from ._numba import _backward_sample_kernel, _viterbi_kernel
from ._scan import _log_matmul_exp, _parallel_filter, _parallel_log_normalizer, _parallel_viterbi, _tree_reduce
from ._torch import _torch_backward_sample, _torch_forward, _torch_viterbi

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
        grads: tuple[Tensor | None, ...] = (None, None)
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
        method: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see :mod:`inference.discrete`).

    Returns:
        ``(N,)`` log normaliser; 0 for empty sequences.

    Example:
        >>> log_marginal(torch.zeros(2), torch.zeros(2, 2), torch.zeros(1, 3, 2)).exp()
        tensor([8.])
    """
    args = _prepare(log_initial, log_transition, log_emission, lengths)
    backend = _choose_backend(method, log_emission.device, _scan_bytes(log_emission))
    if backend == "numba":
        return _NumbaLogMarginal.apply(*args)
    if backend == "torch":
        return _torch_forward(*args)[0]
    return _parallel_log_normalizer(*args)


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
            filtered_probs = _torch_forward(*args)[1]
        else:
            filtered_probs = _parallel_filter(*args).filtered
        transition_probs = (log_transition - _shift(log_transition, (-2, -1))).exp()
        return _torch_backward_sample(
            transition_probs, filtered_probs, lengths, uniforms.to(device=log_emission.device, dtype=log_emission.dtype)
        )
