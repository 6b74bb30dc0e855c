r"""One forecast type for every family, forecast evaluation, and the forecast fan.

Each family forecasts in its own form — the Kalman model Gaussian moments, an HMM
the state probabilities of the next steps (with Gaussian emissions a Gaussian
*mixture* per step), an RNN sampled continuations of the history — and turns it
into an :class:`inference.forecasting.ForecastDistribution` in its own
``forecast_distribution`` method (the contract's ``"forecast_distribution"``
capability); :func:`forecast` calls it, so this module names no family.

:func:`evaluate_forecasts` scores h-step-ahead forecasts from many origins
(RMSE, CRPS, coverage of central intervals, log-loss for symbols) on the
held-out steps only; :func:`forecast_fan` draws several models' forecast fans on
one figure.

Shapes: a forecast of ``N`` sequences ``H`` steps ahead has ``mean()`` of shape
``(N, H, D)`` for real series; symbol forecasts have ``probs`` ``(N, H, V)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from inference import forecast_scores
from inference.batch import SequenceBatch
from inference.contract import SequenceModel
from inference.forecasting import ForecastDistribution, concatenate_forecasts


def forecast(
    model: SequenceModel, history, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
) -> ForecastDistribution:
    """The predictive distribution of the ``steps`` observations after each history:
    ``model.forecast_distribution`` with its arguments checked, without gradients.

    Args:
        model: a fitted model whose family forecasts (``model.supports("forecast_distribution")``).
        history: ``N`` sequences (a :class:`SequenceBatch` or ``(N, T, ...)`` tensor; lengths
            may differ, each is forecast from its own end; length 0 forecasts from the start).
        steps: ``H >= 1``.
        num_samples: sample paths for families that forecast by sampling.
        generator: random numbers for those.

    Raises:
        NotSupported: the model's family does not forecast.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples: expected an int >= 2, got {num_samples!r}")
    history = history if isinstance(history, SequenceBatch) else SequenceBatch.from_tensor(torch.as_tensor(history))
    with torch.no_grad():
        return model.forecast_distribution(history, steps, num_samples=num_samples, generator=generator)


# ---------------------------------------------------------------------------
# Evaluation from many origins
# ---------------------------------------------------------------------------
#: History steps per forecast call of :func:`evaluate_forecasts`.
_HISTORY_STEPS_PER_CALL = 1_000_000


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


def forecast_targets(
    series: SequenceBatch, origins: Sequence[int], steps: int, test_start: int
) -> tuple[SequenceBatch, Tensor, Tensor]:
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


def evaluate_forecasts(
    model: SequenceModel,
    series,
    *,
    test_start: int,
    steps: int,
    levels: Sequence[float] = (0.5, 0.9),
    num_samples: int = 500,
    generator: torch.Generator | None = None,
    max_origins: int | None = None,
) -> ForecastEvaluation:
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
    prediction = concatenate_forecasts(
        [
            forecast(model, histories[first : first + group], steps, num_samples=num_samples, generator=generator)
            for first in range(0, len(origins), group)
        ]
    )
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
        log_loss = forecast_scores.mean_score(
            -prediction.log_prob(torch.nan_to_num(targets)), held_out & observed, dim=0
        )
    observed = ~torch.isnan(targets).any(-1)
    return ForecastEvaluation(leads, rmse, crps, coverage, log_loss, (held_out & observed).sum(0), prediction.source)


# ---------------------------------------------------------------------------
# The forecast fan
# ---------------------------------------------------------------------------
def forecast_fan(
    series,
    forecasts: Mapping[str, ForecastDistribution],
    *,
    origin: int,
    levels: Sequence[float] = (0.5, 0.9),
    time: Sequence[Any] | None = None,
    dim: int = 0,
    title: str = "",
    ylabel: str = "",
) -> Any:
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

    values = (
        series.values[0, : int(series.lengths[0])] if isinstance(series, SequenceBatch) else torch.as_tensor(series)
    )
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
            ax.fill_between(
                future, lower[0, :, dim].cpu().numpy(), upper[0, :, dim].cpu().numpy(), color=colour, alpha=0.2, lw=0
            )
        if ordered:
            lower, upper = prediction.interval(ordered[-1])
            for bound in (lower, upper):
                ax.plot(future, bound[0, :, dim].cpu().numpy(), color=colour, lw=0.9, ls="--")
        ax.plot(
            future,
            prediction.mean()[0, :, dim].cpu().numpy(),
            color=colour,
            lw=1.8,
            ls=style,
            label=f"{name}: mean, {' / '.join(f'{round(100 * l)}%' for l in ordered)} (filled / dashed)",
        )
    ax.set_xlabel("time" if time is None else "")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


__all__ = [
    "ForecastDistribution",
    "ForecastEvaluation",
    "evaluate_forecasts",
    "forecast",
    "forecast_fan",
    "forecast_targets",
]
