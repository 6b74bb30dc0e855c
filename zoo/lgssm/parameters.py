r"""The linear-Gaussian state-space model's parameters, declared.

Six matrices, each one :class:`zoo.params.ParameterSpec`: its shape, its constraint, whether
it is learned, fixed (given by the user) or held (the diffuse prior's mean and covariance,
which only seed simulation), where it is stored and its prior. The model's parameter
handling (point values, sample sites, priors, the mean-field guide, counting) is generic
code over these records.

=====================  ==========  ===================================  ===========================
matrix                 shape       constraint                           weak prior of the site
=====================  ==========  ===================================  ===========================
``transition_matrix``  ``(d, d)``  free                                 :math:`N(0, 1)` entries
``observation_matrix`` ``(p, d)``  free                                 :math:`N(0, 100\,\bar v/s^2)`
``transition_cov``     ``(d, d)``  positive definite / positive diag    IW / inverse-gamma (``s^2``)
``observation_cov``    ``(p, p)``  positive definite / positive diag    IW / inverse-gamma (``v_j``)
``initial_mean``       ``(d,)``    free                                 :math:`N(0, 100\, m^2)`
``initial_cov``        ``(d, d)``  positive definite                    :math:`\mathrm{IW}(d + 1, 2 m^2 I)`
=====================  ==========  ===================================  ===========================

A diagonal covariance's site is its diagonal, named ``transition_var`` / ``observation_var``.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch

from zoo.params import Constraint, InverseWishart, ParameterSpec, Role

__all__ = ["PARAMETER_NAMES", "SITE_ORDER", "parameter_specs"]

#: The model's matrices, in the order ``from_params`` takes them.
PARAMETER_NAMES = (
    "transition_matrix",
    "observation_matrix",
    "transition_cov",
    "observation_cov",
    "initial_mean",
    "initial_cov",
)
#: The order in which ``model()`` samples the learned matrices' sites.
SITE_ORDER = (
    "transition_matrix",
    "transition_cov",
    "observation_matrix",
    "observation_cov",
    "initial_mean",
    "initial_cov",
)
INITIAL_NAMES = ("initial_mean", "initial_cov")
#: Weak-prior constants: variances ~ InverseGamma(shape, rate * scale), matrices' entry scales.
VARIANCE_SHAPE = 1.0
VARIANCE_RATE = 1e-3
TRANSITION_SCALE = 1.0
OBSERVATION_SCALE = 10.0
INITIAL_MEAN_SCALE = 10.0


# -- weak priors: each a function of the model (its data scale) ---------------------------
def _zeros(model, *shape):
    return torch.zeros(*shape, dtype=model._dtype, device=model._device)


def _transition_matrix_prior(model) -> dist.Distribution:
    return dist.Normal(_zeros(model, model.state_dim, model.state_dim), TRANSITION_SCALE).to_event(2)


def _observation_matrix_prior(model) -> dist.Distribution:
    state_var, _ = model._state_scale()
    scale = OBSERVATION_SCALE * (model.data_var.mean() / state_var).sqrt()
    return dist.Normal(_zeros(model, model.obs_dim, model.state_dim), scale).to_event(2)


def _initial_mean_prior(model) -> dist.Distribution:
    _, state_second = model._state_scale()
    return dist.Normal(_zeros(model, model.state_dim), INITIAL_MEAN_SCALE * state_second.sqrt()).to_event(1)


def _covariance_prior(variances_of: Callable, diagonal: bool) -> Callable:
    """Inverse-gamma variances (diagonal) or an inverse-Wishart with the same diagonal
    marginals (full), on the scale of ``variances_of(model)`` ``(dim,)``."""

    def prior(model) -> dist.Distribution:
        variances = variances_of(model)
        if diagonal:
            return dist.InverseGamma(torch.full_like(variances, VARIANCE_SHAPE), VARIANCE_RATE * variances).to_event(1)
        df = torch.tensor(variances.shape[0] - 1 + 2 * VARIANCE_SHAPE, dtype=variances.dtype, device=variances.device)
        return InverseWishart(df, torch.diag_embed((2 * VARIANCE_RATE * variances).sqrt()))

    return prior


def _observation_variances(model):
    return model.data_var


def _transition_variances(model):
    return model._state_scale()[0].expand(model.state_dim)


def _initial_variances(model):
    # a proper prior of the state's magnitude
    return (model._state_scale()[1] / VARIANCE_RATE).expand(model.state_dim)


_WEAK_PRIORS = {
    "transition_matrix": lambda diagonal: _transition_matrix_prior,
    "observation_matrix": lambda diagonal: _observation_matrix_prior,
    "initial_mean": lambda diagonal: _initial_mean_prior,
    "transition_cov": lambda diagonal: _covariance_prior(_transition_variances, diagonal),
    "observation_cov": lambda diagonal: _covariance_prior(_observation_variances, diagonal),
    "initial_cov": lambda diagonal: _covariance_prior(_initial_variances, diagonal),
}


def parameter_specs(
    state_dim: int,
    obs_dim: int,
    *,
    transition_cov_type: str,
    observation_cov_type: str,
    initial: str,
    prior: str,
    fixed_names: tuple[str, ...],
) -> dict[str, ParameterSpec]:
    """The spec of each matrix, keyed by name in :data:`PARAMETER_NAMES` order.

    Args:
        state_dim, obs_dim: ``d`` and ``p``.
        transition_cov_type, observation_cov_type: ``"full"`` or ``"diag"``.
        initial: ``"prior"`` (``initial_*`` learned) or ``"diffuse"`` (held: they only seed ``sample``).
        prior: ``"weak"`` or ``"none"`` (improper flat sites).
        fixed_names: the matrices given as fixed values (buffers ``fixed_{name}``).
    """
    d, p = state_dim, obs_dim
    shapes = {
        "transition_matrix": (d, d),
        "observation_matrix": (p, d),
        "transition_cov": (d, d),
        "observation_cov": (p, p),
        "initial_mean": (d,),
        "initial_cov": (d, d),
    }
    diagonal = {"transition_cov": transition_cov_type == "diag", "observation_cov": observation_cov_type == "diag"}
    specs = {}
    for name in PARAMETER_NAMES:
        is_cov = name.endswith("_cov")
        if name in fixed_names:
            role = Role.FIXED
        elif name in INITIAL_NAMES and initial == "diffuse":
            role = Role.HELD
        else:
            role = Role.LEARNED
        prefix = name.rsplit("_", 1)[0]  # "transition", "observation", "initial"
        if not is_cov:
            constraint, storage, site = (
                Constraint.FREE,
                {"matrix": f"{prefix}_weight", "mean": "initial_loc"}[name.rsplit("_", 1)[1]],
                name,
            )
        elif diagonal.get(name, False) and role is not Role.FIXED:
            constraint, storage, site = Constraint.POSITIVE_DIAG, f"{prefix}_log_var", f"{prefix}_var"
        else:
            # A fixed covariance need only be positive definite, whatever the covariance type.
            constraint, storage, site = Constraint.POSITIVE_DEFINITE, f"{prefix}_scale_tril_unconstrained", name
        if role is Role.FIXED:
            storage = f"fixed_{name}"
        weak = _WEAK_PRIORS[name](constraint is Constraint.POSITIVE_DIAG)
        specs[name] = ParameterSpec(
            name=name,
            shape=shapes[name],
            constraint=constraint,
            role=role,
            storage=storage,
            site=site,
            prior=weak if prior == "weak" else None,
        )
    return specs
