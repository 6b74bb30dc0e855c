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
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex
from torch import Tensor, nn

from inference import discrete
from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.forecasting import ForecastDistribution
from inference.validation import check_lengths
from zoo.params import (BartlettWishart, PointParameters, constrain_tril, dirichlet_factor, dirichlet_factor_values,
                        lognormal_factor, lognormal_factor_values, normal_factor, normal_factor_values, point_property,
                        unconstrain_tril, wishart_factor, wishart_factor_values, write_parameters)

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
    uniform = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device if generator is not None else "cpu")
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

    def __init__(self, num_states: int, *, guide: str = "map", marginalize: str = "kernel",
                 initial_concentration: float = 1.0, transition_concentration: float = 1.0) -> None:
        super().__init__()
        if not isinstance(num_states, int) or num_states < 1:
            raise ValueError(f"num_states: expected a positive int, got {num_states!r}")
        if guide not in _GUIDES:
            raise ValueError(f"guide: expected one of {_GUIDES}, got {guide!r}")
        if marginalize not in _MARGINALIZE:
            raise ValueError(f"marginalize: expected one of {_MARGINALIZE}, got {marginalize!r}")
        for name, value in (("initial_concentration", initial_concentration), ("transition_concentration", transition_concentration)):
            if value <= 0:
                raise ValueError(f"{name}: expected a positive float, got {value!r}")
        self.num_states = num_states
        self.guide_type = guide
        self.marginalize = marginalize
        self.initial_concentration = float(initial_concentration)
        self.transition_concentration = float(transition_concentration)
        generator = torch.Generator().manual_seed(0)
        self.initial_logits = nn.Parameter(_random_simplex((num_states,), generator, torch.get_default_dtype(), "cpu").log())
        self.transition_logits = nn.Parameter(_random_simplex((num_states, num_states), generator, torch.get_default_dtype(), "cpu").log())

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
                    raise KeyError(f"values: {name!r} is not a parameter site of {type(self).__name__}; "
                                   f"expected some of {list(priors)}")
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
                raise ValueError(f"guide='meanfield' does not support the {name!r} site of {type(self).__name__}; use guide='map'")
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
                pyro.factor("observations", discrete.log_marginal(
                    params["initial"].log(), params["transition"].log(), log_emission, batch.lengths))
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
    def sample_with_states(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> tuple[SequenceBatch, Tensor]:
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
            raise ValueError(f"{caller}: EM fits point estimates; build the model with guide='map' (or fit meanfield by SVI)")

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
            posterior = discrete.forward_backward(point["initial"].log().double(), point["transition"].log().double(),
                                                  log_emission, batch.lengths)
            state_marginals = posterior.state_marginals  # (N, T, K), zeros on padding
            statistics = {"log_likelihood": posterior.log_normalizer.sum(),
                          "initial_counts": state_marginals[:, 0].sum(0),
                          "transition_counts": posterior.transition_counts.sum(0)}
            statistics.update(self._emission_statistics(values.double() if values.is_floating_point() else values,
                                                        state_marginals))
        return statistics

    def m_step(self, statistics: Mapping[str, Tensor]) -> None:
        """Closed-form MAP M-step under the priors from summed :meth:`e_step` statistics
        (Gaussian emissions: conditional maximisation, means given the current precisions
        then precisions given the new means)."""
        self._check_em("m_step")
        with torch.no_grad():
            point = self._point()
            self.initial_logits.data.copy_(
                _dirichlet_mode(statistics["initial_counts"], self.initial_concentration).log().to(self._dtype))
            self.transition_logits.data.copy_(
                _dirichlet_mode(statistics["transition_counts"], self.transition_concentration).log().to(self._dtype))
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
        return {"num_states": self.num_states, "guide": self.guide_type, "marginalize": self.marginalize,
                "initial_concentration": self.initial_concentration,
                "transition_concentration": self.transition_concentration}

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
class CategoricalHMM(HiddenMarkovModel):
    """HMM with categorical emissions over ``num_symbols`` symbols.

    Observations are ``(N, T)`` int64 codes in ``[0, num_symbols)``.

    Example:
        >>> hmm = CategoricalHMM.from_probs(torch.tensor([0.5, 0.5]),
        ...                                 torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...                                 torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
        >>> hmm.log_prob(torch.tensor([[0, 1, 1]])).shape
        torch.Size([1])
    """

    def __init__(self, num_states: int, num_symbols: int, *, emission_concentration: float = 1.1, **kwargs) -> None:
        super().__init__(num_states, **kwargs)
        if not isinstance(num_symbols, int) or num_symbols < 1:
            raise ValueError(f"num_symbols: expected a positive int, got {num_symbols!r}")
        if emission_concentration <= 0:
            raise ValueError(f"emission_concentration: expected a positive float, got {emission_concentration!r}")
        self.num_symbols = num_symbols
        self.emission_concentration = float(emission_concentration)
        generator = torch.Generator().manual_seed(1)
        self.emission_logits = nn.Parameter(_random_simplex((num_states, num_symbols), generator, torch.get_default_dtype(), "cpu").log())
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_probs(cls, initial, transition, emission, **kwargs) -> "CategoricalHMM":
        """An HMM with the given ``initial (K,)``, ``transition (K, K)`` and ``emission (K, V)`` probabilities."""
        emission = torch.as_tensor(emission)
        if emission.dim() != 2:
            raise ValueError(f"emission: expected shape (K, V), got {tuple(emission.shape)}")
        k, v = emission.shape
        model = cls(k, v, **kwargs)
        dtype = emission.dtype if emission.is_floating_point() else torch.get_default_dtype()
        model.to(dtype)
        model._set_chain(initial, transition)
        with torch.no_grad():
            model.emission_logits.data = _as_probs("emission", emission, (k, v)).log()
            model._sync_variational_to_point()
        return model

    emission_probs = point_property("emission", "``(K, V)`` emission probabilities.")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_symbols": self.num_symbols, "emission_concentration": self.emission_concentration}

    def _num_emission_parameters(self) -> int:
        return self.num_states * (self.num_symbols - 1)

    def _emission_priors(self) -> dict[str, dist.Distribution]:
        ones = torch.ones(self.num_states, self.num_symbols, dtype=self._dtype, device=self._device)
        return {"emission": dist.Dirichlet(self.emission_concentration * ones).to_event(1)}

    def _emission_point(self) -> dict[str, Tensor]:
        return {"emission": self.emission_logits.softmax(-1)}

    def _simplex_logits(self) -> list[nn.Parameter]:
        return [self.initial_logits, self.transition_logits, self.emission_logits]

    def _set_emission_value(self, name: str, value: Tensor) -> None:
        self.emission_logits.data.copy_(value.clamp(min=torch.finfo(value.dtype).tiny).log())

    def _emission_site_dims(self) -> dict[str, tuple[str, ...]]:
        return {"emission": ("state", "symbol")}

    def state_label_features(self, values) -> Tensor:
        """Emission probabilities ``(K, V)``."""
        return torch.as_tensor(values["emission"])

    def _check_observations(self, x, name: str) -> Tensor:
        codes = torch.as_tensor(x, device=self._device)
        if codes.dim() != 2 or codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(f"{name}: expected int64 symbol codes in [0, {self.num_symbols}) of shape (N, T), "
                             f"got {codes.dtype} of shape {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_symbols):
            raise ValueError(f"{name}: expected symbol codes in [0, {self.num_symbols}), "
                             f"got values in [{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    def _emission_log_prob(self, codes: Tensor, params: dict[str, Tensor]) -> Tensor:
        return params["emission"].log().T[codes]  # (N, T, K)

    def log_prob(self, x, lengths=None) -> Tensor:
        """``(N,)`` exact log-likelihood of each sequence at the point parameters.

        The emission potentials are gathered from the ``(K, V)`` table inside the compiled
        forward recursion (:func:`inference.discrete.log_marginal_categorical`), and the MAP
        point's log-probabilities are the logits' ``log_softmax`` (not ``log`` of a softmax):
        at small ``K`` this preparation costed more than the recursion.
        """
        codes = self._check_observations(x, "x")
        if lengths is not None:
            lengths = check_lengths(torch.as_tensor(lengths), codes.shape[0], codes.shape[1], codes.device)
        if self.guide_type == "map":
            log_initial, log_transition, log_emission = (logits.log_softmax(-1) for logits in self._simplex_logits())
        else:
            point = self._point()
            log_initial, log_transition, log_emission = (point[name].log() for name in ("initial", "transition", "emission"))
        return discrete.log_marginal_categorical(log_initial, log_transition, log_emission, codes, lengths)

    def _emission_statistics(self, codes: Tensor, state_marginals: Tensor) -> dict[str, Tensor]:
        """``"emission_counts"`` ``(K, V)``: expected number of emissions of each symbol from each state."""
        k, v = self.num_states, self.num_symbols
        counts = torch.zeros(v, k, dtype=state_marginals.dtype, device=state_marginals.device)
        counts.index_add_(0, codes.reshape(-1), state_marginals.reshape(-1, k))
        return {"emission_counts": counts.T}

    def _emission_m_step(self, statistics: Mapping[str, Tensor], point) -> None:
        emission = _dirichlet_mode(statistics["emission_counts"], self.emission_concentration)
        self.emission_logits.data.copy_(emission.log().to(self._dtype))

    def _reset_emission(self, generator) -> None:
        self.emission_logits.data.copy_(_random_simplex((self.num_states, self.num_symbols), generator, self._dtype, self._device).log())

    def _sample_emission(self, states: Tensor, point, generator) -> Tensor:
        probs = point["emission"][states.reshape(-1)]
        return torch.multinomial(probs, 1, generator=generator).reshape(states.shape)

    def _observation_forecast(self, state_probs: Tensor) -> Forecast:
        return Forecast(state_probs, probs=state_probs @ self.emission_probs)

    def forecast_distribution(self, history: SequenceBatch, steps: int, *, num_samples: int = 500,
                              generator: torch.Generator | None = None) -> ForecastDistribution:
        """The exact symbol probabilities of each forecast step (nothing is sampled)."""
        return ForecastDistribution("categorical", probs=self.forecast(history.values, steps, history.lengths).probs)


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
            raise ValueError(f"{name}: expected float observations of shape (N, T, {self.dim}) (NaN = missing), "
                             f"got {values.dtype} of shape {tuple(values.shape)}")
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


class GaussianHMM(_VectorEmissionHMM):
    """HMM with Gaussian emissions, diagonal or full covariance.

    Observations are ``(N, T, D)`` floats; NaN entries are missing and are
    marginalised exactly (the marginal of the observed coordinates). EM with
    ``covariance_type="full"`` supports whole missing rows, not partial ones.

    Example:
        >>> hmm = GaussianHMM.from_params(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...                               torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.5], [0.5]]))
        >>> hmm.smooth(torch.tensor([[[-1.2], [0.9], [float("nan")]]])).shape
        torch.Size([1, 3, 2])
    """

    def __init__(self, num_states: int, dim: int, *, covariance_type: str = "diag", mean_prior_scale: float = 10.0,
                 precision_shape: float = 1.0, precision_rate: float = 1e-3, **kwargs) -> None:
        if covariance_type not in ("diag", "full"):
            raise ValueError(f"covariance_type: expected 'diag' or 'full', got {covariance_type!r}")
        super().__init__(num_states, dim, **kwargs)
        self.covariance_type = covariance_type
        self.mean_prior_scale = float(mean_prior_scale)  # in units of the data's standard deviation
        self.precision_shape = float(precision_shape)
        self.precision_rate = float(precision_rate)  # in units of the data's variance
        self.emission_loc = nn.Parameter(torch.linspace(-1, 1, num_states).unsqueeze(-1).expand(num_states, dim).clone())
        if covariance_type == "diag":
            self.log_scales = nn.Parameter(torch.zeros(num_states, dim))
        else:
            self.scale_tril_unconstrained = nn.Parameter(torch.zeros(num_states, dim, dim))
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_params(cls, initial, transition, means, covariances, **kwargs) -> "GaussianHMM":
        """An HMM with ``means (K, D)`` and ``covariances`` ``(K, D)`` (diagonal) or ``(K, D, D)`` (full)."""
        means = torch.as_tensor(means)
        covariances = torch.as_tensor(covariances, dtype=means.dtype)
        if means.dim() != 2:
            raise ValueError(f"means: expected shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        if covariances.shape == (k, d):
            covariance_type = "diag"
        elif covariances.shape == (k, d, d):
            covariance_type = "full"
        else:
            raise ValueError(f"covariances: expected shape ({k}, {d}) (diagonal) or ({k}, {d}, {d}) (full), got {tuple(covariances.shape)}")
        model = cls(k, d, covariance_type=covariance_type, **kwargs).to(means.dtype)
        model._set_chain(initial, transition)
        with torch.no_grad():
            model.emission_loc.data = means.clone()
            if covariance_type == "diag":
                if (covariances <= 0).any():
                    raise ValueError("covariances: expected positive variances")
                model.log_scales.data = 0.5 * covariances.log()
            else:
                model.scale_tril_unconstrained.data = unconstrain_tril(torch.linalg.cholesky(covariances))
            model._sync_variational_to_point()
        return model

    means = point_property("means", "``(K, D)`` state means.")

    @property
    def covariances(self) -> Tensor:
        """``(K, D)`` variances (diag) or ``(K, D, D)`` covariance matrices (full)."""
        precisions = self._point()["precisions"]
        return 1 / precisions if self.covariance_type == "diag" else torch.linalg.inv(precisions)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "covariance_type": self.covariance_type, "mean_prior_scale": self.mean_prior_scale,
                "precision_shape": self.precision_shape, "precision_rate": self.precision_rate}

    def _num_emission_parameters(self) -> int:
        k, d = self.num_states, self.dim
        return k * d + (k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2)

    def _emission_priors(self) -> dict[str, dist.Distribution]:
        k, d = self.num_states, self.dim
        mean = self.data_mean.to(self._dtype).expand(k, d)
        scale = (self.mean_prior_scale * self.data_var.to(self._dtype).sqrt()).expand(k, d)
        priors = {"means": dist.Normal(mean, scale).to_event(2)}
        if self.covariance_type == "diag":
            rate = (self.precision_rate * self.data_var.to(self._dtype)).expand(k, d)
            priors["precisions"] = dist.Gamma(torch.full_like(rate, self.precision_shape), rate).to_event(2)
        else:
            # Wishart on each precision matrix; df = D + 2 * shape - 1 matches the diagonal
            # case's Gamma(shape, rate) marginals on the diagonal of a 1x1 precision.
            df = torch.full((k,), d - 1 + 2 * self.precision_shape, dtype=self._dtype, device=self._device)
            scale_matrix = torch.diag_embed(1 / (2 * self.precision_rate * self.data_var.to(self._dtype))).expand(k, d, d)
            priors["precisions"] = dist.Wishart(df, covariance_matrix=scale_matrix).to_event(1)
        return priors

    def _scale_tril(self) -> Tensor:
        return constrain_tril(self.scale_tril_unconstrained)

    def _set_emission_value(self, name: str, value: Tensor) -> None:
        if name == "means":
            self.emission_loc.data.copy_(value)
        elif self.covariance_type == "diag":
            self.log_scales.data.copy_(-0.5 * value.log())
        else:
            covariance = torch.linalg.inv(value)
            covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
            self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.linalg.cholesky(covariance)))

    def _emission_site_dims(self) -> dict[str, tuple[str, ...]]:
        if self.covariance_type == "diag":
            return {"means": ("state", "dim"), "precisions": ("state", "dim")}
        return {"means": ("state", "dim"), "precisions": ("state", "dim", "dim_bis")}

    def state_label_features(self, values) -> Tensor:
        """State means ``(K, D)`` in units of the data's standard deviation."""
        means = torch.as_tensor(values["means"])
        return means / self.data_var.to(device=means.device, dtype=means.dtype).sqrt()

    def _emission_point(self) -> dict[str, Tensor]:
        if self.covariance_type == "diag":
            return {"means": self.emission_loc, "precisions": (-2 * self.log_scales).exp()}
        eye = torch.eye(self.dim, dtype=self._dtype, device=self._device)
        inverse_tril = torch.linalg.solve_triangular(self._scale_tril(), eye, upper=False)
        return {"means": self.emission_loc, "precisions": inverse_tril.transpose(-1, -2) @ inverse_tril}

    def _emission_log_prob(self, values: Tensor, params: dict[str, Tensor]) -> Tensor:
        observed, x = self._observed(values)
        means, precisions = params["means"], params["precisions"]
        o = observed.to(values.dtype)
        if self.covariance_type == "diag":
            # -0.5 * sum_d o_d [ (x_d - mu_kd)^2 lambda_kd - log lambda_kd + log 2 pi ], by matmuls: (N, T, D) @ (D, K)
            quadratic = (o * x * x) @ precisions.T - 2 * (x * o) @ (means * precisions).T + o @ (means**2 * precisions).T
            normalizer = o @ (precisions.log() - math.log(2 * math.pi)).T
            return -0.5 * (quadratic - normalizer)
        return _full_gaussian_log_prob(x, observed, means, precisions)

    def _emission_statistics(self, values: Tensor, state_marginals: Tensor) -> dict[str, Tensor]:
        """Expected emission statistics per state. Diagonal: ``"observed_weights"``,
        ``"weighted_sums"`` and ``"weighted_squares"``, each ``(K, D)`` (sums over the steps
        where coordinate ``d`` is observed of the state probability, times 1, ``x_d``,
        ``x_d^2``). Full: ``"observed_weights"`` ``(K,)``, ``"weighted_sums"`` ``(K, D)`` and
        ``"weighted_outer_products"`` ``(K, D, D)`` over fully observed steps (a step must be
        fully observed or fully missing)."""
        observed, x = self._observed(values)
        k, d = self.num_states, self.dim
        weights = state_marginals.reshape(-1, k).to(values.dtype)  # (NT, K)
        xf = x.reshape(-1, d)
        if self.covariance_type == "diag":
            o = observed.reshape(-1, d).to(values.dtype)
            return {"observed_weights": weights.T @ o, "weighted_sums": weights.T @ xf,
                    "weighted_squares": weights.T @ (xf * xf)}
        complete = observed.reshape(-1, d).all(-1)
        partial = observed.reshape(-1, d).any(-1) & ~complete
        if partial.any():
            raise ValueError("e_step: GaussianHMM with covariance_type='full' needs each row fully observed or fully "
                             "missing for EM; fit it with method='svi' or use covariance_type='diag'")
        weights = weights * complete.unsqueeze(-1).to(values.dtype)
        return {"observed_weights": weights.sum(0), "weighted_sums": weights.T @ xf,
                "weighted_outer_products": torch.einsum("nk,nd,ne->kde", weights, xf, xf)}

    def _emission_m_step(self, statistics: Mapping[str, Tensor], point) -> None:
        d = self.dim
        count, first = statistics["observed_weights"], statistics["weighted_sums"]
        dtype = first.dtype
        prior_mean = self.data_mean.to(dtype)
        prior_precision = 1 / (self.mean_prior_scale**2 * self.data_var.to(dtype))
        precision = point["precisions"].to(dtype)
        if self.covariance_type == "diag":
            second = statistics["weighted_squares"]
            # Conditional maximisation: means given the current precisions, then precisions given the new means.
            means = (precision * first + prior_precision * prior_mean) / (precision * count + prior_precision)
            squares = second - 2 * means * first + means**2 * count
            rate = self.precision_rate * self.data_var.to(dtype)
            variance = (rate + 0.5 * squares) / (self.precision_shape - 1 + 0.5 * count).clamp(min=1e-12)
            self.emission_loc.data.copy_(means.to(self._dtype))
            self.log_scales.data.copy_((0.5 * variance.clamp(min=1e-12).log()).to(self._dtype))
            return
        second = statistics["weighted_outer_products"]
        # means given current precisions under the N(m0, s0^2 I) prior
        system = count[:, None, None] * precision + prior_precision.diag_embed()
        rhs = (precision @ first.unsqueeze(-1)).squeeze(-1) + prior_precision * prior_mean
        means = torch.linalg.solve(system, rhs)
        scatter = second - means.unsqueeze(-1) * first.unsqueeze(-2) - first.unsqueeze(-1) * means.unsqueeze(-2) \
            + count[:, None, None] * means.unsqueeze(-1) * means.unsqueeze(-2)
        # Wishart(df, W) prior on the precision: the posterior mode's inverse.
        prior_scatter = torch.diag_embed(2 * self.precision_rate * self.data_var.to(dtype))
        df = d - 1 + 2 * self.precision_shape
        covariance = (prior_scatter + scatter) / (df + count - d - 1).clamp(min=1e-12)[:, None, None]
        covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
        self.emission_loc.data.copy_(means.to(self._dtype))
        self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.linalg.cholesky(covariance)).to(self._dtype))

    def _reset_emission(self, generator) -> None:
        """Means by k-means++ seeding on the data seen by ``initialize_from_data``
        (else the data mean plus standard-normal noise in data units); every
        state starts with the data's variance."""
        k, d = self.num_states, self.dim
        sd = self.data_var.to(self._dtype).sqrt()
        points = getattr(self, "_seed_points", None)
        if points is not None and points.shape[0] >= k:
            # Standardise so that dimensions on different scales count equally.
            points = points.to(self.data_mean)  # the model may have moved since initialize_from_data
            centres = _kmeans_plus_plus((points - self.data_mean) / self.data_var.sqrt(), k, generator)
            self.emission_loc.data.copy_((self.data_mean + centres * self.data_var.sqrt()).to(self._dtype))
        else:
            noise = torch.randn(k, d, generator=generator, dtype=self._dtype, device=_generator_device(generator))
            self.emission_loc.data.copy_(self.data_mean.to(self._dtype) + sd * noise.to(self._device))
        if self.covariance_type == "diag":
            self.log_scales.data.copy_(sd.log().expand(k, d))
        else:
            self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.diag_embed(sd.expand(k, d))))

    def _sample_emission(self, states: Tensor, point, generator) -> Tensor:
        noise = torch.randn(*states.shape, self.dim, generator=generator, dtype=self._dtype,
                            device=generator.device if generator is not None else self._device).to(self._device)
        if self.covariance_type == "diag":
            return point["means"][states] + noise * point["precisions"][states].rsqrt()
        tril = torch.linalg.cholesky(torch.linalg.inv(point["precisions"]))
        return point["means"][states] + (tril[states] @ noise.unsqueeze(-1)).squeeze(-1)

    def _observation_forecast(self, state_probs: Tensor) -> Forecast:
        point = self._point()
        means = point["means"]
        covariances = torch.diag_embed(1 / point["precisions"]) if self.covariance_type == "diag" else torch.linalg.inv(point["precisions"])
        mean = state_probs @ means
        second = torch.einsum("nsk,kde->nsde", state_probs, covariances + means.unsqueeze(-1) * means.unsqueeze(-2))
        return Forecast(state_probs, mean=mean, covariance=second - mean.unsqueeze(-1) * mean.unsqueeze(-2))

    def forecast_distribution(self, history: SequenceBatch, steps: int, *, num_samples: int = 500,
                              generator: torch.Generator | None = None) -> ForecastDistribution:
        """The exact per-step marginals: a mixture over the forecast state probabilities of the
        states' Gaussians (each entry's marginal; nothing is sampled)."""
        state_probs = self.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
        means = self.means.detach()  # (K, D)
        scales = self.covariances.detach().diagonal(dim1=-2, dim2=-1).sqrt()  # (K, D)
        shape = tuple(state_probs.shape[:2]) + tuple(means.shape)
        return ForecastDistribution("mixture", weights=state_probs, means=means.expand(shape),
                                    scales=scales.expand(shape))


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _kmeans_plus_plus(points: Tensor, num_centres: int, generator: torch.Generator | None) -> Tensor:
    """``(num_centres, D)`` rows of ``points (M, D)``: the first uniformly at random, each
    next with probability proportional to its squared distance to the nearest centre
    chosen so far (Arthur and Vassilvitskii, 2007)."""
    device = _generator_device(generator)
    first = int(torch.randint(points.shape[0], (1,), generator=generator, device=device))
    centres = [points[first]]
    nearest = ((points - centres[0]) ** 2).sum(-1)  # (M,)
    for _ in range(1, num_centres):
        # All points on the chosen centres: any pick is as good as another.
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        index = int(torch.multinomial(weights.to(device), 1, generator=generator))
        centres.append(points[index])
        nearest = torch.minimum(nearest, ((points - points[index]) ** 2).sum(-1))
    return torch.stack(centres)


