"""End-to-end tests of the ``seqzoo`` command line on tiny data."""

import json
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
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 3, "--out", out, "--max-iterations", 30, "--no-progress") == 0
    for name in ("config.json", "summary.json", "model.safetensors", "model.json", "vocabulary.json",
                 "log_likelihood_trace.png", "posterior_states.png"):
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
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 3, "--no-progress") == 0
    before = (out / "summary.json").read_text()
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 3, "--no-progress") == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 4,
                   "--no-progress", "--force") == 0
    assert len(json.loads((out / "summary.json").read_text())["history"]) == 4


def test_decode_and_sample_reload_the_model(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("fit", "hmm", "--data", text_file, "--states", 2, "--out", out, "--max-iterations", 20, "--no-progress") == 0
    capsys.readouterr()
    assert run_cli("sample", out, "--length", 80, "--seed", 3) == 0
    sample = capsys.readouterr().out.strip("\n")
    assert len(sample) == 80 and set(sample) <= set(TEXT)
    assert run_cli("decode", out, "--data", text_file) == 0
    rows = (out / "decoded.csv").read_text().splitlines()
    assert rows[0] == "sequence,time,state" and len(rows) == 1 + len(TEXT)
    assert {r.split(",")[2] for r in rows[1:]} <= {"0", "1"}


def test_gaussian_svi_on_csv_with_missing_values(csv_file, tmp_path):
    out = tmp_path / "run"
    assert run_cli("fit", "hmm", "--data", csv_file, "--states", 2, "--method", "svi", "--epochs", 150,
                   "--out", out, "--no-progress", "--split", "0.8,0.2,0", "--time-column", "t") == 0
    summary = json.loads((out / "summary.json").read_text())
    # Two well-separated regimes with unit noise: a fitted 2-state HMM scores
    # close to the N(0, 1) entropy (-1.419 nats), far above one Gaussian's (~ -2.6).
    assert summary["valid_log_likelihood"] > -1.9


def test_compare_writes_table_with_baselines(text_file, tmp_path):
    out = tmp_path / "cmp"
    assert run_cli("compare", "--data", text_file, "--models", "hmm:states=2", "hmm:states=4", "--out", out,
                   "--max-iterations", 15, "--no-progress") == 0
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
    assert run_cli("fit", "lgssm", "--data", "builtin:nile", "--state-dim", 1, "--transition", "identity",
                   "--observation", "identity", "--prior", "none", "--out", out, "--max-iterations", 300, "--no-progress") == 0
    for name in ("config.json", "summary.json", "model.safetensors", "model.json", "log_likelihood_trace.png",
                 "smoothed_states.png", "forecast.png"):
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
    assert run_cli("fit", "lgssm", "--data", path, "--time-column", "t", "--state-dim", 1, "--split", "0.8,0.2,0",
                   "--out", out, "--max-iterations", 200, "--no-progress") == 0
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
    assert run_cli("compare", "--data", "builtin:nile", "--models", "lgssm:state_dim=1,transition=identity",
                   "hmm:states=2", "--out", out, "--max-iterations", 50, "--no-progress") == 0
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["model"]: row for row in comparison["models"]}
    assert set(rows) == {"lgssm-state_dim1-transitionidentity", "hmm-states2"}
    # A local-level model scores the Nile's held-out decade better than a 2-state Gaussian HMM.
    assert rows["lgssm-state_dim1-transitionidentity"]["test_log_likelihood"] > rows["hmm-states2"]["test_log_likelihood"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "lgssm", "--data", "builtin:nile", "--out", "{tmp}/r"], "--state-dim"),
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "1", "--states", "2", "--out", "{tmp}/r"], "--states"),
        (["fit", "hmm", "--data", "builtin:nile", "--states", "2", "--state-dim", "1", "--out", "{tmp}/r"], "--state-dim"),
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "1", "--transition", "fixed", "--out", "{tmp}/r"], "--transition"),
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
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "2", "--observation", "identity", "--out", "{tmp}/r"],
         "--observation identity"),
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "0", "--out", "{tmp}/r"], "--state-dim"),
        (["fit", "lgssm", "--data", "builtin:nile", "--state-dim", "1", "--method", "svi", "--latent", "sampled",
          "--out", "{tmp}/r"], "--initial prior"),
        (["compare", "--data", "builtin:nile", "--models", "lgssm:states=2", "--out", "{tmp}/r"], "unknown settings"),
    ],
)
def test_bad_lgssm_input_is_reported_without_traceback(argv, message, tmp_path, text_file, capsys):
    assert main([a.format(tmp=tmp_path, text=text_file) for a in argv]) == 2
    assert message in capsys.readouterr().err
