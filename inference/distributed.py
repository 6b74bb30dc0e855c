"""Data-parallel fitting over processes, GPUs and machines with :mod:`torch.distributed`.

Every process (a *rank*) holds the whole training collection and the same
model; the work is split, the decisions are shared. Everything plugs into the
hooks of :mod:`inference.training`; the training loops are not forked:

* **Sharding** (:func:`shard_minibatches`, ``SVIOptions.minibatches``): one
  permutation of the sequences per epoch, drawn from the trainer's shuffle
  generator, which every rank seeds alike; each global mini-batch of
  ``batch_size`` sequences is cut into ``world_size`` equal slices, one per
  rank. A last mini-batch that does not divide evenly is padded by repeating
  its first sequences (logged once), so every rank takes the same number of
  steps. Each slice keeps ``population`` = the full data size, so each rank's
  loss is an unbiased estimate of the full objective and the average of the
  ranks' gradients equals the gradient of one process on the whole mini-batch.
  Pyro's ``plate(subsample_size=...)`` would draw the same indices on every
  rank, which is why batching goes through the data layer.
* **Gradients** (:class:`GradientAllReduce`, ``gradient_hook``): after
  backward and before the clip, all gradients are flattened into one buffer
  per dtype and averaged by one ``all_reduce`` per step (``DistributedDataParallel``
  synchronises only inside ``forward()``, which Pyro never calls).
* **Parameters** (:meth:`DataParallel.broadcast_state`, ``initialization_hook``):
  broadcast from rank 0 once the parameters exist, after the data-dependent
  initialisation and the lazy first evaluation that creates Pyro parameters.
* **Non-finite loss** (``nonfinite_hook``): a flag in the gradient bucket, so
  every rank raises the same :class:`FloatingPointError` after the all-reduce.
* **Decisions** (:class:`CollectiveStop`, ``stop_hook``): the time budget,
  early stopping, convergence and the iteration limit are decided on rank 0
  and broadcast. The validation score is global (:meth:`DataParallel.score`:
  each rank scores a slice, per-sequence log-likelihoods are all-gathered), so
  early stopping and the best state agree everywhere.
* **EM** (:class:`SumStatistics`, ``statistics_hook`` + ``EMOptions.shard``):
  each rank's ``e_step`` statistics of its slice are summed by one
  ``all_reduce`` per iteration; every rank then runs the same ``m_step``.
* **Writing** (:class:`RankZeroWriter`): progress bars, checkpoints and the
  final model on rank 0 only, after a barrier; each rank's RNG states go into
  the checkpoint, so a resumed run continues identically.
* **Failure**: every collective runs under the process group's timeout and a
  watchdog thread. A rank that dies makes the others raise
  :class:`DistributedError` (gloo notices a closed connection at once) or, if
  the backend hangs, exit with status :data:`WATCHDOG_EXIT_CODE` after
  ``timeout + grace`` seconds.

Example (run with ``torchrun --nproc-per-node 2 script.py``):
    >>> with DataParallel.from_environment() as parallel:  # doctest: +SKIP
    ...     result = parallel.fit(model, train, valid=valid, method="svi", batch_size=64, max_epochs=20)

Leaving the ``with`` block normally waits for every rank (``close(wait_for_others=True)``);
leaving it by an exception does not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch import Tensor

from .batch import SequenceBatch
from .contract import SequenceModel
from .fit import fit as single_process_fit
from .rundir import MANIFEST_NAME, RunDirectory
from .scoring import Score, observed_steps_per_sequence, ratio_standard_error
from .training import EMOptions, FitResult, RunWriter, SVIOptions, options_fields

__all__ = [
    "DataParallel",
    "DistributedError",
    "GradientAllReduce",
    "CollectiveStop",
    "SumStatistics",
    "RankZeroWriter",
    "ReadOnlyRunDirectory",
    "shard_minibatches",
    "shard_slice",
    "WATCHDOG_EXIT_CODE",
]

logger = logging.getLogger(__name__)

#: Exit status of a process the watchdog ends because a collective hung past its timeout.
WATCHDOG_EXIT_CODE = 75
#: Seconds the watchdog waits past the process-group timeout before ending the process.
WATCHDOG_GRACE = 10.0


class DistributedError(RuntimeError):
    """A collective operation failed: another rank died, stopped or timed out."""


# -- sharding ------------------------------------------------------------------------
def shard_slice(num_items: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of ``num_items`` items (the first
    ``num_items % world_size`` ranks take one more)."""
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shard_minibatches(
    batch: SequenceBatch, batch_size: int, generator: torch.Generator | None, *, rank: int, world_size: int
) -> Iterator[SequenceBatch]:
    """This rank's slices of one epoch of mini-batches.

    The permutation is the one :func:`inference.batch.iterate_minibatches`
    draws from ``generator`` (none when ``batch_size >= N``: the epoch is one
    full batch), so with the same generator state every rank cuts the same
    global mini-batches, and the union of the ranks' slices of each is the
    mini-batch a single process would take. Each global mini-batch of ``m``
    sequences is split into ``world_size`` slices of ``ceil(m / world_size)``;
    when ``m`` does not divide evenly it is **padded by repeating its first
    sequences** (those count twice in that one step), so every rank takes the
    same number of steps of the same size.

    Args:
        batch: ``(N, T, ...)`` the full training collection (every rank holds it).
        batch_size: sequences per *global* mini-batch (over all ranks).
        generator: the shuffle generator, in the same state on every rank.
        rank: this process's rank.
        world_size: number of processes.

    Yields:
        Mini-batches of ``ceil(m / world_size)`` sequences with ``population = N``.
    """
    n = batch.num_sequences
    if n < world_size:
        raise ValueError(
            f"train: {n} sequences cannot be shared by {world_size} processes; expected at least one per process"
        )
    order = torch.arange(n) if batch_size >= n else torch.randperm(n, generator=generator)
    step = min(batch_size, n)
    for start in range(0, n, step):
        chunk = order[start : start + step]
        per_rank = -(-len(chunk) // world_size)
        if per_rank * world_size != len(chunk):
            if not getattr(shard_minibatches, "_padding_logged", False):
                logger.info(
                    "shard_minibatches: a mini-batch of %d sequences is padded to %d by repeating its "
                    "first sequences so that %d processes take equal slices",
                    len(chunk),
                    per_rank * world_size,
                    world_size,
                )
                shard_minibatches._padding_logged = True  # type: ignore[attr-defined]
            chunk = chunk.repeat(-(-per_rank * world_size // len(chunk)))[: per_rank * world_size]
        mine = chunk[rank * per_rank : (rank + 1) * per_rank]
        yield batch[mine.to(batch.device)].with_population(n)


# -- the process group -------------------------------------------------------------
class _Watchdog:
    """Ends the process when a collective runs past ``timeout + grace`` seconds
    (a backend that does not notice a dead peer would otherwise wait forever)."""

    def __init__(self, rank: int, timeout: float, grace: float = WATCHDOG_GRACE) -> None:
        self.rank, self.limit = rank, timeout + grace
        self.pending: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="seqzoo-distributed-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            pending = self.pending
            if pending is not None and time.monotonic() - pending[1] > self.limit:
                print(
                    f"seqzoo distributed: rank {self.rank}: {pending[0]} has waited {self.limit:.0f} s for the "
                    f"other processes (one probably died); exiting with status {WATCHDOG_EXIT_CODE}",
                    file=sys.__stderr__,
                    flush=True,
                )  # not sys.stderr: the CLI silences ranks > 0
                os._exit(WATCHDOG_EXIT_CODE)

    def close(self) -> None:
        self._stop.set()


class DataParallel:
    """One process of a data-parallel fit: its rank, device and collectives.

    Build it with :meth:`from_environment` (under ``torchrun``) or
    :meth:`initialize`; then :meth:`fit` trains like
    :func:`inference.fit.fit`, with the distributed hooks installed.

    Attributes:
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes.
        device: where this rank computes (``cuda:LOCAL_RANK`` under NCCL, else CPU).
        timeout: seconds a collective may wait before it fails.
    """

    def __init__(self, *, rank: int, world_size: int, device: torch.device, timeout: float, owns_group: bool) -> None:
        self.rank, self.world_size, self.device, self.timeout = rank, world_size, device, timeout
        self._owns_group = owns_group
        self._watchdog = _Watchdog(rank, timeout)

    @classmethod
    def initialize(
        cls,
        *,
        backend: str | None = None,
        init_method: str = "env://",
        rank: int | None = None,
        world_size: int | None = None,
        local_rank: int | None = None,
        timeout: float = 120.0,
    ) -> DataParallel:
        """Joins (or creates) the default process group.

        Args:
            backend: ``"nccl"`` (GPUs) or ``"gloo"`` (CPUs); ``None``: NCCL
                when CUDA is available, else gloo.
            init_method: how the ranks meet: ``"env://"`` (``MASTER_ADDR``,
                ``MASTER_PORT``, set by ``torchrun``) or ``"file:///path"``.
            rank, world_size, local_rank: default to ``RANK``, ``WORLD_SIZE``
                and ``LOCAL_RANK`` from the environment.
            timeout: seconds any collective may wait for the others before it
                fails (and the watchdog's limit, plus ``WATCHDOG_GRACE``).
        """
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        local_rank = int(os.environ.get("LOCAL_RANK", rank)) if local_rank is None else local_rank
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected an int in [0, world_size={world_size}), got {rank!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"backend: expected 'nccl' or 'gloo', got {backend!r}")
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise ValueError("backend: 'nccl' needs CUDA, which is not available; use 'gloo'")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            # NCCL notices a dead peer only through its watchdog; make it raise instead of hang.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        else:
            device = torch.device("cpu")
        owns = not dist.is_initialized()
        if owns:
            # device_id binds the group to this rank's GPU (NCCL only); a bag of keywords, so typed as such.
            kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(
                backend,
                init_method=init_method,
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout),
                **kwargs,
            )
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            device=device,
            timeout=float(timeout),
            owns_group=owns,
        )

    @classmethod
    def from_environment(cls, *, backend: str | None = None, timeout: float = 120.0) -> DataParallel:
        """The process group of a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment)."""
        missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"DataParallel.from_environment: {', '.join(missing)} not set; launch with "
                f"`torchrun --nproc-per-node N ...`"
            )
        return cls.initialize(backend=backend, timeout=timeout)

    @staticmethod
    def launched() -> bool:
        """Whether this process was started by ``torchrun`` with more than one process."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self, wait_for_others: bool = False) -> None:
        """Stops the watchdog and leaves the process group (if this object created it).

        Args:
            wait_for_others: first wait (a barrier, under the timeout) until every rank has
                finished: pass True on a normal finish. A rank that tears its gloo connections
                down while a peer still uses them can abort that peer at exit (std::terminate,
                exit code -6). A rank that failed must not wait: its peers may never arrive.

        Raises:
            DistributedError: (``wait_for_others`` only) a peer died, raised or timed out
                before reaching the barrier; the group is left all the same.
        """
        try:
            if wait_for_others and self._owns_group and dist.is_initialized():
                self.barrier("barrier before leaving the process group")
        finally:
            self._watchdog.close()
            if self._owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close(wait_for_others=exc_type is None)

    # -- collectives (each under the watchdog, failures as DistributedError) ---------
    def _collective(self, name: str, operation: Callable[[], Any]) -> Any:
        self._watchdog.pending = (name, time.monotonic())
        try:
            return operation()
        except (RuntimeError, dist.DistBackendError) as error:
            raise DistributedError(
                f"rank {self.rank}: {name} failed; another process probably died, raised or "
                f"timed out ({self.timeout:.0f} s): {error}"
            ) from error
        finally:
            self._watchdog.pending = None

    def _communication_tensor(self, tensor: Tensor) -> Tensor:
        return tensor.to(self.device) if self.device.type == "cuda" else tensor.cpu()

    def all_reduce_sum(self, tensor: Tensor, name: str = "all_reduce") -> Tensor:
        """Sum of ``tensor`` over ranks (a new tensor, on ``tensor``'s device)."""
        buffer = self._communication_tensor(tensor.detach().clone())
        self._collective(name, lambda: dist.all_reduce(buffer, op=dist.ReduceOp.SUM))
        return buffer.to(tensor.device)

    def broadcast(self, tensor: Tensor, name: str = "broadcast") -> Tensor:
        """Rank 0's ``tensor`` on every rank."""
        buffer = self._communication_tensor(tensor.detach().clone().contiguous())
        self._collective(name, lambda: dist.broadcast(buffer, src=0))
        return buffer.to(tensor.device)

    def all_gather_object(self, obj: Any, name: str = "all_gather_object") -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        self._collective(name, lambda: dist.all_gather_object(gathered, obj))
        return gathered

    def barrier(self, name: str = "barrier") -> None:
        # A barrier as a one-element all-reduce: it honours the timeout on every backend.
        self.all_reduce_sum(torch.zeros(1), name)

    # -- state --------------------------------------------------------------------
    def broadcast_state(self, model: torch.nn.Module) -> None:
        """Copies rank 0's parameters and buffers into every rank's ``model``
        (one broadcast per dtype)."""
        state = model.state_dict(keep_vars=True)
        groups: dict[torch.dtype, list[Tensor]] = {}
        for value in state.values():
            groups.setdefault(value.dtype, []).append(value)
        with torch.no_grad():
            for dtype, tensors in groups.items():
                flat = self.broadcast(
                    torch.cat([t.detach().reshape(-1) for t in tensors]), f"broadcast of the {dtype} parameters"
                )
                offset = 0
                for tensor in tensors:
                    tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                    offset += tensor.numel()

    def score(
        self,
        model: SequenceModel,
        batch: SequenceBatch,
        *,
        batch_size: int | None = None,
        num_particles: int = 1,
        seed: int | None = 0,
    ) -> Score:
        """:func:`inference.scoring.score` of the whole ``batch``, computed in
        slices: rank ``r`` scores :func:`shard_slice` ``r`` (seeded ``seed + r``)
        and the per-sequence log-likelihoods are all-gathered, so the sum, the
        per-step score and its standard error are those of the full batch on
        every rank. Every rank must pass the same ``batch``."""
        from .scoring import score as local_score

        n = batch.num_sequences
        if n == 0:
            raise ValueError("batch: expected at least one sequence, got none")
        mine = shard_slice(n, self.rank, self.world_size)
        longest = shard_slice(n, 0, self.world_size)
        padded = torch.zeros(longest.stop - longest.start, dtype=torch.float64)
        if mine.stop > mine.start:
            part = local_score(
                model,
                batch[mine],
                batch_size=batch_size,
                num_particles=num_particles,
                seed=None if seed is None else seed + self.rank,
            )
            padded[: mine.stop - mine.start] = part.per_sequence
        gathered = self.all_gather_object(padded, "all-gather of the validation log-likelihoods")
        per_sequence = torch.cat(
            [
                gathered[r][: shard_slice(n, r, self.world_size).stop - shard_slice(n, r, self.world_size).start]
                for r in range(self.world_size)
            ]
        )
        steps = observed_steps_per_sequence(batch).cpu()
        total_steps = int(steps.sum())
        if total_steps == 0:
            raise ValueError("batch: has no observed time step to score")
        log_prob = float(per_sequence.sum())
        return Score(
            log_prob=log_prob,
            num_steps=total_steps,
            per_step=log_prob / total_steps,
            stderr=ratio_standard_error(per_sequence, steps),
            kind=model.likelihood_label(num_particles),
            per_sequence=per_sequence,
        )

    # -- runs -------------------------------------------------------------------------
    def _on_rank_zero(self, action: Callable[[], Any], what: str) -> Any:
        """Runs ``action`` on rank 0 only and tells every rank whether it failed
        (one all-gather, which is also the barrier the others wait at). Rank 0
        re-raises its own error; the others raise the same type naming it."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except Exception as exc:  # every rank must learn that rank 0 failed, or the others would go on
                error = exc
        messages = self.all_gather_object(
            None if error is None else (type(error).__name__, str(error)), f"all-gather after {what}"
        )
        if error is not None:
            raise error
        if messages[0] is not None:
            name, message = messages[0]
            kind = FileExistsError if "Exists" in name else FileNotFoundError if "NotFound" in name else ValueError
            raise kind(f"rank 0 failed {what}: {name}: {message}")
        return result

    def _view(self, path: str | os.PathLike) -> ReadOnlyRunDirectory:
        """What a rank other than 0 holds of the run directory rank 0 writes."""
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"rank {self.rank}: run directory {str(path)!r}, which rank 0 created, is not "
                f"visible here; on several machines it must be on a filesystem they all share"
            )
        return ReadOnlyRunDirectory(path)

    def create_run(
        self, path: str | os.PathLike, *, force: bool = False, data_paths: Sequence[Any] = (), manifest: bool = False
    ) -> RunDirectory:
        """:meth:`RunDirectory.create` on rank 0 (``force`` replaces an existing
        run there) before any other rank goes on; the other ranks get a
        :class:`ReadOnlyRunDirectory` of it. Across machines ``path`` must be
        on a shared filesystem."""
        run = self._on_rank_zero(
            lambda: RunDirectory.create(path, force=force, data_paths=data_paths, manifest=manifest),
            "to create the run directory",
        )
        return run if self.is_main else self._view(path)

    def open_run(self, path: str | os.PathLike) -> RunDirectory:
        """:meth:`RunDirectory.open` on every rank (each reads it, e.g. to
        resume); ranks other than 0 get a :class:`ReadOnlyRunDirectory`."""
        run = RunDirectory.open(path)
        return run if self.is_main else ReadOnlyRunDirectory(run.path)

    @contextlib.contextmanager
    def stage_run(
        self, path: str | os.PathLike, *, force: bool = False, data_paths: Sequence[Any] = ()
    ) -> Iterator[RunDirectory]:
        """:meth:`RunDirectory.stage` on rank 0 (a replacement written beside
        the old run and swapped in when the block ends without an error);
        the other ranks get a :class:`ReadOnlyRunDirectory` of ``path``."""
        staged = self._on_rank_zero(
            lambda: RunDirectory.stage(path, force=force, data_paths=data_paths), "to stage the run directory"
        )
        if not self.is_main:
            yield self._view(path)
            return
        with staged:
            yield staged

    def writer(self, run: RunDirectory | None) -> RankZeroWriter:
        return RankZeroWriter(self, run)

    def fit(
        self,
        model: SequenceModel,
        train: SequenceBatch,
        *,
        valid: SequenceBatch | None = None,
        method: str = "svi",
        options: SVIOptions | EMOptions | None = None,
        seed: int = 0,
        checkpoint: RunDirectory | None = None,
        resume: bool = False,
        initialize: bool = True,
        **keywords: Any,
    ) -> FitResult:
        """:func:`inference.fit.fit` on this rank, with the data-parallel hooks.

        Every rank passes the same ``train`` (the whole collection), ``valid``,
        options and ``seed``. ``batch_size`` is the *global* mini-batch (over
        all ranks); each rank takes ``ceil(batch_size / world_size)`` of it.
        Hooks given by the caller keep working: the caller's
        ``gradient_hook`` sees the averaged gradients, its ``stop_hook`` is
        asked on rank 0 only, its ``statistics_hook`` sees the summed
        statistics.

        Args:
            keywords: any further keyword of :func:`inference.fit.fit`
                (options fields, ``device``; ``device`` defaults to this rank's).

        Returns:
            The :class:`~inference.training.FitResult`, identical on every rank
            (its ``history`` objectives are rank 0's shard estimates for SVI).

        Raises:
            ValueError: ``method="nuts"``, EM for a model without
                ``e_step``/``m_step``, or ``lr_schedule="plateau"`` without
                ``valid`` (the rate would follow each rank's own objective).
            DistributedError: another rank failed.
        """
        if method not in ("svi", "em"):
            raise ValueError(f"method: data-parallel fitting supports 'svi' and 'em', got {method!r}")
        options_class = SVIOptions if method == "svi" else EMOptions
        if options is not None and not isinstance(options, options_class):
            raise TypeError(f"options: method={method!r} takes {options_class.__name__}, got {type(options).__name__}")
        if "elbo" in keywords:
            keywords["loss"] = keywords.pop("elbo")
        fields = options_fields(options_class)
        given = {name: value for name, value in keywords.items() if name in fields}
        rest = {name: value for name, value in keywords.items() if name not in fields}
        base = options if options is not None else model.fit_defaults(method)
        if not isinstance(base, options_class):
            raise TypeError(
                f"{type(model).__name__}.fit_defaults({method!r}): expected a {options_class.__name__}, "
                f"got {type(base).__name__}"
            )
        options = dataclasses.replace(base, **given)
        if "writer" in rest:
            raise ValueError("writer: DataParallel.fit writes through its RankZeroWriter; pass checkpoint=")
        rest.setdefault("device", self.device)

        def initialization(model: SequenceModel, user_hook=options.initialization_hook) -> None:
            self.broadcast_state(model)
            if self.rank:
                # Each rank draws its own stream (ELBO samples, dropout); rank 0 keeps the seed's.
                pyro.set_rng_seed(seed + 1_000_003 * self.rank)
            if user_hook is not None:
                user_hook(model)

        hooks: dict[str, Any] = {
            "initialization_hook": initialization,
            "stop_hook": CollectiveStop(self, options.time_budget, options.stop_hook),
            "time_budget": None,  # decided on rank 0 by CollectiveStop, at the end of a step
            "validation_score": self.score,
            "progress": options.progress and self.is_main,
        }
        if isinstance(options, SVIOptions):  # method == "svi"
            if options.lr_schedule == "plateau" and valid is None:
                raise ValueError(
                    "lr_schedule: 'plateau' without valid would follow each rank's own objective; "
                    "give valid= or another schedule"
                )
            world, rank = self.world_size, self.rank
            gradient_hook = GradientAllReduce(self, options.gradient_hook)
            hooks["gradient_hook"] = gradient_hook
            hooks["nonfinite_hook"] = gradient_hook.defer_nonfinite
            hooks["minibatches"] = lambda batch, size, generator: shard_minibatches(
                batch, size, generator, rank=rank, world_size=world
            )
        else:
            if not _has_split_em(model):
                raise ValueError(
                    f"method: {type(model).__name__} has no e_step/m_step, so EM cannot be split "
                    f"over processes; fit it by 'svi' or in one process"
                )
            if train.num_sequences < self.world_size:
                raise ValueError(
                    f"train: {train.num_sequences} sequences cannot be shared by {self.world_size} processes"
                )
            hooks["statistics_hook"] = SumStatistics(self, options.statistics_hook)
            hooks["shard"] = lambda batch: batch[shard_slice(batch.num_sequences, self.rank, self.world_size)]
        options = dataclasses.replace(options, **hooks)
        return single_process_fit(
            model,
            train,
            valid=valid,
            method=method,
            options=options,
            seed=seed,
            writer=self.writer(checkpoint),
            resume=resume,
            initialize=initialize,
            **rest,
        )


def _has_split_em(model: SequenceModel) -> bool:
    return type(model).e_step is not SequenceModel.e_step and type(model).m_step is not SequenceModel.m_step


# -- hooks -----------------------------------------------------------------------------
class GradientAllReduce:
    """``gradient_hook``: averages the gradients over ranks with one bucketed
    ``all_reduce`` per dtype (one call per step for a model of one dtype);
    a parameter without a gradient on this rank contributes zeros.

    Also the ``nonfinite_hook``: a rank whose loss is not finite sets a flag
    that travels in the same bucket, and every rank then raises the same
    :class:`FloatingPointError` after that all-reduce, none waiting for another."""

    def __init__(self, parallel: DataParallel, then: Callable[[list[Tensor]], None] | None = None) -> None:
        self.parallel, self.then = parallel, then
        self.nonfinite_epoch: int | None = None

    def defer_nonfinite(self, epoch: int) -> bool:
        self.nonfinite_epoch = epoch
        return True

    def __call__(self, parameters: list[Tensor]) -> None:
        groups: dict[torch.dtype, list[Tensor]] = {}
        for parameter in parameters:
            groups.setdefault(parameter.dtype, []).append(parameter)
        for index, group in enumerate(groups.values()):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            if index == 0:  # the non-finite flag rides in the first bucket: no extra collective
                flag = torch.tensor([float(self.nonfinite_epoch is not None)], dtype=flat.dtype, device=flat.device)
                flat = torch.cat([flat, flag])
            flat = self.parallel.all_reduce_sum(flat, "all-reduce of the gradients")
            if index == 0:
                flat, failed = flat[:-1], int(flat[-1].item())
                if failed:
                    raise FloatingPointError(
                        f"fit: the loss is not finite on {failed} of {self.parallel.world_size} processes "
                        f"(this one: {'yes' if self.nonfinite_epoch is not None else 'no'}) at an optimiser step; "
                        f"try a smaller learning_rate or a better initialisation"
                    )
            flat = flat / self.parallel.world_size
            offset = 0
            for parameter in group:
                gradient = flat[offset : offset + parameter.numel()].view_as(parameter)
                if parameter.grad is None:
                    parameter.grad = gradient.clone()
                else:
                    parameter.grad.copy_(gradient)
                offset += parameter.numel()
        if self.then is not None:
            self.then(parameters)


class CollectiveStop:
    """``stop_hook``: rank 0's decision, broadcast. Rank 0 stops on its local
    reason (early stopping, convergence: the same on every rank, since scores
    and EM statistics are global), on ``time_budget`` seconds since this hook
    was built, or when the caller's ``then`` hook says so."""

    def __init__(
        self, parallel: DataParallel, time_budget: float | None = None, then: Callable[[bool], bool] | None = None
    ) -> None:
        self.parallel, self.time_budget, self.then = parallel, time_budget, then
        self.start = time.perf_counter()

    def __call__(self, decision: bool) -> bool:
        if self.parallel.is_main:
            if self.time_budget is not None and time.perf_counter() - self.start >= self.time_budget:
                decision = True
            if self.then is not None:
                decision = bool(self.then(decision))
        flag = self.parallel.broadcast(torch.tensor([float(decision)]), "broadcast of the stop decision")
        return bool(flag.item())


class SumStatistics:
    """``statistics_hook``: sums each rank's ``e_step`` statistics with one
    ``all_reduce`` (all entries flattened into one float64 buffer: exact for
    counts below 2**53), keeping each entry's dtype and shape."""

    def __init__(
        self, parallel: DataParallel, then: Callable[[dict[str, Tensor]], Mapping[str, Tensor]] | None = None
    ) -> None:
        self.parallel, self.then = parallel, then

    def __call__(self, statistics: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = sorted(statistics)
        tensors = [torch.as_tensor(statistics[name]) for name in names]
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
        flat = self.parallel.all_reduce_sum(flat, "all-reduce of the E-step statistics")
        summed, offset = {}, 0
        for name, tensor in zip(names, tensors):
            summed[name] = flat[offset : offset + tensor.numel()].view(tensor.shape).to(tensor.dtype)
            offset += tensor.numel()
        return dict(self.then(summed)) if self.then is not None else summed


class RankZeroWriter(RunWriter):
    """A :class:`~inference.training.RunWriter` that writes on rank 0 only.

    Checkpoints: every rank sends its RNG states to rank 0 (one all-gather,
    which is also the barrier before the write); rank 0 stores them as
    ``rank{r}.rng.*`` tensors and ``rank_rng`` JSON next to the usual payload
    and writes atomically; a final barrier makes the file visible to all.
    On resume every rank reads the checkpoint (a shared filesystem across
    machines) and restores its own RNG states. The progress bar shows on rank 0.
    """

    def __init__(self, parallel: DataParallel, run: RunDirectory | None) -> None:
        super().__init__(run)
        self.parallel = parallel

    def progress_bar(self, total: int, initial: int, description: str, enabled: bool):
        return super().progress_bar(total, initial, description, enabled and self.parallel.is_main)

    def save_checkpoint(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        if self.run is None:
            return
        parallel = self.parallel
        mine = ({name: value.cpu() for name, value in tensors.items() if name.startswith("rng.")}, state["rng"])
        gathered = parallel.all_gather_object(mine, "all-gather of the RNG states for a checkpoint")
        if parallel.is_main:
            tensors = dict(tensors)
            for rank, (rng_tensors, _) in enumerate(gathered):
                tensors.update({f"rank{rank}.{name}": value for name, value in rng_tensors.items()})
            state = {**state, "rank_rng": [rng_json for _, rng_json in gathered], "world_size": parallel.world_size}
            super().save_checkpoint(tensors, state)
        parallel.barrier("barrier after writing a checkpoint")

    def load_checkpoint(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, state = super().load_checkpoint(device)
        saved_world = state.get("world_size")
        if saved_world != self.parallel.world_size:
            raise ValueError(
                f"resume: the checkpoint in {self.describe()} was written by "
                f"{saved_world or 1} process(es); resume it with as many, not {self.parallel.world_size}"
            )
        prefix = f"rank{self.parallel.rank}."
        tensors = {name: value for name, value in tensors.items() if not name.startswith("rng.")}
        tensors.update({name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)})
        state = {**state, "rng": state["rank_rng"][self.parallel.rank]}
        return tensors, state

    def save_model(self, model: torch.nn.Module) -> None:
        if self.run is None:
            return
        self.parallel.barrier("barrier before writing the model")
        if self.parallel.is_main:
            super().save_model(model)
        self.parallel.barrier("barrier after writing the model")


class ReadOnlyRunDirectory(RunDirectory):
    """The run directory as a rank other than 0 holds it: reads work (resuming
    reads the checkpoint on every rank), writes are skipped, since rank 0
    writes every file. Code that writes a run (the CLI's ``train_into``) runs
    unchanged on every rank; only rank 0's writes reach the disk.
    """

    def __repr__(self) -> str:
        return f"ReadOnlyRunDirectory({str(self.path)!r})"

    def _write_bytes(self, name: str, data: bytes) -> Path:
        return self.file(name)  # rank 0 writes this file

    def write_manifest(self) -> Path:
        return self.file(MANIFEST_NAME)

    def save_figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        plt.close(fig)  # not rendered: rank 0 renders and writes it
        return self.file(name if Path(name).suffix else name + ".png")
