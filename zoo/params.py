r"""Parameter helpers shared by the model families (imports no family).

* **Constrained storage.** A constrained parameter is stored unconstrained:
  lower-triangular factors with a positive diagonal as the strict lower part plus the log
  of the diagonal (:func:`constrain_tril`, :func:`unconstrain_tril`), positive-definite
  matrices as such a factor of their Cholesky decomposition, positive diagonals as logs.
  :class:`ParameterSpec` is the typed record of one parameter (name, shape, constraint,
  learned or fixed, prior); its methods convert between the stored, the matrix and the
  sample-site forms, so a family's parameter handling is generic code over its specs.
* **Point and variational parameters.** A family holds point values (MAP) and,
  with a mean-field guide, one variational factor per site centred on them. The
  ``*_factor`` functions build the factors from parameters named ``guide_{site}_*``; the
  ``*_factor_values`` functions give the values of those parameters that centre a factor on
  a point value; :func:`write_parameters` registers or overwrites them.
  :class:`PointParameters` gives a family its ``_dtype``/``_device`` and
  :func:`point_property` its read-only accessors of point values.
* **Distributions of constrained matrices.** :data:`positive_definite_matrix` (a
  constraint with a registered bijection, so NUTS runs on covariance sites),
  :class:`InverseWishart` and :class:`BartlettWishart`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import Transform

__all__ = [
    "BartlettWishart",
    "Constraint",
    "InverseWishart",
    "MEANFIELD_LOG_SCALE",
    "MEANFIELD_STRENGTH",
    "ParameterSpec",
    "PointParameters",
    "Role",
    "constrain_tril",
    "dirichlet_factor",
    "dirichlet_factor_values",
    "inverse_wishart_factor",
    "inverse_wishart_factor_values",
    "lognormal_factor",
    "lognormal_factor_values",
    "normal_factor",
    "normal_factor_values",
    "point_property",
    "positive_definite_matrix",
    "symmetrise",
    "unconstrain_tril",
    "wishart_factor",
    "wishart_factor_values",
    "write_parameters",
]


# -- lower-triangular and positive-definite storage ------------------------------------
def constrain_tril(raw: Tensor) -> Tensor:
    """``(..., d, d)`` lower-triangular with a positive diagonal: the strict lower part of
    ``raw`` and the exp of its diagonal."""
    return raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())


def unconstrain_tril(tril: Tensor) -> Tensor:
    """Inverse of :func:`constrain_tril` for a lower-triangular ``tril`` with a positive diagonal."""
    return tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())


def symmetrise(matrix: Tensor) -> Tensor:
    """``(M + M^T) / 2`` over the last two dimensions."""
    return 0.5 * (matrix + matrix.transpose(-1, -2))


class Constraint(str, enum.Enum):
    """How a parameter is constrained, which fixes how it is stored unconstrained."""

    #: Any real tensor, stored as is.
    FREE = "free"
    #: A diagonal matrix with a positive diagonal, stored as the log of the diagonal; its
    #: sample site is the diagonal (a vector of variances).
    POSITIVE_DIAG = "positive_diag"
    #: A lower-triangular matrix with a positive diagonal, stored by :func:`unconstrain_tril`.
    LOWER_CHOLESKY = "lower_cholesky"
    #: A symmetric positive-definite matrix, stored as the unconstrained form of its Cholesky factor.
    POSITIVE_DEFINITE = "positive_definite"


class Role(str, enum.Enum):
    """Whether a parameter is learned, and how it is held when it is not."""

    #: An ``nn.Parameter`` holding the unconstrained storage, and a sample site of the model.
    LEARNED = "learned"
    #: A buffer holding the value itself (given by the user, never changed by fitting).
    FIXED = "fixed"
    #: A buffer holding the unconstrained storage of a value that is not a sample site but
    #: may be set (e.g. what only seeds simulation).
    HELD = "held"


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a family, declared: the generic methods (:meth:`register`,
    :meth:`read`, :meth:`write`, :meth:`site_value`, :meth:`site_prior`, ...) do the rest.

    Attributes:
        name: what the family calls the value (e.g. ``"transition_cov"``).
        shape: shape of the value (a diagonal covariance is still ``(d, d)``).
        constraint: see :class:`Constraint`.
        role: learned, fixed or held (see :class:`Role`).
        storage: attribute name of the storage on the module (a parameter or buffer).
        site: name of the sample site: ``name``, or for a ``POSITIVE_DIAG`` parameter the
            name of its diagonal (e.g. ``"transition_var"``).
        prior: ``prior(module) -> Distribution`` of the site value (the prior may depend on
            the module's data scale); ``None`` for an improper flat prior on the support.

    Example:
        >>> spec = ParameterSpec("noise_cov", (2, 2), Constraint.POSITIVE_DIAG, Role.LEARNED, "noise_log_var", "noise_var")
        >>> module = torch.nn.Module()
        >>> spec.register(module, torch.diag(torch.tensor([1.0, 4.0])))
        >>> module.noise_log_var.data.exp().tolist(), spec.site_value(spec.read(module)).tolist()
        ([1.0, 4.0], [1.0, 4.0])
    """

    name: str
    shape: tuple[int, ...]
    constraint: Constraint
    role: Role
    storage: str
    site: str
    prior: Callable[[Any], dist.Distribution] | None = None

    @property
    def learned(self) -> bool:
        return self.role is Role.LEARNED

    def register(self, module: nn.Module, value: Tensor) -> None:
        """Creates the storage of ``value`` on ``module``: a parameter if learned, else a buffer."""
        stored = value.clone() if self.role is Role.FIXED else self.to_storage(value)
        if self.learned:
            module.register_parameter(self.storage, nn.Parameter(stored))
        else:
            module.register_buffer(self.storage, stored)

    def read(self, module: nn.Module) -> Tensor:
        """The value (shape ``shape``) held by ``module``."""
        stored = getattr(module, self.storage)
        return stored if self.role is Role.FIXED else self.from_storage(stored)

    def write(self, module: nn.Module, value: Tensor) -> None:
        """Checks ``value`` (see :meth:`check`) and writes it into the storage (no gradient)."""
        if self.role is Role.FIXED:
            raise ValueError(f"values: {self.name!r} is fixed; build a model that learns it to change it")
        self.check(self.name, value)
        with torch.no_grad():
            getattr(module, self.storage).data.copy_(self.to_storage(value))

    @property
    def site_shape(self) -> tuple[int, ...]:
        """Shape of the sample-site value: the diagonal of a ``POSITIVE_DIAG`` matrix, else ``shape``."""
        return self.shape[:1] if self.constraint is Constraint.POSITIVE_DIAG else self.shape

    @property
    def num_free(self) -> int:
        """Number of free scalars (a symmetric matrix counts its lower triangle)."""
        if self.constraint is Constraint.POSITIVE_DIAG:
            return self.shape[0]
        if self.constraint in (Constraint.POSITIVE_DEFINITE, Constraint.LOWER_CHOLESKY):
            return self.shape[-1] * (self.shape[-1] + 1) // 2
        return math.prod(self.shape)

    @property
    def support(self) -> constraints.Constraint:
        """Support of the site value."""
        if self.constraint is Constraint.POSITIVE_DIAG:
            return constraints.independent(constraints.positive, 1)
        if self.constraint is Constraint.POSITIVE_DEFINITE:
            return positive_definite_matrix
        if self.constraint is Constraint.LOWER_CHOLESKY:
            return constraints.lower_cholesky
        return constraints.independent(constraints.real, len(self.shape))

    def site_prior(self, module) -> dist.Distribution:
        """The prior of the site value, or an improper flat density on its support."""
        if self.prior is None:
            return dist.ImproperUniform(self.support, torch.Size(), torch.Size(self.site_shape))
        return self.prior(module)

    def to_storage(self, value: Tensor) -> Tensor:
        """Unconstrained storage of a value of shape ``shape``."""
        if self.constraint is Constraint.POSITIVE_DIAG:
            return value.diagonal(dim1=-2, dim2=-1).log()
        if self.constraint is Constraint.POSITIVE_DEFINITE:
            return unconstrain_tril(torch.linalg.cholesky(symmetrise(value)))
        if self.constraint is Constraint.LOWER_CHOLESKY:
            return unconstrain_tril(value)
        return value

    def from_storage(self, raw: Tensor) -> Tensor:
        """The value (shape ``shape``) of unconstrained storage ``raw``."""
        if self.constraint is Constraint.POSITIVE_DIAG:
            return torch.diag_embed(raw.exp())
        if self.constraint is Constraint.POSITIVE_DEFINITE:
            tril = constrain_tril(raw)
            return tril @ tril.transpose(-1, -2)
        if self.constraint is Constraint.LOWER_CHOLESKY:
            return constrain_tril(raw)
        return raw

    def site_value(self, value: Tensor) -> Tensor:
        """The sample-site value of a value of shape ``shape``."""
        return value.diagonal(dim1=-2, dim2=-1) if self.constraint is Constraint.POSITIVE_DIAG else value

    def value_from_site(self, site_value: Tensor) -> Tensor:
        """Inverse of :meth:`site_value`."""
        return torch.diag_embed(site_value) if self.constraint is Constraint.POSITIVE_DIAG else site_value

    def check(self, label: str, value: Tensor) -> None:
        """Raises ``ValueError`` naming ``label`` unless ``value`` has the shape and
        satisfies the constraint."""
        if value.shape != torch.Size(self.shape):
            raise ValueError(f"{label}: expected shape {self.shape}, got {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{label}: expected finite values")
        if self.constraint in (Constraint.POSITIVE_DEFINITE, Constraint.POSITIVE_DIAG):
            if not torch.allclose(value, value.T, rtol=1e-6, atol=1e-8 * float(value.abs().max().clamp(min=1))):
                raise ValueError(f"{label}: expected a symmetric matrix")
            if torch.linalg.eigvalsh(value.double()).min() <= 0:
                raise ValueError(f"{label}: expected a positive-definite matrix")
        if self.constraint is Constraint.POSITIVE_DIAG and not torch.equal(value, torch.diag_embed(value.diagonal())):
            raise ValueError(f"{label}: expected a diagonal matrix (the model's covariance type is 'diag')")
        if self.constraint is Constraint.LOWER_CHOLESKY:
            if not torch.equal(value, value.tril()) or (value.diagonal() <= 0).any():
                raise ValueError(f"{label}: expected a lower-triangular matrix with a positive diagonal")


