"""The corpus reader, the word vocabulary and sparse bag-of-words batches."""

import gzip
from collections import Counter
from pathlib import Path

import pytest
import torch

from zoo.data.corpus import (
    SOTU_PATH,
    WordVocabulary,
    bag_of_words_batch,
    batch_slices,
    dense_counts,
    load_sotu,
    read_corpus,
    split_document_halves,
    tokenize,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [
    ("1791", "Taxes and the army: taxes, army, navy."),
    ("1795", "The navy and taxes; peace with Britain."),
    ("1803", "Peace, peace and the army of Britain."),
    ("1812", "War with Britain! The army and the navy."),
    ("1819", "Taxes on commerce, and commerce in peace."),
]


def write_csv(path: Path, rows=ROWS, header="year,text") -> Path:
    lines = [header] + [f'{year},"{text}"' for year, text in rows]
    content = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_tokenize_lowercases_and_drops_stop_words():
    assert tokenize("The Army and THE navy, of Britain's ships") == ["army", "navy", "britain's", "ships"]


def test_read_corpus_vocabulary_counts_and_slices(tmp_path):
    corpus = read_corpus(write_csv(tmp_path / "c.csv"), min_document_frequency=2, slice_width=10)
    # words in >= 2 documents: army(3) britain(3) commerce(1 doc) navy(3) peace(3) taxes(3); war(1), commerce(1 doc)
    assert corpus.vocabulary.words == ("army", "britain", "navy", "peace", "taxes")
    assert corpus.slices.tolist() == [0, 0, 1, 2, 2]
    assert corpus.slice_labels == ["1790", "1800", "1810"]
    # document 0: taxes x2, army x2, navy x1 (sparse (id, count) pairs, ids sorted)
    first = {int(w): int(c) for w, c in corpus.batch.values[0, : int(corpus.batch.lengths[0])].tolist()}
    vocab = corpus.vocabulary
    assert first == {vocab.encode(["army"])[0]: 2, vocab.encode(["navy"])[0]: 1, vocab.encode(["taxes"])[0]: 2}
    assert corpus.num_tokens == sum(sum(1 for t in tokenize(text) if t in vocab) for _, text in ROWS)
    yearly = read_corpus(tmp_path / "c.csv", min_document_frequency=2, slice_width=1)
    assert yearly.slices.tolist() == [0, 4, 12, 21, 28] and yearly.num_slices == 29


def test_max_vocabulary_keeps_most_frequent_and_drops_empty_documents(tmp_path):
    corpus = read_corpus(write_csv(tmp_path / "c.csv"), min_document_frequency=1, max_vocabulary_size=1)
    # the 4-way tie at 3 documents is broken alphabetically: army
    assert corpus.vocabulary.words == ("army",)
    assert corpus.num_documents == 3 and corpus.lines.tolist() == [2, 4, 5]


def test_gzip_reads_the_same(tmp_path):
    plain = read_corpus(write_csv(tmp_path / "c.csv"), min_document_frequency=1)
    packed = read_corpus(write_csv(tmp_path / "c.csv.gz"), min_document_frequency=1)
    assert plain.vocabulary == packed.vocabulary
    assert torch.equal(plain.batch.values, packed.batch.values) and torch.equal(plain.slices, packed.slices)


def test_missing_column_names_file_line_and_column(tmp_path):
    path = write_csv(tmp_path / "c.csv", header="date,text")
    with pytest.raises(ValueError, match=r"c\.csv: line 1: no column 'year' \(time_column\)"):
        read_corpus(path)
    with pytest.raises(ValueError, match=r"no column 'body' \(text_column\)"):
        read_corpus(path, time_column="date", text_column="body")


def test_unparseable_time_names_file_line_and_column(tmp_path):
    rows = list(ROWS)
    rows[2] = ("c. 1803", rows[2][1])
    path = write_csv(tmp_path / "c.csv", rows)
    with pytest.raises(ValueError, match=r"c\.csv: line 4, column 'year': cannot parse the time 'c\. 1803'"):
        read_corpus(path)


def test_empty_vocabulary_is_an_error(tmp_path):
    path = write_csv(tmp_path / "c.csv")
    with pytest.raises(ValueError, match=r"c\.csv: column 'text': the vocabulary is empty"):
        read_corpus(path, min_document_frequency=6)
    with pytest.raises(ValueError, match="the vocabulary is empty"):
        read_corpus(write_csv(tmp_path / "stop.csv", [("1800", "the and of to")]), min_document_frequency=1)


def test_sparse_batch_equals_dense_counts_and_follows_indexing():
    documents = [[3, 1, 3, 3], [0], [2, 2, 4, 1, 0, 0]]
    batch = bag_of_words_batch(documents, [2, 0, 1])
    dense = dense_counts(batch, 5)
    expected = torch.zeros(3, 5)
    for n, doc in enumerate(documents):
        for w, c in Counter(doc).items():
            expected[n, w] = c
    assert torch.equal(dense, expected)
    picked = batch[torch.tensor([2, 0])]
    assert batch_slices(picked).tolist() == [1, 2]
    assert torch.equal(dense_counts(picked, 5), expected[[2, 0]])


def test_document_halves_partition_the_tokens():
    batch = bag_of_words_batch([[0, 1, 1, 2, 2, 2, 3], [4, 4], [1]], [0, 1, 1])
    observed, held = split_document_halves(batch, torch.Generator().manual_seed(0))
    full, obs, out = dense_counts(batch, 5), dense_counts(observed, 5), dense_counts(held, 5)
    assert torch.equal(obs + out, full)
    assert obs.sum(-1).tolist() == [4, 1, 1] and out.sum(-1).tolist() == [3, 1, 0]
    assert batch_slices(observed).tolist() == [0, 1, 1] == batch_slices(held).tolist()


def test_word_vocabulary_rejects_duplicates():
    with pytest.raises(ValueError, match="'war' occurs more than once"):
        WordVocabulary(("war", "peace", "war"))


def test_shipped_sotu_corpus_reads():
    assert SOTU_PATH.exists(), "the SOTU paragraphs must ship with the package (zoo/datasets)"
    corpus = load_sotu(time_range=(2000, 2009), min_document_frequency=3)
    assert corpus.slice_labels == ["2000"] and corpus.num_documents > 500
    assert "terrorists" in corpus.vocabulary and "the" not in corpus.vocabulary
