"""The training loops: :class:`SVITrainer` and :class:`EMTrainer` on one :class:`Trainer`
base (steps, validation, early stopping, checkpoints, time budget), the :class:`RunWriter`
every write goes through, and the :class:`FitResult` they return."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch import Tensor
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from ..batch import SequenceBatch, iterate_minibatches
from ..contract import SequenceModel
from ..rundir import RunDirectory
from ..scoring import count_observed_steps, score
from .objectives import ParameterAverage, build_loss, build_scheduler
from .options import EMOptions, SVIOptions, _LoopOptions

#: Stop reasons after which ``resume`` returns at once instead of training on.
FINAL_STOPS = ("converged", "early_stopping", "stop_hook")


# -- writing -----------------------------------------------------------------------
class RunWriter:
    """Every write of a fit (progress bar, checkpoints, the final model) goes
    through this object, so a rank-aware subclass (only rank 0 writes) can
    replace it without touching the loops.

    Args:
        run: the run directory to checkpoint into (``None``: no files).
    """

    def __init__(self, run: RunDirectory | None = None) -> None:
        self.run = run

    @property
    def can_resume(self) -> bool:
        return self.run is not None

    def describe(self) -> str:
        return repr(str(self.run.path)) if self.run is not None else "no run directory"

    def progress_bar(self, total: int, initial: int, description: str, enabled: bool):
        """A context-managed progress bar with ``update(n)`` and ``set_postfix(dict, refresh=)``."""
        return tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit="step",
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
        )

    def save_checkpoint(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        if self.run is not None:
            ckpt.save_checkpoint(self.run, tensors, state)

    def load_checkpoint(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
        if self.run is None:
            raise ValueError("resume: needs a checkpoint run directory, got none")
        return ckpt.load_checkpoint(self.run, device)

    def save_model(self, model: torch.nn.Module) -> None:
        if self.run is not None:
            self.run.save_model(model)


# -- the trainers --------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`inference.fit.fit` did.

    Attributes:
        method: ``"svi"``, ``"em"`` or ``"nuts"``.
        history: one record per step (SVI epoch or EM iteration), each a dict
            with ``step``, ``objective`` (ELBO or EM objective, total nats),
            ``objective_per_step`` (per observed training time step),
            ``valid_log_prob_per_step`` (when evaluated at that step), ``lr``
            (SVI) and ``seconds`` (cumulative wall time); SVI records also hold
            ``partial`` (the time budget ended the epoch before its last
            mini-batch, so its objective averages the mini-batches done), EM
            records ``restart`` and ``iteration``.
        best_step: the step whose parameters the model holds at the end.
        best_valid_log_prob_per_step: validation score of those parameters, or
            ``None`` without validation data.
        stopped: why the loop stopped: ``"max_steps"``, ``"early_stopping"``,
            ``"converged"``, ``"time_budget"`` or ``"stop_hook"``.
        seconds: total wall time of the fit (including earlier resumed runs).
        restarts: EM only: the last objective of each restart.
        mcmc: NUTS only: the :class:`~inference.mcmc.MCMCResult` (draws per
            chain, sample statistics, state paths).
    """

    method: str
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_valid_log_prob_per_step: float | None = None
    stopped: str = "max_steps"
    seconds: float = 0.0
    restarts: list[float] | None = None
    mcmc: Any = None


def rounding_noise_per_step(objective: Tensor | float, num_steps: int) -> float:
    """Per-step size of rounding noise in an objective: 16 machine epsilons of
    its magnitude in its own dtype (float64 for a Python number)."""
    dtype = objective.dtype if isinstance(objective, Tensor) and objective.is_floating_point() else torch.float64
    return 16 * torch.finfo(dtype).eps * abs(float(objective)) / num_steps


class _Clock:
    """Cumulative wall time (carried across resumes) and this call's time budget."""

    def __init__(self, previous_seconds: float, budget: float | None) -> None:
        self.start = time.perf_counter()
        self.previous = previous_seconds
        self.budget = budget

    @property
    def total(self) -> float:
        return self.previous + time.perf_counter() - self.start

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and time.perf_counter() - self.start >= self.budget