# -- point parameters -------------------------------------------------------------------
class PointParameters:
    """Mixin of a family module whose parameters all share one dtype and device: those of
    the tensor attribute named by ``_placement_tensor``. The family defines ``_point()``,
    the dict of its point values."""

    _placement_tensor: ClassVar[str]

    @property
    def _dtype(self) -> torch.dtype:
        return getattr(self, self._placement_tensor).dtype

    @property
    def _device(self) -> torch.device:
        return getattr(self, self._placement_tensor).device

    def _point(self) -> dict[str, Tensor]:
        raise NotImplementedError


def point_property(name: str, doc: str) -> property:
    """A read-only property returning ``self._point()[name]``, documented by ``doc``."""

    def getter(self) -> Tensor:
        return self._point()[name]

    getter.__name__ = name
    return property(getter, doc=doc)


def write_parameters(module: nn.Module, values: Mapping[str, Tensor], create: bool) -> None:
    """Registers each value as a new ``nn.Parameter`` (``create``) or copies it into the
    existing parameter of that name."""
    for key, value in values.items():
        if create:
            module.register_parameter(key, nn.Parameter(value))
        else:
            getattr(module, key).data.copy_(value)


# -- mean-field factors, and the values that centre them on a point ---------------------------
#: Confidence of a freshly centred factor: Dirichlet concentration per entry, (inverse-)Wishart
#: excess degrees of freedom.
MEANFIELD_STRENGTH = 100.0
#: Log of the scale of a freshly centred Normal or log-normal factor.
MEANFIELD_LOG_SCALE = -3.0