#: Kept under its former name (tests and pickles refer to it); defined in :mod:`zoo.params`.
_BartlettWishart = BartlettWishart


def _full_gaussian_log_prob(x: Tensor, observed: Tensor, means: Tensor, precisions: Tensor) -> Tensor:
    """``(N, T, K)`` log densities of the observed coordinates of each row
    under full-covariance Gaussians; rows are grouped by missingness pattern."""
    n, t, d = x.shape
    k = means.shape[0]
    flat_x, flat_observed = x.reshape(-1, d), observed.reshape(-1, d)
    if bool(flat_observed.all()):
        # No missing entry: one batched density (the common case, kept free of grouping).
        law = dist.MultivariateNormal(means, precision_matrix=precisions)
        return law.log_prob(flat_x.unsqueeze(-2)).reshape(n, t, k)
    result = torch.zeros(n * t, k, dtype=x.dtype, device=x.device)
    covariances = torch.linalg.inv(precisions)
    if d < 63:
        # Each pattern as the integer with bit j set when coordinate j is observed:
        # a 1-D unique is an order of magnitude faster than torch.unique(dim=0).
        bits = 2 ** torch.arange(d, device=x.device)
        codes, inverse = torch.unique((flat_observed.long() * bits).sum(-1), return_inverse=True)
        patterns = (codes.unsqueeze(-1) & bits) != 0
    else:
        patterns, inverse = torch.unique(flat_observed, dim=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        if not pattern.any():
            continue  # a fully missing row contributes nothing
        rows = inverse == index
        dims = pattern.nonzero().squeeze(-1)
        if pattern.all():
            law = dist.MultivariateNormal(means, precision_matrix=precisions)
        else:
            sub = covariances[:, dims][:, :, dims]
            law = dist.MultivariateNormal(means[:, dims], covariance_matrix=sub)
        result[rows] = law.log_prob(flat_x[rows][:, dims].unsqueeze(-2))
    return result.reshape(n, t, k)


# ---------------------------------------------------------------------------
class PoissonHMM(_VectorEmissionHMM):
    """HMM with independent Poisson emissions per dimension.

    Observations are ``(N, T, D)`` nonnegative counts, floats (NaN = missing) or integers.

    Example:
        >>> hmm = PoissonHMM.from_params(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...                              torch.tensor([[1.0], [8.0]]))
        >>> hmm.decode(torch.tensor([[[0.0], [9.0], [7.0]]])).tolist()
        [[0, 1, 1]]
    """

    def __init__(self, num_states: int, dim: int, *, rate_shape: float = 1.0, rate_rate: float = 1e-3, **kwargs) -> None:
        super().__init__(num_states, dim, **kwargs)
        self.rate_shape = float(rate_shape)
        self.rate_rate = float(rate_rate)
        self.log_rates = nn.Parameter(torch.linspace(-1, 1, num_states).unsqueeze(-1).expand(num_states, dim).clone())
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_params(cls, initial, transition, rates, **kwargs) -> "PoissonHMM":
        """An HMM with Poisson ``rates (K, D)``."""
        rates = torch.as_tensor(rates)
        if rates.dim() != 2 or (rates <= 0).any():
            raise ValueError(f"rates: expected positive rates of shape (K, D), got shape {tuple(rates.shape)}")
        model = cls(*rates.shape, **kwargs).to(rates.dtype)
        model._set_chain(initial, transition)
        with torch.no_grad():
            model.log_rates.data = rates.log()
            model._sync_variational_to_point()
        return model

    rates = point_property("rates", "``(K, D)`` Poisson rates.")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rate_shape": self.rate_shape, "rate_rate": self.rate_rate}

    def _num_emission_parameters(self) -> int:
        return self.num_states * self.dim

    def _check_observations(self, x, name: str) -> Tensor:
        values = torch.as_tensor(x, device=self._device)
        if values.dim() != 3 or values.shape[-1] != self.dim or values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"{name}: expected nonnegative counts of shape (N, T, {self.dim}), float (NaN = missing) "
                             f"or integer, got {values.dtype} of shape {tuple(values.shape)}")
        values = values.to(self._dtype)  # integer counts become floats; NaN marks a missing count
        observed = values[~values.isnan()]
        if observed.numel() and ((observed < 0).any() or (observed != observed.round()).any()):
            raise ValueError(f"{name}: expected nonnegative integer counts (NaN = missing)")
        return values

    def _emission_priors(self) -> dict[str, dist.Distribution]:
        shape = torch.full((self.num_states, self.dim), self.rate_shape, dtype=self._dtype, device=self._device)
        return {"rates": dist.Gamma(shape, torch.full_like(shape, self.rate_rate)).to_event(2)}

    def _emission_point(self) -> dict[str, Tensor]:
        return {"rates": self.log_rates.exp()}

    def _set_emission_value(self, name: str, value: Tensor) -> None:
        self.log_rates.data.copy_(value.clamp(min=torch.finfo(value.dtype).tiny).log())

    def _emission_site_dims(self) -> dict[str, tuple[str, ...]]:
        return {"rates": ("state", "dim")}

    def state_label_features(self, values) -> Tensor:
        """Log rates ``(K, D)``."""
        return torch.as_tensor(values["rates"]).log()

    def _emission_log_prob(self, values: Tensor, params: dict[str, Tensor]) -> Tensor:
        observed, x = self._observed(values)
        o = observed.to(values.dtype)
        rates = params["rates"]
        return (x * o) @ rates.log().T - o @ rates.T - (torch.lgamma(x + 1) * o).sum(-1, keepdim=True)

    def _emission_statistics(self, values: Tensor, state_marginals: Tensor) -> dict[str, Tensor]:
        """``"observed_weights"`` ``(K, D)`` (expected exposure: state probability summed over
        the steps where coordinate ``d`` is observed) and ``"weighted_sums"`` ``(K, D)``
        (expected counts)."""
        observed, x = self._observed(values)
        k, d = self.num_states, self.dim
        weights = state_marginals.reshape(-1, k).to(values.dtype)
        o = observed.reshape(-1, d).to(values.dtype)
        return {"observed_weights": weights.T @ o, "weighted_sums": weights.T @ (x.reshape(-1, d) * o)}

    def _emission_m_step(self, statistics: Mapping[str, Tensor], point) -> None:
        counts, exposure = statistics["weighted_sums"], statistics["observed_weights"]
        rates = (counts + self.rate_shape - 1).clamp(min=0) / (exposure + self.rate_rate)
        self.log_rates.data.copy_(rates.clamp(min=1e-10).log().to(self._dtype))

    def _reset_emission(self, generator) -> None:
        k, d = self.num_states, self.dim
        u = torch.rand(k, d, generator=generator, dtype=self._dtype, device=generator.device if generator is not None else "cpu")
        mean = self.data_mean.to(self._dtype).clamp(min=1e-3)
        self.log_rates.data.copy_((mean * (0.5 + u.to(self._device))).log())

    def _sample_emission(self, states: Tensor, point, generator) -> Tensor:
        return torch.poisson(point["rates"][states], generator=generator)

    def _observation_forecast(self, state_probs: Tensor) -> Forecast:
        rates = self.rates
        mean = state_probs @ rates
        second = state_probs @ (rates + rates**2)
        covariance = torch.diag_embed(second - mean**2)
        return Forecast(state_probs, mean=mean, covariance=covariance)

    def forecast_distribution(self, history: SequenceBatch, steps: int, *, num_samples: int = 500,
                              generator: torch.Generator | None = None) -> ForecastDistribution:
        """``num_samples`` draws of each step's mixture of Poissons (the marginals the forecast
        scores need; the steps of one path are drawn independently)."""
        state_probs = self.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
        states = torch.multinomial(state_probs.reshape(-1, state_probs.shape[-1]), num_samples, replacement=True,
                                   generator=generator)  # (N*H, S)
        rates = self.rates.detach()[states.T.reshape(num_samples, *state_probs.shape[:2])]  # (S, N, H, D)
        return ForecastDistribution("samples", samples=torch.poisson(rates, generator=generator),
                                    source=f"monte carlo (S={num_samples})")


