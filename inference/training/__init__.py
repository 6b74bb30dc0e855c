"""The trainers behind :func:`inference.fit.fit`: typed options and explicit hooks.

One small trainer per method (:class:`SVITrainer`, :class:`EMTrainer`), each
configured by one typed record (:class:`SVIOptions`, :class:`EMOptions`;
:class:`NUTSOptions` for the sampler). The loops know nothing about any
family; what varies between objectives and runs plugs in through hooks:

* the **loss** — any :class:`pyro.infer.ELBO` instance, a name
  (:func:`make_elbo`), a callable ``loss(model, batch, **step_kwargs)`` or
  ``"model"`` (the family's own ``model.loss(batch, **step_kwargs)``), each
  returning a Tensor to minimise or a :class:`LossOutput`;
* **per-step keyword arguments** for ``model``/``guide`` (e.g.
  :class:`KLAnnealing`);
* the **learning-rate schedule**, weight decay and one global-norm clip;
* ``gradient_hook`` (after backward, before the clip: an all-reduce),
  ``stop_hook`` (a collective stop decision), ``statistics_hook`` (EM: a
  reduction of the E-step statistics), epoch ``callbacks`` and
  ``step_callbacks``;
* a :class:`RunWriter` through which every progress, checkpoint and
  final-model write goes.

:func:`inference.fit.fit` builds the records from its keywords; the trainers
never import it.

Modules: :mod:`~inference.training.options` (the records),
:mod:`~inference.training.objectives` (losses, annealing, averaging, schedules)
and :mod:`~inference.training.loops` (the trainers, the writer, the result).
"""

from .loops import (
    FINAL_STOPS,
    EMTrainer,
    FitResult,
    RunWriter,
    SVITrainer,
    Trainer,
    gains_accelerating,
    rounding_noise_per_step,
)
from .objectives import KLAnnealing, LossOutput, ParameterAverage, build_loss, build_scheduler, make_elbo
from .options import ELBO_NAMES, LR_SCHEDULES, EMOptions, NUTSOptions, SVIOptions, options_fields

__all__ = [
    "ELBO_NAMES",
    "FINAL_STOPS",
    "LR_SCHEDULES",
    "EMOptions",
    "EMTrainer",
    "FitResult",
    "KLAnnealing",
    "LossOutput",
    "NUTSOptions",
    "ParameterAverage",
    "RunWriter",
    "SVIOptions",
    "SVITrainer",
    "Trainer",
    "build_loss",
    "build_scheduler",
    "gains_accelerating",
    "make_elbo",
    "options_fields",
    "rounding_noise_per_step",
]
