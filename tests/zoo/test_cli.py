"""End-to-end tests of the ``seqzoo`` command line on tiny data."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoo.cli import main

TEXT = ("the cat sat on the mat and the dog ate a bone " * 40).strip()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(0)
    states = (np.arange(300) // 30) % 2
    values = rng.normal(np.where(states == 1, 3.0, -3.0), 1.0)
    lines = ["t,value"] + [f"{t},{v:.5f}" if t % 37 else f"{t}," for t, v in enumerate(values)]
    path = tmp_path / "series.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*argv):
    return main([str(a) for a in argv])


def test_fit_em_writes_a_complete_run_directory(text_file, tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli("fit", "hmm", "--data", text_file, "--states", 3, "--out", out, "--max-iterations", 30, "--no-progress")
        == 0
    )
    for name in (
        "config.json",
        "summary.json",
        "model.safetensors",
        "model.json",
        "vocabulary.json",
        "log_likelihood_trace.png",
        "posterior_states.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_parameters"] == 2 + 3 * 2 + 3 * (len(set(TEXT)) - 1)
    assert summary["seconds"] > 0
    # An HMM on this text must beat the uniform code over its symbols.
    assert summary["valid_log_likelihood"] > -np.log(len(set(TEXT)))
    weights = load_file(str(out / "model.safetensors"))
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    # EM's objective never decreases.
    objectives = [r["objective"] for r in summary["history"]]
    assert all(b >= a - 1e-6 * abs(a) for a, b in zip(objectives, objectives[1:]))


def test_refuses_to_overwrite_a_run_directory(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 3, "--no-progress")
        == 0
    )
    before = (out / "summary.json").read_text()
    assert (
        run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 3, "--no-progress")
        == 2
    )
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert (
        run_cli(
            "fit",
            "hmm",
            "--data",
            text_file,
            "--states",
            2,
            "--out",
            out,
            "--max-iterations",
            4,
            "--no-progress",
            "--force",
        )
        == 0
    )
    assert len(json.loads((out / "summary.json").read_text())["history"]) == 4


def test_decode_and_sample_reload_the_model(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 20, "--no-progress")
        == 0
    )
    capsys.readouterr()
    assert run_cli("sample", out, "--length", 80, "--seed", 3) == 0
    sample = capsys.readouterr().out.strip("\n")
    assert len(sample) == 80 and set(sample) <= set(TEXT)
    assert run_cli("sample", out, "--length", 80, "--seed", 3) == 0
    assert capsys.readouterr().out.strip("\n") == sample  # the seed fixes the draw
    assert run_cli("decode", out, "--data", text_file) == 0
    rows = (out / "decoded.csv").read_text().splitlines()
    assert rows[0] == "sequence,time,state" and len(rows) == 1 + len(TEXT)
    # The file holds the reloaded model's Viterbi path of the run's own encoding of the text.
    from inference.rundir import RunDirectory
    from zoo.cli import load_model
    from zoo.data import Vocabulary, load_data

    model = load_model(RunDirectory.open(out))
    vocabulary = Vocabulary.from_json(json.loads((out / "vocabulary.json").read_text()))
    batch = load_data(text_file, vocabulary=vocabulary).batch
    expected = model.decode(batch.values, batch.lengths)[0, : len(TEXT)].tolist()
    assert [int(r.split(",")[2]) for r in rows[1:]] == expected
    assert len(set(expected)) == 2  # both states are used on this text


def test_gaussian_svi_on_csv_with_missing_values(csv_file, tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "hmm",
            "--data",
            csv_file,
            "--states",
            2,
            "--method",
            "svi",
            "--epochs",
            150,
            "--out",
            out,
            "--no-progress",
            "--split",
            "0.8,0.2,0",
            "--time-column",
            "t",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    # Two well-separated regimes with unit noise: a fitted 2-state HMM scores
    # close to the N(0, 1) entropy (-1.419 nats), far above one Gaussian's (~ -2.6).
    assert summary["valid_log_likelihood"] > -1.9


def test_compare_writes_table_with_baselines(text_file, tmp_path):
    out = tmp_path / "cmp"
    assert (
        run_cli(
            "compare",
            "--data",
            text_file,
            "--models",
            "hmm:states=2",
            "hmm:states=4",
            "--out",
            out,
            "--max-iterations",
            15,
            "--no-progress",
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    names = [row["model"] for row in comparison["models"]]
    assert names == ["unigram", "bigram", "hmm-states2", "hmm-states4"]
    unigram, bigram = comparison["models"][:2]
    assert bigram["valid_log_likelihood"] > unigram["valid_log_likelihood"]
    table = (out / "comparison.md").read_text()
    assert "hmm-states4" in table and "bits/symbol" in table
    assert (out / "learning_curves.png").is_file()
    assert (out / "hmm-states2" / "summary.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "hmm", "--data", "nosuchfile.txt", "--states", "2", "--out", "{tmp}/r"], "nosuchfile.txt"),
        (["fit", "hmm", "--data", "{tmp}/data.xyz", "--states", "2", "--out", "{tmp}/r"], "data.xyz"),
        (["fit", "hmm", "--data", "builtin:nope", "--states", "2", "--out", "{tmp}/r"], "letters"),
        (["compare", "--data", "{text}", "--models", "bogus:states=2", "--out", "{tmp}/r"], "unknown model 'bogus'"),
        (["compare", "--data", "{text}", "--models", "hmm:states", "--out", "{tmp}/r"], "key=value"),
        (["fit", "hmm", "--data", "{text}", "--states", "2", "--split", "0.5,0.5", "--out", "{tmp}/r"], "--split"),
        (["sample", "{tmp}/missing-run", "--length", "5"], "missing-run"),
    ],
)
def test_bad_input_is_reported_without_traceback(argv, message, tmp_path, text_file, capsys):
    (tmp_path / "data.xyz").write_text("x")
    argv = [a.format(tmp=tmp_path, text=text_file) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_zoo_runs():
    completed = subprocess.run([sys.executable, "-m", "zoo", "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    for command in ("fit", "compare", "decode", "sample"):
        assert command in completed.stdout


# -- linear-Gaussian state-space models ---------------------------------------------
@pytest.fixture
def two_series_csv(tmp_path):
    """Two noisy views of one random walk (d = 1, p = 2), with some empty cells."""
    rng = np.random.default_rng(1)
    level = np.cumsum(rng.normal(0.0, 1.0, 300))
    series = level[:, None] * np.array([1.0, 0.5]) + rng.normal(0.0, [0.5, 0.3], (300, 2))
    lines = ["t,a,b"]
    for t, (a, b) in enumerate(series):
        lines.append(f"{t}," + ("" if t % 23 == 5 else f"{a:.5f}") + "," + ("" if t % 31 == 7 else f"{b:.5f}"))
    path = tmp_path / "walk.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, series


def test_fit_lgssm_on_nile_writes_a_run_directory_that_reloads(tmp_path, capsys):
    from inference.rundir import RunDirectory
    from zoo.cli import load_model
    from zoo.data import load_builtin, split_data

    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "lgssm",
            "--data",
            "builtin:nile",
            "--state-dim",
            1,
            "--transition",
            "identity",
            "--observation",
            "identity",
            "--prior",
            "none",
            "--out",
            out,
            "--max-iterations",
            300,
            "--no-progress",
        )
        == 0
    )
    for name in (
        "config.json",
        "summary.json",
        "model.safetensors",
        "model.json",
        "log_likelihood_trace.png",
        "smoothed_states.png",
        "forecast.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class"] == "LinearGaussianSSM" and summary["method"] == "em"
    objectives = [r["objective"] for r in summary["history"]]
    assert all(b >= a - 1e-6 * abs(a) for a, b in zip(objectives, objectives[1:]))
    # The reloaded model reproduces the recorded scores: the split is contiguous in time (80/10/10 years).
    model = load_model(RunDirectory.open(out))
    splits = split_data(load_builtin("nile"), (0.8, 0.1, 0.1))
    for part in ("train", "valid", "test"):
        batch = getattr(splits, part).batch
        assert batch.num_steps == {"train": 80, "valid": 10, "test": 10}[part]
        with torch.no_grad():
            per_step = float(model.log_prob(batch.values.to(model.observation_cov.dtype)).sum()) / batch.num_steps
        assert per_step == pytest.approx(summary[f"{part}_log_likelihood"], rel=1e-5)
    # A random walk plus noise: both variances positive, the noise (~15000 on the full series) dominant.
    with torch.no_grad():
        noise_var, level_var = float(model.observation_cov[0, 0]), float(model.transition_cov[0, 0])
    assert 5000 < noise_var < 40000 and 100 < level_var < noise_var
    capsys.readouterr()
    assert run_cli("sample", out, "--length", 7, "--seed", 1) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 7 and all(400 < float(r) < 2000 for r in rows)
    assert run_cli("decode", out) == 2
    assert "no discrete states" in capsys.readouterr().err


def test_fit_lgssm_on_csv_with_missing_cells(two_series_csv, tmp_path):
    path, series = two_series_csv
    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "lgssm",
            "--data",
            path,
            "--time-column",
            "t",
            "--state-dim",
            1,
            "--split",
            "0.8,0.2,0",
            "--out",
            out,
            "--max-iterations",
            200,
            "--no-progress",
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    # Held-out one-step-ahead scoring of a random walk: far above independent Gaussians fitted
    # to the training part (the walk wanders), and near the truth's noise entropy.
    train, valid = series[:240], series[240:]
    iid = -0.5 * (np.log(2 * np.pi * train.var(0)) + (valid - train.mean(0)) ** 2 / train.var(0)).sum(1).mean()
    assert summary["valid_log_likelihood"] > iid + 1.0
    assert summary["valid_log_likelihood"] > -3.5
    assert (out / "forecast.png").is_file() and (out / "smoothed_states.png").is_file()


def test_compare_accepts_lgssm_specs(tmp_path):
    out = tmp_path / "cmp"
    assert (
        run_cli(
            "compare",
            "--data",
            "builtin:nile",
            "--models",
            "lgssm:state_dim=1,transition=identity",
            "hmm:states=2",
            "--out",
            out,
            "--max-iterations",
            50,
            "--no-progress",
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["model"]: row for row in comparison["models"]}
    assert set(rows) == {"lgssm-state_dim1-transitionidentity", "hmm-states2"}
    # A local-level model scores the Nile's held-out decade better than a 2-state Gaussian HMM.
    assert (
        rows["lgssm-state_dim1-transitionidentity"]["test_log_likelihood"] > rows["hmm-states2"]["test_log_likelihood"]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "lgssm", "--data", "builtin:nile", "--out", "{tmp}/r"], "--state-dim"),
        (
            ["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "1", "--states", "2", "--out", "{tmp}/r"],
            "--states",
        ),
        (
            ["fit", "hmm", "--data", "builtin:nile", "--states", "2", "--state-dim", "1", "--out", "{tmp}/r"],
            "--state-dim",
        ),
        (
            ["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "1", "--transition", "fixed", "--out", "{tmp}/r"],
            "--transition",
        ),
    ],
)
def test_family_flags_are_checked_by_argparse(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main([a.format(tmp=tmp_path) for a in argv])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "lgssm", "--data", "{text}", "--state-dim", "1", "--out", "{tmp}/r"], "real-valued"),
        (
            [
                "fit",
                "lgssm",
                "--data",
                "builtin:nile",
                "--state-dim",
                "2",
                "--observation",
                "identity",
                "--out",
                "{tmp}/r",
            ],
            "--observation identity",
        ),
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "0", "--out", "{tmp}/r"], "--state-dim"),
        (
            [
                "fit",
                "lgssm",
                "--data",
                "builtin:nile",
                "--state-dim",
                "1",
                "--method",
                "svi",
                "--latent",
                "sampled",
                "--out",
                "{tmp}/r",
            ],
            "--initial prior",
        ),
        (["compare", "--data", "builtin:nile", "--models", "lgssm:states=2", "--out", "{tmp}/r"], "unknown settings"),
    ],
)
def test_bad_lgssm_input_is_reported_without_traceback(argv, message, tmp_path, text_file, capsys):
    assert main([a.format(tmp=tmp_path, text=text_file) for a in argv]) == 2
    assert message in capsys.readouterr().err


# -- families register themselves ---------------------------------------------------
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
from torch import nn  # noqa: E402

from inference.batch import SequenceBatch, sequence_plate  # noqa: E402
from inference.contract import SequenceModel  # noqa: E402
from zoo.registry import REGISTRY, Family, UsageError, register  # noqa: E402


class UnigramModel(SequenceModel):
    """Independent symbols with learned frequencies: the smallest family there is."""

    family = "toy"

    def __init__(self, num_symbols: int) -> None:
        super().__init__()
        self.num_symbols = num_symbols
        self.logits = nn.Parameter(torch.zeros(num_symbols))

    def model(self, batch: SequenceBatch) -> None:
        symbols = dist.Categorical(logits=self.logits).expand(batch.values.shape).mask(batch.mask).to_event(1)
        with sequence_plate(batch):
            pyro.sample("observations", symbols, obs=batch.values)

    def guide(self, batch: SequenceBatch) -> None:
        """No latent variable."""

    def log_prob_steps(self, values, lengths=None) -> torch.Tensor:
        values = torch.as_tensor(values)
        lengths = values.new_full(values.shape[:1], values.shape[1]) if lengths is None else torch.as_tensor(lengths)
        inside = torch.arange(values.shape[1]) < lengths.unsqueeze(-1)
        return torch.where(inside, self.logits.log_softmax(-1)[values], torch.zeros(()))

    def log_prob(self, values, lengths=None) -> torch.Tensor:
        return self.log_prob_steps(values, lengths).sum(-1)

    def sample(self, num_sequences: int, length: int, generator=None) -> SequenceBatch:
        probs = self.logits.detach().softmax(-1).expand(num_sequences, -1)
        return SequenceBatch.from_tensor(torch.multinomial(probs, length, replacement=True, generator=generator))

    def config(self) -> dict:
        return {"num_symbols": self.num_symbols}

    def fit_defaults(self, method: str):
        return dataclasses.replace(super().fit_defaults(method), learning_rate=0.1)


def _build_toy(data, settings):
    model = UnigramModel(data.num_symbols)
    if settings.get("init", "uniform") == "counts":
        counts = torch.bincount(data.batch.values[data.batch.mask], minlength=data.num_symbols).double()
        model.logits.data.copy_((counts / counts.sum()).log().float())
    elif settings.get("init", "uniform") != "uniform":
        raise UsageError(f"toy: init must be uniform or counts, got {settings['init']!r}")
    return model


def _plot_toy(run, model, splits, data):
    from zoo import plots

    marginals = model.logits.detach().softmax(-1).expand(3, -1).numpy()
    run.save_figure("symbol_frequencies.png", plots.state_probabilities(marginals, title="symbol frequencies"))


@pytest.fixture
def toy_family():
    """A family defined here and registered at run time: the CLI learns of it only through the registry."""
    family = register(
        Family(
            name="toy",
            help="independent symbols (a family defined in a test)",
            add_arguments=lambda group: group.add_argument("--init", choices=["uniform", "counts"], default="uniform"),
            settings_from_args=lambda args: {"init": args.init},
            build=_build_toy,
            label=lambda settings: f"toy-{settings['init']}",
            model_classes=(UnigramModel,),
            data_kinds=("categorical",),
            plots=_plot_toy,
            per_step_log_probs=lambda model, batch: model.log_prob_steps(batch.values, batch.lengths),
        )
    )
    yield family
    del REGISTRY[family.name]


def test_a_family_registered_at_run_time_is_fitted_compared_and_reloaded(toy_family, text_file, tmp_path, capsys):
    from inference.rundir import RunDirectory
    from zoo.cli import load_model

    out = tmp_path / "fit"
    assert run_cli("fit", "toy", "--data", text_file, "--epochs", 150, "--out", out, "--no-progress") == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert summary["model"] == "toy-uniform" and summary["class"] == "UnigramModel" and summary["method"] == "svi"
    assert config["family"] == "toy" and config["fit"]["learning_rate"] == 0.1  # the model's fit_defaults()
    assert (out / "symbol_frequencies.png").is_file()  # the entry's plots ran
    assert summary["valid_stderr"] > 0  # one held-out text: blocks through the entry's per_step_log_probs
    # Reloaded through the registry's model_classes, the model scores the held-out text as recorded.
    model = load_model(RunDirectory.open(out))
    from zoo.data import load_data, split_data

    valid = split_data(load_data(text_file)).valid.batch
    with torch.no_grad():
        assert float(model.log_prob(valid.values, valid.lengths).sum()) / valid.num_steps == pytest.approx(
            summary["valid_log_likelihood"], rel=1e-5
        )
    capsys.readouterr()
    assert run_cli("sample", out, "--length", 30) == 0
    assert set(capsys.readouterr().out.strip("\n")) <= set(TEXT)
    assert run_cli("decode", out) == 2
    assert "no discrete states" in capsys.readouterr().err

    cmp = tmp_path / "cmp"
    assert (
        run_cli(
            "compare",
            "--data",
            text_file,
            "--models",
            "toy:init=uniform,epochs=150",
            "toy:init=counts,epochs=1",
            "hmm:states=2",
            "--max-iterations",
            10,
            "--out",
            cmp,
            "--no-progress",
        )
        == 0
    )
    rows = {row["model"]: row for row in json.loads((cmp / "comparison.json").read_text())["models"]}
    assert list(rows) == ["unigram", "bigram", "toy-inituniform-epochs150", "toy-initcounts-epochs1", "hmm-states2"]
    # Trained by SVI through the CLI, independent symbols score what the unigram count table scores.
    for name in ("toy-inituniform-epochs150", "toy-initcounts-epochs1"):
        assert rows[name]["valid_log_likelihood"] == pytest.approx(rows["unigram"]["valid_log_likelihood"], abs=0.01)
    assert rows["toy-inituniform-epochs150"]["valid_log_likelihood"] < rows["bigram"]["valid_log_likelihood"]
    # The spec's settings are checked against the family's own flags.
    assert run_cli("compare", "--data", text_file, "--models", "toy:states=2", "--out", tmp_path / "bad") == 2
    err = capsys.readouterr().err
    assert "toy: unknown settings ['states']; allowed: ['init']" in err
    assert not (tmp_path / "bad").exists()  # refused before any model trained


def test_registered_family_flags_and_data_kinds_are_enforced(toy_family, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "toy", "--data", "builtin:nile", "--init", "random", "--out", str(tmp_path / "r")])
    assert "--init" in capsys.readouterr().err
    # Real-valued data is not the toy's kind: refused before its builder runs, naming both kinds.
    assert main(["fit", "toy", "--data", "builtin:nile", "--out", str(tmp_path / "r")]) == 2
    assert "toy: models categorical (symbol) data, but builtin:nile holds real-valued data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already registered"):
        register(toy_family)


def test_fit_help_lists_every_registered_family(toy_family, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    listing = capsys.readouterr().out
    for name, family in REGISTRY.items():
        assert name in listing and family.help in listing


# -- data options: binary frames, a data set's own split, a split by time -------------
from pathlib import Path  # noqa: E402

JSB_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "jsb_chorales.json"
needs_jsb = pytest.mark.skipif(not JSB_PATH.exists(), reason=f"JSB chorales data not found at {JSB_PATH}")


@needs_jsb
def test_jsb_chorales_fit_uses_the_files_own_split_as_binary_frames(tmp_path, capsys):
    from zoo.data import load_polyphonic

    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "gru",
            "--data",
            JSB_PATH,
            "--kind",
            "binary",
            "--hidden",
            8,
            "--embedding",
            8,
            "--epochs",
            2,
            "--lr",
            0.02,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "the data set's own train/valid/test parts (229/76/77 sequences" in printed
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["split"] == "own" and config["kind"] == "binary"
    steps = {part: load_polyphonic(JSB_PATH, part).num_steps for part in ("train", "valid", "test")}
    assert {part: summary[f"{part}_steps"] for part in steps} == steps
    # Bernoulli frames of 88 keys: the network beats independent keys at their training frequencies
    # (about -11.10 nats per frame on the test chorales), itself far above a fair coin per key (-88 ln 2).
    train, test = (load_polyphonic(JSB_PATH, part) for part in ("train", "test"))
    frequency = train.values[train.batch.mask].double().mean(0).clamp(1e-3, 1 - 1e-3)
    frames = test.values[test.batch.mask].double()
    independent = float((frames * frequency.log() + (1 - frames) * (1 - frequency).log()).sum(-1).mean())
    assert -88 * math.log(2) < independent < summary["test_log_likelihood"] < 0
    # The file's split is not to be re-cut, and a symbol HMM does not model multi-hot frames.
    assert run_cli("fit", "gru", "--data", JSB_PATH, "--split", "0.5,0.25,0.25", "--out", tmp_path / "r2") == 2
    assert "ships its own train/valid/test split" in capsys.readouterr().err
    assert run_cli("fit", "hmm", "--data", JSB_PATH, "--states", 2, "--out", tmp_path / "r3") == 2
    assert "holds binary (multi-hot) data" in capsys.readouterr().err


@needs_jsb
def test_jsb_chorales_compare_uses_the_files_own_split(tmp_path):
    out = tmp_path / "cmp"
    assert (
        run_cli(
            "compare",
            "--data",
            JSB_PATH,
            "--models",
            "rnn:hidden=6,embedding=0,epochs=1",
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["split"] == "own" and "(229/76/77 sequences" in comparison["split_description"]
    assert "229/76/77 sequences" in (out / "comparison.md").read_text()


def test_split_by_time_holds_out_the_tail_of_every_sequence(tmp_path):
    from zoo.data import load_data, split_data

    # Three sequences of different lengths whose value is the time index: the held-out parts must be the tails.
    lines = ["id,t,value"] + [
        f"{name},{t},{t}.0" for name, length in (("a", 40), ("b", 60), ("c", 50)) for t in range(length)
    ]
    path = tmp_path / "three.csv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "lgssm",
            "--data",
            path,
            "--sequence-column",
            "id",
            "--time-column",
            "t",
            "--state-dim",
            1,
            "--split",
            "0.6,0.2,0.2",
            "--split-by",
            "time",
            "--max-iterations",
            5,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert config["split"] == [0.6, 0.2, 0.2] and config["split_by"] == "time"
    assert [summary[f"{p}_steps"] for p in ("train", "valid", "test")] == [24 + 36 + 30, 8 + 12 + 10, 8 + 12 + 10]
    parts = split_data(load_data(path, sequence_column="id", time_column="t"), (0.6, 0.2, 0.2), by="time")
    assert [float(s[0, 0]) for s in parts.test.batch.sequences()] == [32.0, 48.0, 40.0]


def test_comparison_markdown_words_the_likelihood_column_from_the_rows():
    from zoo.cli.compare import _comparison_markdown
    from zoo.data import load_data

    data = load_data("builtin:nile")

    def row(name, likelihood):
        return {
            "model": name,
            "likelihood": likelihood,
            "num_parameters": 3,
            "seconds": 1.0,
            "train_log_likelihood": -1.0,
            "valid_log_likelihood": -1.1,
            "test_log_likelihood": -1.2,
        }

    exact = _comparison_markdown({"data": "x", "models": [row("hmm-states2", "exact"), row("lgssm-d1", "exact")]}, data)
    assert "Every likelihood here is exact" in exact
    mixed = _comparison_markdown(
        {"data": "x", "models": [row("hmm-states2", "exact"), row("dmm", "ELBO"), row("dmm-iwae", "IWAE bound (M=8)")]},
        data,
    )
    assert "Every likelihood here is exact" not in mixed
    assert "Lower bounds on the log-likelihood, not its exact value: dmm (ELBO); dmm-iwae (IWAE bound (M=8))." in mixed
    assert "Exact: hmm-states2." in mixed
    assert "| dmm | ELBO |" in mixed and "| dmm-iwae | IWAE bound (M=8) |" in mixed


def test_family_entries_are_checked_and_their_settings_are_their_flags():
    def add_arguments(group):
        group.add_argument("--state-dim", type=int)
        exclusive = group.add_mutually_exclusive_group()
        exclusive.add_argument("--fast", action="store_true")
        exclusive.add_argument("--slow", dest="careful", action="store_true")

    entry = dict(
        name="x",
        help="",
        add_arguments=add_arguments,
        settings_from_args=vars,
        build=_build_toy,
        label=str,
        model_classes=(UnigramModel,),
        data_kinds=("categorical",),
    )
    assert Family(**entry).settings_names() == ("state_dim", "fast", "careful")
    for field, value, message in (
        ("name", "a:b", "Family.name"),
        ("model_classes", (), "model_classes"),
        ("data_kinds", ("symbols",), "data_kinds"),
    ):
        with pytest.raises(ValueError, match=message):
            Family(**{**entry, field: value})
    with pytest.raises(TypeError, match="expected a Family"):
        register(entry)
    # Every shipped family is registered by importing zoo.families, and a saved model finds its entry.
    import zoo.families  # noqa: F401
    from zoo.hmm import CategoricalHMM
    from zoo.registry import family_of
    from zoo.rnn import RecurrentModel

    assert {"hmm", "lgssm", "rnn", "gru", "lstm"} <= set(REGISTRY)
    assert family_of(CategoricalHMM(2, 3)).name == "hmm"
    assert family_of(RecurrentModel("categorical", num_symbols=3, cell="gru", hidden_size=4)).name == "gru"
    assert family_of(UnigramModel(3)) is None  # not registered outside the toy_family fixture


# -- issue 15: every run directory that fit and compare write decodes and diagnoses ----------
def _npz_counts(tmp_path):
    from zoo.data import as_sequence_data, save_npz

    generator = torch.Generator().manual_seed(0)
    rates = torch.where((torch.arange(60) // 10) % 2 == 0, 1.0, 6.0)
    counts = torch.poisson(rates.expand(3, 60), generator=generator)[..., None]
    path = tmp_path / "counts.npz"
    save_npz(as_sequence_data(counts, "count"), path)
    return path


#: (what, how the run is made: a function of (tmp_path, text_file, csv_file) -> (argv, run directory), decodes?)
RUNS = [
    (
        "fit builtin:letters",
        lambda t, txt, csv: (
            ["fit", "hmm", "--data", "builtin:letters", "--first", 400, "--states", 2, "--max-iterations", 2],
            t / "run",
        ),
        True,
    ),
    (
        "compare builtin:letters",
        lambda t, txt, csv: (
            ["compare", "--data", "builtin:letters", "--first", 400, "--models", "hmm:states=2", "--max-iterations", 2],
            t / "run" / "hmm-states2",
        ),
        True,
    ),
    (
        "fit builtin:sunspots",
        lambda t, txt, csv: (
            ["fit", "hmm", "--data", "builtin:sunspots", "--states", 2, "--max-iterations", 2],
            t / "run",
        ),
        True,
    ),
    (
        "fit builtin:nile",
        lambda t, txt, csv: (
            ["fit", "lgssm", "--data", "builtin:nile", "--state-dim", 1, "--max-iterations", 2],
            t / "run",
        ),
        False,
    ),
    (
        "fit .txt",
        lambda t, txt, csv: (["fit", "hmm", "--data", txt, "--states", 2, "--max-iterations", 2], t / "run"),
        True,
    ),
    (
        "compare .txt",
        lambda t, txt, csv: (
            ["compare", "--data", txt, "--models", "hmm:states=2", "--max-iterations", 2],
            t / "run" / "hmm-states2",
        ),
        True,
    ),
    (
        "fit .csv",
        lambda t, txt, csv: (
            ["fit", "hmm", "--data", csv, "--time-column", "t", "--states", 2, "--max-iterations", 2],
            t / "run",
        ),
        True,
    ),
    (
        "fit .npz",
        lambda t, txt, csv: (["fit", "hmm", "--data", _npz_counts(t), "--states", 2, "--max-iterations", 2], t / "run"),
        True,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("what, make, decodes", RUNS, ids=[run[0] for run in RUNS])
def test_every_run_directory_decodes_and_diagnoses(what, make, decodes, text_file, csv_file, tmp_path, capsys):
    argv, run = make(tmp_path, text_file, csv_file)
    assert run_cli(*argv, "--out", tmp_path / "run", "--no-progress") == 0
    capsys.readouterr()
    if decodes:
        assert run_cli("decode", run) == 0, capsys.readouterr().err
        rows = (run / "decoded.csv").read_text().splitlines()
        config = json.loads((run / "config.json").read_text())
        assert rows[0] == "sequence,time,state" and len(rows) > 1
        if config.get("first"):  # the steps the model was fitted on, not the whole built-in text
            assert len(rows) == 1 + config["first"]
    else:
        assert run_cli("decode", run) == 2
        assert "has no discrete states to decode" in capsys.readouterr().err
    assert run_cli("diagnose", run, "--guide-draws", 10, "--predictive-draws", 3, "--no-progress") == 0, (
        capsys.readouterr().err
    )
    assert (run / "diagnostics" / "diagnose.json").is_file()


def test_a_builtin_letters_run_decodes_its_own_steps(tmp_path, capsys):
    """The README's main job: decode once failed with "option(s) vocabulary do not apply to built-in data"."""
    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "hmm",
            "--data",
            "builtin:letters",
            "--first",
            300,
            "--states",
            2,
            "--max-iterations",
            2,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    capsys.readouterr()
    assert run_cli("decode", out) == 0, capsys.readouterr().err
    assert len((out / "decoded.csv").read_text().splitlines()) == 1 + 300


