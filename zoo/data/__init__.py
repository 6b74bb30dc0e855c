"""Data readers, built-in data sets and splits.

Every model family takes its data as a :class:`SequenceData`: a padded
:class:`~inference.batch.SequenceBatch` (``values`` of shape
``(N, T, *event)`` plus ``lengths`` of shape ``(N,)``) and what a report needs
to describe it (its kind, vocabulary, series names and where it came from).

Kinds of data and how their values are stored:

============  =============  ==================  ==========================================
kind          event shape    dtype               values
============  =============  ==================  ==========================================
categorical   ``()``         int64               symbol codes in ``[0, V)``
real          ``(D,)``       floating            real numbers; NaN marks a missing entry
count         ``(D,)``       floating or int64   nonnegative integers
binary        ``(D,)``       floating            0 or 1 (e.g. piano-roll frames)
============  =============  ==================  ==========================================

:func:`load_data` reads a file (``.txt``, ``.csv``, ``.csv.gz``, ``.npz``, the
polyphonic-music ``.json``) or a built-in data set (``builtin:letters``,
``builtin:nile``, ``builtin:sunspots``) that ships with every install.
:func:`split_data` cuts it into train/validation/test parts (shuffled sequences, or
the last steps of every sequence held out with ``by="time"``); :func:`load_splits`
reads the parts of a file that ships its own split (JSB chorales).

Example:
    >>> data = load_data("builtin:nile")
    >>> data.kind, data.batch.values.shape
    ('real', torch.Size([1, 100, 1]))
    >>> parts = split_data(data)
    >>> [p.batch.num_steps for p in parts]
    [80, 10, 10]
"""

from __future__ import annotations

from ._files import SUPPORTED_EXTENSIONS

# Public names importable from zoo.data, though not in __all__ (as before the split).
from .builtin import BUILTIN_DATASETS, LETTERS, TimeAxis, load_builtin, time_axis  # noqa: F401
from .checks import require_counts, require_kind, require_real
from .container import KINDS, SequenceData, Vocabulary, as_sequence_data
from .loading import load_data
from .readers import (
    EmptyColumnWarning,  # noqa: F401
    load_polyphonic,
    read_csv,
    read_npz,
    read_text,
    save_npz,
)
from .splits import SPLIT_METHODS, SPLIT_NAMES, Splits, load_splits, split_data  # noqa: F401

__all__ = [
    "BUILTIN_DATASETS",
    "KINDS",
    "SUPPORTED_EXTENSIONS",
    "SequenceData",
    "Splits",
    "Vocabulary",
    "as_sequence_data",
    "load_builtin",
    "load_data",
    "load_polyphonic",
    "load_splits",
    "read_csv",
    "read_npz",
    "read_text",
    "require_counts",
    "require_kind",
    "require_real",
    "save_npz",
    "split_data",
    "time_axis",
]
