"""Text corpora for topic models: a CSV reader, a word vocabulary, bag-of-words batches.

A corpus is a CSV file (optionally ``.csv.gz``) with one document per row, a
*time* column and a *text* column. The reader tokenises each text (lower-case
runs of letters, an optional apostrophe suffix), drops a small built-in list
of English stop words, keeps the words that occur in at least
``min_document_frequency`` documents (at most ``max_vocabulary_size`` of them,
the most frequent by document frequency) and cuts time into slices of
``slice_width`` (a year, a decade, ...).

**Sparse layout.** A corpus is never held as a dense documents x vocabulary
matrix. Each document is a padded list of ``(word id, count)`` pairs::

    batch.values   (N, L, 2) int64   [..., 0] word id, [..., 1] count (0 on padding)
    batch.lengths  (N,)      int64   number of distinct words of each document
    slices         (N,)      int64   time slice of each document

The slice travels as the batch covariate ``"slice"`` (``batch.covariates``),
which indexing, mini-batching and :meth:`SequenceBatch.to` keep aligned with
the documents; :func:`batch_slices` reads it.

Example:
    >>> corpus = read_corpus("speeches.csv.gz", time_column="year", text_column="text", slice_width=10)  # doctest: +SKIP
    >>> corpus.batch.values.shape, len(corpus.vocabulary), corpus.slice_labels[:2]  # doctest: +SKIP
    (torch.Size([22985, 96, 2]), 6312, ['1790', '1800'])
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from inference.batch import SequenceBatch

from .container import SequenceData

__all__ = [
    "DEFAULT_STOP_WORDS",
    "SOTU_PATH",
    "Corpus",
    "CorpusData",
    "WordVocabulary",
    "batch_slices",
    "bag_of_words_batch",
    "dense_counts",
    "load_sotu",
    "read_corpus",
    "split_document_halves",
    "tokenize",
]

#: The State of the Union paragraphs 1790-2009 shipped with the package (``builtin:sotu``).
SOTU_PATH = Path(__file__).resolve().parents[1] / "datasets" / "sotu_paragraphs_1790_2009.csv.gz"

#: A small English stop-word list (function words, auxiliaries, pronouns).
DEFAULT_STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
    during each few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here
    here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself
    let's me more most mustn't my myself no nor not of off on once only or other ought our ours ourselves
    out over own same shan't she she'd she'll she's should shouldn't so some such than that that's the their
    theirs them themselves then there there's these they they'd they'll they're they've this those through
    to too under until up upon very was wasn't we we'd we'll we're we've were weren't what what's when
    when's where where's which while who who's whom why why's will with won't would wouldn't you you'd
    you'll you're you've your yours yourself yourselves shall may must might us one two also made
    """.split()
)

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def tokenize(text: str, stop_words: Iterable[str] = DEFAULT_STOP_WORDS, min_length: int = 2) -> list[str]:
    """Lower-case word tokens of ``text`` without stop words and words shorter than ``min_length``.

    Example:
        >>> tokenize("The Congress shall have Power to lay and collect Taxes")
        ['congress', 'power', 'lay', 'collect', 'taxes']
    """
    stop = stop_words if isinstance(stop_words, (set, frozenset)) else frozenset(stop_words)
    return [w for w in _TOKEN.findall(text.lower()) if len(w) >= min_length and w not in stop]


