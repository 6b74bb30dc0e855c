r"""Linear-Gaussian state-space models (the lectures' "Gaussian HMM"): Kalman filtering as a Pyro model.

The generative model of one sequence of length :math:`L`, with state dimension ``d`` and
observation dimension ``p`` (matrices act on column vectors):

.. math::

    S_1 \sim \mathcal N(\mu_0, \Sigma_0), \qquad
    S_t \mid S_{t-1} \sim \mathcal N(A S_{t-1}, \Gamma), \qquad
    X_t \mid S_t \sim \mathcal N(B S_t, \Sigma),

with ``transition_matrix`` :math:`A` ``(d, d)``, ``observation_matrix`` :math:`B` ``(p, d)``,
``transition_cov`` :math:`\Gamma` ``(d, d)``, ``observation_cov`` :math:`\Sigma` ``(p, p)``,
``initial_mean`` :math:`\mu_0` ``(d,)`` and ``initial_cov`` :math:`\Sigma_0` ``(d, d)``. Each
of them is learned or held fixed; covariances are full or diagonal. With
``initial="diffuse"`` the prior of :math:`S_1` is the exact diffuse one (Durbin & Koopman,
2012, ch. 5: infinite variance, the initial terms of the likelihood handled exactly), and
:math:`\mu_0, \Sigma_0` are not learned (they only seed :meth:`LinearGaussianSSM.sample`).

Observations are ``(N, T, p)`` floats; NaN marks a missing entry (single entries or whole
rows), marginalised exactly by the kernels of :mod:`inference.kalman`.

Priors (``prior="weak"``), proper and scaled by the data seen by ``initialize_from_data``
(``v_j`` the variance of observed coordinate ``j``, ``s^2`` a rough state variance):
:math:`A_{ij} \sim \mathcal N(0, 1)`; :math:`B_{jk} \sim \mathcal N(0, 100\,\bar v / s^2)`;
covariances inverse-Wishart with ``df = dim + 1`` and scale ``2e-3`` times the data (or
state) variance, diagonal variances inverse-gamma(1, ``1e-3`` variance) — the same
marginals; :math:`\mu_0 \sim \mathcal N(0, 100\, m^2)` and :math:`\Sigma_0 \sim
\mathrm{IW}(d + 1, 2 m^2 I)` with :math:`m^2` the state's rough second moment.
``prior="none"`` puts no prior at all (improper flat sites): every fit is then maximum
likelihood.

The Pyro model has two forms (``latent=``):

* ``"marginal"`` — the states are integrated out by the Kalman filter: the model reads
  ``pyro.factor`` of the exact log-likelihood of each sequence;
* ``"sampled"`` — the states are one sample site ``"states"`` per sequence, of event shape
  ``(T, d)``, under a Gauss–Markov chain prior; the guide draws them from the exact
  smoothing posterior given the guide's parameters (forward filter, backward sample) and
  scores them by its backward conditionals, so the ELBO equals the exact log-likelihood
  for every draw (``states_guide="exact"``); or from a learned Markov Gaussian, the
  smoothing posterior of a linear-Gaussian model with its own parameters
  (``states_guide="learned"``), for which the ELBO is a bound.

Guides over the parameters: ``"map"`` (Delta sites at point values) or ``"meanfield"``
(Normal matrices and means, log-normal variances, inverse-Wishart full covariances). EM
(:meth:`LinearGaussianSSM.e_step` and :meth:`LinearGaussianSSM.m_step`, chained by the
contract's ``em_step``; Shumway & Stoffer, 1982; Ghahramani & Hinton, 1996) maximises the
same objective in closed form.

The package reads in four parts:

* :mod:`zoo.lgssm.parameters` — the six matrices declared (shape, constraint, learned /
  fixed / held, prior), one :class:`zoo.params.ParameterSpec` each;
* :mod:`zoo.lgssm.model` — :class:`LinearGaussianSSM`: constructors, generic parameter code
  over the specs, the Pyro model and guides, exact inference through :mod:`inference.kalman`;
* :mod:`zoo.lgssm.em` — the E-step's summed sufficient statistics and the M-step;
* :mod:`zoo.lgssm.distributions` — the state-path prior, the exact smoothing posterior and
  the observation density of the ``latent="sampled"`` form.

Example:
    >>> model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=2.0, initial="prior")
    >>> batch = model.sample(2, 20, generator=torch.Generator().manual_seed(0))
    >>> model.log_prob(batch.values).shape, model.smooth(batch.values).smoothed_mean.shape
    (torch.Size([2]), torch.Size([2, 20, 1]))
"""

import torch  # noqa: F401  (the docstring examples, run by doctest in this namespace, use it)

from .distributions import _InverseWishart, _VectorToPositiveDefinite, positive_definite_matrix
from .model import Imputation, LinearGaussianSSM
from .parameters import PARAMETER_NAMES

# The public classes' home is this package (doctest, pickles and reprs name zoo.lgssm).
LinearGaussianSSM.__module__ = Imputation.__module__ = __name__

__all__ = ["Imputation", "LinearGaussianSSM", "PARAMETER_NAMES", "positive_definite_matrix"]
