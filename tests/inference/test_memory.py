"""Tests of the memory estimate and check made before a fit allocates (issue 15)."""

from __future__ import annotations

import sys

import pytest

from inference.memory import (
    InsufficientMemoryError,
    LargeMemoryWarning,
    MemoryEstimate,
    available_memory,
    check_count,
    check_memory,
    format_bytes,
    generic_fit_memory,
)


def test_check_count_and_format_bytes():
    assert check_count("batch_steps", 0) == 0 and check_count("num_parameters", 7, 1) == 7
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="num_states: expected an integer >= 1, got"):
            check_count("num_states", bad, 1)
    assert format_bytes(700) == "700 bytes" and format_bytes(1536) == "1.5 KiB" and format_bytes(40e9) == "37.3 GiB"


def test_check_memory_warns_when_large_and_is_silent_when_small(recwarn):
    estimate = MemoryEstimate({"a": 600, "b": 100}, "the test fit")
    with pytest.raises(InsufficientMemoryError, match=r"needs about 700 bytes.*only 700 bytes is free"):
        check_memory(estimate, limit_bytes=700)
    with pytest.warns(LargeMemoryWarning, match=r"the test fit needs about 700 bytes, most of it for the a, 70% of"):
        check_memory(estimate, limit_bytes=1000)
    check_memory(estimate, limit_bytes=2000)
    assert len(recwarn) == 0
    with pytest.raises(ValueError, match="warn_fraction"):
        check_memory(estimate, limit_bytes=2000, warn_fraction=0.95)


def test_generic_estimate_counts_parameters_optimiser_and_activations():
    estimate = generic_fit_memory(10_000, batch_sequences=8, batch_steps=100, activations_per_step=64)
    assert estimate.parts["parameters, gradients and optimiser state"] == 10_000 * 4 * 4
    assert estimate.parts["activations (N·T per batch)"] == 2 * 8 * 100 * 64 * 4
    default = generic_fit_memory(10_000, batch_sequences=8, batch_steps=100)
    assert default.parts["activations (N·T per batch)"] == 2 * 8 * 100 * 400 * 4  # 4 sqrt(10,000) per step
    assert "(10,000 parameters) on a batch of 8 x 100 steps" in estimate.description


def test_available_memory_reads_meminfo_then_psutil(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory("cpu", meminfo=meminfo) == (
        8_000_000 * 1024,
        f"available memory (MemAvailable in {meminfo})",
    )
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: import fails
    assert available_memory("cpu", meminfo=tmp_path / "missing") == (None, "unknown")
    real, source = available_memory("cpu")
    assert real is None or (real > 0 and "available memory" in source)
