"""The command line's data-parallel mode: ``torchrun --nproc-per-node N -m zoo fit|compare ...``.

Under ``torchrun`` with more than one process (``WORLD_SIZE > 1``),
:func:`session` joins the process group (:class:`inference.distributed.DataParallel`)
for the length of one command; the CLI then calls the few functions below
where it would create or open a run directory, pick a device and fit, and
each of them does the single-process thing when no session is open. So a
plain ``seqzoo fit ...`` is unchanged, and under ``torchrun``:

* every rank reads the data and splits it with the same ``--seed`` (identical
  parts everywhere) and builds the same model;
* rank 0 creates the run directory (``--force`` replaces or stages it there)
  before any other rank goes on (:meth:`DataParallel.create_run`); the other
  ranks hold a :class:`~inference.distributed.ReadOnlyRunDirectory`, so every
  file (config, checkpoints, final model, scores, plots, comparison tables)
  is written by rank 0 only, while the code that writes them runs unchanged;
* the fit is :meth:`DataParallel.fit` (sharded mini-batches or E-step,
  gradients or statistics all-reduced, decisions taken on rank 0);
* ranks other than 0 print nothing (their stdout and stderr go to
  ``os.devnull`` while the command runs; an error is still reported).

``SEQZOO_DISTRIBUTED_TIMEOUT`` (seconds, default 120) is how long a
collective waits for the other processes before the run fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from inference.batch import SequenceBatch
from inference.contract import SequenceModel
from inference.distributed import DataParallel, DistributedError
from inference.fit import fit as single_process_fit
from inference.rundir import RunDirectory
from inference.training import FitResult
from zoo.registry import UsageError

__all__ = [
    "COMMANDS",
    "DEFAULT_TIMEOUT",
    "EXIT_DISTRIBUTED_FAILURE",
    "create_run",
    "current",
    "device_for",
    "fit",
    "open_run",
    "session",
    "stage_run",
]

#: The subcommands that run data-parallel under torchrun.
COMMANDS = ("fit", "compare")
#: Seconds a collective waits for the other processes (``SEQZOO_DISTRIBUTED_TIMEOUT`` overrides it).
DEFAULT_TIMEOUT = 120.0
#: Exit status of a rank whose run failed because another process died or timed out.
EXIT_DISTRIBUTED_FAILURE = 1

_current: DataParallel | None = None


def current() -> DataParallel | None:
    """The process group of the running command, or None outside ``torchrun``."""
    return _current


def _timeout() -> float:
    text = os.environ.get("SEQZOO_DISTRIBUTED_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise UsageError(f"SEQZOO_DISTRIBUTED_TIMEOUT: expected a positive number of seconds, got {text!r}")
    return value


@contextlib.contextmanager
def session(command: str, device: str | None = None) -> Iterator[DataParallel | None]:
    """Joins the process group for one command when launched by ``torchrun``
    with more than one process; yields None (and does nothing) otherwise.

    Args:
        command: the subcommand; only those in :data:`COMMANDS` run data-parallel.
        device: the ``--device`` flag: ``cpu`` picks gloo even where CUDA is
            available; otherwise NCCL with CUDA (one GPU per process,
            ``cuda:LOCAL_RANK``), else gloo.

    Raises:
        UsageError: another subcommand under ``torchrun``, or a bad timeout.
        SystemExit: (status :data:`EXIT_DISTRIBUTED_FAILURE`) a collective failed
            because another process died or timed out; the reason is printed.
    """
    global _current
    if not DataParallel.launched():
        yield None
        return
    if command not in COMMANDS:
        raise UsageError(
            f"{command}: runs in one process; only {' and '.join(COMMANDS)} run data-parallel "
            f"under torchrun (run `seqzoo {command} ...` without it)"
        )
    backend = "gloo" if device is not None and torch.device(device).type == "cpu" else None
    parallel = DataParallel.from_environment(backend=backend, timeout=_timeout())
    _current = parallel
    try:
        # Leaving ``parallel`` waits for every rank on a normal finish only (DataParallel.close).
        with parallel, contextlib.ExitStack() as silenced:
            if not parallel.is_main:  # one rank speaks for all
                sink = silenced.enter_context(open(os.devnull, "w"))
                silenced.enter_context(contextlib.redirect_stdout(sink))
                silenced.enter_context(contextlib.redirect_stderr(sink))
            yield parallel
    except DistributedError as error:
        print(f"seqzoo {command}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_DISTRIBUTED_FAILURE) from error
    finally:
        _current = None


def create_run(
    path: str | os.PathLike, *, force: bool = False, data_paths: Sequence[Any] = (), manifest: bool = False
) -> RunDirectory:
    """:meth:`RunDirectory.create`; in a session, on rank 0 before the others go on."""
    if _current is None:
        return RunDirectory.create(path, force=force, data_paths=data_paths, manifest=manifest)
    return _current.create_run(path, force=force, data_paths=data_paths, manifest=manifest)


def open_run(path: str | os.PathLike) -> RunDirectory:
    """:meth:`RunDirectory.open`; in a session, read-only on ranks other than 0."""
    return RunDirectory.open(path) if _current is None else _current.open_run(path)


def stage_run(path: str | os.PathLike, *, force: bool = False, data_paths: Sequence[Any] = ()):
    """:meth:`RunDirectory.stage` (a context manager); in a session, on rank 0 only."""
    if _current is None:
        return RunDirectory.stage(path, force=force, data_paths=data_paths)
    return _current.stage_run(path, force=force, data_paths=data_paths)


def device_for(requested: str | None, default: torch.device) -> torch.device:
    """Where this process fits: the ``--device`` flag, else ``default``; in an
    NCCL session, this rank's GPU ``cuda:LOCAL_RANK`` (``--device cuda`` means
    one GPU per process)."""
    if _current is not None and _current.device.type == "cuda":
        return _current.device
    return torch.device(requested) if requested else default


def fit(model: SequenceModel, train: SequenceBatch, **keywords: Any) -> FitResult:
    """:func:`inference.fit.fit`; in a session, :meth:`DataParallel.fit`
    (``batch_size`` is then the global mini-batch over all processes)."""
    if _current is None:
        return single_process_fit(model, train, **keywords)
    if _current.device.type == "cuda":
        keywords["device"] = _current.device
    return _current.fit(model, train, **keywords)
