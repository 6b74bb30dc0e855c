"""The numba kernels behind autograd: :func:`inference.discrete.log_marginal` and
:func:`inference.discrete.log_marginal_categorical` on CPU, with exact gradients by one backward recursion.

See :mod:`inference.discrete` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..validation import valid_mask as _valid_mask
from ._common import _shift
from ._numba import (
    _backward_kernel,
    _categorical_backward_kernel,
    _categorical_forward_kernel,
    _forward_kernel,
    _fused_forward_kernel,
)

# --------------------------------------------------------------------------------------
# Numba kernels behind autograd (CPU, float64, scaled probability space)
# --------------------------------------------------------------------------------------


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
        emission_tensor = log_emission.detach().to("cpu")
        if emission_tensor.dtype not in (torch.float32, torch.float64):
            emission_tensor = emission_tensor.to(torch.float64)
        emission = emission_tensor.contiguous().numpy()
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
        options: dict[str, Any] = dict(device=grad_output.device, dtype=grad_output.dtype)
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
        options: dict[str, Any] = dict(device=grad_output.device, dtype=grad_output.dtype)
        initial_out, transition_out, table_out = (
            torch.from_numpy(value).to(**options) if needed else None
            for value, needed in zip((grad_initial, grad_transition, grad_table), ctx.needs_input_grad[:3])
        )
        return initial_out, transition_out, table_out, None, None
