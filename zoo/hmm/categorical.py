"""Categorical emissions: :class:`CategoricalHMM`, an HMM over ``(N, T)`` symbol codes with a
``(K, V)`` emission table under Dirichlet priors (its log-likelihood gathers the emission
potentials inside the compiled forward recursion; its forecasts are exact symbol
probabilities)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from inference import discrete
from inference.batch import SequenceBatch
from inference.forecasting import ForecastDistribution
from inference.validation import check_lengths
from zoo.params import point_property

from .base import Forecast, HiddenMarkovModel, _as_probs, _dirichlet_mode, _random_simplex


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
        self.emission_logits = nn.Parameter(
            _random_simplex((num_states, num_symbols), generator, torch.get_default_dtype(), "cpu").log()
        )
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_probs(cls, initial, transition, emission, **kwargs) -> CategoricalHMM:
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
        return {
            **super().config(),
            "num_symbols": self.num_symbols,
            "emission_concentration": self.emission_concentration,
        }

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
            raise ValueError(
                f"{name}: expected int64 symbol codes in [0, {self.num_symbols}) of shape (N, T), "
                f"got {codes.dtype} of shape {tuple(codes.shape)}"
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_symbols):
            raise ValueError(
                f"{name}: expected symbol codes in [0, {self.num_symbols}), "
                f"got values in [{int(codes.min())}, {int(codes.max())}]"
            )
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
            log_initial, log_transition, log_emission = (
                point[name].log() for name in ("initial", "transition", "emission")
            )
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
        self.emission_logits.data.copy_(
            _random_simplex((self.num_states, self.num_symbols), generator, self._dtype, self._device).log()
        )

    def _sample_emission(self, states: Tensor, point, generator) -> Tensor:
        probs = point["emission"][states.reshape(-1)]
        return torch.multinomial(probs, 1, generator=generator).reshape(states.shape)

    def _observation_forecast(self, state_probs: Tensor) -> Forecast:
        return Forecast(state_probs, probs=state_probs @ self.emission_probs)

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """The exact symbol probabilities of each forecast step (nothing is sampled)."""
        return ForecastDistribution("categorical", probs=self.forecast(history.values, steps, history.lengths).probs)
