"""Figures for run directories. Every function returns a matplotlib Figure;
the run-directory helper writes it."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # run directories are written headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def log_likelihood_trace(history: Sequence[dict], title: str = "") -> "plt.Figure":
    """Training objective and validation log-likelihood (nats per step) against step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["objective_per_step"] for r in history], label="train objective / step")
    valid = [(r["step"], r["valid_log_prob_per_step"]) for r in history if r.get("valid_log_prob_per_step") is not None]
    if valid:
        ax.plot(*zip(*valid), label="valid log-likelihood / step")
    ax.set_xlabel("iteration" if history and history[0].get("method") == "em" else "step")
    ax.set_ylabel("nats per time step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def learning_curves(curves: dict[str, Sequence[dict]], title: str = "") -> "plt.Figure":
    """Validation log-likelihood per step against wall time, one line per model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in curves.items():
        points = [(r["seconds"], r["valid_log_prob_per_step"]) for r in history if r.get("valid_log_prob_per_step") is not None]
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("valid log-likelihood (nats / step)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def state_probabilities(marginals: np.ndarray, labels: Sequence[str] | None = None, title: str = "") -> "plt.Figure":
    """Posterior state probabilities ``(T, K)`` over time as a heat map,
    with the observed symbols along the time axis when ``labels`` is given."""
    length, num_states = marginals.shape
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.12 * length), 1.2 + 0.35 * num_states))
    image = ax.imshow(marginals.T, aspect="auto", interpolation="nearest", vmin=0, vmax=1, cmap="viridis")
    ax.set_ylabel("state")
    ax.set_xlabel("time step")
    if labels is not None and length <= 200:
        ax.set_xticks(range(length))
        ax.set_xticklabels(labels, fontsize=6, family="monospace")
    fig.colorbar(image, ax=ax, label="p(state | data)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