def normal_factor(module: nn.Module, site: str, event_dim: int) -> dist.Distribution:
    """``Normal(guide_{site}_loc, exp(guide_{site}_log_scale))`` over ``event_dim`` dimensions."""
    loc = getattr(module, f"guide_{site}_loc")
    return dist.Normal(loc, getattr(module, f"guide_{site}_log_scale").exp()).to_event(event_dim)


def normal_factor_values(site: str, value: Tensor) -> dict[str, Tensor]:
    """Parameters of a :func:`normal_factor` with mean ``value``."""
    return {f"guide_{site}_loc": value.clone(), f"guide_{site}_log_scale": torch.full_like(value, MEANFIELD_LOG_SCALE)}


def lognormal_factor(module: nn.Module, site: str, event_dim: int) -> dist.Distribution:
    """``LogNormal(guide_{site}_loc, exp(guide_{site}_log_scale))`` over ``event_dim`` dimensions."""
    loc = getattr(module, f"guide_{site}_loc")
    return dist.LogNormal(loc, getattr(module, f"guide_{site}_log_scale").exp()).to_event(event_dim)


def lognormal_factor_values(site: str, value: Tensor) -> dict[str, Tensor]:
    """Parameters of a :func:`lognormal_factor` with mean ``value`` (positive): a log-normal's
    mean is ``exp(loc + scale^2 / 2)``."""
    return {
        f"guide_{site}_loc": value.log() - 0.5 * math.exp(2 * MEANFIELD_LOG_SCALE),
        f"guide_{site}_log_scale": torch.full_like(value, MEANFIELD_LOG_SCALE),
    }


