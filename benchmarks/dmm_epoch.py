"""Seconds per JSB training epoch of the deep Markov model at the paper's sizes (batch 20, z 100,
transition 200, emitter 100, guide RNN 600): our vectorised loss against the per-step loop of
Pyro's ``examples/dmm.py`` (our ``model``/``guide`` are that loop: one ``pyro.sample`` per step
under ``pyro.markov``, scored by ``Trace_ELBO``), in one run, same architecture, same optimiser.

Then a profile of one of our training steps, split into its phases (guide RNN, sequential
sampling of z_t (the fused loop), the all-steps transition/emission/KL terms, backward, optimiser),
and the backward pass split by its autograd nodes (the guide RNN's, the sequential loop's).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/dmm_epoch.py            # one full epoch each
    OMP_NUM_THREADS=1 python benchmarks/dmm_epoch.py --batches 3  # quick: 3 mini-batches each, scaled to an epoch
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from pyro.infer import Trace_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.batch import iterate_minibatches  # noqa: E402
from zoo.data import load_polyphonic  # noqa: E402
from zoo.dmm import DeepMarkovModel, length_buckets  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "jsb_chorales.json"


class PyroExampleDMM(DeepMarkovModel):
    """The reference: our Pyro ``model``/``guide`` (the per-step loop of Pyro's ``examples/dmm.py``)
    with the guide RNN run by ``torch.nn.RNN``, as Pyro's example does (ours is a fused node)."""

    def _rnn_summary(self, inputs, lengths):
        n, t = inputs.shape[:2]
        steps = torch.arange(t, device=inputs.device)
        reverse = torch.where(steps < lengths.unsqueeze(-1), lengths.unsqueeze(-1) - 1 - steps, steps).unsqueeze(-1)
        h_0 = self.guide_h_0[:1, None].expand(1, n, self.rnn_dim).contiguous()
        backward, _ = self.guide_rnn(inputs.gather(1, reverse.expand_as(inputs)), h_0)
        return backward.gather(1, reverse.expand_as(backward))


def _epoch(model, train, loss_fn, batches, max_batches, learning_rate=3e-4):
    """Trains on up to ``max_batches`` mini-batches; returns (wall seconds, process CPU seconds, batches
    done, mean ELBO/step). On a loaded shared machine the CPU seconds (one thread) are what an idle
    core would take; the wall seconds include waiting for the core."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=learning_rate)
    generator = torch.Generator().manual_seed(0)
    done, elbo, steps = 0, 0.0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for minibatch in batches(train, 20, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(minibatch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 10.0)
        optimizer.step()
        done += 1
        elbo -= loss.item() * minibatch.num_sequences / train.num_sequences  # undo the population scale
        steps += minibatch.num_steps
        if done == max_batches:
            break
    return time.perf_counter() - start, time.process_time() - cpu_start, done, elbo / steps


def _phases(model, minibatch, repeats=3, clock=time.process_time, split_backward=False):
    """Seconds per phase of one of our training steps (mean of ``repeats``; ``clock``: CPU time by
    default, ``time.perf_counter`` for wall time with several threads), and the backward pass split
    by the autograd nodes it runs (from torch's profiler, one more step; with ``split_backward`` merged
    into the first dict)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-5)
    totals = dict(guide_rnn=0.0, sequential_sampling=0.0, all_steps_terms=0.0, backward=0.0, optimiser=0.0)
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        t0 = clock()
        inputs, clean, observed = model._inputs(minibatch)
        features = model._guide_features(minibatch, inputs)
        t1 = clock()
        path = model._sample_guide(minibatch, inputs, features=features)  # the fused sequential loop
        t2 = clock()
        log_lik, kl = model._path_terms(minibatch, path, clean, observed, "analytic")
        loss = -(log_lik - kl).sum()
        t3 = clock()
        loss.backward()
        t4 = clock()
        optimizer.step()
        t5 = clock()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[key] += seconds / repeats
    # Backward by node: the guide RNN's, the sequential loop's, and everything else.
    from torch.profiler import ProfilerActivity, profile

    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(minibatch).loss
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss.backward()
    backward_split = {"guide_rnn_backward": 0.0, "sequential_loop_backward": 0.0}
    total_us = 0.0
    for event in prof.key_averages():
        if event.key.startswith("autograd::engine::evaluate_function"):
            total_us += event.self_cpu_time_total
        if "_TanhRNNBackward" in event.key and event.key.startswith("autograd::engine"):
            backward_split["guide_rnn_backward"] += event.cpu_time_total / 1e6
        if "_StructuredGuideLoopBackward" in event.key and event.key.startswith("autograd::engine"):
            backward_split["sequential_loop_backward"] += event.cpu_time_total / 1e6
    if split_backward:
        return {**totals, **backward_split}, backward_split
    return totals, backward_split


