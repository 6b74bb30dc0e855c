"""The HMM family's shared machinery: :class:`HiddenMarkovModel` (the Markov chain's
parameters and priors, the mean-field guide, the Pyro model with the states marginalised by
:mod:`inference.discrete` or enumerated, exact filtering, smoothing, decoding, forecasting,
sampling and the Baum–Welch E- and M-steps, with the emissions left to subclasses),
``_VectorEmissionHMM`` (the base of the ``(N, T, D)`` emissions: observation checks and the
data's moments), the :class:`Forecast` record and the small helpers they need (random
simplex rows, probability checks, Dirichlet modes, the mean-field factor of a site). The
emissions live in :mod:`zoo.hmm.categorical`, :mod:`zoo.hmm.gaussian` and
:mod:`zoo.hmm.poisson`; the family is described in :mod:`zoo.hmm`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from torch import Tensor, nn

from inference import discrete
from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.validation import check_lengths
from zoo.params import (
    PointParameters,
    dirichlet_factor,
    dirichlet_factor_values,
    lognormal_factor,
    lognormal_factor_values,
    normal_factor,
    normal_factor_values,
    point_property,
    wishart_factor,
    wishart_factor_values,
    write_parameters,
)

_GUIDES = ("map", "meanfield")
#: At most this many observed steps are kept for k-means++ seeding of Gaussian means.
_MAX_SEED_POINTS = 10_000
_MARGINALIZE = ("kernel", "enumerate")


class Forecast(NamedTuple):
    """Predictive distribution of the next ``steps`` observations of each sequence.

    ``state_probs`` is ``(N, steps, K)``. For categorical emissions ``probs`` is
    ``(N, steps, V)``; for Gaussian and Poisson emissions ``mean`` is
    ``(N, steps, D)`` and ``covariance`` is ``(N, steps, D, D)`` (the mixture's).
    """

    state_probs: Tensor
    probs: Tensor | None = None
    mean: Tensor | None = None
    covariance: Tensor | None = None


def _random_simplex(shape: tuple[int, ...], generator: torch.Generator | None, dtype, device) -> Tensor:
    """Rows drawn from a flat Dirichlet (normalised exponentials), reproducible by ``generator``."""
    uniform = torch.rand(
        shape, generator=generator, dtype=dtype, device=generator.device if generator is not None else "cpu"
    )
    weights = -torch.log1p(-uniform.clamp(max=1 - 1e-7)).to(device)
    return weights / weights.sum(-1, keepdim=True)


def _as_probs(name: str, value: Any, shape: tuple[int, ...]) -> Tensor:
    probs = torch.as_tensor(value)
    if not probs.is_floating_point():
        probs = probs.to(torch.get_default_dtype())
    if probs.shape != torch.Size(shape):
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(probs.shape)}")
    if (probs < 0).any() or not torch.allclose(probs.sum(-1), torch.ones((), dtype=probs.dtype), atol=1e-5):
        raise ValueError(f"{name}: expected nonnegative rows summing to 1")
    return probs


class HiddenMarkovModel(PointParameters, SequenceModel):
    """Shared machinery of the HMM family; subclasses define the emissions.

    Subclasses implement ``_emission_priors()``, ``_emission_point()``,
    ``_emission_log_prob(values, params)`` (``(N, T, K)``), ``_emission_statistics``
    and ``_emission_m_step`` (EM), ``_sample_emission`` and ``_check_observations``.

    Example (every family shares these methods):
        >>> hmm = CategoricalHMM.from_probs(torch.tensor([1.0, 0.0]),
        ...                                 torch.tensor([[0.5, 0.5], [0.0, 1.0]]),
        ...                                 torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> x = torch.tensor([[0, 0, 1]])
        >>> hmm.decode(x).tolist(), hmm.smooth(x)[0, -1].tolist()
        ([[0, 0, 1]], [0.0, 1.0])
        >>> hmm.forecast(x, steps=2).probs[0].tolist()
        [[0.0, 1.0], [0.0, 1.0]]
        >>> batch = hmm.sample(4, 10, generator=torch.Generator().manual_seed(0))
        >>> objective = hmm.em_step(batch)  # Baum-Welch; log-likelihood + log prior before it
    """

    family = "hmm"
    supports_em = True
    _placement_tensor = "initial_logits"

    def __init__(
        self,
        num_states: int,
        *,
        guide: str = "map",
        marginalize: str = "kernel",
        initial_concentration: float = 1.0,
        transition_concentration: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_states, int) or num_states < 1:
            raise ValueError(f"num_states: expected a positive int, got {num_states!r}")
        if guide not in _GUIDES:
            raise ValueError(f"guide: expected one of {_GUIDES}, got {guide!r}")
        if marginalize not in _MARGINALIZE:
            raise ValueError(f"marginalize: expected one of {_MARGINALIZE}, got {marginalize!r}")
        for name, value in (
            ("initial_concentration", initial_concentration),
            ("transition_concentration", transition_concentration),
        ):
            if value <= 0:
                raise ValueError(f"{name}: expected a positive float, got {value!r}")
        self.num_states = num_states
        self.guide_type = guide
        self.marginalize = marginalize
        self.initial_concentration = float(initial_concentration)
        self.transition_concentration = float(transition_concentration)
        generator = torch.Generator().manual_seed(0)
        self.initial_logits = nn.Parameter(
            _random_simplex((num_states,), generator, torch.get_default_dtype(), "cpu").log()
        )
        self.transition_logits = nn.Parameter(
            _random_simplex((num_states, num_states), generator, torch.get_default_dtype(), "cpu").log()
        )

    # -- parameters -------------------------------------------------------
    @property
    def has_enumerated_sites(self) -> bool:  # type: ignore[override]
        return self.marginalize == "enumerate"

    def _priors(self) -> dict[str, dist.Distribution]:
        """Prior of every global site, in the order the model samples them."""
        k = self.num_states
        ones = torch.ones(k, dtype=self._dtype, device=self._device)
        priors = {
            "initial": dist.Dirichlet(self.initial_concentration * ones),
            "transition": dist.Dirichlet(self.transition_concentration * ones.expand(k, k)).to_event(1),
        }
        priors.update(self._emission_priors())
        return priors

    def _point(self) -> dict[str, Tensor]:
        """Point values of every global site: the MAP estimate (``guide="map"``)
        or the variational posterior mean (``guide="meanfield"``)."""
        if self.guide_type == "meanfield":
            return {name: q.mean for name, q in self._variational().items()}
        point = {"initial": self.initial_logits.softmax(-1), "transition": self.transition_logits.softmax(-1)}
        point.update(self._emission_point())
        return point

    initial_probs = point_property("initial", "``(K,)`` distribution of the first state.")
    transition_probs = point_property("transition", "``(K, K)`` transition matrix, ``[from, to]``.")

    @property
    def num_parameters(self) -> int:
        k = self.num_states
        return (k - 1) + k * (k - 1) + self._num_emission_parameters()

    # -- parameter sites (MCMC, posterior export) -------------------------
    def parameter_sites(self) -> dict[str, dist.Distribution]:
        """Priors of the global sites of :meth:`model`: ``initial``, ``transition``
        and the emission sites, in sampling order."""
        return self._priors()

    def parameter_values(self) -> dict[str, Tensor]:
        """Point value of each parameter site (detached)."""
        return {name: value.detach().clone() for name, value in self._point().items()}

    def set_parameter_values(self, values) -> None:
        """Writes site values into the MAP parameters (``initial_logits``,
        ``transition_logits`` and the emission parameters) and recentres a
        mean-field guide on them.

        With ``guide="meanfield"`` the point values are the guide's means, which
        follow the written values to within about 1e-3 (a Dirichlet factor is
        never centred exactly; see ``_sync_variational_to_point``).

        Raises:
            KeyError: a name that is not a parameter site.
            ValueError: a value of the wrong shape.
        """
        priors = self._priors()
        with torch.no_grad():
            for name, value in values.items():
                if name not in priors:
                    raise KeyError(
                        f"values: {name!r} is not a parameter site of {type(self).__name__}; "
                        f"expected some of {list(priors)}"
                    )
                value = torch.as_tensor(value, dtype=self._dtype, device=self._device)
                expected = priors[name].shape()
                if value.shape != expected:
                    raise ValueError(f"values[{name!r}]: expected shape {tuple(expected)}, got {tuple(value.shape)}")
                if name == "initial":
                    self.initial_logits.data.copy_(value.clamp(min=torch.finfo(value.dtype).tiny).log())
                elif name == "transition":
                    self.transition_logits.data.copy_(value.clamp(min=torch.finfo(value.dtype).tiny).log())
                else:
                    self._set_emission_value(name, value)
            self._sync_variational_to_point()

    def site_dims(self) -> dict[str, tuple[str, ...]]:
        dims = {"initial": ("state",), "transition": ("state", "next_state")}
        dims.update(self._emission_site_dims())
        return dims

    def state_label_axes(self) -> dict[str, tuple[int, ...]]:
        """For each site, the event axes indexed by the state label (the labels
        of an HMM are exchangeable under its symmetric priors)."""
        axes = {"initial": (0,), "transition": (0, 1)}
        axes.update({name: (0,) for name in self._emission_priors()})
        return axes

    def state_label_features(self, values) -> Tensor:
        """``(K, F)`` what tells the states apart, for aligning labels across draws:
        the emission parameters (see the subclasses)."""
        raise NotImplementedError

    def log_prior(self, point: dict[str, Tensor] | None = None) -> Tensor:
        """Log prior density of the point values (the MAP objective's prior term)."""
        point = self._point() if point is None else point
        return sum(prior.log_prob(point[name]).sum() for name, prior in self._priors().items())

    # -- variational guide ------------------------------------------------
    def _variational(self) -> dict[str, dist.Distribution]:
        """The mean-field family: one factor per global site (the prior's conjugate family
        for simplex and precision-matrix sites, Normal means, log-normal positive sites)."""
        self._ensure_variational_parameters()
        q = {}
        for name, prior in self._priors().items():
            kind = _factor_kind(name, prior)
            if kind == "dirichlet":
                q[name] = dirichlet_factor(self, name)
            elif kind == "normal":
                q[name] = normal_factor(self, name, 2)
            elif kind == "wishart":
                q[name] = wishart_factor(self, name)
            else:  # positive sites: precisions (diag) and rates
                q[name] = lognormal_factor(self, name, 2)
        return q

    def _ensure_variational_parameters(self) -> None:
        if not hasattr(self, "guide_initial_concentration"):
            self._sync_variational_to_point(create=True)

    def _sync_variational_to_point(self, create: bool = False) -> None:
        """Centres the mean-field factors on the current point values (each factor's mean is
        the point value, Dirichlet means to within 1e-3; see :mod:`zoo.params`), so the point
        properties (initial_probs, means, ...) barely change with the guide."""
        if self.guide_type != "meanfield":
            return
        point = {"initial": self.initial_logits.softmax(-1), "transition": self.transition_logits.softmax(-1)}
        point.update(self._emission_point())
        values: dict[str, Tensor] = {}
        for name, prior in self._priors().items():
            value = point[name].detach()
            kind = _factor_kind(name, prior)
            if kind == "dirichlet":
                values.update(dirichlet_factor_values(name, value))
            elif kind == "normal":
                values.update(normal_factor_values(name, value))
            elif kind == "lognormal":
                values.update(lognormal_factor_values(name, value))
            elif kind == "wishart":
                values.update(wishart_factor_values(name, value))
            else:
                raise ValueError(
                    f"guide='meanfield' does not support the {name!r} site of {type(self).__name__}; use guide='map'"
                )
        write_parameters(self, values, create)

    def guide(self, batch: SequenceBatch) -> None:
        if self.guide_type == "meanfield":
            for name, q in self._variational().items():
                pyro.sample(name, q)
            return
        point = self._point()
        for name, prior in self._priors().items():
            pyro.sample(name, dist.Delta(point[name], event_dim=prior.event_dim))

    # -- the Pyro model -----------------------------------------------------
    def model(self, batch: SequenceBatch) -> None:
        values = self._check_observations(batch.values, "batch.values")
        params = {name: pyro.sample(name, prior) for name, prior in self._priors().items()}
        if self.marginalize == "kernel":
            log_emission = self._emission_log_prob(values, params)
            with sequence_plate(batch):
                pyro.factor(
                    "observations",
                    discrete.log_marginal(
                        params["initial"].log(), params["transition"].log(), log_emission, batch.lengths
                    ),
                )
        else:
            self._enumerated_likelihood(values, batch, params)

    def _enumerated_likelihood(self, values: Tensor, batch: SequenceBatch, params: dict[str, Tensor]) -> None:
        """States as enumerated sample sites, for ``TraceEnum_ELBO``."""
        log_emission = self._emission_log_prob(values, params)  # (N, T, K)
        mask = batch.mask
        sequences = torch.arange(batch.num_sequences, device=values.device)
        with sequence_plate(batch, dim=-1):
            state = None
            for t in pyro.markov(range(batch.max_length)):
                probs = params["initial"] if state is None else Vindex(params["transition"])[state]
                with poutine.mask(mask=mask[:, t]):
                    state = pyro.sample(f"state_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                    pyro.factor(f"emission_{t}", Vindex(log_emission)[sequences, t, state])

    # -- exact inference at the point values ------------------------------
    def _kernel_inputs(self, x, lengths) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        values = self._check_observations(x, "x")
        if lengths is not None:
            lengths = check_lengths(torch.as_tensor(lengths), values.shape[0], values.shape[1], values.device)
        point = self._point()
        return point["initial"].log(), point["transition"].log(), self._emission_log_prob(values, point), lengths

    def log_prob(self, x, lengths=None) -> Tensor:
        """``(N,)`` exact log-likelihood of each sequence at the point parameters."""
        return discrete.log_marginal(*self._kernel_inputs(x, lengths))

    def filter(self, x, lengths=None) -> Tensor:
        """``(N, T, K)`` filtered state probabilities p(s_t | x_{1:t}), zeros on padding."""
        return discrete.filter(*self._kernel_inputs(x, lengths)).filtered

    def smooth(self, x, lengths=None) -> Tensor:
        """``(N, T, K)`` posterior state marginals p(s_t | x_{1:L}), zeros on padding."""
        return discrete.forward_backward(*self._kernel_inputs(x, lengths)).state_marginals

    def decode(self, x, lengths=None) -> Tensor:
        """``(N, T)`` Viterbi (MAP) state paths, -1 on padding."""
        return discrete.viterbi(*self._kernel_inputs(x, lengths)).path

    def sample_states(self, x, lengths=None, num_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """``(num_samples, N, T)`` state paths drawn from the posterior (forward-filter backward-sample)."""
        return discrete.sample_paths(*self._kernel_inputs(x, lengths), num_samples=num_samples, generator=generator)

    def forecast(self, x, steps: int, lengths=None) -> Forecast:
        """Predictive distribution of the next ``steps`` observations after each sequence."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        log_initial, log_transition, log_emission, lengths = self._kernel_inputs(x, lengths)
        filtered = discrete.filter(log_initial, log_transition, log_emission, lengths).filtered
        n = filtered.shape[0]
        last = (lengths if lengths is not None else torch.full((n,), filtered.shape[1], device=filtered.device)) - 1
        transition = log_transition.exp()
        last_filtered = filtered[torch.arange(n, device=filtered.device), last.clamp(min=0)]
        # The first forecast step is one transition past the last observation, or s_1 for an empty sequence.
        current = torch.where((last >= 0).unsqueeze(-1), last_filtered @ transition, log_initial.exp().expand(n, -1))
        state_probs = [current]
        for _ in range(steps - 1):
            current = current @ transition
            state_probs.append(current)
        state_probs = torch.stack(state_probs, 1)  # (N, steps, K)
        return self._observation_forecast(state_probs)

    # -- sampling ----------------------------------------------------------
    def sample_with_states(
        self, num_sequences: int, length: int, generator: torch.Generator | None = None
    ) -> tuple[SequenceBatch, Tensor]:
        """Synthetic sequences and their states ``(N, T)`` from the point parameters."""
        if num_sequences < 1 or length < 1:
            raise ValueError(f"num_sequences and length: expected positive ints, got {num_sequences}, {length}")
        point = {k: v.detach() for k, v in self._point().items()}
        states = torch.empty(num_sequences, length, dtype=torch.long, device=self._device)
        states[:, 0] = torch.multinomial(point["initial"].expand(num_sequences, -1), 1, generator=generator).squeeze(-1)
        for t in range(1, length):
            states[:, t] = torch.multinomial(point["transition"][states[:, t - 1]], 1, generator=generator).squeeze(-1)
        values = self._sample_emission(states, point, generator)
        return SequenceBatch.from_tensor(values), states

    def sample(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> SequenceBatch:
        return self.sample_with_states(num_sequences, length, generator)[0]

    # -- EM ------------------------------------------------------------------
    def _check_em(self, caller: str) -> None:
        if self.guide_type != "map":
            raise ValueError(
                f"{caller}: EM fits point estimates; build the model with guide='map' (or fit meanfield by SVI)"
            )

    def e_step(self, batch: SequenceBatch) -> dict[str, Tensor]:
        """Baum–Welch E-step: forward–backward at the point parameters, and the expected
        sufficient statistics of ``batch`` summed over its sequences (float64; statistics of
        disjoint batches add up).

        Returns:
            ``"log_likelihood"`` ``()``, ``"initial_counts"`` ``(K,)`` (expected first
            states), ``"transition_counts"`` ``(K, K)`` (expected transitions ``[from, to]``),
            and the emission statistics of the subclass (``_emission_statistics``).
        """
        self._check_em("e_step")
        with torch.no_grad():
            values = self._check_observations(batch.values, "batch.values")
            point = self._point()
            # The E-step runs in float64 whatever the parameters' dtype: the CPU kernels
            # compute in float64 anyway, and a float32 objective of a long sequence is too
            # coarse for the convergence rule to see slow progress on a plateau.
            log_emission = self._emission_log_prob(values, point).double()
            posterior = discrete.forward_backward(
                point["initial"].log().double(), point["transition"].log().double(), log_emission, batch.lengths
            )
            state_marginals = posterior.state_marginals  # (N, T, K), zeros on padding
            statistics = {
                "log_likelihood": posterior.log_normalizer.sum(),
                "initial_counts": state_marginals[:, 0].sum(0),
                "transition_counts": posterior.transition_counts.sum(0),
            }
            statistics.update(
                self._emission_statistics(values.double() if values.is_floating_point() else values, state_marginals)
            )
        return statistics

    def m_step(self, statistics: Mapping[str, Tensor]) -> None:
        """Closed-form MAP M-step under the priors from summed :meth:`e_step` statistics
        (Gaussian emissions: conditional maximisation, means given the current precisions
        then precisions given the new means)."""
        self._check_em("m_step")
        with torch.no_grad():
            point = self._point()
            self.initial_logits.data.copy_(
                _dirichlet_mode(statistics["initial_counts"], self.initial_concentration).log().to(self._dtype)
            )
            self.transition_logits.data.copy_(
                _dirichlet_mode(statistics["transition_counts"], self.transition_concentration).log().to(self._dtype)
            )
            self._emission_m_step(statistics, point)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random rows from flat Dirichlets; emissions spread around the data."""
        with torch.no_grad():
            k = self.num_states
            self.initial_logits.data.copy_(_random_simplex((k,), generator, self._dtype, self._device).log())
            self.transition_logits.data.copy_(_random_simplex((k, k), generator, self._dtype, self._device).log())
            self._reset_emission(generator)
            self._sync_variational_to_point()

    def set_near_uniform(self, noise: float = 0.01, generator: torch.Generator | None = None) -> None:
        """Uniform initial, transition and (categorical) emission probabilities
        times (1 ± ``noise``) uniform noise, renormalised."""
        with torch.no_grad():
            for param in self._simplex_logits():
                u = torch.rand(param.shape, generator=generator, dtype=param.dtype)
                probs = 1 + noise * (2 * u - 1)
                param.data.copy_((probs / probs.sum(-1, keepdim=True)).log().to(param.device))

    def _simplex_logits(self) -> list[nn.Parameter]:
        return [self.initial_logits, self.transition_logits]

    def config(self) -> dict[str, Any]:
        return {
            "num_states": self.num_states,
            "guide": self.guide_type,
            "marginalize": self.marginalize,
            "initial_concentration": self.initial_concentration,
            "transition_concentration": self.transition_concentration,
        }

    def _set_chain(self, initial, transition) -> None:
        k = self.num_states
        initial = _as_probs("initial", initial, (k,))
        transition = _as_probs("transition", transition, (k, k))
        with torch.no_grad():
            self.initial_logits.data = initial.log().to(self._device)
            self.transition_logits.data = transition.log().to(self._device)


def _factor_kind(name: str, prior: dist.Distribution) -> str:
    """The mean-field factor of a site with this prior: ``"dirichlet"``, ``"normal"`` (means),
    ``"wishart"`` (precision matrices), ``"lognormal"`` (Gamma: precisions and rates) or
    ``"unsupported"``."""
    base = prior.base_dist if isinstance(prior, dist.Independent) else prior
    if isinstance(base, dist.Dirichlet):
        return "dirichlet"
    if name == "means":
        return "normal"
    if isinstance(base, dist.Wishart):
        return "wishart"
    if isinstance(base, dist.Gamma):
        return "lognormal"
    return "unsupported"


def _dirichlet_mode(counts: Tensor, concentration: float) -> Tensor:
    """Mode of Dir(counts + concentration) rows; with concentration 1 the MLE."""
    weights = (counts + concentration - 1).clamp(min=0)
    total = weights.sum(-1, keepdim=True)
    uniform = torch.full_like(weights, 1.0 / weights.shape[-1])
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(weights.dtype).tiny), uniform)


# ---------------------------------------------------------------------------
class _VectorEmissionHMM(HiddenMarkovModel):
    """HMMs over ``(N, T, D)`` real-valued or count observations (NaN = missing)."""

    def __init__(self, num_states: int, dim: int, **kwargs) -> None:
        super().__init__(num_states, **kwargs)
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self.dim = dim
        self.register_buffer("data_mean", torch.zeros(dim))
        self.register_buffer("data_var", torch.ones(dim))

    def _check_observations(self, x, name: str) -> Tensor:
        values = torch.as_tensor(x, device=self._device)
        if values.dim() != 3 or values.shape[-1] != self.dim or not values.is_floating_point():
            raise ValueError(
                f"{name}: expected float observations of shape (N, T, {self.dim}) (NaN = missing), "
                f"got {values.dtype} of shape {tuple(values.shape)}"
            )
        return values.to(self._dtype)

    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None) -> None:
        """Records the data's per-dimension mean and variance (they scale the
        priors and random restarts) and draws an initialisation around them."""
        values = self._check_observations(batch.values, "batch.values")
        observed = batch.mask.unsqueeze(-1) & ~values.isnan()
        x = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
        count = observed.sum((0, 1)).clamp(min=1)
        mean = x.sum((0, 1)) / count
        var = (torch.where(observed, x - mean, torch.zeros_like(x)) ** 2).sum((0, 1)) / count
        with torch.no_grad():
            self.data_mean.copy_(mean)
            self.data_var.copy_(var.clamp(min=1e-8))
        # Fully observed real steps, at most _MAX_SEED_POINTS of them, from which
        # restarts pick initial means (k-means++); kept out of the state_dict.
        complete = (observed.all(-1) & batch.mask).reshape(-1)
        points = values.reshape(-1, self.dim)[complete].detach()
        if points.shape[0] > _MAX_SEED_POINTS:
            keep = torch.randperm(points.shape[0], generator=generator, device=_generator_device(generator))
            points = points[keep[:_MAX_SEED_POINTS].to(points.device)]
        self._seed_points = points
        self.reset_parameters(generator)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "dim": self.dim}

    def _observed(self, values: Tensor) -> tuple[Tensor, Tensor]:
        observed = ~values.isnan()
        return observed, torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")
