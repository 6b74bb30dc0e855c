"""A deep Markov model on JSB chorales: learning curve (test nats per step against minutes),
final test ELBO and IWAE bound.

Usage (the JSB recipe; paper sizes, one thread)::

    OMP_NUM_THREADS=1 nice python examples/dmm_jsb.py --minutes 45 --annealing-epochs 1000 \\
        --weight-decay 23 --guide-dropout 0.3 --average 0.9996 --particles 100 --out examples/output/dmm_jsb

Tiny run (what tests/test_examples.py does)::

    python examples/dmm_jsb.py --train-sequences 8 --test-sequences 4 --z-dim 4 --rnn-dim 8 \\
        --transition-dim 8 --emitter-dim 8 --epochs 2 --particles 3 --out /tmp/dmm

The model and its training recipe are the family's: the flags are those of ``seqzoo fit dmm``
(read from the registry, ``zoo.dmm``), and the fit is ``inference.fit.fit(model, train)`` with the
family's ``fit_defaults("svi")`` (``loss="model"``, length-bucketed mini-batches of 20, lr 3e-3
after a warm-up epoch decaying to 5e-4 at ``--epochs``, clip 10, KL annealing from
``--min-annealing`` over ``--annealing-epochs``, ``--weight-decay``, ``--guide-dropout``,
``--average``). The same run on the command line is ``seqzoo fit dmm --data jsb_chorales.json
--time-budget 45 ...`` with the same flags; this script adds only the learning curve and final
bounds averaged over ``--final-draws`` draws. docs/dmm.md compares the recipes.
``--compare-runs DIR[=LABEL] ...`` only compares finished runs: test curves into ``OUT/recipes.png``, final
bounds into ``OUT/runs.csv`` and their spread over the runs (e.g. over ``--seed``) printed.
Writes ``curve.csv`` (wall and CPU minutes, epoch, train ELBO/step, test ELBO/step of the last iterate,
one draw each), ``curve.png`` (test nats per step against training minutes) and ``results.json``
(settings, final test -ELBO (the mean of ``--final-draws`` draws) and -IWAE per step of the final
model (the average with ``--average``), wall and CPU seconds per epoch, machine load) to ``--out``.
Negative numbers per step are nats per time step (frame); the paper (Krishnan et al. 2017)
reports 6.93 test -ELBO/step, Pyro's tutorial 6.87 (no flows) after ~5,000 epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo.dmm  # noqa: E402, F401  (registers the family)
from inference.batch import SequenceBatch  # noqa: E402
from inference.fit import fit  # noqa: E402
from zoo.data import load_polyphonic  # noqa: E402
from zoo.dmm import DeepMarkovModel  # noqa: E402
from zoo.registry import REGISTRY  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "jsb_chorales.json"


def nats_per_step(
    model: DeepMarkovModel, batch: SequenceBatch, num_particles: int = 1, seed: int = 0, chunk: int = 100
) -> float:
    """Mean bound per observed step over ``batch`` (seeded; positive = -log-likelihood bound)."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        size = max(1, chunk // num_particles)
        for start in range(0, batch.num_sequences, size):
            total += float(model.log_prob_batch(batch[start : start + size], num_particles=num_particles).sum())
    model.train(was_training)
    return -total / batch.num_steps


def final_bounds(model: DeepMarkovModel, test: SequenceBatch, num_draws: int, particles: int) -> dict:
    """The mean of ``num_draws`` seeded one-draw test ELBOs, their sd, and the IWAE bound (nats per step)."""
    draws = [nats_per_step(model, test, 1, seed=seed) for seed in range(1, num_draws + 1)]
    return {
        "test_elbo_nats_per_step": statistics.fmean(draws),
        "test_elbo_draws": [round(value, 4) for value in draws],
        "test_elbo_draw_sd": statistics.stdev(draws) if len(draws) > 1 else 0.0,
        f"test_iwae{particles}_nats_per_step": nats_per_step(model, test, particles, seed=1),
    }


AVERAGED = "averaged_test_elbo_nats_per_step"  # curve.csv's column of the --average weights' test bound


def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [row["minutes"] for row in rows]
    ax.plot(minutes, [row["train_elbo_nats_per_step"] for row in rows], label="train -ELBO (epoch mean)", alpha=0.6)
    ax.plot(minutes, [row["test_elbo_nats_per_step"] for row in rows], "o-", label="test -ELBO", markersize=3)
    if AVERAGED in rows[0]:
        ax.plot(
            minutes,
            [row[AVERAGED] for row in rows],
            "s-",
            markersize=2.5,
            label="test -ELBO, averaged weights (--average)",
        )
    # The first evaluation (untrained) is far above the rest: show the part of the curve that matters.
    later = [row["test_elbo_nats_per_step"] for row in rows[1:]] or [row["test_elbo_nats_per_step"] for row in rows]
    _finish_plot(
        fig,
        ax,
        path,
        "DMM on JSB chorales",
        "nats per time step",
        (6.5, max(7.5, min(12.0, max(later) + 0.5))),
        legend_size=8,
    )


