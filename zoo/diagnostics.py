r"""Posterior predictive checks and diagnostic figures for the models of the zoo.

:func:`posterior_predictive_checks` compares summary statistics of the observed
sequences with the same statistics of the replicated sequences in the
``posterior_predictive`` group of an export (:func:`inference.arviz.to_inference_data`):

* symbols (integer codes): the frequency of every symbol, the repeat rate
  (fraction of consecutive steps with the same symbol: a lag-1 dependence
  measure for categories) and the mean run length of identical symbols;
* real values and counts, per dimension: mean, standard deviation, lag-1
  autocorrelation (pooled within sequences) and the mean run length above /
  below the observed median;
* state occupancy (models with ``smooth``):
  :math:`\bar p_k(x, \theta) = \operatorname{mean}_t p(s_t = k \mid x, \theta)`, a
  discrepancy evaluated on the observed data and on the replicated data at the
  same draw.

For each statistic the table gives the observed value, the mean and 90%
interval of the replicated values, and the posterior predictive p-value
:math:`P(T(x^{rep}) \ge T(x))`; values near 0 or 1 flag a feature of the data the
model does not reproduce.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.arviz import OBSERVED_NAME  # noqa: E402


def _runs(sequence: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of equal consecutive values of a 1-D array."""
    if sequence.size == 0:
        return np.zeros(0)
    change = np.flatnonzero(sequence[1:] != sequence[:-1]) + 1
    edges = np.concatenate([[0], change, [sequence.size]])
    return np.diff(edges)


def _valid_rows(values: np.ndarray) -> list[np.ndarray]:
    """Each sequence without its NaN padding (real data) as an array."""
    rows = []
    for row in values:
        if row.dtype.kind == "f":
            keep = ~np.isnan(row.reshape(row.shape[0], -1)).all(-1)
            # padding is a NaN tail; interior NaN rows (missing values) are kept and skipped by the statistics
            last = np.flatnonzero(keep)
            row = row[: last[-1] + 1] if last.size else row[:0]
        rows.append(row)
    return rows


def summary_statistics(values: np.ndarray, num_symbols: int | None = None) -> dict[str, float]:
    """Summary statistics of one data set (see the module docstring).

    Args:
        values: ``(N, T)`` integer symbol codes, or ``(N, T)``/``(N, T, D)``
            floats with NaN for missing values and padding.
        num_symbols: symbols (default: largest code + 1).

    Returns:
        Statistic name -> value.
    """
    values = np.asarray(values)
    rows = _valid_rows(values)
    stats: dict[str, float] = {}
    if values.dtype.kind in "iu":
        codes = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
        codes = codes[codes >= 0]
        count = max(codes.size, 1)
        num_symbols = num_symbols or (int(codes.max()) + 1 if codes.size else 1)
        frequencies = np.bincount(codes, minlength=num_symbols) / count
        for symbol, frequency in enumerate(frequencies):
            stats[f"frequency[{symbol}]"] = float(frequency)
        same = sum(int((row[1:] == row[:-1]).sum()) for row in rows)
        pairs = sum(max(len(row) - 1, 0) for row in rows)
        stats["repeat_rate"] = same / pairs if pairs else math.nan
        runs = np.concatenate([_runs(row) for row in rows]) if rows else np.zeros(0)
        stats["mean_run_length"] = float(runs.mean()) if runs.size else math.nan
        return stats
    rows = [row.reshape(row.shape[0], -1).astype(float) for row in rows]
    dim = values.reshape(values.shape[0], values.shape[1], -1).shape[-1]
    pooled = np.concatenate(rows) if rows else np.zeros((0, dim))
    for d in range(dim):
        column = pooled[:, d]
        column = column[~np.isnan(column)]
        suffix = f"[{d}]" if dim > 1 else ""
        stats[f"mean{suffix}"] = float(column.mean()) if column.size else math.nan
        stats[f"sd{suffix}"] = float(column.std()) if column.size else math.nan
        lead = np.concatenate([row[1:, d] for row in rows]) if rows else np.zeros(0)
        lag = np.concatenate([row[:-1, d] for row in rows]) if rows else np.zeros(0)
        both = ~np.isnan(lead) & ~np.isnan(lag)
        if both.sum() > 2 and lead[both].std() > 0 and lag[both].std() > 0:
            stats[f"lag1_autocorrelation{suffix}"] = float(np.corrcoef(lead[both], lag[both])[0, 1])
        else:
            stats[f"lag1_autocorrelation{suffix}"] = math.nan
        median = np.median(column) if column.size else 0.0
        runs = [_runs(row[~np.isnan(row[:, d]), d] > median) for row in rows]
        runs = np.concatenate(runs) if runs else np.zeros(0)
        stats[f"mean_run_length{suffix}"] = float(runs.mean()) if runs.size else math.nan
    return stats


