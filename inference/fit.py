"""The one fit loop every model in the zoo trains through.

:func:`fit` knows nothing about any family: it depends only on
:class:`~inference.contract.SequenceModel` and
:class:`~inference.batch.SequenceBatch`. Three methods:

* ``"svi"`` — stochastic variational inference. Parameters are module-local
  (importing :mod:`inference` switches Pyro's ``module_local_params`` on), so
  the loop optimises ``model.parameters()`` directly with a torch optimizer on
  ``elbo.differentiable_loss(model.model, model.guide, batch)``, the pattern
  Pyro recommends for a ``PyroModule``. One *step* is one epoch over the
  training sequences (in mini-batches if ``batch_size`` is given).
* ``"em"`` — expectation-maximisation through the family's
  ``model.em_step(batch)``. One *step* is one EM iteration.
* ``"nuts"`` — posterior draws of the parameter sites by the No-U-Turn
  sampler (:mod:`inference.mcmc`), for models with an exact likelihood.

Every step appends a record to the history, reports it to the callbacks and to
a progress bar; the loop stops on ``max_epochs``/``max_iterations``, early
stopping, EM convergence or a time budget, and can checkpoint to and resume
from a :class:`~inference.rundir.RunDirectory`.

Example:
    >>> result = fit(model, train, valid=valid, max_epochs=200, learning_rate=0.05)  # doctest: +SKIP
    >>> result.stopped, result.best_valid_log_prob_per_step  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from pyro.optim.clipped_adam import ClippedAdam
from torch import Tensor
from tqdm.auto import tqdm

from .batch import SequenceBatch, iterate_minibatches
from .contract import SequenceModel
from .rundir import RunDirectory
from .scoring import count_observed_steps, score

#: Base name of the checkpoint files in a run directory (``checkpoint.safetensors`` + ``checkpoint.json``).
CHECKPOINT_NAME = "checkpoint"
#: Stop reasons after which ``resume`` returns at once instead of training on.
_FINAL_STOPS = ("converged", "early_stopping")


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        method: ``"svi"`` or ``"em"``.
        history: one record per step (SVI epoch or EM iteration), each a dict
            with ``step``, ``objective`` (ELBO or EM objective, total nats),
            ``objective_per_step`` (per observed training time step),
            ``valid_log_prob_per_step`` (when evaluated at that step), ``lr``
            (SVI) and ``seconds`` (cumulative wall time); EM records also hold
            ``restart`` and ``iteration``.
        best_step: the step whose parameters the model holds at the end.
        best_valid_log_prob_per_step: validation score of those parameters, or
            ``None`` without validation data.
        stopped: why the loop stopped: ``"max_steps"``, ``"early_stopping"``,
            ``"converged"`` or ``"time_budget"``.
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


def make_elbo(model: SequenceModel, elbo: str = "auto", num_particles: int = 1) -> ELBO:
    """Builds the ELBO :func:`fit` uses.

    Args:
        model: the model; ``"auto"`` reads its ``has_enumerated_sites``.
        elbo: ``"auto"`` (``"traceenum"`` if the model has enumerated discrete
            sites, else ``"trace"``), ``"trace"`` or ``"traceenum"``.
        num_particles: Monte Carlo samples per loss evaluation.

    Returns:
        A :class:`~pyro.infer.Trace_ELBO` or :class:`~pyro.infer.TraceEnum_ELBO`.
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
    if elbo == "auto":
        elbo = "traceenum" if model.has_enumerated_sites else "trace"
    if elbo == "trace":
        return Trace_ELBO(num_particles=num_particles)
    if elbo == "traceenum":
        return TraceEnum_ELBO(num_particles=num_particles)
    raise ValueError(f"elbo: expected 'auto', 'trace' or 'traceenum', got {elbo!r}")