# -- command-line registration ------------------------------------------------
# What `seqzoo` needs to offer this family (see zoo/registry.py and docs/families.md).
import torch  # noqa: E402  (this block stands on its own imports)

from inference.memory import hmm_fit_memory  # noqa: E402
from zoo.data import require_counts, require_real  # noqa: E402
from zoo.registry import Decoding, Family, UsageError, register  # noqa: E402

#: The emission an HMM takes for each kind of data when the user names none.
_EMISSION_FOR_KIND = {"categorical": "categorical", "real": "gaussian", "count": "poisson"}


def _add_cli_arguments(group) -> None:
    group.add_argument("--states", type=int, required=True, help="number of hidden states K")
    group.add_argument("--emission", choices=["categorical", "gaussian", "poisson"])
    group.add_argument("--covariance", choices=["diag", "full"], default="diag")
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument("--marginalize", choices=["kernel", "enumerate"], default="kernel")


def _cli_settings(args) -> dict[str, str]:
    settings = {"states": str(args.states), "covariance": args.covariance, "guide": args.guide,
                "marginalize": args.marginalize}
    if args.emission:
        settings["emission"] = args.emission
    return settings


def _states_setting(settings: dict[str, str]) -> int:
    """``--states`` as a positive int, refused by its flag (not the constructor's ``num_states``)."""
    try:
        states = int(settings.get("states", 8))
    except ValueError:
        raise UsageError(f"--states: expected a positive integer, got {settings['states']!r}") from None
    if states < 1:
        raise UsageError(f"--states: expected a positive integer, got {states}")
    return states


