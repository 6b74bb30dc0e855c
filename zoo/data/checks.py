"""Checks of data against what a model's command-line flag needs (kind, counts, real values)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .container import SequenceData


# --------------------------------------------------------------------------
# Checks of data against what a model's flag needs
# --------------------------------------------------------------------------
def _first_bad_entry(data: SequenceData, bad: Tensor) -> str:
    """``"sequence 0, step 3, column 'x'"`` of the first True entry of ``bad`` ``(N, T, D)`` on real steps."""
    n, t, d = (int(i) for i in torch.nonzero(bad)[0])
    where = f"sequence {data.sequence_names[n]!r}" if data.sequence_names else f"sequence {n}"
    column = (
        f", column {data.series_names[d]!r}"
        if data.series_names and d < len(data.series_names)
        else (f", column {d}" if bad.shape[-1] > 1 else "")
    )
    return f"{where}, step {t}{column}"


def require_kind(data: SequenceData, kinds: Sequence[str], flag: str) -> None:
    """Refuses ``data`` unless its kind is one of ``kinds``, naming the flag and the file.

    Args:
        data: the loaded data.
        kinds: the kinds the model named by ``flag`` accepts.
        flag: the option as the user typed it, e.g. ``"--emission gaussian"``.

    Raises:
        ValueError: e.g. ``--emission gaussian needs real-valued data (kind 'real'), but
            book.txt is text (kind 'categorical')``.
    """
    if data.kind in kinds:
        return
    wanted = " or ".join(f"kind {k!r}" for k in kinds)
    what = {
        "categorical": "text or symbol codes",
        "real": "real numbers",
        "count": "counts",
        "binary": "0/1 frames",
    }.get(data.kind, data.kind)
    hint = {
        "real": "a .csv or .npz file of numbers",
        "count": "a .csv or .npz file of counts",
        "binary": "0/1 frames, e.g. --kind binary",
        "categorical": "a .txt file or symbol codes",
    }
    raise ValueError(
        f"{flag} needs {' or '.join(hint.get(k, k) for k in kinds)} ({wanted}), but {data.source} "
        f"holds {what} (kind {data.kind!r})"
    )


def require_counts(data: SequenceData, flag: str) -> None:
    """Refuses ``data`` unless every observed value is a nonnegative integer (a count),
    naming the flag, the file and the first offending entry.

    Real-valued data (a CSV read as kind 'real') that happen to hold counts pass.

    Raises:
        ValueError: e.g. ``--emission poisson needs nonnegative integer counts, but
            rain.csv has -1.5 at sequence 0, step 3, column 'mm'``.
    """
    if data.kind not in ("count", "real", "binary"):
        require_kind(data, ("count",), flag)
    values = data.batch.values
    mask = data.batch.mask[..., None].expand_as(values) if values.dim() == 3 else data.batch.mask
    values = values.double()
    bad = mask & (values.isnan() | (values < 0) | (values != values.round()) | values.isinf())
    if bad.any():
        value = float(values[bad][0])
        shown = "a missing value" if math.isnan(value) else repr(value)
        raise ValueError(
            f"{flag} needs nonnegative integer counts, but {data.source} has {shown} at "
            f"{_first_bad_entry(data, bad if bad.dim() == 3 else bad[..., None])}"
        )


def require_real(data: SequenceData, flag: str) -> None:
    """Refuses ``data`` unless it is real-valued (kind 'real', or counts/binary frames
    read as numbers), naming the flag and the file (a ``.txt`` file is text)."""
    require_kind(data, ("real", "count", "binary"), flag)