class Trainer:
    """State and book-keeping shared by :class:`SVITrainer` and :class:`EMTrainer`.

    Args:
        model: the model (already on its device and initialised).
        train: training sequences (on the model's device).
        options: the method's options record.
        valid: validation sequences, scored with :func:`inference.scoring.score`.
        writer: where progress, checkpoints and the final model go.
        generator: CPU generator for shuffling and restarts.
        seed: seed of the validation score's RNG (a stochastic bound).
        resume: continue from the writer's checkpoint.
    """

    method = ""

    def __init__(
        self,
        model: SequenceModel,
        train: SequenceBatch,
        options: _LoopOptions,
        *,
        valid: SequenceBatch | None = None,
        writer: RunWriter | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        resume: bool = False,
    ) -> None:
        options.check()
        self.model, self.train, self.valid, self.options = model, train, valid, options
        self.writer = writer if writer is not None else RunWriter()
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.seed, self.resume = seed, resume
        if resume and not self.writer.can_resume:
            raise ValueError("resume: needs a checkpoint run directory, got checkpoint=None")
        self.num_train_steps = count_observed_steps(train)
        if self.num_train_steps == 0:
            raise ValueError("train: has no observed time step")
        self.device = train.device
        self.history: list[dict] = []
        self.step = 0
        self.best_state: dict[str, Tensor] | None = None
        self.best_step = 0
        self.best_valid: float | None = None
        self.stopped: str | None = None
        self.previous_seconds = 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        self.average: ParameterAverage | None = None  # SVI's average_decay

    # -- per-method state (checkpointed) -----------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def save_checkpoint(self, clock: _Clock) -> None:
        state = {
            "method": self.method,
            "step": self.step,
            "history": self.history,
            "best_step": self.best_step,
            "best_valid": self.best_valid,
            "stopped": self.stopped,
            "seconds": clock.total,
            **self.loop_state(),
        }
        tensors, state = ckpt.checkpoint_payload(
            model=self.model,
            best_state=self.best_state,
            optimizer=self.optimizer,
            loop_state=state,
            generator=self.generator,
        )
        tensors.update(ckpt.prefixed("average", self.average.state_dict() if self.average else {}))
        self.writer.save_checkpoint(tensors, state)

    def load_checkpoint(self) -> None:
        tensors, state = self.writer.load_checkpoint(self.device)
        if state["method"] != self.method:
            raise ValueError(
                f"resume: the checkpoint in {self.writer.describe()} is from method "
                f"{state['method']!r}, not {self.method!r}"
            )
        self.model.load_state_dict(ckpt.unprefixed("model", tensors))
        self.best_state = ckpt.unprefixed("best", tensors) if state["has_best_state"] else None
        if self.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.join_optimizer_state(tensors, state["optimizer"]))
        ckpt.set_rng_state(tensors, state["rng"])
        self.generator.set_state(tensors["rng.shuffle"].cpu())
        self.step = state["step"]
        self.history = state["history"]
        self.best_step = state["best_step"]
        self.best_valid = state["best_valid"]
        self.stopped = state["stopped"]
        self.previous_seconds = state["seconds"]
        averaged = ckpt.unprefixed("average", tensors)
        if self.average is not None and averaged:
            self.average.load_state_dict(averaged)
        self.restore_loop_state(state)

    def evaluate(self, last: bool) -> float | None:
        """Validation log-likelihood per step every ``eval_every`` steps and at the last."""
        if self.valid is None or not (self.step % self.options.eval_every == 0 or last):
            return None
        scorer = self.options.validation_score or score
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            return scorer(
                self.model,
                self.valid,
                batch_size=self.options.valid_batch_size,
                num_particles=self.options.valid_num_particles,
                seed=self.seed,
            ).per_step

    def state_to_keep(self) -> dict[str, Tensor]:
        """A copy of what the fit would end with now: the parameter average if one is kept."""
        with self.average.swapped_in() if self.average is not None else contextlib.nullcontext():
            return ckpt.clone_state(self.model)

    def decide_stop(self, reason: str | None) -> str | None:
        """The local stop ``reason`` (or ``None``), through ``stop_hook``'s collective decision."""
        hook = self.options.stop_hook
        if hook is None:
            return reason
        if hook(reason is not None):
            return reason or "stop_hook"
        return None

    def emit(self, record: dict, clock: _Clock, bar) -> None:
        self.history.append(record)
        postfix = {"objective/step": f"{record['objective_per_step']:.4f}"}
        if record.get("valid_log_prob_per_step") is not None:
            postfix["valid ll/step"] = f"{record['valid_log_prob_per_step']:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if self.step % self.options.checkpoint_every == 0:
            self.save_checkpoint(clock)
        for callback in self.options.callbacks:
            callback(record)

    def progress_bar(self, total: int, initial: int):
        return self.writer.progress_bar(
            total, initial, self.options.description or self.model.family, self.options.progress
        )

    def finish(self, clock: _Clock, restarts: list[float] | None = None, save: bool = True) -> FitResult:
        if save:
            self.save_checkpoint(clock)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        elif self.average is not None and self.average.average is not None:
            self.average.load_into_module()  # the checkpoint above keeps the last iterate, for a resume
        self.writer.save_model(self.model)
        assert self.stopped is not None  # every caller has set why the loop stopped
        return FitResult(
            method=self.method,
            history=self.history,
            best_step=self.best_step,
            best_valid_log_prob_per_step=self.best_valid,
            stopped=self.stopped,
            seconds=clock.total,
            restarts=restarts,
        )


