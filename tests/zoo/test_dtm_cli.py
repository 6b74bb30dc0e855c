"""The topic models on the command line: corpus data (`--data builtin:sotu`, a corpus CSV with
`--text-column`), `seqzoo fit dtm|lda` and compare specs `dtm:...`/`lda:...`."""

import csv
import json
import random
from pathlib import Path

import pytest
import torch

import zoo.families  # noqa: F401  (registers dtm and lda)
from zoo.cli import main
from zoo.data import load_data, split_data
from zoo.data.corpus import CorpusData, batch_slices

pytestmark = pytest.mark.usefixtures("one_thread")

TOPIC_WORDS = [
    ["war", "army", "navy", "soldiers", "battle", "peace"],
    ["tax", "revenue", "debt", "treasury", "budget", "money"],
    ["school", "children", "education", "teachers", "students", "learning"],
]


def write_corpus(path: Path, num_documents: int = 90, seed: int = 0) -> Path:
    """Documents of 12 words from one of three disjoint topics, years 1900-1939 (4 decades)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["year", "speech"])
        for n in range(num_documents):
            words = TOPIC_WORDS[rng.randrange(3)]
            writer.writerow([1900 + n % 40, " ".join(rng.choice(words) for _ in range(12))])
    return path


def test_corpus_csv_and_builtin_sotu_load_as_corpus_data(tmp_path):
    path = write_corpus(tmp_path / "speeches.csv")
    data = load_data(path, time_column="year", text_column="speech", slice_width=20)
    assert isinstance(data, CorpusData) and data.kind == "corpus"
    assert data.slice_labels == ("1900", "1920") and len(data.words) == 18
    assert batch_slices(data.batch).tolist() == [(n % 40) // 20 for n in range(90)]
    # A split keeps each document's slice, the words and every slice label.
    splits = split_data(data, (0.8, 0.1, 0.1), seed=0)
    for part in splits:
        assert isinstance(part, CorpusData) and part.slice_labels == data.slice_labels
        years = [int(t) for t in batch_slices(part.batch)]
        assert years == [batch_slices(data.batch)[i].item() for i in _rows_of(part, data)]
    sotu = load_data("builtin:sotu", slice_width=50, max_vocabulary_size=300)
    assert sotu.kind == "corpus" and len(sotu.words) == 300 and sotu.slice_labels[:2] == ("1750", "1800")
    with pytest.raises(ValueError, match="text_column"):
        load_data("builtin:sotu", text_column="text")
    with pytest.raises(ValueError, match="slice_width"):
        load_data("builtin:nile", slice_width=10)
    with pytest.raises(ValueError, match="kind 'corpus'"):
        load_data(path, text_column="speech", kind="real")
    with pytest.raises(ValueError, match="no column 'text'"):
        load_data(path, kind="corpus")


def _rows_of(part, data):
    """Index in ``data`` of each document of ``part``, matched greedily in order (a part keeps the
    original order; random 12-word documents are almost surely distinct)."""
    rows, start = [], 0
    for n in range(part.num_sequences):
        length = int(part.batch.lengths[n])
        for i in range(start, data.num_sequences):
            if int(data.batch.lengths[i]) == length and torch.equal(
                data.batch.values[i, :length], part.batch.values[n, :length]
            ):
                rows.append(i)
                start = i + 1
                break
    assert len(rows) == part.num_sequences
    return rows


def test_fit_dtm_on_a_corpus_csv_writes_topics_prevalence_and_completion(tmp_path):
    path = write_corpus(tmp_path / "speeches.csv")
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "dtm",
                "--data",
                str(path),
                "--time-column",
                "year",
                "--text-column",
                "speech",
                "--slice",
                "10",
                "--topics",
                "3",
                "--epochs",
                "3",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["num_slices"] == 4 and config["model_config"]["num_topics"] == 3
    assert config["fit"]["loss"] == "model" and config["slice_width"] == 10
    top = (out / "top_words.txt").read_text().splitlines()
    # a header, then per topic its name and one line per decade with 8 words
    assert [line for line in top if line.startswith("topic")] == ["topic 0", "topic 1", "topic 2"]
    decade_lines = [line for line in top if line.startswith("  ")]
    assert len(decade_lines) == 12 and all(len(line.split(":")[1].split()) == 8 for line in decade_lines)
    prevalence = (out / "topic_prevalence.csv").read_text().splitlines()
    assert prevalence[0] == "slice,topic0,topic1,topic2" and len(prevalence) == 5
    for row in prevalence[1:]:
        assert sum(float(x) for x in row.split(",")[1:]) == pytest.approx(1.0, abs=1e-4)
    completion = json.loads((out / "completion.json").read_text())
    assert set(completion["perplexity"]) == {"dtm", "unigram"} and completion["documents"] == 9
    # 18 equally likely words a priori: neither model can be worse than chance by much nor better than 6 words
    assert 5.0 < completion["perplexity"]["unigram"] < 25.0
    for name in ("topic_prevalence.png", "topic_drift.png", "model.safetensors"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["likelihood"] == "ELBO" and summary["test_log_likelihood"] < 0


def test_compare_dtm_and_lda_specs_label_the_bound(tmp_path):
    path = write_corpus(tmp_path / "speeches.csv")
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--data",
                str(path),
                "--text-column",
                "speech",
                "--models",
                "dtm:topics=3,topic_drift=0.1",
                "lda:topics=3",
                "--epochs",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["model"] for row in comparison["models"]] == ["dtm-topics3-topic_drift0.1", "lda-topics3"]
    assert all(row["likelihood"] == "ELBO" for row in comparison["models"])
    assert "Lower bounds" in (out / "comparison.md").read_text()
    assert (out / "lda-topics3" / "top_words.txt").read_text().count("all slices:") == 3
    # A topic model on data that is not a corpus, and an unknown setting, are refused before training.
    assert main(["fit", "lda", "--data", "builtin:nile", "--out", str(tmp_path / "nile")]) == 2
    assert (
        main(
            [
                "compare",
                "--data",
                str(path),
                "--text-column",
                "speech",
                "--models",
                "lda:topic_drift=0.1",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_fit_dtm_on_builtin_sotu_tiny(tmp_path):
    out = tmp_path / "sotu"
    assert (
        main(
            [
                "fit",
                "dtm",
                "--data",
                "builtin:sotu",
                "--topics",
                "4",
                "--slice",
                "50",
                "--max-vocab",
                "500",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    completion = json.loads((out / "completion.json").read_text())
    assert completion["perplexity"]["dtm"] < 1.1 * completion["perplexity"]["unigram"]
    assert (out / "top_words.txt").read_text().count("  1950:") == 4
