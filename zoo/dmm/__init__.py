"""Deep Markov models (Krishnan, Shalit & Sontag, AAAI 2017).

A deep Markov model keeps the stochastic, continuous latent state of a Kalman
filter but lets neural networks parameterise its transition and emission:

.. math::

    z_1 \\sim \\mathcal N(\\mu(z_0), \\sigma(z_0)), \\quad
    z_t \\mid z_{t-1} \\sim \\mathcal N(\\mu(z_{t-1}), \\operatorname{diag} \\sigma^2(z_{t-1})), \\quad
    x_t \\mid z_t \\sim p(x_t \\mid \\eta(z_t)),

with :math:`z_0` a learned vector. The guide is structured like the true
posterior, which is Markov given the observations:
:math:`q(z_{1:T} \\mid x_{1:T}) = \\prod_t q(z_t \\mid z_{t-1}, x_{\\ge t})`.

Guides (the paper's names, Table 1 of Krishnan et al. 2017):

* ``"st-r"`` ("ST-R", structured, right): a *backward* RNN summarises
  :math:`x_{t:T}`; a combiner mixes it with :math:`z_{t-1}`. This is Pyro's
  ``examples/dmm.py`` guide and the one whose conditional independences match
  the exact posterior.
* ``"st-lr"`` ("ST-LR", structured, left and right): a bidirectional RNN
  (summaries of :math:`x_{1:t}` and :math:`x_{t:T}`) plus :math:`z_{t-1}`.
* ``"mf"`` ("MF-LR", mean field): :math:`q(z_t \\mid x_{1:T})` from the
  bidirectional RNN only; no sequential sampling at all.

Each :math:`q(z_t \\mid \\cdot)` may be followed by ``num_iafs`` inverse
autoregressive flows (Kingma et al. 2016), as in Pyro's DMM tutorial.

**Estimator.** :meth:`DeepMarkovModel.loss` samples :math:`z_{1:T}` from the
guide (the only sequential part: :math:`z_t` needs :math:`z_{t-1}`), then
evaluates every transition and emission term for all steps at once. Without
flows both :math:`q(z_t \\mid z_{t-1}, x)` and :math:`p(z_t \\mid z_{t-1})` are
diagonal Gaussians, so the KL term of each step is computed analytically at the
sampled :math:`z_{t-1}` (the estimator of Pyro's ``TraceMeanField_ELBO``):
it integrates :math:`z_t` out exactly, so its variance is lower than the
single-sample Monte Carlo :math:`\\log q - \\log p` and it is still unbiased for
the ELBO and its reparameterised gradient. With flows the density of
:math:`q(z_t)` is not Gaussian and the estimator falls back to Monte Carlo.

The package reads in three parts:

* :mod:`zoo.dmm.kernels` — pure torch kernels (no Pyro): Gaussian KL and log-density,
  reduced-precision products, the guide RNN and the structured guide's draw as autograd nodes;
* :mod:`zoo.dmm.model` — :class:`DeepMarkovModel`, its transitions and :func:`length_buckets`;
* :mod:`zoo.dmm.registration` — the ``dmm`` command-line family.

Shapes: observations ``(N, T, D)`` (Bernoulli frames, Gaussian vectors with NaN
for missing entries) or ``(N, T)`` integer codes (categorical); latent paths
``(N, T, Z)``.
"""

from __future__ import annotations

from .kernels import (  # noqa: F401
    _gaussian_kl,
    _LengthOrder,
    _low_mm,
    _LowPrecisionLinear,
    _normal_log_prob,
    _run_rnn,
    _StructuredGuideLoop,
    _TanhRNN,
)
from .model import (  # noqa: F401
    EMISSIONS,
    GUIDES,
    IWAE_SEQUENCES_PER_PASS,
    OBSERVATIONS,
    RNN_PRECISIONS,
    TRANSITIONS,
    DeepMarkovModel,
    DMMPosterior,
    GatedTransition,
    LinearTransition,
    _GuidePath,
    length_buckets,
)

# The public classes' home is this package (pickles, reprs and the "class" of a saved model.json
# name zoo.dmm, as before the split).
for _cls in (DeepMarkovModel, DMMPosterior, GatedTransition, LinearTransition):
    _cls.__module__ = __name__
del _cls

__all__ = ["DeepMarkovModel", "DMMPosterior", "GUIDES", "OBSERVATIONS", "length_buckets"]

# Importing the package registers the `dmm` command-line family.
from .registration import (  # noqa: E402, F401
    _MODEL_CHOICES,
    _MODEL_NUMBERS,
    _TRAINING_SETTINGS,
    _add_arguments,
    _converted,
    _decode,
    _label,
    _settings_from_args,
    build_dmm,
)
