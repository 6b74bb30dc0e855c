r"""One forecast type for every family, forecast evaluation, and the forecast fan.

Each family forecasts in its own form: the Kalman model returns Gaussian moments
(:class:`inference.kalman.KalmanForecast`), an HMM the state probabilities of the
next steps (:class:`zoo.hmm.Forecast`), which with Gaussian emissions make a
Gaussian *mixture* per step, and an RNN forecasts by sampling continuations of
the history (``RecurrentModel.sample(..., prime=history)``). :func:`forecast`
turns each into a :class:`ForecastDistribution` — per-step marginals as a Gaussian
mixture, a set of sample paths, or symbol probabilities — which knows its mean,
quantiles, intervals, CRPS and log-density, so models of different families are
scored and drawn the same way.

:func:`evaluate_forecasts` scores h-step-ahead forecasts from many origins
(RMSE, CRPS, coverage of central intervals, log-loss for symbols) on the
held-out steps only; :func:`forecast_fan` draws several models' forecast fans on
one figure.

Shapes: a forecast of ``N`` sequences ``H`` steps ahead has ``mean()`` of shape
``(N, H, D)`` for real series; symbol forecasts have ``probs`` ``(N, H, V)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from inference import forecast_scores
from inference.batch import SequenceBatch
from inference.contract import SequenceModel

from .hmm import CategoricalHMM, GaussianHMM, PoissonHMM
from .lgssm import LinearGaussianSSM
from .rnn import RecurrentModel

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
            if self.means.dim() != 4 or self.scales.shape != self.means.shape or self.weights.shape != self.means.shape[:3]:
                raise ValueError(f"mixture: expected weights (N, H, K) and means/scales (N, H, K, D), got "
                                 f"{tuple(self.weights.shape)}, {tuple(self.means.shape)}, {tuple(self.scales.shape)}")
        elif self.kind == "samples":
            if self.samples is None or self.samples.dim() != 4:
                raise ValueError("a samples forecast needs samples of shape (S, N, H, D)")
        elif self.probs is None or self.probs.dim() != 3:
            raise ValueError("a categorical forecast needs probs of shape (N, H, V)")

    # -- constructors --------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean: Tensor, scale: Tensor, source: str = "exact") -> "ForecastDistribution":
        """Independent Gaussian marginals, ``mean`` and ``scale`` ``(N, H, D)``."""
        return cls("mixture", weights=torch.ones(mean.shape[:2] + (1,), dtype=mean.dtype, device=mean.device),
                   means=mean.unsqueeze(2), scales=scale.unsqueeze(2), source=source)

    # -- summaries -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(N, H)``."""
        if self.kind == "mixture":
            return tuple(self.weights.shape[:2])
        if self.kind == "samples":
            return tuple(self.samples.shape[1:3])
        return tuple(self.probs.shape[:2])

    def _real(self, what: str) -> None:
        if self.kind == "categorical":
            raise ValueError(f"{what}: a categorical (symbol) forecast has no {what}; use probs / log_prob")

    def mean(self) -> Tensor:
        """``(N, H, D)`` predictive means."""
        self._real("mean")
        if self.kind == "mixture":
            return (self.weights.unsqueeze(-1) * self.means).sum(2)
        return self.samples.mean(0)

    def quantile(self, q: float) -> Tensor:
        """``(N, H, D)`` the ``q``-quantile of each step's marginal (bisection on the
        mixture CDF; the empirical quantile of samples)."""
        self._real("quantile")
        if not 0 < q < 1:
            raise ValueError(f"q: expected a probability in (0, 1), got {q!r}")
        if self.kind == "samples":
            return torch.quantile(self.samples, q, dim=0)
        weights = self.weights.unsqueeze(-1)  # (N, H, K, 1)
        low = (self.means - 10 * self.scales).min(2).values
        high = (self.means + 10 * self.scales).max(2).values
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            cdf = (weights * 0.5 * torch.erfc(-(middle.unsqueeze(2) - self.means) / (self.scales * math.sqrt(2)))).sum(2)
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
            return forecast_scores.crps_gaussian_mixture(self.weights.unsqueeze(2).expand(*self.means.shape[:2],
                                                                                          self.means.shape[3], -1),
                                                         self.means.transpose(2, 3), self.scales.transpose(2, 3),
                                                         targets)
        return forecast_scores.crps_samples(self.samples, targets)

    def log_prob(self, targets: Tensor) -> Tensor:
        """``(N, H)`` log predictive density of each step's target under its marginal
        (symbols: log-probability; real: the product of per-dimension mixture marginals,
        exact for ``D = 1``). Not available for sample forecasts."""
        if self.kind == "categorical":
            codes = targets.long().clamp(0, self.probs.shape[-1] - 1)
            return self.probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1).log()
        if self.kind == "samples":
            raise ValueError("log_prob: a sample forecast has no density; score it by CRPS")
        components = torch.distributions.Normal(self.means, self.scales).log_prob(targets.unsqueeze(2))  # (N,H,K,D)
        return torch.logsumexp(self.weights.log().unsqueeze(-1) + components, 2).sum(-1)