def dirichlet_factor(module: nn.Module, site: str) -> dist.Distribution:
    """Independent Dirichlet rows ``exp(guide_{site}_concentration)``; ``(S,)`` rows are one
    event, ``(K, S)`` rows an event of two dimensions."""
    concentration = getattr(module, f"guide_{site}_concentration").exp()
    factor = dist.Dirichlet(concentration)
    return factor.to_event(concentration.dim() - 1) if concentration.dim() > 1 else factor


def dirichlet_factor_values(site: str, value: Tensor) -> dict[str, Tensor]:
    """Parameters of a :func:`dirichlet_factor` whose mean is ``value`` to within
    ``0.1 / MEANFIELD_STRENGTH``: a row of size S gets total concentration
    ``MEANFIELD_STRENGTH * S`` plus a floor of 0.1 per entry (draws from a tinier
    concentration underflow towards 0, where log q is huge and the ELBO estimate useless)."""
    return {f"guide_{site}_concentration": (MEANFIELD_STRENGTH * value.shape[-1] * value + 0.1).log()}


def wishart_factor(module: nn.Module, site: str) -> dist.Distribution:
    """Independent Wishart precisions per leading index: ``df = D - 1 + exp(guide_{site}_log_excess_df)``,
    scale ``constrain_tril(guide_{site}_scale_tril_unconstrained)``."""
    raw = getattr(module, f"guide_{site}_scale_tril_unconstrained")
    df = raw.shape[-1] - 1 + getattr(module, f"guide_{site}_log_excess_df").exp()
    return BartlettWishart(df, scale_tril=constrain_tril(raw)).to_event(1)


def wishart_factor_values(site: str, value: Tensor) -> dict[str, Tensor]:
    """Parameters of a :func:`wishart_factor` with mean ``value (K, D, D)``: mean ``df W`` with
    ``df = D - 1 + MEANFIELD_STRENGTH``."""
    df = value.shape[-1] - 1 + MEANFIELD_STRENGTH
    return {
        f"guide_{site}_log_excess_df": torch.full(
            value.shape[:1], math.log(MEANFIELD_STRENGTH), dtype=value.dtype, device=value.device
        ),
        f"guide_{site}_scale_tril_unconstrained": unconstrain_tril(torch.linalg.cholesky(value / df)),
    }


def inverse_wishart_factor(module: nn.Module, site: str) -> dist.Distribution:
    """An :class:`InverseWishart` with ``df = d + 1 + exp(guide_{site}_log_excess_df)`` and scale
    factor ``constrain_tril(guide_{site}_scale_tril_unconstrained)``."""
    raw = getattr(module, f"guide_{site}_scale_tril_unconstrained")
    df = raw.shape[-1] + 1 + getattr(module, f"guide_{site}_log_excess_df").exp()
    return InverseWishart(df, constrain_tril(raw))


def inverse_wishart_factor_values(site: str, value: Tensor) -> dict[str, Tensor]:
    """Parameters of an :func:`inverse_wishart_factor` with mean ``value (d, d)``: mean
    ``Psi / (df - d - 1) = Psi / MEANFIELD_STRENGTH``."""
    return {
        f"guide_{site}_log_excess_df": torch.tensor(
            math.log(MEANFIELD_STRENGTH), dtype=value.dtype, device=value.device
        ),
        f"guide_{site}_scale_tril_unconstrained": unconstrain_tril(torch.linalg.cholesky(MEANFIELD_STRENGTH * value)),
    }