@dataclass(frozen=True)
class WordVocabulary:
    """An ordered list of distinct words; word id ``i`` is ``words[i]``.

    Example:
        >>> vocab = WordVocabulary(("tax", "war"))
        >>> vocab.encode(["war", "peace", "tax"]), vocab.decode([1, 0])
        ([1, 0], ['war', 'tax'])
    """

    words: tuple[str, ...]
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        words = tuple(self.words)
        index = {w: i for i, w in enumerate(words)}
        if len(index) != len(words):
            duplicate = next(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"words: expected distinct words, {duplicate!r} occurs more than once")
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Word ids of the ``tokens`` in the vocabulary (others are skipped)."""
        return [self._index[t] for t in tokens if t in self._index]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[int(i)] for i in ids]


# --------------------------------------------------------------------------
# Batches (sparse bag of words)
# --------------------------------------------------------------------------
def _make_batch(values: Tensor, lengths: Tensor, covariates: Mapping[str, Tensor]) -> SequenceBatch:
    return SequenceBatch(values, lengths, covariates=dict(covariates))


def batch_slices(batch: SequenceBatch) -> Tensor | None:
    """The ``(N,)`` time slice covariate of ``batch``, or None when it carries none."""
    return batch.covariates.get("slice")


def bag_of_words_batch(
    documents: Sequence[Mapping[int, int] | Sequence[int]], slices: Sequence[int] | Tensor | None = None
) -> SequenceBatch:
    """Packs documents into a sparse padded ``(id, count)`` batch.

    Args:
        documents: each a ``{word id: count}`` mapping or a list of word ids (tokens).
        slices: ``(N,)`` time slice of each document (all 0 when None).

    Returns:
        A batch with ``values`` ``(N, L, 2)`` int64 (ids sorted within a
        document; padding has id 0 and count 0), ``lengths`` the number of
        distinct words, and the covariate ``"slice"``.
    """
    if len(documents) == 0:
        raise ValueError("documents: expected at least one document, got none")
    rows = []
    for doc in documents:
        counts = doc if isinstance(doc, Mapping) else Counter(int(w) for w in doc)
        rows.append(sorted((int(w), int(c)) for w, c in counts.items() if c > 0))
    longest = max(1, max(len(r) for r in rows))
    values = torch.zeros(len(rows), longest, 2, dtype=torch.long)
    for n, row in enumerate(rows):
        if row:
            values[n, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    if slices is None:
        slice_tensor = torch.zeros(len(rows), dtype=torch.long)
    else:
        slice_tensor = torch.as_tensor(slices, dtype=torch.long).reshape(-1)
        if slice_tensor.shape[0] != len(rows):
            raise ValueError(f"slices: expected {len(rows)} entries, one per document, got {slice_tensor.shape[0]}")
    return _make_batch(values, lengths, {"slice": slice_tensor})


def dense_counts(batch: SequenceBatch, num_words: int) -> Tensor:
    """``(N, V)`` float count matrix of a (mini-)batch — for small batches and tests only."""
    ids, counts = batch.values[..., 0], batch.values[..., 1] * batch.mask
    out = torch.zeros(batch.num_sequences, num_words, dtype=torch.get_default_dtype())
    return out.scatter_add_(1, ids, counts.to(out.dtype))


def split_document_halves(
    batch: SequenceBatch, generator: torch.Generator | None = None
) -> tuple[SequenceBatch, SequenceBatch]:
    """Splits each document's tokens at random into an observed half and a held-out half.

    For document completion: a document of ``n`` tokens gives ``ceil(n/2)``
    observed and ``floor(n/2)`` held-out tokens, drawn without replacement.

    Returns:
        ``(observed, held_out)`` batches with the same documents in the same
        order and the same covariates.
    """
    observed_docs, held_docs = [], []
    for n in range(batch.num_sequences):
        length = int(batch.lengths[n])
        ids = batch.values[n, :length, 0]
        counts = batch.values[n, :length, 1]
        tokens = torch.repeat_interleave(ids, counts)
        order = torch.randperm(len(tokens), generator=generator)
        cut = (len(tokens) + 1) // 2
        observed_docs.append(tokens[order[:cut]].tolist())
        held_docs.append(tokens[order[cut:]].tolist())
    slices = batch_slices(batch)
    return bag_of_words_batch(observed_docs, slices), bag_of_words_batch(held_docs, slices)


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------
@dataclass
class Corpus:
    """A corpus read by :func:`read_corpus`.

    Attributes:
        batch: the sparse bag-of-words batch (see the module docstring), with
            the covariate ``"slice"`` ``(N,)``.
        vocabulary: the :class:`WordVocabulary`.
        times: ``(N,)`` float64 time of each document (the time column).
        slice_width: width of a slice in time units.
        slice_starts: start time of each slice (slice ``s`` covers
            ``[slice_starts[s], slice_starts[s] + slice_width)``).
        source: the file it came from.
        lines: ``(N,)`` the file line of each kept document (documents left
            empty by the vocabulary are dropped).
    """

    batch: SequenceBatch
    vocabulary: WordVocabulary
    times: Tensor
    slice_width: float
    slice_starts: list[float]
    source: str
    lines: Tensor

    @property
    def slices(self) -> Tensor:
        return batch_slices(self.batch)

    @property
    def num_documents(self) -> int:
        return self.batch.num_sequences

    @property
    def num_slices(self) -> int:
        return len(self.slice_starts)

    @property
    def num_tokens(self) -> int:
        return int((self.batch.values[..., 1] * self.batch.mask).sum())

    @property
    def slice_labels(self) -> list[str]:
        return [f"{s:g}" for s in self.slice_starts]

    def subset(self, index: Tensor) -> SequenceBatch:
        return self.batch[index]

    def as_data(self) -> CorpusData:
        """The corpus as the command line's data (kind ``"corpus"``)."""
        source = self.source if self.source != str(SOTU_PATH) else "builtin:sotu"
        return CorpusData(
            batch=self.batch,
            kind="corpus",
            name=Path(self.source).name.split(".")[0],
            source=source,
            words=self.vocabulary,
            slice_labels=tuple(self.slice_labels),
        )


