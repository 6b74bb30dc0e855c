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

import csv
import gzip
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from inference.batch import SequenceBatch

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

#: The kinds of data a :class:`SequenceData` can hold.
KINDS: tuple[str, ...] = ("categorical", "real", "count", "binary", "corpus")
#: File name endings :func:`load_data` reads.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".csv.gz", ".npz", ".json")
#: Cell texts the CSV reader takes as a missing value (compared lower-cased), besides the empty cell.
_MISSING_CELLS = frozenset({"", "nan", "na", "n/a"})
#: Piano-roll width and the MIDI pitch of its first key (A0).
_PIANO_KEYS = 88
_LOWEST_PITCH = 21
_BUILTIN_PREFIX = "builtin:"


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of distinct one-character symbols; code ``i`` is ``symbols[i]``.

    Args:
        symbols: the symbols in code order, each a string of length 1 (a
            string is read as its characters).

    Example:
        >>> vocab = Vocabulary.from_text("hello world")
        >>> len(vocab), vocab.symbols[:3]
        (8, (' ', 'd', 'e'))
        >>> codes = vocab.encode("hello")
        >>> codes.tolist(), vocab.decode(codes)
        ([3, 2, 4, 4, 5], 'hello')
    """

    symbols: tuple[str, ...]
    # Sorted code points and the codes in that order, for vectorised lookup.
    _sorted_code_points: np.ndarray = field(init=False, repr=False, compare=False)
    _codes_by_code_point: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.symbols, (str, list, tuple)):
            symbols = tuple(self.symbols)
        else:
            raise TypeError(f"symbols: expected a sequence of characters, got {type(self.symbols).__name__}")
        if not symbols:
            raise ValueError("symbols: expected at least one symbol, got none")
        for position, symbol in enumerate(symbols):
            if not isinstance(symbol, str) or len(symbol) != 1:
                raise ValueError(f"symbols[{position}]: expected a single character, got {symbol!r}")
        if len(set(symbols)) != len(symbols):
            repeated = sorted({s for s in symbols if symbols.count(s) > 1})
            raise ValueError(f"symbols: expected distinct symbols, got repeats of {repeated!r}")
        code_points = np.array([ord(s) for s in symbols], dtype=np.int64)
        order = np.argsort(code_points, kind="stable")
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "_sorted_code_points", code_points[order])
        object.__setattr__(self, "_codes_by_code_point", order.astype(np.int64))

    @classmethod
    def from_text(cls, text: str) -> "Vocabulary":
        """The sorted distinct characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        if not text:
            raise ValueError("text: expected a non-empty string to build a vocabulary from")
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.symbols

    def __iter__(self):
        return iter(self.symbols)

    def encode(self, text: str) -> Tensor:
        """Codes of the characters of ``text``.

        Args:
            text: the string to encode.

        Returns:
            ``(len(text),)`` int64 codes.

        Raises:
            ValueError: a character is not in the vocabulary; the message names
                it, its line and column (1-based) and the vocabulary.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        # UTF-32 gives one fixed-width code point per character (surrogatepass keeps lone surrogates).
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)
        positions = np.searchsorted(self._sorted_code_points, code_points)
        positions = np.minimum(positions, len(self.symbols) - 1)
        known = self._sorted_code_points[positions] == code_points
        if not known.all():
            index = int(np.argmin(known))
            line = text.count("\n", 0, index) + 1
            column = index - (text.rfind("\n", 0, index) + 1) + 1
            raise ValueError(
                f"symbol {text[index]!r} at line {line}, column {column} is not in the vocabulary "
                f"of {len(self)} symbols {''.join(self.symbols)!r}"
            )
        return torch.from_numpy(self._codes_by_code_point[positions])

    def decode(self, codes: Tensor | np.ndarray | Sequence[int]) -> str:
        """The text of a 1-D sequence of codes (inverse of :meth:`encode`).

        Args:
            codes: ``(T,)`` integer codes in ``[0, len(self))``.
        """
        array = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
        if array.size == 0:
            return ""
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"codes: expected a 1-D integer sequence, got {array.dtype} of shape {array.shape}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= len(self):
            raise ValueError(f"codes: expected values in [0, {len(self)}), got range [{low}, {high}]")
        return "".join(self.symbols[i] for i in array.tolist())

    def to_json(self) -> str:
        """A JSON string that :meth:`from_json` reads back."""
        return json.dumps({"symbols": list(self.symbols)})

    @classmethod
    def from_json(cls, text: str | dict) -> "Vocabulary":
        """Reads the output of :meth:`to_json` (a string, or the parsed dict)."""
        content = json.loads(text) if isinstance(text, str) else text
        if not isinstance(content, dict) or not isinstance(content.get("symbols"), list):
            raise ValueError('text: expected JSON of the form {"symbols": [...]}')
        return cls(tuple(content["symbols"]))


# --------------------------------------------------------------------------
# The data container and its validation
# --------------------------------------------------------------------------
def _describe(values: Tensor) -> str:
    return f"{str(values.dtype).removeprefix('torch.')} of shape {tuple(values.shape)}"


def _validate_values(values: Tensor, mask: Tensor, kind: str, vocabulary: Vocabulary | None, name: str) -> None:
    """Checks dtype, shape and the range of the real (unpadded) entries for ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "categorical":
        if values.dtype != torch.long or values.dim() != 2:
            raise ValueError(f"{name}: expected int64 codes of shape (N, T) for kind 'categorical', got {_describe(values)}")
        observed = values[mask]
        if observed.numel():
            low, high = int(observed.min()), int(observed.max())
            upper = len(vocabulary) if vocabulary is not None else None
            if low < 0 or (upper is not None and high >= upper):
                bound = f"[0, {upper})" if upper is not None else "[0, inf)"
                raise ValueError(f"{name}: expected codes in {bound}, got range [{low}, {high}]")
        return
    if vocabulary is not None:
        raise ValueError(f"vocabulary: only kind 'categorical' has a vocabulary, got kind {kind!r}")
    if kind == "corpus":  # bag-of-words documents (zoo.corpus): (word id, count) pairs
        if values.dtype != torch.long or values.dim() != 3 or values.shape[-1] != 2:
            raise ValueError(f"{name}: expected int64 (word id, count) pairs of shape (N, L, 2) for kind 'corpus', "
                             f"got {_describe(values)}")
        if (values[mask] < 0).any():
            raise ValueError(f"{name}: expected nonnegative word ids and counts for kind 'corpus'")
        return
    allowed_dtype = values.is_floating_point() or (kind == "count" and values.dtype == torch.long)
    if not allowed_dtype or values.dim() != 3:
        dtype_text = "floating or int64" if kind == "count" else "floating"
        raise ValueError(f"{name}: expected {dtype_text} values of shape (N, T, D) for kind {kind!r}, got {_describe(values)}")
    observed = values[mask]
    if not observed.numel():
        return
    if kind == "real":
        if torch.isinf(observed).any():
            raise ValueError(f"{name}: expected finite values (NaN for missing) for kind 'real', found infinity")
        return
    if observed.is_floating_point() and torch.isnan(observed).any():
        raise ValueError(f"{name}: kind {kind!r} has no missing values, found NaN (use kind 'real' for missing data)")
    if kind == "count":
        if (observed < 0).any() or (observed.is_floating_point() and (observed != observed.round()).any()):
            raise ValueError(f"{name}: expected nonnegative integers for kind 'count'")
    elif ((observed != 0) & (observed != 1)).any():
        raise ValueError(f"{name}: expected only 0 and 1 for kind 'binary'")


