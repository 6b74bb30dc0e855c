r"""One forecast type for every model: :class:`ForecastDistribution`.

Each family forecasts in its own form (Gaussian moments from the Kalman filter, state
probabilities from an HMM, sampled continuations from an RNN) and turns it into a
:class:`ForecastDistribution` in its ``forecast_distribution`` method (the
:class:`~inference.contract.SequenceModel` capability ``"forecast_distribution"``):
per-step marginals as a Gaussian mixture, a set of sample paths, or symbol
probabilities, which knows its mean, quantiles, intervals, CRPS and log-density, so
models of different families are scored and drawn the same way.

Shapes: a forecast of ``N`` sequences ``H`` steps ahead has ``mean()`` of shape
``(N, H, D)`` for real series; symbol forecasts have ``probs`` ``(N, H, V)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import forecast_scores

__all__ = ["ForecastDistribution", "concatenate_forecasts"]

#: Bisection steps of a mixture quantile (the bracket shrinks by 2^-60).
_BISECTION_STEPS = 60

_KINDS = ("mixture", "samples", "categorical")


@dataclass(frozen=True)
class ForecastDistribution:
    """Per-step predictive marginals of the next ``H`` steps of ``N`` sequences.

    Exactly one representation is set, named by ``kind``:

    * ``"mixture"`` — real series: ``weights`` ``(N, H, K)``, ``means`` and ``scales``
      ``(N, H, K, D)``; each dimension's marginal is :math:`\\sum_k w_k N(\\mu_k, \\sigma_k^2)`
      (``K = 1``: a Gaussian, the Kalman forecast);
    * ``"samples"`` — real series: ``samples`` ``(S, N, H, D)`` sample paths;
    * ``"categorical"`` — symbols: ``probs`` ``(N, H, V)``.

    ``source`` says how it was obtained (``"exact"``, ``"monte carlo (S=500)"``).

    Example:
        >>> f = ForecastDistribution.gaussian(torch.zeros(1, 2, 1), torch.ones(1, 2, 1))
        >>> f.interval(0.9)[1].squeeze().tolist()  # doctest: +ELLIPSIS
        [1.644..., 1.644...]
    """

    kind: str
    weights: Tensor | None = None
    means: Tensor | None = None
    scales: Tensor | None = None
    samples: Tensor | None = None
    probs: Tensor | None = None
    source: str = "exact"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        if self.kind == "mixture":
            if self.weights is None or self.means is None or self.scales is None:
                raise ValueError("a mixture forecast needs weights (N, H, K), means and scales (N, H, K, D)")
            if (
                self.means.dim() != 4
                or self.scales.shape != self.means.shape
                or self.weights.shape != self.means.shape[:3]
            ):
                raise ValueError(
                    f"mixture: expected weights (N, H, K) and means/scales (N, H, K, D), got "
                    f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(self.scales.shape)}"
                )
        elif self.kind == "samples":
            if self.samples is None or self.samples.dim() != 4:
                raise ValueError("a samples forecast needs samples of shape (S, N, H, D)")
        elif self.probs is None or self.probs.dim() != 3:
            raise ValueError("a categorical forecast needs probs of shape (N, H, V)")

    # -- constructors --------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean: Tensor, scale: Tensor, source: str = "exact") -> ForecastDistribution:
        """Independent Gaussian marginals, ``mean`` and ``scale`` ``(N, H, D)``."""
        return cls(
            "mixture",
            weights=torch.ones(mean.shape[:2] + (1,), dtype=mean.dtype, device=mean.device),
            means=mean.unsqueeze(2),
            scales=scale.unsqueeze(2),
            source=source,
        )

    # -- the representation named by kind (set, as __post_init__ checks) -------------
    def _mixture(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(weights, means, scales)`` of a ``"mixture"`` forecast."""
        if self.weights is None or self.means is None or self.scales is None:
            raise ValueError(f"a {self.kind} forecast has no mixture weights, means and scales")
        return self.weights, self.means, self.scales

    def _samples(self) -> Tensor:
        """``samples`` of a ``"samples"`` forecast."""
        if self.samples is None:
            raise ValueError(f"a {self.kind} forecast has no samples")
        return self.samples

    def _probs(self) -> Tensor:
        """``probs`` of a ``"categorical"`` forecast."""
        if self.probs is None:
            raise ValueError(f"a {self.kind} forecast has no probs")
        return self.probs

    # -- summaries -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(N, H)``."""
        if self.kind == "mixture":
            num_seq, horizon = self._mixture()[0].shape[:2]
        elif self.kind == "samples":
            num_seq, horizon = self._samples().shape[1:3]
        else:
            num_seq, horizon = self._probs().shape[:2]
        return num_seq, horizon

    def _real(self, what: str) -> None:
        if self.kind == "categorical":
            raise ValueError(f"{what}: a categorical (symbol) forecast has no {what}; use probs / log_prob")

    def mean(self) -> Tensor:
        """``(N, H, D)`` predictive means."""
        self._real("mean")
        if self.kind == "mixture":
            weights, means, _scales = self._mixture()
            return (weights.unsqueeze(-1) * means).sum(2)
        return self._samples().mean(0)

    def quantile(self, q: float) -> Tensor:
        """``(N, H, D)`` the ``q``-quantile of each step's marginal (bisection on the
        mixture CDF; the empirical quantile of samples)."""
        self._real("quantile")
        if not 0 < q < 1:
            raise ValueError(f"q: expected a probability in (0, 1), got {q!r}")
        if self.kind == "samples":
            return torch.quantile(self._samples(), q, dim=0)
        weights, means, scales = self._mixture()
        weights = weights.unsqueeze(-1)  # (N, H, K, 1)
        low = (means - 10 * scales).min(2).values
        high = (means + 10 * scales).max(2).values
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            cdf = (weights * 0.5 * torch.erfc(-(middle.unsqueeze(2) - means) / (scales * math.sqrt(2)))).sum(2)
            below = cdf < q
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        return 0.5 * (low + high)

    def interval(self, level: float) -> tuple[Tensor, Tensor]:
        """Central ``level`` predictive interval: ``(lower, upper)``, each ``(N, H, D)``."""
        if not 0 < level < 1:
            raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def crps(self, targets: Tensor) -> Tensor:
        """``(N, H, D)`` CRPS at ``targets`` ``(N, H, D)`` (closed form for a mixture,
        energy form for samples); NaN targets give NaN."""
        self._real("crps")
        if self.kind == "mixture":
            weights, means, scales = self._mixture()
            return forecast_scores.crps_gaussian_mixture(
                weights.unsqueeze(2).expand(*means.shape[:2], means.shape[3], -1),
                means.transpose(2, 3),
                scales.transpose(2, 3),
                targets,
            )
        return forecast_scores.crps_samples(self._samples(), targets)

    def log_prob(self, targets: Tensor) -> Tensor:
        """``(N, H)`` log predictive density of each step's target under its marginal
        (symbols: log-probability; real: the product of per-dimension mixture marginals,
        exact for ``D = 1``). Not available for sample forecasts."""
        if self.kind == "categorical":
            probs = self._probs()
            codes = targets.long().clamp(0, probs.shape[-1] - 1)
            return probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1).log()
        if self.kind == "samples":
            raise ValueError("log_prob: a sample forecast has no density; score it by CRPS")
        weights, means, scales = self._mixture()
        components = torch.distributions.Normal(means, scales).log_prob(targets.unsqueeze(2))  # (N,H,K,D)
        return torch.logsumexp(weights.log().unsqueeze(-1) + components, 2).sum(-1)


def concatenate_forecasts(predictions: Sequence[ForecastDistribution]) -> ForecastDistribution:
    """Forecasts of consecutive groups of sequences as one (sequences concatenated)."""
    if len(predictions) == 1:
        return predictions[0]
    first = predictions[0]
    if first.kind == "samples":
        return ForecastDistribution(
            "samples", samples=torch.cat([p._samples() for p in predictions], 1), source=first.source
        )
    if first.kind == "categorical":
        return ForecastDistribution(
            "categorical", probs=torch.cat([p._probs() for p in predictions], 0), source=first.source
        )
    components = [p._mixture() for p in predictions]
    return ForecastDistribution(
        "mixture",
        weights=torch.cat([weights for weights, _means, _scales in components], 0),
        means=torch.cat([means for _weights, means, _scales in components], 0),
        scales=torch.cat([scales for _weights, _means, scales in components], 0),
        source=first.source,
    )