# -- distributions of constrained matrices ---------------------------------------------------
class _PositiveDefiniteMatrix(type(constraints.positive_definite)):
    """Positive-definite matrices, with a registered bijection from ``d (d + 1) / 2`` reals
    (torch registers none for its own ``positive_definite``), so NUTS can run on covariance sites."""


positive_definite_matrix = _PositiveDefiniteMatrix()


def _triangular_size(num_entries: int) -> int:
    dim = int(round((math.sqrt(8 * num_entries + 1) - 1) / 2))
    if dim * (dim + 1) // 2 != num_entries:
        raise ValueError(f"expected d (d + 1) / 2 entries for some d, got {num_entries}")
    return dim


class VectorToPositiveDefinite(Transform):
    r"""Reals ``(..., d (d + 1) / 2)`` to ``L L^T`` with ``L`` lower triangular: the vector
    fills ``L`` row by row, its diagonal exponentiated. :math:`\log |J| = d \log 2 +
    \sum_i (d - i + 1) v_{ii}` (0-based ``i``), from :math:`\partial(L L^\top)/\partial L`."""

    domain = constraints.independent(constraints.real, 1)
    codomain = positive_definite_matrix
    bijective = True

    def __eq__(self, other):
        return isinstance(other, VectorToPositiveDefinite)

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
        tril = constrain_tril(raw)
        return tril @ tril.transpose(-1, -2)

    def _inverse(self, y: Tensor) -> Tensor:
        rows, cols = self._indices(y.shape[-1], y.device)
        return unconstrain_tril(torch.linalg.cholesky(y))[..., rows, cols]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        dim = y.shape[-1]
        rows, cols = self._indices(dim, x.device)
        diagonal = x[..., rows == cols]  # (..., d): v_ii in order i = 0..d-1
        weights = torch.arange(dim + 1, 1, -1, dtype=x.dtype, device=x.device)  # d - i + 1 for i = 0..d-1
        return dim * math.log(2.0) + (diagonal * weights).sum(-1)


@biject_to.register(_PositiveDefiniteMatrix)
@transform_to.register(_PositiveDefiniteMatrix)
def _positive_definite_bijection(constraint):
    return VectorToPositiveDefinite()


class InverseWishart(TorchDistribution):
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
        return InverseWishart(self.df.expand(batch_shape), self.scale_tril.expand(batch_shape + self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        dim = self.event_shape[-1]
        df = self.df
        value_tril = torch.linalg.cholesky(value)
        log_det_value = 2 * value_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_det_scale = 2 * self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        # tr(Psi Sigma^{-1}) = ||L_Sigma^{-1} L_Psi||_F^2
        whitened = torch.linalg.solve_triangular(value_tril, self.scale_tril.expand(value_tril.shape), upper=False)
        trace = whitened.square().sum((-2, -1))
        return (
            0.5 * df * log_det_scale
            - 0.5 * df * dim * math.log(2.0)
            - torch.mvlgamma(0.5 * df, dim)
            - 0.5 * (df + dim + 1) * log_det_value
            - 0.5 * trace
        )

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
        factor = torch.linalg.cholesky(symmetrise(psi_inverse)) @ bartlett
        inverse_factor = torch.linalg.solve_triangular(factor, eye.expand(shape), upper=False)
        return symmetrise(inverse_factor.transpose(-1, -2) @ inverse_factor)


class BartlettWishart(dist.Wishart):
    """A Wishart whose reparametrised sample is the plain Bartlett construction.

    torch's ``Wishart.rsample`` (2.x) tests its draws with the support check
    inverted, so it warns "Singular sample detected" on every positive-definite
    draw and redraws them; this class draws once, correctly.
    """

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)  # (*sample, *batch, D, D)
        d = shape[-1]
        # Bartlett: A lower-triangular, A_ii^2 ~ chi^2(df - i), A_ij ~ N(0, 1) below; W = L A A^T L^T.
        offsets = torch.arange(d, dtype=self.df.dtype, device=self.df.device)
        chi2 = dist.Chi2((self.df.unsqueeze(-1) - offsets).expand(shape[len(sample_shape) : -1])).rsample(sample_shape)
        noise = torch.randn(shape, dtype=self.df.dtype, device=self.df.device).tril(-1)
        bartlett = noise + torch.diag_embed(chi2.sqrt())
        factor = self._unbroadcasted_scale_tril @ bartlett
        return factor @ factor.transpose(-1, -2)
