"""Timing helpers shared by the benchmarks: one thread count for every library, medians
after a warm-up, and table cells that say why a reference failed.

The thread variables must be set before numpy, torch, numba or JAX are imported, so a
benchmark calls :func:`pin_threads` first thing under ``if __name__ == "__main__":``::

    import _timing
    if __name__ == "__main__":
        _timing.pin_threads(_timing.threads_from_argv(sys.argv[1:]))
    import torch  # after
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def threads_from_argv(argv: list[str], default: str = "1") -> str:
    """The value of ``--threads N`` / ``--threads=N`` in ``argv`` (read before argparse runs)."""
    for index, value in enumerate(argv):
        if value == "--threads" and index + 1 < len(argv):
            return argv[index + 1]
        if value.startswith("--threads="):
            return value.split("=", 1)[1]
    return default


def pin_threads(threads: str) -> None:
    """Sets every library's thread count (BLAS, OpenMP, numba; XLA to one thread when ``threads`` is 1)."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = threads
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == "1" else ""
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def median_seconds(function: Callable[[], object], repeat: int, warm_up: bool = True) -> float:
    """Median wall time of ``repeat`` calls, after one untimed call (compilation, allocators)."""
    if warm_up:
        function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(function: Callable[[], object] | None, repeat: int) -> str:
    """A table cell: the median seconds, ``n/a`` without the library, or why it failed."""
    if function is None:
        return "n/a"
    try:
        return f"{median_seconds(function, repeat):.4g}"
    except Exception as error:  # a reference failing must not stop the table; say why
        return f"failed ({type(error).__name__})"


def synchronise(device) -> None:
    """Waits for a CUDA device's queued work (so wall time is the work's), no-op on CPU."""
    if getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize(device)
