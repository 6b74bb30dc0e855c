"""Shared pieces of the discrete-chain kernels: result types, constants, input checks, the choice of backend.

See :mod:`inference.discrete` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..validation import check_lengths

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