def _small_fit(text_file, out, *extra):
    assert (
        run_cli(
            "fit",
            "hmm",
            "--data",
            text_file,
            "--states",
            2,
            "--max-iterations",
            2,
            "--out",
            out,
            "--no-progress",
            *extra,
        )
        == 0
    )


def test_diagnose_force_keeps_the_old_diagnostics_when_the_new_run_fails(text_file, tmp_path, capsys, monkeypatch):
    from zoo import diagnostics

    out = tmp_path / "run"
    _small_fit(text_file, out)
    assert run_cli("diagnose", out, "--guide-draws", 5, "--predictive-draws", 2) == 0
    before = {p.name: p.read_bytes() for p in (out / "diagnostics").iterdir()}
    assert "diagnose.json" in before

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing the new diagnostics

    monkeypatch.setattr(diagnostics, "write_diagnostics", fail)
    capsys.readouterr()
    assert run_cli("diagnose", out, "--guide-draws", 5, "--predictive-draws", 2, "--force") == 130
    assert f"{out / 'diagnostics'} is left as it was" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "diagnostics").iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith((".new-", ".old-"))]


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(text_file, tmp_path, capsys, monkeypatch):
    import zoo.cli.training

    real_fit = zoo.cli.training.fit

    def fit_then_interrupt(*args, **kwargs):
        real_fit(*args, **kwargs)  # writes the checkpoint, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.cli.training, "fit", fit_then_interrupt)
    out = tmp_path / "run"
    argv = [
        "fit",
        "hmm",
        "--data",
        str(text_file),
        "--states",
        "2",
        "--max-iterations",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--force",
    ]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"the last checkpoint is {out / 'checkpoint.safetensors'} (step 2)" in err
    assert "continue with: seqzoo fit hmm" in err and err.strip().endswith("--resume") and "--force" not in err


