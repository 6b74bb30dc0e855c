"""Forecasting the Nile and the sunspots: an HMM, a local-level Kalman model and
a GRU scored on the future *given the past*.

Each series is split in time: the models are fit on the first part and the last
part is held out. The script reports, per model:

* held-out nats per step scored **from the initial state** (what a contiguous
  split scores when the held-out part is treated as a new series) and
  **conditioned on the history**, :math:`\\log p(x_{test} \\mid x_{train}) / T_{test}`
  (``inference.timeseries.conditional_log_prob``; exact for all three families);
* h-step-ahead RMSE, CRPS and the coverage of the 50% and 90% central
  predictive intervals over the held-out steps, forecasting from every origin
  with the true history (``zoo.forecasting.evaluate_forecasts``);
* leave-future-out cross-validation of one-step-ahead predictions:
  PSIS-LFO (Bürkner, Gabry & Vehtari 2020) for the local-level model, whose
  posterior over its two variances is computed exactly on a grid, with its
  exact-LFO reference; rolling-origin LFO with periodic refits for the HMM and
  the GRU (point estimates);
* the forecast fan of every model from the end of the training part.

Outputs go to ``--out`` (default ``examples/output/forecast_nile``):
``results.json``, ``results.md`` and ``fan_<series>.png``.

Run::

    python examples/forecast_nile.py                                   # about 4 minutes on 2 busy cores
    python examples/forecast_nile.py --datasets nile --gru-epochs 3 --em-iterations 5 \\
        --restarts 1 --num-samples 20 --grid 6 --draws 40 --refit-every 15   # tiny
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from inference.fit import fit
from inference.timeseries import (
    conditional_log_prob,
    posterior_step_log_likelihoods,
    psis_lfo,
    rolling_origin,
    split_in_time,
    unconditional_log_prob,
)
from zoo.data import load_builtin
from zoo.forecasting import evaluate_forecasts, forecast, forecast_fan
from zoo.hmm import GaussianHMM
from zoo.lgssm import LinearGaussianSSM
from zoo.rnn import gru

#: Held-out steps at the end of each series.
TEST_STEPS = {"nile": 30, "sunspots": 60}
#: Calendar year of each series' first value.
FIRST_YEAR = {"nile": 1871, "sunspots": 1700}
#: Number of HMM states per series.
HMM_STATES = {"nile": 2, "sunspots": 3}


def kalman_steps(model, batch):
    """The Kalman filter's own one-step terms (faster than prefix differences)."""
    return model.filter(batch.values, batch.lengths).step_log_likelihood


def rnn_steps(model, batch):
    return model.log_prob_steps(batch.values, batch.lengths)


def fit_hmm(history, num_states: int, args) -> GaussianHMM:
    model = GaussianHMM(num_states, 1).double()
    fit(
        model,
        history,
        method="em",
        max_iterations=args.em_iterations,
        num_restarts=args.restarts,
        seed=args.seed,
        progress=False,
    )
    return model


def fit_local_level(history, args) -> LinearGaussianSSM:
    variance = float(torch.nanmean((history.values[0, 1:] - history.values[0, :-1]) ** 2))
    model = LinearGaussianSSM.local_level(variance / 4, variance / 2, dtype=torch.float64)
    fit(model, history, method="em", max_iterations=args.em_iterations, seed=args.seed, progress=False)
    return model


def fit_gru(history, args):
    model = gru("gaussian", dim=1, hidden_size=args.gru_hidden, embedding_dim=None).double()
    fit(
        model,
        history,
        method="svi",
        max_epochs=args.gru_epochs,
        learning_rate=args.gru_lr,
        seed=args.seed,
        progress=False,
    )
    model.eval()
    return model


def grid_posterior(model: LinearGaussianSSM, series, args):
    """``fit_posterior(i)`` for :func:`psis_lfo`: the exact posterior of the two variances
    of the local-level model given the first ``i`` steps, on a log-spaced grid around the
    fitted values (flat prior in the logs), sampled ``args.draws`` times."""
    values = model.parameter_values()
    factors = torch.exp(torch.linspace(-3.0, 3.0, args.grid, dtype=torch.float64))
    level, noise = values["transition_var"].reshape(()), values["observation_var"].reshape(())
    grid = torch.cartesian_prod(level * factors, noise * factors)  # (G, 2)
    terms = posterior_step_log_likelihoods(
        model, series, {"transition_var": grid[:, :1], "observation_var": grid[:, 1:]}, step_log_probs=kalman_steps
    )

    def fit_posterior(origin: int) -> torch.Tensor:
        probs = torch.softmax(terms[:, :origin].sum(-1), 0)
        index = torch.multinomial(
            probs, args.draws, replacement=True, generator=torch.Generator().manual_seed(args.seed + origin)
        )
        return terms[index]

    return fit_posterior


