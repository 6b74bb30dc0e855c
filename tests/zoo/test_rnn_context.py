"""The recurrent family's context input θ (zoo/rnn.py), as topic-conditioned text uses it:
:math:`h_t = f(W_{hh} h_{t-1} + W_{xh} x_t + W_{x\\theta} \\theta)` for the Elman, GRU and LSTM
cells. A conditioned network's likelihood must depend on θ (read from the batch's ``"context"``
covariate, through whole, mini-batched and chunked batches), and with :math:`W_{x\\theta} = 0`
(and no θ shift of the initial state) it must be exactly the unconditioned network with the
remaining weights. Also: examples/topic_conditioned_text.py's text-to-corpus alignment."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO

from inference.batch import SequenceBatch
from zoo.data.corpus import read_corpus, tokenize
from zoo.rnn import RecurrentModel

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_SYMBOLS, CONTEXT_DIM, EMBEDDING = 6, 3, 4


def _pair(cell: str, num_layers: int, seed: int) -> tuple[RecurrentModel, RecurrentModel]:
    """A conditioned network with random float64 weights, and the unconditioned network with the same
    weights except the context's: its input weights are the conditioned one's first columns."""
    options = dict(num_symbols=NUM_SYMBOLS, cell=cell, hidden_size=5, num_layers=num_layers, embedding_dim=EMBEDDING)
    conditioned = RecurrentModel("categorical", context_dim=CONTEXT_DIM, **options).double()
    plain = RecurrentModel("categorical", **options).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in conditioned.parameters():
            param.copy_(2 * torch.rand(param.shape, generator=generator, dtype=torch.float64) - 1)
        for name, param in plain.named_parameters():
            source = conditioned.get_parameter(name)
            param.copy_(source[:, :EMBEDDING] if name == "rnn.weight_ih_l0" else source)
    return conditioned.eval(), plain.eval()


def _zero_context_weights(model: RecurrentModel) -> None:
    """W_xθ = 0 (the context's columns of the first layer's input weights, every gate) and no θ shift of h_0."""
    with torch.no_grad():
        model.rnn.weight_ih_l0[:, EMBEDDING:] = 0.0
        model.context_to_initial.weight.zero_()


def _batch(seed: int) -> SequenceBatch:
    generator = torch.Generator().manual_seed(seed)
    lengths = [9, 4, 1, 7, 12]
    sequences = [torch.randint(0, NUM_SYMBOLS, (n,), generator=generator) for n in lengths]
    context = torch.softmax(torch.randn(len(lengths), CONTEXT_DIM, generator=generator, dtype=torch.float64), -1)
    return SequenceBatch.from_sequences(sequences, covariates={"context": context})


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_log_prob_depends_on_the_context_covariate(cell, num_layers):
    conditioned, _ = _pair(cell, num_layers, seed=1)
    batch = _batch(seed=2)
    scores = conditioned.log_prob_batch(batch)
    # Another topic vector for every sequence (each row's mass moved to other topics).
    moved = batch.with_covariates(context=batch.covariates["context"].roll(1, -1))
    changed = conditioned.log_prob_batch(moved)
    assert (scores - changed).abs().min() > 1e-6
    # Per step too: θ enters the first prediction (through h_0) and every later transition.
    steps = conditioned.log_prob_steps(batch.values, batch.lengths, batch.covariates["context"])
    moved_steps = conditioned.log_prob_steps(batch.values, batch.lengths, moved.covariates["context"])
    assert ((steps - moved_steps).abs() > 1e-9).sum() == int(batch.lengths.sum())
    # Each sequence reads its own row: scoring them one at a time gives the same numbers.
    one_by_one = torch.cat([conditioned.log_prob_batch(batch[n : n + 1]) for n in range(batch.num_sequences)])
    assert torch.allclose(scores, one_by_one, rtol=0, atol=1e-10)
    # The Pyro model scores the same likelihood from the covariate.
    loss = Trace_ELBO().differentiable_loss(conditioned.model, conditioned.guide, batch)
    assert loss.item() == pytest.approx(-scores.sum().item(), abs=1e-9)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_zero_context_weights_give_the_unconditioned_network(cell, num_layers):
    conditioned, plain = _pair(cell, num_layers, seed=3)
    batch = _batch(seed=4)
    # Before zeroing, θ matters, so the equality below is not trivially true.
    assert (conditioned.log_prob_batch(batch) - plain.log_prob_batch(batch)).abs().max() > 1e-3
    _zero_context_weights(conditioned)
    expected = plain.log_prob_batch(batch)
    for context in (
        batch.covariates["context"],
        10 * torch.randn(batch.num_sequences, CONTEXT_DIM, dtype=torch.float64),
    ):
        got = conditioned.log_prob_batch(batch.with_covariates(context=context))
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # Chunks (truncated backpropagation's training pieces) inherit θ and agree too.
    chunks = batch.chunk(3)
    assert torch.allclose(conditioned.log_prob_batch(chunks), plain.log_prob_batch(chunks), rtol=0, atol=1e-12)
    # Generation: the same random numbers give the same text whatever θ is.
    draws = [
        model.sample(4, 15, torch.Generator().manual_seed(5), context=context).values
        for model, context in ((conditioned, torch.eye(CONTEXT_DIM, dtype=torch.float64)[[0, 1, 2, 0]]), (plain, None))
    ]
    assert torch.equal(draws[0], draws[1])


def test_context_weights_receive_the_likelihoods_gradient_from_the_batch_covariate():
    """Training can learn W_xθ: autograd's gradient of the log-likelihood with respect to the
    context columns of every gate (reset, update, new) is nonzero and equals a central finite
    difference (float64), so the covariate reaches the loss through those weights."""
    conditioned, _ = _pair("gru", 1, seed=6)
    batch = _batch(seed=7)
    conditioned.log_prob_batch(batch).sum().backward()
    weights = conditioned.rnn.weight_ih_l0
    gradient = weights.grad[:, EMBEDDING:].clone()  # (3 H, context_dim)
    assert (gradient.reshape(3, -1).abs().sum(-1) > 1e-6).all()
    hidden, eps = conditioned.hidden_size, 1e-6
    for gate in range(3):
        row, column = gate * hidden + gate, EMBEDDING + gate % CONTEXT_DIM
        with torch.no_grad():
            weights[row, column] += eps
            up = conditioned.log_prob_batch(batch).sum()
            weights[row, column] -= 2 * eps
            down = conditioned.log_prob_batch(batch).sum()
            weights[row, column] += eps
        numeric = float((up - down) / (2 * eps))
        assert float(gradient[row, column - EMBEDDING]) == pytest.approx(numeric, rel=1e-5, abs=1e-8), gate


# -- examples/topic_conditioned_text.py: the text beside the bag of words ----------------
def _load_example():
    path = Path(__file__).resolve().parents[2] / "examples" / "topic_conditioned_text.py"
    spec = importlib.util.spec_from_file_location("topic_conditioned_text", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("topic_conditioned_text", module)
    spec.loader.exec_module(module)
    return module


def test_paragraph_texts_align_with_the_corpus_documents(tmp_path):
    """Rows with a quoted multi-line text, a row outside the years and a row with no vocabulary
    word (dropped by the reader): each kept document's text tokenises to its bag of words."""
    example = _load_example()
    rows = [
        (1990, "Taxes and budget; the budget again."),
        (1850, "Railroads railroads everywhere."),
        (1991, '"The army and the navy,\nthe navy\n and  the budget."'),
        (1992, "Of the and to."),
        (1993, "Budget budget taxes army."),
    ]
    path = tmp_path / "corpus.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write("year,text\n" + "".join(f"{year},{text}\n" for year, text in rows))
    corpus = read_corpus(path, min_document_frequency=1, time_range=(1900, 2000))
    texts = example.paragraph_texts(corpus)
    assert [example.normalise(t) for t in texts] == [
        "Taxes and budget; the budget again.",
        "The army and the navy, the navy and the budget.",
        "Budget budget taxes army.",
    ]
    bags = example.bags_of_words(texts, corpus, corpus.slices)
    assert torch.equal(bags.values, corpus.batch.values) and torch.equal(bags.lengths, corpus.batch.lengths)
    assert [corpus.vocabulary.encode(tokenize(t)) for t in texts][2] == corpus.vocabulary.encode(
        ["budget", "budget", "taxes", "army"]
    )


