"""The batch container every kernel, model and the fit loop take.

Shapes follow one convention throughout the package: batch dimensions on the
left, then time, then event. A batch of ``N`` variable-length sequences is held
padded to the longest, ``values`` of shape ``(N, T, *event_shape)``, with
``lengths`` of shape ``(N,)``; step ``t`` of sequence ``n`` is real when
``t < lengths[n]``. Padded entries may hold anything finite; every consumer
masks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import pyro
import torch
from torch import Tensor


@dataclass(frozen=True)
class SequenceBatch:
    """Padded variable-length sequences.

    Attributes:
        values: ``(N, T, *event_shape)`` observations, padded after each
            sequence's end. Integer codes for symbols, floats for real series
            (NaN marks a missing entry), integer counts for count data.
        lengths: ``(N,)`` int64, the number of real steps of each sequence.
        population: how many sequences the full data set holds when this batch
            is a mini-batch of it; models scale their likelihood by
            ``population / N`` through :func:`sequence_plate`. Defaults to ``N``.
        covariates: per-sequence side information, each a ``(N, ...)`` tensor
            (a time slice, a document id, a context vector ``θ``). Every
            operation (indexing, :meth:`to`, mini-batching, :meth:`chunk`)
            keeps them aligned with ``values``. Read-only mapping.
        index: ``(N,)`` int64, each sequence's index in the full data set
            (``None``: ``arange(N)``), so a mini-batch still knows which
            sequences it holds (per-sequence guide parameters index by it).

    Example:
        >>> batch = SequenceBatch.from_sequences([torch.tensor([0, 1, 2]), torch.tensor([1])],
        ...                                      covariates={"year": torch.tensor([1990, 2000])})
        >>> batch.values.shape, batch.lengths.tolist()
        (torch.Size([2, 3]), [3, 1])
        >>> batch[1].covariates["year"].tolist(), batch[1].indices.tolist()
        ([2000], [1])
    """

    values: Tensor
    lengths: Tensor
    population: int | None = None
    covariates: Mapping[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None

    # Identity hash, as before covariates (a mapping is not hashable; tensors hash by identity anyway).
    __hash__ = object.__hash__

    def __post_init__(self) -> None:
        if not isinstance(self.values, Tensor):
            raise TypeError(f"values: expected a torch.Tensor, got {type(self.values).__name__}")
        if not isinstance(self.lengths, Tensor):
            raise TypeError(f"lengths: expected a torch.Tensor, got {type(self.lengths).__name__}")
        if self.values.dim() < 2:
            raise ValueError(
                f"values: expected shape (N, T, *event_shape) with at least 2 dims, got {tuple(self.values.shape)}"
            )
        if self.lengths.shape != self.values.shape[:1]:
            raise ValueError(
                f"lengths: expected shape ({self.values.shape[0]},) to match values, got {tuple(self.lengths.shape)}"
            )
        if self.lengths.dtype != torch.long:
            object.__setattr__(self, "lengths", self.lengths.long())
        if self.lengths.device != self.values.device:
            raise ValueError(f"lengths is on {self.lengths.device} but values on {self.values.device}")
        if self.lengths.numel():
            low, high = int(self.lengths.min()), int(self.lengths.max())
            if low < 0 or high > self.values.shape[1]:
                raise ValueError(f"lengths: expected values in [0, {self.values.shape[1]}], got range [{low}, {high}]")
        n = self.values.shape[0]
        if not isinstance(self.covariates, Mapping):
            raise TypeError(f"covariates: expected a mapping of name to tensor, got {type(self.covariates).__name__}")
        for name, covariate in self.covariates.items():
            if not isinstance(name, str):
                raise TypeError(f"covariates: expected str names, got {name!r}")
            if not isinstance(covariate, Tensor):
                raise TypeError(f"covariates[{name!r}]: expected a torch.Tensor, got {type(covariate).__name__}")
            if covariate.dim() < 1 or covariate.shape[0] != n:
                raise ValueError(
                    f"covariates[{name!r}]: expected shape ({n}, ...), one row per sequence, "
                    f"got {tuple(covariate.shape)}"
                )
            if covariate.device != self.values.device:
                raise ValueError(f"covariates[{name!r}] is on {covariate.device} but values on {self.values.device}")
        # A read-only copy: a frozen batch must not change when the caller's dict does.
        object.__setattr__(self, "covariates", MappingProxyType(dict(self.covariates)))
        if self.index is not None:
            if not isinstance(self.index, Tensor) or self.index.shape != (n,) or self.index.is_floating_point():
                raise ValueError(
                    f"index: expected an ({n},) integer tensor or None, "
                    f"got {getattr(self.index, 'shape', type(self.index).__name__)}"
                )
            if self.index.device != self.values.device:
                raise ValueError(f"index is on {self.index.device} but values on {self.values.device}")
            if self.index.dtype != torch.long:
                object.__setattr__(self, "index", self.index.long())

    # -- construction -----------------------------------------------------
    @classmethod
    def from_sequences(
        cls,
        sequences: Sequence[Tensor],
        padding_value: float = 0,
        *,
        covariates: Mapping[str, Tensor] | None = None,
        index: Tensor | None = None,
    ) -> SequenceBatch:
        """Pads a list of ``(T_n, *event_shape)`` tensors into one batch, with
        optional per-sequence ``covariates`` (each ``(N, ...)``) and ``index`` ``(N,)``."""
        if len(sequences) == 0:
            raise ValueError("sequences: expected at least one sequence, got none")
        event_shape = sequences[0].shape[1:]
        for i, seq in enumerate(sequences):
            if seq.dim() < 1 or seq.shape[1:] != event_shape:
                raise ValueError(
                    f"sequences[{i}]: expected shape (T, {', '.join(map(str, event_shape))}), got {tuple(seq.shape)}"
                )
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long, device=sequences[0].device)
        values = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=padding_value)
        return cls(values, lengths, covariates=dict(covariates or {}), index=index)

    @classmethod
    def from_tensor(
        cls,
        values: Tensor,
        lengths: Tensor | None = None,
        *,
        covariates: Mapping[str, Tensor] | None = None,
        index: Tensor | None = None,
    ) -> SequenceBatch:
        """Wraps ``(N, T, ...)`` values; all sequences full length unless ``lengths``."""
        if lengths is None:
            lengths = torch.full(values.shape[:1], values.shape[1], dtype=torch.long, device=values.device)
        return cls(values, lengths, covariates=dict(covariates or {}), index=index)

    # -- views ------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return self.values.shape[0]

    @property
    def max_length(self) -> int:
        return self.values.shape[1]

    @property
    def event_shape(self) -> torch.Size:
        return self.values.shape[2:]

    @property
    def num_steps(self) -> int:
        """Total number of real time steps over all sequences."""
        return int(self.lengths.sum())

    @property
    def mask(self) -> Tensor:
        """``(N, T)`` bool, True on real steps."""
        steps = torch.arange(self.max_length, device=self.values.device)
        return steps < self.lengths.unsqueeze(-1)

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def indices(self) -> Tensor:
        """``(N,)`` int64: each sequence's index in the full data set (``index``, or ``arange(N)``)."""
        if self.index is not None:
            return self.index
        return torch.arange(self.num_sequences, device=self.device)

    def to(self, device=None, dtype=None) -> SequenceBatch:
        """Moves to ``device``; ``dtype`` applies to floating-point values and covariates only."""

        def move(tensor: Tensor) -> Tensor:
            tensor = tensor.to(device=device)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            return tensor

        return replace(
            self,
            values=move(self.values),
            lengths=self.lengths.to(device),
            covariates={name: move(covariate) for name, covariate in self.covariates.items()},
            index=None if self.index is None else self.index.to(device),
        )

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, index) -> SequenceBatch:
        """Selects sequences (int, slice, index tensor); trims padding to the new
        longest; covariates and indices follow the selection."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        values, lengths = self.values[index], self.lengths[index]
        longest = int(lengths.max()) if lengths.numel() else 0
        return SequenceBatch(
            values[:, :longest],
            lengths,
            population=self.population,
            covariates={name: covariate[index] for name, covariate in self.covariates.items()},
            index=self.indices[index],
        )

    def sequences(self) -> list[Tensor]:
        """The unpadded sequences, each ``(T_n, *event_shape)``."""
        return [self.values[n, : int(l)] for n, l in enumerate(self.lengths.tolist())]

    def with_population(self, population: int | None) -> SequenceBatch:
        return replace(self, population=population)

    def with_covariates(self, **covariates: Tensor) -> SequenceBatch:
        """A copy with ``covariates`` added (or replaced), each ``(N, ...)``."""
        return replace(self, covariates={**self.covariates, **covariates})

    def chunk(self, length: int) -> SequenceBatch:
        """Cuts every sequence into consecutive pieces of at most ``length`` steps.

        Used to train on one long text in mini-batches; pieces are scored as
        independent sequences, so this changes the model's likelihood at the
        cut points (a user should score held-out data unchunked). Each piece
        inherits its parent's covariates and index (so ``index`` repeats).
        """
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"length: expected a positive int, got {length!r}")
        pieces, parents = [], []
        for parent, seq in enumerate(self.sequences()):
            for start in range(0, len(seq), length):
                if len(seq[start : start + length]):
                    pieces.append(seq[start : start + length])
                    parents.append(parent)
        if not pieces:
            raise ValueError("chunk: the batch has no real step to cut into pieces")
        parent_index = torch.tensor(parents, dtype=torch.long, device=self.device)
        return SequenceBatch.from_sequences(
            pieces,
            covariates={name: covariate[parent_index] for name, covariate in self.covariates.items()},
            index=self.indices[parent_index],
        )


def sequence_plate(batch: SequenceBatch, name: str = "sequences", dim: int = -1):
    """A Pyro plate over the batch's sequences that scales a mini-batch to the
    full data set (``batch.population`` sequences).

    The plate subsamples the sequences' real indices (``batch.indices``), so
    ``with sequence_plate(batch) as idx`` gives ``idx`` to index per-sequence
    (non-amortised) guide parameters of the full data set.
    """
    population = batch.population or batch.num_sequences
    # The scale is population / N whatever the indices are (a split of a data set keeps its indices into it).
    return pyro.plate(name, size=population, subsample=batch.indices, dim=dim)


def iterate_minibatches(batch: SequenceBatch, batch_size: int, generator: torch.Generator | None = None):
    """Yields shuffled mini-batches that cover ``batch`` once (an epoch)."""
    n = batch.num_sequences
    if batch_size >= n:
        yield batch.with_population(n)
        return
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield batch[order[start : start + batch_size].to(batch.device)].with_population(n)
