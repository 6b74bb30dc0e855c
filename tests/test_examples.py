"""Runs every example script tiny. An example that is not listed here fails the
test, so a new example cannot land untested."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
SHARED_DATA = Path(os.environ.get("SEQZOO_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")

# script -> flags for a tiny run ({out} is a fresh temporary directory)
TINY_RUNS = {
    "shannon_letters.py": ["--num-chars", "3000", "--seeds", "0", "1", "--max-iterations", "40", "--out", "{out}"],
    "shakespeare.py": ["--data", "{data}/tinyshakespeare.txt", "--first", "6000", "--budget-minutes", "0.05",
                       "--models", "hmm:4", "lstm:16", "--embedding", "8", "--sample-length", "40", "--out", "{out}"],
}


def test_every_example_is_listed():
    scripts = sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))
    assert scripts == sorted(TINY_RUNS), "list every example in TINY_RUNS with flags for a tiny run"


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_example_runs_tiny(script, tmp_path):
    argv = [a.format(out=tmp_path, data=SHARED_DATA) for a in TINY_RUNS[script]]
    missing = [a for a in argv if a.startswith(str(SHARED_DATA)) and not Path(a).exists()]
    if missing:
        pytest.skip(f"shared data file {missing[0]} is absent (set SEQZOO_SHARED_DATA to the data directory)")
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / script), *argv],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the example wrote nothing to --out"