def max_pareto_k(lfo) -> float | str | None:
    """The largest Pareto k-hat over the origins (``"inf"`` when a weight set was degenerate,
    None when there were no weights)."""
    known = lfo.pareto_k[~lfo.pareto_k.isnan()]
    if known.numel() == 0:
        return None
    largest = float(known.max())
    return largest if math.isfinite(largest) else "inf"


def evaluate_series(name: str, args, out: Path) -> dict:
    data = load_builtin(name)
    series = data.batch.to(dtype=torch.float64)
    length = int(series.lengths[0])
    test_start = length - TEST_STEPS[name]
    train, test = split_in_time(series, test_start)
    print(f"\n== {name}: {length} steps, fit on the first {test_start}, {TEST_STEPS[name]} held out ==")
    builders = {
        f"hmm:{HMM_STATES[name]}": lambda history: fit_hmm(history, HMM_STATES[name], args),
        "lgssm:local-level": lambda history: fit_local_level(history, args),
        f"gru:{args.gru_hidden}": lambda history: fit_gru(history, args),
    }
    builders = {label: build for label, build in builders.items() if label.split(":")[0] in args.models}
    step_hooks = {"lgssm:local-level": kalman_steps, f"gru:{args.gru_hidden}": rnn_steps}
    rows, fans = {}, {}
    for label, build in builders.items():
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        model = build(train)
        unconditioned = float(unconditional_log_prob(model, test).sum()) / TEST_STEPS[name]
        conditioned = float(conditional_log_prob(model, train, test).sum()) / TEST_STEPS[name]
        evaluation = evaluate_forecasts(
            model,
            series,
            test_start=test_start,
            steps=args.steps,
            num_samples=args.num_samples,
            generator=torch.Generator().manual_seed(args.seed),
        )
        row = {
            "held_out_nats_per_step_from_initial_state": unconditioned,
            "held_out_nats_per_step_given_history": conditioned,
            "forecast_source": evaluation.source,
        }
        for lead in (1, args.steps):
            for key, value in evaluation.summary(lead).items():
                if key != "lead":
                    row[f"h{lead}_{key}"] = value
        # Leave-future-out CV of the one-step predictive over the held-out steps.
        if label.startswith("lgssm"):
            fit_posterior = grid_posterior(model, series, args)
            lfo = psis_lfo(fit_posterior, length, first_origin=test_start, horizon=1, k_threshold=args.k_threshold)
            exact = psis_lfo(fit_posterior, length, first_origin=test_start, horizon=1, k_threshold=0.0)
            row.update(
                lfo_method=f"PSIS-LFO (k > {args.k_threshold}), grid posterior, S={args.draws}",
                lfo_elpd=lfo.elpd,
                lfo_se=lfo.se,
                lfo_refits=lfo.num_refits,
                lfo_max_pareto_k=max_pareto_k(lfo),
                exact_lfo_elpd=exact.elpd,
                exact_lfo_refits=exact.num_refits,
            )
        else:
            lfo = rolling_origin(
                model,
                series,
                first_origin=test_start,
                horizon=1,
                refit=build,
                refit_every=args.refit_every,
                step_log_probs=step_hooks.get(label),
            )
            row.update(
                lfo_method=f"rolling origin, point refit every {args.refit_every} origins",
                lfo_elpd=lfo.elpd,
                lfo_se=lfo.se,
                lfo_refits=lfo.num_refits,
            )
        row["seconds"] = time.perf_counter() - started
        rows[label] = row
        fans[label] = forecast(
            model,
            train,
            TEST_STEPS[name],
            num_samples=args.num_samples,
            generator=torch.Generator().manual_seed(args.seed),
        )
        print(
            f"{label:>18}: from initial state {unconditioned:8.3f}  given history {conditioned:8.3f} nats/step | "
            f"h=1 RMSE {row['h1_rmse']:8.2f} CRPS {row['h1_crps']:7.2f} cov50 {row['h1_coverage_50']:.2f} "
            f"cov90 {row['h1_coverage_90']:.2f} | LFO elpd {lfo.elpd:8.2f} ± {lfo.se:.2f} ({lfo.num_refits} refits)"
        )
    years = [FIRST_YEAR[name] + t for t in range(length)]
    figure = forecast_fan(
        series,
        fans,
        origin=test_start,
        time=years,
        title=f"{name}: forecasts from {years[test_start - 1]} (fit on the years before)",
        ylabel=data.series_names[0] if data.series_names else "",
    )
    figure.savefig(out / f"fan_{name}.png", dpi=120)
    return rows