def _emission_setting(data, settings: dict[str, str]) -> str:
    emission = settings.get("emission") or _EMISSION_FOR_KIND.get(data.kind)
    if emission is None:
        raise UsageError(f"--emission: data of kind {data.kind!r} needs an explicit emission (categorical, gaussian or poisson)")
    return emission


def _fit_memory(data, settings: dict[str, str], method: str):
    """The fit's peak memory from ``--states`` and the data's sizes alone, before any
    ``(K, K)`` parameter is allocated (see :func:`inference.memory.hmm_fit_memory`)."""
    states, emission = _states_setting(settings), _emission_setting(data, settings)
    batch = data.batch
    if emission == "categorical" and data.kind == "categorical":
        sizes = {"num_symbols": data.num_symbols}
    else:
        d = data.dim
        per_state = d + d * d if settings.get("covariance") == "full" and emission == "gaussian" else 2 * d
        sizes = {"emission_parameters_per_state": per_state}
    return hmm_fit_memory(states, **sizes, batch_sequences=max(1, batch.num_sequences),
                          batch_steps=int(batch.values.shape[1]), method=method if method in ("em", "svi") else "em",
                          parameter_bytes=batch.values.element_size() if batch.values.is_floating_point() else 4)


def _build_from_settings(data, settings: dict[str, str]) -> HiddenMarkovModel:
    """An HMM matching the data: categorical for symbols, Gaussian for reals, Poisson for counts."""
    states = _states_setting(settings)
    emission = _emission_setting(data, settings)
    common = dict(guide=settings.get("guide", "map"), marginalize=settings.get("marginalize", "kernel"))
    if emission == "categorical":
        if data.kind != "categorical":
            raise UsageError(f"--emission categorical needs symbol data, but {data.source} holds {data.kind} data")
        return CategoricalHMM(states, data.num_symbols, **common)
    if emission == "gaussian":
        require_real(data, "--emission gaussian")
        return GaussianHMM(states, data.dim, covariance_type=settings.get("covariance", "diag"), **common)
    if emission == "poisson":
        require_counts(data, "--emission poisson")
        return PoissonHMM(states, data.dim, **common)
    raise UsageError(f"--emission: expected categorical, gaussian or poisson, got {emission!r}")


