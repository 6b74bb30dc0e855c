"""Runs every example script tiny. An example that is not listed here fails the
test, so a new example cannot land untested."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

# script -> flags for a tiny run ({out} is a fresh temporary directory)
TINY_RUNS = {
    "shannon_letters.py": ["--num-chars", "3000", "--seeds", "0", "1", "--max-iterations", "40", "--out", "{out}"],
}


def test_every_example_is_listed():
    scripts = sorted(p.name for p in EXAMPLES_DIR.glob("*.py"))
    assert scripts == sorted(TINY_RUNS), "list every example in TINY_RUNS with flags for a tiny run"


@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_example_runs_tiny(script, tmp_path):
    argv = [a.format(out=tmp_path) for a in TINY_RUNS[script]]
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / script), *argv],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the example wrote nothing to --out"