class SVITrainer(Trainer):
    """Stochastic variational inference (or any gradient objective) over
    ``model.parameters()`` with Adam; one step is one epoch.

    Example:
        >>> trainer = SVITrainer(model, train, SVIOptions(max_epochs=50, lr_schedule="cosine"))  # doctest: +SKIP
        >>> result = trainer.run()  # doctest: +SKIP
    """

    method = "svi"
    options: SVIOptions

    def loop_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "evaluations_without_improvement": self.stale}

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.stale = state["evaluations_without_improvement"]

    def defer_nonfinite(self) -> bool:
        """Whether ``nonfinite_hook`` takes over a non-finite loss (to raise on every process at once)."""
        hook = self.options.nonfinite_hook
        return hook is not None and bool(hook(self.step + 1))

    def step_kwargs(self, optimizer_steps: int) -> dict[str, Any]:
        if self.options.step_kwargs is None:
            return {}
        kwargs = self.options.step_kwargs(self.step, optimizer_steps)
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"step_kwargs: expected the schedule to return a dict, got {type(kwargs).__name__}")
        return dict(kwargs)

    def run(self) -> FitResult:
        model, train, options = self.model, self.train, self.options
        loss_function = build_loss(model, options.loss, options.num_particles)
        batch_size = options.batch_size or train.num_sequences
        # One evaluation creates lazily initialised parameters before the optimizer collects them
        # (with gradients on: TraceEnum_ELBO refuses to evaluate a loss it cannot differentiate).
        loss_function.evaluate(model, train[:batch_size].with_population(train.num_sequences), self.step_kwargs(0))
        if options.initialization_hook is not None:
            options.initialization_hook(model)
        parameters: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"model: {type(model).__name__} has no trainable parameter to fit by SVI")
        for parameter in parameters:
            parameter.grad = None
        # Pyro's ClippedAdam, as before the trainer existed (same numbers as earlier runs); its
        # per-entry clamp at clip_norm never binds after the global-norm clip to clip_norm below.
        self.optimizer = ClippedAdam(
            parameters, lr=options.learning_rate, betas=tuple(options.betas), clip_norm=options.clip_norm
        )
        self.scheduler = build_scheduler(self.optimizer, options)
        if options.average_decay is not None:
            self.average = ParameterAverage(model, options.average_decay)
        plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.stale = 0
        if self.resume:
            self.load_checkpoint()
        clock = _Clock(self.previous_seconds, options.time_budget)
        if self.stopped in FINAL_STOPS or self.step >= options.max_epochs:
            # Already finished (or at or past this call's epoch limit): nothing to train.
            self.stopped = self.stopped if self.stopped in FINAL_STOPS else "max_steps"
            return self.finish(clock)
        self.stopped = None
        optimizer_steps = 0  # this call's optimiser steps, for step_kwargs and step_callbacks

        with self.progress_bar(options.max_epochs, self.step) as bar:
            while self.step < options.max_epochs:
                model.train()
                learning_rate = self.optimizer.param_groups[0]["lr"]
                objectives = []
                partial = False  # whether the time budget ended this epoch before its last mini-batch
                minibatches = iter((options.minibatches or iterate_minibatches)(train, batch_size, self.generator))
                for minibatch in minibatches:
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, objective = loss_function.evaluate(model, minibatch, self.step_kwargs(optimizer_steps))
                    if loss is not None:
                        if not torch.isfinite(loss) and not self.defer_nonfinite():
                            raise FloatingPointError(
                                f"fit: the loss is {loss.detach().item()} at epoch {self.step + 1}; "
                                f"try a smaller learning_rate or a better initialisation"
                            )
                        loss.backward()
                    elif not math.isfinite(objective) and not self.defer_nonfinite():
                        raise FloatingPointError(f"fit: the objective is {objective} at epoch {self.step + 1}")
                    if options.gradient_hook is not None:
                        options.gradient_hook(parameters)
                    if options.weight_decay:
                        # The prior's gradient joins the data's before the clip: clipping binds on
                        # almost every step of a data-scaled loss, and decay added after it (Adam's
                        # own weight_decay) would weigh the prior against a clipped gradient.
                        decayed = [(p.grad, p.detach()) for p in parameters if p.grad is not None]
                        torch._foreach_add_(
                            [grad for grad, _ in decayed], [value for _, value in decayed], alpha=options.weight_decay
                        )
                    torch.nn.utils.clip_grad_norm_(parameters, options.clip_norm)
                    self.optimizer.step()
                    if self.average is not None:
                        self.average()
                    optimizer_steps += 1
                    objectives.append(objective)
                    for callback in options.step_callbacks:
                        callback(
                            {
                                "epoch": self.step,
                                "step": optimizer_steps,
                                "loss": None if loss is None else loss.detach().item(),
                                "objective": objective,
                                "lr": learning_rate,
                            }
                        )
                    if clock.over_budget:
                        # A long epoch (one big text in many mini-batches) ends mid-way when the
                        # budget runs out; the epoch's objective averages the mini-batches done.
                        partial = next(minibatches, None) is not None
                        break
                self.step += 1
                objective = sum(objectives) / len(objectives)
                last = self.step == options.max_epochs
                valid_per_step = self.evaluate(last or clock.over_budget)
                reason = None
                if self.valid is None:
                    self.best_step = self.step
                elif valid_per_step is not None:
                    if self.best_valid is None or valid_per_step > self.best_valid:
                        self.best_valid, self.best_step, self.stale = valid_per_step, self.step, 0
                        self.best_state = self.state_to_keep()
                    else:
                        self.stale += 1
                    if self.stale >= options.patience:
                        reason = "early_stopping"
                if plateau:
                    if valid_per_step is not None or self.valid is None:
                        self.scheduler.step(valid_per_step if valid_per_step is not None else objective)
                else:
                    self.scheduler.step()
                if reason is None and clock.over_budget and not last:
                    reason = "time_budget"
                self.stopped = self.decide_stop(reason)
                record = {
                    "step": self.step,
                    "objective": objective,
                    "objective_per_step": objective / self.num_train_steps,
                    "valid_log_prob_per_step": valid_per_step,
                    "lr": learning_rate,
                    "seconds": clock.total,
                    "partial": partial,
                }
                self.emit(record, clock, bar)
                if self.stopped is not None:
                    break
        if self.stopped is None:
            self.stopped = "max_steps"
        return self.finish(clock)