# -- state helpers ------------------------------------------------------------
def _clone_state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Global RNG states (torch, CUDA, Python, NumPy) as (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state_json = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    return tensors, state_json


def _set_rng_state(tensors: dict[str, Tensor], state_json: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].cpu())
    num_cuda_states = sum(name.startswith("rng.cuda.") for name in tensors)
    cuda_states = [tensors[f"rng.cuda.{index}"].cpu() for index in range(num_cuda_states)]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state_json["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state_json["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Splits ``optimizer.state_dict()`` into safetensors-able tensors and JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        plain = {}
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain[key] = value
        state_json[str(index)] = plain
    return tensors, {"state": state_json, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(tensors: dict[str, Tensor], state_json: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(index): dict(plain) for index, plain in state_json["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    groups = [dict(group) for group in state_json["param_groups"]]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{name}": value for name, value in tensors.items()}


def _unprefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    start = len(prefix) + 1
    return {name[start:]: value for name, value in tensors.items() if name.startswith(prefix + ".")}


def _save_checkpoint(
    run: RunDirectory,
    *,
    model: SequenceModel,
    best_state: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    loop_state: dict[str, Any],
    generator: torch.Generator,
) -> None:
    """Writes ``checkpoint.safetensors`` then ``checkpoint.json``; both carry the
    step so a crash between the two writes is detected on load."""
    tensors = _prefixed("model", model.state_dict())
    if best_state is not None:
        tensors.update(_prefixed("best", best_state))
    rng_tensors, rng_json = _rng_state()
    tensors.update(rng_tensors)
    tensors["rng.shuffle"] = generator.get_state()
    optimizer_json = None
    if optimizer is not None:
        optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer)
        tensors.update(optimizer_tensors)
    step = loop_state["step"]
    run.save_tensors(CHECKPOINT_NAME, tensors, metadata={"step": step})
    run.write_json(
        CHECKPOINT_NAME,
        {**loop_state, "has_best_state": best_state is not None, "optimizer": optimizer_json, "rng": rng_json},
    )


def _load_checkpoint(run: RunDirectory, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not (run.exists(CHECKPOINT_NAME + ".safetensors") and run.exists(CHECKPOINT_NAME + ".json")):
        raise FileNotFoundError(f"resume: no checkpoint in {str(run.path)!r}")
    tensors, metadata = run.load_tensors(CHECKPOINT_NAME, device=device)
    state = run.read_json(CHECKPOINT_NAME)
    if metadata.get("step") != state["step"]:
        raise RuntimeError(
            f"checkpoint in {str(run.path)!r} is inconsistent: tensors at step {metadata.get('step')}, "
            f"JSON at step {state['step']} (a write was interrupted); delete it to start afresh"
        )
    return tensors, state


# -- argument checks ----------------------------------------------------------
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


def _rounding_noise_per_step(objective: Tensor | float, num_steps: int) -> float:
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


def fit(
    model: SequenceModel,
    train: SequenceBatch,
    *,
    valid: SequenceBatch | None = None,
    method: str = "svi",
    elbo: str = "auto",
    num_particles: int = 1,
    max_epochs: int = 100,
    batch_size: int | None = None,
    learning_rate: float = 1e-2,
    final_learning_rate: float | None = None,
    clip_norm: float = 10.0,
    betas: tuple[float, float] = (0.9, 0.999),
    max_iterations: int = 500,
    tolerance: float = 1e-8,
    num_restarts: int = 1,
    patience: int = 10,
    eval_every: int = 1,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: RunDirectory | None = None,
    checkpoint_every: int = 10,
    resume: bool = False,
    time_budget: float | None = None,
    callbacks: Sequence[Callable[[dict], None]] = (),
    description: str | None = None,
    num_samples: int = 500,
    warmup_steps: int = 500,
    num_chains: int = 4,
    initialize: bool = True,
    **nuts_options: Any,
) -> FitResult:
    """Fits ``model`` to ``train`` by SVI or EM, or samples its posterior by NUTS.

    Both methods first seed ``torch``, Pyro, Python and NumPy from ``seed``,
    move the model and data to ``device``, and call
    ``model.initialize_from_data(train, generator)`` once.

    **SVI.** Minimises ``elbo.differentiable_loss(model.model, model.guide,
    minibatch)`` over ``model.parameters()`` with
    :class:`~pyro.optim.clipped_adam.ClippedAdam` (which also clamps each
    gradient entry to ``[-clip_norm, clip_norm]``) after rescaling the
    gradient to global L2 norm at most ``clip_norm``. One loss evaluation runs
    before the optimizer is built, so lazily created Pyro parameters exist. A
    step is one epoch: the sequences are shuffled with a seeded
    :class:`torch.Generator` into mini-batches of ``batch_size`` whose
    ``population`` scales them to the full data; the epoch's ``objective`` is
    the mean of the mini-batch ELBO estimates (each an unbiased estimate of the
    full-data ELBO). The learning rate decays exponentially once per epoch from
    ``learning_rate`` to ``final_learning_rate`` at ``max_epochs``. With
    ``valid``, every ``eval_every`` epochs (and at the last) the validation
    log-likelihood per step (:func:`inference.scoring.score`) is recorded; the
    best state is kept and restored at the end, and training stops early after
    ``patience`` evaluations in a row without a strict improvement. Without
    ``valid`` the model keeps its last state.

    **EM.** Calls ``model.em_step(train)`` (full batch), which updates the
    parameters and returns the objective before its update. Convergence rule:
    with ``gain = (objective_i - objective_{i-1}) / num_observed_steps``, the
    run converges when ``gain < threshold`` holds for ``patience`` consecutive
    iterations; any iteration with ``gain >= threshold`` resets the count, so
    one tiny change on a long slow climb never stops it (a decrease counts as
    no gain). ``threshold = max(tolerance, noise)`` where ``noise`` is the
    objective's rounding noise per step (16 machine epsilons of its magnitude
    in the dtype ``em_step`` returns), so float32 models are not kept running
    by rounding jitter. Restart 0 starts from the model's current parameters, restarts
    ``1..num_restarts-1`` from ``model.reset_parameters(generator)``; the
    restart with the highest last objective is kept (its ``state_dict``
    restored). ``valid`` is scored for the history only.

    **NUTS.** Samples the posterior of the parameter sites with
    :func:`inference.mcmc.run_nuts` (``num_chains`` chains of ``warmup_steps``
    + ``num_samples`` iterations, chain ``c`` seeded ``seed + c``), for models
    whose ``model()`` marginalises the states exactly. ``history`` holds one
    record per chain; ``mcmc`` the draws; the model is left at the posterior
    mean. ``valid``, checkpoints, resume and the time budget do not apply
    (with ``checkpoint`` the final model is still saved).

    **Checkpoints.** With ``checkpoint``, every ``checkpoint_every`` steps and
    at the end the loop writes ``checkpoint.safetensors`` (model and best
    states, optimizer tensors, RNG states) and ``checkpoint.json`` (history,
    step, scheduler and early-stopping/EM state); at the end it also writes the
    final model with :meth:`RunDirectory.save_model`. ``resume=True`` reloads
    that checkpoint into the freshly built ``model`` and continues, giving the
    same parameters as an uninterrupted run; a run that had already converged
    or stopped early is returned as is.

    **Time budget.** Checked after every SVI mini-batch (an epoch cut short by
    the budget counts as the last step, its objective the mean of the
    mini-batches done, and ``valid`` is scored at its end) and after every EM
    iteration, so a run overruns by at most one mini-batch or iteration plus
    the final validation; ``max_epochs``/``max_iterations`` apply as well.

    Args:
        model: the model to fit (modified in place).
        train: training sequences.
        valid: optional validation sequences.
        method: ``"svi"`` or ``"em"``.
        elbo: ``"auto"``, ``"trace"`` or ``"traceenum"`` (see :func:`make_elbo`).
        num_particles: ELBO particles.
        max_epochs: SVI epochs.
        batch_size: sequences per SVI mini-batch (``None``: full batch).
        learning_rate: initial SVI learning rate.
        final_learning_rate: learning rate reached after ``max_epochs``
            (``None``: constant).
        clip_norm: gradient clipping threshold.
        betas: Adam moment decay rates.
        max_iterations: EM iterations per restart.
        tolerance: EM convergence threshold on the objective's gain per
            observed step.
        num_restarts: EM random restarts.
        patience: SVI early-stopping patience (evaluations) / EM convergence
            patience (iterations).
        eval_every: evaluate on ``valid`` every this many steps.
        device: where to fit (default: ``train``'s device).
        seed: seed of every random number generator the fit uses.
        progress: show a tqdm progress bar on stderr.
        checkpoint: run directory for checkpoints (``None``: none written).
        checkpoint_every: steps between checkpoints.
        resume: continue from the checkpoint in ``checkpoint``.
        time_budget: seconds this call may train for (``None``: unlimited).
        callbacks: functions called with each history record.
        description: progress-bar label (default: the model's family).
        num_samples: NUTS draws kept per chain.
        warmup_steps: NUTS adaptation iterations per chain.
        num_chains: NUTS chains (run one after another).
        initialize: call ``model.initialize_from_data`` first (default). Pass
            False to start from the model's current parameters, e.g. NUTS
            chains started at an EM or SVI fit.
        **nuts_options: further options of :func:`inference.mcmc.run_nuts`
            (``target_accept_prob``, ``max_tree_depth``, ``init_jitter``,
            ``sample_states``, ``align_labels``, ``point``).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: an argument is out of range, or ``method="em"`` for a model
            without ``em_step``.
        FileNotFoundError: ``resume`` with no checkpoint in ``checkpoint``.
        FloatingPointError: the objective became NaN or infinite.
    """
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model: expected a SequenceModel, got {type(model).__name__}")
    if not isinstance(train, SequenceBatch):
        raise TypeError(f"train: expected a SequenceBatch, got {type(train).__name__}")
    if valid is not None and not isinstance(valid, SequenceBatch):
        raise TypeError(f"valid: expected a SequenceBatch or None, got {type(valid).__name__}")
    if method not in ("svi", "em", "nuts"):
        raise ValueError(f"method: expected 'svi', 'em' or 'nuts', got {method!r}")
    if nuts_options and method != "nuts":
        raise TypeError(f"fit: unexpected keyword arguments {sorted(nuts_options)} (NUTS options need method='nuts')")
    for name, value in [("max_epochs", max_epochs), ("max_iterations", max_iterations),
                        ("num_restarts", num_restarts), ("patience", patience),
                        ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)]:
        _check_positive_int(name, value)
    _check_positive_int("batch_size", batch_size, allow_none=True)
    _check_positive_float("learning_rate", learning_rate)
    _check_positive_float("final_learning_rate", final_learning_rate, allow_none=True)
    _check_positive_float("clip_norm", clip_norm)
    if time_budget is not None and (not isinstance(time_budget, (int, float)) or time_budget < 0):
        raise ValueError(f"time_budget: expected a non-negative number of seconds or None, got {time_budget!r}")
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance):
        raise ValueError(f"tolerance: expected a finite number, got {tolerance!r}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
    if resume and checkpoint is None:
        raise ValueError("resume: needs a checkpoint run directory, got checkpoint=None")
    if method == "em":
        if not model.supports_em:
            raise ValueError(f"method: {type(model).__name__} has no em_step (supports_em is False); use 'svi'")
        if batch_size is not None:
            raise ValueError(f"batch_size: EM fits the full batch, expected None, got {batch_size!r}")
    if train.num_sequences == 0:
        raise ValueError("train: expected at least one sequence, got none")
    num_train_steps = count_observed_steps(train)
    if num_train_steps == 0:
        raise ValueError("train: has no observed time step")

    device = torch.device(device) if device is not None else train.device
    model.to(device)
    train = train.to(device)
    valid = valid.to(device) if valid is not None else None

    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)  # torch, Python and NumPy
    # Shuffling and restarts draw from a CPU generator so results do not depend on the device.
    generator = torch.Generator().manual_seed(seed)
    if initialize:
        model.initialize_from_data(train, generator)
    if method == "nuts":
        return _fit_nuts(model, train, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                         seed=seed, progress=progress, description=description, callbacks=callbacks,
                         checkpoint=checkpoint, **nuts_options)

    loop_class = _SVILoop if method == "svi" else _EMLoop
    options = dict(
        model=model, train=train, valid=valid, elbo=elbo, num_particles=num_particles, max_epochs=max_epochs,
        batch_size=batch_size, learning_rate=learning_rate, final_learning_rate=final_learning_rate,
        clip_norm=clip_norm, betas=betas, max_iterations=max_iterations, tolerance=tolerance,
        num_restarts=num_restarts, patience=patience, eval_every=eval_every, device=device,
        progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume,
        time_budget=time_budget, callbacks=callbacks, description=description,
        generator=generator, num_train_steps=num_train_steps,
    )
    return loop_class(**options).run()


class _LoopBase:
    """State and book-keeping shared by the SVI and EM loops."""

    method = ""

    def __init__(self, **options: Any) -> None:
        self.__dict__.update(options)
        self.callbacks = list(self.callbacks)
        self.history: list[dict] = []
        self.step = 0
        self.best_state: dict[str, Tensor] | None = None
        self.best_step = 0
        self.best_valid: float | None = None
        self.stopped: str | None = None
        self.previous_seconds = 0.0
        self.optimizer: torch.optim.Optimizer | None = None

    # -- hooks ----------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------
    def base_loop_state(self, clock: _Clock) -> dict[str, Any]:
        return {
            "method": self.method,
            "step": self.step,
            "history": self.history,
            "best_step": self.best_step,
            "best_valid": self.best_valid,
            "stopped": self.stopped,
            "seconds": clock.total,
        }

    def save_checkpoint(self, clock: _Clock) -> None:
        if self.checkpoint is None:
            return
        state = {**self.base_loop_state(clock), **self.loop_state()}
        _save_checkpoint(
            self.checkpoint,
            model=self.model,
            best_state=self.best_state,
            optimizer=self.optimizer,
            loop_state=state,
            generator=self.generator,
        )

    def load_checkpoint(self) -> None:
        tensors, state = _load_checkpoint(self.checkpoint, self.device)
        if state["method"] != self.method:
            raise ValueError(
                f"resume: the checkpoint in {str(self.checkpoint.path)!r} is from method "
                f"{state['method']!r}, not {self.method!r}"
            )
        self.model.load_state_dict(_unprefixed("model", tensors))
        self.best_state = _unprefixed("best", tensors) if state["has_best_state"] else None
        if self.optimizer is not None:
            self.optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
        _set_rng_state(tensors, state["rng"])
        self.generator.set_state(tensors["rng.shuffle"].cpu())
        self.step = state["step"]
        self.history = state["history"]
        self.best_step = state["best_step"]
        self.best_valid = state["best_valid"]
        self.stopped = state["stopped"]
        self.previous_seconds = state["seconds"]
        self.restore_loop_state(state)

    def evaluate(self, last: bool) -> float | None:
        if self.valid is None or not (self.step % self.eval_every == 0 or last):
            return None
        return score(self.model, self.valid).per_step

    def emit(self, record: dict, clock: _Clock, bar) -> None:
        self.history.append(record)
        postfix = {"objective/step": f"{record['objective_per_step']:.4f}"}
        if record.get("valid_log_prob_per_step") is not None:
            postfix["valid ll/step"] = f"{record['valid_log_prob_per_step']:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
        if self.step % self.checkpoint_every == 0:
            self.save_checkpoint(clock)
        for callback in self.callbacks:
            callback(record)

    def progress_bar(self, total: int, initial: int):
        return tqdm(
            total=total,
            initial=initial,
            desc=self.description or self.model.family,
            unit="step",
            file=sys.stderr,
            disable=not self.progress,
            dynamic_ncols=True,
        )

    def finish(self, clock: _Clock, restarts: list[float] | None = None, save: bool = True) -> FitResult:
        if save:
            self.save_checkpoint(clock)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.checkpoint is not None:
            self.checkpoint.save_model(self.model)
        return FitResult(
            method=self.method,
            history=self.history,
            best_step=self.best_step,
            best_valid_log_prob_per_step=self.best_valid,
            stopped=self.stopped,
            seconds=clock.total,
            restarts=restarts,
        )


class _SVILoop(_LoopBase):
    method = "svi"

    def loop_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "evaluations_without_improvement": self.stale}

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.stale = state["evaluations_without_improvement"]

    def run(self) -> FitResult:
        model, train = self.model, self.train
        elbo = make_elbo(model, self.elbo, self.num_particles)
        batch_size = self.batch_size or train.num_sequences
        # One evaluation creates lazily initialised parameters before the optimizer collects them
        # (with gradients on: TraceEnum_ELBO refuses to evaluate a loss it cannot differentiate).
        elbo.differentiable_loss(model.model, model.guide, train[:batch_size].with_population(train.num_sequences))
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(f"model: {type(model).__name__} has no trainable parameter to fit by SVI")
        self.optimizer = ClippedAdam(parameters, lr=self.learning_rate, betas=tuple(self.betas), clip_norm=self.clip_norm)
        final = self.final_learning_rate or self.learning_rate
        gamma = (final / self.learning_rate) ** (1.0 / self.max_epochs)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        self.stale = 0
        if self.resume:
            self.load_checkpoint()
        clock = _Clock(self.previous_seconds, self.time_budget)
        if self.stopped in _FINAL_STOPS:
            return self.finish(clock)
        self.stopped = None

        with self.progress_bar(self.max_epochs, self.step) as bar:
            while self.step < self.max_epochs:
                model.train()
                learning_rate = self.optimizer.param_groups[0]["lr"]
                losses = []
                for minibatch in iterate_minibatches(train, batch_size, self.generator):
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = elbo.differentiable_loss(model.model, model.guide, minibatch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"fit: the ELBO loss is {loss.detach().item()} at epoch {self.step + 1}; "
                            f"try a smaller learning_rate or a better initialisation"
                        )
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, self.clip_norm)
                    self.optimizer.step()
                    losses.append(loss.detach().item())
                    if clock.over_budget:
                        # A long epoch (one big text in many mini-batches) ends mid-way when the
                        # budget runs out; the epoch's objective averages the mini-batches done.
                        break
                self.scheduler.step()
                self.step += 1
                objective = -sum(losses) / len(losses)
                last = self.step == self.max_epochs
                valid_per_step = self.evaluate(last or clock.over_budget)
                if self.valid is None:
                    self.best_step = self.step
                elif valid_per_step is not None:
                    if self.best_valid is None or valid_per_step > self.best_valid:
                        self.best_valid, self.best_step, self.stale = valid_per_step, self.step, 0
                        self.best_state = _clone_state(model)
                    else:
                        self.stale += 1
                    if self.stale >= self.patience:
                        self.stopped = "early_stopping"
                if self.stopped is None and clock.over_budget and not last:
                    self.stopped = "time_budget"
                record = {
                    "step": self.step,
                    "objective": objective,
                    "objective_per_step": objective / self.num_train_steps,
                    "valid_log_prob_per_step": valid_per_step,
                    "lr": learning_rate,
                    "seconds": clock.total,
                }
                self.emit(record, clock, bar)
                if self.stopped is not None:
                    break
        if self.stopped is None:
            self.stopped = "max_steps"
        return self.finish(clock)


