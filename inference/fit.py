"""The one fit entry every model in the zoo trains through.

:func:`fit` knows nothing about any family: it depends only on
:class:`~inference.contract.SequenceModel` and
:class:`~inference.batch.SequenceBatch`, and runs one of the trainers of
:mod:`inference.training` (which never import this module). Three methods:

* ``"svi"`` — stochastic variational inference, or any gradient objective
  (:class:`~inference.training.SVITrainer`). Parameters are module-local
  (importing :mod:`inference` switches Pyro's ``module_local_params`` on), so
  the trainer optimises ``model.parameters()`` directly with a torch optimizer
  on the loss (by default ``elbo.differentiable_loss(model.model,
  model.guide, batch)``). One *step* is one epoch over the training sequences
  (in mini-batches if ``batch_size`` is given).
* ``"em"`` — expectation-maximisation through the family's
  ``e_step``/``m_step`` (or ``em_step``) (:class:`~inference.training.EMTrainer`).
  One *step* is one EM iteration.
* ``"nuts"`` — posterior draws of the parameter sites by the No-U-Turn
  sampler (:mod:`inference.mcmc`), for models with an exact likelihood.

Every keyword of :func:`fit` is also a field of the method's typed options
record (:class:`~inference.training.SVIOptions`,
:class:`~inference.training.EMOptions`, :class:`~inference.training.NUTSOptions`),
which ``fit(..., options=record)`` accepts; keywords override its fields.

Example:
    >>> result = fit(model, train, valid=valid, max_epochs=200, learning_rate=0.05)  # doctest: +SKIP
    >>> result.stopped, result.best_valid_log_prob_per_step  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro
import torch
from torch import Tensor

from .batch import SequenceBatch
from .checkpoint import CHECKPOINT_NAME
from .contract import SequenceModel
from .rundir import RunDirectory
from .training import (
    EMOptions,
    EMTrainer,
    FitResult,
    KLAnnealing,
    LossOutput,
    NUTSOptions,
    ParameterAverage,
    RunWriter,
    SVIOptions,
    SVITrainer,
    make_elbo,
    options_fields,
)

__all__ = [
    "CHECKPOINT_NAME",
    "EMOptions",
    "FitResult",
    "KLAnnealing",
    "LossOutput",
    "NUTSOptions",
    "ParameterAverage",
    "RunWriter",
    "SVIOptions",
    "fit",
    "make_elbo",
    "resolve_options",
]


class _Unset:
    """Default of :func:`fit`'s options keywords: "not given", so a given
    ``options`` record keeps its own value (defaults live in the records)."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()
_OPTIONS_CLASSES: dict[str, type[SVIOptions] | type[EMOptions] | type[NUTSOptions]] = {
    "svi": SVIOptions,
    "em": EMOptions,
    "nuts": NUTSOptions,
}


