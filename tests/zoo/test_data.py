"""Tests of the data layer: vocabulary, readers, built-in data sets, splits."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.batch import SequenceBatch
from zoo.data import (
    BUILTIN_DATASETS,
    SequenceData,
    Vocabulary,
    as_sequence_data,
    load_builtin,
    load_data,
    load_polyphonic,
    read_csv,
    read_npz,
    save_npz,
    split_data,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
JSB_PATH = SHARED_DATA / "jsb_chorales.json"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_vocabulary_round_trip(text):
    vocabulary = Vocabulary.from_text(text)
    assert vocabulary.symbols == tuple(sorted(set(text)))
    codes = vocabulary.encode(text)
    assert codes.dtype == torch.long and codes.shape == (len(text),)
    assert all(vocabulary.symbols[c] == ch for c, ch in zip(codes.tolist(), text))
    assert vocabulary.decode(codes) == text
    assert Vocabulary.from_json(vocabulary.to_json()) == vocabulary


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_vocabulary_superset_round_trip_keeps_given_order(text, extra):
    # An arbitrary (unsorted) order must still round-trip.
    symbols = tuple(dict.fromkeys(extra + text))
    vocabulary = Vocabulary(symbols)
    codes = vocabulary.encode(text)
    assert codes.tolist() == [symbols.index(ch) for ch in text]
    assert vocabulary.decode(codes) == text


def test_vocabulary_out_of_vocabulary_names_symbol_line_column_and_vocabulary():
    vocabulary = Vocabulary("abc\n")
    with pytest.raises(ValueError, match=r"'x' at line 2, column 2 .*4 symbols 'abc\\n'"):
        vocabulary.encode("ab\ncxa\n")
    with pytest.raises(ValueError, match=r"'Z' at line 1, column 1"):
        vocabulary.encode("Zab")


def test_vocabulary_rejects_bad_symbols_and_codes():
    with pytest.raises(ValueError, match="distinct"):
        Vocabulary("aba")
    with pytest.raises(ValueError, match=r"symbols\[1\]: expected a single character"):
        Vocabulary(["a", "bc"])
    with pytest.raises(ValueError, match="at least one symbol"):
        Vocabulary("")
    vocabulary = Vocabulary("ab")
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 2\)"):
        vocabulary.decode([0, 2])
    with pytest.raises(ValueError, match="codes: expected a 1-D integer"):
        vocabulary.decode(torch.tensor([0.0, 1.0]))
    assert len(vocabulary) == 2 and "a" in vocabulary and "c" not in vocabulary


# --------------------------------------------------------------------------
# Built-in data sets
# --------------------------------------------------------------------------
def test_builtin_letters_matches_independent_cleaning():
    data = load_data("builtin:letters")
    assert data.kind == "categorical" and data.num_sequences == 1
    assert data.vocabulary.symbols == tuple(" abcdefghijklmnopqrstuvwxyz")
    assert data.num_symbols == 27 == len(data.vocabulary)
    text = data.vocabulary.decode(data.values[0])
    assert len(text) > 20_000 and data.num_steps == len(text)
    assert "  " not in text
    assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz")
    # Rebuild the text character by character, without regular expressions.
    from pydoc_data.topics import topics

    cleaned = []
    for ch in " ".join(topics[key] for key in sorted(topics)).lower():
        ch = ch if ("a" <= ch <= "z") else " "
        if not (ch == " " and cleaned and cleaned[-1] == " "):
            cleaned.append(ch)
    assert text == "".join(cleaned).strip()


def test_builtin_nile_and_sunspots_agree_with_statsmodels():
    from statsmodels.datasets import nile, sunspots

    data = load_data("builtin:nile")
    assert data.kind == "real" and data.values.shape == (1, 100, 1) and data.series_names == ["volume"]
    assert data.values[0, :3, 0].tolist() == [1120.0, 1160.0, 963.0]
    np.testing.assert_allclose(data.values[0, :, 0].numpy(), np.asarray(nile.load().data["volume"], dtype=float))

    spots = load_data("builtin:sunspots")
    reference = np.asarray(sunspots.load().data["SUNACTIVITY"], dtype=float)
    assert spots.values.shape == (1, 309, 1) and spots.kind == "real"
    np.testing.assert_allclose(spots.values[0, :, 0].numpy(), reference, rtol=1e-6)
    counts = load_data("builtin:sunspots", kind="count")
    assert counts.kind == "count"
    np.testing.assert_array_equal(counts.values[0, :, 0].numpy(), np.round(reference))
    with pytest.raises(ValueError, match="kind: builtin:nile"):
        load_data("builtin:nile", kind="categorical")


def test_unknown_builtin_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown built-in data set 'nope'; available: letters, nile, sunspots"):
        load_data("builtin:nope")
    assert set(BUILTIN_DATASETS) == {"letters", "nile", "sunspots"}
    assert load_builtin("nile").num_steps == 100


def test_first_n_and_chunk():
    data = load_data("builtin:letters", first_n=20_000)
    assert data.num_steps == 20_000 and data.values.shape == (1, 20_000)
    full = load_data("builtin:letters")
    assert torch.equal(data.values[0], full.values[0, :20_000])
    pieces = data.chunk(7000)
    assert pieces.lengths.tolist() == [7000, 7000, 6000]
    assert torch.equal(torch.cat(pieces.batch.sequences()), data.values[0])
    assert pieces.vocabulary == data.vocabulary and pieces.kind == "categorical"


def test_options_that_do_not_apply_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="lowercase do not apply to built-in"):
        load_data("builtin:nile", lowercase=True)
    path = write(tmp_path / "a.txt", "abc")
    with pytest.raises(ValueError, match="sequence_column do not apply to a text file"):
        load_data(path, sequence_column="id")


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------
def test_text_reader_options(tmp_path):
    path = write(tmp_path / "poem.txt", "Hello, World!\nSecond line\n\n\nNew  para\n")
    whole = load_data(path)
    assert whole.num_sequences == 1 and whole.name == "poem" and whole.source == str(path)
    assert whole.vocabulary == Vocabulary.from_text(path.read_text())
    assert whole.vocabulary.decode(whole.values[0]) == path.read_text()

    lines = load_data(path, split="lines")
    texts = [lines.vocabulary.decode(s) for s in lines.batch.sequences()]
    assert texts == ["Hello, World!", "Second line", "New  para"]

    paragraphs = load_data(path, split="paragraphs")
    texts = [paragraphs.vocabulary.decode(s) for s in paragraphs.batch.sequences()]
    assert texts == ["Hello, World!\nSecond line", "New  para"]

    mapped = load_data(
        path, lowercase=True, alphabet=" abcdefghijklmnopqrstuvwxyz", replace_unknown=" ", squeeze_spaces=True
    )
    assert mapped.vocabulary.symbols == tuple(" abcdefghijklmnopqrstuvwxyz")
    assert mapped.vocabulary.decode(mapped.values[0]) == "hello world second line new para "

    dropped = load_data(path, lowercase=True, alphabet="abcdefghijklmnopqrstuvwxyz")
    assert dropped.vocabulary.decode(dropped.values[0]) == "helloworldsecondlinenewpara"


def test_text_with_given_vocabulary_reports_file_line_column(tmp_path):
    path = write(tmp_path / "notes.txt", "abc\nab?c\n")
    with pytest.raises(ValueError, match=r"notes\.txt: symbol '\?' at line 2, column 3"):
        load_data(path, vocabulary=Vocabulary("abc\n"))
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(ValueError, match=r"empty\.txt: no text left"):
        load_data(empty)
    with pytest.raises(ValueError, match="split: expected None, 'lines' or 'paragraphs'"):
        load_data(path, split="words")


# --------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------
def test_csv_missing_cells_become_nan(tmp_path):
    path = write(tmp_path / "ozone.csv", "date,a,b\n2020-01-01,1.5,\n2020-01-02,NaN,2\n2020-01-03,3,4e1\n")
    data = load_data(path, time_column="date")
    assert data.kind == "real" and data.series_names == ["a", "b"] and data.values.shape == (1, 3, 2)
    expected = torch.tensor([[1.5, math.nan], [math.nan, 2.0], [3.0, 40.0]])
    assert torch.equal(torch.isnan(data.values[0]), torch.isnan(expected))
    assert torch.equal(data.values[0].nan_to_num(-1), expected.nan_to_num(-1))
    assert data.num_series == data.dim == 2
    only_b = read_csv(path, time_column="date", columns=["b"])
    assert only_b.series_names == ["b"] and torch.equal(
        only_b.values[0, :, 0].nan_to_num(-1), expected[:, 1].nan_to_num(-1)
    )


def test_csv_sequence_column_gives_ragged_sequences(tmp_path):
    path = write(tmp_path / "many.csv", "id,x\ns1,1\ns1,2\ns2,3\ns1,4\ns3,5\ns3,6\n")
    data = load_data(path, sequence_column="id", kind="count")
    assert data.kind == "count" and data.sequence_names == ["s1", "s2", "s3"]
    assert data.lengths.tolist() == [3, 1, 2]
    assert [s[:, 0].tolist() for s in data.batch.sequences()] == [[1, 2, 4], [3], [5, 6]]
    assert data.values[1, 1:].abs().sum() == 0  # padding is zero


def test_csv_gz_reads_like_csv(tmp_path):
    text = "t,v\n0,1\n1,2\n"
    plain = load_data(write(tmp_path / "s.csv", text))
    zipped_path = tmp_path / "s.csv.gz"
    zipped_path.write_bytes(gzip.compress(text.encode()))
    zipped = load_data(zipped_path)
    assert torch.equal(plain.values, zipped.values) and zipped.name == "s"


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("a,b\n1,2\n3,x\n", {}, r"bad\.csv: line 3, column 'b': expected a number, got 'x'"),
        ("a,b\n1,2\n\n3\n", {}, r"bad\.csv: line 4: expected 2 fields \(as in the header\), got 1"),
        ("", {}, r"bad\.csv: the file is empty"),
        ("\n\n", {}, r"bad\.csv: the file is empty"),
        ("1,2\n3,4\n", {}, r"bad\.csv: line 1: expected a header row"),
        ("a,b\n", {}, r"bad\.csv: has a header but no data rows"),
        ("a,a\n1,2\n", {}, r"bad\.csv: line 1: repeated column names \['a'\]"),
        ("a,b\n1,2\n", {"sequence_column": "id"}, r"sequence_column: no column 'id' in .*bad\.csv"),
        ("a,b\n1,2\n", {"columns": ["c"]}, r"columns: no column\(s\) \['c'\]"),
        ("a,b\n1,2\n1.5,0\n", {"kind": "count"}, r"bad\.csv: line 3, column 'a': expected a nonnegative integer"),
        ("a,b\n1,\n", {"kind": "count"}, r"bad\.csv: line 2, column 'b': .* got a missing value"),
        ("a,b\n1,2\n", {"kind": "binary"}, r"bad\.csv: line 2, column 'b': expected 0 or 1"),
        ("a,b\n1,2\n", {"kind": "categorical"}, r"kind: a CSV file holds"),
    ],
)
def test_csv_bad_input_messages(tmp_path, content, options, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(ValueError, match=message):
        load_data(path, **options)


# --------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------
def test_npz_round_trip(tmp_path):
    codes = as_sequence_data([torch.tensor([0, 2, 1]), torch.tensor([1])], "categorical", vocabulary=Vocabulary("abc"))
    save_npz(codes, tmp_path / "codes.npz")
    back = load_data(tmp_path / "codes.npz")
    assert back.kind == "categorical" and back.vocabulary == codes.vocabulary
    assert torch.equal(back.values, codes.values) and torch.equal(back.lengths, codes.lengths)

    series = torch.tensor([[[1.0, math.nan], [2.0, 3.0]], [[4.0, 5.0], [0.0, 0.0]]])
    real = as_sequence_data(series, "real", lengths=torch.tensor([2, 1]), series_names=["u", "v"])
    save_npz(real, tmp_path / "real.npz")
    back = read_npz(tmp_path / "real.npz")
    assert back.kind == "real" and back.series_names == ["u", "v"]
    assert torch.equal(back.values.nan_to_num(-7), real.values.nan_to_num(-7)) and back.lengths.tolist() == [2, 1]


def test_npz_single_array_and_bad_archives(tmp_path):
    np.savez(tmp_path / "one.npz", anything=np.arange(6).reshape(2, 3))
    data = load_data(tmp_path / "one.npz")
    assert data.kind == "categorical" and data.values.tolist() == [[0, 1, 2], [3, 4, 5]]

    np.savez(tmp_path / "flat.npz", values=np.zeros(5))
    with pytest.raises(ValueError, match=r"flat\.npz: cannot tell the kind .* shape \(5,\)"):
        load_data(tmp_path / "flat.npz")
    with pytest.raises(ValueError, match=r"flat\.npz: values: expected shape \(N, T, D\) for kind 'real'"):
        load_data(tmp_path / "flat.npz", kind="real")
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.zeros(2))
    with pytest.raises(ValueError, match=r"two\.npz: expected an array named 'values'.*\['a', 'b'\]"):
        load_data(tmp_path / "two.npz")
    np.savez(tmp_path / "extra.npz", values=np.zeros((1, 2), dtype=np.int64), junk=np.zeros(1))
    with pytest.raises(ValueError, match=r"extra\.npz: unexpected arrays \['junk'\]"):
        load_data(tmp_path / "extra.npz")
    np.savez(tmp_path / "objects.npz", values=np.array([[1, "a"]], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npz: holds an object array"):
        load_data(tmp_path / "objects.npz")
    np.savez(tmp_path / "lengths.npz", values=np.zeros((2, 3), dtype=np.int64), lengths=np.array([1, 4]))
    with pytest.raises(ValueError, match=r"lengths\.npz: lengths: expected values in \[0, 3\]"):
        load_data(tmp_path / "lengths.npz")
    write(tmp_path / "fake.npz", "not a zip")
    with pytest.raises(ValueError, match=r"fake\.npz: not a readable \.npz archive"):
        load_data(tmp_path / "fake.npz")


def test_unknown_extension_and_missing_file(tmp_path):
    path = write(tmp_path / "data.xlsx", "x")
    with pytest.raises(
        ValueError,
        match=r"data\.xlsx: unsupported file type '\.xlsx'; supported: \.txt, \.csv, \.csv\.gz, \.npz, \.json",
    ):
        load_data(path)
    missing = tmp_path / "absent.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_data(missing)


# --------------------------------------------------------------------------
# as_sequence_data
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "kind", "extra", "error", "message"),
    [
        (
            torch.zeros(2, 3),
            "categorical",
            {},
            ValueError,
            r"values: expected integer codes for kind 'categorical', got float32",
        ),
        (torch.zeros(2, 3, 1, dtype=torch.long), "categorical", {}, ValueError, r"values: expected shape \(N, T\)"),
        (torch.zeros(5), "real", {}, ValueError, r"values: expected shape \(N, T, D\) for kind 'real', got \(5,\)"),
        (
            torch.zeros(1, 5, 1, dtype=torch.long),
            "real",
            {},
            ValueError,
            r"values: expected floating values for kind 'real'",
        ),
        (
            torch.tensor([[0, 3]]),
            "categorical",
            {"vocabulary": Vocabulary("abc")},
            ValueError,
            r"codes in \[0, 3\), got range \[0, 3\]",
        ),
        (torch.tensor([[-1, 0]]), "categorical", {}, ValueError, r"codes in \[0, inf\)"),
        (torch.tensor([[[-1.0]]]), "count", {}, ValueError, r"nonnegative integers for kind 'count'"),
        (torch.tensor([[[0.5]]]), "count", {}, ValueError, r"nonnegative integers for kind 'count'"),
        (torch.tensor([[[2.0]]]), "binary", {}, ValueError, r"only 0 and 1"),
        (torch.tensor([[[math.inf]]]), "real", {}, ValueError, r"found infinity"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            "categorical",
            {"lengths": torch.tensor([1])},
            ValueError,
            r"lengths: expected shape \(2,\)",
        ),
        (
            torch.zeros(2, 3, dtype=torch.long),
            "categorical",
            {"lengths": torch.tensor([1.0, 2.0])},
            ValueError,
            r"lengths: expected a 1-D integer",
        ),
        (torch.zeros(1, 3), "symbols", {}, ValueError, r"kind: expected one of categorical, real, count, binary"),
        ([[0, 1]], "categorical", {}, TypeError, r"values\[0\]: expected a torch.Tensor or numpy array, got list"),
        ("abc", "categorical", {}, TypeError, r"values: expected a torch.Tensor or numpy array, got str"),
    ],
)
def test_as_sequence_data_rejects_bad_input(values, kind, extra, error, message):
    with pytest.raises(error, match=message):
        as_sequence_data(values, kind, **extra)


def test_as_sequence_data_normalises_and_checks_only_real_steps():
    # Padding may hold junk (here NaN and a negative code); only real steps are checked, padding is zeroed.
    codes = as_sequence_data(np.array([[1, 2], [0, -5]], dtype=np.int32), "categorical", lengths=[2, 1])
    assert codes.values.dtype == torch.long and codes.values.tolist() == [[1, 2], [0, 0]]
    counts = as_sequence_data(torch.tensor([[[1], [2]]]), "count")
    assert counts.values.dtype == torch.get_default_dtype()
    real = as_sequence_data(torch.tensor([[[1.0], [math.nan]]], dtype=torch.float64), "real", lengths=torch.tensor([1]))
    assert real.values.dtype == torch.float64 and real.values[0, 1, 0] == 0
    with pytest.raises(ValueError, match="batch.values: expected int64 codes"):
        SequenceData(SequenceBatch.from_tensor(torch.zeros(1, 2)), "categorical")
    with pytest.raises(ValueError, match="series_names: expected 1 names"):
        as_sequence_data(torch.zeros(1, 2, 1), "real", series_names=["a", "b"])


# --------------------------------------------------------------------------
# Polyphonic music
# --------------------------------------------------------------------------
@pytest.mark.skipif(not JSB_PATH.exists(), reason=f"JSB chorales data not found at {JSB_PATH}")
def test_polyphonic_jsb_chorales():
    raw = json.loads(JSB_PATH.read_text())
    parts = {split: load_polyphonic(JSB_PATH, split) for split in ("train", "valid", "test")}
    train = parts["train"]
    assert train.kind == "binary" and train.num_sequences == 229 and train.num_steps == 13_807
    assert train.values.shape[-1] == 88 and train.lengths.min() == 25 and train.lengths.max() == 129
    empty_frames = sum(int((p.values.sum(-1)[p.batch.mask] == 0).sum()) for p in parts.values())
    assert empty_frames == 64
    # Every frame's ones sit exactly at pitch - 21, for every sequence of the training part.
    for sequence, frames in zip(train.batch.sequences(), raw["train"]):
        assert len(sequence) == len(frames)
        for roll, pitches in zip(sequence, frames):
            assert (torch.nonzero(roll).flatten() + 21).tolist() == pitches
    assert load_data(JSB_PATH, split="valid").num_sequences == 76


def test_polyphonic_bad_input(tmp_path):
    path = write(tmp_path / "music.json", json.dumps({"train": [[[60], [200]]]}))
    with pytest.raises(
        ValueError, match=r"music\.json: part 'train', sequence 0, frame 1: expected pitches in \[21, 108\]"
    ):
        load_polyphonic(path, "train")
    with pytest.raises(ValueError, match=r"split: .*music\.json has no part 'test'; parts are \['train'\]"):
        load_polyphonic(path, "test")
    write(tmp_path / "broken.json", "{")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        load_data(tmp_path / "broken.json")


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------
def test_single_sequence_splits_contiguously():
    nile = load_data("builtin:nile")
    parts = split_data(nile)
    assert [p.num_steps for p in parts] == [80, 10, 10]
    assert torch.equal(torch.cat([p.values[0] for p in parts]), nile.values[0])
    again = split_data(nile, seed=5)  # a single sequence is not shuffled
    assert all(torch.equal(a.values, b.values) for a, b in zip(parts, again))
    train_valid = split_data(nile, (0.9, 0.1, 0.0))
    assert train_valid.test is None and train_valid.train.num_steps == 90
    head = split_data(load_data("builtin:letters"), first_n=20_000)
    assert [p.num_steps for p in head] == [16_000, 2_000, 2_000]
    with pytest.raises(ValueError, match="too short"):
        split_data(as_sequence_data(torch.zeros(1, 2, 1), "real"))


def _numbered_sequences(count: int) -> SequenceData:
    # Sequence n holds the value n at every step and has length 1 + n % 4.
    sequences = [torch.full((1 + n % 4, 1), float(n)) for n in range(count)]
    return as_sequence_data(sequences, "real")


def _ids(data: SequenceData) -> list[int]:
    return [int(s[0, 0]) for s in data.batch.sequences()]


def test_many_sequences_split_deterministic_disjoint_covering():
    data = _numbered_sequences(50)
    parts = split_data(data, seed=3)
    ids = [_ids(p) for p in parts]
    assert [len(i) for i in ids] == [40, 5, 5]
    assert sorted(sum(ids, [])) == list(range(50))
    assert all(i == sorted(i) for i in ids)  # each part keeps the original order
    for part in parts:  # lengths and padding survive the selection
        assert part.lengths.tolist() == [1 + n % 4 for n in _ids(part)]
        assert part.batch.population is None
    assert [_ids(p) for p in split_data(data, seed=3)] == ids
    assert [_ids(p) for p in split_data(data, seed=4)] != ids


def test_many_sequence_split_edge_cases():
    parts = split_data(_numbered_sequences(3))
    assert [p.num_sequences for p in parts] == [1, 1, 1]
    with pytest.raises(ValueError, match="2 sequences cannot fill 3 parts"):
        split_data(_numbered_sequences(2))
    with pytest.raises(ValueError, match="fractions: expected three nonnegative numbers summing to 1"):
        split_data(_numbered_sequences(5), (0.5, 0.6, 0.1))


# --------------------------------------------------------------------------
# A data set's own split, and a split by time
# --------------------------------------------------------------------------
@pytest.mark.skipif(not JSB_PATH.exists(), reason=f"JSB chorales data not found at {JSB_PATH}")
def test_load_splits_reads_the_parts_jsb_chorales_ships():
    from zoo.data import load_splits

    splits = load_splits(JSB_PATH)
    assert [part.num_sequences for part in splits] == [229, 76, 77]
    assert all(part.kind == "binary" and part.values.shape[-1] == 88 for part in splits)
    for part, name in zip(splits, ("train", "valid", "test")):
        assert torch.equal(part.values, load_polyphonic(JSB_PATH, name).values)
    whole = splits.combined()
    assert whole.num_sequences == 382 and whole.num_steps == sum(part.num_steps for part in splits)
    assert torch.equal(whole.batch.sequences()[229], splits.valid.batch.sequences()[0])
    heads = load_splits(JSB_PATH, first_n=10)
    assert all(int(part.lengths.max()) == 10 for part in heads)


def test_load_splits_is_none_for_data_without_a_split(tmp_path):
    from zoo.data import load_splits

    assert load_splits("builtin:nile") is None
    assert load_splits(write(tmp_path / "a.txt", "abc")) is None
    train_only = write(tmp_path / "train_only.json", json.dumps({"train": [[[60], [62, 64]]]}))
    assert load_splits(train_only) is None  # one part: nothing to respect, split_data cuts it
    two = write(tmp_path / "two.json", json.dumps({"train": [[[60], [62, 64]]], "test": [[[21]]]}))
    train, valid, test = load_splits(two)
    assert valid is None and train.num_steps == 2 and test.values[0, 0, 0] == 1
    with pytest.raises(ValueError, match="time_column do not apply"):
        load_splits(two, time_column="t")
    with pytest.raises(FileNotFoundError):
        load_splits(tmp_path / "missing.json")


def test_split_by_time_keeps_order_and_holds_out_the_tails():
    # Sequence n counts 0, 1, ..., L_n - 1 (plus 100 n, to tell them apart); names follow the pieces.
    lengths = [10, 20, 5, 2]
    data = replace_names(
        as_sequence_data([torch.arange(100.0 * n, 100.0 * n + L).reshape(L, 1) for n, L in enumerate(lengths)], "real"),
        ["a", "b", "c", "d"],
    )
    train, valid, test = split_data(data, (0.6, 0.2, 0.2), seed=123, by="time")
    for n, length in enumerate(lengths):
        first, second = round(length * 0.6), round(length * 0.8)
        expected = [list(range(0, first)), list(range(first, second)), list(range(second, length))]
        got = []
        for part in (train, valid, test):
            names = part.sequence_names
            got.append(
                [int(v) - 100 * n for v in part.batch.sequences()[names.index("abcd"[n])][:, 0]]
                if "abcd"[n] in names
                else []
            )
        assert got == expected, n
    # The two-step sequence "d" has no test step (round(1.6) = 2): it is left out of the test part only.
    assert train.sequence_names == ["a", "b", "c", "d"] and valid.sequence_names == ["a", "b", "c", "d"]
    assert test.sequence_names == ["a", "b", "c"]
    # Nothing is shuffled: the seed changes nothing, and every step is in exactly one part.
    again = split_data(data, (0.6, 0.2, 0.2), seed=7, by="time")
    assert all(torch.equal(a.values, b.values) for a, b in zip((train, valid, test), again))
    assert sum(part.num_steps for part in (train, valid, test)) == sum(lengths)
    # One sequence: the same contiguous cut as the default split.
    nile = load_data("builtin:nile")
    assert all(torch.equal(a.values, b.values) for a, b in zip(split_data(nile, by="time"), split_data(nile)))


def test_split_by_time_bad_input():
    data = as_sequence_data([torch.zeros(1, 1), torch.zeros(1, 1)], "real")
    with pytest.raises(ValueError, match="too short to give the valid part"):
        split_data(data, (0.8, 0.2, 0.0), by="time")
    with pytest.raises(ValueError, match="by: expected one of shuffle, time"):
        split_data(data, by="random")


def replace_names(data: SequenceData, names: list[str]) -> SequenceData:
    from dataclasses import replace

    return replace(data, sequence_names=names)


# -- issue 15: infinities, empty columns, a model's flag, empty splits ---------
from zoo.data import EmptyColumnWarning, require_counts, require_kind, require_real  # noqa: E402


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "1e999", "-INF"])
def test_csv_infinity_is_refused_naming_file_line_and_column(tmp_path, cell):
    path = tmp_path / "bad.csv"
    path.write_text(f"year,flow\n1871,1120\n1872,{cell}\n")
    with pytest.raises(
        ValueError, match=rf"bad\.csv: line 3, column 'flow': expected a finite number .* got '{re.escape(cell)}'"
    ):
        read_csv(path)
    with pytest.raises(ValueError, match=r"line 3, column 'flow'"):
        read_csv(path, kind="count")


def test_csv_all_missing_column_is_dropped_with_a_warning_or_refused_when_named(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,empty,b\n1,,2\n3,NA,4\n5,nan,\n")
    with pytest.warns(EmptyColumnWarning, match=r"gaps\.csv: dropped column\(s\) \['empty'\]: every cell is missing"):
        data = read_csv(path)
    assert data.series_names == ["a", "b"]
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, math.nan]])
    assert torch.equal(data.batch.values[0].isnan(), expected.isnan())
    assert torch.equal(data.batch.values[0].nan_to_num(-1), expected.nan_to_num(-1))
    with pytest.raises(ValueError, match=r"column\(s\) \['empty'\] hold no numbers"):
        read_csv(path, columns=["a", "empty"])
    # Missing across sequences only counts when every sequence misses it.
    by_id = tmp_path / "ids.csv"
    by_id.write_text("id,x,y\nu,1,\nu,2,\nv,3,7\n")
    assert read_csv(by_id, sequence_column="id").series_names == ["x", "y"]
    only = tmp_path / "only.csv"
    only.write_text("x\n\nNA\nnan\n")
    with pytest.raises(ValueError, match=r"only\.csv: no column holds a number"):
        read_csv(only)


def test_require_counts_names_the_flag_the_file_and_the_entry(tmp_path):
    path = tmp_path / "rain.csv"
    path.write_text("mm,days\n1,2\n0,3\n-1.5,4\n")
    with pytest.raises(
        ValueError,
        match=r"--emission poisson needs nonnegative integer counts, but .*rain\.csv "
        r"has -1\.5 at sequence 0, step 2, column 'mm'",
    ):
        require_counts(read_csv(path), "--emission poisson")
    path.write_text("mm,days\n1,2\n0,3.25\n")
    with pytest.raises(ValueError, match=r"has 3\.25 at sequence 0, step 1, column 'days'"):
        require_counts(read_csv(path), "--emission poisson")
    path.write_text("mm,days\n1,2\n0,\n")
    with pytest.raises(ValueError, match=r"has a missing value at sequence 0, step 1, column 'days'"):
        require_counts(read_csv(path), "--emission poisson")
    path.write_text("mm,days\n1,2\n0,3\n")
    require_counts(read_csv(path), "--emission poisson")  # real numbers that are counts pass
    require_counts(read_csv(path, kind="count"), "--emission poisson")
    # Padding of shorter sequences is never mistaken for data.
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,n\na,1\na,2\nb,3\n")
    require_counts(read_csv(ragged, sequence_column="id"), "--emission poisson")
    text = tmp_path / "book.txt"
    text.write_text("some words\n")
    with pytest.raises(
        ValueError,
        match=r"--emission poisson needs a \.csv or \.npz file of counts \(kind 'count'\), "
        r"but .*book\.txt holds text or symbol codes \(kind 'categorical'\)",
    ):
        require_counts(load_data(text), "--emission poisson")


def test_require_real_names_the_flag_and_the_text_file(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("some words\n")
    with pytest.raises(
        ValueError,
        match=r"^--emission gaussian needs a \.csv or \.npz file of numbers .*book\.txt "
        r"holds text or symbol codes \(kind 'categorical'\)$",
    ):
        require_real(load_data(text), "--emission gaussian")
    require_real(load_data("builtin:nile"), "--emission gaussian")
    with pytest.raises(ValueError, match=r"^hmm --kind binary needs 0/1 frames"):
        require_kind(load_data("builtin:nile"), ("binary",), "hmm --kind binary")


def _with_empty_sequences(lengths):
    values = torch.zeros(len(lengths), max(lengths), 1)
    return as_sequence_data(values, "real", lengths=torch.tensor(lengths))


@pytest.mark.parametrize("seed", range(30))
def test_no_split_holds_only_empty_sequences(seed):
    data = _with_empty_sequences([0, 0, 0, 5, 0, 7, 0, 0, 3, 0])
    parts = split_data(data, (0.6, 0.2, 0.2), seed=seed)
    assert [p.num_sequences for p in parts] == [6, 2, 2]  # sizes as without empty sequences
    assert all(p.batch.num_steps > 0 for p in parts)
    kept = sorted(int(i) for p in parts for i in p.batch.lengths)
    assert kept == sorted([0, 0, 0, 5, 0, 7, 0, 0, 3, 0])  # every sequence in exactly one part


def test_split_without_empty_sequences_is_unchanged_and_too_few_nonempty_is_refused():
    data = _with_empty_sequences([2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    parts = split_data(data, (0.6, 0.2, 0.2), seed=3)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert parts.valid.batch.lengths.tolist() == sorted((order[6:8] + 2).tolist())
    with pytest.raises(ValueError, match=r"only 2 of 5 sequences have any steps; 3 parts"):
        split_data(_with_empty_sequences([0, 4, 0, 0, 2]), (0.6, 0.2, 0.2))
    assert split_data(_with_empty_sequences([0, 4, 0, 0, 2]), (0.8, 0.2, 0.0)).test is None


def test_time_axis_gives_the_datas_own_times(tmp_path):
    from zoo.data import time_axis

    nile = time_axis("builtin:nile")
    assert nile.label == "year" and nile.units == "10⁸ m³"
    assert nile.values.tolist() == list(range(1871, 1971)) and len(nile.values) == load_data("builtin:nile").num_steps
    assert time_axis("builtin:letters") is None
    path = tmp_path / "series.csv"
    path.write_text("id,day,x\na,2020-01-01,1\nb,2020-01-01,5\na,2020-01-03,2\nb,2020-01-02,6\n")
    dates = time_axis(path, time_column="day", sequence_column="id", sequence=1)
    assert dates.label == "day" and dates.values.dtype.kind == "M"
    assert [str(d) for d in dates.values] == ["2020-01-01", "2020-01-02"]
    assert time_axis(path, time_column="x").values.tolist() == [1.0, 5.0, 2.0, 6.0]
    assert time_axis(path) is None
    path.write_text("t,x\nspring,1\nsummer,2\n")
    assert time_axis(path, time_column="t") is None  # neither numbers nor dates: steps are used
    with pytest.raises(ValueError, match=r"time_column: no column 'when'"):
        time_axis(path, time_column="when")