@dataclass(frozen=True)
class CorpusData(SequenceData):
    """Corpus data for the command line (``kind="corpus"``): the sparse batch (with the
    covariate ``"slice"``), the word vocabulary and the label (start time) of every slice.
    Selections and splits keep ``words`` and ``slice_labels`` (the model's ``S`` and ``V``),
    so a training part built from them has every slice of the full corpus.

    Attributes:
        words: the :class:`WordVocabulary` (``V`` words).
        slice_labels: ``S`` labels, the start time of each slice.
    """

    words: WordVocabulary | None = None
    slice_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind != "corpus" or self.words is None or not self.slice_labels:
            raise ValueError("CorpusData: expected kind 'corpus', a WordVocabulary and the slice labels")
        slices = batch_slices(self.batch)
        if slices is None:
            raise ValueError("CorpusData: the batch has no covariate 'slice'")
        ids = self.batch.values[..., 0][self.batch.mask]
        if ids.numel() and int(ids.max()) >= len(self.words):
            raise ValueError(f"CorpusData: word ids reach {int(ids.max())}, past the {len(self.words)} words")
        if slices.numel() and (int(slices.min()) < 0 or int(slices.max()) >= len(self.slice_labels)):
            raise ValueError(
                f"CorpusData: slices must lie in [0, {len(self.slice_labels)}), got "
                f"[{int(slices.min())}, {int(slices.max())}]"
            )


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_corpus(
    path: str | Path,
    *,
    time_column: str = "year",
    text_column: str = "text",
    slice_width: float = 10,
    min_document_frequency: int = 5,
    max_vocabulary_size: int | None = None,
    stop_words: Iterable[str] = DEFAULT_STOP_WORDS,
    min_word_length: int = 2,
    time_range: tuple[float, float] | None = None,
) -> Corpus:
    """Reads a CSV corpus into a sparse bag-of-words :class:`Corpus`.

    Args:
        path: a ``.csv`` or ``.csv.gz`` file with a header row.
        time_column: the column holding each document's time (a number, e.g. a year).
        text_column: the column holding each document's text.
        slice_width: width of a time slice (1: years, 10: decades); slices
            start at the earliest time floored to a multiple of the width.
        min_document_frequency: keep words occurring in at least this many documents.
        max_vocabulary_size: keep at most this many words (highest document
            frequency first, ties alphabetical); None keeps all.
        stop_words: words to drop (default :data:`DEFAULT_STOP_WORDS`).
        min_word_length: drop shorter tokens.
        time_range: keep documents with ``low <= time <= high`` only.

    Returns:
        The :class:`Corpus`; documents with no vocabulary word are dropped.

    Raises:
        ValueError: naming the file, line and column, for a missing column, an
            unparseable time, or an empty vocabulary.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such corpus file: {str(path)!r}")
    if not (isinstance(slice_width, (int, float)) and slice_width > 0 and math.isfinite(slice_width)):
        raise ValueError(f"slice_width: expected a positive number, got {slice_width!r}")
    if not isinstance(min_document_frequency, int) or min_document_frequency < 1:
        raise ValueError(f"min_document_frequency: expected a positive int, got {min_document_frequency!r}")
    if max_vocabulary_size is not None and (not isinstance(max_vocabulary_size, int) or max_vocabulary_size < 1):
        raise ValueError(f"max_vocabulary_size: expected a positive int or None, got {max_vocabulary_size!r}")
    stop = frozenset(stop_words)
    times: list[float] = []
    token_lists: list[list[str]] = []
    lines: list[int] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: line 1: the file is empty (expected a header row)") from None
        header = [h.strip() for h in header]
        for role, name in (("time_column", time_column), ("text_column", text_column)):
            if name not in header:
                raise ValueError(f"{path}: line 1: no column {name!r} ({role}); the columns are {header}")
        time_at, text_at = header.index(time_column), header.index(text_column)
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) <= max(time_at, text_at):
                raise ValueError(
                    f"{path}: line {line}: {len(row)} fields, but column "
                    f"{header[max(time_at, text_at)]!r} is field {max(time_at, text_at) + 1}"
                )
            cell = row[time_at].strip()
            try:
                time = float(cell)
                if not math.isfinite(time):
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{path}: line {line}, column {time_column!r}: cannot parse the time {cell!r} as a number"
                ) from None
            if time_range is not None and not (time_range[0] <= time <= time_range[1]):
                continue
            times.append(time)
            token_lists.append(tokenize(row[text_at], stop, min_word_length))
            lines.append(line)
    if not times:
        raise ValueError(
            f"{path}: no documents (rows) in the file"
            + ("" if time_range is None else f" with {time_column!r} in {time_range}")
        )
    document_frequency = Counter()
    for tokens in token_lists:
        document_frequency.update(set(tokens))
    kept = sorted(
        (w for w, c in document_frequency.items() if c >= min_document_frequency),
        key=lambda w: (-document_frequency[w], w),
    )
    if max_vocabulary_size is not None:
        kept = kept[:max_vocabulary_size]
    if not kept:
        raise ValueError(
            f"{path}: column {text_column!r}: the vocabulary is empty (no word outside the stop words occurs in at "
            f"least {min_document_frequency} documents of {len(times)}); lower min_document_frequency"
        )
    vocabulary = WordVocabulary(tuple(sorted(kept)))
    origin = math.floor(min(times) / slice_width) * slice_width
    documents, doc_times, doc_lines, doc_slices = [], [], [], []
    for time, tokens, line in zip(times, token_lists, lines):
        ids = vocabulary.encode(tokens)
        if not ids:
            continue
        documents.append(ids)
        doc_times.append(time)
        doc_lines.append(line)
        doc_slices.append(int(math.floor((time - origin) / slice_width)))
    used = sorted(set(doc_slices))
    # Slices are contiguous from the first; a slice with no document stays (a random walk bridges it).
    num_slices = used[-1] + 1
    return Corpus(
        batch=bag_of_words_batch(documents, doc_slices),
        vocabulary=vocabulary,
        times=torch.tensor(doc_times, dtype=torch.float64),
        slice_width=float(slice_width),
        slice_starts=[origin + s * slice_width for s in range(num_slices)],
        source=str(path),
        lines=torch.tensor(doc_lines, dtype=torch.long),
    )


def load_sotu(**options) -> Corpus:
    """The shipped State of the Union paragraphs, 1790-2009 (``builtin:sotu``):
    :func:`read_corpus` with ``time_column="year"``, ``text_column="text"``
    and decades as slices unless ``options`` say otherwise."""
    options.setdefault("time_column", "year")
    options.setdefault("text_column", "text")
    options.setdefault("slice_width", 10)
    return read_corpus(SOTU_PATH, **options)
