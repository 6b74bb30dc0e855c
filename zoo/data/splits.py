"""Train/validation/test splits: the parts a file ships (:func:`load_splits`) and cuts of any data
(:func:`split_data`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from inference.batch import SequenceBatch

from ._files import _BUILTIN_PREFIX, _extension
from .container import SequenceData
from .readers import _check_polyphonic_kind, _piano_roll, _read_polyphonic_parts


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------
class Splits(NamedTuple):
    """Train, validation and test parts; a part whose fraction is 0 is None."""

    train: SequenceData | None
    valid: SequenceData | None
    test: SequenceData | None

    def combined(self) -> SequenceData:
        """Every sequence of the parts that are not None, train first, as one data set
        (named and described like the training part; sequence names are dropped)."""
        parts = [part for part in self if part is not None]
        if not parts:
            raise ValueError("splits: every part is None; nothing to combine")
        sequences = [sequence for part in parts for sequence in part.batch.sequences()]
        return replace(parts[0], batch=SequenceBatch.from_sequences(sequences), sequence_names=None)


#: The parts a file may ship, in order.
SPLIT_NAMES = ("train", "valid", "test")
#: How :func:`split_data` cuts data: shuffled whole sequences, or the last steps of every sequence.
SPLIT_METHODS = ("shuffle", "time")


def load_splits(
    spec: str | Path,
    *,
    kind: str | None = None,
    first_n: int | None = None,
    sequence_column: str | None = None,
    time_column: str | None = None,
) -> Splits | None:
    """The train/validation/test parts a data file ships, or None when it ships none.

    A polyphonic-music ``.json`` file (see :func:`load_polyphonic`) with a
    ``"train"`` part and a ``"valid"`` or ``"test"`` part ships its split (JSB
    chorales: 229/76/77 chorales, the split every published result uses); a
    missing part is None. Every other file and every built-in data set ships
    none: cut those with :func:`split_data`.

    Args:
        spec: as for :func:`load_data`.
        kind: as for :func:`load_data` (``"binary"`` by default for polyphonic music).
        first_n: keep only the first ``first_n`` steps of every sequence of every part.
        sequence_column, time_column: CSV options; given with a file that ships a
            split they are an error, as in :func:`load_data`.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_data` does for the same file.

    Example:
        >>> load_splits("builtin:nile") is None
        True
    """
    if str(spec).startswith(_BUILTIN_PREFIX):
        return None
    path = Path(spec)
    if _extension(path) != ".json":
        return None
    given = [
        name
        for name, value in (("sequence_column", sequence_column), ("time_column", time_column))
        if value is not None
    ]
    if given:
        raise ValueError(f"option(s) {', '.join(given)} do not apply to a polyphonic-music .json file")
    kind = kind or "binary"
    _check_polyphonic_kind(kind)
    content = _read_polyphonic_parts(path)
    if "train" not in content or not any(name in content for name in SPLIT_NAMES[1:]):
        return None
    parts = [_piano_roll(path, name, content[name], kind) if name in content else None for name in SPLIT_NAMES]
    if first_n is not None:
        parts = [part.head(first_n) if part is not None else None for part in parts]
    return Splits(*parts)


def _check_fractions(fractions: Iterable[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != 3
        or any(not math.isfinite(f) or f < 0 for f in values)
        or not math.isclose(sum(values), 1.0, abs_tol=1e-6)
    ):
        raise ValueError(
            f"fractions: expected three nonnegative numbers summing to 1 (train, valid, test), got {fractions!r}"
        )
    return values  # type: ignore[return-value]


def split_data(
    data: SequenceData,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    first_n: int | None = None,
    by: str = "shuffle",
) -> Splits:
    """Cuts data into train, validation and test parts, deterministically.

    A single sequence (a text, a time series) is cut contiguously in time:
    the first ``fractions[0]`` of its steps, the next ``fractions[1]``, the
    rest. Many sequences are, with ``by="shuffle"`` (the default), shuffled
    with a ``torch.Generator`` seeded by ``seed`` and divided by count, every
    part with a positive fraction getting at least one sequence; each part
    keeps its sequences in their original order. With ``by="time"`` every
    sequence is cut in time like a single one: sequence ``n`` of length
    ``L_n`` gives its steps ``[0, round(L_n f_0))`` to the training part,
    the next ``round(L_n (f_0 + f_1))`` to the validation part and the tail to
    the test part (a held-out piece is scored as a sequence of its own).
    A sequence too short to give a part a step is left out of that part.

    Args:
        data: the data to split.
        fractions: ``(train, valid, test)`` fractions, nonnegative, summing to 1.
        seed: the shuffle seed (many sequences, ``by="shuffle"`` only).
        first_n: first keep only the first ``first_n`` steps of every sequence.
        by: ``"shuffle"`` (whole sequences) or ``"time"`` (the last steps of
            every sequence held out).

    Returns:
        The three parts; a part whose fraction is 0 is None.

    Raises:
        ValueError: a part with a positive fraction would be empty.

    Example:
        >>> data = as_sequence_data([torch.arange(10.0).reshape(10, 1)] * 2, "real")
        >>> [p.lengths.tolist() for p in split_data(data, (0.6, 0.2, 0.2), by="time")]
        [[6, 6], [2, 2], [2, 2]]
    """
    if not isinstance(data, SequenceData):
        raise TypeError(f"data: expected SequenceData, got {type(data).__name__}")
    if by not in SPLIT_METHODS:
        raise ValueError(f"by: expected one of {', '.join(SPLIT_METHODS)}, got {by!r}")
    parts_fractions = _check_fractions(fractions)
    if first_n is not None:
        data = data.head(first_n)
    positive = [f > 0 for f in parts_fractions]
    if by == "time" and data.num_sequences > 1:
        return _split_by_time(data, parts_fractions)
    if data.num_sequences == 1:
        total = int(data.batch.lengths[0])
        first = round(total * parts_fractions[0])
        second = round(total * (parts_fractions[0] + parts_fractions[1]))
        bounds = [(0, first), (first, second), (second, total)]
        if any(keep and end <= start for keep, (start, end) in zip(positive, bounds)):
            raise ValueError(
                f"data: a sequence of {total} steps is too short to give every part with a positive "
                f"fraction {parts_fractions} at least one step"
            )
        values = data.batch.values[0]
        parts = [
            data.with_batch(SequenceBatch.from_sequences([values[start:end]])) if keep else None
            for keep, (start, end) in zip(positive, bounds)
        ]
        return Splits(*parts)

    count = data.num_sequences
    if sum(positive) > count:
        raise ValueError(f"data: {count} sequences cannot fill {sum(positive)} parts with at least one each")
    sizes = [round(count * f) if keep else 0 for f, keep in zip(parts_fractions, positive)]
    sizes = [max(size, 1) if keep else 0 for size, keep in zip(sizes, positive)]
    # Rounding may over- or under-shoot by a few; settle the difference on the largest part.
    while sum(sizes) != count:
        largest = max(range(3), key=lambda i: sizes[i])
        sizes[largest] += 1 if sum(sizes) < count else -1
        if positive[largest] and sizes[largest] < 1:
            raise ValueError(f"data: {count} sequences cannot fill the parts {parts_fractions}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    members, start = [], 0
    for size in sizes:
        members.append(order[start : start + size].tolist())
        start += size
    members = _give_every_part_steps(members, data.batch.lengths.tolist(), positive)
    parts = [
        data.select(torch.tensor(sorted(indices), dtype=torch.long)) if keep else None
        for indices, keep in zip(members, positive)
    ]
    return Splits(*parts)


def _split_by_time(data: SequenceData, fractions: tuple[float, float, float]) -> Splits:
    """Every sequence cut at ``round(L f_0)`` and ``round(L (f_0 + f_1))``: the
    first steps train, the next validate, the tail tests; empty pieces are left out."""
    pieces: list[list[Tensor]] = [[], [], []]
    owners: list[list[int]] = [[], [], []]
    for n, sequence in enumerate(data.batch.sequences()):
        total = len(sequence)
        first = round(total * fractions[0])
        second = round(total * (fractions[0] + fractions[1]))
        for part, (start, end) in enumerate(((0, first), (first, second), (second, total))):
            if fractions[part] > 0 and end > start:
                pieces[part].append(sequence[start:end])
                owners[part].append(n)
    parts = []
    for part, fraction in enumerate(fractions):
        if fraction == 0:
            parts.append(None)
            continue
        if not pieces[part]:
            longest = int(data.batch.lengths.max())
            raise ValueError(
                f"data: sequences of at most {longest} steps are too short to give the "
                f"{SPLIT_NAMES[part]} part (fraction {fraction}) a step of any sequence"
            )
        names = [data.sequence_names[n] for n in owners[part]] if data.sequence_names is not None else None
        parts.append(replace(data, batch=SequenceBatch.from_sequences(pieces[part]), sequence_names=names))
    return Splits(*parts)


def _give_every_part_steps(members: list[list[int]], lengths: list[int], positive: list[bool]) -> list[list[int]]:
    """Swaps sequences so that no part with a positive fraction holds only empty
    (zero-length) sequences: its scores would be NaN. A part takes a nonempty
    sequence from the part holding the most, giving back an empty one; parts keep
    their sizes.

    Raises:
        ValueError: fewer nonempty sequences than parts to fill.
    """
    nonempty = sum(1 for length in lengths if length > 0)
    if nonempty < sum(positive):
        raise ValueError(
            f"data: only {nonempty} of {len(lengths)} sequences have any steps; "
            f"{sum(positive)} parts with a positive fraction need one each"
        )
    members = [list(indices) for indices in members]
    for part, keep in enumerate(members):
        if not positive[part] or any(lengths[i] > 0 for i in keep):
            continue
        donor = max(
            (p for p in range(len(members)) if p != part), key=lambda p: (sum(lengths[i] > 0 for i in members[p]), -p)
        )
        given = next(i for i in members[donor] if lengths[i] > 0)
        taken = members[part][0]
        members[donor][members[donor].index(given)] = taken
        members[part][0] = given
    return members