@dataclass(frozen=True)
class SequenceData:
    """Sequences of one kind, with what a report needs to describe them.

    Attributes:
        batch: the padded sequences, ``values`` ``(N, T)`` for categorical data
            and ``(N, T, D)`` otherwise.
        kind: one of :data:`KINDS` (see the module docstring for dtypes).
        vocabulary: the symbols of categorical data; None for other kinds (or
            codes without names).
        name: a short name for reports (file stem or built-in name).
        series_names: ``D`` names of the columns of vector data, or None.
        source: the file path or ``builtin:NAME`` it came from.
        sequence_names: ``N`` names of the sequences (e.g. the values of a CSV
            sequence-id column), or None.

    Example:
        >>> data = as_sequence_data(torch.tensor([[0, 1, 1]]), "categorical")
        >>> data.num_symbols, data.num_sequences
        (2, 1)
    """

    batch: SequenceBatch
    kind: str
    vocabulary: Vocabulary | None = None
    name: str = ""
    series_names: list[str] | None = None
    source: str = ""
    sequence_names: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch, SequenceBatch):
            raise TypeError(f"batch: expected a SequenceBatch, got {type(self.batch).__name__}")
        if self.vocabulary is not None and not isinstance(self.vocabulary, Vocabulary):
            raise TypeError(f"vocabulary: expected a Vocabulary or None, got {type(self.vocabulary).__name__}")
        _validate_values(self.batch.values, self.batch.mask, self.kind, self.vocabulary, "batch.values")
        if self.series_names is not None:
            if self.kind == "categorical":
                raise ValueError("series_names: categorical data has no series columns")
            if len(self.series_names) != self.batch.values.shape[-1]:
                raise ValueError(
                    f"series_names: expected {self.batch.values.shape[-1]} names (one per column), "
                    f"got {len(self.series_names)}"
                )
        if self.sequence_names is not None and len(self.sequence_names) != self.batch.num_sequences:
            raise ValueError(
                f"sequence_names: expected {self.batch.num_sequences} names (one per sequence), "
                f"got {len(self.sequence_names)}"
            )

    # -- views ------------------------------------------------------------
    @property
    def values(self) -> Tensor:
        """``(N, T, *event)`` padded values (``batch.values``)."""
        return self.batch.values

    @property
    def lengths(self) -> Tensor:
        """``(N,)`` int64 sequence lengths (``batch.lengths``)."""
        return self.batch.lengths

    @property
    def num_sequences(self) -> int:
        return self.batch.num_sequences

    @property
    def num_steps(self) -> int:
        """Total number of real time steps over all sequences."""
        return self.batch.num_steps

    @property
    def num_symbols(self) -> int:
        """``V``: the vocabulary size, or one more than the largest code when there is no vocabulary."""
        if self.kind != "categorical":
            raise ValueError(f"num_symbols: only categorical data has symbols, this data is {self.kind!r}")
        if self.vocabulary is not None:
            return len(self.vocabulary)
        observed = self.batch.values[self.batch.mask]
        return int(observed.max()) + 1 if observed.numel() else 0

    @property
    def num_series(self) -> int:
        """``D``: the number of series (columns) per step; 1 for a symbol sequence."""
        return 1 if self.kind == "categorical" else int(self.batch.values.shape[-1])

    @property
    def dim(self) -> int:
        """Width of one step as a model input: ``D`` for vector data, ``V`` (one-hot) for symbols."""
        return self.num_symbols if self.kind == "categorical" else self.num_series

    def __len__(self) -> int:
        return self.num_sequences

    # -- derived data -----------------------------------------------------
    def with_batch(self, batch: SequenceBatch, keep_sequence_names: bool = False) -> "SequenceData":
        """The same metadata around another batch of the same kind."""
        names = self.sequence_names if keep_sequence_names else None
        return replace(self, batch=batch, sequence_names=names)

    def select(self, indices: Tensor | Sequence[int]) -> "SequenceData":
        """The sequences at ``indices`` (in that order), padding trimmed, as a full data set."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"indices: expected a 1-D list of sequence indices, got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -self.num_sequences or int(index.max()) >= self.num_sequences):
            raise ValueError(f"indices: expected values in [0, {self.num_sequences}), got {index.tolist()}")
        picked = self.batch[index.to(self.batch.device)]
        names = [self.sequence_names[i] for i in index.tolist()] if self.sequence_names is not None else None
        # A selection is a data set of its own, not a mini-batch of the parent.
        return replace(self, batch=SequenceBatch(picked.values, picked.lengths, covariates=picked.covariates),
                       sequence_names=names)

    def head(self, num_steps: int) -> "SequenceData":
        """The first ``num_steps`` steps of every sequence (e.g. the first 20,000 characters of a text)."""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
        lengths = self.batch.lengths.clamp(max=num_steps)
        longest = int(lengths.max()) if lengths.numel() else 0
        batch = SequenceBatch(self.batch.values[:, :longest], lengths)
        return replace(self, batch=batch)

    def chunk(self, length: int) -> "SequenceData":
        """Cuts every sequence into consecutive pieces of at most ``length`` steps
        (see :meth:`SequenceBatch.chunk`); sequence names are dropped."""
        return self.with_batch(self.batch.chunk(length))

    def to(self, device=None, dtype=None) -> "SequenceData":
        """Moves to ``device``; ``dtype`` applies to floating-point values only."""
        return replace(self, batch=self.batch.to(device=device, dtype=dtype))


def _as_tensor(values: Any, argument: str) -> Tensor:
    if isinstance(values, Tensor):
        return values
    if isinstance(values, np.ndarray):
        if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
            raise TypeError(f"{argument}: expected a numeric array, got dtype {values.dtype}")
        # A copy: torch cannot share a read-only array, and the caller's array stays untouched.
        return torch.from_numpy(np.array(values, copy=True, order="C"))
    raise TypeError(f"{argument}: expected a torch.Tensor or numpy array, got {type(values).__name__}")


def as_sequence_data(
    values: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    kind: str,
    lengths: Tensor | np.ndarray | Sequence[int] | None = None,
    vocabulary: Vocabulary | None = None,
    *,
    name: str = "",
    series_names: Sequence[str] | None = None,
    source: str = "user",
) -> SequenceData:
    """Wraps user tensors or arrays as :class:`SequenceData`, checking them.

    Args:
        values: padded ``(N, T)`` integer codes (categorical) or ``(N, T, D)``
            values (other kinds); or a list of unpadded sequences, each
            ``(T_n,)`` or ``(T_n, D)``.
        kind: one of :data:`KINDS`. Categorical codes must be integers in
            ``[0, V)``; real values floating (NaN = missing); counts
            nonnegative integers (integer or whole floating values); binary 0/1.
        lengths: ``(N,)`` number of real steps of each padded sequence; all
            full length when omitted.
        vocabulary: the symbols of categorical codes.
        name: a short name for reports.
        series_names: ``D`` column names of vector data.
        source: where the data came from.

    Returns:
        The data; codes stored as int64, counts and binary values as floating
        (the default dtype when given as integers), real values in the given
        floating dtype. Padded entries are set to 0.

    Raises:
        TypeError, ValueError: naming the argument and the expected dtype or shape.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(values, (list, tuple)):
        if lengths is not None:
            raise ValueError("lengths: give lengths only with padded values, not with a list of sequences")
        if not values:
            raise ValueError("values: expected at least one sequence, got an empty list")
        sequences = [_as_tensor(v, f"values[{i}]") for i, v in enumerate(values)]
        expected_dims = 1 if kind == "categorical" else 2
        for i, sequence in enumerate(sequences):
            if sequence.dim() != expected_dims:
                shape = "(T,)" if kind == "categorical" else "(T, D)"
                raise ValueError(f"values[{i}]: expected shape {shape} for kind {kind!r}, got {tuple(sequence.shape)}")
        dtypes = {s.dtype for s in sequences}
        if len(dtypes) > 1:
            raise ValueError(f"values: expected every sequence to have one dtype, got {sorted(map(str, dtypes))}")
        tensor = SequenceBatch.from_sequences(sequences).values
        lengths_tensor = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    else:
        tensor = _as_tensor(values, "values")
        lengths_tensor = None
        if lengths is not None:
            lengths_tensor = _as_tensor(lengths if not isinstance(lengths, (list, tuple)) else np.asarray(lengths), "lengths")
    if kind == "categorical":
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"values: expected integer codes for kind 'categorical', got {_describe(tensor)}")
        if tensor.dim() != 2:
            raise ValueError(f"values: expected shape (N, T) for kind 'categorical', got {tuple(tensor.shape)}")
        tensor = tensor.long()
    else:
        if tensor.dim() != 3:
            raise ValueError(f"values: expected shape (N, T, D) for kind {kind!r}, got {tuple(tensor.shape)}")
        if tensor.is_complex():
            raise ValueError(f"values: expected real numbers, got {_describe(tensor)}")
        if kind == "real" and not tensor.is_floating_point():
            raise ValueError(
                f"values: expected floating values for kind 'real', got {_describe(tensor)} "
                "(convert with .float(), or use kind 'count' for integer counts)"
            )
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
    if lengths_tensor is None:
        lengths_tensor = torch.full(tensor.shape[:1], tensor.shape[1], dtype=torch.long)
    else:
        if lengths_tensor.is_floating_point() or lengths_tensor.dtype == torch.bool or lengths_tensor.dim() != 1:
            raise ValueError(f"lengths: expected a 1-D integer tensor of shape (N,), got {_describe(lengths_tensor)}")
        if lengths_tensor.shape[0] != tensor.shape[0]:
            raise ValueError(f"lengths: expected shape ({tensor.shape[0]},) to match values, got {tuple(lengths_tensor.shape)}")
        if lengths_tensor.numel() and (int(lengths_tensor.min()) < 0 or int(lengths_tensor.max()) > tensor.shape[1]):
            raise ValueError(
                f"lengths: expected values in [0, {tensor.shape[1]}], "
                f"got range [{int(lengths_tensor.min())}, {int(lengths_tensor.max())}]"
            )
        lengths_tensor = lengths_tensor.long().to(tensor.device)
    mask = torch.arange(tensor.shape[1], device=tensor.device) < lengths_tensor.unsqueeze(-1)
    _validate_values(tensor, mask, kind, vocabulary, "values")
    if not bool(mask.all()):
        # Padding may hold anything finite for consumers; zero it so NaN or junk never leaks.
        padding = ~mask if tensor.dim() == 2 else (~mask).unsqueeze(-1).expand_as(tensor)
        tensor = tensor.masked_fill(padding, 0)
    return SequenceData(
        batch=SequenceBatch(tensor, lengths_tensor),
        kind=kind,
        vocabulary=vocabulary,
        name=name,
        series_names=list(series_names) if series_names is not None else None,
        source=source,
    )


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------
def _clean_text(
    text: str,
    lowercase: bool,
    alphabet: str | None,
    replace_unknown: str | None,
    squeeze_spaces: bool,
) -> str:
    if lowercase:
        text = text.lower()
    if alphabet is not None:
        allowed = set(alphabet)
        substitute = replace_unknown if replace_unknown is not None else ""
        text = "".join(c if c in allowed else substitute for c in text)
    if squeeze_spaces:
        text = re.sub(" {2,}", " ", text)
    return text


