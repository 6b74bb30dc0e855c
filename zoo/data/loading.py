"""Dispatch: :func:`load_data` reads a file by its ending, a corpus CSV or a built-in data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._files import _BUILTIN_PREFIX, SUPPORTED_EXTENSIONS, _extension, _require_file
from .builtin import BUILTIN_DATASETS, _sotu, load_builtin
from .container import SequenceData, Vocabulary
from .corpus import read_corpus
from .readers import load_polyphonic, read_csv, read_npz, read_text


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
            corpus options (kind ``"corpus"``, see ``zoo.data.corpus.read_corpus``): a CSV
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

    corpus_options = {
        "slice_width": slice_width,
        "min_document_frequency": min_document_frequency,
        "max_vocabulary_size": max_vocabulary_size,
    }
    spec_text = str(spec)
    if spec_text == _BUILTIN_PREFIX + "sotu":
        reject(
            {**text_options, **csv_options, "text_column": text_column, "split": split},
            f"built-in data set {spec_text!r}",
        )
        data = _sotu(kind, **{k: v for k, v in corpus_options.items() if v is not None})
    elif spec_text.startswith(_BUILTIN_PREFIX):
        reject(
            {**text_options, **csv_options, **corpus_options, "text_column": text_column, "split": split},
            f"built-in data set {spec_text!r}",
        )
        data = load_builtin(spec_text, kind=kind)
    elif kind == "corpus" or text_column is not None:
        path = Path(spec)
        _require_file(path)
        if _extension(path) not in (".csv", ".csv.gz"):
            raise ValueError(f"{path}: a corpus is read from a .csv or .csv.gz file, got {_extension(path)!r}")
        if kind not in (None, "corpus"):
            raise ValueError(f"kind: a CSV with a text column (--text-column) is read as kind 'corpus', got {kind!r}")
        reject({**text_options, "sequence_column": sequence_column, "columns": columns, "split": split}, "a corpus CSV")
        data = read_corpus(
            path,
            time_column=time_column or "year",
            text_column=text_column or "text",
            **{k: v for k, v in corpus_options.items() if v is not None},
        ).as_data()
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
