"""The data container :class:`SequenceData`, its validation, and the symbol :class:`Vocabulary`.

See :mod:`zoo.data` for the kinds of data and how their values are stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.batch import SequenceBatch

#: The kinds of data a :class:`SequenceData` can hold.
KINDS: tuple[str, ...] = ("categorical", "real", "count", "binary", "corpus")


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
    def from_text(cls, text: str) -> Vocabulary:
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
    def from_json(cls, text: str | dict) -> Vocabulary:
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
            raise ValueError(
                f"{name}: expected int64 codes of shape (N, T) for kind 'categorical', got {_describe(values)}"
            )
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
    if kind == "corpus":  # bag-of-words documents (zoo.data.corpus): (word id, count) pairs
        if values.dtype != torch.long or values.dim() != 3 or values.shape[-1] != 2:
            raise ValueError(
                f"{name}: expected int64 (word id, count) pairs of shape (N, L, 2) for kind 'corpus', "
                f"got {_describe(values)}"
            )
        if (values[mask] < 0).any():
            raise ValueError(f"{name}: expected nonnegative word ids and counts for kind 'corpus'")
        return
    allowed_dtype = values.is_floating_point() or (kind == "count" and values.dtype == torch.long)
    if not allowed_dtype or values.dim() != 3:
        dtype_text = "floating or int64" if kind == "count" else "floating"
        raise ValueError(
            f"{name}: expected {dtype_text} values of shape (N, T, D) for kind {kind!r}, got {_describe(values)}"
        )
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
        kind: one of :data:`KINDS` (see the docstring of :mod:`zoo.data` for dtypes).
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
    def with_batch(self, batch: SequenceBatch, keep_sequence_names: bool = False) -> SequenceData:
        """The same metadata around another batch of the same kind."""
        names = self.sequence_names if keep_sequence_names else None
        return replace(self, batch=batch, sequence_names=names)

    def select(self, indices: Tensor | Sequence[int]) -> SequenceData:
        """The sequences at ``indices`` (in that order), padding trimmed, as a full data set."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if index.dim() != 1:
            raise ValueError(f"indices: expected a 1-D list of sequence indices, got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < -self.num_sequences or int(index.max()) >= self.num_sequences):
            raise ValueError(f"indices: expected values in [0, {self.num_sequences}), got {index.tolist()}")
        picked = self.batch[index.to(self.batch.device)]
        names = [self.sequence_names[i] for i in index.tolist()] if self.sequence_names is not None else None
        # A selection is a data set of its own, not a mini-batch of the parent.
        return replace(
            self, batch=SequenceBatch(picked.values, picked.lengths, covariates=picked.covariates), sequence_names=names
        )

    def head(self, num_steps: int) -> SequenceData:
        """The first ``num_steps`` steps of every sequence (e.g. the first 20,000 characters of a text)."""
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
            raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
        lengths = self.batch.lengths.clamp(max=num_steps)
        longest = int(lengths.max()) if lengths.numel() else 0
        batch = SequenceBatch(self.batch.values[:, :longest], lengths)
        return replace(self, batch=batch)

    def chunk(self, length: int) -> SequenceData:
        """Cuts every sequence into consecutive pieces of at most ``length`` steps
        (see :meth:`SequenceBatch.chunk`); sequence names are dropped."""
        return self.with_batch(self.batch.chunk(length))

    def to(self, device=None, dtype=None) -> SequenceData:
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
            lengths_tensor = _as_tensor(
                lengths if not isinstance(lengths, (list, tuple)) else np.asarray(lengths), "lengths"
            )
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
            raise ValueError(
                f"lengths: expected shape ({tensor.shape[0]},) to match values, got {tuple(lengths_tensor.shape)}"
            )
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
