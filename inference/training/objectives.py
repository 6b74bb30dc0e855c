"""What a trainer minimises and how it steps: losses (ELBOs, a family's own, callables),
per-step keyword arguments (KL annealing), parameter averaging and learning-rate schedules."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from torch import Tensor

from ..batch import SequenceBatch
from ..contract import SequenceModel
from .options import ELBO_NAMES, SVIOptions, _check_open_unit_interval


# -- loss ------------------------------------------------------------------------
@dataclass(frozen=True)
class LossOutput:
    """What a custom loss returns when what it minimises is not the objective.

    Attributes:
        loss: scalar Tensor to minimise (e.g. an annealed negative ELBO).
        objective: the quantity logged and early-stopped on, in total nats,
            higher is better (e.g. the unannealed ELBO or an IWAE bound).
    """

    loss: Tensor
    objective: float | Tensor


def make_elbo(model: SequenceModel, elbo: str | ELBO = "auto", num_particles: int = 1) -> ELBO:
    """Builds the ELBO :func:`inference.fit.fit` uses.

    Args:
        model: the model; ``"auto"`` reads its ``has_enumerated_sites``.
        elbo: an :class:`~pyro.infer.elbo.ELBO` instance (returned as is) or
            ``"auto"`` (``"traceenum"`` if the model has enumerated discrete
            sites, else ``"trace"``), ``"trace"``, ``"traceenum"``,
            or ``"meanfield"`` (:class:`~pyro.infer.TraceMeanField_ELBO`, analytic
            KL where known). Other ELBOs (``TraceGraph_ELBO``, ``RenyiELBO``
            ...) are passed as instances.
        num_particles: Monte Carlo samples per loss evaluation (for a name).

    Returns:
        The ELBO.
    """
    if isinstance(elbo, ELBO):
        return elbo
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
    if elbo == "auto":
        elbo = "traceenum" if model.has_enumerated_sites else "trace"
    classes: dict[str, type[Trace_ELBO] | type[TraceEnum_ELBO]] = {
        "trace": Trace_ELBO,
        "traceenum": TraceEnum_ELBO,
        "meanfield": TraceMeanField_ELBO,
    }
    if elbo not in classes:
        raise ValueError(f"elbo: expected a pyro.infer.ELBO instance or one of {ELBO_NAMES}, got {elbo!r}")
    return classes[elbo](num_particles=num_particles)


class _ConcreteELBO(Protocol):
    """The estimators every Pyro ELBO subclass defines (the base class :class:`~pyro.infer.elbo.ELBO`
    declares neither)."""

    def loss(self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any) -> float: ...

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float: ...


class _DifferentiableELBO(_ConcreteELBO, Protocol):
    """An ELBO with ``differentiable_loss`` (not RenyiELBO nor TraceGraph_ELBO)."""

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor: ...


class _ELBOLoss:
    """An ELBO as the trainer's loss.

    ``evaluate`` returns ``(loss, objective)``: a Tensor to backpropagate, or
    ``None`` when the ELBO has no ``differentiable_loss`` (RenyiELBO,
    TraceGraph_ELBO) and its ``loss_and_grads`` has already filled the
    gradients. With step keyword arguments (an annealing factor) the logged
    objective is the unannealed ELBO, from one more evaluation without them.
    """

    def __init__(self, elbo: ELBO) -> None:
        self.elbo = cast(_ConcreteELBO, elbo)  # every ELBO subclass defines loss and loss_and_grads
        self.differentiable = callable(getattr(type(elbo), "differentiable_loss", None))

    def evaluate(self, model: SequenceModel, batch: SequenceBatch, step_kwargs: Mapping[str, Any]):
        if self.differentiable:
            # self.differentiable: its class defines differentiable_loss.
            loss = cast(_DifferentiableELBO, self.elbo).differentiable_loss(
                model.model, model.guide, batch, **step_kwargs
            )
            objective = -float(loss.detach())
        else:
            loss = None
            # Such ELBOs (RenyiELBO) backpropagate only when the trace holds "param" sites; inside
            # the module's Pyro context each PyroParam read is one, as in PyroModule.__call__.
            context = model._pyro_context  # every SequenceModel is a PyroModule
            with context:
                objective = -float(self.elbo.loss_and_grads(model.model, model.guide, batch, **step_kwargs))
            if not any(p.grad is not None for p in model.parameters() if p.requires_grad):
                raise ValueError(
                    f"loss: {type(self.elbo).__name__}.loss_and_grads computed no gradient for "
                    f"{type(model).__name__}'s parameters (it sees only PyroParam sites); use an "
                    f"ELBO with differentiable_loss or a callable loss"
                )
        if step_kwargs:
            with torch.no_grad():
                objective = -float(self.elbo.loss(model.model, model.guide, batch))
        return loss, objective


class _CallableLoss:
    """``loss(model, batch, **step_kwargs)`` returning a Tensor (objective = -loss) or a :class:`LossOutput`."""

    def __init__(self, function: Callable[..., Any], name: str) -> None:
        self.function = function
        self.name = name

    def evaluate(self, model: SequenceModel, batch: SequenceBatch, step_kwargs: Mapping[str, Any]):
        output = self.function(model, batch, **step_kwargs)
        if isinstance(output, LossOutput):
            loss, objective = output.loss, output.objective
            objective = float(objective.detach()) if isinstance(objective, Tensor) else float(objective)
        elif isinstance(output, Tensor):
            loss, objective = output, -float(output.detach())
        else:
            raise TypeError(f"{self.name}: expected a scalar Tensor or a LossOutput, got {type(output).__name__}")
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"{self.name}: expected a scalar loss Tensor, got {getattr(loss, 'shape', loss)!r}")
        if not loss.requires_grad:
            raise ValueError(f"{self.name}: the loss does not depend on any trainable parameter (no gradient)")
        return loss.reshape(()), objective


def _model_loss(model: SequenceModel, batch: SequenceBatch, **step_kwargs: Any):
    return model.loss(batch, **step_kwargs)


def build_loss(model: SequenceModel, loss: Any, num_particles: int):
    """The trainer's loss object for ``SVIOptions.loss`` (see :class:`SVIOptions`)."""
    if loss == "auto":
        defaults = model.fit_defaults("svi")
        if not isinstance(defaults, SVIOptions):
            raise TypeError(
                f"{type(model).__name__}.fit_defaults('svi'): expected a SVIOptions, got {type(defaults).__name__}"
            )
        if defaults.loss == "model":
            # The family's own estimator is what it is meant to be fitted with (the topic models'
            # Pyro guide alone collapses the topics: docs/dtm.md), in Python as on the command line.
            loss = "model"
    if loss == "model":
        if not model.supports("loss"):
            raise ValueError(f"loss: 'model' needs {type(model).__name__}.loss(batch, **step_kwargs), which it lacks")
        return _CallableLoss(_model_loss, f"{type(model).__name__}.loss")
    if isinstance(loss, (str, ELBO)):
        return _ELBOLoss(make_elbo(model, loss, num_particles))
    if callable(loss):
        return _CallableLoss(loss, "loss")
    raise ValueError(
        f"loss: expected an ELBO name {ELBO_NAMES}, a pyro.infer.ELBO, 'model' or a callable, got {loss!r}"
    )