def markdown(results: dict, args) -> str:
    lines = []
    for name, rows in results.items():
        lines += [
            f"### {name} (last {TEST_STEPS[name]} steps held out)",
            "",
            f"| model | nats/step from initial state | nats/step given history | h=1 RMSE | h=1 CRPS | "
            f"h=1 cov 50% | h=1 cov 90% | h={args.steps} RMSE | h={args.steps} CRPS | h={args.steps} cov 90% | "
            f"LFO elpd ± se | refits | LFO method |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in rows.items():
            h = args.steps
            lines.append(
                f"| {label} | {r['held_out_nats_per_step_from_initial_state']:.3f} | "
                f"{r['held_out_nats_per_step_given_history']:.3f} | {r['h1_rmse']:.2f} | {r['h1_crps']:.2f} | "
                f"{r['h1_coverage_50']:.2f} | {r['h1_coverage_90']:.2f} | {r[f'h{h}_rmse']:.2f} | "
                f"{r[f'h{h}_crps']:.2f} | {r[f'h{h}_coverage_90']:.2f} | {r['lfo_elpd']:.2f} ± {r['lfo_se']:.2f} | "
                f"{r['lfo_refits']} | {r['lfo_method']} |"
            )
            if "exact_lfo_elpd" in r:
                lines.append(
                    f"| (exact LFO, refit at every origin) | | | | | | | | | | {r['exact_lfo_elpd']:.2f} | "
                    f"{r['exact_lfo_refits']} | grid posterior |"
                )
        lines.append("")
    return "\n".join(lines)


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine
    results = {name: evaluate_series(name, args, out) for name in args.datasets}
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    (out / "results.md").write_text(markdown(results, args))
    print(f"\nwrote {out}/results.json, results.md and the fan figures")
    bad = [
        f"{name}/{label}"
        for name, rows in results.items()
        for label, row in rows.items()
        if not all(math.isfinite(v) for key, v in row.items() if isinstance(v, float) and key != "lfo_max_pareto_k")
    ]
    if bad:
        print(f"[fail] non-finite scores for {', '.join(bad)}")
        return 1
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nile", "sunspots"], choices=sorted(TEST_STEPS))
    parser.add_argument("--models", nargs="+", default=["hmm", "lgssm", "gru"], choices=["hmm", "lgssm", "gru"])
    parser.add_argument("--steps", type=int, default=5, help="longest forecast lead h")
    parser.add_argument("--em-iterations", type=int, default=300, help="EM iterations per HMM / local-level fit")
    parser.add_argument("--restarts", type=int, default=3, help="HMM random restarts")
    parser.add_argument("--gru-hidden", type=int, default=16, help="GRU hidden units")
    parser.add_argument(
        "--gru-epochs",
        type=int,
        default=100,
        help="GRU full-batch Adam steps (more overfits the Nile: 200 gives cov90 0.60)",
    )
    parser.add_argument("--gru-lr", type=float, default=1e-2)
    parser.add_argument("--num-samples", type=int, default=300, help="sample paths for the GRU's forecasts")
    parser.add_argument("--grid", type=int, default=25, help="grid points per variance of the local-level posterior")
    parser.add_argument("--draws", type=int, default=400, help="posterior draws for PSIS-LFO")
    parser.add_argument("--k-threshold", type=float, default=0.7, help="PSIS-LFO refits where Pareto k exceeds this")
    parser.add_argument("--refit-every", type=int, default=20, help="rolling-origin refits of the HMM and GRU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "output" / "forecast_nile"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