# ---------------------------------------------------------------------------
# Family adapters
# ---------------------------------------------------------------------------
Forecaster = Callable[..., ForecastDistribution]
#: Model class -> adapter ``(model, history, steps, num_samples, generator) -> ForecastDistribution``;
#: :func:`forecast` picks the entry of the closest class in the model's MRO.
FORECASTERS: dict[type, Forecaster] = {}


def register_forecaster(model_class: type) -> Callable[[Forecaster], Forecaster]:
    """Decorator registering a family's forecast adapter."""
    def decorate(function: Forecaster) -> Forecaster:
        FORECASTERS[model_class] = function
        return function
    return decorate


def forecast(model: SequenceModel, history, steps: int, *, num_samples: int = 500,
             generator: torch.Generator | None = None) -> ForecastDistribution:
    """The predictive distribution of the ``steps`` observations after each history.

    Args:
        model: a fitted model of a family in :data:`FORECASTERS`.
        history: ``N`` sequences (a :class:`SequenceBatch` or ``(N, T, ...)`` tensor; lengths
            may differ, each is forecast from its own end; length 0 forecasts from the start).
        steps: ``H >= 1``.
        num_samples: sample paths for families that forecast by sampling.
        generator: random numbers for those.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an int >= 2, got {num_samples!r}")
    history = history if isinstance(history, SequenceBatch) else SequenceBatch.from_tensor(torch.as_tensor(history))
    for cls in type(model).__mro__:
        if cls in FORECASTERS:
            with torch.no_grad():
                return FORECASTERS[cls](model, history, steps, num_samples, generator)
    raise ValueError(f"forecast: no forecast adapter for {type(model).__name__}; register one with "
                     f"zoo.forecasting.register_forecaster")


@register_forecaster(LinearGaussianSSM)
def _forecast_lgssm(model: LinearGaussianSSM, history: SequenceBatch, steps: int, num_samples, generator):
    moments = model.forecast(history.values, steps, history.lengths)
    scale = moments.observation_cov.diagonal(dim1=-2, dim2=-1).clamp(min=0).sqrt()
    return ForecastDistribution.gaussian(moments.observation_mean, scale)


@register_forecaster(GaussianHMM)
def _forecast_gaussian_hmm(model: GaussianHMM, history: SequenceBatch, steps: int, num_samples, generator):
    state_probs = model.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
    n = state_probs.shape[0]
    means = model.means.detach()  # (K, D)
    scales = model.covariances.detach().diagonal(dim1=-2, dim2=-1).sqrt()  # (K, D)
    shape = (n, steps) + tuple(means.shape)
    return ForecastDistribution("mixture", weights=state_probs, means=means.expand(shape), scales=scales.expand(shape))


@register_forecaster(CategoricalHMM)
def _forecast_categorical_hmm(model: CategoricalHMM, history: SequenceBatch, steps: int, num_samples, generator):
    return ForecastDistribution("categorical", probs=model.forecast(history.values, steps, history.lengths).probs)


@register_forecaster(PoissonHMM)
def _forecast_poisson_hmm(model: PoissonHMM, history: SequenceBatch, steps: int, num_samples, generator):
    # A mixture of Poissons per step: sampled (the marginals are what the scores need).
    state_probs = model.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
    states = torch.multinomial(state_probs.reshape(-1, state_probs.shape[-1]), num_samples, replacement=True,
                               generator=generator)  # (N*H, S)
    rates = model.rates.detach()[states.T.reshape(num_samples, *state_probs.shape[:2])]  # (S, N, H, D)
    return ForecastDistribution("samples", samples=torch.poisson(rates, generator=generator),
                                source=f"monte carlo (S={num_samples})")


def _rnn_continuations(model: RecurrentModel, sequence: Tensor, steps: int, num_samples: int, generator) -> Tensor:
    """``(S, H[, D])`` sample continuations of one history: the draws of
    ``model.sample(S, H, generator, prime=sequence)``, but the recurrent state runs
    through the history once and then branches into the ``S`` paths (``sample`` runs
    the prime ``S`` times, which costs ``S x`` history length per origin)."""
    if model.context_dim:
        return model.sample(num_samples, steps, generator, prime=sequence if len(sequence) else None).values
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = model._initial_state(1, None)
            if len(sequence):
                prime = model._check_prime(sequence, 1)
                _, state = model.rnn(model._step_inputs(prime, None), state)
            expand = lambda tensor: tensor.expand(-1, num_samples, -1).contiguous()  # noqa: E731
            state = tuple(expand(part) for part in state) if isinstance(state, tuple) else expand(state)
            draws = []
            for t in range(steps):  # as RecurrentModel.sample draws them, at temperature 1
                current = model._draw(model._head(model._top(state)), 1.0, generator)
                draws.append(current)
                if t + 1 < steps:
                    _, state = model.rnn(model._step_inputs(current.unsqueeze(1), None), state)
    finally:
        model.train(was_training)
    return torch.stack(draws, 1)


@register_forecaster(RecurrentModel)
def _forecast_rnn(model: RecurrentModel, history: SequenceBatch, steps: int, num_samples, generator):
    paths = []
    for sequence in history.sequences():  # each history primes its own continuations
        paths.append(_rnn_continuations(model, sequence, steps, num_samples, generator))  # (S, H[, D])
    paths = torch.stack(paths, 1)  # (S, N, H[, D])
    source = f"monte carlo (S={num_samples})"
    if model.observation == "categorical":
        # Symbol frequencies among the sampled continuations, with add-half smoothing so an
        # unsampled symbol keeps a finite log-loss.
        counts = torch.nn.functional.one_hot(paths, model.num_symbols).sum(0).to(model._dtype) + 0.5
        return ForecastDistribution("categorical", probs=counts / counts.sum(-1, keepdim=True), source=source)
    return ForecastDistribution("samples", samples=paths, source=source)


# ---------------------------------------------------------------------------
# Evaluation from many origins
# ---------------------------------------------------------------------------
#: History steps per forecast call of :func:`evaluate_forecasts`.
_HISTORY_STEPS_PER_CALL = 1_000_000


def _concatenate(predictions: Sequence[ForecastDistribution]) -> ForecastDistribution:
    """Forecasts of consecutive groups of sequences as one (sequences concatenated)."""
    if len(predictions) == 1:
        return predictions[0]
    first = predictions[0]
    if first.kind == "samples":
        return ForecastDistribution("samples", samples=torch.cat([p.samples for p in predictions], 1),
                                    source=first.source)
    if first.kind == "categorical":
        return ForecastDistribution("categorical", probs=torch.cat([p.probs for p in predictions], 0),
                                    source=first.source)
    return ForecastDistribution("mixture", weights=torch.cat([p.weights for p in predictions], 0),
                                means=torch.cat([p.means for p in predictions], 0),
                                scales=torch.cat([p.scales for p in predictions], 0), source=first.source)


class ForecastEvaluation(NamedTuple):
    """h-step-ahead forecast scores on held-out steps, one entry per lead ``h = 1..H``.

    Attributes:
        leads: ``(H,)`` 1..H.
        rmse: ``(H,)`` RMSE of the predictive mean (real series; None for symbols).
        crps: ``(H,)`` mean CRPS (real series; None for symbols).
        coverage: level -> ``(H,)`` fraction of targets inside the central interval.
        log_loss: ``(H,)`` mean negative log predictive probability (symbols) or density
            (mixture forecasts); None for sample forecasts of real series.
        num_targets: ``(H,)`` held-out targets scored at each lead.
        source: how the forecasts were obtained.
    """

    leads: Tensor
    rmse: Tensor | None
    crps: Tensor | None
    coverage: dict[float, Tensor]
    log_loss: Tensor | None
    num_targets: Tensor
    source: str

    def summary(self, lead: int) -> dict[str, float]:
        """The scores at one lead as plain floats (for a table row)."""
        index = lead - 1
        row: dict[str, float] = {"lead": lead, "targets": int(self.num_targets[index])}
        if self.rmse is not None:
            row["rmse"] = float(self.rmse[index])
            row["crps"] = float(self.crps[index])
        for level, values in self.coverage.items():
            row[f"coverage_{round(100 * level)}"] = float(values[index])
        if self.log_loss is not None:
            row["log_loss"] = float(self.log_loss[index])
        return row


def forecast_targets(series: SequenceBatch, origins: Sequence[int], steps: int, test_start: int) -> tuple[SequenceBatch, Tensor, Tensor]:
    """Histories, targets and the held-out mask of forecasts from ``origins``.

    For one sequence and origins ``o_1..o_m``: history ``j`` is its first ``o_j`` steps,
    target ``(j, h)`` is step ``o_j + h - 1`` (0-based), held out when
    ``test_start <= o_j + h - 1 < length``.

    Returns:
        ``(histories (m, ...), targets (m, H, *event), held_out (m, H) bool)``.
    """
    if series.num_sequences != 1:
        raise ValueError(f"series: expected one sequence, got {series.num_sequences}")
    length = int(series.lengths[0])
    if not 0 < test_start <= length:
        raise ValueError(f"test_start: expected an int in (0, {length}], got {test_start!r}")
    sequence = series.values[0, :length]
    histories, targets, held_out = [], [], []
    for origin in origins:
        if not 0 <= origin < length:
            raise ValueError(f"origins: expected values in [0, {length}), got {origin}")
        histories.append(sequence[:origin])
        index = torch.arange(origin, origin + steps)
        inside = index < length
        held_out.append(inside & (index >= test_start))
        targets.append(sequence[index.clamp(max=length - 1)])
    return SequenceBatch.from_sequences(histories), torch.stack(targets), torch.stack(held_out).to(series.device)


def evaluate_forecasts(model: SequenceModel, series, *, test_start: int, steps: int,
                       levels: Sequence[float] = (0.5, 0.9), num_samples: int = 500,
                       generator: torch.Generator | None = None,
                       max_origins: int | None = None) -> ForecastEvaluation:
    """Scores ``1..steps``-step-ahead forecasts of the held-out steps
    ``[test_start, T)`` of one series.

    Forecasts start at every origin ``o`` in ``[test_start - steps + 1, T)`` (at least 1),
    conditioned on the true first ``o`` steps (the model is not refit), so every lead
    scores every held-out step it can reach; targets before ``test_start`` (the steps
    the model was fit on) are never scored.

    Args:
        model: the fitted model (fit on at most the first ``test_start`` steps).
        series: one sequence, ``(1, T, *event)``.
        test_start: first held-out step (0-based).
        steps: ``H``, the longest lead.
        levels: central interval levels whose coverage is reported.
        max_origins: at most this many origins, evenly spaced (every origin's history is
            padded into one batch, so a long series needs a cap).
    """
    series = series if isinstance(series, SequenceBatch) else SequenceBatch.from_tensor(torch.as_tensor(series))
    length = int(series.lengths[0]) if series.num_sequences == 1 else -1
    origins = list(range(max(test_start - steps + 1, 1), length))
    if max_origins is not None:
        if not isinstance(max_origins, int) or max_origins < 1:
            raise ValueError(f"max_origins: expected a positive int or None, got {max_origins!r}")
        if len(origins) > max_origins:
            chosen = torch.linspace(0, len(origins) - 1, max_origins).round().long().unique().tolist()
            origins = [origins[i] for i in chosen]
    histories, targets, held_out = forecast_targets(series, origins, steps, test_start)
    # Origins in groups of at most _HISTORY_STEPS_PER_CALL history steps: a family's filter
    # holds (origins, T, K) at once.
    group = max(1, _HISTORY_STEPS_PER_CALL // max(int(histories.lengths.max()), 1))
    prediction = _concatenate([forecast(model, histories[first:first + group], steps, num_samples=num_samples,
                                        generator=generator) for first in range(0, len(origins), group)])
    leads = torch.arange(1, steps + 1)
    if prediction.kind == "categorical":
        losses = -prediction.log_prob(targets)
        log_loss = forecast_scores.mean_score(losses, held_out, dim=0)
        return ForecastEvaluation(leads, None, None, {}, log_loss, held_out.sum(0), prediction.source)
    targets = targets.to(prediction.mean().dtype)
    if targets.dim() == 2:
        targets = targets.unsqueeze(-1)
    mask = held_out.unsqueeze(-1).expand(targets.shape)
    rmse = forecast_scores.rmse(prediction.mean(), targets, mask, dim=(0, 2))
    crps = forecast_scores.mean_score(prediction.crps(targets), mask, dim=(0, 2), targets=targets)
    coverage = {}
    for level in levels:
        lower, upper = prediction.interval(level)
        coverage[level] = forecast_scores.interval_coverage(lower, upper, targets, mask, dim=(0, 2))
    log_loss = None
    if prediction.kind == "mixture":
        observed = ~torch.isnan(targets).any(-1)
        log_loss = forecast_scores.mean_score(-prediction.log_prob(torch.nan_to_num(targets)), held_out & observed,
                                              dim=0)
    observed = ~torch.isnan(targets).any(-1)
    return ForecastEvaluation(leads, rmse, crps, coverage, log_loss, (held_out & observed).sum(0), prediction.source)


# ---------------------------------------------------------------------------
# The forecast fan
# ---------------------------------------------------------------------------
def forecast_fan(series, forecasts: Mapping[str, ForecastDistribution], *, origin: int,
                 levels: Sequence[float] = (0.5, 0.9), time: Sequence[Any] | None = None, dim: int = 0,
                 title: str = "", ylabel: str = "") -> Any:
    """Several models' forecast fans from one origin on one figure.

    Args:
        series: the observed series, ``(T,)``, ``(T, D)`` or a one-sequence batch.
        forecasts: model label -> a one-sequence :class:`ForecastDistribution` from ``origin``.
        origin: steps observed before the forecast (the fans start at step ``origin``).
        levels: central interval levels: the widest drawn as dashed bounds, the others as
            filled bands.
        time: labels of the ``T`` steps (default 0..T-1); forecasts past ``T`` extend them
            by the last spacing.
        dim: which series dimension to draw.

    Returns:
        A matplotlib Figure (the caller saves it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = series.values[0, :int(series.lengths[0])] if isinstance(series, SequenceBatch) else torch.as_tensor(series)
    if values.dim() == 3:  # a (1, T, D) tensor of one sequence
        values = values[0]
    values = values.reshape(values.shape[0], -1)[:, dim].detach().cpu().double().numpy()
    length = len(values)
    times = np.arange(length, dtype=float) if time is None else np.asarray(time, dtype=float)
    if len(times) != length:
        raise ValueError(f"time: expected {length} labels, got {len(times)}")
    if not 0 < origin <= length:
        raise ValueError(f"origin: expected an int in (0, {length}], got {origin!r}")
    spacing = times[1] - times[0] if length > 1 else 1.0
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(times, values, color="black", lw=1.2, label="observed", zorder=5)
    ax.axvline(times[origin - 1], color="grey", ls=":", lw=1)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (name, prediction) in enumerate(forecasts.items()):
        if prediction.kind == "categorical":
            raise ValueError(f"forecasts[{name!r}]: a symbol forecast has no fan")
        if prediction.shape[0] != 1:
            raise ValueError(f"forecasts[{name!r}]: expected a forecast of one sequence, got {prediction.shape[0]}")
        steps = prediction.shape[1]
        future = times[origin - 1] + spacing * np.arange(1, steps + 1)
        colour = colours[number % len(colours)]
        style = ("-", "--", "-.", ":")[number % 4]
        ordered = sorted(levels)
        # Inner intervals filled, the widest as dashed bounds: several models' fans stay readable.
        for level in ordered[:-1]:
            lower, upper = prediction.interval(level)
            ax.fill_between(future, lower[0, :, dim].cpu().numpy(), upper[0, :, dim].cpu().numpy(), color=colour,
                            alpha=0.2, lw=0)
        if ordered:
            lower, upper = prediction.interval(ordered[-1])
            for bound in (lower, upper):
                ax.plot(future, bound[0, :, dim].cpu().numpy(), color=colour, lw=0.9, ls="--")
        ax.plot(future, prediction.mean()[0, :, dim].cpu().numpy(), color=colour, lw=1.8, ls=style,
                label=f"{name}: mean, {' / '.join(f'{round(100 * l)}%' for l in ordered)} (filled / dashed)")
    ax.set_xlabel("time" if time is None else "")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


__all__ = ["FORECASTERS", "ForecastDistribution", "ForecastEvaluation", "evaluate_forecasts", "forecast",
           "forecast_fan", "forecast_targets", "register_forecaster"]