def _one_step_log_probs(model: HiddenMarkovModel, batch: SequenceBatch) -> Tensor | None:
    """``(N, T)`` log p(x_t | x_<t) of a categorical HMM (0 on padding); None for other emissions.

    The one-step predictive: p(x_t | x_<t) = Σ_k p(s_t = k | x_<t) B[k, x_t], with
    p(s_t | x_<t) the filtered distribution of step t - 1 pushed through A (π at t = 1).
    """
    if not isinstance(model, CategoricalHMM):
        return None
    codes, lengths = batch.values, batch.lengths
    filtered = model.filter(codes, lengths).double()  # (N, T, K)
    initial = model.initial_probs.double().expand(len(codes), 1, -1)  # (N, 1, K)
    predicted = torch.cat([initial, filtered[:, :-1] @ model.transition_probs.double()], 1)  # (N, T, K)
    emitted = model.emission_probs.double()[:, codes].permute(1, 2, 0)  # (N, T, K): B[k, x_nt]
    log_probs = (predicted * emitted).sum(-1).log()
    inside = torch.arange(codes.shape[1], device=codes.device) < lengths.unsqueeze(-1)
    return torch.where(inside, log_probs, torch.zeros_like(log_probs))


def _plot_state_posterior(run, model: HiddenMarkovModel, splits, data, steps: int = 120) -> None:
    """``posterior_states.png``: p(state | data) over the first ``steps`` steps of the
    first validation sequence (else the first training sequence)."""
    from zoo import plots  # matplotlib only when a figure is drawn

    part = splits.valid if splits.valid is not None and splits.valid.batch.num_steps else splits.train
    batch = part.batch[0]
    length = min(steps, int(batch.lengths[0]))
    values = batch.values[:, :length].to(next(model.parameters()).device)
    with torch.no_grad():
        marginals = model.smooth(values)[0].cpu().numpy()
    labels = list(data.vocabulary.decode(batch.values[0, :length].tolist())) if data.vocabulary else None
    # One series cut in time: the validation part starts where the training part ends, so number its steps so.
    first_step = int(splits.train.batch.lengths[0]) if part is splits.valid and data.num_sequences == 1 else 0
    title = f"p(state | data), steps {first_step}–{first_step + length - 1}" + (" (validation part)" if part is splits.valid else "")
    run.save_figure("posterior_states.png", plots.state_probabilities(marginals, labels, title=title, first_step=first_step))


register(Family(
    name="hmm",
    help="hidden Markov model (discrete states)",
    add_arguments=_add_cli_arguments,
    settings_from_args=_cli_settings,
    build=_build_from_settings,
    label=lambda settings: f"hmm-states{settings.get('states', 8)}",
    model_classes=(CategoricalHMM, GaussianHMM, PoissonHMM),
    data_kinds=("categorical", "real", "count"),
    plots=_plot_state_posterior,
    per_step_log_probs=_one_step_log_probs,
    decode=lambda model, batch: Decoding(model.decode(batch.values, batch.lengths), model.num_states),
    memory_estimate=_fit_memory,
))
