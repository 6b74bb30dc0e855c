"""``seqzoo compare`` / ``fit`` on one series split in time: held-out parts scored given
their history, forecast and leave-future-out columns, the forecast fan."""

import json

import numpy as np
import pytest
import torch

from inference.rundir import RunDirectory
from inference.scoring import score
from inference.timeseries import conditional_log_prob, rolling_origin
from zoo.cli import load_model, main
from zoo.compare_timeseries import block_boundaries, timeline
from zoo.data import load_data, split_data

SPEC = "lgssm:state_dim=1,transition=identity"
LABEL = "lgssm-state_dim1-transitionidentity"


@pytest.fixture(scope="module")
def walk_csv(tmp_path_factory):
    """A random walk plus noise, 120 steps: the level at the end of the training part
    is far from the initial state's, so scoring from the start differs from scoring given history."""
    rng = np.random.default_rng(3)
    values = 50 + np.cumsum(rng.normal(0.0, 1.0, 120)) + rng.normal(0.0, 0.5, 120)
    path = tmp_path_factory.mktemp("walk") / "walk.csv"
    path.write_text("value\n" + "\n".join(f"{v:.5f}" for v in values) + "\n")
    return path


@pytest.fixture(scope="module")
def compared(walk_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    assert (
        main(
            [
                "compare",
                "--data",
                str(walk_csv),
                "--models",
                SPEC,
                "--out",
                str(out),
                "--max-iterations",
                "30",
                "--no-progress",
                "--horizon",
                "3",
                "--lfo",
                "--split",
                "0.7,0.1,0.2",
            ]
        )
        == 0
    )
    return out


def _parts(walk_csv):
    data = load_data(str(walk_csv))
    splits = split_data(data, (0.7, 0.1, 0.2))
    return data, splits


def test_conditional_column_equals_the_library_score(compared, walk_csv):
    comparison = json.loads((compared / "comparison.json").read_text())
    assert comparison["score_from"] == "history"
    row = next(r for r in comparison["models"] if r["model"] == LABEL)
    model = load_model(RunDirectory.open(compared / LABEL))
    data, splits = _parts(walk_csv)
    train, valid, test = (part.batch.to(dtype=torch.float64) for part in splits)
    history_of_test = torch.cat([train.values, valid.values], 1)
    expected_test = float(conditional_log_prob(model, history_of_test, test.values).sum()) / test.num_steps
    expected_valid = float(conditional_log_prob(model, train.values, valid.values).sum()) / valid.num_steps
    assert row["test_log_likelihood_given_history"] == pytest.approx(expected_test, rel=1e-9)
    assert row["valid_log_likelihood_given_history"] == pytest.approx(expected_valid, rel=1e-9)
    # The old key keeps the from-the-start score. It differs (with the diffuse start a new
    # series' first step carries no density term, so the difference is a step's worth, not more).
    start = score(model, test).per_step
    assert row["test_log_likelihood"] == pytest.approx(start, rel=1e-9)
    assert abs(start - expected_test) > 0.01
    # The table shows the conditional score under its label, with a block standard error.
    table = (compared / "comparison.md").read_text()
    assert "test (nats/step given history)" in table
    assert f"{expected_test:.4f} ± {row['test_stderr_given_history']:.4f}" in table
    assert row["test_stderr_given_history"] > 0


def test_block_standard_error_comes_from_the_per_step_conditional_terms(compared, walk_csv):
    """The recorded standard error is the ratio estimator over contiguous blocks of the
    one-step conditional terms (Kalman filter terms of the whole series)."""
    from inference.scoring import ratio_standard_error

    row = next(r for r in json.loads((compared / "comparison.json").read_text())["models"] if r["model"] == LABEL)
    model = load_model(RunDirectory.open(compared / LABEL))
    data, splits = _parts(walk_csv)
    series = data.batch.values.to(torch.float64)
    with torch.no_grad():
        terms = model.filter(series, data.batch.lengths).step_log_likelihood[0].double()
    test_start = splits.train.num_steps + splits.valid.num_steps
    test_terms = terms[test_start:]
    bounds = block_boundaries(len(test_terms))
    sums = torch.stack([test_terms[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    steps = torch.tensor([b - a for a, b in zip(bounds[:-1], bounds[1:])])
    assert float(test_terms.mean()) == pytest.approx(row["test_log_likelihood_given_history"], rel=1e-6)
    assert row["test_stderr_given_history"] == pytest.approx(ratio_standard_error(sums, steps), rel=1e-6)


def test_forecast_columns_score_held_out_points_only(compared, walk_csv):
    row = next(r for r in json.loads((compared / "comparison.json").read_text())["models"] if r["model"] == LABEL)
    forecast = row["forecast"]
    assert forecast["part"] == "test" and set(forecast["leads"]) == {"1", "3"}
    data, splits = _parts(walk_csv)
    # Every lead scores exactly the test steps (24): never a training or validation step.
    for lead in ("1", "3"):
        assert forecast["leads"][lead]["targets"] == splits.test.num_steps
        for key in ("rmse", "crps", "coverage_50", "coverage_90"):
            assert np.isfinite(forecast["leads"][lead][key])
    # h = 1: the Kalman one-step predictive; its RMSE is that of the filter's predicted means
    # on the test steps, computed here from the model directly.
    model = load_model(RunDirectory.open(compared / LABEL))
    series = data.batch.values.to(torch.float64)
    test_start = splits.train.num_steps + splits.valid.num_steps
    means = []
    with torch.no_grad():
        for origin in range(test_start, series.shape[1]):
            means.append(float(model.forecast(series[:, :origin], 1).observation_mean[0, 0, 0]))
    errors = np.array(means) - series[0, test_start:, 0].numpy()
    assert forecast["leads"]["1"]["rmse"] == pytest.approx(float(np.sqrt((errors**2).mean())), rel=1e-6)
    table = (compared / "comparison.md").read_text()
    assert "h=3 cov 90%" in table


def test_lfo_columns_and_the_figure(compared, walk_csv):
    row = next(r for r in json.loads((compared / "comparison.json").read_text())["models"] if r["model"] == LABEL)
    lfo = row["lfo"]
    assert lfo["num_refits"] == 0 and lfo["horizon"] == 1
    # One-step LFO without refits over every test step is the conditional test score.
    assert lfo["elpd"] == pytest.approx(
        row["test_log_likelihood_given_history"] * row["test_steps_given_history"], rel=1e-6
    )
    assert (compared / "forecast_fan.png").is_file() and (compared / "forecast_fan.png").stat().st_size > 10_000


def test_score_from_start_keeps_the_unconditioned_score(walk_csv, tmp_path):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--data",
                str(walk_csv),
                "--models",
                SPEC,
                "--out",
                str(out),
                "--max-iterations",
                "30",
                "--no-progress",
                "--split",
                "0.7,0.1,0.2",
                "--score-from",
                "start",
                "--forecast-origins",
                "0",
            ]
        )
        == 0
    )
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["score_from"] == "start"
    row = comparison["models"][0]
    assert "test_log_likelihood_given_history" not in row and "forecast" not in row
    model = load_model(RunDirectory.open(out / LABEL))
    data, splits = _parts(walk_csv)
    assert row["test_log_likelihood"] == pytest.approx(
        score(model, splits.test.batch.to(dtype=torch.float64)).per_step, rel=1e-9
    )
    table = (out / "comparison.md").read_text()
    assert "given history" not in table.split("\n| model")[1] and "--score-from start" in table


def test_timeline_matches_split_data_and_is_none_for_shuffled_sequences():
    data = load_data("builtin:nile")
    splits = split_data(data, (0.8, 0.1, 0.1))
    line = timeline(data, splits, {"split": [0.8, 0.1, 0.1], "split_by": "shuffle"})
    history, future = line.history_and_future("test")
    assert history.num_steps == 90 and torch.equal(future.values, splits.test.batch.values)
    many = data.with_batch(data.batch.chunk(10))
    assert timeline(many, split_data(many, (0.6, 0.2, 0.2)), {"split": [0.6, 0.2, 0.2], "split_by": "shuffle"}) is None
    by_time = split_data(many, (0.6, 0.2, 0.2), by="time")
    line = timeline(many, by_time, {"split": [0.6, 0.2, 0.2], "split_by": "time"})
    history, future = line.history_and_future("valid")
    assert history.lengths.tolist() == [6] * 10 and torch.equal(future.values, by_time.valid.batch.values)


def test_bad_forecast_flags_are_refused(walk_csv, tmp_path, capsys):
    assert (
        main(["compare", "--data", str(walk_csv), "--models", SPEC, "--out", str(tmp_path / "x"), "--horizon", "0"])
        == 2
    )
    assert "--horizon" in capsys.readouterr().err


@pytest.mark.parametrize("score_from", ["history", "start"])
def test_fit_early_stops_on_the_score_it_reports(walk_csv, tmp_path, score_from):
    """fit's validation curve scores the validation part as --score-from says: its last
    record (at the final parameters) is the summary's conditional or unconditioned score."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "lgssm",
                "--data",
                str(walk_csv),
                "--state-dim",
                "1",
                "--transition",
                "identity",
                "--out",
                str(out),
                "--no-progress",
                "--max-iterations",
                "3",
                "--score-from",
                score_from,
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    last = summary["history"][-1]["valid_log_prob_per_step"]
    assert summary["stopped"] == "max_steps" and summary["score_from"] == score_from
    if score_from == "history":
        assert last == pytest.approx(summary["valid_log_likelihood_given_history"], rel=1e-9)
        assert abs(last - summary["valid_log_likelihood"]) > 0.01
    else:
        assert last == pytest.approx(summary["valid_log_likelihood"], rel=1e-9)
        assert "valid_log_likelihood_given_history" not in summary


def test_score_command_rescores_a_run_given_history_or_from_start(walk_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "lgssm",
                "--data",
                str(walk_csv),
                "--state-dim",
                "1",
                "--transition",
                "identity",
                "--out",
                str(out),
                "--no-progress",
                "--max-iterations",
                "3",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["score", str(out)]) == 0
    scored = json.loads((out / "score.json").read_text())
    assert "test" in capsys.readouterr().out and scored["score_from"] == "history"
    for part in ("valid", "test"):
        assert scored[part]["given_history"]
        assert scored[part]["log_likelihood"] == pytest.approx(
            summary[f"{part}_log_likelihood_given_history"], rel=1e-9
        )
        assert scored[part]["stderr"] == pytest.approx(summary[f"{part}_stderr_given_history"], rel=1e-9)
    assert main(["score", str(out), "--score-from", "start"]) == 0
    scored = json.loads((out / "score.json").read_text())
    for part in ("train", "valid", "test"):
        assert scored[part]["log_likelihood"] == pytest.approx(summary[f"{part}_log_likelihood"], rel=1e-9)
    assert "--score-from start" in scored["note"]


def test_lfo_refits_at_every_kth_origin(walk_csv, tmp_path):
    """24 test steps, at most 8 origins (every 3rd step), a refit every 5th origin: the first
    fit at origin 0 and one refit; the refit models differ from the compare model, so the
    elpd differs from the no-refit one."""
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--data",
                str(walk_csv),
                "--models",
                SPEC,
                "--out",
                str(out),
                "--max-iterations",
                "30",
                "--no-progress",
                "--split",
                "0.7,0.1,0.2",
                "--forecast-origins",
                "0",
                "--lfo",
                "--lfo-origins",
                "8",
                "--lfo-refit-every",
                "5",
            ]
        )
        == 0
    )
    row = json.loads((out / "comparison.json").read_text())["models"][0]
    lfo = row["lfo"]
    assert (lfo["num_origins"], lfo["origin_step"], lfo["num_refits"]) == (8, 3, 1)
    model = load_model(RunDirectory.open(out / LABEL))
    data, _ = _parts(walk_csv)
    kept = rolling_origin(model, data.batch.to(dtype=torch.float64), first_origin=96, horizon=1, step=3)
    assert kept.num_refits == 0 and abs(kept.elpd - lfo["elpd"]) > 1e-6
    assert "| 8 | 1 |" in (out / "comparison.md").read_text()
