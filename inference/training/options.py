"""Typed options records of the trainers (:class:`SVIOptions`, :class:`EMOptions`,
:class:`NUTSOptions`) and the checks they run on their fields."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..batch import SequenceBatch

if TYPE_CHECKING:  # the contract imports these records (its fit_defaults)
    from ..contract import SequenceModel

#: Names :func:`make_elbo` accepts.
ELBO_NAMES = ("auto", "trace", "traceenum", "meanfield")
#: Names of the built-in learning-rate schedules.
LR_SCHEDULES = ("exponential", "constant", "cosine", "warmup_cosine", "plateau")


# -- options ---------------------------------------------------------------------
def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, got {value!r}")


def _check_positive_float(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}: expected a positive finite number{' or None' if allow_none else ''}, got {value!r}")


def _check_open_unit_interval(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}: expected a number in (0, 1){' or None' if allow_none else ''}, got {value!r}")


def _check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name}: expected a callable or None, got {type(value).__name__}")


@dataclass
class _LoopOptions:
    """Options shared by the SVI and EM trainers (see :func:`inference.fit.fit`)."""

    patience: int = 10
    eval_every: int = 1
    checkpoint_every: int = 10
    time_budget: float | None = None
    progress: bool = True
    description: str | None = None
    callbacks: Sequence[Callable[[dict], None]] = ()
    stop_hook: Callable[[bool], bool] | None = None
    valid_batch_size: int | None = None
    valid_num_particles: int = 1
    # Data-parallel hooks (inference.distributed); None keeps the single-process behaviour.
    #: ``hook(model)`` once the parameters exist (after ``initialize_from_data`` and, for SVI, the
    #: lazy first evaluation), before a resumed checkpoint is loaded: a broadcast from rank 0.
    initialization_hook: Callable[[SequenceModel], None] | None = None
    #: replaces :func:`inference.scoring.score` for validation (same signature), e.g. a score
    #: whose sums and standard error are gathered over processes.
    validation_score: Callable[..., Any] | None = None

    def check(self) -> None:
        for name in ("patience", "eval_every", "checkpoint_every", "valid_num_particles"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("valid_batch_size", self.valid_batch_size, allow_none=True)
        if self.time_budget is not None and (not isinstance(self.time_budget, (int, float)) or self.time_budget < 0):
            raise ValueError(
                f"time_budget: expected a non-negative number of seconds or None, got {self.time_budget!r}"
            )
        _check_callable("stop_hook", self.stop_hook)
        _check_callable("initialization_hook", self.initialization_hook)
        _check_callable("validation_score", self.validation_score)
        for callback in self.callbacks:
            _check_callable("callbacks", callback)


@dataclass
class SVIOptions(_LoopOptions):
    """Options of :class:`SVITrainer` (``fit(method="svi")``).

    Attributes:
        max_epochs: epochs (one step = one pass over the training sequences).
        batch_size: sequences per mini-batch (``None``: full batch).
        learning_rate: base learning rate of Adam.
        final_learning_rate: where ``"exponential"`` decays to at
            ``max_epochs`` (``None``: constant) and ``"cosine"`` ends (``None``: 0).
        lr_schedule: ``"exponential"``, ``"constant"``, ``"cosine"``,
            ``"warmup_cosine"`` (cosine after ``warmup_epochs`` of linear
            warm-up), ``"plateau"`` (halve the rate when the validation score
            stalls for ``patience // 2`` evaluations) or a callable
            ``optimizer -> torch.optim.lr_scheduler`` scheduler. Stepped once
            per epoch.
        warmup_epochs: epochs of linear warm-up before the named schedule.
        weight_decay: L2 weight decay ``λ``: ``λ θ`` is added to the gradient of the (data-scaled)
            loss before the clip, i.e. a Gaussian prior ``N(0, 1/λ)`` on every trained parameter.
        clip_norm: the global L2 norm gradients are clipped to (one clip).
        betas: Adam moment decay rates.
        loss: ``"auto"`` / ``"trace"`` / ``"traceenum"`` / ``"meanfield"``, any :class:`pyro.infer.elbo.ELBO` instance,
            ``"model"`` (``model.loss(batch, **step_kwargs)``) or a callable
            ``loss(model, batch, **step_kwargs)``; a custom loss returns a
            scalar Tensor to minimise or a :class:`LossOutput`. ``"auto"`` is
            ``"model"`` for a family whose ``fit_defaults("svi").loss`` names it (the deep
            Markov and topic models' own estimators), else ``"traceenum"`` or ``"trace"``.
        num_particles: particles of an ELBO given by name.
        step_kwargs: ``(epoch, step) -> dict`` of keyword arguments for
            ``model``/``guide`` (or the custom loss), e.g. :class:`KLAnnealing`.
            ``epoch`` counts finished epochs, ``step`` optimiser steps.
        gradient_hook: ``hook(parameters)``, after backward and before the clip
            (e.g. an all-reduce of the gradients); it may modify ``.grad``.
        step_callbacks: called after every optimiser step with
            ``{"epoch", "step", "loss", "objective", "lr"}``.
        nonfinite_hook: ``hook(epoch) -> bool`` on a non-finite loss or
            objective; True defers the error to a later hook (the gradient
            all-reduce raises it on every process together), False raises now.
        minibatches: ``minibatches(train, batch_size, generator)`` yielding
            one epoch's mini-batches (default
            :func:`~inference.batch.iterate_minibatches`), e.g. this process's
            shard of each (:func:`inference.distributed.shard_minibatches`).
        average_decay: keep a :class:`ParameterAverage` of the parameters with
            this decay per optimiser step (e.g. 0.9995: about the last 2,000
            steps); validation scores it, and the fit ends with the model
            holding it (or the best validated average). ``None``: the last iterate.
        chunk_length: a training set of ONE sequence is cut into pieces of this
            many steps (truncated backpropagation through time; each piece starts
            from the initial state), so mini-batches exist; ``None``: never cut.
            Several sequences are never cut.
    """

    max_epochs: int = 200
    batch_size: int | None = None
    learning_rate: float = 5e-2
    final_learning_rate: float | None = None
    lr_schedule: str | Callable[[torch.optim.Optimizer], Any] = "exponential"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    clip_norm: float = 10.0
    betas: tuple[float, float] = (0.9, 0.999)
    loss: Any = "auto"
    num_particles: int = 1
    step_kwargs: Callable[[int, int], Mapping[str, Any]] | None = None
    gradient_hook: Callable[[list[Tensor]], None] | None = None
    step_callbacks: Sequence[Callable[[dict], None]] = ()
    minibatches: Callable[[SequenceBatch, int, torch.Generator], Iterable[SequenceBatch]] | None = None
    nonfinite_hook: Callable[[int], bool] | None = None
    average_decay: float | None = None
    chunk_length: int | None = 2000

    def check(self) -> None:
        super().check()
        _check_positive_int("chunk_length", self.chunk_length, allow_none=True)
        _check_open_unit_interval("average_decay", self.average_decay, allow_none=True)
        _check_callable("minibatches", self.minibatches)
        _check_callable("nonfinite_hook", self.nonfinite_hook)
        _check_positive_int("max_epochs", self.max_epochs)
        _check_positive_int("batch_size", self.batch_size, allow_none=True)
        _check_positive_int("num_particles", self.num_particles)
        _check_positive_float("learning_rate", self.learning_rate)
        _check_positive_float("final_learning_rate", self.final_learning_rate, allow_none=True)
        _check_positive_float("clip_norm", self.clip_norm)
        if (
            not isinstance(self.warmup_epochs, int)
            or isinstance(self.warmup_epochs, bool)
            or not (0 <= self.warmup_epochs < self.max_epochs)
        ):
            raise ValueError(
                f"warmup_epochs: expected an int in [0, max_epochs={self.max_epochs}), got {self.warmup_epochs!r}"
            )
        if not isinstance(self.weight_decay, (int, float)) or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay: expected a non-negative number, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas!r}")
        if not callable(self.lr_schedule):
            if self.lr_schedule not in LR_SCHEDULES:
                raise ValueError(f"lr_schedule: expected one of {LR_SCHEDULES} or a callable, got {self.lr_schedule!r}")
            if self.lr_schedule == "warmup_cosine" and self.warmup_epochs < 1:
                raise ValueError("lr_schedule: 'warmup_cosine' needs warmup_epochs >= 1")
            if self.lr_schedule == "plateau" and self.warmup_epochs:
                raise ValueError("warmup_epochs: not supported with lr_schedule='plateau'")
        _check_callable("step_kwargs", self.step_kwargs)
        _check_callable("gradient_hook", self.gradient_hook)
        for callback in self.step_callbacks:
            _check_callable("step_callbacks", callback)


@dataclass
class EMOptions(_LoopOptions):
    """Options of :class:`EMTrainer` (``fit(method="em")``).

    Attributes:
        max_iterations: EM iterations per restart.
        tolerance: convergence threshold on the objective's gain per observed
            step and iteration.
        num_restarts: random restarts (restart 0 starts from the model as it is).
        statistics_hook: ``hook(statistics) -> statistics`` applied to the
            summed E-step statistics before the objective and the M-step (an
            all-reduce over processes); needs a model with ``e_step``/``m_step``.
        patience: iterations in a row the gain must stay below the threshold.
        shard: ``shard(train) -> batch``, the part of the training batch this
            process's ``e_step`` reads (data-parallel EM, with a
            ``statistics_hook`` summing over processes); the objective's
            per-step scale still counts the full ``train``.
    """

    max_iterations: int = 500
    tolerance: float = 1e-8
    num_restarts: int = 1
    statistics_hook: Callable[[dict[str, Tensor]], Mapping[str, Tensor]] | None = None
    shard: Callable[[SequenceBatch], SequenceBatch] | None = None

    def check(self) -> None:
        super().check()
        _check_callable("shard", self.shard)
        _check_positive_int("max_iterations", self.max_iterations)
        _check_positive_int("num_restarts", self.num_restarts)
        if not isinstance(self.tolerance, (int, float)) or not math.isfinite(self.tolerance):
            raise ValueError(f"tolerance: expected a finite number, got {self.tolerance!r}")
        _check_callable("statistics_hook", self.statistics_hook)


@dataclass
class NUTSOptions:
    """Options of ``fit(method="nuts")`` (see :func:`inference.mcmc.run_nuts`).

    Attributes:
        num_samples: draws kept per chain.
        warmup_steps: adaptation iterations per chain.
        num_chains: chains (run in parallel processes, ``sampler_options["num_workers"]``).
        sampler_options: further keywords of ``run_nuts`` (``num_workers``, ``target_accept_prob``,
            ``max_tree_depth``, ``init_jitter``, ``sample_states``,
            ``align_labels``, ``point``).
    """

    num_samples: int = 500
    warmup_steps: int = 500
    num_chains: int = 4
    progress: bool = True
    description: str | None = None
    callbacks: Sequence[Callable[[dict], None]] = ()
    sampler_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        _check_positive_int("num_samples", self.num_samples)
        _check_positive_int("num_chains", self.num_chains)
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected a non-negative int, got {self.warmup_steps!r}")


def options_fields(options_class: type) -> set[str]:
    """Names of an options record's fields."""
    return {f.name for f in dataclasses.fields(options_class)}