def _interleaved(train, configs, max_batches, per_epoch, rounds):
    """Wall and CPU seconds per epoch of each ``(name, threads, precision, loss kind)`` config, run in
    turn ``rounds`` times (so a busy spell of the shared machine hits every config alike); medians,
    and each config's ratio to the reference in the same round."""
    elbo = Trace_ELBO()
    timings = {name: [] for name, *_ in configs}
    for _ in range(rounds):
        for name, threads, precision, kind in configs:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            if kind == "pyro":
                model = PyroExampleDMM("bernoulli", dim=88)
                loss_fn = lambda b, m=model: elbo.differentiable_loss(m.model, m.guide, b)  # noqa: E731
                batches = iterate_minibatches
            else:
                model = DeepMarkovModel("bernoulli", dim=88, rnn_precision=precision)
                loss_fn = lambda b, m=model: m.loss(b).loss  # noqa: E731
                batches = length_buckets if kind == "buckets" else iterate_minibatches
            seconds, cpu_seconds, done, _ = _epoch(model, train, loss_fn, batches, max_batches)
            timings[name].append((seconds / done * per_epoch, cpu_seconds / done * per_epoch, os.getloadavg()[0]))
    torch.set_num_threads(1)
    reference = next((name for name, *_, kind in configs if kind == "pyro"), None)
    out = {}
    for name, threads, precision, kind in configs:
        rows = timings[name]
        entry = {
            "threads": threads,
            "precision": precision,
            "batches": kind,
            "wall_seconds_per_epoch": round(statistics.median(r[0] for r in rows), 3),
            "cpu_seconds_per_epoch": round(statistics.median(r[1] for r in rows), 3),
            "wall_per_round": [round(r[0], 3) for r in rows],
            "load_average_per_round": [round(r[2], 2) for r in rows],
        }
        if reference is not None:
            entry["wall_speedup_vs_reference"] = round(
                statistics.median(ref[0] / r[0] for ref, r in zip(timings[reference], rows)), 2
            )
            entry["cpu_speedup_vs_reference"] = round(
                statistics.median(ref[1] / r[1] for ref, r in zip(timings[reference], rows)), 2
            )
        out[name] = entry
        print(name, json.dumps(entry), flush=True)
    return out


