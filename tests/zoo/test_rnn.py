"""Tests of the recurrent next-step models (zoo/rnn.py) against hand-written
recurrences, brute-force masking, and learning on synthetic sources."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import zoo.rnn as rnn_module
from inference.batch import SequenceBatch
from inference.fit import fit
from inference.scoring import score
from zoo.hmm import CategoricalHMM
from zoo.rnn import RecurrentModel, elman_rnn, gru, lstm

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: RecurrentModel, seed: int, spread: float = 0.5) -> RecurrentModel:
    """Every parameter (initial states included) drawn uniformly in ±spread, float64."""
    generator = torch.Generator().manual_seed(seed)
    model.double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_((2 * torch.rand(param.shape, generator=generator, dtype=torch.float64) - 1) * spread)
    return model.eval()


def _layer_weights(rnn: torch.nn.RNNBase, layer: int):
    return [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


# -- the recurrences, written out from their equations ---------------------------
def elman_step(x, h, w_ih, w_hh, b_ih, b_hh):
    return torch.tanh(w_hh @ h + w_ih @ x + b_hh + b_ih)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    w_ir, w_iz, w_in = w_ih.chunk(3)
    w_hr, w_hz, w_hn = w_hh.chunk(3)
    b_ir, b_iz, b_in = b_ih.chunk(3)
    b_hr, b_hz, b_hn = b_hh.chunk(3)
    reset = torch.sigmoid(w_ir @ x + b_ir + w_hr @ h + b_hr)
    update = torch.sigmoid(w_iz @ x + b_iz + w_hz @ h + b_hz)
    candidate = torch.tanh(w_in @ x + b_in + reset * (w_hn @ h + b_hn))
    return (1 - update) * candidate + update * h


def lstm_step(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state
    gates = w_ih @ x + b_ih + w_hh @ h + b_hh
    i, f, g, o = gates.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def hand_top_states(model: RecurrentModel, inputs: list[torch.Tensor], context=None) -> list[torch.Tensor]:
    """Top-layer states h_0 .. h_{T-1} of one sequence, stepping the equations
    layer by layer; ``inputs[t]`` is the network input of x_{t+1} (T - 1 of them)."""
    layers = model.num_layers
    hidden = [model.initial_hidden[layer] for layer in range(layers)]
    cells = [model.initial_cell[layer] for layer in range(layers)] if model.cell == "lstm" else None
    if context is not None:
        shift = model.context_to_initial.weight @ context
        shift = shift.reshape(-1, layers, model.hidden_size)
        hidden = [hidden[layer] + shift[0, layer] for layer in range(layers)]
        if cells is not None:
            cells = [cells[layer] + shift[1, layer] for layer in range(layers)]
    tops = [hidden[-1]]
    for x in inputs:
        below = torch.cat([x, context]) if context is not None else x
        for layer in range(layers):
            weights = _layer_weights(model.rnn, layer)
            if model.cell == "rnn":
                hidden[layer] = elman_step(below, hidden[layer], *weights)
            elif model.cell == "gru":
                hidden[layer] = gru_step(below, hidden[layer], *weights)
            else:
                hidden[layer], cells[layer] = lstm_step(below, (hidden[layer], cells[layer]), *weights)
            below = hidden[layer]
        tops.append(hidden[-1])
    return tops


# -- numerical checks ----------------------------------------------------------
def test_elman_log_likelihood_equals_the_lecture_equations():
    """h_t = tanh(W_hh h_{t-1} + W_xh x_t + b), y_t = W_hy h_t + b_y, x_{t+1} ~ softmax(y_t), one-hot x."""
    model = _randomise(elman_rnn(num_symbols=3, hidden_size=4, embedding_dim=None), seed=0)
    codes = torch.tensor([2, 0, 1, 1, 2, 0])
    w_xh, w_hh = model.rnn.weight_ih_l0, model.rnn.weight_hh_l0
    b = model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0
    w_hy, b_y = model.output.weight, model.output.bias
    h = model.initial_hidden[0]
    expected = torch.zeros((), dtype=torch.float64)
    for x in codes.tolist():
        y = w_hy @ h + b_y
        expected = expected + torch.log_softmax(y, -1)[x]
        one_hot = torch.zeros(3, dtype=torch.float64)
        one_hot[x] = 1.0
        h = torch.tanh(w_hh @ h + w_xh @ one_hot + b)
    with torch.no_grad():
        got = model.log_prob(codes.unsqueeze(0))
    assert got.shape == (1,)
    assert got[0].item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("observation", ["categorical", "bernoulli", "gaussian"])
def test_log_prob_equals_hand_stepped_gate_equations(cell, observation):
    """Two layers, an embedding/projection and a context vector, against the gate
    equations stepped one time step and one layer at a time; NaN entries of a
    Gaussian series are left out of the likelihood and fed as 0 with a missing flag."""
    generator = torch.Generator().manual_seed(1)
    options = dict(cell=cell, hidden_size=5, num_layers=2, embedding_dim=3, context_dim=2)
    if observation == "categorical":
        model = RecurrentModel("categorical", num_symbols=4, **options)
        values = torch.randint(0, 4, (1, 7), generator=generator)
    else:
        model = RecurrentModel(observation, dim=2, scale="predicted" if cell == "gru" else "learned", **options)
        values = torch.randint(0, 2, (1, 7, 2), generator=generator).double()
        if observation == "gaussian":
            values = values + torch.randn(values.shape, generator=generator, dtype=torch.float64)
            values[0, 2, 1] = float("nan")
            values[0, 5, :] = float("nan")
    _randomise(model, seed=2)
    if observation == "gaussian":
        model.data_loc.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
        model.data_scale.copy_(torch.tensor([1.5, 0.7], dtype=torch.float64))
    context = torch.tensor([0.4, -0.9], dtype=torch.float64)

    def network_input(x):
        if observation == "categorical":
            return model.embedding.weight[x]
        observed = ~torch.isnan(x)
        raw = torch.where(observed, x, torch.zeros_like(x))
        if observation == "gaussian":
            raw = torch.cat(
                [torch.where(observed, (x - model.data_loc) / model.data_scale, torch.zeros_like(x)), observed.double()]
            )
        return model.embedding.weight @ raw + model.embedding.bias

    sequence = values[0]
    with torch.no_grad():
        tops = hand_top_states(model, [network_input(x) for x in sequence[:-1]], context)
        expected = 0.0
        for h, x in zip(tops, sequence):
            y = model.output.weight @ h + model.output.bias
            if observation == "categorical":
                expected += torch.log_softmax(y, -1)[x].item()
            elif observation == "bernoulli":
                p = torch.sigmoid(y)
                expected += torch.where(x == 1, p.log(), (1 - p).log()).sum().item()
            else:
                if model.scale == "learned":
                    sd = model.log_scale.exp()
                else:
                    sd = torch.nn.functional.softplus(y[2:]) + 1e-3
                mean, sd = model.data_loc + model.data_scale * y[:2], model.data_scale * sd
                for d in range(2):
                    if not torch.isnan(x[d]):
                        expected += (
                            -0.5 * ((x[d] - mean[d]) / sd[d]) ** 2 - sd[d].log() - 0.5 * math.log(2 * math.pi)
                        ).item()
        got = model.log_prob(values, context=context.unsqueeze(0))
    assert got[0].item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_masked_batch_equals_one_by_one_scoring(cell):
    generator = torch.Generator().manual_seed(3)
    model = _randomise(
        RecurrentModel("categorical", num_symbols=5, cell=cell, hidden_size=6, num_layers=2, embedding_dim=4), seed=4
    )
    lengths = torch.tensor([9, 4, 1, 7])
    values = torch.randint(0, 5, (4, 9), generator=generator)
    garbage = values.clone()
    garbage[torch.arange(9) >= lengths.unsqueeze(-1)] = 4  # padding may hold anything
    batch_scores = model.log_prob(garbage, lengths)
    single = torch.stack([model.log_prob(values[n : n + 1, : lengths[n]])[0] for n in range(4)])
    torch.testing.assert_close(batch_scores, single, rtol=0, atol=1e-10)
    steps = model.log_prob_steps(garbage, lengths)
    assert (steps[torch.arange(9) >= lengths.unsqueeze(-1)] == 0).all()
    # The same through a real-valued head with missing entries.
    gaussian = _randomise(RecurrentModel("gaussian", dim=3, cell=cell, hidden_size=6, embedding_dim=None), seed=5)
    series = torch.randn(4, 9, 3, generator=generator, dtype=torch.float64)
    series[1, 2, 0] = float("nan")
    padded = series.clone()
    padded[torch.arange(9) >= lengths.unsqueeze(-1)] = 123.0
    single = torch.stack([gaussian.log_prob(series[n : n + 1, : lengths[n]])[0] for n in range(4)])
    torch.testing.assert_close(gaussian.log_prob(padded, lengths), single, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_scoring_in_windows_carries_the_state_exactly(cell, monkeypatch):
    """Long texts are scored a window of steps at a time; the result must not depend on the window."""
    generator = torch.Generator().manual_seed(6)
    model = _randomise(
        RecurrentModel("categorical", num_symbols=5, cell=cell, hidden_size=6, num_layers=2, embedding_dim=4), seed=7
    ).double()
    values = torch.randint(0, 5, (3, 23), generator=generator)
    lengths = torch.tensor([23, 11, 1])
    whole = model.log_prob_steps(values, lengths)
    # The reference: one recurrent call over the whole batch.
    states = model.hidden_states(values)
    reference = model._head(states).log_prob(values) * (torch.arange(23) < lengths.unsqueeze(-1))
    torch.testing.assert_close(whole, reference, rtol=0, atol=1e-12)
    for window in (1, 3, 22, 23):
        monkeypatch.setattr(rnn_module, "SCORE_WINDOW", window)
        torch.testing.assert_close(model.log_prob_steps(values, lengths), whole, rtol=0, atol=1e-12)


def test_missing_entries_at_the_last_step_drop_exactly_their_density():
    """A NaN at the last step changes nothing before it, so the log-likelihood falls
    by exactly that entry's predictive log density (Gaussian) or log probability (Bernoulli)."""
    generator = torch.Generator().manual_seed(6)
    for observation in ("gaussian", "bernoulli"):
        model = _randomise(RecurrentModel(observation, dim=3, cell="lstm", hidden_size=5, embedding_dim=4), seed=7)
        values = torch.randint(0, 2, (2, 6, 3), generator=generator).double()
        full = model.log_prob(values)
        holed = values.clone()
        holed[:, -1, 1] = float("nan")
        states = model.hidden_states(values)
        head = model._head(states)
        entry = head.log_prob(values)[:, -1, 1]
        torch.testing.assert_close(model.log_prob(holed), full - entry, rtol=0, atol=1e-10)
        # A step whose every entry is missing contributes nothing.
        holed[:, -1, :] = float("nan")
        torch.testing.assert_close(
            model.log_prob(holed), full - head.log_prob(values)[:, -1].sum(-1), rtol=0, atol=1e-10
        )