def _uses_split_em(model: SequenceModel) -> bool:
    """Whether the model implements the contract's ``e_step``/``m_step`` split."""
    return type(model).e_step is not SequenceModel.e_step and type(model).m_step is not SequenceModel.m_step


def gains_accelerating(gains: Sequence[float], noise: float, factor: float = 1.1) -> bool:
    """Whether a window of per-iteration gains is rising: the mean of its later
    half exceeds ``factor`` times that of its earlier half (and the rounding
    ``noise``). EM converging to a fixed point gains geometrically less each
    iteration; EM leaving a saddle (a plateau) gains geometrically more, so a
    window of small but rising gains is a plateau, not convergence.

    Args:
        gains: per-step gains of the last iterations, oldest first.
        noise: gains below this are rounding noise and count as 0.
    """
    half = len(gains) // 2
    if half == 0:
        return False
    cleaned = [gain if gain > noise else 0.0 for gain in gains]
    earlier = sum(cleaned[:half]) / half
    later = sum(cleaned[-half:]) / half
    return later > noise and later > factor * earlier


class EMTrainer(Trainer):
    """Expectation-maximisation with restarts; one step is one EM iteration.

    Each iteration is ``statistics = model.e_step(train)`` → ``statistics_hook``
    → ``objective = statistics["log_likelihood"] + model.log_prior()`` →
    ``model.m_step(statistics)`` when the model implements the split, else
    ``model.em_step(train)``.

    **Convergence.** With ``gain = (objective_i - objective_{i-1}) /
    num_observed_steps``, a restart converges when (1) ``gain < threshold``
    for ``patience`` iterations in a row, ``threshold = max(tolerance,
    rounding noise)``; (2) the gains of that window are not rising (see
    :func:`gains_accelerating`: a plateau on the way out of a saddle gains a
    little more every iteration); and (3) ``model.em_converged_check()`` is
    True (a family may refuse while two states are near duplicates).
    """

    method = "em"
    options: EMOptions
    _STATE_KEYS = (
        "restart",
        "iteration",
        "previous_objective",
        "small_gains",
        "recent_gains",
        "restart_objectives",
        "restart_stops",
        "best_objective",
    )

    def loop_state(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE_KEYS}

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        for key in self._STATE_KEYS:
            setattr(self, key, state.get(key, [] if key == "recent_gains" else None))

    def em_iteration(self) -> Tensor | float:
        """One EM iteration on the full training batch; the objective before the update."""
        model = self.model
        if not _uses_split_em(model):
            if self.options.statistics_hook is not None:
                raise ValueError(
                    f"statistics_hook: {type(model).__name__} has no e_step/m_step to reduce statistics between"
                )
            if self.options.shard is not None:
                raise ValueError(
                    f"shard: {type(model).__name__} has no e_step/m_step, so EM cannot be split over processes"
                )
            return model.em_step(self.train)
        if self.options.shard is not None and not hasattr(self, "_local_train"):
            self._local_train = self.options.shard(self.train)
        with torch.no_grad():
            local_statistics = model.e_step(getattr(self, "_local_train", self.train))
            statistics: Mapping[str, Tensor] = local_statistics
            if self.options.statistics_hook is not None:
                statistics = self.options.statistics_hook(local_statistics)
            if "log_likelihood" not in statistics:
                raise KeyError(f"{type(model).__name__}.e_step: the statistics lack 'log_likelihood'")
            objective = statistics["log_likelihood"] + model.log_prior()
            model.m_step(statistics)
        return objective

    def run(self) -> FitResult:
        model, options = self.model, self.options
        self.restart = 0  # index of the restart in progress
        self.iteration = 0  # iterations done in it
        self.previous_objective: float | None = None
        self.small_gains = 0
        self.recent_gains: list[float] = []  # per-step gains of the current window, oldest first
        self.restart_objectives: list[float] = []
        self.restart_stops: list[str] = []
        self.best_objective: float | None = None
        if options.initialization_hook is not None:
            options.initialization_hook(model)
        if self.resume:
            self.load_checkpoint()
            self.reopen_last_restart()
        clock = _Clock(self.previous_seconds, options.time_budget)
        if self.stopped in FINAL_STOPS:
            return self.finish(clock, self.restart_objectives)
        self.stopped = None

        total = options.max_iterations * options.num_restarts
        done_before = len(self.restart_objectives) * options.max_iterations + self.iteration
        out_of_time = stopped_by_hook = False
        valid_per_step = None
        with self.progress_bar(total, done_before) as bar:
            while self.restart < options.num_restarts and not (out_of_time or stopped_by_hook):
                if self.iteration >= options.max_iterations:
                    # Resumed with max_iterations at or below the checkpoint's iteration: this
                    # restart has already used its iterations (without this, the loop never advances).
                    if self.previous_objective is None:
                        raise ValueError(
                            f"resume: the checkpoint's restart {self.restart} has {self.iteration} iterations "
                            "but no objective"
                        )
                    self.close_restart(self.previous_objective, "max_steps", None)
                    continue
                if self.iteration == 0 and self.restart > 0:
                    model.reset_parameters(self.generator)
                while self.iteration < options.max_iterations:
                    model.train()
                    objective_value = self.em_iteration()
                    if isinstance(objective_value, Tensor):
                        objective_value = objective_value.detach()
                    objective = float(objective_value)
                    if not math.isfinite(objective):
                        raise FloatingPointError(
                            f"fit: the EM objective is {objective} at iteration "
                            f"{self.iteration + 1} of restart {self.restart}"
                        )
                    self.iteration += 1
                    self.step += 1
                    noise = rounding_noise_per_step(objective_value, self.num_train_steps)
                    if self.previous_objective is not None:
                        gain = (objective - self.previous_objective) / self.num_train_steps
                        threshold = max(options.tolerance, noise)
                        self.small_gains = self.small_gains + 1 if gain < threshold else 0
                        self.recent_gains = (self.recent_gains + [gain])[-options.patience :]
                    self.previous_objective = objective
                    converged = (
                        self.small_gains >= options.patience
                        and not gains_accelerating(self.recent_gains, noise)
                        and bool(model.em_converged_check())
                    )
                    at_limit = self.iteration == options.max_iterations
                    reason = (
                        "converged" if converged else ("time_budget" if not at_limit and clock.over_budget else None)
                    )
                    decision = self.decide_stop(reason)  # a stop_hook makes it collective
                    converged, out_of_time, stopped_by_hook = (
                        decision == "converged",
                        decision == "time_budget",
                        decision == "stop_hook",
                    )
                    last = converged or at_limit
                    valid_per_step = self.evaluate(last or out_of_time or stopped_by_hook)
                    record = {
                        "step": self.step,
                        "restart": self.restart,
                        "iteration": self.iteration,
                        "objective": objective,
                        "objective_per_step": objective / self.num_train_steps,
                        "valid_log_prob_per_step": valid_per_step,
                        "seconds": clock.total,
                    }
                    if last or stopped_by_hook:
                        self.close_restart(
                            objective,
                            "converged" if converged else ("stop_hook" if stopped_by_hook else "max_steps"),
                            valid_per_step,
                        )
                    self.emit(record, clock, bar)
                    if last or out_of_time or stopped_by_hook:
                        break
        restarts = list(self.restart_objectives)
        if out_of_time:
            # The interrupted restart stays open in the checkpoint (resume continues it) but
            # competes here with the finished ones on its latest objective.
            self.stopped = "time_budget"
            assert self.previous_objective is not None  # set by the iteration that ran out of time
            restarts.append(self.previous_objective)
            self.save_checkpoint(clock)
            if self.best_objective is None or self.previous_objective > self.best_objective:
                self.best_state = ckpt.clone_state(model)
                self.best_step = self.step
                self.best_valid = valid_per_step
            return self.finish(clock, restarts, save=False)
        best = max(range(len(restarts)), key=restarts.__getitem__)
        self.stopped = "stop_hook" if stopped_by_hook else self.restart_stops[best]
        return self.finish(clock, restarts)

    def reopen_last_restart(self) -> None:
        """On resume with a larger ``max_iterations``: a last restart that ended
        only because it ran out of iterations continues where it stopped."""
        options = self.options
        if not self.restart_stops or self.restart_stops[-1] != "max_steps" or self.restart != options.num_restarts:
            return
        last = len(self.restart_stops) - 1
        records = [r for r in self.history if r.get("restart") == last]
        if not records or len(records) >= options.max_iterations:
            return
        self.restart_objectives.pop()
        self.restart_stops.pop()
        self.restart = last
        self.iteration = len(records)
        self.previous_objective = records[-1]["objective"]
        self.small_gains = 0
        self.recent_gains = []
        self.stopped = None
        self.best_objective = max(self.restart_objectives) if self.restart_objectives else None

    def close_restart(self, objective: float, restart_stop: str, valid_per_step: float | None) -> None:
        """Ends the current restart, keeping its state if it is the best so far."""
        self.restart_objectives.append(objective)
        self.restart_stops.append(restart_stop)
        if self.best_objective is None or objective > self.best_objective:
            self.best_objective = objective
            self.best_state = ckpt.clone_state(self.model)
            self.best_step = self.step
            self.best_valid = valid_per_step
        self.restart += 1
        self.iteration = 0
        self.previous_objective = None
        self.small_gains = 0
        self.recent_gains = []