class _EMLoop(_LoopBase):
    method = "em"

    def loop_state(self) -> dict[str, Any]:
        return {
            "restart": self.restart,
            "iteration": self.iteration,
            "previous_objective": self.previous_objective,
            "small_gains": self.small_gains,
            "restart_objectives": self.restart_objectives,
            "restart_stops": self.restart_stops,
            "best_objective": self.best_objective,
        }

    def restore_loop_state(self, state: dict[str, Any]) -> None:
        for key in ("restart", "iteration", "previous_objective", "small_gains",
                    "restart_objectives", "restart_stops", "best_objective"):
            setattr(self, key, state[key])

    def run(self) -> FitResult:
        model, train = self.model, self.train
        self.restart = 0  # index of the restart in progress
        self.iteration = 0  # iterations done in it
        self.previous_objective: float | None = None
        self.small_gains = 0
        self.restart_objectives: list[float] = []
        self.restart_stops: list[str] = []
        self.best_objective: float | None = None
        if self.resume:
            self.load_checkpoint()
            self.reopen_last_restart()
        clock = _Clock(self.previous_seconds, self.time_budget)
        if self.stopped in _FINAL_STOPS:
            return self.finish(clock, self.restart_objectives)
        self.stopped = None

        total = self.max_iterations * self.num_restarts
        done_before = len(self.restart_objectives) * self.max_iterations + self.iteration
        out_of_time = False
        with self.progress_bar(total, done_before) as bar:
            while self.restart < self.num_restarts and not out_of_time:
                if self.iteration == 0 and self.restart > 0:
                    model.reset_parameters(self.generator)
                while self.iteration < self.max_iterations:
                    model.train()
                    objective_value = model.em_step(train)
                    if isinstance(objective_value, Tensor):
                        objective_value = objective_value.detach()
                    objective = float(objective_value)
                    if not math.isfinite(objective):
                        raise FloatingPointError(
                            f"fit: the EM objective is {objective} at iteration {self.iteration + 1} "
                            f"of restart {self.restart}"
                        )
                    self.iteration += 1
                    self.step += 1
                    if self.previous_objective is not None:
                        gain = (objective - self.previous_objective) / self.num_train_steps
                        threshold = max(self.tolerance, _rounding_noise_per_step(objective_value, self.num_train_steps))
                        self.small_gains = self.small_gains + 1 if gain < threshold else 0
                    self.previous_objective = objective
                    converged = self.small_gains >= self.patience
                    last = converged or self.iteration == self.max_iterations
                    out_of_time = not last and clock.over_budget
                    valid_per_step = self.evaluate(last or out_of_time)
                    record = {
                        "step": self.step,
                        "restart": self.restart,
                        "iteration": self.iteration,
                        "objective": objective,
                        "objective_per_step": objective / self.num_train_steps,
                        "valid_log_prob_per_step": valid_per_step,
                        "seconds": clock.total,
                    }
                    if last:
                        self.close_restart(objective, "converged" if converged else "max_steps", valid_per_step)
                    self.emit(record, clock, bar)
                    if last or out_of_time:
                        break
        restarts = list(self.restart_objectives)
        if out_of_time:
            # The interrupted restart stays open in the checkpoint (resume continues it) but
            # competes here with the finished ones on its latest objective.
            self.stopped = "time_budget"
            restarts.append(self.previous_objective)
            self.save_checkpoint(clock)
            if self.best_objective is None or self.previous_objective > self.best_objective:
                self.best_state = _clone_state(model)
                self.best_step = self.step
                self.best_valid = valid_per_step
            return self.finish(clock, restarts, save=False)
        best = max(range(len(restarts)), key=restarts.__getitem__)
        self.stopped = self.restart_stops[best]
        return self.finish(clock, restarts)

    def reopen_last_restart(self) -> None:
        """On resume with a larger ``max_iterations``: a last restart that ended
        only because it ran out of iterations continues where it stopped."""
        if not self.restart_stops or self.restart_stops[-1] != "max_steps" or self.restart != self.num_restarts:
            return
        last = len(self.restart_stops) - 1
        records = [r for r in self.history if r.get("restart") == last]
        if not records or len(records) >= self.max_iterations:
            return
        self.restart_objectives.pop()
        self.restart_stops.pop()
        self.restart = last
        self.iteration = len(records)
        self.previous_objective = records[-1]["objective"]
        self.small_gains = 0
        self.stopped = None
        if self.restart_objectives:
            self.best_objective = max(self.restart_objectives)
        else:
            self.best_objective = None

    def close_restart(self, objective: float, restart_stop: str, valid_per_step: float | None) -> None:
        """Ends the current restart, keeping its state if it is the best so far."""
        self.restart_objectives.append(objective)
        self.restart_stops.append(restart_stop)
        if self.best_objective is None or objective > self.best_objective:
            self.best_objective = objective
            self.best_state = _clone_state(self.model)
            self.best_step = self.step
            self.best_valid = valid_per_step
        self.restart += 1
        self.iteration = 0
        self.previous_objective = None
        self.small_gains = 0


def _fit_nuts(model: SequenceModel, train: SequenceBatch, *, num_samples: int, warmup_steps: int, num_chains: int,
              seed: int, progress: bool, description: str | None, callbacks, checkpoint: RunDirectory | None,
              **nuts_options: Any) -> FitResult:
    """``fit(method="nuts")``: one history record per chain."""
    from .mcmc import run_nuts  # imported here: Pyro's MCMC machinery is only needed for NUTS

    history: list[dict] = []

    def record(chain_record: dict) -> None:
        entry = {"step": chain_record["chain"] + 1, **chain_record}
        history.append(entry)
        for callback in callbacks:
            callback(entry)

    started = time.perf_counter()
    result = run_nuts(model, train, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                      seed=seed, progress=progress, description=description, callbacks=[record], **nuts_options)
    if checkpoint is not None:
        checkpoint.save_model(model)
    return FitResult(method="nuts", history=history, best_step=num_chains, stopped="max_steps",
                     seconds=time.perf_counter() - started, mcmc=result)
