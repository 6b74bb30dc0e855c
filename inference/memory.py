"""Estimating a fit's peak memory before allocating it, and refusing one that cannot fit.

A large model asks for arrays larger than the machine has (one 100,000 x 100,000 float32
matrix alone is 40 GB). :func:`generic_fit_memory` estimates the peak of any
fit by gradient steps from its sizes alone (a pure function: no tensor is made); a model
family that knows its own arrays writes its own estimate, a :class:`MemoryEstimate` by part
(:func:`check_count` checks the sizes it is given). :func:`check_memory` compares an
estimate with the memory available (``MemAvailable`` of ``/proc/meminfo``, or psutil; free
device memory on CUDA) and refuses a fit that cannot fit, naming its size and the limit,
or warns when it would take much of what is left.

Example:
    >>> estimate = generic_fit_memory(10_000, batch_sequences=8, batch_steps=100)
    >>> estimate.total_bytes < 10 * 2**20
    True
    >>> check_memory(estimate, limit_bytes=2**30)  # 1 GiB is plenty: no error, no warning
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: Refuse when the estimate exceeds this share of the available memory (the rest
#: is the interpreter, torch and the data themselves).
REFUSE_FRACTION = 0.9
#: Warn when the estimate exceeds this share of the available memory.
WARN_FRACTION = 0.5


class InsufficientMemoryError(ValueError):
    """A fit's estimated peak memory exceeds what is available."""


class LargeMemoryWarning(UserWarning):
    """A fit's estimated peak memory is a large share of what is available."""


@dataclass(frozen=True)
class MemoryEstimate:
    """An estimated peak memory of a fit.

    Attributes:
        parts: bytes per named part (e.g. ``"activations (N·T per batch)"``), in the order they were added.
        description: what is estimated, in the user's terms (e.g. "the model (10,000 parameters)
            on a batch of 8 x 100 steps").
    """

    parts: dict[str, int] = field(default_factory=dict)
    description: str = "the fit"

    @property
    def total_bytes(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def largest_part(self) -> str:
        return max(self.parts, key=self.parts.__getitem__) if self.parts else ""


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``40e9`` -> ``"37.3 GiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_count(name: str, value: int, minimum: int = 0) -> int:
    """``value``, checked to be an int (not a bool) of at least ``minimum``, for the
    sizes an estimate is made from.

    Raises:
        ValueError: naming ``name``, the bound and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def generic_fit_memory(
    num_parameters: int,
    *,
    batch_sequences: int,
    batch_steps: int,
    activations_per_step: int | None = None,
    parameter_bytes: int = 4,
    optimizer_states: int = 2,
    description: str = "the model",
) -> MemoryEstimate:
    """Peak memory of fitting any model by gradient steps, from its size alone.

    Parameters with a gradient and ``optimizer_states`` moments (Adam: 2), plus
    activations of ``activations_per_step`` numbers per step of each of the
    ``N·T`` steps of a batch, kept for the backward pass (doubled for their
    gradients). Without ``activations_per_step`` it is taken as
    ``4·sqrt(num_parameters)``: about the gates of one recurrent layer whose
    weights are ``hidden²``-sized.

    Returns:
        The estimate, by part.
    """
    p = check_count("num_parameters", num_parameters, 0)
    n = check_count("batch_sequences", batch_sequences, 1)
    t = check_count("batch_steps", batch_steps, 0)
    width = activations_per_step if activations_per_step is not None else 4 * math.isqrt(p)
    width = check_count("activations_per_step", width, 0)
    parts = {
        "parameters, gradients and optimiser state": p * (2 + optimizer_states) * parameter_bytes,
        "activations (N·T per batch)": 2 * n * t * width * parameter_bytes,
    }
    return MemoryEstimate(parts, f"{description} ({p:,} parameters) on a batch of {n:,} x {t:,} steps")


def _meminfo_available(text: str) -> int | None:
    """``MemAvailable`` (bytes) of a ``/proc/meminfo`` text, or None."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            scale = {"kB": 1024, "mB": 2**20, "gB": 2**30}.get(fields[2] if len(fields) > 2 else "kB", 1)
            return int(fields[1]) * scale
    return None


def available_memory(
    device: torch.device | str = "cpu", *, meminfo: str | os.PathLike = "/proc/meminfo"
) -> tuple[int | None, str]:
    """Memory a fit on ``device`` may use now: ``(bytes, where it was read)``.

    CUDA: the free device memory (``torch.cuda.mem_get_info``). Otherwise
    ``MemAvailable`` of ``/proc/meminfo``, else psutil's available memory when
    psutil is installed, else ``(None, "unknown")`` (nothing is refused then).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory on {device}"
    try:
        found = _meminfo_available(Path(meminfo).read_text())
    except OSError:
        found = None
    if found is not None:
        return found, f"available memory (MemAvailable in {meminfo})"
    try:
        import psutil
    except ImportError:
        return None, "unknown"
    return int(psutil.virtual_memory().available), "available memory (psutil)"


def check_memory(
    estimate: MemoryEstimate,
    *,
    device: torch.device | str = "cpu",
    limit_bytes: int | None = None,
    what: str | None = None,
    hint: str = "",
    refuse_fraction: float = REFUSE_FRACTION,
    warn_fraction: float = WARN_FRACTION,
) -> None:
    """Refuses a fit that will not fit in memory; warns about one that takes much of it.

    Args:
        estimate: from :func:`generic_fit_memory` or a model family's own estimate.
        device: where the fit runs (its free memory is the limit).
        limit_bytes: the limit to use instead of the device's available memory.
        what: the settings as the user gave them, e.g. ``"--states 100000"``,
            named first in the message.
        hint: what to try instead, appended to the message.
        refuse_fraction, warn_fraction: shares of the limit above which the fit
            is refused, or warned about.

    Raises:
        InsufficientMemoryError: naming the estimate, its largest part and the limit.

    Warns:
        LargeMemoryWarning: the estimate is above ``warn_fraction`` of the limit.
    """
    if not 0 < warn_fraction <= refuse_fraction:
        raise ValueError(
            f"warn_fraction, refuse_fraction: expected 0 < warn <= refuse, got {warn_fraction}, {refuse_fraction}"
        )
    if limit_bytes is None:
        limit_bytes, source = available_memory(device)
        if limit_bytes is None:
            return
    else:
        source = "the given limit"
    needed = estimate.total_bytes
    subject = f"{what}: " if what else ""
    largest = estimate.largest_part
    detail = f"{subject}{estimate.description} needs about {format_bytes(needed)}" + (
        f", most of it for the {largest}" if largest else ""
    )
    if needed > refuse_fraction * limit_bytes:
        raise InsufficientMemoryError(
            f"{detail}, but only {format_bytes(limit_bytes)} is free ({source})" + (f"; {hint}" if hint else "")
        )
    if needed > warn_fraction * limit_bytes:
        warnings.warn(
            f"{detail}, {needed / limit_bytes:.0%} of the {format_bytes(limit_bytes)} free ({source})",
            LargeMemoryWarning,
            stacklevel=2,
        )
