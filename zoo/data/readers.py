"""The file readers: text (``.txt``), CSV (``.csv``, ``.csv.gz``), NumPy archives (``.npz``) and
polyphonic music (``.json``)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inference.batch import SequenceBatch

from ._files import _read_bytes, _require_file, _stem
from .container import SequenceData, Vocabulary, as_sequence_data

#: Cell texts the CSV reader takes as a missing value (compared lower-cased), besides the empty cell.
_MISSING_CELLS = frozenset({"", "nan", "na", "n/a"})
#: Piano-roll width and the MIDI pitch of its first key (A0).
_PIANO_KEYS = 88
_LOWEST_PITCH = 21


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
            raise ValueError(f"{path}: line {line}: expected {len(header)} fields (as in the header), got {len(row)}")
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
                raise ValueError(
                    f"{path}: line {line}, column {name!r}: expected a finite number "
                    f"(an empty cell or NaN for a missing value), got {cell!r}"
                )
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
        raise ValueError(
            f"{path}: column(s) {names!r} hold no numbers (every cell is missing); leave them out of columns"
        )
    if len(empty) == len(series_names):
        raise ValueError(f"{path}: no column holds a number (every cell of {names!r} is missing)")
    import warnings

    warnings.warn(f"{path}: dropped column(s) {names!r}: every cell is missing", EmptyColumnWarning, stacklevel=3)
    keep = [j for j in range(len(series_names)) if j not in empty]
    return {key: array[:, keep] for key, array in arrays.items()}, [series_names[j] for j in keep]


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
            raise ValueError(
                f"{path}: expected 'symbols' to be a 1-D string array, got {symbols.dtype} {symbols.shape}"
            )
        vocabulary = Vocabulary(tuple(symbols.tolist()))
    series_names = None
    if "series_names" in arrays:
        names = arrays["series_names"]
        if names.dtype.kind != "U" or names.ndim != 1:
            raise ValueError(
                f"{path}: expected 'series_names' to be a 1-D string array, got {names.dtype} {names.shape}"
            )
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
        raise ValueError(
            f"{path}: expected a JSON object of parts (e.g. 'train', 'valid', 'test'), got {type(content).__name__}"
        )
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
                raise ValueError(
                    f"{where}, frame {t}: expected pitches in [{_LOWEST_PITCH}, {highest}], got {pitches!r}"
                )
            roll[t, [p - _LOWEST_PITCH for p in pitches]] = 1.0
        sequences.append(torch.from_numpy(roll).to(torch.get_default_dtype()))
    return SequenceData(
        batch=SequenceBatch.from_sequences(sequences),
        kind=kind,
        name=f"{_stem(path)}-{split}",
        series_names=[str(p) for p in range(_LOWEST_PITCH, highest + 1)],
        source=str(path),
    )