def _finish_plot(fig, ax, path: Path, title: str, ylabel: str, ylim: tuple[float, float], legend_size: int) -> None:
    """The paper's and the goal's levels, labels, and the figure written to ``path``."""
    import matplotlib.pyplot as plt

    for level, text, where in ((6.87, "Pyro 6.87", "top"), (6.93, "paper 6.93", "bottom"), (7.0, "goal 7.0", "bottom")):
        ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax.annotate(text, (0, level), fontsize=7, ha="left", va=where)
    ax.set_ylim(*ylim)
    ax.set_xlabel("training minutes (evaluation excluded)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _run_directory_and_label(run: str) -> tuple[Path, str]:
    """``DIR`` or ``DIR=LABEL`` of ``--compare-runs``: the run's directory and its label (the directory's name)."""
    directory, _, label = run.partition("=")
    return Path(directory), label or Path(directory).name


def plot_runs(runs: list[str], path: Path) -> None:
    """Test -ELBO against training minutes of several runs' ``curve.csv`` (``DIR`` or ``DIR=LABEL``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        directory, label = _run_directory_and_label(run)
        with open(directory / "curve.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))[1:]  # the first evaluation is the untrained model
        minutes = [float(row["minutes"]) for row in rows]
        (line,) = ax.plot(
            minutes, [float(row["test_elbo_nats_per_step"]) for row in rows], "o-", markersize=2.5, label=label
        )
        if rows and rows[0].get(AVERAGED):
            ax.plot(
                minutes,
                [float(row[AVERAGED]) for row in rows],
                "--",
                color=line.get_color(),
                label=f"{label}, averaged weights",
            )
    _finish_plot(
        fig,
        ax,
        path,
        "DMM on JSB chorales: runs compared (one draw per point)",
        "test -ELBO, nats per time step",
        (6.7, 8.6),
        legend_size=7,
    )


#: The issue's goals for the final test -ELBO per step: 45 minutes of training, and a longer run.
GOALS = (7.0, 6.87)


def _spread(values: list[float], goals: tuple[float, ...]) -> dict:
    """Count, mean, sd, min and max of ``values``, and the share at or below each goal."""
    return {
        "runs": len(values),
        "mean": round(statistics.fmean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        **{f"share_at_or_below_{goal}": sum(value <= goal for value in values) / len(values) for goal in goals},
    }


def summarise_runs(runs: list[str], path: Path, goals: tuple[float, ...] = GOALS) -> dict:
    """One row per run's ``results.json`` (``DIR`` or ``DIR=LABEL``) into ``path`` (CSV), and their spread.

    Returns the count, mean, sd, min and max of the last iterates' final test -ELBO over the runs, and
    the share of runs at or below each of ``goals``: the spread over training seeds when the runs
    differ only in ``--seed``. When every run kept an ``--average``, the same for the averaged weights
    under ``"averaged"``.
    """
    rows = []
    for run in runs:
        directory, label = _run_directory_and_label(run)
        results = json.loads((directory / "results.json").read_text())
        iwae = next((key for key in results if key.startswith("test_iwae")), None)
        rows.append(
            {
                "run": label,
                "seed": results["settings"]["seed"],
                # measured, so that runs with an epoch budget (no --minutes) say how long they took
                "minutes": round(results.get("training_minutes", results["settings"]["minutes"]), 1),
                "epochs": results["epochs"],
                "rnn_precision": results["settings"].get("rnn_precision", "float32"),
                "test_elbo_draws": len(results.get("test_elbo_draws", [None])),
                "test_elbo_nats_per_step": round(results["test_elbo_nats_per_step"], 4),
                "test_iwae_nats_per_step": round(results[iwae], 4) if iwae else None,
                # --average: the averaged weights' final bounds
                "averaged_test_elbo_nats_per_step": (
                    round(results["averaged"]["test_elbo_nats_per_step"], 4) if "averaged" in results else None
                ),
                "averaged_test_iwae_nats_per_step": (
                    round(results["averaged"][iwae], 4) if "averaged" in results and iwae else None
                ),
            }
        )
    summary = _spread([row["test_elbo_nats_per_step"] for row in rows], goals)
    averaged = [row["averaged_test_elbo_nats_per_step"] for row in rows]
    if None not in averaged:
        summary["averaged"] = _spread(averaged, goals)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (default: none)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the family's, 3,000)")
    parser.add_argument("--train-sequences", type=int, default=None, help="first N training sequences only")
    parser.add_argument("--test-sequences", type=int, default=None, help="first N test sequences only")
    parser.add_argument("--eval-every", type=float, default=2.0, help="minutes between test evaluations")
    parser.add_argument(
        "--final-draws",
        type=int,
        default=10,
        help="guide draws averaged for the final test ELBO (each one draw: sd ~0.025 nats/step)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-runs",
        nargs="+",
        metavar="DIR[=LABEL]",
        help="only compare finished runs: their test curves into OUT/recipes.png, their "
        "final bounds into OUT/runs.csv, and the spread printed; then exit",
    )
    # The model and its training recipe: the family's own flags, read as `seqzoo fit dmm` reads them.
    family = REGISTRY["dmm"]
    family.add_arguments(parser.add_argument_group("dmm (the flags of `seqzoo fit dmm`)"))
    args = parser.parse_args(argv)
    if args.compare_runs:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot_runs(args.compare_runs, Path(args.out) / "recipes.png")
        summary = summarise_runs(args.compare_runs, Path(args.out) / "runs.csv")
        print(json.dumps(summary))
        return summary

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_data = load_polyphonic(args.data, "train")
    train = train_data.batch
    test = load_polyphonic(args.data, "test").batch
    if args.train_sequences:
        train = train[: args.train_sequences]
    if args.test_sequences:
        test = test[: args.test_sequences]
    torch.manual_seed(args.seed)
    model = family.build(train_data, family.settings_from_args(args))
    recipe = model.fit_defaults("svi")
    annealing = recipe.step_kwargs
    curve_path = out / "curve.csv"
    rows: list[dict] = []
    last_eval = [-1e9]
    eval_seconds = [0.0]
    eval_cpu_seconds = [0.0]
    cpu_started = time.process_time()
    load_averages = [os.getloadavg()[0]]

    def record(epoch_record: dict) -> None:
        minutes = (epoch_record["seconds"] - eval_seconds[0]) / 60
        if minutes - last_eval[0] < args.eval_every and epoch_record["step"] != 1:
            return
        last_eval[0] = minutes
        load_averages.append(os.getloadavg()[0])
        began, cpu_began = time.perf_counter(), time.process_time()
        cpu_minutes = (cpu_began - cpu_started - eval_cpu_seconds[0]) / 60  # training CPU time so far
        test_nats = nats_per_step(model, test)  # the last iterate (an --average is swapped in at the end)
        eval_seconds[0] += time.perf_counter() - began
        eval_cpu_seconds[0] += time.process_time() - cpu_began
        factor = annealing(epoch_record["step"] - 1, 0)["annealing_factor"] if annealing else 1.0
        row = {
            "minutes": round(minutes, 3),
            "cpu_minutes": round(cpu_minutes, 3),
            "epoch": epoch_record["step"],
            "train_elbo_nats_per_step": round(-epoch_record["objective_per_step"], 4),
            "test_elbo_nats_per_step": round(test_nats, 4),
            "lr": epoch_record["lr"],
            "annealing_factor": round(factor, 4),
            "load_average": round(load_averages[-1], 2),
        }
        rows.append(row)
        with open(curve_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
        print(json.dumps(row), flush=True)

    budget = None if args.minutes is None else args.minutes * 60
    # The family's recipe (model.fit_defaults("svi"), what `seqzoo fit dmm` trains with); only the
    # run's own settings are given here.
    result = fit(
        model,
        train,
        time_budget=budget,
        callbacks=[record],
        progress=False,
        seed=args.seed,
        **({"max_epochs": args.epochs} if args.epochs else {}),
    )
    records = result.history
    train_seconds = result.seconds - eval_seconds[0]
    train_cpu_seconds = time.process_time() - cpu_started - eval_cpu_seconds[0]
    # One draw of the test ELBO has a Monte Carlo sd of ~0.025 nats/step on JSB's 4,725 test steps:
    # the final number averages --final-draws draws (seeds 1, 2, ...), and reports their sd.
    final = final_bounds(model, test, args.final_draws, max(model.score_particles(), 1))
    results = {
        "settings": vars(args),
        "fit": {
            field: repr(getattr(recipe, field))
            for field in (
                "learning_rate",
                "final_learning_rate",
                "warmup_epochs",
                "max_epochs",
                "batch_size",
                "clip_norm",
                "weight_decay",
                "average_decay",
                "step_kwargs",
                "patience",
                "eval_every",
            )
        },
        "epochs": len(records),
        "stopped": result.stopped,
        "training_minutes": round(train_seconds / 60, 2),
        "seconds_per_epoch": round(train_seconds / max(1, len(records)), 3),
        "training_cpu_minutes": round(train_cpu_seconds / 60, 2),
        "cpu_seconds_per_epoch": round(train_cpu_seconds / max(1, len(records)), 3),
        # A time budget can end the last epoch part-way (its mean covers the mini-batches done): the
        # training bound reported is the last whole epoch's (dropout on, annealing as scheduled).
        "final_train_elbo_nats_per_step": -next(
            (record for record in reversed(records) if not record["partial"]), records[-1]
        )["objective_per_step"],
        **final,
        "load_average_during_training": {
            "min": min(load_averages),
            "max": max(load_averages),
            "mean": round(sum(load_averages) / len(load_averages), 2),
        },
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if rows:
        plot_curve(rows, out / "curve.png")
    if args.train_sequences is None:
        torch.save(model.state_dict(), out / "model.pt")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
