r"""Discrete hidden Markov models: categorical, Gaussian and Poisson emissions.

The generative model of one sequence of length :math:`L`, with :math:`K` states:

.. math::

    \pi \sim \mathrm{Dir}(\alpha_0 \mathbf 1), \quad
    A_{i\cdot} \sim \mathrm{Dir}(\alpha \mathbf 1), \quad
    \theta_k \sim p_0(\theta), \\
    s_1 \sim \mathrm{Cat}(\pi), \quad s_t \mid s_{t-1} \sim \mathrm{Cat}(A_{s_{t-1}\cdot}), \quad
    x_t \mid s_t \sim p(x \mid \theta_{s_t}),

with emissions

* categorical: :math:`x_t \sim \mathrm{Cat}(B_{s_t\cdot})`, :math:`B_{k\cdot} \sim \mathrm{Dir}(\beta\mathbf 1)`;
* Gaussian: :math:`x_t \sim \mathcal N(\mu_{s_t}, \Sigma_{s_t})` with
  :math:`\mu_{kd} \sim \mathcal N(m_0, s_0^2)` and precisions
  :math:`\Sigma_{k,dd}^{-1} \sim \mathrm{Gamma}(a_0, b_0)` (diagonal) or
  :math:`\Sigma_k^{-1} \sim \mathrm{Wishart}(\nu_0, W_0)` (full); NaN entries are missing
  and marginalised exactly;
* Poisson: :math:`x_{td} \sim \mathrm{Poisson}(\lambda_{s_t d})`, :math:`\lambda_{kd} \sim \mathrm{Gamma}(a_0, b_0)`.

``transition[i, j] = p(s_t = j | s_{t-1} = i)`` and ``initial`` is the distribution of
:math:`s_1`. The states are either marginalised exactly by the kernels of
:mod:`inference.discrete` (``marginalize="kernel"``, the default) or left to Pyro's
``TraceEnum_ELBO`` as enumerated sample sites (``marginalize="enumerate"``); both give the
same ELBO. Guides: ``"map"`` (point estimates, Delta sites) and ``"meanfield"``
(Dirichlet rows, Normal means, log-normal diagonal precisions and rates, Wishart full precision matrices). Baum–Welch EM
(:meth:`HiddenMarkovModel.e_step` returns the expected counts and emission statistics summed
over sequences, :meth:`HiddenMarkovModel.m_step` maximises the same MAP objective from them
in closed form; the contract's ``em_step`` chains the two).

The package reads in six parts:

* :mod:`zoo.hmm.base` — :class:`HiddenMarkovModel` (the chain, its priors and guides, the Pyro
  model, exact inference, sampling and EM, emissions left to subclasses), the base of the
  vector emissions and the :class:`Forecast` record;
* :mod:`zoo.hmm.categorical` — :class:`CategoricalHMM`;
* :mod:`zoo.hmm.gaussian` — :class:`GaussianHMM`;
* :mod:`zoo.hmm.poisson` — :class:`PoissonHMM`;
* :mod:`zoo.hmm.memory` — :func:`hmm_fit_memory`, a fit's peak memory from the sizes alone;
* :mod:`zoo.hmm.registration` — what the command line needs, registered when this package
  is imported.
"""

import torch  # noqa: F401  (the docstring examples, run by doctest in this namespace, use it)

# Private helpers that tests import from zoo.hmm (and old pickles name, for _BartlettWishart).
from .base import (
    Forecast,
    HiddenMarkovModel,
    _dirichlet_mode,  # noqa: F401
    _VectorEmissionHMM,
)
from .categorical import CategoricalHMM
from .gaussian import GaussianHMM, _BartlettWishart, _kmeans_plus_plus  # noqa: F401
from .memory import hmm_fit_memory
from .poisson import PoissonHMM

# The public classes' home is this package (doctest, pickles, reprs and the class a run
# directory's model.json names say zoo.hmm, as they did before the split).
for _cls in (Forecast, HiddenMarkovModel, _VectorEmissionHMM, CategoricalHMM, GaussianHMM, PoissonHMM):
    _cls.__module__ = __name__
del _cls

__all__ = ["CategoricalHMM", "Forecast", "GaussianHMM", "HiddenMarkovModel", "PoissonHMM", "hmm_fit_memory"]

from . import registration  # noqa: E402,F401  (registers the family with zoo.registry)