# -- per-step keyword arguments -----------------------------------------------------
@dataclass(frozen=True)
class KLAnnealing:
    """A KL-annealing schedule for ``step_kwargs``: ``{name: a}`` with
    ``a = min(1, start + (1 - start) * epoch / epochs)``, the factor that scales
    the latent sites' log-densities in model and guide (Bowman et al., 2016;
    Krishnan et al., 2017).

    Args:
        start: the factor at epoch 0, in ``[0, 1]``.
        epochs: epochs until the factor reaches 1.
        name: the keyword ``model``/``guide`` take.

    Example:
        >>> schedule = KLAnnealing(start=0.2, epochs=4)
        >>> [schedule(epoch, 0)["annealing_factor"] for epoch in range(6)]
        [0.2, 0.4, 0.6000000000000001, 0.8, 1.0, 1.0]
    """

    start: float = 0.1
    epochs: int = 100
    name: str = "annealing_factor"

    def __post_init__(self) -> None:
        if not isinstance(self.start, (int, float)) or not 0 <= self.start <= 1:
            raise ValueError(f"KLAnnealing.start: expected a number in [0, 1], got {self.start!r}")
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"KLAnnealing.epochs: expected a positive int, got {self.epochs!r}")

    def __call__(self, epoch: int, step: int) -> dict[str, float]:
        return {self.name: min(1.0, self.start + (1.0 - self.start) * epoch / self.epochs)}


