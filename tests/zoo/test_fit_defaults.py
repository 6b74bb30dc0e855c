"""One source of training defaults: ``seqzoo fit FAMILY`` with its defaults trains with exactly the
options record that ``fit(model, train)`` uses in Python (``model.fit_defaults(method)``).

Both paths run into the same trap: the trainer class that :func:`inference.fit.fit` builds is
replaced by one that records its options record and stops, so the comparison is of what the
trainer would really receive, not of what either side says it passes.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

import inference.fit as fit_module
from inference.fit import fit
from tests.zoo.test_dtm_cli import write_corpus
from zoo.cli import main
from zoo.registry import REGISTRY

#: Fields a command-line run sets for itself, not the family's recipe: the progress label, the
#: bar (--no-progress here) and the series' given-history validation score.
RUN_FIELDS = {"description", "progress", "validation_score"}


class _Captured(Exception):
    pass


@pytest.fixture
def trap(monkeypatch):
    """Replaces the trainers: each fit records ``(model, train, options)`` and raises ``_Captured``."""
    seen: list = []

    class Trap:
        def __init__(self, model, train, options, **_):
            seen.append((model, train, options))
            raise _Captured

    monkeypatch.setattr(fit_module, "SVITrainer", Trap)
    monkeypatch.setattr(fit_module, "EMTrainer", Trap)
    return seen


def _text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat sat on the mat and the dog sat on the log. " * 8)
    return str(path)


def _data_flags(family: str, tmp_path) -> list[str]:
    """Data and the required model flags of a tiny ``seqzoo fit FAMILY`` run."""
    if family in ("dtm", "lda"):
        corpus = str(write_corpus(tmp_path / "speeches.csv"))
        flags = ["--data", corpus, "--text-column", "speech", "--topics", "3"]
        return flags + (["--time-column", "year", "--slice", "10"] if family == "dtm" else [])
    return {
        "hmm": ["--data", "builtin:nile", "--states", "2"],
        "lgssm": ["--data", "builtin:nile", "--state-dim", "1"],
        "rnn": ["--data", _text(tmp_path), "--hidden", "8"],
        "gru": ["--data", _text(tmp_path), "--hidden", "8"],
        "lstm": ["--data", _text(tmp_path), "--hidden", "8"],
        "dmm": [
            "--data",
            _text(tmp_path),
            "--z-dim",
            "2",
            "--rnn-dim",
            "4",
            "--transition-dim",
            "4",
            "--emitter-dim",
            "4",
        ],
    }[family]


CASES = [
    (name, method)
    for name in REGISTRY
    for method in ("em", "svi")
    if method == "svi" or REGISTRY[name].model_classes[0].supports_em
]


def test_every_registered_family_has_a_case():
    assert {name for name, _ in CASES} == set(REGISTRY), "a new family needs its data flags in _data_flags"


@pytest.mark.parametrize(("family", "method"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_the_command_line_trains_with_the_python_defaults(family, method, tmp_path, trap):
    out = tmp_path / "run"
    with pytest.raises(_Captured):
        main(["fit", family, *_data_flags(family, tmp_path), "--method", method, "--no-progress", "--out", str(out)])
    model, train, cli_options = trap.pop()
    with pytest.raises(_Captured):
        fit(model, train, method=method, progress=False)
    _, _, python_options = trap.pop()
    for field in dataclasses.fields(cli_options):
        if field.name not in RUN_FIELDS:
            assert getattr(cli_options, field.name) == getattr(python_options, field.name), (
                f"{family} {method}: seqzoo fit trains with {field.name}={getattr(cli_options, field.name)!r}, "
                f"fit(model, train) with {getattr(python_options, field.name)!r}"
            )
    # And the run directory records that record, field by field.
    recorded = json.loads((out / "config.json").read_text())["fit"]
    assert recorded["method"] == method
    for name in ("max_epochs", "learning_rate", "batch_size") if method == "svi" else ("max_iterations", "tolerance"):
        assert recorded[name] == getattr(cli_options, name)


def test_a_flag_the_user_gives_replaces_only_its_field(tmp_path, trap):
    with pytest.raises(_Captured):
        main(
            [
                "fit",
                "rnn",
                *_data_flags("rnn", tmp_path),
                "--lr",
                "0.125",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    model, _, options = trap.pop()
    recipe = model.fit_defaults("svi")
    assert options.learning_rate == 0.125 and recipe.learning_rate != 0.125
    assert (options.batch_size, options.chunk_length) == (recipe.batch_size, recipe.chunk_length)


def test_the_dmm_recipe_reaches_python_fit(tmp_path, trap):
    """``fit(dmm, train)`` in Python gets the family's loss, annealing, clip and learning rate
    (once it got none of them: only the command line read them)."""
    with pytest.raises(_Captured):
        main(
            [
                "fit",
                "dmm",
                *_data_flags("dmm", tmp_path),
                "--annealing-epochs",
                "7",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    model, train, _ = trap.pop()
    with pytest.raises(_Captured):
        fit(model, train, progress=False)
    _, _, options = trap.pop()
    assert options.loss == "model" and options.clip_norm == 10.0 and options.learning_rate == 3e-3
    assert options.step_kwargs is not None and options.step_kwargs.epochs == 7
    assert options.patience * options.eval_every >= 100  # no early stop on a few noisy validations
