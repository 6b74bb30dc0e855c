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
(:meth:`LinearGaussianSSM.em_step`; Shumway & Stoffer, 1982; Ghahramani & Hinton, 1996)
maximises the same objective in closed form.

Example:
    >>> model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=2.0, initial="prior")
    >>> batch = model.sample(2, 20, generator=torch.Generator().manual_seed(0))
    >>> model.log_prob(batch.values).shape, model.smooth(batch.values).smoothed_mean.shape
    (torch.Size([2]), torch.Size([2, 20, 1]))
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import Transform

from inference import kalman
from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel

__all__ = ["Imputation", "LinearGaussianSSM"]

#: The model's matrices, in the order ``from_params`` takes them.
PARAMETER_NAMES = (
    "transition_matrix", "observation_matrix", "transition_cov", "observation_cov", "initial_mean", "initial_cov",
)
_INITIAL_NAMES = ("initial_mean", "initial_cov")
_COV_TYPES = ("full", "diag")
_INITIALS = ("prior", "diffuse")
_PRIORS = ("weak", "none")
_GUIDES = ("map", "meanfield")
_LATENTS = ("marginal", "sampled")
_STATES_GUIDES = ("exact", "learned")
_LOG_2PI = math.log(2 * math.pi)
#: Weak-prior constants: variances ~ InverseGamma(shape, rate * scale), matrices' entry scales.
_VARIANCE_SHAPE = 1.0
_VARIANCE_RATE = 1e-3
_TRANSITION_SCALE = 1.0
_OBSERVATION_SCALE = 10.0
_INITIAL_MEAN_SCALE = 10.0


class Imputation(NamedTuple):
    """Posterior of every observation entry given the observed ones.

    Attributes:
        mean: ``(N, T, p)`` :math:`E[X_{tj} \\mid x_{obs}]`; observed entries as given.
        var: ``(N, T, p)`` :math:`\\operatorname{Var}(X_{tj} \\mid x_{obs})`; 0 at observed entries.
        Both are zero at padded steps.
    """

    mean: Tensor
    var: Tensor


# -- covariance helpers --------------------------------------------------------------
def _constrain_tril(raw: Tensor) -> Tensor:
    """Lower-triangular with a positive diagonal: the strict lower part of ``raw`` and the exp of its diagonal."""
    return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())


def _unconstrain_tril(tril: Tensor) -> Tensor:
    return tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())


