"""The contract every model family implements.

Tools in :mod:`inference` (the fit loop, scoring, export) depend on this class
only, never on a concrete family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from .batch import SequenceBatch

if TYPE_CHECKING:
    from .forecasting import ForecastDistribution
    from .training.options import EMOptions, NUTSOptions, SVIOptions


class NotSupported(NotImplementedError):
    """A capability the model's family does not have (see :meth:`SequenceModel.supports`)."""


#: The optional capabilities a family may declare, as :meth:`SequenceModel.supports` names them.
#: A method capability is supported when the family overrides the contract's method (whose
#: default raises :class:`NotSupported`); the others are class attributes.
CAPABILITIES = {
    "loss": "loss(batch, **step_kwargs): its own training objective, for fit(..., loss='model')",
    "em": "closed-form EM: e_step/m_step or em_step (the class attribute supports_em)",
    "filter": "filter(values, lengths): filtered state marginals",
    "smooth": "smooth(values, lengths): smoothed state marginals",
    "decode": "decode(values, lengths): the most probable state path",
    "sample_states": "sample_states(values, lengths, num_samples, generator): posterior state paths",
    "forecast_distribution": "forecast_distribution(history, steps, num_samples=, generator=): a ForecastDistribution",
    "nuts_log_likelihood": "nuts_log_likelihood(batch): a direct potential for NUTS",
    "parameter_sites": "parameter_sites(): priors of the global sites (MCMC, ArviZ)",
    "restarts": "reset_parameters(generator): a fresh random initialisation",
    "sample_temperature": "sample(..., temperature=): sampling at a temperature",
    "sample_prime": "sample(..., prime=): sampling continuations of a given prefix",
}