def fit(
    model: SequenceModel,
    train: SequenceBatch,
    *,
    valid: SequenceBatch | None = None,
    method: str = "svi",
    options: SVIOptions | EMOptions | NUTSOptions | None = None,
    elbo: Any = _UNSET,
    loss: Any = _UNSET,
    num_particles: int = _UNSET,
    max_epochs: int = _UNSET,
    batch_size: int | None = _UNSET,
    learning_rate: float = _UNSET,
    final_learning_rate: float | None = _UNSET,
    lr_schedule: str | Callable[[torch.optim.Optimizer], Any] = _UNSET,
    warmup_epochs: int = _UNSET,
    weight_decay: float = _UNSET,
    clip_norm: float = _UNSET,
    betas: tuple[float, float] = _UNSET,
    step_kwargs: Callable[[int, int], Mapping[str, Any]] | None = _UNSET,
    gradient_hook: Callable[[list[Tensor]], None] | None = _UNSET,
    step_callbacks: Sequence[Callable[[dict], None]] = _UNSET,
    average_decay: float | None = _UNSET,
    max_iterations: int = _UNSET,
    tolerance: float = _UNSET,
    num_restarts: int = _UNSET,
    statistics_hook: Callable[[dict[str, Tensor]], Mapping[str, Tensor]] | None = _UNSET,
    patience: int = _UNSET,
    eval_every: int = _UNSET,
    checkpoint_every: int = _UNSET,
    time_budget: float | None = _UNSET,
    progress: bool = _UNSET,
    description: str | None = _UNSET,
    callbacks: Sequence[Callable[[dict], None]] = _UNSET,
    stop_hook: Callable[[bool], bool] | None = _UNSET,
    valid_batch_size: int | None = _UNSET,
    valid_num_particles: int = _UNSET,
    validation_score: Callable[..., Any] | None = _UNSET,
    chunk_length: int | None = _UNSET,
    num_samples: int = _UNSET,
    warmup_steps: int = _UNSET,
    num_chains: int = _UNSET,
    device: torch.device | str | None = None,
    seed: int = 0,
    checkpoint: RunDirectory | None = None,
    resume: bool = False,
    writer: RunWriter | None = None,
    initialize: bool = True,
    **nuts_options: Any,
) -> FitResult:
    """Fits ``model`` to ``train`` by SVI or EM, or samples its posterior by NUTS.

    Both methods first seed ``torch``, Pyro, Python and NumPy from ``seed``,
    move the model and data to ``device``, and call
    ``model.initialize_from_data(train, generator)`` once.

    **SVI.** Minimises the loss (``loss``: an ELBO's
    ``differentiable_loss(model.model, model.guide, minibatch, **step_kwargs)``
    by default; see :class:`~inference.training.SVIOptions`) over
    ``model.parameters()`` with Adam (:class:`~pyro.optim.clipped_adam.ClippedAdam`);
    after backward, ``gradient_hook(parameters)`` runs, then the L2
    ``weight_decay`` term joins the gradient, then the gradient is rescaled
    to global L2 norm at most ``clip_norm``. One loss evaluation runs before
    the optimizer is built, so lazily created Pyro parameters exist. A step is
    one epoch: the sequences are shuffled with a seeded
    :class:`torch.Generator` into mini-batches of ``batch_size`` whose
    ``population`` scales them to the full data; the epoch's ``objective`` is
    the mean of the mini-batch objectives (for an ELBO, each an unbiased
    estimate of the full-data ELBO; with ``step_kwargs`` such as an annealing
    factor, the unannealed one). The learning rate follows ``lr_schedule``
    (default: exponential decay from ``learning_rate`` to
    ``final_learning_rate`` at ``max_epochs``), stepped once per epoch. With
    ``valid``, every ``eval_every`` epochs (and at the last) the validation
    log-likelihood per step (:func:`inference.scoring.score` with ``seed``, so
    a stochastic bound is scored reproducibly) is recorded; the best state is
    kept and restored at the end, and training stops early after ``patience``
    evaluations in a row without a strict improvement. Without ``valid`` the
    model keeps its last state.

    **EM.** Each iteration runs ``model.e_step(train)`` → ``statistics_hook``
    → objective (``statistics["log_likelihood"] + model.log_prior()``) →
    ``model.m_step(statistics)`` when the model implements that split, else
    ``model.em_step(train)`` (full batch); the objective is the one before the
    update. Convergence rule: with ``gain = (objective_i - objective_{i-1}) /
    num_observed_steps``, the run converges when ``gain < threshold`` holds
    for ``patience`` consecutive iterations, those gains are not rising
    (:func:`inference.training.gains_accelerating`: the slow climb off a
    saddle, a plateau, gains a little more each iteration) and
    ``model.em_converged_check()`` is True; any iteration with ``gain >=
    threshold`` resets the count, so one tiny change on a long slow climb never
    stops it (a decrease counts as no gain). ``threshold = max(tolerance,
    noise)`` where ``noise`` is the objective's rounding noise per step (16
    machine epsilons of its magnitude in the dtype of the objective), so
    float32 models are not kept running by rounding jitter. A resumed run
    whose checkpoint is at or past ``max_iterations`` returns at once
    (``stopped="max_steps"``). Restart 0 starts from the model's current parameters, restarts
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

    **Writing.** Every progress-bar update, checkpoint and final-model write
    goes through ``writer`` (default: a :class:`~inference.training.RunWriter`
    on ``checkpoint``), which a rank-aware writer can replace.

    **Stopping.** ``stop_hook(decision) -> bool`` receives each step's local
    stop decision and returns the collective one (a stop it adds is reported
    as ``stopped="stop_hook"``).

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
        method: ``"svi"``, ``"em"`` or ``"nuts"``.
        options: the method's typed options record (``SVIOptions``,
            ``EMOptions`` or ``NUTSOptions``); default: the family's recipe,
            ``model.fit_defaults(method)`` (what ``seqzoo fit`` trains with).
            Keywords given as well override its fields; keywords that belong
            to another method are ignored (:func:`resolve_options`).
        elbo: the loss, by its older name (see ``loss``).
        loss: ``"auto"``, ``"trace"``, ``"traceenum"``, ``"meanfield"``, a :class:`pyro.infer.elbo.ELBO` instance,
            ``"model"`` or a callable (see :class:`~inference.training.SVIOptions`).
        num_particles: ELBO particles (for a loss given by name).
        max_epochs: SVI epochs.
        batch_size: sequences per SVI mini-batch (``None``: full batch).
        learning_rate: initial SVI learning rate.
        final_learning_rate: learning rate reached after ``max_epochs``
            (``None``: constant).
        lr_schedule: ``"exponential"``, ``"constant"``, ``"cosine"``,
            ``"warmup_cosine"``, ``"plateau"`` or ``optimizer -> scheduler``.
        warmup_epochs: epochs of linear learning-rate warm-up.
        weight_decay: L2 weight decay ``λ`` (a Gaussian prior ``N(0, 1/λ)``): ``λ θ``
            is added to the loss's gradient before the clip.
        clip_norm: global L2 norm the gradient is clipped to.
        betas: Adam moment decay rates.
        step_kwargs: ``(epoch, step) -> dict`` of keyword arguments for
            ``model``/``guide`` or a custom loss (e.g. ``KLAnnealing``).
        gradient_hook: ``hook(parameters)`` after backward, before the clip.
        step_callbacks: functions called after each optimiser step.
        average_decay: SVI: keep a moving average of the parameters with this decay
            per optimiser step (:class:`~inference.training.ParameterAverage`);
            validation scores it and the model ends holding it. ``None``: off.
        max_iterations: EM iterations per restart.
        tolerance: EM convergence threshold on the objective's gain per
            observed step.
        num_restarts: EM random restarts.
        statistics_hook: EM: ``hook(statistics) -> statistics`` between
            ``e_step`` and ``m_step`` (e.g. an all-reduce).
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
        stop_hook: ``hook(local_decision) -> collective_decision``.
        valid_batch_size: sequences per validation ``log_prob_batch`` call.
        valid_num_particles: particles of a stochastic validation bound.
        validation_score: ``score(model, valid) -> per-step score`` replacing
            :func:`inference.scoring.score` for validation (e.g. a series scored
            given its history).
        chunk_length: SVI: a one-sequence ``train`` is cut into pieces of this
            many steps (``None``: never).
        writer: where progress, checkpoints and the final model go (default
            ``RunWriter(checkpoint)``).
        description: progress-bar label (default: the model's family).
        num_samples: NUTS draws kept per chain.
        warmup_steps: NUTS adaptation iterations per chain.
        num_chains: NUTS chains (run in parallel processes: ``num_workers=``, below).
        initialize: call ``model.initialize_from_data`` first (default). Pass
            False to start from the model's current parameters, e.g. NUTS
            chains started at an EM or SVI fit.
        **nuts_options: further options of :func:`inference.mcmc.run_nuts`
            (``target_accept_prob``, ``max_tree_depth``, ``init_jitter``,
            ``sample_states``, ``align_labels``, ``point``, ``num_workers``,
            ``start_method``).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: an argument is out of range, or ``method="em"`` for a model
            without ``em_step``.
        TypeError: ``options`` is not the method's record, or NUTS options
            are given for another method.
        FileNotFoundError: ``resume`` with no checkpoint in ``checkpoint``.
        FloatingPointError: the objective became NaN or infinite.
    """
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model: expected a SequenceModel, got {type(model).__name__}")
    if not isinstance(train, SequenceBatch):
        raise TypeError(f"train: expected a SequenceBatch, got {type(train).__name__}")
    if valid is not None and not isinstance(valid, SequenceBatch):
        raise TypeError(f"valid: expected a SequenceBatch or None, got {type(valid).__name__}")
    if method not in _OPTIONS_CLASSES:
        raise ValueError(f"method: expected 'svi', 'em' or 'nuts', got {method!r}")
    if nuts_options and method != "nuts":
        raise TypeError(f"fit: unexpected keyword arguments {sorted(nuts_options)} (NUTS options need method='nuts')")
    given = {
        name: value
        for name, value in dict(
            loss=loss,
            num_particles=num_particles,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            final_learning_rate=final_learning_rate,
            lr_schedule=lr_schedule,
            warmup_epochs=warmup_epochs,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
            betas=betas,
            step_kwargs=step_kwargs,
            gradient_hook=gradient_hook,
            step_callbacks=step_callbacks,
            average_decay=average_decay,
            max_iterations=max_iterations,
            tolerance=tolerance,
            num_restarts=num_restarts,
            statistics_hook=statistics_hook,
            patience=patience,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            time_budget=time_budget,
            progress=progress,
            description=description,
            callbacks=callbacks,
            stop_hook=stop_hook,
            valid_batch_size=valid_batch_size,
            valid_num_particles=valid_num_particles,
            validation_score=validation_score,
            chunk_length=chunk_length,
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            num_chains=num_chains,
        ).items()
        if value is not _UNSET
    }
    if elbo is not _UNSET:
        if "loss" in given:
            raise ValueError("elbo: give the loss once, as loss= (elbo= is its older name)")
        given["loss"] = elbo
    if method == "em" and given.get("batch_size") is not None:
        raise ValueError(f"batch_size: EM fits the full batch, expected None, got {given['batch_size']!r}")
    options = _method_options(model, method, options, given, nuts_options)
    options.check()
    if method == "em" and not model.supports_em:
        raise ValueError(f"method: {type(model).__name__} has no em_step (supports_em is False); use 'svi'")
    if resume and checkpoint is None and (writer is None or not writer.can_resume):
        raise ValueError("resume: needs a checkpoint run directory, got checkpoint=None")
    if train.num_sequences == 0:
        raise ValueError("train: expected at least one sequence, got none")
    if writer is None:
        writer = RunWriter(checkpoint)
    elif not isinstance(writer, RunWriter):
        raise TypeError(f"writer: expected a RunWriter, got {type(writer).__name__}")

    device = torch.device(device) if device is not None else train.device
    model.to(device)
    train = train.to(device)
    valid = valid.to(device) if valid is not None else None
    # options is an instance of the method's record (_method_options checks it).
    if isinstance(options, SVIOptions) and options.chunk_length is not None and train.num_sequences == 1:
        train = train.chunk(options.chunk_length)

    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)  # torch, Python and NumPy
    # Shuffling and restarts draw from a CPU generator so results do not depend on the device.
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(options, NUTSOptions):  # method != "nuts"
        # Checks the data before a data-dependent initialisation reads it.
        trainer_class = SVITrainer if method == "svi" else EMTrainer
        trainer = trainer_class(
            model, train, options, valid=valid, writer=writer, generator=generator, seed=seed, resume=resume
        )
    if initialize:
        model.initialize_from_data(train, generator)
    if isinstance(options, NUTSOptions):  # method == "nuts"
        return _fit_nuts(model, train, options, seed=seed, writer=writer)
    return trainer.run()