class ParameterAverage:
    """An exponential moving average of a module's parameters (Polyak averaging),
    for ``callbacks`` (updated once per epoch) or ``step_callbacks`` (once per
    optimiser step): ``average <- decay * average + (1 - decay) * current``, so it
    spans about ``1 / (1 - decay)`` updates; the first update starts it at the
    current values. The averaged weights smooth the mini-batch noise that a
    learning rate still well above zero leaves in the last iterate;
    :meth:`swapped_in` scores or saves them. ``fit(..., average_decay=...)`` keeps
    one per optimiser step and ends with the model holding it.

    Example:
        >>> layer = torch.nn.Linear(1, 1, bias=False)
        >>> average = ParameterAverage(layer, decay=0.5)
        >>> for value in (0.0, 1.0):
        ...     _ = torch.nn.init.constant_(layer.weight, value)
        ...     average({})
        >>> with average.swapped_in():
        ...     layer.weight.item()
        0.5
        >>> layer.weight.item()
        1.0
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        _check_open_unit_interval("ParameterAverage.decay", decay)
        self.module, self.decay = module, float(decay)
        self.average: dict[str, Tensor] | None = None  # created at the first update: parameters may be lazy

    def _parameters(self) -> dict[str, Tensor]:
        return {name: parameter for name, parameter in self.module.named_parameters() if parameter.requires_grad}

    def __call__(self, record: Mapping[str, Any] | None = None) -> None:
        with torch.no_grad():
            current = self._parameters()
            if self.average is None:
                self.average = {name: parameter.detach().clone() for name, parameter in current.items()}
            elif current.keys() != self.average.keys():
                raise RuntimeError(
                    f"ParameterAverage: the module's parameters changed since averaging began "
                    f"(now {len(current)}, then {len(self.average)})"
                )
            else:
                torch._foreach_lerp_(
                    list(self.average.values()), [current[name].detach() for name in self.average], 1.0 - self.decay
                )

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged tensors by parameter name (empty before the first update)."""
        return dict(self.average or {})

    def load_state_dict(self, tensors: Mapping[str, Tensor]) -> None:
        names = set(self._parameters())
        if set(tensors) != names:
            raise ValueError(
                f"ParameterAverage.load_state_dict: expected the tensors of {sorted(names)}, got {sorted(tensors)}"
            )
        self.average = {name: tensor.detach().clone() for name, tensor in tensors.items()}

    def load_into_module(self) -> None:
        """Copies the averaged values into the module's parameters (for good)."""
        if self.average is None:
            raise RuntimeError("ParameterAverage: no update yet (pass it in callbacks or step_callbacks)")
        with torch.no_grad():
            parameters = self._parameters()
            torch._foreach_copy_([parameters[name] for name in self.average], list(self.average.values()))

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the module holds the averaged parameters; after it, its own again."""
        parameters = self._parameters()
        saved = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        self.load_into_module()  # raises before any change when there is no average yet
        try:
            yield self.module
        finally:
            with torch.no_grad():
                torch._foreach_copy_([parameters[name] for name in saved], list(saved.values()))


# -- learning-rate schedules -----------------------------------------------------
class _ScheduleFactor:
    """Multiplier of the base learning rate after ``epoch`` scheduler steps:
    a linear warm-up over ``warmup`` epochs, then the named decay over the
    remaining epochs. A plain object (not a lambda) so ``LambdaLR.state_dict``
    stores its settings as JSON."""

    def __init__(self, kind: str, warmup: int, total: int, final_ratio: float) -> None:
        self.kind, self.warmup, self.total, self.final_ratio = kind, warmup, total, final_ratio

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        progress = min(1.0, (epoch - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "constant":
            return 1.0
        if self.kind == "exponential":
            return self.final_ratio**progress
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, options: SVIOptions):
    """The learning-rate scheduler of ``options.lr_schedule`` (stepped once per epoch)."""
    schedule = options.lr_schedule
    if callable(schedule):
        scheduler = schedule(optimizer)
        if not isinstance(
            scheduler, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        ):
            raise TypeError(
                f"lr_schedule: the callable must return a torch.optim.lr_scheduler scheduler, "
                f"got {type(scheduler).__name__}"
            )
        return scheduler
    if schedule == "plateau":
        # Halve the rate when the validation score (or, without one, the objective) stalls.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, options.patience // 2)
        )
    final = options.final_learning_rate
    if schedule == "exponential" and not options.warmup_epochs:
        gamma = ((final or options.learning_rate) / options.learning_rate) ** (1.0 / options.max_epochs)
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if schedule in ("cosine", "warmup_cosine"):
        final_ratio = (final or 0.0) / options.learning_rate
    else:
        final_ratio = (final or options.learning_rate) / options.learning_rate
    factor = _ScheduleFactor(schedule.replace("warmup_", ""), options.warmup_epochs, options.max_epochs, final_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