def _fit_epochs(train, epochs, sizes):
    """Wall and CPU seconds per epoch of ``epochs`` epochs through the shared trainer (``loss="model"``,
    random batches of 20, no validation): ``inference.fit.fit`` in one process, or, under
    ``torchrun --nproc-per-node 2``, ``DataParallel.fit`` (each process takes half of every batch, the
    gradients are summed by one all-reduce per step). Medians over the epochs after the first."""
    from inference.distributed import DataParallel
    from inference.fit import fit

    torch.manual_seed(0)
    model = DeepMarkovModel("bernoulli", dim=88, **sizes)
    options = dict(loss="model", batch_size=20, max_epochs=epochs, learning_rate=3e-4, seed=0, progress=False)
    cpu = time.process_time()
    if DataParallel.launched():
        with DataParallel.from_environment() as parallel:
            result = parallel.fit(model, train, **options)
            processes, main = parallel.world_size, parallel.is_main
    else:
        result = fit(model, train, **options)
        processes, main = 1, True
    cpu = time.process_time() - cpu
    ends = [record["seconds"] for record in result.history]
    walls = [b - a for a, b in zip(ends, ends[1:])] or ends
    out = {
        "processes": processes,
        "rnn_precision": model.rnn_precision,
        "epochs": len(ends),
        "wall_seconds_per_epoch": round(statistics.median(walls), 3),
        "wall_per_epoch": [round(w, 3) for w in walls],
        "cpu_seconds_per_epoch_this_process": round(cpu / len(ends), 3),
        "load_average": os.getloadavg(),
    }
    if main:
        print("fit_epochs", json.dumps(out), flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--batches", type=int, default=0, help="mini-batches per measurement (0: a full epoch)")
    parser.add_argument("--skip-pyro", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="interleaved comparison: torch intra-op thread counts to time (e.g. 1 2)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16"],
        help="interleaved comparison: guide RNN precisions to time",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved comparison: rounds")
    parser.add_argument(
        "--fit-epochs",
        type=int,
        default=0,
        help="time this many epochs through fit (under torchrun: DataParallel.fit) and stop",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny networks (a smoke test of --fit-epochs)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train = load_polyphonic(args.data, "train").batch
    per_epoch = math.ceil(train.num_sequences / 20)
    max_batches = args.batches or per_epoch
    if args.fit_epochs:
        sizes = dict(z_dim=4, transition_dim=8, emitter_dim=8, rnn_dim=8) if args.tiny else {}
        sizes["rnn_precision"] = args.precisions[0]
        return _fit_epochs(train, args.fit_epochs, sizes)
    results = {
        "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
        "batches_per_epoch": per_epoch,
        "batches_timed": min(max_batches, per_epoch),
    }
    if args.threads:
        configs = [
            (f"ours_{precision}_{threads}_threads_length_buckets", threads, precision, "buckets")
            for precision in args.precisions
            for threads in args.threads
        ]
        if not args.skip_pyro:
            configs.append(("reference_pyro_per_step_1_thread", 1, "float32", "pyro"))
        results["interleaved"] = _interleaved(train, configs, max_batches, per_epoch, args.rounds)
        minibatch = next(iter(iterate_minibatches(train, 20, torch.Generator().manual_seed(1))))
        results["profile_one_step_wall"] = {}
        for precision in args.precisions:
            for threads in args.threads:
                torch.set_num_threads(threads)
                torch.manual_seed(0)
                phases, _ = _phases(
                    DeepMarkovModel("bernoulli", dim=88, rnn_precision=precision),
                    minibatch,
                    clock=time.perf_counter,
                    split_backward=True,
                )
                results["profile_one_step_wall"][f"{precision}_{threads}_threads"] = {
                    k: round(v, 4) for k, v in phases.items()
                }
                print(
                    precision,
                    threads,
                    json.dumps(results["profile_one_step_wall"][f"{precision}_{threads}_threads"]),
                    flush=True,
                )
        torch.set_num_threads(1)
        results["load_average_after"] = os.getloadavg()
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))
        return results

    def run(name, loss_fn, batches, model_class=DeepMarkovModel):
        torch.manual_seed(0)
        model = model_class("bernoulli", dim=88)
        seconds, cpu_seconds, done, elbo = _epoch(model, train, loss_fn(model), batches, max_batches)
        results[name] = {
            "seconds_per_epoch": round(seconds / done * per_epoch, 3),
            "cpu_seconds_per_epoch": round(cpu_seconds / done * per_epoch, 3),
            "batches": done,
            "elbo_per_step_after": round(elbo, 3),
        }
        print(name, json.dumps(results[name]), flush=True)
        return model

    model = run("ours_vectorised_random_batches", lambda m: lambda b: m.loss(b).loss, iterate_minibatches)
    run("ours_vectorised_length_buckets", lambda m: lambda b: m.loss(b).loss, length_buckets)
    if not args.skip_pyro:
        elbo = Trace_ELBO()
        run(
            "pyro_per_step_trace_elbo",
            lambda m: lambda b: elbo.differentiable_loss(m.model, m.guide, b),
            iterate_minibatches,
            PyroExampleDMM,
        )
        for key in ("seconds_per_epoch", "cpu_seconds_per_epoch"):
            pyro_time = results["pyro_per_step_trace_elbo"][key]
            results[f"speedup_{key}"] = {
                "random_batches": round(pyro_time / results["ours_vectorised_random_batches"][key], 2),
                "length_buckets": round(pyro_time / results["ours_vectorised_length_buckets"][key], 2),
            }
    # Profile one mini-batch of typical length (the median of the training set's batch maxima).
    minibatch = next(iter(iterate_minibatches(train, 20, torch.Generator().manual_seed(1))))
    phases, backward_split = _phases(model, minibatch)
    total = sum(phases.values())
    results["profile_one_step"] = {
        "max_length": minibatch.max_length,
        "seconds": round(total, 4),
        **{k: f"{v:.4f} s ({100 * v / total:.0f}%)" for k, v in phases.items()},
        "backward_split_under_profiler": {k: f"{v:.4f} s" for k, v in backward_split.items()},
    }
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