def _symmetrise(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _solve_sylvester(left_cov: Tensor, right_gram: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    """``X`` with ``X @ right_gram + ridge * left_cov @ X = rhs`` (both matrices symmetric
    positive (semi)definite; the ridge-regression M-step of a Gaussian prior on ``X``)."""
    if ridge == 0:
        return torch.linalg.solve(right_gram, rhs.transpose(-1, -2)).transpose(-1, -2)
    left_values, left_vectors = torch.linalg.eigh(left_cov)
    right_values, right_vectors = torch.linalg.eigh(right_gram)
    rotated = left_vectors.T @ rhs @ right_vectors
    rotated = rotated / (right_values[None, :] + ridge * left_values[:, None])
    return left_vectors @ rotated @ right_vectors.T


class _PositiveDefiniteMatrix(type(constraints.positive_definite)):
    """Positive-definite matrices, with a registered bijection from ``d (d + 1) / 2`` reals
    (torch registers none for its own ``positive_definite``), so NUTS can run on covariance sites."""


positive_definite_matrix = _PositiveDefiniteMatrix()


def _triangular_size(num_entries: int) -> int:
    dim = int(round((math.sqrt(8 * num_entries + 1) - 1) / 2))
    if dim * (dim + 1) // 2 != num_entries:
        raise ValueError(f"expected d (d + 1) / 2 entries for some d, got {num_entries}")
    return dim


class _VectorToPositiveDefinite(Transform):
    r"""Reals ``(..., d (d + 1) / 2)`` to ``L L^T`` with ``L`` lower triangular: the vector
    fills ``L`` row by row, its diagonal exponentiated. :math:`\log |J| = d \log 2 +
    \sum_i (d - i + 1) v_{ii}` (0-based ``i``), from :math:`\partial(L L^\top)/\partial L`."""

    domain = constraints.independent(constraints.real, 1)
    codomain = positive_definite_matrix
    bijective = True

    def __eq__(self, other):
        return isinstance(other, _VectorToPositiveDefinite)

    def __hash__(self):
        return hash(type(self))

    @staticmethod
    def _indices(dim: int, device) -> tuple[Tensor, Tensor]:
        return torch.tril_indices(dim, dim, device=device).unbind(0)

    def forward_shape(self, shape):
        dim = _triangular_size(shape[-1])
        return torch.Size(shape[:-1]) + (dim, dim)

    def inverse_shape(self, shape):
        return torch.Size(shape[:-2]) + (shape[-1] * (shape[-1] + 1) // 2,)

    def _call(self, x: Tensor) -> Tensor:
        dim = _triangular_size(x.shape[-1])
        rows, cols = self._indices(dim, x.device)
        raw = x.new_zeros(x.shape[:-1] + (dim, dim))
        raw[..., rows, cols] = x
        tril = _constrain_tril(raw)
        return tril @ tril.transpose(-1, -2)

    def _inverse(self, y: Tensor) -> Tensor:
        rows, cols = self._indices(y.shape[-1], y.device)
        return _unconstrain_tril(torch.linalg.cholesky(y))[..., rows, cols]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        dim = y.shape[-1]
        rows, cols = self._indices(dim, x.device)
        diagonal = x[..., rows == cols]  # (..., d): v_ii in order i = 0..d-1
        weights = torch.arange(dim + 1, 1, -1, dtype=x.dtype, device=x.device)  # d - i + 1 for i = 0..d-1
        return dim * math.log(2.0) + (diagonal * weights).sum(-1)


@biject_to.register(_PositiveDefiniteMatrix)
@transform_to.register(_PositiveDefiniteMatrix)
def _positive_definite_bijection(constraint):
    return _VectorToPositiveDefinite()


class _InverseWishart(TorchDistribution):
    r"""Inverse-Wishart :math:`\mathrm{IW}(\nu, \Psi)` on ``(d, d)`` covariance matrices:
    :math:`\log p(\Sigma) = \tfrac\nu2 \log|\Psi| - \tfrac{\nu d}2 \log 2 - \log\Gamma_d(\tfrac\nu2)
    - \tfrac{\nu + d + 1}2 \log|\Sigma| - \tfrac12 \operatorname{tr}(\Psi\Sigma^{-1})`;
    mean :math:`\Psi / (\nu - d - 1)`, mode :math:`\Psi / (\nu + d + 1)`. Reparametrised
    draws invert a Bartlett-construction Wishart draw of the precision."""

    arg_constraints = {"df": constraints.positive, "scale_tril": constraints.lower_cholesky}
    support = positive_definite_matrix
    has_rsample = True

    def __init__(self, df: Tensor, scale_tril: Tensor, validate_args=None) -> None:
        self.df = df
        self.scale_tril = scale_tril  # Cholesky factor of Psi
        dim = scale_tril.shape[-1]
        batch_shape = torch.broadcast_shapes(df.shape, scale_tril.shape[:-2])
        super().__init__(batch_shape, torch.Size((dim, dim)), validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        dim = self.event_shape[-1]
        scale = self.scale_tril @ self.scale_tril.transpose(-1, -2)
        return scale / (self.df - dim - 1)[..., None, None]

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return _InverseWishart(self.df.expand(batch_shape), self.scale_tril.expand(batch_shape + self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        dim = self.event_shape[-1]
        df = self.df
        value_tril = torch.linalg.cholesky(value)
        log_det_value = 2 * value_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_det_scale = 2 * self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # tr(Psi Sigma^{-1}) = ||L_Sigma^{-1} L_Psi||_F^2
        whitened = torch.linalg.solve_triangular(value_tril, self.scale_tril.expand(value_tril.shape), upper=False)
        trace = whitened.square().sum((-2, -1))
        return (0.5 * df * log_det_scale - 0.5 * df * dim * math.log(2.0) - torch.mvlgamma(0.5 * df, dim)
                - 0.5 * (df + dim + 1) * log_det_value - 0.5 * trace)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)  # (*sample, *batch, d, d)
        dim = shape[-1]
        df = self.df.expand(shape[:-2])
        offsets = torch.arange(dim, dtype=df.dtype, device=df.device)
        chi2 = dist.Chi2(df.unsqueeze(-1) - offsets).rsample()  # (*sample, *batch, d)
        noise = torch.randn(shape, dtype=df.dtype, device=df.device).tril(-1)
        bartlett = noise + torch.diag_embed(chi2.sqrt())
        # Precision W = M A A^T M^T with M M^T = Psi^{-1}; Sigma = W^{-1}.
        eye = torch.eye(dim, dtype=df.dtype, device=df.device)
        psi_inverse = torch.cholesky_inverse(self.scale_tril.expand(shape))
        factor = torch.linalg.cholesky(_symmetrise(psi_inverse)) @ bartlett
        inverse_factor = torch.linalg.solve_triangular(factor, eye.expand(shape), upper=False)
        return _symmetrise(inverse_factor.transpose(-1, -2) @ inverse_factor)


# -- the latent chain and its exact posterior (the "sampled" form) --------------------
def _step_mask(lengths: Tensor, num_steps: int) -> Tensor:
    return torch.arange(num_steps, device=lengths.device) < lengths[:, None]  # (N, T)


class _GaussianChain(TorchDistribution):
    """Prior of whole state paths ``(N, T, d)``: :math:`S_1 \\sim N(\\mu_0, \\Sigma_0)`,
    :math:`S_t \\sim N(A S_{t-1}, \\Gamma)`; steps at or after a sequence's length are
    ignored by ``log_prob`` (vectorised over time) and zero in draws."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)

    def __init__(self, initial_mean, initial_cov, transition_matrix, transition_cov, lengths, num_steps) -> None:
        self.initial_mean, self.transition_matrix = initial_mean, transition_matrix
        self.initial_tril = torch.linalg.cholesky(initial_cov)
        self.transition_tril = torch.linalg.cholesky(transition_cov)
        self.lengths = lengths
        dim = initial_mean.shape[-1]
        super().__init__(lengths.shape, torch.Size((num_steps, dim)))

    def log_prob(self, states: Tensor) -> Tensor:
        valid = _step_mask(self.lengths, self.event_shape[0]).to(states.dtype)  # (N, T)
        first = dist.MultivariateNormal(self.initial_mean, scale_tril=self.initial_tril).log_prob(states[..., 0, :])
        predicted = states[..., :-1, :] @ self.transition_matrix.T
        steps = dist.MultivariateNormal(torch.zeros_like(self.initial_mean), scale_tril=self.transition_tril)
        rest = steps.log_prob(states[..., 1:, :] - predicted) * valid[:, 1:]
        return first * valid[:, 0] + rest.sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            noise = torch.randn(shape, dtype=self.initial_mean.dtype, device=self.initial_mean.device)
            state = self.initial_mean + (self.initial_tril @ noise[..., 0, :, None])[..., 0]
            states = [state]
            for t in range(1, shape[-2]):
                state = state @ self.transition_matrix.T + (self.transition_tril @ noise[..., t, :, None])[..., 0]
                states.append(state)
            paths = torch.stack(states, -2)
            return paths * _step_mask(self.lengths, shape[-2])[..., None].to(paths.dtype)


class _SmoothingPosterior(TorchDistribution):
    """The exact posterior :math:`p(s_{1:L} \\mid x_{1:L})` of a linear-Gaussian model, from
    its filter: :math:`S_L \\sim N(m_L, P_L)` and :math:`S_t \\mid S_{t+1} \\sim N(m_t + J_t
    (S_{t+1} - m_{t+1|t}), P_t - J_t P_{t+1|t} J_t^\\top)`. Draws are reparametrised
    (backward sampling); ``log_prob`` sums the same backward conditionals, vectorised over time."""

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, filtered: kalman.KalmanFiltered, transition_matrix: Tensor, lengths: Tensor) -> None:
        mean, cov = filtered.filtered_mean, filtered.filtered_cov  # (N, T, d), (N, T, d, d)
        num_seq, num_steps, dim = mean.shape
        eye = torch.eye(dim, dtype=mean.dtype, device=mean.device)
        valid = _step_mask(lengths, num_steps)
        has_next = torch.zeros_like(valid)
        has_next[:, :-1] = valid[:, 1:]  # step t has a real successor
        predicted_next = torch.zeros_like(filtered.predicted_cov)
        predicted_next[:, :-1] = filtered.predicted_cov[:, 1:]
        predicted_next = torch.where(has_next[..., None, None], predicted_next, eye)
        predicted_mean_next = torch.zeros_like(mean)
        predicted_mean_next[:, :-1] = filtered.predicted_mean[:, 1:]
        # J_t = P_t A^T P_{t+1|t}^{-1}
        gain = torch.cholesky_solve(transition_matrix @ cov, torch.linalg.cholesky(predicted_next)).transpose(-1, -2)
        gain = torch.where(has_next[..., None, None], gain, torch.zeros_like(gain))
        cond_cov = torch.where(has_next[..., None, None], cov - gain @ predicted_next @ gain.transpose(-1, -2), cov)
        cond_cov = torch.where(valid[..., None, None], _symmetrise(cond_cov), eye)
        self.filtered_mean, self.gain, self.predicted_mean_next = mean, gain, predicted_mean_next
        self.cond_tril = torch.linalg.cholesky(cond_cov)
        self.valid, self.has_next = valid, has_next
        super().__init__(torch.Size((num_seq,)), torch.Size((num_steps, dim)))

    def _cond_mean(self, next_states: Tensor) -> Tensor:
        return self.filtered_mean + (self.gain @ (next_states - self.predicted_mean_next)[..., None])[..., 0]

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        dtype, device = self.filtered_mean.dtype, self.filtered_mean.device
        noise = torch.randn(shape, dtype=dtype, device=device)
        num_steps = shape[-2]
        state = torch.zeros(shape[:-2] + shape[-1:], dtype=dtype, device=device)
        states = []
        for t in range(num_steps - 1, -1, -1):
            cond_mean = self.filtered_mean[:, t] + (self.gain[:, t] @ (state - self.predicted_mean_next[:, t])[..., None])[..., 0]
            state = cond_mean + (self.cond_tril[:, t] @ noise[..., t, :, None])[..., 0]
            state = state * self.valid[:, t, None].to(state.dtype)
            states.append(state)
        return torch.stack(states[::-1], -2)

    def log_prob(self, states: Tensor) -> Tensor:
        next_states = torch.cat([states[..., 1:, :], torch.zeros_like(states[..., :1, :])], -2)
        residual = states - self._cond_mean(next_states)
        whitened = torch.linalg.solve_triangular(self.cond_tril, residual[..., None], upper=False)[..., 0]
        log_det = self.cond_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        dim = states.shape[-1]
        log_density = -0.5 * whitened.square().sum(-1) - log_det - 0.5 * dim * _LOG_2PI
        return (log_density * self.valid.to(states.dtype)).sum(-1)


def _observation_log_density(values: Tensor, lengths: Tensor, states: Tensor, observation_matrix: Tensor,
                             observation_cov: Tensor) -> Tensor:
    """``(..., N)`` :math:`\\sum_t \\log N(x_t; B s_t, \\Sigma)` over the observed entries of real steps."""
    num_steps, obs_dim = values.shape[-2:]
    observed = ~values.isnan() & _step_mask(lengths, num_steps)[..., None]
    mask = observed.to(values.dtype)
    filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
    residual = (filled - states @ observation_matrix.T) * mask
    # Missing entries get unit variance, uncorrelated with the rest, and a zero residual:
    # each adds exactly log N(0; 0, 1), taken back below.
    cov = observation_cov * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1 - mask)
    tril = torch.linalg.cholesky(cov)
    whitened = torch.linalg.solve_triangular(tril, residual[..., None], upper=False)[..., 0]
    log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    per_step = -0.5 * (whitened.square().sum(-1) + log_det + mask.sum(-1) * _LOG_2PI)
    return per_step.sum(-1)


# -- the model -------------------------------------------------------------------------
class LinearGaussianSSM(SequenceModel):
    r"""Linear-Gaussian state-space model with learnable or fixed matrices.

    Args:
        state_dim: ``d``.
        obs_dim: ``p``.
        transition_cov_type: ``"full"`` or ``"diag"`` (learned :math:`\Gamma`).
        observation_cov_type: ``"full"`` or ``"diag"`` (learned :math:`\Sigma`).
        initial: ``"prior"`` (:math:`S_1 \sim N(\mu_0, \Sigma_0)`, learnable) or ``"diffuse"``
            (exact diffuse initialisation; :math:`\mu_0, \Sigma_0` then only seed ``sample``).
        prior: ``"weak"`` (proper, data-scaled priors: MAP fits, NUTS) or ``"none"``
            (maximum likelihood; improper flat sites).
        guide: ``"map"`` or ``"meanfield"``.
        latent: ``"marginal"`` (states integrated out in ``model``) or ``"sampled"`` (states
            as a sample site ``"states"``).
        states_guide: with ``latent="sampled"``, the guide of the states: ``"exact"`` (the
            smoothing posterior at the guide's parameter draw) or ``"learned"`` (a learned
            Markov Gaussian: the smoothing posterior of a linear-Gaussian model with its own
            ``guide_states_*`` parameters, started at the model's point values).
        fixed: names among :data:`PARAMETER_NAMES` mapped to values held constant (not
            learned, not sample sites).

    Sample sites of ``model()`` (the learned parameters, in this order):
    ``transition_matrix`` ``(d, d)``, ``transition_cov`` ``(d, d)`` or ``transition_var``
    ``(d,)`` (diagonal), ``observation_matrix`` ``(p, d)``, ``observation_cov`` ``(p, p)`` or
    ``observation_var`` ``(p,)``, ``initial_mean`` ``(d,)``, ``initial_cov`` ``(d, d)``.

    Example:
        >>> truth = LinearGaussianSSM.from_params(
        ...     torch.tensor([[0.9]]), torch.tensor([[1.0], [0.5]]), torch.tensor([[0.2]]),
        ...     torch.eye(2), torch.zeros(1), torch.eye(1))
        >>> batch = truth.sample(3, 50, generator=torch.Generator().manual_seed(0))
        >>> model = LinearGaussianSSM(1, 2, observation_cov_type="diag")
        >>> from inference.fit import fit
        >>> result = fit(model, batch, method="em", max_iterations=20, progress=False)
        >>> model.impute(batch.values).mean.shape
        torch.Size([3, 50, 2])
    """

    family = "lgssm"
    supports_em = True
    exact_likelihood = True

    def __init__(self, state_dim: int, obs_dim: int, *, transition_cov_type: str = "full",
                 observation_cov_type: str = "full", initial: str = "prior", prior: str = "weak",
                 guide: str = "map", latent: str = "marginal", states_guide: str = "exact",
                 fixed: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, value in (("state_dim", state_dim), ("obs_dim", obs_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value, allowed in (("transition_cov_type", transition_cov_type, _COV_TYPES),
                                     ("observation_cov_type", observation_cov_type, _COV_TYPES),
                                     ("initial", initial, _INITIALS), ("prior", prior, _PRIORS),
                                     ("guide", guide, _GUIDES), ("latent", latent, _LATENTS),
                                     ("states_guide", states_guide, _STATES_GUIDES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        if latent == "sampled" and initial == "diffuse":
            raise ValueError("latent='sampled' needs a proper prior on the first state; use initial='prior' "
                             "(the diffuse prior is improper, so the states cannot be sample sites)")
        self.state_dim, self.obs_dim = state_dim, obs_dim
        self.transition_cov_type, self.observation_cov_type = transition_cov_type, observation_cov_type
        self.initial, self.prior_type, self.guide_type, self.latent = initial, prior, guide, latent
        self.states_guide = states_guide
        d, p = state_dim, obs_dim
        self._shapes = {"transition_matrix": (d, d), "observation_matrix": (p, d), "transition_cov": (d, d),
                        "observation_cov": (p, p), "initial_mean": (d,), "initial_cov": (d, d)}
        fixed = dict(fixed or {})
        dtype = torch.get_default_dtype()
        for name in fixed:
            if name not in PARAMETER_NAMES:
                raise ValueError(f"fixed: unknown parameter {name!r}; expected names among {PARAMETER_NAMES}")
        self.fixed_names = tuple(name for name in PARAMETER_NAMES if name in fixed)
        for name in self.fixed_names:
            value = torch.as_tensor(fixed[name])
            value = value.to(value.dtype if value.is_floating_point() else dtype)
            self._check_value(f"fixed[{name!r}]", name, value)
            self.register_buffer(f"fixed_{name}", value.clone())
        # Unconstrained storage of every non-fixed matrix: parameters when learned, buffers when
        # not (the diffuse prior's mean and covariance, which only seed ``sample``).
        defaults = {
            "transition_weight": ("transition_matrix", 0.9 * torch.eye(d)),
            "observation_weight": ("observation_matrix", torch.eye(p, d)),
            "initial_loc": ("initial_mean", torch.zeros(d)),
            "initial_scale_tril_unconstrained": ("initial_cov", torch.zeros(d, d)),
        }
        if transition_cov_type == "diag":
            defaults["transition_log_var"] = ("transition_cov", torch.zeros(d))
        else:
            defaults["transition_scale_tril_unconstrained"] = ("transition_cov", torch.zeros(d, d))
        if observation_cov_type == "diag":
            defaults["observation_log_var"] = ("observation_cov", torch.zeros(p))
        else:
            defaults["observation_scale_tril_unconstrained"] = ("observation_cov", torch.zeros(p, p))
        self._storage: dict[str, str] = {}
        for key, (name, value) in defaults.items():
            if name in self.fixed_names:
                continue
            self._storage[name] = key
            if self._is_learned(name):
                self.register_parameter(key, nn.Parameter(value))
            else:
                self.register_buffer(key, value)
        self.register_buffer("data_mean", torch.zeros(p))
        self.register_buffer("data_var", torch.ones(p))
        #: Whether the point values were given explicitly (from_params): ``fit`` then keeps them.
        self.values_given = False
        if self.guide_type == "meanfield":
            self._sync_variational_to_point(create=True)
        if self.latent == "sampled" and self.states_guide == "learned":
            self._sync_states_guide(create=True)

    # -- constructors --------------------------------------------------------------
    @classmethod
    def from_params(cls, transition_matrix, observation_matrix, transition_cov, observation_cov, initial_mean,
                    initial_cov, *, learn: Iterable[str] = PARAMETER_NAMES, **kwargs) -> "LinearGaussianSSM":
        """A model with the given matrices (the lecture's A, B, Γ, Σ and the prior of ``S_1``).

        Args:
            transition_matrix: ``(d, d)``; observation_matrix: ``(p, d)``; transition_cov:
                ``(d, d)``; observation_cov: ``(p, p)``; initial_mean: ``(d,)``;
                initial_cov: ``(d, d)``. Tensors, arrays or nested lists; the model takes
                the dtype of ``transition_matrix`` (the default dtype if it is not float).
            learn: names that are learned (starting from the given values); the others are
                held fixed.
            **kwargs: the constructor's keyword arguments (``fixed`` is not allowed).

        Returns:
            The model; ``fit`` keeps the given values as its starting point.
        """
        if "fixed" in kwargs:
            raise ValueError("fixed: not accepted by from_params; list the learned names in learn= instead")
        learn = tuple(learn)
        for name in learn:
            if name not in PARAMETER_NAMES:
                raise ValueError(f"learn: unknown parameter {name!r}; expected names among {PARAMETER_NAMES}")
        first = torch.as_tensor(transition_matrix)
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        given = dict(zip(PARAMETER_NAMES, (transition_matrix, observation_matrix, transition_cov, observation_cov,
                                           initial_mean, initial_cov)))
        given = {name: torch.as_tensor(value).to(dtype) for name, value in given.items()}
        a, b = given["transition_matrix"], given["observation_matrix"]
        if a.dim() != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"transition_matrix: expected shape (d, d), got {tuple(a.shape)}")
        if b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise ValueError(f"observation_matrix: expected shape (p, {a.shape[0]}), got {tuple(b.shape)}")
        fixed = {name: value for name, value in given.items() if name not in learn}
        model = cls(a.shape[0], b.shape[0], fixed=fixed, **kwargs).to(dtype)
        model.set_values({name: value for name, value in given.items() if name not in fixed})
        return model

    @classmethod
    def local_level(cls, level_var: float = 1.0, noise_var: float = 1.0, *, initial: str = "diffuse",
                    initial_mean: float = 0.0, initial_var: float = 1e6, dtype: torch.dtype | None = None,
                    **kwargs) -> "LinearGaussianSSM":
        """Random walk plus noise: ``d = p = 1``, ``A = B = 1`` fixed; learns the level
        variance :math:`\\sigma^2_\\eta` (``transition_cov``) and the noise variance
        :math:`\\sigma^2_\\varepsilon` (``observation_cov``) from the given starting values
        (diagonal covariance types unless given: sites ``transition_var`` and ``observation_var``).
        ``initial_mean``/``initial_var`` are the prior of :math:`S_1` with
        ``initial="prior"`` (held fixed) and seed ``sample`` with ``initial="diffuse"``."""
        dtype = dtype or torch.get_default_dtype()
        kwargs.setdefault("transition_cov_type", "diag")
        kwargs.setdefault("observation_cov_type", "diag")
        one = torch.ones(1, 1, dtype=dtype)
        return cls.from_params(one, one, level_var * one, noise_var * one, torch.full((1,), float(initial_mean), dtype=dtype),
                               initial_var * one, learn=("transition_cov", "observation_cov"), initial=initial, **kwargs)

    @classmethod
    def local_linear_trend(cls, level_var: float = 1.0, slope_var: float = 1.0, noise_var: float = 1.0, *,
                           initial: str = "diffuse", initial_mean=(0.0, 0.0), initial_var: float = 1e6,
                           dtype: torch.dtype | None = None, **kwargs) -> "LinearGaussianSSM":
        """Level and slope: ``d = 2``, ``A = [[1, 1], [0, 1]]``, ``B = [[1, 0]]`` fixed, a diagonal
        transition covariance ``diag(level_var, slope_var)`` and ``noise_var`` learned."""
        dtype = dtype or torch.get_default_dtype()
        kwargs.setdefault("transition_cov_type", "diag")
        return cls.from_params(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=dtype), torch.tensor([[1.0, 0.0]], dtype=dtype),
                               torch.diag(torch.tensor([level_var, slope_var], dtype=dtype)),
                               torch.tensor([[noise_var]], dtype=dtype), torch.as_tensor(initial_mean, dtype=dtype),
                               initial_var * torch.eye(2, dtype=dtype), learn=("transition_cov", "observation_cov"),
                               initial=initial, **kwargs)

    # -- parameters ---------------------------------------------------------------
    @property
    def _dtype(self) -> torch.dtype:
        return self.data_mean.dtype

    @property
    def _device(self) -> torch.device:
        return self.data_mean.device

    def _is_learned(self, name: str) -> bool:
        if name in self.fixed_names:
            return False
        return not (name in _INITIAL_NAMES and self.initial == "diffuse")

    def _site_name(self, name: str) -> str:
        if name == "transition_cov" and self.transition_cov_type == "diag":
            return "transition_var"
        if name == "observation_cov" and self.observation_cov_type == "diag":
            return "observation_var"
        return name

    def _site_names(self) -> dict[str, str]:
        """Site name -> matrix name for every learned matrix, in the order ``model()`` samples them."""
        order = ("transition_matrix", "transition_cov", "observation_matrix", "observation_cov", "initial_mean",
                 "initial_cov")
        return {self._site_name(name): name for name in order if self._is_learned(name)}

    def _check_value(self, label: str, name: str, value: Tensor) -> None:
        shape = self._shapes[name]
        if value.shape != torch.Size(shape):
            raise ValueError(f"{label}: expected shape {shape}, got {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{label}: expected finite values")
        if name.endswith("_cov"):
            if not torch.allclose(value, value.T, rtol=1e-6, atol=1e-8 * float(value.abs().max().clamp(min=1))):
                raise ValueError(f"{label}: expected a symmetric matrix")
            if torch.linalg.eigvalsh(value.double()).min() <= 0:
                raise ValueError(f"{label}: expected a positive-definite matrix")

    def _stored_value(self, name: str) -> Tensor:
        """Point value of a non-fixed matrix from its unconstrained storage."""
        raw = getattr(self, self._storage[name])
        key = self._storage[name]
        if key.endswith("_log_var"):
            return torch.diag_embed(raw.exp())
        if key.endswith("_scale_tril_unconstrained"):
            tril = _constrain_tril(raw)
            return tril @ tril.T
        return raw

    def _site_point(self) -> dict[str, Tensor]:
        """Point value of every site: MAP values (``guide="map"``) or the variational means."""
        if self.guide_type == "meanfield":
            return {site: q.mean for site, q in self._variational().items()}
        return {site: self._storage_site_value(name) for site, name in self._site_names().items()}

    def _storage_site_value(self, name: str) -> Tensor:
        value = self._stored_value(name)
        return value.diagonal() if self._site_name(name) != name else value

    def _params_from_sites(self, sites: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All six matrices from values of the sites (diagonal sites as vectors), the fixed
        values and the stored diffuse-start values."""
        params = {}
        for name in PARAMETER_NAMES:
            site = self._site_name(name)
            if name in self.fixed_names:
                params[name] = getattr(self, f"fixed_{name}")
            elif self._is_learned(name):
                value = sites[site]
                params[name] = torch.diag_embed(value) if site != name else value
            else:
                params[name] = self._stored_value(name)
        return params

    def _point(self) -> dict[str, Tensor]:
        """The six matrices at the point values."""
        return self._params_from_sites(self._site_point())

    @property
    def transition_matrix(self) -> Tensor:
        """``(d, d)`` :math:`A`, acting on column states: :math:`E[S_t \\mid S_{t-1}] = A S_{t-1}`."""
        return self._point()["transition_matrix"]

    @property
    def observation_matrix(self) -> Tensor:
        """``(p, d)`` :math:`B`: :math:`E[X_t \\mid S_t] = B S_t`."""
        return self._point()["observation_matrix"]

    @property
    def transition_cov(self) -> Tensor:
        """``(d, d)`` :math:`\\Gamma`."""
        return self._point()["transition_cov"]

    @property
    def observation_cov(self) -> Tensor:
        """``(p, p)`` :math:`\\Sigma`."""
        return self._point()["observation_cov"]

    @property
    def initial_mean(self) -> Tensor:
        """``(d,)`` mean of :math:`S_1`."""
        return self._point()["initial_mean"]

    @property
    def initial_cov(self) -> Tensor:
        """``(d, d)`` covariance of :math:`S_1`."""
        return self._point()["initial_cov"]

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Writes point values of non-fixed matrices (full ``(d, d)``/``(p, p)`` shapes for
        covariances; a diagonal covariance type needs a diagonal matrix)."""
        with torch.no_grad():
            for name, value in values.items():
                if name not in PARAMETER_NAMES:
                    raise ValueError(f"values: unknown parameter {name!r}; expected names among {PARAMETER_NAMES}")
                if name in self.fixed_names:
                    raise ValueError(f"values: {name!r} is fixed; build a model that learns it to change it")
                value = torch.as_tensor(value).to(dtype=self._dtype, device=self._device)
                self._check_value(name, name, value)
                key = self._storage[name]
                raw = getattr(self, key)
                if key.endswith("_log_var"):
                    if not torch.equal(value, torch.diag_embed(value.diagonal())):
                        raise ValueError(f"{name}: expected a diagonal matrix (the model's covariance type is 'diag')")
                    raw.data.copy_(value.diagonal().log())
                elif key.endswith("_scale_tril_unconstrained"):
                    raw.data.copy_(_unconstrain_tril(torch.linalg.cholesky(_symmetrise(value))))
                else:
                    raw.data.copy_(value)
            self._sync_variational_to_point()
            self._sync_states_guide()
        self.values_given = True

    # -- the contract's parameter sites -----------------------------------------------
    def _state_scale(self) -> tuple[Tensor, Tensor]:
        """Rough state variance ``s^2`` and second moment ``m^2`` implied by the data scale:
        through a fixed ``B`` (``mean(v) / mean_j ||B_j||_1^2``), else 1 (a learned ``B``
        sets the state's units)."""
        var = self.data_var.mean()
        second = (self.data_var + self.data_mean.square()).mean()
        if "observation_matrix" in self.fixed_names:
            gain = self.fixed_observation_matrix.abs().sum(-1).square().mean().clamp(min=1e-12)
            return var / gain, second / gain
        one = torch.ones((), dtype=self._dtype, device=self._device)
        return one, one

    def _priors(self) -> dict[str, dist.Distribution]:
        """Prior of every site (improper flat ones with ``prior="none"``), in sampling order."""
        d, p = self.state_dim, self.obs_dim
        dtype, device = self._dtype, self._device
        priors: dict[str, dist.Distribution] = {}
        state_var, state_second = self._state_scale()
        for site, name in self._site_names().items():
            if self.prior_type == "none":
                shape = torch.Size(self._shapes[name] if site == name else self._shapes[name][:1])
                if site != name:
                    support = constraints.independent(constraints.positive, 1)
                elif name.endswith("_cov"):
                    support = positive_definite_matrix
                else:
                    support = constraints.independent(constraints.real, len(shape))
                priors[site] = dist.ImproperUniform(support, torch.Size(), shape)
                continue
            if name == "transition_matrix":
                priors[site] = dist.Normal(torch.zeros(d, d, dtype=dtype, device=device), _TRANSITION_SCALE).to_event(2)
            elif name == "observation_matrix":
                scale = _OBSERVATION_SCALE * (self.data_var.mean() / state_var).sqrt()
                priors[site] = dist.Normal(torch.zeros(p, d, dtype=dtype, device=device), scale).to_event(2)
            elif name == "initial_mean":
                scale = _INITIAL_MEAN_SCALE * state_second.sqrt()
                priors[site] = dist.Normal(torch.zeros(d, dtype=dtype, device=device), scale).to_event(1)
            else:
                if name == "observation_cov":
                    variances = self.data_var
                elif name == "transition_cov":
                    variances = state_var.expand(d)
                else:  # initial_cov: a proper prior of the state's magnitude
                    variances = (state_second / _VARIANCE_RATE).expand(d)
                dim = variances.shape[0]
                if site != name:  # diagonal: inverse-gamma variances
                    priors[site] = dist.InverseGamma(torch.full_like(variances, _VARIANCE_SHAPE),
                                                     _VARIANCE_RATE * variances).to_event(1)
                else:  # inverse-Wishart with the same diagonal marginals
                    df = torch.tensor(dim - 1 + 2 * _VARIANCE_SHAPE, dtype=dtype, device=device)
                    priors[site] = _InverseWishart(df, torch.diag_embed((2 * _VARIANCE_RATE * variances).sqrt()))
        return priors

    def parameter_sites(self) -> dict[str, dist.Distribution]:
        return self._priors()

    def parameter_values(self) -> dict[str, Tensor]:
        return {site: value.detach() for site, value in self._site_point().items()}

    def set_parameter_values(self, values: Mapping[str, Tensor]) -> None:
        sites = self._site_names()
        full = {}
        for site, value in values.items():
            if site not in sites:
                raise ValueError(f"values: unknown site {site!r}; this model's sites are {tuple(sites)}")
            name = sites[site]
            value = torch.as_tensor(value, dtype=self._dtype, device=self._device)
            full[name] = torch.diag_embed(value) if site != name else value
        self.set_values(full)

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"transition_matrix": ("state", "state_from"), "observation_matrix": ("obs", "state"),
                "transition_cov": ("state", "state_bis"), "transition_var": ("state",),
                "observation_cov": ("obs", "obs_bis"), "observation_var": ("obs",),
                "initial_mean": ("state",), "initial_cov": ("state", "state_bis")}
        return {site: dims[site] for site in self._site_names()}

    def log_prior(self, sites: Mapping[str, Tensor] | None = None) -> Tensor:
        """Log prior density of the site values (0 with ``prior="none"``)."""
        sites = self._site_point() if sites is None else sites
        total = torch.zeros((), dtype=self._dtype, device=self._device)
        if self.prior_type == "none":
            return total
        for site, prior in self._priors().items():
            total = total + prior.log_prob(sites[site]).sum()
        return total

    @property
    def num_parameters(self) -> int:
        count = 0
        for site, name in self._site_names().items():
            shape = self._shapes[name]
            if site != name:
                count += shape[0]
            elif name.endswith("_cov"):
                count += shape[0] * (shape[0] + 1) // 2
            else:
                count += math.prod(shape)
        return count

    # -- variational guide -----------------------------------------------------------
    def _variational(self) -> dict[str, dist.Distribution]:
        q = {}
        for site, name in self._site_names().items():
            if site != name:
                q[site] = dist.LogNormal(getattr(self, f"guide_{site}_loc"),
                                         getattr(self, f"guide_{site}_log_scale").exp()).to_event(1)
            elif name.endswith("_cov"):
                dim = self._shapes[name][0]
                df = dim + 1 + getattr(self, f"guide_{site}_log_excess_df").exp()
                q[site] = _InverseWishart(df, _constrain_tril(getattr(self, f"guide_{site}_scale_tril_unconstrained")))
            else:
                loc = getattr(self, f"guide_{site}_loc")
                q[site] = dist.Normal(loc, getattr(self, f"guide_{site}_log_scale").exp()).to_event(loc.dim())
        return q

    def _sync_variational_to_point(self, create: bool = False) -> None:
        """Centres the mean-field factors on the current point values (each factor's mean is
        the point value), fairly confident: scales e^-3 on the log scale, inverse-Wishart
        ``df = dim + 1 + 100``."""
        if self.guide_type != "meanfield":
            return
        strength, log_scale = 100.0, -3.0
        values = {}
        for site, name in self._site_names().items():
            value = self._storage_site_value(name).detach()
            if site != name:
                values[f"guide_{site}_loc"] = value.log() - 0.5 * math.exp(2 * log_scale)
                values[f"guide_{site}_log_scale"] = torch.full_like(value, log_scale)
            elif name.endswith("_cov"):
                values[f"guide_{site}_log_excess_df"] = torch.tensor(math.log(strength), dtype=value.dtype,
                                                                     device=value.device)
                values[f"guide_{site}_scale_tril_unconstrained"] = _unconstrain_tril(
                    torch.linalg.cholesky(strength * value))
            else:
                values[f"guide_{site}_loc"] = value.clone()
                values[f"guide_{site}_log_scale"] = torch.full_like(value, log_scale)
        for key, value in values.items():
            if create:
                self.register_parameter(key, nn.Parameter(value))
            else:
                getattr(self, key).data.copy_(value)

    def guide(self, batch: SequenceBatch) -> None:
        if self.guide_type == "meanfield":
            sites = {site: pyro.sample(site, q) for site, q in self._variational().items()}
        else:
            sites = {}
            for site, value in self._site_point().items():
                sites[site] = pyro.sample(site, dist.Delta(value, event_dim=value.dim()))
        if self.latent == "sampled":
            values = self._check_observations(batch.values, "batch.values")
            params = self._params_from_sites(sites) if self.states_guide == "exact" else self._states_guide_params()
            filtered = kalman.kalman_filter(*self._kernel_args(params), values, batch.lengths)
            with sequence_plate(batch):
                pyro.sample("states", _SmoothingPosterior(filtered, params["transition_matrix"], batch.lengths))

    def _states_guide_params(self) -> dict[str, Tensor]:
        """The learned Markov Gaussian guide's own linear-Gaussian model, whose smoothing
        posterior is the guide of the states."""
        def cov(key):
            tril = _constrain_tril(getattr(self, key))
            return tril @ tril.T

        return {"transition_matrix": self.guide_states_transition_matrix, "transition_cov": cov("guide_states_transition_tril"),
                "observation_matrix": self.guide_states_observation_matrix,
                "observation_cov": cov("guide_states_observation_tril"),
                "initial_mean": self.guide_states_initial_mean, "initial_cov": cov("guide_states_initial_tril")}

    def _sync_states_guide(self, create: bool = False) -> None:
        """Sets the learned states guide to the smoothing posterior at the current point values
        (where it is exact); SVI then moves it on its own."""
        if not (self.latent == "sampled" and self.states_guide == "learned"):
            return
        point = {name: value.detach() for name, value in self._point().items()}
        values = {"guide_states_transition_matrix": point["transition_matrix"].clone(),
                  "guide_states_transition_tril": _unconstrain_tril(torch.linalg.cholesky(point["transition_cov"])),
                  "guide_states_observation_matrix": point["observation_matrix"].clone(),
                  "guide_states_observation_tril": _unconstrain_tril(torch.linalg.cholesky(point["observation_cov"])),
                  "guide_states_initial_mean": point["initial_mean"].clone(),
                  "guide_states_initial_tril": _unconstrain_tril(torch.linalg.cholesky(point["initial_cov"]))}
        for key, value in values.items():
            if create:
                self.register_parameter(key, nn.Parameter(value))
            else:
                getattr(self, key).data.copy_(value)

    # -- the Pyro model ----------------------------------------------------------------
    def model(self, batch: SequenceBatch) -> None:
        values = self._check_observations(batch.values, "batch.values")
        sites = {site: pyro.sample(site, prior) for site, prior in self._priors().items()}
        params = self._params_from_sites(sites)
        with sequence_plate(batch):
            if self.latent == "marginal":
                pyro.factor("observations", self._log_marginal(params, values, batch.lengths))
            else:
                chain = _GaussianChain(params["initial_mean"], params["initial_cov"], params["transition_matrix"],
                                       params["transition_cov"], batch.lengths, values.shape[1])
                states = pyro.sample("states", chain)
                pyro.factor("observations", _observation_log_density(
                    values, batch.lengths, states, params["observation_matrix"], params["observation_cov"]))

    # -- the kernel adapter --------------------------------------------------------------
    @staticmethod
    def _kernel_args(params: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """The matrices in the order of :mod:`inference.kalman`'s functions."""
        return (params["transition_matrix"], params["transition_cov"], params["observation_matrix"],
                params["observation_cov"], params["initial_mean"], params["initial_cov"])

    def _call_kernel(self, kernel, values: Tensor, lengths: Tensor | None, params=None, **kwargs):
        if self.initial == "diffuse":
            kwargs["diffuse"] = True
        params = self._point() if params is None else params
        return kernel(*self._kernel_args(params), values, lengths, **kwargs)

    def _log_marginal(self, params, values, lengths) -> Tensor:
        return self._call_kernel(kalman.log_marginal, values, lengths, params)

    def _check_observations(self, values, name: str) -> Tensor:
        values = torch.as_tensor(values, device=self._device)
        if values.dim() != 3 or values.shape[-1] != self.obs_dim or not values.is_floating_point():
            raise ValueError(f"{name}: expected float observations of shape (N, T, {self.obs_dim}) (NaN = missing), "
                             f"got {values.dtype} of shape {tuple(values.shape)}")
        if values.shape[1] < 1:
            raise ValueError(f"{name}: expected at least one time step, got shape {tuple(values.shape)}")
        if torch.isinf(values).any():
            raise ValueError(f"{name}: expected finite values or NaN (missing), got an infinite entry")
        return values.to(self._dtype)

    def _inputs(self, values, lengths) -> tuple[Tensor, Tensor]:
        values = self._check_observations(values, "values")
        if lengths is None:
            lengths = torch.full(values.shape[:1], values.shape[1], dtype=torch.long, device=values.device)
        else:
            lengths = torch.as_tensor(lengths, device=values.device)
            if lengths.shape != values.shape[:1] or lengths.is_floating_point() or lengths.dtype == torch.bool:
                raise ValueError(f"lengths: expected int64 of shape ({values.shape[0]},), got {lengths.dtype} "
                                 f"of shape {tuple(lengths.shape)}")
            lengths = lengths.long()
        return values, lengths

    # -- exact inference at the point values ------------------------------------------------
    def log_prob(self, values, lengths=None, *, burn: int = 0) -> Tensor:
        """``(N,)`` exact log-likelihood :math:`\\log p(x_{burn+1:L} \\mid x_{1:burn})` of each
        sequence at the point parameters (``burn=0``: the whole sequence)."""
        if not isinstance(burn, int) or isinstance(burn, bool) or burn < 0:
            raise ValueError(f"burn: expected a non-negative int, got {burn!r}")
        values, lengths = self._inputs(values, lengths)
        if burn == 0:
            return self._log_marginal(self._point(), values, lengths)
        # The per-step terms are the increments of the prefixes' log-likelihoods (with the
        # diffuse prior, 0 until the observations identify the state).
        return self._call_kernel(kalman.kalman_filter, values, lengths).step_log_likelihood[:, burn:].sum(-1)

    def filter(self, values, lengths=None) -> kalman.KalmanFiltered:
        """Filtered and one-step predicted state moments (:func:`inference.kalman.kalman_filter`)."""
        return self._call_kernel(kalman.kalman_filter, *self._inputs(values, lengths))

    def smooth(self, values, lengths=None) -> kalman.KalmanSmoothed:
        """Smoothed state moments and lag-one covariances (:func:`inference.kalman.rts_smoother`)."""
        return self._call_kernel(kalman.rts_smoother, *self._inputs(values, lengths))

    def sample_states(self, values, lengths=None, num_samples: int = 1,
                      generator: torch.Generator | None = None) -> Tensor:
        """``(num_samples, N, T, d)`` state paths from the posterior (forward filter, backward sample)."""
        return self._call_kernel(kalman.sample_states, *self._inputs(values, lengths), num_samples=num_samples,
                                 generator=generator)

    def forecast(self, values, steps: int, lengths=None) -> kalman.KalmanForecast:
        """Predictive moments of the ``steps`` states and observations after each sequence's end."""
        return self._call_kernel(kalman.forecast, *self._inputs(values, lengths), steps=steps)

    def impute(self, values, lengths=None) -> Imputation:
        """Posterior mean and variance of every entry given the observed ones.

        At a step with observed entries ``o`` and missing ones ``m``,
        :math:`E[X_m \\mid x] = B_m \\hat s + K (x_o - B_o \\hat s)` with
        :math:`K = \\Sigma_{mo} \\Sigma_{oo}^{-1}` and :math:`\\hat s, P` the smoothed moments;
        the variance is the diagonal of :math:`(B_m - K B_o) P (B_m - K B_o)^\\top +
        \\Sigma_{mm} - K \\Sigma_{om}`.
        """
        values, lengths = self._inputs(values, lengths)
        params = self._point()
        smoothed = self._call_kernel(kalman.rts_smoother, values, lengths, params)
        valid = _step_mask(lengths, values.shape[1])
        observed = ~values.isnan() & valid[..., None]
        mask = observed.to(values.dtype)
        filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
        obs_matrix, obs_cov = params["observation_matrix"], params["observation_cov"]
        pair = mask[..., :, None] * mask[..., None, :]
        cov_oo = obs_cov * pair + torch.diag_embed(1 - mask)  # identity on the missing block
        cov_mo = obs_cov * ((1 - mask)[..., :, None] * mask[..., None, :])
        # K = Sigma_mo Sigma_oo^{-1}: rows at missing entries, columns at observed ones.
        regression = torch.linalg.solve(cov_oo, cov_mo.transpose(-1, -2)).transpose(-1, -2)
        eye = torch.eye(self.obs_dim, dtype=values.dtype, device=values.device)
        projection = (eye - regression) @ obs_matrix  # (N, T, p, d)
        mean = (projection @ smoothed.smoothed_mean[..., None])[..., 0] + (regression @ filled[..., None])[..., 0]
        cov = projection @ smoothed.smoothed_cov @ projection.transpose(-1, -2) + obs_cov - regression @ obs_cov
        var = cov.diagonal(dim1=-2, dim2=-1).clamp(min=0)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        real = valid[..., None]
        mean = torch.where(observed, filled, torch.where(real, mean, zero))
        var = torch.where(observed | ~real, zero, var)
        return Imputation(mean, var)

    # -- sampling ----------------------------------------------------------------------
    def sample_with_states(self, num_sequences: int, length: int,
                           generator: torch.Generator | None = None) -> tuple[SequenceBatch, Tensor]:
        """Synthetic sequences and their states ``(N, T, d)`` at the point parameters (with
        ``initial="diffuse"``, :math:`S_1` is drawn from ``N(initial_mean, initial_cov)``)."""
        for name, value in (("num_sequences", num_sequences), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        with torch.no_grad():
            params = {k: v.detach() for k, v in self._point().items()}
            d, p = self.state_dim, self.obs_dim
            noise_device = generator.device if generator is not None else self._device
            state_noise = torch.randn(num_sequences, length, d, generator=generator, dtype=self._dtype,
                                      device=noise_device).to(self._device)
            obs_noise = torch.randn(num_sequences, length, p, generator=generator, dtype=self._dtype,
                                    device=noise_device).to(self._device)
            initial_tril = torch.linalg.cholesky(params["initial_cov"])
            transition_tril = torch.linalg.cholesky(params["transition_cov"])
            obs_tril = torch.linalg.cholesky(params["observation_cov"])
            state = params["initial_mean"] + state_noise[:, 0] @ initial_tril.T
            states = [state]
            for t in range(1, length):
                state = state @ params["transition_matrix"].T + state_noise[:, t] @ transition_tril.T
                states.append(state)
            states = torch.stack(states, 1)
            values = states @ params["observation_matrix"].T + obs_noise @ obs_tril.T
        return SequenceBatch.from_tensor(values), states

    def sample(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> SequenceBatch:
        return self.sample_with_states(num_sequences, length, generator)[0]

    # -- EM ---------------------------------------------------------------------------
    def em_step(self, batch: SequenceBatch) -> Tensor:
        """One EM iteration: E-step by the RTS smoother (in float64), then closed-form
        conditional maximisation (ECM; Meng & Rubin, 1993) of each learned block given the
        others: ``A`` given ``Γ`` then ``Γ``; ``B`` given ``Σ`` then ``Σ``; ``μ0`` given
        ``Σ0`` then ``Σ0``. Each update maximises the expected complete-data log-likelihood
        plus log prior (MAP with ``prior="weak"``), so the objective never decreases.
        A full learned ``Σ`` needs every step fully observed or fully missing (a diagonal
        one handles any missing entries).

        Returns:
            log-likelihood plus log prior (nats) at the parameters before the update.
        """
        if self.guide_type != "map":
            raise ValueError("em_step: EM fits point estimates; build the model with guide='map' "
                             "(or fit meanfield by SVI)")
        with torch.no_grad():
            values, lengths = self._inputs(batch.values, batch.lengths)
            sites = self._site_point()
            params = self._params_from_sites(sites)
            objective = self.log_prior(sites).double()
            params64 = {name: value.double() for name, value in params.items()}
            values64 = values.double()
            smoothed = self._call_kernel(kalman.rts_smoother, values64, lengths, params64)
            objective = objective + smoothed.log_normalizer.sum()
            new = self._maximise(params64, values64, lengths, smoothed)
            self.set_values({name: value.to(self._dtype) for name, value in new.items()})
        return objective

    def _maximise(self, params, values, lengths, smoothed) -> dict[str, Tensor]:
        """The ECM updates of the learned matrices from the smoothed moments (float64)."""
        d = self.state_dim
        learned = set(self._site_names().values())
        weak = self.prior_type == "weak"
        priors = self._priors() if weak else {}
        state_var, state_second = (v.double() for v in self._state_scale())
        valid = _step_mask(lengths, values.shape[1])
        mean, cov, lag_one = smoothed.smoothed_mean, smoothed.smoothed_cov, smoothed.lag_one_cov  # zero on padding
        second = cov + mean[..., :, None] * mean[..., None, :]  # E[s_t s_t^T]
        new: dict[str, Tensor] = {}

        if learned & {"transition_matrix", "transition_cov"}:
            later = valid[:, 1:].double()[..., None, None]
            s00 = (second[:, :-1] * later).sum((0, 1))
            s11 = second[:, 1:].sum((0, 1))
            s10 = (lag_one[:, 1:] + mean[:, 1:, :, None] * mean[:, :-1, None, :]).sum((0, 1))
            num_transitions = float((lengths - 1).clamp(min=0).sum())
            transition = params["transition_matrix"]
            transition_cov = params["transition_cov"]
            if "transition_matrix" in learned and num_transitions > 0:
                ridge = 1 / _TRANSITION_SCALE**2 if weak else 0.0
                transition = _solve_sylvester(transition_cov, s00, s10, ridge)
                new["transition_matrix"] = transition
            if "transition_cov" in learned and num_transitions > 0:
                scatter = s11 - transition @ s10.T - s10 @ transition.T + transition @ s00 @ transition.T
                new["transition_cov"] = self._covariance_update(
                    "transition_cov", _symmetrise(scatter), num_transitions, priors)

        if learned & {"observation_matrix", "observation_cov"}:
            new.update(self._observation_update(params, values, valid, mean, second, learned, priors, state_var))

        if learned & {"initial_mean", "initial_cov"}:
            nonempty = (lengths > 0)
            count = float(nonempty.sum())
            first_mean, first_cov = mean[nonempty, 0], cov[nonempty, 0]
            initial_mean, initial_cov = params["initial_mean"], params["initial_cov"]
            if "initial_mean" in learned and count > 0:
                total = first_mean.sum(0)
                if weak:
                    ridge = 1 / (_INITIAL_MEAN_SCALE**2 * state_second)
                    eye = torch.eye(d, dtype=total.dtype, device=total.device)
                    initial_mean = torch.linalg.solve(count * eye + ridge * initial_cov, total)
                else:
                    initial_mean = total / count
                new["initial_mean"] = initial_mean
            if "initial_cov" in learned and count > 0:
                centred = first_mean - initial_mean
                scatter = first_cov.sum(0) + centred.T @ centred
                new["initial_cov"] = self._covariance_update("initial_cov", _symmetrise(scatter), count, priors)
        return new

    def _covariance_update(self, name: str, scatter: Tensor, count: float, priors) -> Tensor:
        """Mode of the covariance given an expected scatter matrix over ``count`` terms, under its
        prior (inverse-Wishart or inverse-gamma) or none."""
        site = self._site_name(name)
        dim = scatter.shape[-1]
        if site != name:  # diagonal
            variance = scatter.diagonal()
            if site in priors:
                prior = priors[site].base_dist
                variance = (prior.rate.double() + 0.5 * variance) / (prior.concentration.double() + 1 + 0.5 * count)
            else:
                variance = variance / count
            return torch.diag_embed(variance.clamp(min=1e-12))
        if site in priors:
            prior = priors[site]
            psi = (prior.scale_tril @ prior.scale_tril.T).double()
            cov = (psi + scatter) / (float(prior.df) + dim + 1 + count)
        else:
            cov = scatter / count
        return _symmetrise(cov) + 1e-12 * torch.eye(dim, dtype=cov.dtype, device=cov.device) * cov.diagonal().mean()

    def _observation_update(self, params, values, valid, mean, second, learned, priors, state_var):
        weak = self.prior_type == "weak"
        observed = ~values.isnan() & valid[..., None]
        o = observed.double()
        filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
        obs_matrix, obs_cov = params["observation_matrix"], params["observation_cov"]
        ridge = 1 / (_OBSERVATION_SCALE**2 * float(self.data_var.double().mean() / state_var)) if weak else 0.0
        new = {}
        if "observation_cov" in learned:
            diagonal = self.observation_cov_type == "diag"
        else:
            diagonal = bool(torch.equal(obs_cov, torch.diag_embed(obs_cov.diagonal())))
        if diagonal:
            # Rows of B and entries of a diagonal Sigma separate: each uses the steps where it is observed.
            gram = torch.einsum("ntj,ntde->jde", o, second)  # (p, d, d)
            cross = torch.einsum("ntj,ntd->jd", filled, mean)  # (p, d)
            counts = o.sum((0, 1))  # (p,)
            variances = obs_cov.diagonal()
            if "observation_matrix" in learned:
                eye = torch.eye(self.state_dim, dtype=gram.dtype, device=gram.device)
                obs_matrix = torch.linalg.solve(gram + ridge * variances[:, None, None] * eye, cross)
                new["observation_matrix"] = obs_matrix
            if "observation_cov" in learned:
                squares = filled.square().sum((0, 1))
                scatter = squares - 2 * (obs_matrix * cross).sum(-1) + torch.einsum("jd,jde,je->j", obs_matrix, gram,
                                                                                    obs_matrix)
                site = self._site_name("observation_cov")
                if site in priors:
                    prior = priors[site].base_dist
                    variance = (prior.rate.double() + 0.5 * scatter) / (prior.concentration.double() + 1 + 0.5 * counts)
                else:
                    variance = scatter / counts.clamp(min=1)
                new["observation_cov"] = torch.diag_embed(variance.clamp(min=1e-12))
            return new
        complete = observed.all(-1)
        if (observed.any(-1) & ~complete).any():
            raise ValueError("em_step: a full observation covariance needs each step fully observed or fully "
                             "missing for EM; fit it with method='svi' or use observation_cov_type='diag'")
        w = complete.double()
        gram = torch.einsum("nt,ntde->de", w, second)
        cross = torch.einsum("nt,ntj,ntd->jd", w, filled, mean)
        count = float(w.sum())
        if "observation_matrix" in learned and count > 0:
            obs_matrix = _solve_sylvester(obs_cov, gram, cross, ridge)
            new["observation_matrix"] = obs_matrix
        if "observation_cov" in learned and count > 0:
            squares = torch.einsum("nt,ntj,ntk->jk", w, filled, filled)
            scatter = squares - obs_matrix @ cross.T - cross @ obs_matrix.T + obs_matrix @ gram @ obs_matrix.T
            new["observation_cov"] = self._covariance_update("observation_cov", _symmetrise(scatter), count, priors)
        return new

    # -- initialisation ---------------------------------------------------------------------
    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> None:
        """Records the data's per-coordinate mean and variance (they scale the priors and the
        starting values) and, unless the values were given (``from_params``), draws a
        data-scaled start with :meth:`reset_parameters`."""
        values, lengths = self._inputs(batch.values, batch.lengths)
        observed = ~values.isnan() & _step_mask(lengths, values.shape[1])[..., None]
        filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
        count = observed.sum((0, 1)).clamp(min=1)
        mean = filled.sum((0, 1)) / count
        centred = torch.where(observed, filled - mean, torch.zeros_like(filled))
        var = centred.square().sum((0, 1)) / count
        complete = observed.all(-1).reshape(-1)
        rows = centred.reshape(-1, self.obs_dim)[complete]
        with torch.no_grad():
            self.data_mean.copy_(mean)
            self.data_var.copy_(var.clamp(min=1e-8 * float(var.max().clamp(min=1e-300))).clamp(min=1e-12))
        # Covariance of the fully observed rows (else the diagonal), for a PCA-like start of B.
        self._data_cov = (rows.T @ rows / rows.shape[0]) if rows.shape[0] > self.obs_dim else torch.diag(self.data_var)
        if not self.values_given:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Data-scaled random start: ``B`` along the leading principal directions of the data
        (scaled to unit-variance states) plus noise, ``A = 0.9 I`` plus noise, ``Γ`` a tenth of
        the state variance, ``Σ`` half the data variance, ``μ0`` from the data mean."""
        d, p = self.state_dim, self.obs_dim
        noise_device = generator.device if generator is not None else "cpu"

        def noise(*shape):
            return torch.randn(*shape, generator=generator, dtype=self._dtype, device=noise_device).to(self._device)

        values = {}
        eye = torch.eye(d, dtype=self._dtype, device=self._device)
        if "observation_matrix" not in self.fixed_names:
            data_cov = getattr(self, "_data_cov", torch.diag(self.data_var)).to(self._dtype)
            eigenvalues, eigenvectors = torch.linalg.eigh(_symmetrise(data_cov))
            order = eigenvalues.flip(0)[: min(d, p)].clamp(min=0)
            directions = eigenvectors.flip(1)[:, : min(d, p)]
            obs_matrix = torch.zeros(p, d, dtype=self._dtype, device=self._device)
            obs_matrix[:, : min(d, p)] = directions * (0.5 * order).sqrt()
            scale = self.data_var.mean().sqrt()
            obs_matrix = obs_matrix + 0.1 * scale * noise(p, d)
            values["observation_matrix"] = obs_matrix
        obs_matrix = self._point()["observation_matrix"] if "observation_matrix" in self.fixed_names \
            else values["observation_matrix"]
        state_var, _ = self._state_scale()
        if "transition_matrix" not in self.fixed_names:
            values["transition_matrix"] = 0.9 * eye + 0.05 * noise(d, d)
        if "transition_cov" not in self.fixed_names:
            values["transition_cov"] = 0.1 * state_var * eye
        if "observation_cov" not in self.fixed_names:
            values["observation_cov"] = torch.diag(0.5 * self.data_var)
        if "initial_mean" not in self.fixed_names:
            values["initial_mean"] = torch.linalg.pinv(obs_matrix) @ self.data_mean
        if "initial_cov" not in self.fixed_names:
            values["initial_cov"] = state_var * eye
        given = self.values_given
        self.set_values(values)
        self.values_given = given

    def config(self) -> dict[str, Any]:
        return {"state_dim": self.state_dim, "obs_dim": self.obs_dim,
                "transition_cov_type": self.transition_cov_type, "observation_cov_type": self.observation_cov_type,
                "initial": self.initial, "prior": self.prior_type, "guide": self.guide_type, "latent": self.latent,
                "states_guide": self.states_guide, "fixed": {name: getattr(self, f"fixed_{name}").tolist() for name in self.fixed_names}}


# -- command-line registration ------------------------------------------------
# What `seqzoo` needs to offer this family (see zoo/registry.py and docs/families.md).
import numpy as np  # noqa: E402  (this block stands on its own imports)
import torch  # noqa: E402

from zoo.registry import Family, UsageError, register  # noqa: E402

#: Choices of each setting (the first is the default), as the flags and a compare spec give them.
_CLI_CHOICES = {"transition": ("learned", "identity"), "observation": ("learned", "identity"),
                "covariance": ("diag", "full"), "initial": ("diffuse", "prior"), "prior": ("weak", "none"),
                "guide": ("map", "meanfield"), "latent": ("marginal", "sampled")}


def _add_cli_arguments(group) -> None:
    group.add_argument("--state-dim", type=int, required=True, metavar="D", help="dimension d of the latent state")
    group.add_argument("--transition", choices=["learned", "identity"], default="learned",
                       help="state transition matrix A: learned, or fixed to I (random walk)")
    group.add_argument("--observation", choices=["learned", "identity"], default="learned",
                       help="observation matrix B: learned, or fixed to I (needs --state-dim = number of series)")
    group.add_argument("--covariance", choices=["diag", "full"], default="diag", help="form of the noise covariances Γ and Σ")
    group.add_argument("--initial", choices=["diffuse", "prior"], default="diffuse",
                       help="initial state: exact diffuse initialisation, or a learned Gaussian prior")
    group.add_argument("--prior", choices=["weak", "none"], default="weak", help="weak priors on the parameters (MAP), or none (MLE)")
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument("--latent", choices=["marginal", "sampled"], default="marginal",
                       help="svi: states integrated out by the Kalman filter, or sampled with a structured guide")


def _cli_settings(args) -> dict[str, str]:
    return {"state_dim": str(args.state_dim), **{name: getattr(args, name) for name in _CLI_CHOICES}}


def _build_from_settings(data, settings: dict[str, str]) -> LinearGaussianSSM:
    """A linear-Gaussian state-space model with ``state_dim`` states over the data's ``p`` real series.

    ``transition="identity"`` fixes ``A = I`` (random-walk states); ``observation="identity"``
    fixes ``B = I`` (needs ``state_dim == p``); ``covariance`` is the form of both noise
    covariances Γ and Σ.
    """
    if data.kind == "categorical":
        raise UsageError(f"fit lgssm: needs real-valued data, but {data.source} holds categorical data (use --kind real for a numeric CSV)")
    try:
        state_dim = int(settings.get("state_dim", 1))
    except ValueError:
        raise UsageError(f"lgssm: state_dim must be an integer, got {settings['state_dim']!r}") from None
    if state_dim < 1:
        raise UsageError(f"--state-dim: expected a positive integer, got {state_dim!r}")
    chosen = {name: settings.get(name, allowed[0]) for name, allowed in _CLI_CHOICES.items()}
    for name, value in chosen.items():
        if value not in _CLI_CHOICES[name]:
            raise UsageError(f"--{name}: expected one of {', '.join(_CLI_CHOICES[name])}, got {value!r}")
    if chosen["latent"] == "sampled" and chosen["initial"] == "diffuse":
        raise UsageError("--latent sampled: the states need a proper prior on the first one; add --initial prior")
    obs_dim = data.dim
    dtype = data.batch.values.dtype
    fixed = {}
    if chosen["transition"] == "identity":
        fixed["transition_matrix"] = torch.eye(state_dim, dtype=dtype)
    if chosen["observation"] == "identity":
        if state_dim != obs_dim:
            raise UsageError(f"--observation identity: needs --state-dim equal to the number of series ({obs_dim}), got {state_dim}")
        fixed["observation_matrix"] = torch.eye(obs_dim, dtype=dtype)
    model = LinearGaussianSSM(state_dim, obs_dim, transition_cov_type=chosen["covariance"],
                              observation_cov_type=chosen["covariance"], initial=chosen["initial"],
                              prior=chosen["prior"], guide=chosen["guide"], latent=chosen["latent"], fixed=fixed or None)
    return model.to(dtype=dtype)


def _plot_states_and_forecast(run, model: LinearGaussianSSM, splits, data,
                              max_history: int = 1000, max_horizon: int = 200) -> None:
    """``smoothed_states.png`` (smoothed and filtered states, smoothed signal, 90% bands) on
    the end of the training series, and ``forecast.png`` from there over the held-out steps.

    One series (the data is one sequence): the history is the training part and the
    forecast covers the validation and test parts that follow it in time. Many sequences:
    the first sequence of the validation part (else training), its first 80% as history.
    """
    from zoo import plots  # matplotlib only when a figure is drawn

    if data.num_sequences == 1:
        series = data.batch.values[0, : int(data.batch.lengths[0])]
        history_length = int(splits.train.batch.lengths[0])
    else:
        part = splits.valid if splits.valid is not None and splits.valid.batch.num_steps else splits.train
        series = part.batch.values[0, : int(part.batch.lengths[0])]
        history_length = max(1, int(0.8 * len(series)))
    start = max(0, history_length - max_history)
    horizon = min(max_horizon, len(series) - history_length)
    device = next(model.parameters()).device
    history = series[start:history_length].to(device)[None]
    time = np.arange(start, history_length)
    names = data.series_names
    with torch.no_grad():
        smoothed = model.smooth(history)
        filtered = model.filter(history)
        matrix = model.observation_matrix
        signal_mean = (smoothed.smoothed_mean[0] @ matrix.T).cpu().numpy()
        signal_var = torch.diagonal(matrix @ smoothed.smoothed_cov[0] @ matrix.T, dim1=-2, dim2=-1)
        state_var = torch.diagonal(smoothed.smoothed_cov[0], dim1=-2, dim2=-1)
        identity_observation = matrix.shape[0] == matrix.shape[1] and torch.allclose(matrix, torch.eye(len(matrix), dtype=matrix.dtype, device=device))
    observed = history[0].cpu().numpy()
    figure = plots.state_bands(
        time, smoothed.smoothed_mean[0].cpu().numpy(), state_var.clamp_min(0).sqrt().cpu().numpy(),
        filtered_mean=filtered.filtered_mean[0].cpu().numpy(),
        signal_mean=None if identity_observation else signal_mean,
        signal_std=None if identity_observation else signal_var.clamp_min(0).sqrt().cpu().numpy(),
        observed=observed, series_names=names, title=f"{model.family}: smoothed states, 90% bands ({data.source})")
    run.save_figure("smoothed_states.png", figure)
    steps = horizon if horizon > 0 else min(max_horizon, max(10, len(history[0]) // 5))
    with torch.no_grad():
        prediction = model.forecast(history, steps)
    mean = prediction.observation_mean[0].cpu().numpy()
    std = torch.diagonal(prediction.observation_cov[0], dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu().numpy()
    actual = series[history_length: history_length + steps].cpu().numpy() if horizon > 0 else None
    figure = plots.forecast_bands(time, observed, np.arange(history_length, history_length + steps), mean, std,
                                  actual=actual, series_names=names,
                                  title=f"{model.family}: {steps}-step forecast with 90% bands ({data.source})")
    run.save_figure("forecast.png", figure)


register(Family(
    name="lgssm",
    help="linear-Gaussian state-space model (Kalman filter)",
    add_arguments=_add_cli_arguments,
    settings_from_args=_cli_settings,
    build=_build_from_settings,
    label=lambda settings: f"lgssm-d{settings.get('state_dim', 1)}",
    model_classes=(LinearGaussianSSM,),
    data_kinds=("real", "count"),
    plots=_plot_states_and_forecast,
))