def read_text(
    path: str | Path,
    *,
    vocabulary: Vocabulary | None = None,
    lowercase: bool = False,
    alphabet: str | None = None,
    replace_unknown: str | None = None,
    squeeze_spaces: bool = False,
    split: str | None = None,
) -> SequenceData:
    """Reads a UTF-8 text file as symbol codes.

    Args:
        path: the ``.txt`` file.
        vocabulary: encode with these symbols (a character outside them raises);
            by default the vocabulary is ``alphabet`` when given, else the
            sorted distinct characters of the (cleaned) file.
        lowercase: lower-case the text first.
        alphabet: keep only these characters; others are dropped, or replaced
            by ``replace_unknown`` when it is given.
        replace_unknown: the character that stands for one outside ``alphabet``.
        squeeze_spaces: collapse runs of spaces into one (after the steps above).
        split: None for one sequence holding the whole file; ``"lines"`` for one
            sequence per non-empty line (newlines removed); ``"paragraphs"`` for
            one per block separated by blank lines (inner newlines kept).

    Returns:
        Categorical data, ``values`` ``(N, T)``.

    Raises:
        ValueError: the file is not UTF-8, is empty after cleaning, or holds a
            character outside ``vocabulary`` (naming its line and column in
            the cleaned text, which are the file's own when nothing was dropped).
    """
    path = Path(path)
    if split not in (None, "lines", "paragraphs"):
        raise ValueError(f"split: expected None, 'lines' or 'paragraphs' for a text file, got {split!r}")
    if alphabet is not None and (not isinstance(alphabet, str) or not alphabet):
        raise ValueError(f"alphabet: expected a non-empty string of characters, got {alphabet!r}")
    if replace_unknown is not None:
        if alphabet is None:
            raise ValueError("replace_unknown: only applies together with alphabet")
        if not isinstance(replace_unknown, str) or len(replace_unknown) != 1 or replace_unknown not in alphabet:
            raise ValueError(f"replace_unknown: expected one character of alphabet, got {replace_unknown!r}")
    if vocabulary is not None and not isinstance(vocabulary, Vocabulary):
        raise TypeError(f"vocabulary: expected a Vocabulary, got {type(vocabulary).__name__}")
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is not text
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from error
    # Universal newlines, as a text editor shows them.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _clean_text(text, lowercase, alphabet, replace_unknown, squeeze_spaces)
    if not text:
        raise ValueError(f"{path}: no text left to read (the file is empty, or every character was dropped)")
    if vocabulary is None:
        vocabulary = Vocabulary(tuple(dict.fromkeys(alphabet))) if alphabet is not None else Vocabulary.from_text(text)
    try:
        codes = vocabulary.encode(text)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if split is None:
        pieces = [codes]
    else:
        # Cut the encoded text at the separators, so each piece's codes come from one encode call.
        separator = r"\n" if split == "lines" else r"\n[ \t]*\n(?:[ \t]*\n)*"
        pieces, start = [], 0
        for match in re.finditer(separator, text):
            pieces.append(codes[start : match.start()])
            start = match.end()
        pieces.append(codes[start:])
        if split == "paragraphs":
            newline_codes = [vocabulary.symbols.index("\n")] if "\n" in vocabulary else []
            pieces = [_strip_codes(p, newline_codes) for p in pieces]
        pieces = [p for p in pieces if len(p)]
        if not pieces:
            raise ValueError(f"{path}: no non-empty {split} to read")
    return SequenceData(
        batch=SequenceBatch.from_sequences(pieces),
        kind="categorical",
        vocabulary=vocabulary,
        name=_stem(path),
        source=str(path),
    )


