"""The parallel-in-time backend: log-semiring and max-plus associative scans (any device, log space).

See :mod:`inference.discrete` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..validation import valid_mask as _valid_mask
from ._common import Filtered, MAPPath

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