class SequenceModel(PyroModule):
    """Base class of every model in the zoo.

    A family subclasses this and provides:

    * ``model(batch)`` — the Pyro generative model of a :class:`SequenceBatch`.
      Observations enter through masked ``pyro.sample(..., obs=...)`` inside
      :func:`inference.batch.sequence_plate` so mini-batches are scaled.
    * ``guide(batch)`` — its variational family (may sample nothing, for a
      model with no latent variable or a MAP point estimate held as params).
    * ``log_prob(values, lengths=None)`` — ``(N,)`` log-likelihood of each
      sequence under the current point parameters. Exact when
      ``exact_likelihood`` is True; otherwise a bound, and the family says
      which in ``likelihood_kind``.
    * ``sample(num_sequences, length, generator=None)`` — a
      :class:`SequenceBatch` of synthetic sequences.
    * ``config()`` — the constructor keyword arguments (JSON-serialisable)
      that rebuild an untrained model of the same shape; weights are the
      module's ``state_dict()``.

    **Capabilities.** What a family may or may not do is declared, never probed:
    each optional capability (:data:`CAPABILITIES`: its own ``loss``, EM,
    ``filter``, ``smooth``, ``decode``, ``sample_states``,
    ``forecast_distribution``, ``nuts_log_likelihood``, parameter sites,
    restarts, sampling with a temperature or a prime) is a method here whose
    default raises :class:`NotSupported`, or a class attribute, and
    ``Model.supports(name)`` says whether the family has it.

    **Parameter sites** (for MCMC, posterior export and diagnostics). A family
    whose ``model()`` samples its global parameters from priors, as
    ``pyro.sample(name, prior)`` sites, lists them in ``parameter_sites()``
    (name -> prior, in the order ``model()`` samples them), returns their
    current point values from ``parameter_values()``, writes values of those
    sites back into the point parameters with ``set_parameter_values()`` (so
    ``log_prob``, ``smooth``, ``sample`` ... at a posterior draw are
    ``set_parameter_values(draw)`` followed by the usual call), and names the
    event dimensions of each site in ``site_dims()`` for ArviZ. A model with no
    prior (e.g. an RNN whose weights are plain parameters) keeps the empty
    defaults. A family with a closed-form EM implements ``em_step`` (and
    sets ``supports_em``), preferably as ``e_step(batch)`` (additive
    sufficient statistics, with ``"log_likelihood"``) and ``m_step(statistics)``
    plus ``log_prior()``, so statistics of mini-batches or processes can be
    summed before the M-step; ``reset_parameters(generator)`` draws a fresh
    initialisation (used by random restarts).

    **Scoring and training hooks.** ``log_prob_batch(batch, num_particles=1)``
    is what scoring and validation call (covariates reach it through the
    batch); ``likelihood_label()`` words its column; a family may define
    ``loss(batch, **step_kwargs)`` (a Tensor to minimise or a
    :class:`~inference.training.LossOutput`) for ``fit(..., loss="model")``;
    ``fit_defaults(method)`` is the typed options record that ``fit`` and
    ``seqzoo fit`` both start from (the family's training recipe), and
    ``score_particles()`` the particles of its reported scores. A model whose only latent
    sites are its parameters may define ``nuts_log_likelihood(batch)`` so that
    NUTS runs on a direct potential instead of Pyro's trace (see
    :mod:`inference.mcmc`; the linear-Gaussian model does).

    Parameters are module-local (``pyro.settings`` ``module_local_params``,
    switched on when :mod:`inference` is imported), so two models in one
    process never share a parameter through Pyro's global param store, and
    ``state_dict()`` holds every learned value, guide parameters included.
    """

    #: Whether ``log_prob`` is an exact log-likelihood (else a labelled bound).
    exact_likelihood: ClassVar[bool] = True
    #: What ``log_prob`` returns, as a report should label it.
    likelihood_kind: ClassVar[str] = "exact"
    #: Whether the model has discrete sample sites that TraceEnum_ELBO must enumerate.
    has_enumerated_sites: ClassVar[bool] = False
    #: Whether ``em_step`` is implemented.
    supports_em: ClassVar[bool] = False
    #: Short name used in reports and run directories.
    family: ClassVar[str] = "model"
    #: Keyword options ``sample`` takes beyond the contract's (``"temperature"``, ``"prime"``).
    sample_options: ClassVar[frozenset[str]] = frozenset()
    #: Symbols of a categorical model (``None`` for other observations).
    num_symbols: int | None = None

    @classmethod
    def supports(cls, capability: str) -> bool:
        """Whether this family has ``capability`` (a key of :data:`CAPABILITIES`): the one
        question the fit loop, MCMC, export and the command line ask of a model, instead of
        probing for attributes.

        Raises:
            ValueError: ``capability`` is not one of :data:`CAPABILITIES`.
        """
        if capability not in CAPABILITIES:
            raise ValueError(f"capability: expected one of {sorted(CAPABILITIES)}, got {capability!r}")
        if capability == "em":
            return bool(cls.supports_em)
        if capability.startswith("sample_") and capability != "sample_states":
            return capability[len("sample_") :] in cls.sample_options
        method = "reset_parameters" if capability == "restarts" else capability
        return getattr(cls, method) is not getattr(SequenceModel, method)

    def not_supported(self, capability: str) -> NotSupported:
        """The error a missing capability raises, naming the model and what it lacks."""
        return NotSupported(f"{type(self).__name__} does not support {capability}: {CAPABILITIES[capability]}")

    # -- required ---------------------------------------------------------
    def model(self, batch: SequenceBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement model(batch)")

    def guide(self, batch: SequenceBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement guide(batch)")

    def log_prob(self, values: Tensor, lengths: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob(values, lengths)")

    def sample(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> SequenceBatch:
        raise NotImplementedError(f"{type(self).__name__} must implement sample(num_sequences, length)")

    def config(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement config()")

    # -- optional capabilities (see supports) ----------------------------
    def loss(self, batch: SequenceBatch, **step_kwargs: Any) -> Any:
        """The family's own training objective on ``batch``: a scalar Tensor to minimise or a
        :class:`~inference.training.LossOutput`; ``fit(..., loss="model")`` trains on it."""
        raise self.not_supported("loss")

    def filter(self, values: Tensor, lengths: Tensor | None = None) -> Any:  # noqa: A003 (the filtering name)
        """Filtered state marginals ``p(s_t | x_{1:t})`` of each step (the family's type)."""
        raise self.not_supported("filter")

    def smooth(self, values: Tensor, lengths: Tensor | None = None) -> Any:
        """Smoothed state marginals ``p(s_t | x_{1:T})`` of each step (the family's type)."""
        raise self.not_supported("smooth")

    def decode(self, values: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(N, T)`` the most probable state path of each sequence (-1 past its length)."""
        raise self.not_supported("decode")

    def sample_states(
        self,
        values: Tensor,
        lengths: Tensor | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(S, N, T, ...)`` state paths drawn from their posterior given the observations."""
        raise self.not_supported("sample_states")

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """The predictive distribution of the ``steps`` observations after each sequence of
        ``history`` (:class:`~inference.forecasting.ForecastDistribution`; ``num_samples``
        paths where the family forecasts by sampling)."""
        raise self.not_supported("forecast_distribution")

    def nuts_log_likelihood(self, batch: SequenceBatch) -> Any:
        """For a model whose only latent sites are its parameters: a direct potential for
        NUTS (see :mod:`inference.mcmc`)."""
        raise self.not_supported("nuts_log_likelihood")

    # -- optional ---------------------------------------------------------
    def e_step(self, batch: SequenceBatch) -> dict[str, Tensor]:
        """Additive sufficient statistics of ``batch`` at the current parameters
        (sums over sequences, so statistics of mini-batches or processes add up);
        ``"log_likelihood"`` holds the summed log-likelihood."""
        raise NotSupported(f"{type(self).__name__} has no closed-form EM; fit it with method='svi'")

    def m_step(self, statistics: Mapping[str, Tensor]) -> None:
        """Sets the parameters that maximise the expected complete-data log-likelihood
        (plus log-prior) given summed :meth:`e_step` statistics."""
        raise NotSupported(f"{type(self).__name__} has no closed-form EM; fit it with method='svi'")

    def log_prior(self) -> Tensor:
        """Log-density of the current point parameters under the priors (0 without priors)."""
        return torch.zeros(())

    def em_step(self, batch: SequenceBatch) -> Tensor:
        """One EM iteration on ``batch``; returns the objective (log-likelihood
        plus log-prior, in nats) at the parameters *before* the update."""
        statistics = self.e_step(batch)
        with torch.no_grad():  # the objective is reported, not differentiated
            objective = statistics["log_likelihood"] + self.log_prior()
        self.m_step(statistics)
        return objective

    def em_converged_check(self) -> bool:
        """Whether the current parameters may be declared an EM fixed point once
        the objective has stopped rising (default True). A family whose states
        are exchangeable labels can return False while two states are nearly
        identical (a symmetric saddle that EM leaves only slowly); see
        :func:`near_duplicate_states`."""
        return True

    def fit_defaults(self, method: str) -> SVIOptions | EMOptions | NUTSOptions:
        """The options record :func:`inference.fit.fit` starts from for ``method``
        (``"svi"``, ``"em"`` or ``"nuts"``), before the caller's keywords; ``seqzoo fit``
        trains with the same record plus the flags the user gives. The default is the
        record's own defaults; a family overrides it to declare its recipe (its loss,
        learning rate, mini-batches, KL annealing ...), e.g.
        ``dataclasses.replace(super().fit_defaults("svi"), learning_rate=2e-3)``."""
        from .training.options import EMOptions, NUTSOptions, SVIOptions

        records = {"svi": SVIOptions, "em": EMOptions, "nuts": NUTSOptions}
        if method not in records:
            raise ValueError(f"method: expected 'svi', 'em' or 'nuts', got {method!r}")
        return records[method]()

    def score_particles(self) -> int:
        """Particles of the held-out scores a report gives (:func:`inference.scoring.score`'s
        ``num_particles``): 1 (the exact likelihood, or the bound itself) unless the family's
        bound tightens with more (an IWAE bound)."""
        return 1

    def likelihood_label(self, num_particles: int = 1) -> str:
        """How a report should label :meth:`log_prob_batch` scores: ``"exact"``,
        ``"ELBO"``, ``"IWAE bound (M=...)"`` ...; default ``likelihood_kind``."""
        return self.likelihood_kind

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draws a fresh random initialisation (for restarts)."""
        raise self.not_supported("restarts")

    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> None:
        """Optional data-dependent initialisation, called once by ``fit``."""

    def parameter_sites(self) -> dict[str, dist.Distribution]:
        """Prior of every global sample site of ``model()``, in sampling order
        (``{}`` for a model without priors)."""
        return {}

    def parameter_values(self) -> dict[str, Tensor]:
        """Current point value of every site in :meth:`parameter_sites`."""
        return {}

    def set_parameter_values(self, values: Mapping[str, Tensor]) -> None:
        """Writes values of the sites in :meth:`parameter_sites` (each of the
        site's shape) into the point parameters; sites not named keep theirs."""
        if values:
            raise NotImplementedError(f"{type(self).__name__} has no parameter sites to set")

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        """Names of the event dimensions of each parameter site, for ArviZ
        (e.g. ``{"transition": ("state", "next_state")}``)."""
        return {}

    def state_label_axes(self) -> dict[str, tuple[int, ...]]:
        """For a model whose discrete states are exchangeable labels (an HMM,
        a topic model): the event axes of each parameter site that the label
        indexes (e.g. ``{"transition": (0, 1), "means": (0,)}``), so that
        posterior draws can be aligned to one labelling
        (:func:`inference.arviz.align_state_labels`). ``{}``: nothing to align."""
        return {}

    def state_label_features(self, values: Mapping[str, Tensor]) -> Tensor:
        """``(K, F)`` features of each state at parameter-site ``values`` that
        tell states apart (emission means, word distributions ...); labels are
        matched across draws on them. Needed when :meth:`state_label_axes` is
        not empty."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its state labels")

    # -- shared -----------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """Number of free scalar parameters of the point model (guide excluded)."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith("guide_"))

    def log_prob_batch(self, batch: SequenceBatch, *, num_particles: int = 1) -> Tensor:
        """THE scoring hook: ``(N,)`` log-likelihood (or the family's bound) of
        each sequence of ``batch``, covariates included.

        The default is ``log_prob(batch.values, batch.lengths)``; a family
        whose likelihood reads covariates (``batch.covariates``) or is a
        stochastic bound overrides it. A stochastic bound draws from torch's
        global RNG with ``num_particles`` samples;
        :func:`inference.scoring.score` seeds it, so scores are reproducible.
        """
        return self.log_prob(batch.values, batch.lengths)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def near_duplicate_states(features: Tensor, tolerance: float = 1e-2) -> bool:
    """Whether two states are nearly identical.

    Args:
        features: ``(K, F)`` what tells the states apart (as
            :meth:`SequenceModel.state_label_features` returns).
        tolerance: two states are near duplicates when the largest absolute
            difference of their features is below ``tolerance`` times the
            largest absolute feature.

    Returns:
        True when some pair of the ``K`` states is that close.
    """
    features = torch.as_tensor(features).detach().double().reshape(features.shape[0], -1)
    if features.shape[0] < 2:
        return False
    scale = float(features.abs().max())
    distance = (features.unsqueeze(0) - features.unsqueeze(1)).abs().amax(-1)  # (K, K)
    distance.fill_diagonal_(float("inf"))
    return bool(distance.min() <= tolerance * max(scale, torch.finfo(torch.float64).tiny))