def resolve_options(
    model: SequenceModel,
    method: str = "svi",
    options: SVIOptions | EMOptions | NUTSOptions | None = None,
    **keywords: Any,
) -> SVIOptions | EMOptions | NUTSOptions:
    """The options record :func:`fit` trains ``model`` with: ``options`` (default: the
    family's recipe, ``model.fit_defaults(method)``) with ``keywords`` (fields of the
    record; others are ignored) replacing its fields. ``seqzoo fit`` writes this record,
    so a run's ``config.json`` says what ``fit(model, train, **keywords)`` in Python does.

    Example:
        >>> resolve_options(model, "svi").learning_rate  # doctest: +SKIP
        0.003
    """
    if method not in _OPTIONS_CLASSES:
        raise ValueError(f"method: expected 'svi', 'em' or 'nuts', got {method!r}")
    nuts_options = {
        name: value for name, value in keywords.items() if method == "nuts" and name not in options_fields(NUTSOptions)
    }
    return _method_options(model, method, options, keywords, nuts_options)


def _method_options(
    model: SequenceModel,
    method: str,
    options: SVIOptions | EMOptions | NUTSOptions | None,
    given: dict[str, Any],
    nuts_options: dict[str, Any],
) -> SVIOptions | EMOptions | NUTSOptions:
    """The method's options record: ``options`` (or the model's ``fit_defaults``) with the given keywords."""
    options_class = _OPTIONS_CLASSES[method]
    if options is not None and not isinstance(options, options_class):
        raise TypeError(f"options: method={method!r} takes {options_class.__name__}, got {type(options).__name__}")
    # Keywords of another method's record are ignored (a caller may pass one set for all methods).
    relevant = {name: value for name, value in given.items() if name in options_fields(options_class)}
    if options is None:
        options = model.fit_defaults(method)
        if not isinstance(options, options_class):
            raise TypeError(
                f"{type(model).__name__}.fit_defaults({method!r}): expected a {options_class.__name__}, "
                f"got {type(options).__name__}"
            )
    if isinstance(options, NUTSOptions) and nuts_options:  # method == "nuts"
        relevant["sampler_options"] = {**options.sampler_options, **nuts_options}
    return dataclasses.replace(options, **relevant)


def _fit_nuts(
    model: SequenceModel, train: SequenceBatch, options: NUTSOptions, *, seed: int, writer: RunWriter
) -> FitResult:
    """``fit(method="nuts")``: one history record per chain."""
    from .mcmc import run_nuts  # imported here: Pyro's MCMC machinery is only needed for NUTS

    history: list[dict] = []

    def record(chain_record: dict) -> None:
        entry = {"step": chain_record["chain"] + 1, **chain_record}
        history.append(entry)
        for callback in options.callbacks:
            callback(entry)

    started = time.perf_counter()
    result = run_nuts(
        model,
        train,
        num_samples=options.num_samples,
        warmup_steps=options.warmup_steps,
        num_chains=options.num_chains,
        seed=seed,
        progress=options.progress,
        description=options.description,
        callbacks=[record],
        **options.sampler_options,
    )
    writer.save_model(model)
    return FitResult(
        method="nuts",
        history=history,
        best_step=options.num_chains,
        stopped="max_steps",
        seconds=time.perf_counter() - started,
        mcmc=result,
    )
