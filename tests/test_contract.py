"""The contract's capability table is true of every registered family.

``Model.supports(name)`` is the one question the fit loop, MCMC, the ArviZ export and the
command line ask of a model (nothing probes with ``hasattr`` or a signature). Here each
family's model, built by ``seqzoo fit FAMILY`` on tiny data (the trainer trapped before it
trains), is held to its declarations: every capability it declares works on that data and
returns what the contract documents, and every one it does not declare raises
:class:`~inference.contract.NotSupported` (or, for ``sample``'s options, is absent from the
signature), so a declaration can neither over- nor under-state what the family does; and
every family scores its data (finite, labelled with its likelihood kind), saves, and reloads to
the same score. Adding a family adds its rows here by being registered (its tiny data flags
live in tests/zoo/test_fit_defaults.py, whose own test fails until they are given).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from inference.contract import CAPABILITIES, NotSupported, SequenceModel
from inference.forecasting import ForecastDistribution
from tests.zoo.test_fit_defaults import CASES, _Captured, _data_flags, trap  # noqa: F401 (trap: a fixture)
from zoo.cli import main
from zoo.registry import REGISTRY

FAMILIES = sorted({name for name, _ in CASES})


def _built(family: str, tmp_path, trap):  # noqa: F811 (the fixture)
    with pytest.raises(_Captured):
        main(["fit", family, *_data_flags(family, tmp_path), "--no-progress", "--out", str(tmp_path / "run")])
    model, train, _ = trap.pop()
    return model, train


def _exercise(model: SequenceModel, train, capability: str):
    """Calls the capability on the training data and checks what the contract says it returns."""
    values, lengths = train.values, train.lengths
    n, length = values.shape[:2]
    if capability == "loss":
        out = model.loss(train)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        assert loss.dim() == 0 and torch.isfinite(loss)
    elif capability in ("filter", "smooth"):
        assert getattr(model, capability)(values, lengths) is not None
    elif capability == "decode":
        path = model.decode(values, lengths)
        assert path.shape == (n, length) and path.dtype == torch.long
    elif capability == "sample_states":
        states = model.sample_states(values, lengths, num_samples=2, generator=torch.Generator().manual_seed(0))
        assert states.shape[:3] == (2, n, length)
    elif capability == "forecast_distribution":
        forecast = model.forecast_distribution(train, 3, num_samples=4, generator=torch.Generator().manual_seed(0))
        assert isinstance(forecast, ForecastDistribution)
        if forecast.kind == "categorical":
            assert forecast.probs.shape[:2] == (n, 3)
            assert torch.allclose(forecast.probs.sum(-1), torch.ones((), dtype=forecast.probs.dtype))
        else:
            assert forecast.mean().shape[:2] == (n, 3)
    elif capability == "nuts_log_likelihood":
        assert model.nuts_log_likelihood(train) is not None
    elif capability == "parameter_sites":
        assert model.parameter_sites(), "declares parameter sites but lists none"
    elif capability == "restarts":
        before = [p.detach().clone() for p in model.parameters()]
        model.reset_parameters(torch.Generator().manual_seed(1))
        assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    elif capability.startswith("sample_"):
        option = capability[len("sample_") :]
        value = 0.5 if option == "temperature" else values[0, :2]
        assert model.sample(2, 3, torch.Generator().manual_seed(0), **{option: value}).values.shape[:2] == (2, 3)
    elif capability == "em":
        assert torch.isfinite(model.e_step(train)["log_likelihood"])
    else:  # pragma: no cover - a new capability needs its check here
        pytest.fail(f"no check for the capability {capability!r}")


def _refuses(model: SequenceModel, train, capability: str) -> None:
    """An undeclared capability raises NotSupported, names the model, and says what it lacks."""
    values, lengths = train.values, train.lengths
    calls = {
        "loss": lambda: model.loss(train),
        "filter": lambda: model.filter(values, lengths),
        "smooth": lambda: model.smooth(values, lengths),
        "decode": lambda: model.decode(values, lengths),
        "sample_states": lambda: model.sample_states(values, lengths),
        "forecast_distribution": lambda: model.forecast_distribution(train, 2),
        "nuts_log_likelihood": lambda: model.nuts_log_likelihood(train),
        "restarts": lambda: model.reset_parameters(),
        "em": lambda: model.m_step({}),
    }
    if capability == "parameter_sites":
        assert model.parameter_sites() == {}
    elif capability.startswith("sample_"):
        assert capability[len("sample_") :] not in inspect.signature(model.sample).parameters
    else:
        with pytest.raises(NotSupported, match=type(model).__name__):
            calls[capability]()


def test_every_capability_is_checked_here():
    assert set(CAPABILITIES) == {
        "loss",
        "em",
        "filter",
        "smooth",
        "decode",
        "sample_states",
        "forecast_distribution",
        "nuts_log_likelihood",
        "parameter_sites",
        "restarts",
        "sample_temperature",
        "sample_prime",
    }


def test_an_unknown_capability_is_an_error():
    with pytest.raises(ValueError, match="capability"):
        SequenceModel.supports("fly")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_does_what_it_declares_and_refuses_the_rest(family, tmp_path, trap):  # noqa: F811
    model, train = _built(family, tmp_path, trap)
    declared = {name for name in CAPABILITIES if model.supports(name)}
    for capability in CAPABILITIES:
        if capability in declared:
            _exercise(model, train, capability)
        else:
            _refuses(model, train, capability)
    # The registry's decode entry and the model's own decode agree where both are discrete paths.
    if REGISTRY[family].decode is not None and "decode" in declared:
        decoding = REGISTRY[family].decode(model, train)
        assert torch.equal(decoding.paths, model.decode(train.values, train.lengths))


def test_the_families_declare_what_their_papers_give_them():
    """The table, as the docs state it: exact state inference for the HMMs and the Kalman model,
    a direct NUTS potential for the Kalman model, forecasts for the models with a predictive
    distribution, their own objectives for the deep Markov and topic models."""
    table = {name: {c for c in CAPABILITIES if REGISTRY[name].model_classes[0].supports(c)} for name in FAMILIES}
    for name in ("hmm", "lgssm"):
        assert {
            "em",
            "filter",
            "smooth",
            "sample_states",
            "forecast_distribution",
            "parameter_sites",
            "restarts",
        } <= table[name], name
    assert "decode" in table["hmm"] and "decode" not in table["lgssm"]  # Viterbi needs discrete states
    assert "nuts_log_likelihood" in table["lgssm"]
    for name in ("rnn", "gru", "lstm"):
        assert {"forecast_distribution", "sample_temperature", "sample_prime"} <= table[name]
        assert not {"em", "filter", "smooth", "decode", "sample_states"} & table[name]
    for name in ("dmm", "dtm", "lda"):
        assert "loss" in table[name] and "em" not in table[name]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_scores_and_reloads_to_the_same_score(family, tmp_path, trap):  # noqa: F811
    """Score (finite, labelled with the family's likelihood kind) -> save -> load -> the same score."""
    from inference.rundir import RunDirectory
    from inference.scoring import score
    from zoo.cli import load_model

    model, train = _built(family, tmp_path, trap)
    model.eval()
    before = score(model, train, seed=0)
    assert math.isfinite(before.per_step) and before.num_steps > 0
    assert before.kind == model.likelihood_label(1) and before.kind.startswith(model.likelihood_kind)
    run = RunDirectory.create(tmp_path / "saved")
    run.save_model(model)
    reloaded = load_model(RunDirectory.open(tmp_path / "saved"))
    assert type(reloaded) is type(model) and reloaded.config() == model.config()
    after = score(reloaded, train, seed=0)
    assert after.per_step == before.per_step and after.kind == before.kind