def test_pyro_model_scores_the_same_likelihood_and_scales_minibatches():
    model = _randomise(RecurrentModel("categorical", num_symbols=4, cell="gru", hidden_size=5, embedding_dim=3), seed=8)
    values = torch.randint(0, 4, (6, 8), generator=torch.Generator().manual_seed(9))
    batch = SequenceBatch(values, torch.tensor([8, 3, 5, 8, 1, 6]))
    trace = pyro.poutine.trace(model.model).get_trace(batch)
    trace.compute_log_prob()
    # One observed site and no latent variable (the plate's subsample site aside).
    sites = {
        name: site["is_observed"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name != "sequences"
    }
    assert sites == {"observations": True}
    assert trace.nodes["observations"]["log_prob_sum"].item() == pytest.approx(
        model.log_prob_batch(batch).sum().item(), abs=1e-9
    )
    loss = Trace_ELBO().differentiable_loss(model.model, model.guide, batch[:2].with_population(6))
    assert loss.item() == pytest.approx(-3 * model.log_prob_batch(batch[:2]).sum().item(), abs=1e-9)


def test_context_enters_every_transition():
    model = _randomise(
        RecurrentModel("categorical", num_symbols=4, cell="rnn", hidden_size=5, embedding_dim=3, context_dim=2), seed=10
    )
    values = torch.randint(0, 4, (2, 6), generator=torch.Generator().manual_seed(11))
    context = torch.tensor([[0.5, -1.0], [0.5, -1.0]], dtype=torch.float64)
    a = model.log_prob_steps(values, context=context)
    b = model.log_prob_steps(values, context=context + torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    assert torch.equal(a[0], b[0]) and (a[1] != b[1]).all()
    with pytest.raises(ValueError, match="context"):
        model.log_prob(values)
    with pytest.raises(ValueError, match=r"context: expected shape \(2, 2\)"):
        model.log_prob(values, context=torch.zeros(2, 3))


# -- generation -------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_low_temperature_sampling_is_greedy_decoding(cell):
    model = _randomise(
        RecurrentModel("categorical", num_symbols=6, cell=cell, hidden_size=8, embedding_dim=4), seed=12, spread=1.0
    )
    prime = torch.tensor([1, 4, 2])
    greedy = model.greedy(3, 25, prime=prime).values
    cold = model.sample(3, 25, torch.Generator().manual_seed(0), temperature=1e-4, prime=prime).values
    assert torch.equal(greedy, cold)
    # Greedy decoding really takes the most probable symbol, continuing the prime.
    full = torch.cat([prime.expand(3, -1), greedy], 1)
    steps = model.log_prob_steps(full)
    logits = model.output(model.hidden_states(full))
    assert torch.equal(logits[:, 3:].argmax(-1), greedy)
    assert steps.shape == (3, 28)


def test_temperature_reshapes_the_next_symbol_distribution():
    """q_i ∝ exp(z_i / T): empirical first-step frequencies against softmax(z / T)."""
    model = _randomise(
        RecurrentModel("categorical", num_symbols=4, cell="lstm", hidden_size=5, embedding_dim=3), seed=13, spread=1.5
    )
    logits = model.output(model.initial_hidden[0])
    for temperature in (0.5, 1.0, 2.0):
        draws = model.sample(40_000, 1, torch.Generator().manual_seed(1), temperature=temperature).values[:, 0]
        frequencies = torch.bincount(draws, minlength=4).double() / len(draws)
        expected = torch.softmax(logits / temperature, -1)
        assert torch.allclose(frequencies, expected, atol=0.01), (temperature, frequencies, expected)


def test_sample_returns_valid_batches_for_every_head():
    generator = torch.Generator().manual_seed(0)
    binary = RecurrentModel("bernoulli", dim=5, cell="gru", hidden_size=6)
    frames = binary.sample(2, 7, generator, prime=torch.zeros(3, 5)).values
    assert frames.shape == (2, 7, 5) and set(frames.unique().tolist()) <= {0.0, 1.0}
    real = RecurrentModel("gaussian", dim=2, cell="lstm", hidden_size=6)
    assert torch.isfinite(real.sample(2, 7, generator).values).all()
    mean_path = real.greedy(1, 4).values
    assert torch.equal(mean_path, real.sample(1, 4, generator, temperature=0).values)
    with pytest.raises(ValueError, match="prime"):
        binary.sample(2, 3, prime=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="temperature"):
        binary.sample(2, 3, temperature=-1.0)


# -- contract, shapes, errors --------------------------------------------------------
def test_config_rebuilds_the_model_and_counts_parameters():
    model = lstm(num_symbols=7, hidden_size=6, num_layers=2, embedding_dim=4, dropout=0.1)
    rebuilt = RecurrentModel(**model.config())
    rebuilt.load_state_dict(model.state_dict())
    values = torch.randint(0, 7, (2, 5))
    torch.testing.assert_close(rebuilt.eval().log_prob(values), model.eval().log_prob(values))
    h, e, v = 6, 4, 7
    expected = v * e + 4 * h * (e + h) + 8 * h + 4 * h * (h + h) + 8 * h + 2 * 2 * h + v * h + v
    assert model.num_parameters == expected
    assert gru(num_symbols=3, hidden_size=2).family == "gru" and elman_rnn(num_symbols=3, hidden_size=2).cell == "rnn"


def test_dropout_only_in_training_mode():
    model = RecurrentModel("categorical", num_symbols=5, cell="lstm", hidden_size=16, num_layers=2, dropout=0.5)
    values = torch.randint(0, 5, (3, 12))
    model.eval()
    assert torch.equal(model.log_prob(values), model.log_prob(values))
    model.train()
    assert not torch.equal(model.log_prob(values), model.log_prob(values))


def test_clear_errors():
    with pytest.raises(ValueError, match="observation"):
        RecurrentModel("poisson", dim=2)
    with pytest.raises(ValueError, match="cell"):
        RecurrentModel("categorical", num_symbols=2, cell="transformer")
    with pytest.raises(ValueError, match="num_symbols"):
        RecurrentModel("categorical")
    model = RecurrentModel("categorical", num_symbols=3, hidden_size=4)
    with pytest.raises(ValueError, match=r"codes in \[0, 3\)"):
        model.log_prob(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="int64 symbol codes"):
        model.log_prob(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="0/1"):
        RecurrentModel("bernoulli", dim=2, hidden_size=3).log_prob(torch.full((1, 2, 2), 0.5))


# -- learning ---------------------------------------------------------------------
def _markov_source(num_sequences: int, length: int, seed: int):
    """A first-order Markov chain over 4 symbols as a 4-state HMM with identity emissions."""
    transition = torch.tensor(
        [[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.8, 0.1], [0.3, 0.3, 0.2, 0.2], [0.1, 0.0, 0.1, 0.8]], dtype=torch.float64
    )
    initial = torch.full((4,), 0.25, dtype=torch.float64)
    truth = CategoricalHMM.from_probs(initial, transition, torch.eye(4, dtype=torch.float64))
    return truth, truth.sample(num_sequences, length, generator=torch.Generator().manual_seed(seed))


def test_hmm_with_enough_states_reaches_the_markov_source_entropy():
    truth, train = _markov_source(40, 250, seed=0)
    _, test = _markov_source(40, 250, seed=1)
    transition = truth.transition_probs
    stationary = torch.linalg.matrix_power(transition, 200)[0]
    entropy_rate = -(
        stationary[:, None] * transition * torch.where(transition > 0, transition.log(), torch.zeros_like(transition))
    ).sum()
    fitted = CategoricalHMM(6, 4).double()
    fitted.reset_parameters(torch.Generator().manual_seed(3))
    fit(fitted, train, method="em", max_iterations=300, num_restarts=2, progress=False)
    true_score, fitted_score = score(truth, test), score(fitted, test)
    # The true model scores the source's entropy rate (up to sampling noise and the first step) ...
    assert true_score.per_step == pytest.approx(-entropy_rate.item(), abs=3 * true_score.stderr + 0.01)
    # ... and the fitted HMM, with more states than needed, gets there too.
    assert fitted_score.per_step == pytest.approx(true_score.per_step, abs=0.01)


def _copy_task(num_sequences: int, seed: int, delay: int = 12, symbols: int = 4, length: int = 3):
    """``length`` random symbols (1..symbols), ``delay`` blanks (0), a marker, then the symbols again."""
    generator = torch.Generator().manual_seed(seed)
    message = torch.randint(1, symbols + 1, (num_sequences, length), generator=generator)
    blanks = torch.zeros(num_sequences, delay, dtype=torch.long)
    marker = torch.full((num_sequences, 1), symbols + 1, dtype=torch.long)
    return SequenceBatch.from_tensor(torch.cat([message, blanks, marker, message], 1))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_gated_networks_remember_what_a_vanilla_rnn_forgets():
    """Copy task: 3 random symbols, 20 blanks, a marker, the 3 symbols again. Only
    the message is unpredictable; forgetting it costs log 4 = 1.39 nats per copied
    symbol. The GRU and the LSTM recall it; the Elman RNN stays at chance (measured:
    also at learning rate 1e-2). Each cell at the learning rate that suits it.

    The GRU learns the copy suddenly, between epochs 100 and 200, and when depends on
    rounding: at 200 epochs the same seed reached -0.004 nats on one thread and -0.82 on
    two (CI once saw -0.34); at 300 epochs -0.001 and -0.03 (one-thread seeds 0 and 1:
    -0.005 and -0.002 at epoch 200, -0.001 at 300). So each network is built from a fixed
    seed (the test's order does not change it), runs on one thread, and the GRU gets 300
    epochs (measured with these settings: GRU -0.001, LSTM -0.39, Elman -1.57)."""
    train, test = _copy_task(1024, seed=0, delay=20), _copy_task(256, seed=1, delay=20)
    settings = {"rnn": (5e-3, 200), "gru": (1e-2, 300), "lstm": (5e-3, 200)}
    results = {}
    for cell, (learning_rate, epochs) in settings.items():
        torch.manual_seed(0)
        model = RecurrentModel("categorical", num_symbols=6, cell=cell, hidden_size=32, embedding_dim=8)
        fit(model, train, max_epochs=epochs, batch_size=64, learning_rate=learning_rate, progress=False, seed=0)
        model.eval()
        with torch.no_grad():
            results[cell] = model.log_prob_steps(test.values)[:, -3:].mean().item()
    assert results["rnn"] < -1.2, results
    assert results["gru"] > -0.2, results
    # The LSTM is still learning at 200 epochs (measured -0.39 here, -0.13 in CI at another seed).
    assert min(results["gru"], results["lstm"]) > results["rnn"] + 0.5, results


def test_fit_learns_a_markov_source_close_to_its_entropy():
    truth, train = _markov_source(64, 60, seed=0)
    _, test = _markov_source(64, 60, seed=1)
    model = RecurrentModel("categorical", num_symbols=4, cell="gru", hidden_size=16, embedding_dim=4)
    result = fit(model, train, max_epochs=40, batch_size=16, learning_rate=2e-2, progress=False)
    assert result.stopped == "max_steps"
    assert score(model, test).per_step > score(truth, test).per_step - 0.03


# -- command line ------------------------------------------------------------------
TEXT = ("ROMEO: the cat sat on the mat and the dog ate a bone. " * 30).strip()


def test_cli_fit_lstm_then_sample_with_a_prime(tmp_path, capsys):
    import json

    from inference.rundir import RunDirectory
    from zoo.cli import load_model, main

    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "lstm",
                "--data",
                str(data),
                "--hidden",
                "12",
                "--embedding",
                "6",
                "--epochs",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["class"] == "RecurrentModel" and summary["likelihood"] == "exact"
    assert config["fit"]["learning_rate"] == 2e-3 and config["fit"]["batch_size"] == 64  # the family's defaults
    model = load_model(RunDirectory.open(out))
    assert summary["num_parameters"] == model.num_parameters and model.cell == "lstm" and model.hidden_size == 12
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "ROMEO:", "--temperature", "0.8", "--length", "30", "--seed", "1"]) == 0
    sample = capsys.readouterr().out.rstrip("\n")
    assert sample.startswith("ROMEO:") and len(sample) == 36 and set(sample) <= set(TEXT)
    # Temperature 0 is greedy decoding of the saved model.
    assert main(["sample", str(out), "--prime", "ROMEO:", "--temperature", "0", "--length", "10"]) == 0
    from zoo.data import Vocabulary

    vocabulary = Vocabulary.from_json((out / "vocabulary.json").read_text())
    expected = vocabulary.decode(model.greedy(1, 10, prime=vocabulary.encode("ROMEO:")).values[0])
    assert capsys.readouterr().out.rstrip("\n") == "ROMEO:" + expected
    # Priming needs a recurrent network.
    hmm_out = tmp_path / "hmm"
    assert (
        main(
            [
                "fit",
                "hmm",
                "--data",
                str(data),
                "--states",
                "2",
                "--max-iterations",
                "3",
                "--out",
                str(hmm_out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["sample", str(hmm_out), "--prime", "RO", "--length", "5"]) == 2
    assert "recurrent network" in capsys.readouterr().err


def test_cli_compare_hmm_and_gru_on_tiny_text(tmp_path, capsys):
    import json

    from zoo.cli import main

    data = tmp_path / "tiny.txt"
    data.write_text(TEXT)
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                "--data",
                str(data),
                "--models",
                "hmm:states=3",
                "gru:hidden=12,embedding=6,epochs=4,lr=0.01",
                "--max-iterations",
                "15",
                "--out",
                str(out),
                "--no-progress",
                "--budget-minutes",
                "1",
            ]
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["model"]: row for row in comparison["models"]}
    assert list(rows) == ["unigram", "bigram", "hmm-states3", "gru-hidden12-embedding6-epochs4-lr0.01"]
    gru_row = rows["gru-hidden12-embedding6-epochs4-lr0.01"]
    assert gru_row["likelihood"] == "exact" and gru_row["class"] == "RecurrentModel"
    config = json.loads((out / "gru-hidden12-embedding6-epochs4-lr0.01" / "config.json").read_text())
    assert config["fit"]["learning_rate"] == 0.01 and config["fit"]["max_epochs"] == 4
    for row in rows.values():
        # One held-out text: a standard error over blocks, and bits = -nats / ln 2.
        assert row["valid_stderr"] > 0
        assert row["test_bits_per_symbol"] == pytest.approx(-row["test_log_likelihood"] / math.log(2))
    assert set(comparison["samples"]) == {"hmm-states3", "gru-hidden12-embedding6-epochs4-lr0.01"}
    assert all(len(text) == 200 for text in comparison["samples"].values())
    table = (out / "comparison.md").read_text()
    assert "| gru-hidden12-embedding6-epochs4-lr0.01 | exact |" in table and "temperature 0.8" in table
    assert (out / "learning_curves.png").is_file()
    assert "[2/2] training gru" in capsys.readouterr().err


def test_compare_table_is_right_when_the_truth_is_known(tmp_path):
    """Data drawn from a known HMM: no model in the table beats the true HMM's
    held-out log-likelihood (beyond noise), and the fitted HMM approaches it."""
    import json

    from zoo.cli import main
    from zoo.data import SequenceData, Vocabulary, load_data, save_npz, split_data

    truth = CategoricalHMM.from_probs(
        torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64),
        torch.tensor([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]], dtype=torch.float64),
        torch.tensor([[0.7, 0.2, 0.05, 0.05], [0.05, 0.1, 0.8, 0.05], [0.1, 0.1, 0.1, 0.7]], dtype=torch.float64),
    )
    sample = truth.sample(120, 80, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "hmm.npz"
    save_npz(SequenceData(batch=sample, kind="categorical", vocabulary=Vocabulary("abcd")), path)
    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                "--data",
                str(path),
                "--models",
                "hmm:states=3",
                "gru:hidden=16,embedding=4,epochs=15,lr=0.02",
                "--restarts",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = {row["model"]: row for row in json.loads((out / "comparison.json").read_text())["models"]}
    test_part = split_data(load_data(path), (0.8, 0.1, 0.1), seed=0).test.batch
    best = score(truth, test_part)
    for name, row in rows.items():
        assert row.get("test_steps", best.num_steps) == best.num_steps
        assert row["test_log_likelihood"] <= best.per_step + 2 * best.stderr, name
    assert rows["hmm-states3"]["test_log_likelihood"] == pytest.approx(best.per_step, abs=0.02)
    # The states hold more memory than a bigram table can.
    assert rows["bigram"]["test_log_likelihood"] < best.per_step - 0.02


# -- a context vector θ through fit and score --------------------------------------
def _context_source(num_sequences: int, length: int, seed: int) -> SequenceBatch:
    """Each sequence draws i.i.d. symbols from one of two distributions over 4
    symbols, chosen by its context θ (a one-hot of the class, as a covariate).
    Without θ a model must guess the class from the symbols seen so far."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 2, (num_sequences,), generator=generator)
    probs = torch.tensor([[0.85, 0.05, 0.05, 0.05], [0.05, 0.05, 0.05, 0.85]])
    values = torch.multinomial(probs[classes], length, replacement=True, generator=generator)  # (N, T)
    context = torch.nn.functional.one_hot(classes, 2).float()  # (N, 2)
    return SequenceBatch.from_tensor(values, covariates={"context": context})


def test_context_conditioned_rnn_is_trained_validated_and_scored_through_fit():
    train, valid, test = (_context_source(n, 4, seed) for n, seed in ((256, 0), (128, 1), (256, 2)))
    options = dict(max_epochs=60, learning_rate=3e-2, lr_schedule="constant", progress=False, seed=0)
    plain = RecurrentModel("categorical", num_symbols=4, cell="gru", hidden_size=8, embedding_dim=4)
    plain_result = fit(plain, train, valid=valid, **options)  # the batch's context is ignored without context_dim
    conditioned = RecurrentModel(
        "categorical", num_symbols=4, cell="gru", hidden_size=8, embedding_dim=4, context_dim=2
    )
    result = fit(conditioned, train, valid=valid, **options)
    # Entropy of the source given the class: what a model that knows θ can reach per step.
    probs = torch.tensor([0.85, 0.05, 0.05, 0.05])
    entropy = float(-(probs * probs.log()).sum())
    conditioned_score, plain_score = score(conditioned, test).per_step, score(plain, test).per_step
    assert conditioned_score > plain_score + 0.1  # measured: 0.17
    assert conditioned_score > -entropy - 0.1  # measured: 0.044 below
    # fit's validation scores read the context: the best one is the score of the kept state on valid ...
    assert result.best_valid_log_prob_per_step == pytest.approx(score(conditioned, valid).per_step, abs=1e-12)
    assert result.best_valid_log_prob_per_step > plain_result.best_valid_log_prob_per_step + 0.1
    # ... and a wrong context (classes swapped) scores far worse.
    swapped = valid.with_covariates(context=valid.covariates["context"].flip(-1))
    assert score(conditioned, swapped).per_step < result.best_valid_log_prob_per_step - 1.0
    with pytest.raises(ValueError, match="'context' covariate"):
        score(conditioned, SequenceBatch.from_tensor(valid.values))
