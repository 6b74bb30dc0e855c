"""Figures for run directories. Every function returns a matplotlib Figure;
the run-directory helper writes it."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # run directories are written headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402


def _plain_numbers(axis) -> None:
    """Tick labels as the values themselves: no offset ("+1e4") or scale factor,
    which hide log-likelihoods that differ in the fourth digit."""
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def _with_unit(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def _unit_of(units: str | Sequence[str | None] | None, index: int) -> str | None:
    if units is None or isinstance(units, str):
        return units
    return units[index] if index < len(units) else None


def log_likelihood_trace(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training objective and validation log-likelihood (nats per step) against step
    (EM iterations or optimiser steps: integer ticks), values written out in full."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["objective_per_step"] for r in history], label="train objective / step")
    valid = [(r["step"], r["valid_log_prob_per_step"]) for r in history if r.get("valid_log_prob_per_step") is not None]
    if valid:
        ax.plot(*zip(*valid), label="valid log-likelihood / step")
    ax.set_xlabel("iteration" if history and history[0].get("method") == "em" else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _plain_numbers(ax.yaxis)
    ax.set_ylabel("nats per time step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def learning_curves(curves: dict[str, Sequence[dict]], title: str = "") -> plt.Figure:
    """Validation log-likelihood per step against wall time, one line per model
    (values written out in full, never as an offset plus small deltas)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in curves.items():
        points = [
            (r["seconds"], r["valid_log_prob_per_step"])
            for r in history
            if r.get("valid_log_prob_per_step") is not None
        ]
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("valid log-likelihood (nats / step)")
    _plain_numbers(ax.yaxis)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def state_probabilities(
    marginals: np.ndarray, labels: Sequence[str] | None = None, title: str = "", first_step: int = 0
) -> plt.Figure:
    """Posterior state probabilities ``(T, K)`` over time as a heat map.

    The bottom axis numbers the time steps (from ``first_step``); when ``labels``
    (``T`` observed symbols) is given and ``T <= 200``, they are written along the
    top axis, one per step.
    """
    length, num_states = marginals.shape
    if labels is not None and len(labels) != length:
        raise ValueError(f"labels: expected one symbol per step ({length}), got {len(labels)}")
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * length), 1.2 + 0.35 * num_states))
    extent = (first_step - 0.5, first_step + length - 0.5, num_states - 0.5, -0.5)
    image = ax.imshow(
        marginals.T, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis", extent=extent
    )
    ax.set_ylabel("state")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if labels is not None and length <= 200:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(first_step, first_step + length))
        top.set_xticklabels(["␣" if label == " " else label for label in labels], fontsize=6, family="monospace")
        top.tick_params(length=0, pad=1)
    fig.colorbar(image, ax=ax, label="p(state | data)")
    ax.set_title(title, pad=14 if labels is not None and length <= 200 else 6)
    fig.tight_layout()
    return fig


def _normal_quantile(level: float) -> float:
    """The z with P(|Z| <= z) = level for a standard normal Z (e.g. 1.645 for 0.9)."""
    from statistics import NormalDist

    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def _panel_grid(count: int, width: float = 9.0, height: float = 2.4):
    fig, axes = plt.subplots(count, 1, figsize=(width, 0.8 + height * count), sharex=True, squeeze=False)
    return fig, axes[:, 0]


def state_bands(
    time: np.ndarray,
    smoothed_mean: np.ndarray,
    smoothed_std: np.ndarray,
    *,
    filtered_mean: np.ndarray | None = None,
    signal_mean: np.ndarray | None = None,
    signal_std: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    state_names: Sequence[str] | None = None,
    series_names: Sequence[str] | None = None,
    level: float = 0.9,
    title: str = "",
    max_panels: int = 4,
    time_label: str = "time step",
    units: str | Sequence[str | None] | None = None,
) -> plt.Figure:
    """Smoothed (and filtered) latent states of a linear-Gaussian model with central bands.

    One panel per observed series (at most ``max_panels``): the data as dots and
    the smoothed signal ``B E[S_t | x]`` with its band, when ``signal_mean`` is
    given; then one panel per state dimension (at most ``max_panels``): the
    smoothed mean with its ``level`` band and the filtered mean dashed. When no
    signal is given and there are as many series as states, the data are drawn
    on the state panels (for models whose observation matrix is the identity).

    Args:
        time: ``(T,)`` time axis: the data's own time column (e.g. years) or step numbers.
        smoothed_mean, smoothed_std: ``(T, d)`` posterior means and standard deviations.
        filtered_mean: optional ``(T, d)`` filtered means.
        signal_mean, signal_std: optional ``(T, p)`` posterior moments of ``B S_t``.
        observed: optional ``(T, p)`` data, NaN where missing.
        level: probability mass of the bands (0.9: 5% to 95%).
        time_label: the time axis' label, e.g. ``"year"``.
        units: the data's unit (one for all series, or one per series), shown on
            the series panels and on state panels drawn in the data's scale.
    """
    z = _normal_quantile(level)
    state_dim = smoothed_mean.shape[1]
    obs_dim = 0 if signal_mean is None else signal_mean.shape[1]
    series_panels, state_panels = min(obs_dim, max_panels), min(state_dim, max_panels)
    fig, axes = _panel_grid(series_panels + state_panels)
    percent = f"{round(100 * level)}%"
    for j in range(series_panels):
        ax = axes[j]
        name = series_names[j] if series_names else f"series {j}"
        ax.fill_between(
            time,
            signal_mean[:, j] - z * signal_std[:, j],
            signal_mean[:, j] + z * signal_std[:, j],
            alpha=0.3,
            color="C0",
            label=f"{percent} band",
        )
        ax.plot(time, signal_mean[:, j], color="C0", label="smoothed signal")
        if observed is not None:
            ax.plot(time, observed[:, j], ".", color="k", markersize=3, label="data")
        ax.set_ylabel(_with_unit(name, _unit_of(units, j)))
        ax.legend(fontsize="small", loc="best")
    for i in range(state_panels):
        ax = axes[series_panels + i]
        mean, std = smoothed_mean[:, i], smoothed_std[:, i]
        ax.fill_between(time, mean - z * std, mean + z * std, alpha=0.3, color="C1", label=f"{percent} band")
        ax.plot(time, mean, color="C1", label="smoothed state")
        if filtered_mean is not None:
            ax.plot(time, filtered_mean[:, i], "--", color="C2", linewidth=1, label="filtered state")
        if signal_mean is None and observed is not None and observed.shape[1] == state_dim:
            ax.plot(time, observed[:, i], ".", color="k", markersize=3, label="data")
        state_unit = (
            _unit_of(units, i)
            if signal_mean is None and observed is not None and observed.shape[1] == state_dim
            else None
        )
        ax.set_ylabel(_with_unit(state_names[i] if state_names else f"state {i}", state_unit))
        ax.legend(fontsize="small", loc="best")
    _time_axis(axes[-1], time, time_label)
    axes[0].set_title(title)
    fig.tight_layout()
    return fig


