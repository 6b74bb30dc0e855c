"""Runs every example script tiny. An example that is not listed here fails the
test, so a new example cannot land untested."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


def shared_data_dir() -> Path:
    """``$SEQZOO_SHARED_DATA`` if set, else ``../shared/data`` beside the repository root."""
    if os.environ.get("SEQZOO_SHARED_DATA"):
        return Path(os.environ["SEQZOO_SHARED_DATA"])
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# script -> flags for a tiny run ({out} is a fresh temporary directory, {data} the shared data folder)
TINY_RUNS = {
    "shannon_letters.py": ["--num-chars", "3000", "--seeds", "0", "1", "--max-iterations", "40", "--out", "{out}"],
    "shakespeare.py": [
        "--data",
        "{data}/tinyshakespeare.txt",
        "--first",
        "6000",
        "--budget-minutes",
        "0.05",
        "--models",
        "hmm:4",
        "lstm:16",
        "--embedding",
        "8",
        "--sample-length",
        "40",
        "--out",
        "{out}",
    ],
    # Every published number is checked; the gradient fits (~1 minute) only in the slow test below.
    "nile_local_level.py": ["--svi-epochs", "0", "--lbfgs-iterations", "0", "--em-tolerance", "1e-8", "--out", "{out}"],
    "forecast_nile.py": [
        "--datasets",
        "nile",
        "--gru-epochs",
        "3",
        "--em-iterations",
        "5",
        "--restarts",
        "1",
        "--num-samples",
        "20",
        "--grid",
        "6",
        "--draws",
        "40",
        "--refit-every",
        "15",
        "--out",
        "{out}",
    ],
    "ozone.py": [
        "--data-dir",
        "{data}",
        "--days",
        "30",
        "--stations",
        "40",
        "--radii",
        "0",
        "100",
        "--em-iterations",
        "5",
        "--out",
        "{out}",
    ],
    "dmm_jsb.py": [
        "--data",
        "{data}/jsb_chorales.json",
        "--train-sequences",
        "8",
        "--test-sequences",
        "4",
        "--z-dim",
        "4",
        "--transition-dim",
        "8",
        "--emitter-dim",
        "8",
        "--rnn-dim",
        "8",
        "--epochs",
        "2",
        "--particles",
        "3",
        "--out",
        "{out}",
    ],
    "dtm_sotu.py": [
        "--first-year",
        "1990",
        "--topics",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--completion-steps",
        "5",
        "--forecast",
        "--out",
        "{out}",
    ],
    "topic_conditioned_text.py": [
        "--first-year",
        "1990",
        "--max-docs",
        "200",
        "--topics",
        "4",
        "--topic-epochs",
        "3",
        "--minutes",
        "0.05",
        "--hidden",
        "32",
        "--check-samples",
        "4",
        "--sample-length",
        "60",
        "--output",
        "{out}",
    ],
}

# script -> files it needs in the shared data folder (the test skips, saying so, when they are absent)
NEEDS_SHARED_DATA = {
    "ozone.py": ["ozone2_y.csv", "ozone2_stations.csv"],
    "shakespeare.py": ["tinyshakespeare.txt"],
    "dmm_jsb.py": ["jsb_chorales.json"],
}


def test_every_example_is_listed():
    scripts = sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))
    assert scripts == sorted(TINY_RUNS), "list every example in TINY_RUNS with flags for a tiny run"


def _shared_data_or_skip(script: str) -> Path:
    """The shared data folder, or a skip naming the files ``script`` needs that are absent there."""
    data_dir = shared_data_dir()
    absent = [name for name in NEEDS_SHARED_DATA.get(script, []) if not (data_dir / name).is_file()]
    if absent:
        pytest.skip(
            f"{script} needs {', '.join(absent)} in {data_dir} (set SEQZOO_SHARED_DATA to the shared data folder)"
        )
    return data_dir


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_example_runs_tiny(script, tmp_path):
    data_dir = _shared_data_or_skip(script)
    argv = [a.format(out=tmp_path, data=data_dir) for a in TINY_RUNS[script]]
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / script), *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the example wrote nothing to --out"


@pytest.mark.slow
def test_nile_full_run_checks_the_gradient_fit_too(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / "nile_local_level.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "[ok] gradient: sigma2_eta within 1% of D&K" in completed.stdout


def test_dmm_example_final_bound_averages_draws_and_plots_runs_side_by_side(tmp_path):
    data_dir = _shared_data_or_skip("dmm_jsb.py")
    import json

    argv = [a.format(out=tmp_path / "run", data=data_dir) for a in TINY_RUNS["dmm_jsb.py"]]
    script = str(EXAMPLES_DIR / "dmm_jsb.py")
    completed = subprocess.run(
        [
            sys.executable,
            script,
            *argv,
            "--final-draws",
            "3",
            "--weight-decay",
            "1",
            "--guide-dropout",
            "0.2",
            "--average",
            "0.5",
            "--eval-every",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    draws = results["test_elbo_draws"]
    assert len(draws) == 3 and len(set(draws)) == 3  # three different guide draws, averaged
    assert results["test_elbo_nats_per_step"] == pytest.approx(sum(draws) / 3, abs=1e-3)
    assert results["settings"]["weight_decay"] == 1.0 and results["settings"]["guide_dropout"] == 0.2
    # The family's flags reach the fit through the family's recipe (not the example's own defaults).
    assert results["fit"]["weight_decay"] == "1.0" and results["fit"]["average_decay"] == "0.5"
    assert results["fit"]["learning_rate"] == "0.003" and results["fit"]["clip_norm"] == "10.0"
    with open(tmp_path / "run" / "curve.csv", newline="") as handle:
        curve = list(csv.DictReader(handle))
    assert len(curve) == 2  # --eval-every 0: both epochs
    completed = subprocess.run(
        [
            sys.executable,
            script,
            "--out",
            str(tmp_path / "plot"),
            "--compare-runs",
            f"{tmp_path / 'run'}=tiny",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "plot" / "recipes.png").stat().st_size > 0
    with open(tmp_path / "plot" / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["tiny", "run"]
    assert float(rows[0]["test_elbo_nats_per_step"]) == pytest.approx(results["test_elbo_nats_per_step"], abs=1e-4)
    assert rows[0]["test_elbo_draws"] == "3"
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 2 and summary["sd"] == 0.0
    assert summary["share_at_or_below_7.0"] == float(results["test_elbo_nats_per_step"] <= 7.0)
    assert summary["share_at_or_below_6.87"] == float(results["test_elbo_nats_per_step"] <= 6.87)
    assert "averaged" not in summary  # the final bounds are the fitted (averaged) model's, reported once