def test_first_half_cut_is_a_word_boundary_near_the_middle():
    example = _load_example()
    text = "the budget of the united states"
    cut = example.first_half_cut(text)
    assert text[cut - 1] == " " and cut - 1 >= len(text) // 2 and " " not in text[len(text) // 2 : cut - 1]
    assert example.first_half_cut("nospaces") == len("nospaces")
    codes = example.CharacterCodes(["ab c"])
    assert codes.decode(codes.encode("cab\u00e9")) == "cab" + example.UNKNOWN


def test_registered_per_step_scorer_reads_the_context_covariate():
    """The command line's per-step scorer (block standard errors, forecasts) conditions on θ:
    its rows sum to log_prob_batch, and moving θ changes them."""
    from zoo.registry import REGISTRY

    conditioned, _ = _pair("gru", 1, seed=3)
    batch = _batch(seed=4)
    per_step = REGISTRY["gru"].per_step_log_probs(conditioned, batch)
    assert torch.allclose(per_step.sum(-1), conditioned.log_prob_batch(batch), rtol=0, atol=1e-10)
    moved = batch.with_covariates(context=batch.covariates["context"].roll(1, -1))
    assert (REGISTRY["gru"].per_step_log_probs(conditioned, moved) - per_step).abs().max() > 1e-6
