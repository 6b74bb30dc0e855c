"""A deep Markov model on JSB chorales: learning curve (test nats per step against minutes),
final test ELBO and IWAE bound.

Usage (the full run; paper sizes, one thread)::

    OMP_NUM_THREADS=1 nice python examples/dmm_jsb.py --minutes 45 --out examples/output/dmm_jsb

Tiny run (what tests/test_examples.py does)::

    python examples/dmm_jsb.py --train-sequences 8 --test-sequences 4 --z-dim 4 --rnn-dim 8 \\
        --transition-dim 8 --emitter-dim 8 --epochs 2 --particles 3 --out /tmp/dmm

Writes ``curve.csv`` (minutes, epoch, train ELBO/step, test ELBO/step) and ``results.json``
(settings, final test -ELBO and -IWAE per step, seconds per epoch, machine load) to ``--out``.
Negative numbers per step are nats per time step (frame); the paper (Krishnan et al. 2017)
reports 6.93 test -ELBO/step, Pyro's tutorial 6.87 (no flows) after ~5,000 epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.batch import SequenceBatch  # noqa: E402
from zoo.data import load_polyphonic  # noqa: E402
from zoo.dmm import DeepMarkovModel, train_dmm  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "jsb_chorales.json"


def nats_per_step(model: DeepMarkovModel, batch: SequenceBatch, num_particles: int = 1, seed: int = 0,
                  chunk: int = 100) -> float:
    """Mean bound per observed step over ``batch`` (seeded; positive = -log-likelihood bound)."""
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        size = max(1, chunk // num_particles)
        for start in range(0, batch.num_sequences, size):
            total += float(model.log_prob_batch(batch[start:start + size], num_particles=num_particles).sum())
    model.train(was_training)
    return -total / batch.num_steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=None, help="training time budget (default: none)")
    parser.add_argument("--epochs", type=int, default=100000)
    parser.add_argument("--train-sequences", type=int, default=None, help="first N training sequences only")
    parser.add_argument("--test-sequences", type=int, default=None, help="first N test sequences only")
    parser.add_argument("--z-dim", type=int, default=100)
    parser.add_argument("--transition-dim", type=int, default=200)
    parser.add_argument("--emitter-dim", type=int, default=100)
    parser.add_argument("--rnn-dim", type=int, default=600)
    parser.add_argument("--guide", default="st-r")
    parser.add_argument("--iafs", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--final-learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--annealing-epochs", type=int, default=20)
    parser.add_argument("--min-annealing", type=float, default=0.2)
    parser.add_argument("--eval-every", type=float, default=2.0, help="minutes between test evaluations")
    parser.add_argument("--particles", type=int, default=100, help="IWAE particles for the final bound")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_polyphonic(args.data, "train").batch
    test = load_polyphonic(args.data, "test").batch
    if args.train_sequences:
        train = train[: args.train_sequences]
    if args.test_sequences:
        test = test[: args.test_sequences]
    torch.manual_seed(args.seed)
    model = DeepMarkovModel("bernoulli", dim=88, z_dim=args.z_dim, transition_dim=args.transition_dim,
                            emitter_dim=args.emitter_dim, rnn_dim=args.rnn_dim, guide=args.guide,
                            num_iafs=args.iafs)
    curve_path = out / "curve.csv"
    rows: list[dict] = []
    last_eval = [-1e9]
    eval_seconds = [0.0]

    def record(epoch_record: dict) -> None:
        minutes = epoch_record["seconds"] / 60
        if minutes - last_eval[0] < args.eval_every and epoch_record["epoch"] != 1:
            return
        last_eval[0] = minutes
        began = time.perf_counter()
        test_nats = nats_per_step(model, test)
        eval_seconds[0] += time.perf_counter() - began
        row = {"minutes": round(minutes, 3), "epoch": epoch_record["epoch"],
               "train_elbo_nats_per_step": round(-epoch_record["elbo_per_step"], 4),
               "test_elbo_nats_per_step": round(test_nats, 4), "lr": epoch_record["lr"],
               "annealing_factor": round(epoch_record["annealing_factor"], 4)}
        rows.append(row)
        with open(curve_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
        print(json.dumps(row), flush=True)

    started = time.perf_counter()
    budget = None if args.minutes is None else args.minutes * 60
    records = train_dmm(model, train, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, final_learning_rate=args.final_learning_rate,
                        annealing_epochs=args.annealing_epochs, min_annealing=args.min_annealing,
                        seed=args.seed, time_budget=budget, callback=record)
    train_seconds = time.perf_counter() - started - eval_seconds[0]
    final = {
        "test_elbo_nats_per_step": nats_per_step(model, test, 1, seed=1),
        f"test_iwae{args.particles}_nats_per_step": nats_per_step(model, test, args.particles, seed=1),
    }
    results = {
        "settings": vars(args),
        "epochs": len(records),
        "training_minutes": round(train_seconds / 60, 2),
        "seconds_per_epoch": round(train_seconds / max(1, len(records)), 3),
        "final_train_elbo_nats_per_step": -records[-1]["elbo_per_step"],
        **final,
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    torch.save(model.state_dict(), out / "model.pt") if args.train_sequences is None else None
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