@pytest.mark.slow
def test_diagnose_nuts_without_progress_prints_a_line_per_chain(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    _small_fit(text_file, out, "--first", 60)
    capsys.readouterr()
    assert (
        run_cli(
            "diagnose",
            out,
            "--nuts",
            "--chains",
            2,
            "--draws",
            4,
            "--warmup",
            4,
            "--max-tree-depth",
            3,
            "--guide-draws",
            5,
            "--predictive-draws",
            2,
            "--no-progress",
            "--workers",
            2,
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "NUTS: 2 chain(s) of 4 warm-up + 4 draws" in err
    assert "2 chain(s) of 4 warm-up + 4 draws, 2 at a time in worker processes" in err  # --workers 2
    assert "chain 1/2: 4 draws in" in err and "chain 2/2: 4 draws in" in err


def test_lgssm_plots_use_the_niles_years_and_units(tmp_path, monkeypatch):
    from zoo import plots

    seen = {}
    for name in ("state_bands", "forecast_bands"):
        real = getattr(plots, name)

        def record(*args, _name=name, _real=real, **kwargs):
            seen[_name] = (args, kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(plots, name, record)
    out = tmp_path / "run"
    assert (
        run_cli(
            "fit",
            "lgssm",
            "--data",
            "builtin:nile",
            "--state-dim",
            1,
            "--max-iterations",
            2,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    (time, *_), options = seen["state_bands"]
    assert options["time_label"] == "year" and options["units"] == "10⁸ m³"
    assert time[0] == 1871 and np.all(np.diff(time) == 1)
    (history_time, _, future_time, *_), options = seen["forecast_bands"]
    assert options["time_label"] == "year" and options["units"] == "10⁸ m³"
    assert future_time[0] == history_time[-1] + 1 and future_time[-1] == 1970  # the held-out years, to the end


def test_compare_without_held_out_data_says_so(text_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert (
        run_cli(
            "compare",
            "--data",
            text_file,
            "--models",
            "hmm:states=2",
            "--max-iterations",
            2,
            "--split",
            "1,0,0",
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "valid and test: no held-out data" in printed and "nan" not in printed
    markdown = (out / "comparison.md").read_text()
    assert "Valid and test: no held-out data" in markdown and "nan" not in markdown


def test_fit_force_keeps_the_old_run_until_the_new_one_is_complete(text_file, tmp_path, capsys, monkeypatch):
    import zoo.cli.training

    out = tmp_path / "run"
    assert (
        run_cli("fit", "hmm", "--data", text_file, "--states", 3, "--max-iterations", 2, "--out", out, "--no-progress")
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.cli.training, "fit", interrupted)
    capsys.readouterr()
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--force", "--no-progress") == 130
    assert f"the run in {out} is left as it was" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    _small_fit(text_file, out, "--force")  # uninterrupted, the replacement is swapped in
    assert json.loads((out / "model.json").read_text())["config"]["num_states"] == 2
    assert (out / ".seqzoo-run.json").is_file()


def test_posterior_states_numbers_the_validation_steps_where_they_are(text_file, tmp_path, monkeypatch):
    from zoo import plots

    seen = {}
    real = plots.state_probabilities

    def record(marginals, labels=None, title="", first_step=0):
        seen.update(length=len(marginals), first_step=first_step, labels=labels)
        return real(marginals, labels, title=title, first_step=first_step)

    monkeypatch.setattr(plots, "state_probabilities", record)
    out = tmp_path / "run"
    _small_fit(text_file, out)
    train_steps = json.loads((out / "summary.json").read_text())["train_steps"]
    # One text cut in time: the validation part (plotted) starts right after the training part.
    assert seen["first_step"] == train_steps > 0
    assert "".join(seen["labels"]) == TEXT[train_steps : train_steps + seen["length"]]
