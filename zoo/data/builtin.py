"""The built-in data sets (``builtin:NAME``) and the data's own time axis for plots."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from inference.batch import SequenceBatch

from ._files import _BUILTIN_PREFIX, _extension, _read_bytes
from .container import SequenceData, Vocabulary, as_sequence_data
from .corpus import load_sotu
from .readers import _parse_float

# --------------------------------------------------------------------------
# Built-in data sets
# --------------------------------------------------------------------------
#: The ``letters`` vocabulary: space, then a–z.
LETTERS = " abcdefghijklmnopqrstuvwxyz"


def _letters(kind: str | None) -> SequenceData:
    if kind not in (None, "categorical"):
        raise ValueError(f"kind: builtin:letters is kind 'categorical', got {kind!r}")
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics)).lower()
    text = re.sub(r"[^a-z ]", " ", text)
    text = re.sub(" {2,}", " ", text).strip()
    vocabulary = Vocabulary(LETTERS)
    return SequenceData(
        batch=SequenceBatch.from_sequences([vocabulary.encode(text)]),
        kind="categorical",
        vocabulary=vocabulary,
        name="letters",
        source="builtin:letters",
    )


def _statsmodels_series(name: str, module: Any, column: str, kind: str | None) -> SequenceData:
    if kind not in (None, "real", "count"):
        raise ValueError(f"kind: builtin:{name} is kind 'real' (or 'count', rounded), got {kind!r}")
    frame = module.load().data
    series = np.asarray(frame[column], dtype=np.float64)
    kind = kind or "real"
    if kind == "count":
        series = np.round(series)
    values = torch.tensor(series, dtype=torch.get_default_dtype()).reshape(1, -1, 1)  # (N=1, T, D=1)
    return as_sequence_data(values, kind, name=name, series_names=[column], source=f"builtin:{name}")


def _nile(kind: str | None) -> SequenceData:
    from statsmodels.datasets import nile

    return _statsmodels_series("nile", nile, "volume", kind)


def _sunspots(kind: str | None) -> SequenceData:
    from statsmodels.datasets import sunspots

    return _statsmodels_series("sunspots", sunspots, "SUNACTIVITY", kind)


#: Built-in data sets: name -> (loader taking ``kind``, description).
BUILTIN_DATASETS: dict[str, tuple[Callable[[str | None], SequenceData], str]] = {
    "letters": (_letters, "English text from Python's pydoc topics, a-z and space (27 symbols), one sequence"),
    "nile": (_nile, "annual Nile flow volume at Aswan, 1871-1970 (100 values, real, D=1)"),
    "sunspots": (_sunspots, "yearly sunspot activity, 1700-2008 (309 values, real D=1; kind='count' rounds)"),
}


def _sotu(kind: str | None, **corpus_options: Any) -> SequenceData:
    """``builtin:sotu``, the State of the Union paragraphs 1790-2009 (kind 'corpus'; decades as
    slices), read by :func:`load_data` only: it is a corpus, not one of :data:`BUILTIN_DATASETS`' sequences."""
    if kind not in (None, "corpus"):
        raise ValueError(f"kind: builtin:sotu is kind 'corpus', got {kind!r}")
    return load_sotu(**corpus_options).as_data()


#: Options of the corpus reader (``zoo.data.corpus.read_corpus``) that load_data passes on.
_CORPUS_OPTIONS = ("slice_width", "min_document_frequency", "max_vocabulary_size")


def load_builtin(name: str, *, kind: str | None = None) -> SequenceData:
    """Loads a built-in data set by name (see :data:`BUILTIN_DATASETS`).

    Args:
        name: ``"letters"``, ``"nile"`` or ``"sunspots"`` (a ``builtin:``
            prefix is accepted).
        kind: convert to this kind where the data set allows it
            (``"count"`` for the numeric series rounds them).
    """
    name = name.removeprefix(_BUILTIN_PREFIX)
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in data set {name!r}; available: {', '.join(sorted(BUILTIN_DATASETS))}")
    loader, _ = BUILTIN_DATASETS[name]
    return loader(kind)


class TimeAxis(NamedTuple):
    """The data's own time axis for plots: ``values`` ``(T,)`` (numbers, e.g. years,
    or ``datetime64``), the axis ``label``, and the series' ``units`` (None when unknown)."""

    values: np.ndarray
    label: str
    units: str | None = None


#: Built-in series' time column (in statsmodels' frame), axis label and units.
_BUILTIN_TIME = {"nile": ("year", "year", "10⁸ m³"), "sunspots": ("YEAR", "year", None)}


def time_axis(
    spec: str | Path, *, time_column: str | None = None, sequence_column: str | None = None, sequence: int = 0
) -> TimeAxis | None:
    """The time axis of one sequence of a data set, for the x-axis of its plots.

    Built-in series give their years (and the Nile its units); a CSV file its
    ``time_column`` (numbers, else dates ``datetime64``, else None: plots fall
    back to step numbers); anything else None.

    Args:
        spec: as for :func:`load_data`.
        time_column: the CSV's time column (as given to :func:`read_csv`).
        sequence_column: the CSV's sequence column; ``sequence`` picks the
            sequence (by order of first appearance, as :func:`read_csv` orders them).
        sequence: which sequence.

    Raises:
        ValueError: ``time_column`` is not a column of the file.
    """
    spec_text = str(spec)
    if spec_text.startswith(_BUILTIN_PREFIX):
        name = spec_text.removeprefix(_BUILTIN_PREFIX)
        if name not in _BUILTIN_TIME:
            return None
        column, label, units = _BUILTIN_TIME[name]
        module = __import__(f"statsmodels.datasets.{name}", fromlist=["load"])
        return TimeAxis(np.asarray(module.load().data[column], dtype=np.float64), label, units)
    path = Path(spec)
    if time_column is None or _extension(path) not in (".csv", ".csv.gz"):
        return None
    rows = list(csv.reader(io.StringIO(_read_bytes(path).decode("utf-8-sig"), newline="")))
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    header = [cell.strip() for cell in rows[0]] if rows else []
    for argument, column in (("time_column", time_column), ("sequence_column", sequence_column)):
        if column is not None and column not in header:
            raise ValueError(f"{argument}: no column {column!r} in {path}; columns are {header!r}")
    cells = [row[header.index(time_column)].strip() for row in rows[1:]]
    if sequence_column is not None:
        ids = [row[header.index(sequence_column)].strip() for row in rows[1:]]
        order = list(dict.fromkeys(ids))
        if not 0 <= sequence < len(order):
            raise ValueError(f"sequence: {path} has {len(order)} sequences, got {sequence}")
        cells = [cell for cell, own in zip(cells, ids) if own == order[sequence]]
    numbers = [_parse_float(cell) for cell in cells]
    if all(number is not None and math.isfinite(number) for number in numbers):
        return TimeAxis(np.asarray(numbers, dtype=np.float64), time_column)
    try:
        return TimeAxis(np.asarray(cells, dtype="datetime64"), time_column)
    except ValueError:
        return None
