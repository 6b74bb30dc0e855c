"""The linear-Gaussian state-space model class (:class:`LinearGaussianSSM`): its constructors,
its parameters (generic code over the specs of :mod:`zoo.lgssm.parameters`), the Pyro model
and guides, and exact inference through :mod:`inference.kalman`. EM lives in
:mod:`zoo.lgssm.em`, the distributions in :mod:`zoo.lgssm.distributions`; the family is
described in :mod:`zoo.lgssm`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from inference import kalman
from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.forecasting import ForecastDistribution
from inference.validation import check_lengths, valid_mask
from zoo.params import (
    Constraint,
    PointParameters,
    constrain_tril,
    inverse_wishart_factor,
    inverse_wishart_factor_values,
    lognormal_factor,
    lognormal_factor_values,
    normal_factor,
    normal_factor_values,
    point_property,
    symmetrise,
    unconstrain_tril,
    write_parameters,
)

from .distributions import GaussianChain, SmoothingPosterior, observation_log_density
from .em import LinearGaussianEM
from .parameters import PARAMETER_NAMES, SITE_ORDER, parameter_specs

__all__ = ["Imputation", "LinearGaussianSSM"]

_COV_TYPES = ("full", "diag")
_INITIALS = ("prior", "diffuse")
_PRIORS = ("weak", "none")
_GUIDES = ("map", "meanfield")
_LATENTS = ("marginal", "sampled")
_STATES_GUIDES = ("exact", "learned")


class Imputation(NamedTuple):
    """Posterior of every observation entry given the observed ones.

    Attributes:
        mean: ``(N, T, p)`` :math:`E[X_{tj} \\mid x_{obs}]`; observed entries as given.
        var: ``(N, T, p)`` :math:`\\operatorname{Var}(X_{tj} \\mid x_{obs})`; 0 at observed entries.
        Both are zero at padded steps.
    """

    mean: Tensor
    var: Tensor


# -- the model -------------------------------------------------------------------------
class LinearGaussianSSM(LinearGaussianEM, PointParameters, SequenceModel):
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
    _placement_tensor = "data_mean"

    def __init__(
        self,
        state_dim: int,
        obs_dim: int,
        *,
        transition_cov_type: str = "full",
        observation_cov_type: str = "full",
        initial: str = "prior",
        prior: str = "weak",
        guide: str = "map",
        latent: str = "marginal",
        states_guide: str = "exact",
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("state_dim", state_dim), ("obs_dim", obs_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value, allowed in (
            ("transition_cov_type", transition_cov_type, _COV_TYPES),
            ("observation_cov_type", observation_cov_type, _COV_TYPES),
            ("initial", initial, _INITIALS),
            ("prior", prior, _PRIORS),
            ("guide", guide, _GUIDES),
            ("latent", latent, _LATENTS),
            ("states_guide", states_guide, _STATES_GUIDES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        if latent == "sampled" and initial == "diffuse":
            raise ValueError(
                "latent='sampled' needs a proper prior on the first state; use initial='prior' "
                "(the diffuse prior is improper, so the states cannot be sample sites)"
            )
        self.state_dim, self.obs_dim = state_dim, obs_dim
        self.transition_cov_type, self.observation_cov_type = transition_cov_type, observation_cov_type
        self.initial, self.prior_type, self.guide_type, self.latent = initial, prior, guide, latent
        self.states_guide = states_guide
        d, p = state_dim, obs_dim
        fixed = dict(fixed or {})
        dtype = torch.get_default_dtype()
        for name in fixed:
            if name not in PARAMETER_NAMES:
                raise ValueError(f"fixed: unknown parameter {name!r}; expected names among {PARAMETER_NAMES}")
        self.fixed_names = tuple(name for name in PARAMETER_NAMES if name in fixed)
        #: The declared parameters (:mod:`zoo.lgssm.parameters`), by name.
        self._specs = parameter_specs(
            d,
            p,
            transition_cov_type=transition_cov_type,
            observation_cov_type=observation_cov_type,
            initial=initial,
            prior=prior,
            fixed_names=self.fixed_names,
        )
        for name in self.fixed_names:
            value = torch.as_tensor(fixed[name])
            value = value.to(value.dtype if value.is_floating_point() else dtype)
            self._specs[name].check(f"fixed[{name!r}]", value)
            self._specs[name].register(self, value)
        # Storage of every other matrix, at a neutral start: parameters when learned, buffers
        # when held (the diffuse prior's mean and covariance, which only seed ``sample``).
        defaults = {
            "transition_matrix": 0.9 * torch.eye(d),
            "observation_matrix": torch.eye(p, d),
            "initial_mean": torch.zeros(d),
            "initial_cov": torch.eye(d),
            "transition_cov": torch.eye(d),
            "observation_cov": torch.eye(p),
        }
        for name, value in defaults.items():
            if name not in self.fixed_names:
                self._specs[name].register(self, value)
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
    def from_params(
        cls,
        transition_matrix,
        observation_matrix,
        transition_cov,
        observation_cov,
        initial_mean,
        initial_cov,
        *,
        learn: Iterable[str] = PARAMETER_NAMES,
        **kwargs,
    ) -> LinearGaussianSSM:
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
        given = dict(
            zip(
                PARAMETER_NAMES,
                (transition_matrix, observation_matrix, transition_cov, observation_cov, initial_mean, initial_cov),
            )
        )
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
    def local_level(
        cls,
        level_var: float = 1.0,
        noise_var: float = 1.0,
        *,
        initial: str = "diffuse",
        initial_mean: float = 0.0,
        initial_var: float = 1e6,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> LinearGaussianSSM:
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
        return cls.from_params(
            one,
            one,
            level_var * one,
            noise_var * one,
            torch.full((1,), float(initial_mean), dtype=dtype),
            initial_var * one,
            learn=("transition_cov", "observation_cov"),
            initial=initial,
            **kwargs,
        )

    @classmethod
    def local_linear_trend(
        cls,
        level_var: float = 1.0,
        slope_var: float = 1.0,
        noise_var: float = 1.0,
        *,
        initial: str = "diffuse",
        initial_mean=(0.0, 0.0),
        initial_var: float = 1e6,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> LinearGaussianSSM:
        """Level and slope: ``d = 2``, ``A = [[1, 1], [0, 1]]``, ``B = [[1, 0]]`` fixed, a diagonal
        transition covariance ``diag(level_var, slope_var)`` and ``noise_var`` learned."""
        dtype = dtype or torch.get_default_dtype()
        kwargs.setdefault("transition_cov_type", "diag")
        return cls.from_params(
            torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=dtype),
            torch.tensor([[1.0, 0.0]], dtype=dtype),
            torch.diag(torch.tensor([level_var, slope_var], dtype=dtype)),
            torch.tensor([[noise_var]], dtype=dtype),
            torch.as_tensor(initial_mean, dtype=dtype),
            initial_var * torch.eye(2, dtype=dtype),
            learn=("transition_cov", "observation_cov"),
            initial=initial,
            **kwargs,
        )

    # -- parameters (generic code over the specs) -----------------------------------
    def _learned_specs(self) -> list:
        """Specs of the learned matrices, in the order ``model()`` samples their sites."""
        return [self._specs[name] for name in SITE_ORDER if self._specs[name].learned]

    def _site_names(self) -> dict[str, str]:
        """Site name -> matrix name for every learned matrix, in the order ``model()`` samples them."""
        return {spec.site: spec.name for spec in self._learned_specs()}

    def _site_point(self) -> dict[str, Tensor]:
        """Point value of every site: MAP values (``guide="map"``) or the variational means."""
        if self.guide_type == "meanfield":
            return {site: q.mean for site, q in self._variational().items()}
        return {spec.site: spec.site_value(spec.read(self)) for spec in self._learned_specs()}

    def _params_from_sites(self, sites: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """All six matrices from values of the sites (diagonal sites as vectors), the fixed
        values and the held diffuse-start values."""
        return {
            name: spec.value_from_site(sites[spec.site]) if spec.learned else spec.read(self)
            for name, spec in self._specs.items()
        }

    def _point(self) -> dict[str, Tensor]:
        """The six matrices at the point values."""
        return self._params_from_sites(self._site_point())

    transition_matrix = point_property(
        "transition_matrix", "``(d, d)`` :math:`A`, acting on column states: :math:`E[S_t \\mid S_{t-1}] = A S_{t-1}`."
    )
    observation_matrix = point_property("observation_matrix", "``(p, d)`` :math:`B`: :math:`E[X_t \\mid S_t] = B S_t`.")
    transition_cov = point_property("transition_cov", "``(d, d)`` :math:`\\Gamma`.")
    observation_cov = point_property("observation_cov", "``(p, p)`` :math:`\\Sigma`.")
    initial_mean = point_property("initial_mean", "``(d,)`` mean of :math:`S_1`.")
    initial_cov = point_property("initial_cov", "``(d, d)`` covariance of :math:`S_1`.")

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Writes point values of non-fixed matrices (full ``(d, d)``/``(p, p)`` shapes for
        covariances; a diagonal covariance type needs a diagonal matrix)."""
        with torch.no_grad():
            for name, value in values.items():
                if name not in PARAMETER_NAMES:
                    raise ValueError(f"values: unknown parameter {name!r}; expected names among {PARAMETER_NAMES}")
                self._specs[name].write(self, torch.as_tensor(value).to(dtype=self._dtype, device=self._device))
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
        return {spec.site: spec.site_prior(self) for spec in self._learned_specs()}

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
            spec = self._specs[sites[site]]
            full[spec.name] = spec.value_from_site(torch.as_tensor(value, dtype=self._dtype, device=self._device))
        self.set_values(full)

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {
            "transition_matrix": ("state", "state_from"),
            "observation_matrix": ("obs", "state"),
            "transition_cov": ("state", "state_bis"),
            "transition_var": ("state",),
            "observation_cov": ("obs", "obs_bis"),
            "observation_var": ("obs",),
            "initial_mean": ("state",),
            "initial_cov": ("state", "state_bis"),
        }
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
        return sum(spec.num_free for spec in self._learned_specs())

    # -- variational guide -----------------------------------------------------------
    def _variational(self) -> dict[str, dist.Distribution]:
        """The mean-field family: log-normal variances, inverse-Wishart full covariances,
        Normal matrices and means."""
        q = {}
        for spec in self._learned_specs():
            if spec.constraint is Constraint.POSITIVE_DIAG:
                q[spec.site] = lognormal_factor(self, spec.site, 1)
            elif spec.constraint is Constraint.POSITIVE_DEFINITE:
                q[spec.site] = inverse_wishart_factor(self, spec.site)
            else:
                q[spec.site] = normal_factor(self, spec.site, len(spec.shape))
        return q

    def _sync_variational_to_point(self, create: bool = False) -> None:
        """Centres the mean-field factors on the current point values (each factor's mean is
        the point value; see :mod:`zoo.params`)."""
        if self.guide_type != "meanfield":
            return
        values = {}
        for spec in self._learned_specs():
            value = spec.site_value(spec.read(self)).detach()
            if spec.constraint is Constraint.POSITIVE_DIAG:
                values.update(lognormal_factor_values(spec.site, value))
            elif spec.constraint is Constraint.POSITIVE_DEFINITE:
                values.update(inverse_wishart_factor_values(spec.site, value))
            else:
                values.update(normal_factor_values(spec.site, value))
        write_parameters(self, values, create)

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
                pyro.sample("states", SmoothingPosterior(filtered, params["transition_matrix"], batch.lengths))

    def _states_guide_params(self) -> dict[str, Tensor]:
        """The learned Markov Gaussian guide's own linear-Gaussian model, whose smoothing
        posterior is the guide of the states."""

        def cov(key):
            tril = constrain_tril(getattr(self, key))
            return tril @ tril.T

        return {
            "transition_matrix": self.guide_states_transition_matrix,
            "transition_cov": cov("guide_states_transition_tril"),
            "observation_matrix": self.guide_states_observation_matrix,
            "observation_cov": cov("guide_states_observation_tril"),
            "initial_mean": self.guide_states_initial_mean,
            "initial_cov": cov("guide_states_initial_tril"),
        }

    def _sync_states_guide(self, create: bool = False) -> None:
        """Sets the learned states guide to the smoothing posterior at the current point values
        (where it is exact); SVI then moves it on its own."""
        if not (self.latent == "sampled" and self.states_guide == "learned"):
            return
        point = {name: value.detach() for name, value in self._point().items()}
        values = {
            "guide_states_transition_matrix": point["transition_matrix"].clone(),
            "guide_states_transition_tril": unconstrain_tril(torch.linalg.cholesky(point["transition_cov"])),
            "guide_states_observation_matrix": point["observation_matrix"].clone(),
            "guide_states_observation_tril": unconstrain_tril(torch.linalg.cholesky(point["observation_cov"])),
            "guide_states_initial_mean": point["initial_mean"].clone(),
            "guide_states_initial_tril": unconstrain_tril(torch.linalg.cholesky(point["initial_cov"])),
        }
        write_parameters(self, values, create)

    # -- the Pyro model ----------------------------------------------------------------
    def model(self, batch: SequenceBatch) -> None:
        values = self._check_observations(batch.values, "batch.values")
        sites = {site: pyro.sample(site, prior) for site, prior in self._priors().items()}
        params = self._params_from_sites(sites)
        with sequence_plate(batch):
            if self.latent == "marginal":
                pyro.factor("observations", self._log_marginal(params, values, batch.lengths))
            else:
                chain = GaussianChain(
                    params["initial_mean"],
                    params["initial_cov"],
                    params["transition_matrix"],
                    params["transition_cov"],
                    batch.lengths,
                    values.shape[1],
                )
                states = pyro.sample("states", chain)
                pyro.factor(
                    "observations",
                    observation_log_density(
                        values, batch.lengths, states, params["observation_matrix"], params["observation_cov"]
                    ),
                )

    def nuts_log_likelihood(self, batch: SequenceBatch):
        """The ``(N,)`` log-likelihoods ``model()`` factors in, as a function of the site values
        (NUTS's potential without Pyro's trace, see :mod:`inference.mcmc`); ``None`` with
        ``latent="sampled"``, whose states are sample sites too."""
        if self.latent != "marginal":
            return None
        values = self._check_observations(batch.values, "batch.values")
        lengths = batch.lengths

        def log_likelihood(sites: Mapping[str, Tensor]) -> Tensor:
            return self._log_marginal(self._params_from_sites(sites), values, lengths)

        return log_likelihood

    # -- the kernel adapter --------------------------------------------------------------
    @staticmethod
    def _kernel_args(params: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """The matrices in the order of :mod:`inference.kalman`'s functions."""
        return (
            params["transition_matrix"],
            params["transition_cov"],
            params["observation_matrix"],
            params["observation_cov"],
            params["initial_mean"],
            params["initial_cov"],
        )

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
            raise ValueError(
                f"{name}: expected float observations of shape (N, T, {self.obs_dim}) (NaN = missing), "
                f"got {values.dtype} of shape {tuple(values.shape)}"
            )
        if values.shape[1] < 1:
            raise ValueError(f"{name}: expected at least one time step, got shape {tuple(values.shape)}")
        if torch.isinf(values).any():
            raise ValueError(f"{name}: expected finite values or NaN (missing), got an infinite entry")
        return values.to(self._dtype)

    def _inputs(self, values, lengths) -> tuple[Tensor, Tensor]:
        values = self._check_observations(values, "values")
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
        return values, check_lengths(lengths, values.shape[0], values.shape[1], values.device)

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

    def sample_states(
        self, values, lengths=None, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``(num_samples, N, T, d)`` state paths from the posterior (forward filter, backward sample)."""
        return self._call_kernel(
            kalman.sample_states, *self._inputs(values, lengths), num_samples=num_samples, generator=generator
        )

    def forecast(self, values, steps: int, lengths=None) -> kalman.KalmanForecast:
        """Predictive moments of the ``steps`` states and observations after each sequence's end."""
        return self._call_kernel(kalman.forecast, *self._inputs(values, lengths), steps=steps)

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """The exact Gaussian predictive marginals of each observation entry (``num_samples`` and
        ``generator`` unused: nothing is sampled)."""
        moments = self.forecast(history.values, steps, history.lengths)
        scale = moments.observation_cov.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
        return ForecastDistribution.gaussian(moments.observation_mean, scale)

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
        valid = valid_mask(lengths, values.shape[1])
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
    def sample_with_states(
        self, num_sequences: int, length: int, generator: torch.Generator | None = None
    ) -> tuple[SequenceBatch, Tensor]:
        """Synthetic sequences and their states ``(N, T, d)`` at the point parameters (with
        ``initial="diffuse"``, :math:`S_1` is drawn from ``N(initial_mean, initial_cov)``)."""
        for name, value in (("num_sequences", num_sequences), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        with torch.no_grad():
            params = {k: v.detach() for k, v in self._point().items()}
            d, p = self.state_dim, self.obs_dim
            noise_device = generator.device if generator is not None else self._device
            state_noise = torch.randn(
                num_sequences, length, d, generator=generator, dtype=self._dtype, device=noise_device
            ).to(self._device)
            obs_noise = torch.randn(
                num_sequences, length, p, generator=generator, dtype=self._dtype, device=noise_device
            ).to(self._device)
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

    # -- initialisation ---------------------------------------------------------------------
    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> None:
        """Records the data's per-coordinate mean and variance (they scale the priors and the
        starting values) and, unless the values were given (``from_params``), draws a
        data-scaled start with :meth:`reset_parameters`."""
        values, lengths = self._inputs(batch.values, batch.lengths)
        observed = ~values.isnan() & valid_mask(lengths, values.shape[1])[..., None]
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
            eigenvalues, eigenvectors = torch.linalg.eigh(symmetrise(data_cov))
            order = eigenvalues.flip(0)[: min(d, p)].clamp(min=0)
            directions = eigenvectors.flip(1)[:, : min(d, p)]
            obs_matrix = torch.zeros(p, d, dtype=self._dtype, device=self._device)
            obs_matrix[:, : min(d, p)] = directions * (0.5 * order).sqrt()
            scale = self.data_var.mean().sqrt()
            obs_matrix = obs_matrix + 0.1 * scale * noise(p, d)
            values["observation_matrix"] = obs_matrix
        obs_matrix = (
            self._point()["observation_matrix"]
            if "observation_matrix" in self.fixed_names
            else values["observation_matrix"]
        )
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
        return {
            "state_dim": self.state_dim,
            "obs_dim": self.obs_dim,
            "transition_cov_type": self.transition_cov_type,
            "observation_cov_type": self.observation_cov_type,
            "initial": self.initial,
            "prior": self.prior_type,
            "guide": self.guide_type,
            "latent": self.latent,
            "states_guide": self.states_guide,
            "fixed": {name: getattr(self, f"fixed_{name}").tolist() for name in self.fixed_names},
        }
