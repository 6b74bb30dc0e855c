"""One test per run-directory plot: its axis labels and ticks (issue 15)."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from zoo import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _drawn(fig):
    fig.canvas.draw()
    return fig


def _tick_texts(axis):
    return [label.get_text() for label in axis.get_ticklabels() if label.get_text()]


def _visible_ticks(ax, axis="x"):
    """Tick locations inside the axis' view (matplotlib keeps some just outside)."""
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    locations = (ax.xaxis if axis == "x" else ax.yaxis).get_majorticklocs()
    return [t for t in locations if low - 1e-9 <= t <= high + 1e-9]


def test_posterior_states_numbers_the_steps_and_writes_the_symbols_on_top():
    marginals = np.random.default_rng(0).dirichlet(np.ones(2), size=60)  # (T=60, K=2)
    labels = list("the cat sat on the mat and the dog sat on the log by the fir")
    fig = _drawn(plots.state_probabilities(marginals, labels, title="p(state | data)", first_step=100))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "time step" and ax.get_ylabel() == "state"
    steps = _visible_ticks(ax)
    assert len(steps) >= 3 and all(float(t).is_integer() and 100 <= t <= 159 for t in steps)
    assert all(text.lstrip("−-").isdigit() for text in _tick_texts(ax.xaxis))
    assert [float(t) for t in _visible_ticks(ax, "y")] == [0.0, 1.0]
    top = [child for child in ax.get_children() if type(child).__name__ == "SecondaryAxis"]
    assert len(top) == 1
    assert "".join(_tick_texts(top[0].xaxis)) == "".join(labels).replace(" ", "␣")
    # Without symbols there is no top axis, and the steps still count from first_step.
    plain = _drawn(plots.state_probabilities(marginals)).axes[0]
    assert not [c for c in plain.get_children() if type(c).__name__ == "SecondaryAxis"]
    assert min(_visible_ticks(plain)) == 0
    with pytest.raises(ValueError, match=r"labels: expected one symbol per step \(60\), got 3"):
        plots.state_probabilities(marginals, list("abc"))


def test_forecast_uses_the_datas_time_column_and_units():
    years = np.arange(1871, 1951)
    history = 1000 + 100 * np.sin(years / 5.0)[:, None]
    future = np.arange(1951, 1971)
    mean, std = np.full((20, 1), 900.0), np.full((20, 1), 50.0)
    fig = _drawn(
        plots.forecast_bands(
            years, history, future, mean, std, series_names=["flow"], time_label="year", units="10⁸ m³"
        )
    )
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "year" and ax.get_ylabel() == "flow (10⁸ m³)"
    ticks = _visible_ticks(ax)
    assert ticks and all(1871 <= t <= 1970 and float(t).is_integer() for t in ticks)
    assert all(text.isdigit() and len(text) == 4 for text in _tick_texts(ax.xaxis))  # 1880, not 1.88e3
    assert ax.xaxis.get_offset_text().get_text() == ""
    # Per-series units, and step numbers by default.
    two = _drawn(
        plots.forecast_bands(
            np.arange(10),
            np.zeros((10, 2)),
            np.arange(10, 13),
            np.zeros((3, 2)),
            np.ones((3, 2)),
            series_names=["a", "b"],
            units=["°C", None],
        )
    )
    assert [a.get_ylabel() for a in two.axes] == ["a (°C)", "b"] and two.axes[-1].get_xlabel() == "time step"
    # Dates (a CSV's time column read as datetime64) are written as dates.
    days = np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]")
    dated = _drawn(
        plots.forecast_bands(
            days[:50], np.zeros((50, 1)), days[50:], np.zeros((10, 1)), np.ones((10, 1)), time_label="day"
        )
    )
    assert dated.axes[-1].get_xlabel() == "day"
    texts = _tick_texts(dated.axes[-1].xaxis)
    assert len(texts) >= 3 and all(re.fullmatch(r"2020-0[123]-\d\d", text) for text in texts)


def test_smoothed_states_use_the_datas_time_column_and_units():
    years = np.arange(1871, 1971)
    mean, std = np.linspace(1100, 800, 100)[:, None], np.full((100, 1), 30.0)
    observed = mean + np.random.default_rng(1).normal(0, 100, size=(100, 1))
    fig = _drawn(
        plots.state_bands(
            years,
            mean,
            std,
            filtered_mean=mean,
            observed=observed,
            series_names=["flow"],
            state_names=["level"],
            time_label="year",
            units="10⁸ m³",
        )
    )
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "year"
    assert ax.get_ylabel() == "level (10⁸ m³)"  # the data are drawn on the state panel: same unit
    assert all(text.isdigit() and len(text) == 4 for text in _tick_texts(ax.xaxis))
    # With a signal panel the unit is the signal's; the latent states carry none.
    signal = _drawn(
        plots.state_bands(
            years,
            np.zeros((100, 2)),
            np.ones((100, 2)),
            signal_mean=mean,
            signal_std=std,
            observed=observed,
            series_names=["flow"],
            units="10⁸ m³",
        )
    )
    assert [a.get_ylabel() for a in signal.axes] == ["flow (10⁸ m³)", "state 0", "state 1"]


def test_log_likelihood_trace_has_integer_iteration_ticks_and_full_values():
    history = [{"step": s, "method": "em", "objective_per_step": -2.7331 - 0.0001 / s} for s in (1, 2, 3)]
    fig = _drawn(plots.log_likelihood_trace(history, title="hmm"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "nats per time step"
    ticks = _visible_ticks(ax)
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.yaxis.get_offset_text().get_text() == ""
    assert any(text.replace("−", "-").startswith("-2.733") for text in _tick_texts(ax.yaxis))
    svi = _drawn(plots.log_likelihood_trace([{"step": s, "objective_per_step": -1.0 / s} for s in range(1, 40)]))
    assert svi.axes[0].get_xlabel() == "step" and all(float(t).is_integer() for t in _visible_ticks(svi.axes[0]))


def test_learning_curves_write_values_without_an_offset():
    curves = {
        "gru": [{"seconds": t, "valid_log_prob_per_step": -2.7330 - 0.0001 * np.exp(-t)} for t in range(10)],
        "hmm": [{"seconds": t, "valid_log_prob_per_step": -2.7332} for t in range(10)],
    }
    fig = _drawn(plots.learning_curves(curves, title="letters"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training time (s)" and ax.get_ylabel() == "valid log-likelihood (nats / step)"
    assert ax.yaxis.get_offset_text().get_text() == ""
    texts = [text.replace("−", "-") for text in _tick_texts(ax.yaxis)]
    assert texts and all(text.startswith("-2.73") for text in texts)