def _strip_codes(codes: Tensor, strip: list[int]) -> Tensor:
    start, end = 0, len(codes)
    while start < end and int(codes[start]) in strip:
        start += 1
    while end > start and int(codes[end - 1]) in strip:
        end -= 1
    return codes[start:end]


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------
def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def read_csv(
    path: str | Path,
    *,
    kind: str = "real",
    sequence_column: str | None = None,
    time_column: str | None = None,
    columns: Sequence[str] | None = None,
) -> SequenceData:
    """Reads a CSV file (optionally gzipped): rows are time steps, columns series.

    The first row must be a header of column names. An empty cell (or
    ``NaN``/``NA``) is a missing value, NaN in the tensor.

    Args:
        path: the ``.csv`` or ``.csv.gz`` file.
        kind: ``"real"``, ``"count"`` or ``"binary"``.
        sequence_column: a column of sequence ids; rows with the same id form
            one sequence (in file order), so one file holds many sequences of
            different lengths. Sequences are ordered by first appearance.
        time_column: a column (e.g. a date) to drop.
        columns: the series columns to keep, in this order; by default every
            column but the sequence and time columns.

    Returns:
        ``values`` ``(N, T, D)``, with ``series_names`` the D column names and
        ``sequence_names`` the ids when ``sequence_column`` is given.

    A column of kind 'real' whose every cell is missing is dropped with an
    :class:`EmptyColumnWarning` (it would be fitted as a constant and counted
    in the parameters), or refused when ``columns`` names it.

    Raises:
        ValueError: naming the file, the line (1-based, as an editor shows it)
            and the column for a non-numeric or infinite cell; the line and expected
            number of fields for a ragged row; the file for an empty file or
            a missing header.
    """
    path = Path(path)
    if kind not in ("real", "count", "binary"):
        raise ValueError(f"kind: a CSV file holds kind 'real', 'count' or 'binary', got {kind!r}")
    raw = _read_bytes(path)
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from error
    reader = csv.reader(io.StringIO(content, newline=""))
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip() for cell in row]
            header_line = reader.line_num
            break
    if header is None:
        raise ValueError(f"{path}: the file is empty (expected a header row of column names, then data rows)")
    if all(cell and _parse_float(cell) is not None for cell in header):
        raise ValueError(
            f"{path}: line {header_line}: expected a header row of column names, got numbers {header[:5]!r}"
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ValueError(f"{path}: line {header_line}: repeated column names {duplicated!r}")
    for argument, column in (("sequence_column", sequence_column), ("time_column", time_column)):
        if column is not None and column not in header:
            raise ValueError(f"{argument}: no column {column!r} in {path}; columns are {header!r}")
    if columns is None:
        series_names = [name for name in header if name not in (sequence_column, time_column)]
    else:
        series_names = list(columns)
        unknown = [name for name in series_names if name not in header]
        if unknown:
            raise ValueError(f"columns: no column(s) {unknown!r} in {path}; columns are {header!r}")
        overlapping = [name for name in series_names if name in (sequence_column, time_column)]
        if overlapping:
            raise ValueError(f"columns: {overlapping!r} is the sequence or time column, not a series")
    if not series_names:
        raise ValueError(f"{path}: no series columns left (columns are {header!r})")
    series_indices = [header.index(name) for name in series_names]
    id_index = header.index(sequence_column) if sequence_column is not None else None

    rows_by_sequence: dict[str, list[list[float]]] = {}
    lines_by_sequence: dict[str, list[int]] = {}
    for row in reader:
        if not row:
            continue  # a blank line
        line = reader.line_num
        if len(row) != len(header):
            raise ValueError(
                f"{path}: line {line}: expected {len(header)} fields (as in the header), got {len(row)}"
            )
        numbers = []
        for index, name in zip(series_indices, series_names):
            cell = row[index].strip()
            if cell.lower() in _MISSING_CELLS:
                numbers.append(math.nan)
                continue
            number = _parse_float(cell)
            if number is None:
                raise ValueError(f"{path}: line {line}, column {name!r}: expected a number, got {cell!r}")
            if math.isinf(number):
                raise ValueError(f"{path}: line {line}, column {name!r}: expected a finite number "
                                 f"(an empty cell or NaN for a missing value), got {cell!r}")
            numbers.append(number)
        sequence_id = row[id_index].strip() if id_index is not None else ""
        if id_index is not None and not sequence_id:
            raise ValueError(f"{path}: line {line}, column {sequence_column!r}: empty sequence id")
        rows_by_sequence.setdefault(sequence_id, []).append(numbers)
        lines_by_sequence.setdefault(sequence_id, []).append(line)
    if not rows_by_sequence:
        raise ValueError(f"{path}: has a header but no data rows")

    arrays = {key: np.asarray(rows, dtype=np.float64) for key, rows in rows_by_sequence.items()}
    if kind == "real":  # other kinds have no missing values: their check below names the line
        arrays, series_names = _drop_empty_columns(path, arrays, series_names, explicit=columns is not None)
    if kind != "real":
        for key, array in arrays.items():
            if kind == "count":
                bad = np.isnan(array) | (array < 0) | (array != np.round(array))
                expected = "a nonnegative integer for kind 'count'"
            else:
                bad = np.isnan(array) | ((array != 0) & (array != 1))
                expected = "0 or 1 for kind 'binary'"
            if bad.any():
                row_index, column_index = np.argwhere(bad)[0]
                value = array[row_index, column_index]
                shown = "a missing value" if np.isnan(value) else repr(float(value))
                raise ValueError(
                    f"{path}: line {lines_by_sequence[key][row_index]}, column {series_names[column_index]!r}: "
                    f"expected {expected}, got {shown}"
                )
    dtype = torch.get_default_dtype()
    sequences = [torch.from_numpy(array).to(dtype) for array in arrays.values()]
    return SequenceData(
        batch=SequenceBatch.from_sequences(sequences),
        kind=kind,
        name=_stem(path),
        series_names=series_names,
        source=str(path),
        sequence_names=list(arrays) if sequence_column is not None else None,
    )


class EmptyColumnWarning(UserWarning):
    """A CSV column without a single number was dropped."""


def _drop_empty_columns(
    path: Path, arrays: dict[str, np.ndarray], series_names: list[str], explicit: bool
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Drops (with a warning) the columns whose every cell is missing: fitted, such a
    column's variance floors at a tiny constant and it counts in the parameters while
    telling nothing. Refuses when the columns were asked for by name, or none is left."""
    stacked = np.concatenate(list(arrays.values()), axis=0)  # (total rows, D)
    empty = [j for j in range(stacked.shape[1]) if np.isnan(stacked[:, j]).all()]
    if not empty:
        return arrays, series_names
    names = [series_names[j] for j in empty]
    if explicit:
        raise ValueError(f"{path}: column(s) {names!r} hold no numbers (every cell is missing); leave them out of columns")
    if len(empty) == len(series_names):
        raise ValueError(f"{path}: no column holds a number (every cell of {names!r} is missing)")
    import warnings

    warnings.warn(f"{path}: dropped column(s) {names!r}: every cell is missing", EmptyColumnWarning, stacklevel=3)
    keep = [j for j in range(len(series_names)) if j not in empty]
    return {key: array[:, keep] for key, array in arrays.items()}, [series_names[j] for j in keep]


# --------------------------------------------------------------------------
# Checks of data against what a model's flag needs
# --------------------------------------------------------------------------
def _first_bad_entry(data: "SequenceData", bad: Tensor) -> str:
    """``"sequence 0, step 3, column 'x'"`` of the first True entry of ``bad`` ``(N, T, D)`` on real steps."""
    n, t, d = (int(i) for i in torch.nonzero(bad)[0])
    where = f"sequence {data.sequence_names[n]!r}" if data.sequence_names else f"sequence {n}"
    column = f", column {data.series_names[d]!r}" if data.series_names and d < len(data.series_names) else (
        f", column {d}" if bad.shape[-1] > 1 else "")
    return f"{where}, step {t}{column}"


def require_kind(data: "SequenceData", kinds: Sequence[str], flag: str) -> None:
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
    what = {"categorical": "text or symbol codes", "real": "real numbers", "count": "counts",
            "binary": "0/1 frames"}.get(data.kind, data.kind)
    hint = {"real": "a .csv or .npz file of numbers", "count": "a .csv or .npz file of counts",
            "binary": "0/1 frames, e.g. --kind binary", "categorical": "a .txt file or symbol codes"}
    raise ValueError(f"{flag} needs {' or '.join(hint.get(k, k) for k in kinds)} ({wanted}), but {data.source} "
                     f"holds {what} (kind {data.kind!r})")


def require_counts(data: "SequenceData", flag: str) -> None:
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
        raise ValueError(f"{flag} needs nonnegative integer counts, but {data.source} has {shown} at "
                         f"{_first_bad_entry(data, bad if bad.dim() == 3 else bad[..., None])}")


def require_real(data: "SequenceData", flag: str) -> None:
    """Refuses ``data`` unless it is real-valued (kind 'real', or counts/binary frames
    read as numbers), naming the flag and the file (a ``.txt`` file is text)."""
    require_kind(data, ("real", "count", "binary"), flag)


# --------------------------------------------------------------------------
# NumPy archives
# --------------------------------------------------------------------------
_NPZ_KEYS = ("values", "lengths", "kind", "series_names", "symbols")


def save_npz(data: SequenceData, path: str | Path) -> None:
    """Writes ``data`` to an ``.npz`` archive that :func:`read_npz` reads back.

    The archive holds ``values`` ``(N, T, ...)``, ``lengths`` ``(N,)``,
    ``kind``, and ``series_names`` / ``symbols`` when present; all plain
    arrays, no pickles.
    """
    if not isinstance(data, SequenceData):
        raise TypeError(f"data: expected SequenceData, got {type(data).__name__}")
    arrays: dict[str, np.ndarray] = {
        "values": data.batch.values.detach().cpu().numpy(),
        "lengths": data.batch.lengths.cpu().numpy(),
        "kind": np.array(data.kind),
    }
    if data.series_names is not None:
        arrays["series_names"] = np.array(data.series_names, dtype=str)
    if data.vocabulary is not None:
        arrays["symbols"] = np.array(data.vocabulary.symbols, dtype=str)
    np.savez(Path(path), **arrays)


def read_npz(path: str | Path, *, kind: str | None = None) -> SequenceData:
    """Reads an ``.npz`` archive of padded sequences.

    The archive holds ``values`` ``(N, T)`` or ``(N, T, D)`` and optionally
    ``lengths`` ``(N,)`` (full length when absent), ``kind`` (a string),
    ``series_names`` ``(D,)`` and ``symbols`` ``(V,)`` (strings); or a single
    array of any name, taken as ``values``. Nothing is unpickled.

    Args:
        path: the ``.npz`` file.
        kind: one of :data:`KINDS`; by default the archive's ``kind``, else
            ``"categorical"`` for a 2-D integer array and ``"real"`` for a 3-D
            floating one.

    Raises:
        ValueError: naming the file and the array that has the wrong dtype or shape.
    """
    path = Path(path)
    _require_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable .npz archive ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected an .npz archive (np.savez), got a single .npy array")
    with archive:
        keys = list(archive.files)
        if not keys:
            raise ValueError(f"{path}: the archive holds no arrays")
        if "values" not in keys and len(keys) != 1:
            raise ValueError(f"{path}: expected an array named 'values' (or a single array), got arrays {keys!r}")
        if "values" in keys:
            extra = [key for key in keys if key not in _NPZ_KEYS]
            if extra:
                raise ValueError(f"{path}: unexpected arrays {extra!r}; an archive may hold {list(_NPZ_KEYS)!r}")
        try:
            arrays = {key: archive[key] for key in keys}
        except ValueError as error:
            raise ValueError(f"{path}: holds an object array, which is not read (no unpickling): {error}") from error
    values = arrays.get("values", arrays[keys[0]])
    if kind is None and "kind" in arrays:
        kind = str(arrays["kind"])
    if kind is None:
        if (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_) and values.ndim == 2:
            kind = "categorical"
        elif np.issubdtype(values.dtype, np.floating) and values.ndim == 3:
            kind = "real"
        else:
            raise ValueError(
                f"{path}: cannot tell the kind of values of dtype {values.dtype} and shape {values.shape}; "
                "expected 2-D integer codes (N, T) or 3-D floats (N, T, D), or pass kind="
            )
    vocabulary = None
    if "symbols" in arrays:
        symbols = arrays["symbols"]
        if symbols.dtype.kind != "U" or symbols.ndim != 1:
            raise ValueError(f"{path}: expected 'symbols' to be a 1-D string array, got {symbols.dtype} {symbols.shape}")
        vocabulary = Vocabulary(tuple(symbols.tolist()))
    series_names = None
    if "series_names" in arrays:
        names = arrays["series_names"]
        if names.dtype.kind != "U" or names.ndim != 1:
            raise ValueError(f"{path}: expected 'series_names' to be a 1-D string array, got {names.dtype} {names.shape}")
        series_names = names.tolist()
    try:
        return as_sequence_data(
            values,
            kind,
            lengths=arrays.get("lengths"),
            vocabulary=vocabulary,
            name=_stem(path),
            series_names=series_names,
            source=str(path),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


# --------------------------------------------------------------------------
# Polyphonic music (JSON)
# --------------------------------------------------------------------------
def load_polyphonic(path: str | Path, split: str = "train", *, kind: str = "binary") -> SequenceData:
    """Reads polyphonic music as 88-key piano-roll frames.

    The file is JSON ``{"train": [...], "valid": [...], "test": [...]}``;
    each part a list of sequences, each sequence a list of frames, each frame
    a list of MIDI pitches (ints in ``[21, 108]``; an empty frame is a rest).
    This is the format of JSB Chorales in ``../shared/data/jsb_chorales.json``.
    :func:`load_splits` reads all of its parts at once.

    Args:
        path: the ``.json`` file.
        split: the part to read (``"train"``, ``"valid"`` or ``"test"``).
        kind: ``"binary"`` or ``"count"`` (the same 0/1 values).

    Returns:
        ``values`` ``(N, T, 88)`` float, ``values[n, t, pitch - 21] = 1`` when
        the pitch sounds; ``series_names`` the MIDI pitches 21..108 as strings.
    """
    path = Path(path)
    _check_polyphonic_kind(kind)
    content = _read_polyphonic_parts(path)
    if split not in content:
        raise ValueError(f"split: {path} has no part {split!r}; parts are {sorted(content)!r}")
    return _piano_roll(path, split, content[split], kind)


def _check_polyphonic_kind(kind: str) -> None:
    if kind not in ("binary", "count"):
        raise ValueError(f"kind: polyphonic frames are kind 'binary' or 'count', got {kind!r}")


def _read_polyphonic_parts(path: Path) -> dict[str, Any]:
    """The JSON object of parts of a polyphonic-music file (unchecked parts)."""
    raw = _read_bytes(path)
    try:
        content = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object of parts (e.g. 'train', 'valid', 'test'), got {type(content).__name__}")
    return content


def _piano_roll(path: Path, split: str, part: Any, kind: str) -> SequenceData:
    """One part of a polyphonic-music file as ``(N, T, 88)`` 0/1 frames."""
    if not isinstance(part, list) or not part:
        raise ValueError(f"{path}: part {split!r}: expected a non-empty list of sequences")
    highest = _LOWEST_PITCH + _PIANO_KEYS - 1
    sequences = []
    for n, frames in enumerate(part):
        where = f"{path}: part {split!r}, sequence {n}"
        if not isinstance(frames, list) or not frames:
            raise ValueError(f"{where}: expected a non-empty list of frames")
        roll = np.zeros((len(frames), _PIANO_KEYS), dtype=np.float32)
        for t, pitches in enumerate(frames):
            if not isinstance(pitches, list) or not all(type(p) is int for p in pitches):
                raise ValueError(f"{where}, frame {t}: expected a list of integer MIDI pitches, got {pitches!r}")
            if pitches and (min(pitches) < _LOWEST_PITCH or max(pitches) > highest):
                raise ValueError(f"{where}, frame {t}: expected pitches in [{_LOWEST_PITCH}, {highest}], got {pitches!r}")
            roll[t, [p - _LOWEST_PITCH for p in pitches]] = 1.0
        sequences.append(torch.from_numpy(roll).to(torch.get_default_dtype()))
    return SequenceData(
        batch=SequenceBatch.from_sequences(sequences),
        kind=kind,
        name=f"{_stem(path)}-{split}",
        series_names=[str(p) for p in range(_LOWEST_PITCH, highest + 1)],
        source=str(path),
    )


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
    from zoo.corpus import load_sotu  # zoo.corpus builds on this module

    return load_sotu(**corpus_options).as_data()


#: Options of the corpus reader (``zoo.corpus.read_corpus``) that load_data passes on.
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


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------
def _stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def _extension(path: Path) -> str:
    name = path.name.lower()
    for extension in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension):
            return extension
    return "".join(path.suffixes[-2:]) or "(none)"


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {str(path)!r} (a built-in data set is named builtin:NAME)")
    if not path.is_file():
        raise ValueError(f"{path}: expected a data file, got a directory or special file")


def _read_bytes(path: Path) -> bytes:
    _require_file(path)
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    return raw


def load_data(
    spec: str | Path,
    *,
    kind: str | None = None,
    vocabulary: Vocabulary | None = None,
    lowercase: bool = False,
    alphabet: str | None = None,
    replace_unknown: str | None = None,
    squeeze_spaces: bool = False,
    split: str | None = None,
    sequence_column: str | None = None,
    time_column: str | None = None,
    columns: Sequence[str] | None = None,
    first_n: int | None = None,
    text_column: str | None = None,
    slice_width: float | None = None,
    min_document_frequency: int | None = None,
    max_vocabulary_size: int | None = None,
) -> SequenceData:
    """Reads a data file or a built-in data set.

    Args:
        spec: a file path (``.txt``, ``.csv``, ``.csv.gz``, ``.npz``,
            ``.json``) or ``builtin:NAME`` (see :data:`BUILTIN_DATASETS`).
        kind: one of :data:`KINDS`; the reader's natural kind by default.
        vocabulary, lowercase, alphabet, replace_unknown, squeeze_spaces: text
            options, see :func:`read_text`.
        split: for text, ``None``/``"lines"``/``"paragraphs"`` (see
            :func:`read_text`); for polyphonic JSON, the part to read
            (``"train"`` by default).
        sequence_column, time_column, columns: CSV options, see :func:`read_csv`.
        first_n: keep only the first ``first_n`` steps of every sequence
            (e.g. the first 20,000 characters of a text).
        text_column, slice_width, min_document_frequency, max_vocabulary_size:
            corpus options (kind ``"corpus"``, see ``zoo.corpus.read_corpus``): a CSV
            with ``text_column`` (or ``kind="corpus"``) is read as documents in time
            slices of ``slice_width`` of ``time_column`` (default ``"year"``);
            ``builtin:sotu`` takes the last three.

    Returns:
        The data.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unsupported extension (the message lists those supported),
            an unknown built-in, an option that does not apply to this kind of
            file, or malformed contents (the reader's message).
    """
    text_options = {
        "vocabulary": vocabulary,
        "lowercase": lowercase,
        "alphabet": alphabet,
        "replace_unknown": replace_unknown,
        "squeeze_spaces": squeeze_spaces,
    }
    csv_options = {"sequence_column": sequence_column, "time_column": time_column, "columns": columns}
    defaults = {"lowercase": False, "squeeze_spaces": False}

    def reject(options: dict[str, Any], what: str) -> None:
        given = [key for key, value in options.items() if value is not None and value != defaults.get(key, None)]
        if given:
            raise ValueError(f"option(s) {', '.join(given)} do not apply to {what}")

    corpus_options = {"slice_width": slice_width, "min_document_frequency": min_document_frequency,
                      "max_vocabulary_size": max_vocabulary_size}
    spec_text = str(spec)
    if spec_text == _BUILTIN_PREFIX + "sotu":
        reject({**text_options, **csv_options, "text_column": text_column, "split": split}, f"built-in data set {spec_text!r}")
        data = _sotu(kind, **{k: v for k, v in corpus_options.items() if v is not None})
    elif spec_text.startswith(_BUILTIN_PREFIX):
        reject({**text_options, **csv_options, **corpus_options, "text_column": text_column, "split": split},
               f"built-in data set {spec_text!r}")
        data = load_builtin(spec_text, kind=kind)
    elif kind == "corpus" or text_column is not None:
        path = Path(spec)
        _require_file(path)
        if _extension(path) not in (".csv", ".csv.gz"):
            raise ValueError(f"{path}: a corpus is read from a .csv or .csv.gz file, got {_extension(path)!r}")
        if kind not in (None, "corpus"):
            raise ValueError(f"kind: a CSV with a text column (--text-column) is read as kind 'corpus', got {kind!r}")
        reject({**text_options, "sequence_column": sequence_column, "columns": columns, "split": split}, "a corpus CSV")
        from zoo.corpus import read_corpus  # zoo.corpus builds on this module

        data = read_corpus(path, time_column=time_column or "year", text_column=text_column or "text",
                           **{k: v for k, v in corpus_options.items() if v is not None}).as_data()
    else:
        path = Path(spec)
        _require_file(path)
        extension = _extension(path)
        reject({**corpus_options, "text_column": text_column}, "a file read without --text-column (not a corpus)")
        if extension == ".txt":
            reject(csv_options, "a text file")
            if kind not in (None, "categorical"):
                raise ValueError(f"kind: a text file is read as kind 'categorical', got {kind!r}")
            data = read_text(path, split=split, **text_options)
        elif extension in (".csv", ".csv.gz"):
            reject({**text_options, "split": split}, "a CSV file")
            data = read_csv(path, kind=kind or "real", **csv_options)
        elif extension == ".npz":
            reject({**text_options, **csv_options, "split": split}, "an .npz file")
            data = read_npz(path, kind=kind)
        elif extension == ".json":
            reject({**text_options, **csv_options}, "a polyphonic-music .json file")
            data = load_polyphonic(path, split or "train", kind=kind or "binary")
        else:
            raise ValueError(
                f"{path}: unsupported file type {extension!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
                f"(or builtin:NAME, one of {', '.join(sorted(BUILTIN_DATASETS))})"
            )
    if first_n is not None:
        data = data.head(first_n)
    return data


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
    given = [name for name, value in (("sequence_column", sequence_column), ("time_column", time_column)) if value is not None]
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
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions: expected three nonnegative numbers summing to 1 (train, valid, test), got {fractions!r}")
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
    parts = [data.select(torch.tensor(sorted(indices), dtype=torch.long)) if keep else None
             for indices, keep in zip(members, positive)]
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
            raise ValueError(f"data: sequences of at most {longest} steps are too short to give the "
                             f"{SPLIT_NAMES[part]} part (fraction {fraction}) a step of any sequence")
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
        raise ValueError(f"data: only {nonempty} of {len(lengths)} sequences have any steps; "
                         f"{sum(positive)} parts with a positive fraction need one each")
    members = [list(indices) for indices in members]
    for part, keep in enumerate(members):
        if not positive[part] or any(lengths[i] > 0 for i in keep):
            continue
        donor = max((p for p in range(len(members)) if p != part),
                    key=lambda p: (sum(lengths[i] > 0 for i in members[p]), -p))
        given = next(i for i in members[donor] if lengths[i] > 0)
        taken = members[part][0]
        members[donor][members[donor].index(given)] = taken
        members[part][0] = given
    return members