def _time_axis(ax, time: np.ndarray, label: str) -> None:
    """Labels the time axis; whole-numbered times (steps, years) get whole-numbered
    ticks written in full (1871, not 1.871e3 or an offset)."""
    ax.set_xlabel(label)
    values = np.asarray(time)
    if np.issubdtype(values.dtype, np.number):
        finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
        if finite.size and np.all(finite == np.round(finite)):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _plain_numbers(ax.xaxis)


def forecast_bands(
    history_time: np.ndarray,
    history: np.ndarray,
    future_time: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    actual: np.ndarray | None = None,
    series_names: Sequence[str] | None = None,
    level: float = 0.9,
    title: str = "",
    max_panels: int = 4,
    time_label: str = "time step",
    units: str | Sequence[str | None] | None = None,
) -> plt.Figure:
    """Forecasts of observations with central predictive bands, after the observed history.

    Args:
        history_time: ``(T,)``; history: ``(T, p)`` the data the forecast starts from.
        future_time: ``(K,)``; mean, std: ``(K, p)`` predictive moments of ``X_{T+k}``.
        actual: optional ``(K, p)`` held-out values to compare with, NaN where missing.
        level: probability mass of the bands.
        time_label: the time axis' label, e.g. ``"year"`` when the times are the data's years.
        units: the data's unit, one for all series or one per series.
    """
    z = _normal_quantile(level)
    panels = min(history.shape[1], max_panels)
    fig, axes = _panel_grid(panels)
    percent = f"{round(100 * level)}%"
    for j in range(panels):
        ax = axes[j]
        ax.plot(history_time, history[:, j], color="k", linewidth=1, label="data")
        ax.fill_between(
            future_time,
            mean[:, j] - z * std[:, j],
            mean[:, j] + z * std[:, j],
            alpha=0.3,
            color="C0",
            label=f"{percent} predictive band",
        )
        ax.plot(future_time, mean[:, j], color="C0", label="forecast")
        if actual is not None:
            ax.plot(future_time, actual[:, j], ".", color="C3", markersize=4, label="held out")
        ax.set_ylabel(_with_unit(series_names[j] if series_names else f"series {j}", _unit_of(units, j)))
        ax.legend(fontsize="small", loc="best")
    _time_axis(axes[-1], np.concatenate([np.asarray(history_time), np.asarray(future_time)]), time_label)
    axes[0].set_title(title)
    fig.tight_layout()
    return fig


def station_maps(
    lon: np.ndarray,
    lat: np.ndarray,
    levels: np.ndarray,
    *,
    observed: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    label: str = "",
    columns: int = 3,
) -> plt.Figure:
    """Maps of a field at fixed stations, one panel per row of ``levels``.

    Each station is a large disc coloured by ``levels`` (e.g. the smoothed
    ozone); where ``observed`` is given, a small inner dot is coloured by the
    observed value on the same scale, and a cross marks a missing observation.

    Args:
        lon, lat: ``(M,)`` station coordinates (degrees).
        levels: ``(D, M)`` values to map, one panel per row.
        observed: optional ``(D, M)`` observed values, NaN where missing.
        titles: optional ``D`` panel titles.
        label: colour-bar label.
    """
    levels = np.atleast_2d(levels)
    panels = len(levels)
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1.2, 4.0 * rows), squeeze=False)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    finite = [levels[np.isfinite(levels)]]
    if observed is not None:
        finite.append(observed[np.isfinite(observed)])
    values = np.concatenate(finite)
    vmin, vmax = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    image = None
    for k, ax in enumerate(axes.ravel()):
        if k >= panels:
            ax.set_visible(False)
            continue
        image = ax.scatter(lon, lat, c=levels[k], s=70, cmap="viridis", vmin=vmin, vmax=vmax, edgecolors="none")
        if observed is not None:
            seen = np.isfinite(observed[k])
            ax.scatter(
                lon[seen],
                lat[seen],
                c=observed[k][seen],
                s=12,
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                edgecolors="white",
                linewidths=0.5,
            )
            ax.scatter(lon[~seen], lat[~seen], marker="x", s=14, color="red", linewidths=1)
        ax.set_title(titles[k] if titles else "", fontsize="medium")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        ax.set_aspect(1 / np.cos(np.deg2rad(np.mean(lat))))
    fig.colorbar(image, ax=axes.ravel().tolist(), label=label, shrink=0.8)
    return fig
