"""Poisson emissions: :class:`PoissonHMM`, independent Poisson counts per dimension under
Gamma priors on the rates (NaN = missing), with Monte Carlo forecast distributions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from inference.batch import SequenceBatch
from inference.forecasting import ForecastDistribution
from zoo.params import point_property

from .base import Forecast, _VectorEmissionHMM


class PoissonHMM(_VectorEmissionHMM):
    """HMM with independent Poisson emissions per dimension.

    Observations are ``(N, T, D)`` nonnegative counts, floats (NaN = missing) or integers.

    Example:
        >>> hmm = PoissonHMM.from_params(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...                              torch.tensor([[1.0], [8.0]]))
        >>> hmm.decode(torch.tensor([[[0.0], [9.0], [7.0]]])).tolist()
        [[0, 1, 1]]
    """

    def __init__(
        self, num_states: int, dim: int, *, rate_shape: float = 1.0, rate_rate: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(num_states, dim, **kwargs)
        self.rate_shape = float(rate_shape)
        self.rate_rate = float(rate_rate)
        self.log_rates = nn.Parameter(torch.linspace(-1, 1, num_states).unsqueeze(-1).expand(num_states, dim).clone())
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_params(cls, initial, transition, rates, **kwargs) -> PoissonHMM:
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
            raise ValueError(
                f"{name}: expected nonnegative counts of shape (N, T, {self.dim}), float (NaN = missing) "
                f"or integer, got {values.dtype} of shape {tuple(values.shape)}"
            )
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
        u = torch.rand(
            k, d, generator=generator, dtype=self._dtype, device=generator.device if generator is not None else "cpu"
        )
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

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """``num_samples`` draws of each step's mixture of Poissons (the marginals the forecast
        scores need; the steps of one path are drawn independently)."""
        state_probs = self.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
        states = torch.multinomial(
            state_probs.reshape(-1, state_probs.shape[-1]), num_samples, replacement=True, generator=generator
        )  # (N*H, S)
        rates = self.rates.detach()[states.T.reshape(num_samples, *state_probs.shape[:2])]  # (S, N, H, D)
        return ForecastDistribution(
            "samples", samples=torch.poisson(rates, generator=generator), source=f"monte carlo (S={num_samples})"
        )