def _posterior_draw_values(idata, chain: int, draw: int) -> dict[str, torch.Tensor]:
    posterior = idata.posterior
    return {name: torch.as_tensor(posterior[name].sel(chain=chain, draw=draw).values) for name in posterior.data_vars}


def _occupancy(model, values: np.ndarray, lengths: torch.Tensor) -> np.ndarray:
    batch_values = torch.as_tensor(values)
    if batch_values.is_floating_point():
        batch_values = batch_values.to(next(iter(model.parameter_values().values())).dtype)
    with torch.no_grad():
        marginals = model.smooth(batch_values, lengths)
    if not isinstance(marginals, torch.Tensor):
        return np.zeros(0)
    marginals = marginals.double().cpu()
    return (marginals.sum((0, 1)) / lengths.sum()).numpy()


def replicated_statistics(
    idata, model=None, num_symbols: int | None = None, occupancy: bool = True
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Statistics of the observed data and of every replicated data set.

    Args:
        idata: an export with ``observed_data`` and ``posterior_predictive``.
        model: the exported model; with ``smooth`` and ``occupancy`` the state
            occupancy discrepancy is added (the model is restored afterwards).
        num_symbols: symbols of categorical data.
        occupancy: compute the state occupancy (one ``smooth`` per replicated
            draw and data set).

    Returns:
        ``(observed, replicated)``: name -> value, and name -> ``(R,)`` values
        over the ``R`` replicated data sets (chain-major). The occupancy is a
        discrepancy (it depends on the draw): its observed entry is the mean
        over the draws of :math:`T(x, \theta_r)`, and each replicated entry is
        :math:`T(x^{rep}_r, \theta_r) - T(x, \theta_r)` plus that mean, so the
        p-value is :math:`P(T(x^{rep}, \theta) \\ge T(x, \theta))`.
    """
    observed_values = idata.observed_data[OBSERVED_NAME].values
    if num_symbols is None and model is not None:
        num_symbols = model.num_symbols
    observed = summary_statistics(observed_values, num_symbols)
    predictive = idata.posterior_predictive[OBSERVED_NAME]
    replicated_arrays = predictive.transpose("chain", "draw", ...).values
    chains, draws = replicated_arrays.shape[:2]
    flat = replicated_arrays.reshape(chains * draws, *replicated_arrays.shape[2:])
    if observed_values.dtype.kind in "iu" and flat.dtype.kind == "f":
        flat = flat.astype(observed_values.dtype)
    rows = [summary_statistics(sample, num_symbols) for sample in flat]
    replicated = {name: np.array([row.get(name, math.nan) for row in rows]) for name in observed}
    if (
        occupancy
        and model is not None
        and model.supports("smooth")
        and hasattr(idata, "posterior")
        and idata.posterior.data_vars
    ):
        import copy

        saved = copy.deepcopy(model.state_dict())
        lengths = _lengths(observed_values)
        observed_occupancy, replicated_occupancy = [], []
        try:
            for chain in range(chains):
                for draw in predictive.coords["draw"].values:
                    posterior_draw = (
                        int(draw)
                        if idata.posterior.sizes["draw"] > 1
                        else int(idata.posterior.coords["draw"].values[0])
                    )
                    model.set_parameter_values(_posterior_draw_values(idata, chain, posterior_draw))
                    observed_occupancy.append(_occupancy(model, observed_values, lengths))
                    replica = predictive.sel(chain=chain, draw=draw).values
                    if observed_values.dtype.kind in "iu":
                        replica = replica.astype(observed_values.dtype)
                    replicated_occupancy.append(_occupancy(model, replica, lengths))
        finally:
            model.load_state_dict(saved)
        observed_occupancy, replicated_occupancy = np.array(observed_occupancy), np.array(replicated_occupancy)
        if observed_occupancy.ndim == 2 and observed_occupancy.shape[1]:
            for state in range(observed_occupancy.shape[1]):
                observed[f"occupancy[{state}]"] = float(observed_occupancy[:, state].mean())
                replicated[f"occupancy[{state}]"] = (
                    replicated_occupancy[:, state] - observed_occupancy[:, state] + observed_occupancy[:, state].mean()
                )
    return observed, replicated


def _lengths(values: np.ndarray) -> torch.Tensor:
    return torch.tensor([len(row) for row in _valid_rows(values)], dtype=torch.long)


def posterior_predictive_checks(
    idata, model=None, num_symbols: int | None = None, occupancy: bool = True
) -> list[dict[str, Any]]:
    """The table of the module docstring, one dict per statistic: ``statistic``,
    ``observed``, ``replicated_mean``, ``replicated_5%``, ``replicated_95%``,
    ``p_value`` (``None`` where undefined)."""
    return _table(*replicated_statistics(idata, model, num_symbols, occupancy))


def plot_ppc_statistics(observed: dict[str, float], replicated: dict[str, np.ndarray], title: str = "") -> plt.Figure:
    """One histogram of replicated values per statistic, the observed value as a red line."""
    names = [name for name in observed if np.isfinite(replicated[name]).any()]
    columns = min(4, max(len(names), 1))
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        samples = replicated[name][np.isfinite(replicated[name])]
        ax.hist(samples, bins=min(30, max(5, samples.size // 4)), color="0.7")
        ax.axvline(observed[name], color="C3", linewidth=2, label="observed")
        p_value = float((samples >= observed[name]).mean())
        ax.set_title(f"{name}  p={p_value:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title or "posterior predictive checks: replicated (grey) vs observed (red)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_posterior_states(idata, sequence: int = 0, steps: int = 200, title: str = "") -> plt.Figure | None:
    """State probabilities over time of one sequence (HMM: ``state_probs``),
    or smoothed state means with ±2 sd bands (models whose ``smooth`` returns
    means and covariances); ``None`` when the export has no state summaries."""
    group = getattr(idata, "posterior_states", None)
    if group is None:
        return None
    if "state_probs" in group:
        from zoo import plots

        marginals = group["state_probs"].isel(sequence=sequence).values
        length = int((marginals.sum(-1) > 0).sum())
        length = min(length, steps) if length else min(marginals.shape[0], steps)
        return plots.state_probabilities(marginals[:length], title=title or f"p(state | data), sequence {sequence}")
    mean_name = next((name for name in group.data_vars if name.startswith("smoothed_") and "mean" in name), None)
    if mean_name is None:
        return _plot_sampled_paths(group, sequence, steps, title)
    means = group[mean_name].isel(sequence=sequence).values  # (T, S)
    covariance_name = next((name for name in group.data_vars if name.startswith("smoothed_") and "cov" in name), None)
    means = means.reshape(means.shape[0], -1)[:steps]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    time = np.arange(means.shape[0])
    for index in range(means.shape[1]):
        ax.plot(time, means[:, index], label=f"state {index}")
        if covariance_name is not None:
            covariance = group[covariance_name].isel(sequence=sequence).values[:steps]
            variance = (
                covariance.reshape(covariance.shape[0], means.shape[1], -1)[:, index, index]
                if covariance.ndim >= 3
                else covariance.reshape(covariance.shape[0], -1)[:, index]
            )
            band = 2 * np.sqrt(np.maximum(variance, 0))
            ax.fill_between(time, means[:, index] - band, means[:, index] + band, alpha=0.25)
    ax.set_xlabel("time step")
    ax.set_ylabel("smoothed state")
    ax.set_title(title or f"smoothed states ± 2 sd, sequence {sequence}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def _plot_sampled_paths(group, sequence: int, steps: int, title: str, max_latent: int = 4) -> plt.Figure | None:
    """Mean ± 2 sd over the drawn continuous state paths (``sampled_states`` with a ``latent`` dim, e.g. a
    deep Markov model's guide draws) of the first ``max_latent`` latent coordinates; else None."""
    if "sampled_states" not in group or "latent" not in group["sampled_states"].dims:
        return None
    paths = group["sampled_states"].isel(sequence=sequence).transpose("chain", "draw", "time", "latent").values
    paths = paths.reshape(-1, *paths.shape[2:])[:, :steps, :max_latent]  # (draws, T, latent)
    real = ~np.isnan(paths).all(axis=(0, 2))
    paths = paths[:, real]
    mean, sd = paths.mean(0), paths.std(0)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    time = np.arange(paths.shape[1])
    for index in range(paths.shape[2]):
        ax.plot(time, mean[:, index], label=f"latent {index}")
        ax.fill_between(time, mean[:, index] - 2 * sd[:, index], mean[:, index] + 2 * sd[:, index], alpha=0.25)
    ax.set_xlabel("time step")
    ax.set_ylabel("sampled state")
    ax.set_title(title or f"posterior state paths: mean ± 2 sd over {paths.shape[0]} draws, sequence {sequence}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# -- a diagnostics directory -------------------------------------------------------
def _markdown_table(frame) -> str:
    columns = [str(column) for column in frame.columns]
    lines = ["| parameter | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for index, row in frame.iterrows():
        cells = [f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value) for value in row.values]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure_of(axes) -> plt.Figure:
    return np.asarray(axes).ravel()[0].figure


def write_diagnostics(out, model, idata, *, title: str = "", num_symbols: int | None = None) -> dict[str, Any]:
    """Writes the diagnostics of one exported posterior into a run directory.

    Files: ``summary.csv`` and ``summary.md`` (:func:`arviz.summary`: mean, sd,
    94% HDI, MCSE, ``ess_bulk``, ``ess_tail``, ``r_hat``), ``trace.png``,
    ``rank.png`` (several draws only), ``ppc.png`` (:func:`arviz.plot_ppc`),
    ``ppc_statistics.png`` and ``ppc.json`` (:func:`posterior_predictive_checks`),
    ``posterior_states.png`` (where the export has state summaries),
    ``loo.json`` (PSIS-LOO over sequences, or why it was skipped) and
    ``inference_data.nc`` (the whole export, netCDF).

    Args:
        out: a :class:`~inference.rundir.RunDirectory` (files are written atomically).
        model: the exported model (for the occupancy check).
        idata: from :func:`inference.arviz.to_inference_data`.
        title: figure titles.
        num_symbols: symbols of categorical data.

    Returns:
        A small report: ``posterior_kind``, ``num_chains``, ``num_draws``,
        ``max_r_hat``, ``min_ess_bulk``, ``divergences``, ``loo`` (dict or None),
        ``files``.
    """
    import os
    import tempfile
    import warnings

    import arviz as az

    from inference import arviz as export

    files = []
    posterior = getattr(idata, "posterior", None)
    has_parameters = posterior is not None and bool(posterior.data_vars)
    num_chains = int(posterior.sizes["chain"]) if has_parameters else 1
    num_draws = int(posterior.sizes["draw"]) if has_parameters else 1
    several = num_chains * num_draws > 1
    report: dict[str, Any] = {
        "posterior_kind": idata.attrs.get("posterior_kind"),
        "num_chains": num_chains,
        "num_draws": num_draws,
        "max_r_hat": None,
        "min_ess_bulk": None,
        "divergences": None,
    }
    with warnings.catch_warnings():
        # Degenerate statistics of a single draw (NaN sd, r_hat) and ArviZ's subplot caps are expected here.
        warnings.simplefilter("ignore")
        if has_parameters:
            summary = az.summary(idata, kind="all" if several else "stats")
            out.write_text("summary.csv", summary.to_csv())
            note = (
                ""
                if num_chains > 1
                else (
                    "\n\nOne chain: r_hat needs several (run `seqzoo diagnose --nuts`).\n"
                    if several
                    else "\n\nA point estimate (one draw): sd, HDI, ESS and r_hat need posterior draws "
                    "(`seqzoo diagnose --nuts`, or a model fitted with guide=meanfield).\n"
                )
            )
            out.write_text(
                "summary.md",
                f"# Posterior summary ({report['posterior_kind']}: {num_chains} chain(s) x "
                f"{num_draws} draw(s))\n\n" + _markdown_table(summary) + note,
            )
            files += ["summary.csv", "summary.md"]
            if several and "r_hat" in summary:
                report["max_r_hat"] = (
                    float(np.nanmax(summary["r_hat"].values)) if np.isfinite(summary["r_hat"].values).any() else None
                )
                report["min_ess_bulk"] = (
                    float(np.nanmin(summary["ess_bulk"].values))
                    if np.isfinite(summary["ess_bulk"].values).any()
                    else None
                )
            out.save_figure("trace.png", _figure_of(az.plot_trace(idata, compact=True)))
            files.append("trace.png")
            if several:
                out.save_figure("rank.png", _figure_of(az.plot_rank(idata)))
                files.append("rank.png")
        if hasattr(idata, "sample_stats") and "diverging" in idata.sample_stats:
            report["divergences"] = int(idata.sample_stats["diverging"].values.sum())
        if hasattr(idata, "posterior_predictive"):
            out.save_figure(
                "ppc.png",
                _figure_of(
                    az.plot_ppc(
                        idata, num_pp_samples=min(50, int(idata.posterior_predictive.sizes["draw"]) * num_chains)
                    )
                ),
            )
            observed, replicated = replicated_statistics(idata, model, num_symbols)
            out.write_json("ppc.json", _table(observed, replicated))
            out.save_figure("ppc_statistics.png", plot_ppc_statistics(observed, replicated, title=title))
            files += ["ppc.png", "ppc.json", "ppc_statistics.png"]
        figure = plot_posterior_states(idata, title=title)
        if figure is not None:
            out.save_figure("posterior_states.png", figure)
            files.append("posterior_states.png")
        loo_report: dict[str, Any]
        num_sequences = int(idata.observed_data[export.OBSERVED_NAME].sizes["sequence"])
        if not hasattr(idata, "log_likelihood"):
            loo_report = {"skipped": "no log_likelihood group"}
        elif not several:
            loo_report = {
                "skipped": "a point estimate has one draw; PSIS-LOO needs posterior draws (--nuts or a meanfield guide)"
            }
        elif num_sequences < 2:
            loo_report = {"skipped": "one sequence: leave-one-sequence-out needs several sequences"}
        else:
            elpd = export.loo(idata, warn=False)
            loo_report = {
                "elpd_loo": float(elpd["elpd_loo"]),
                "se": float(elpd["se"]),
                "p_loo": float(elpd["p_loo"]),
                "n_samples": int(elpd["n_samples"]),
                "n_sequences": int(elpd["n_data_points"]),
                "warning": bool(elpd["warning"]),
                "good_k": float(elpd["good_k"]),
                "pareto_k": [float(k) for k in np.asarray(elpd["pareto_k"]).reshape(-1)],
                "unit": "one whole sequence per point",
            }
            if "log_importance_ratio" in getattr(idata, "sample_stats", {}):
                loo_report["guide_pareto_k"] = export.importance_sampling_khat(idata)
        out.write_json("loo.json", loo_report)
        files.append("loo.json")
        report["loo"] = loo_report
    descriptor, temporary = tempfile.mkstemp(dir=out.path, prefix=".inference_data.", suffix=".nc.tmp")
    os.close(descriptor)
    try:
        idata.to_netcdf(temporary)
        os.replace(temporary, out.file("inference_data.nc"))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    files.append("inference_data.nc")
    report["files"] = files
    return report


def _table(observed: dict[str, float], replicated: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    table = []
    for name, value in observed.items():
        samples = replicated[name]
        samples = samples[~np.isnan(samples)]
        if samples.size == 0 or math.isnan(value):
            row = {
                "statistic": name,
                "observed": None if math.isnan(value) else value,
                "replicated_mean": None,
                "replicated_5%": None,
                "replicated_95%": None,
                "p_value": None,
            }
        else:
            row = {
                "statistic": name,
                "observed": value,
                "replicated_mean": float(samples.mean()),
                "replicated_5%": float(np.quantile(samples, 0.05)),
                "replicated_95%": float(np.quantile(samples, 0.95)),
                "p_value": float((samples >= value).mean()),
            }
        table.append(row)
    return table
