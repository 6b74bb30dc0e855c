"""Checks of the ``lengths`` argument shared by the kernels and the model families.

A batch of ``N`` padded sequences of ``T`` steps comes with ``lengths (N,)``: step
``t`` of sequence ``n`` is real when ``t < lengths[n]``. Every consumer validates
``lengths`` and builds the ``(N, T)`` mask of real steps with these two functions, so
the error messages and the masks are the same everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_lengths", "valid_mask"]


def check_lengths(
    lengths: Tensor | None, num_sequences: int, num_steps: int, device: torch.device | str | None = None
) -> Tensor:
    """Validated ``(N,)`` int64 lengths on ``device``; ``None`` means every sequence is
    ``num_steps`` long.

    Raises:
        TypeError: ``lengths`` is neither a tensor nor None.
        ValueError: a non-integer dtype, a shape other than ``(num_sequences,)``, or a
            length outside ``[0, num_steps]``.
    """
    if lengths is None:
        return torch.full((num_sequences,), num_steps, dtype=torch.long, device=device)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"lengths: expected a torch.Tensor or None, got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer dtype (int64), got {lengths.dtype}")
    if lengths.shape != (num_sequences,):
        raise ValueError(f"lengths: expected shape ({num_sequences},), got {tuple(lengths.shape)}")
    lengths = lengths.to(device=device if device is not None else lengths.device, dtype=torch.long)
    if num_sequences and (int(lengths.min()) < 0 or int(lengths.max()) > num_steps):
        raise ValueError(
            f"lengths: expected values in [0, {num_steps}], got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return lengths


def valid_mask(lengths: Tensor, num_steps: int) -> Tensor:
    """``(N, T)`` bool, True on real steps (``t < lengths[n]``)."""
    return torch.arange(num_steps, device=lengths.device) < lengths[:, None]
