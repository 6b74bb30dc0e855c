"""Seconds per JSB training epoch of the deep Markov model at the paper's sizes (batch 20, z 100,
transition 200, emitter 100, guide RNN 600): our vectorised loss against the per-step loop of
Pyro's ``examples/dmm.py`` (our ``model``/``guide`` are that loop: one ``pyro.sample`` per step
under ``pyro.markov``, scored by ``Trace_ELBO``), in one run, same architecture, same optimiser.

Then a profile of one of our training steps, split into its phases (guide RNN, sequential
sampling of z_t, the all-steps transition/emission/KL terms, backward, optimiser).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/dmm_epoch.py            # one full epoch each
    OMP_NUM_THREADS=1 python benchmarks/dmm_epoch.py --batches 3  # quick: 3 mini-batches each, scaled to an epoch
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def _phases(model, minibatch, repeats=3):
    """Seconds per phase of one of our training steps (mean of ``repeats``)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-5)
    totals = dict(guide_rnn=0.0, sequential_sampling=0.0, all_steps_terms=0.0, backward=0.0, optimiser=0.0)
    for _ in range(repeats):
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        inputs, clean, observed = model._inputs(minibatch)
        features = model._guide_features(minibatch, inputs)
        t1 = time.perf_counter()
        # the sequential part, exactly as _sample_guide runs it
        n = features.shape[0]
        z_prev = model.guide_z_q_0.expand(n, model.z_dim)
        zs, locs, scales = [], [], []
        for feature in features.unbind(1):
            loc, scale = model._guide_conditional(z_prev, feature)
            z_prev = loc + scale * torch.randn_like(loc)
            zs.append(z_prev), locs.append(loc), scales.append(scale)
        z, loc, scale = torch.stack(zs, 1), torch.stack(locs, 1), torch.stack(scales, 1)
        t2 = time.perf_counter()
        from zoo.dmm import _gaussian_kl
        mask = minibatch.mask  # every term on the real steps only, as DeepMarkovModel._step_terms
        prior_loc, prior_scale = model.transition(torch.cat([model.z_0.expand(n, 1, model.z_dim), z[:, :-1]], 1)[mask])
        kl = _gaussian_kl(loc[mask], scale[mask], prior_loc, prior_scale)
        log_lik = model._emission_log_prob(z[mask], clean[mask], None)
        loss = -(log_lik - kl).sum()
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[key] += seconds / repeats
    return totals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--batches", type=int, default=0, help="mini-batches per measurement (0: a full epoch)")
    parser.add_argument("--skip-pyro", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    train = load_polyphonic(args.data, "train").batch
    per_epoch = math.ceil(train.num_sequences / 20)
    max_batches = args.batches or per_epoch
    results = {"threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
               "batches_per_epoch": per_epoch, "batches_timed": min(max_batches, per_epoch)}

    def run(name, loss_fn, batches):
        torch.manual_seed(0)
        model = DeepMarkovModel("bernoulli", dim=88)
        seconds, cpu_seconds, done, elbo = _epoch(model, train, loss_fn(model), batches, max_batches)
        results[name] = {"seconds_per_epoch": round(seconds / done * per_epoch, 3),
                         "cpu_seconds_per_epoch": round(cpu_seconds / done * per_epoch, 3), "batches": done,
                         "elbo_per_step_after": round(elbo, 3)}
        print(name, json.dumps(results[name]), flush=True)
        return model

    model = run("ours_vectorised_random_batches", lambda m: (lambda b: m.loss(b).loss), iterate_minibatches)
    run("ours_vectorised_length_buckets", lambda m: (lambda b: m.loss(b).loss), length_buckets)
    if not args.skip_pyro:
        elbo = Trace_ELBO()
        run("pyro_per_step_trace_elbo", lambda m: (lambda b: elbo.differentiable_loss(m.model, m.guide, b)),
            iterate_minibatches)
        for key in ("seconds_per_epoch", "cpu_seconds_per_epoch"):
            pyro_time = results["pyro_per_step_trace_elbo"][key]
            results[f"speedup_{key}"] = {
                "random_batches": round(pyro_time / results["ours_vectorised_random_batches"][key], 2),
                "length_buckets": round(pyro_time / results["ours_vectorised_length_buckets"][key], 2)}
    # Profile one mini-batch of typical length (the median of the training set's batch maxima).
    minibatch = next(iter(iterate_minibatches(train, 20, torch.Generator().manual_seed(1))))
    phases = _phases(model, minibatch)
    total = sum(phases.values())
    results["profile_one_step"] = {"max_length": minibatch.max_length, "seconds": round(total, 4),
                                   **{k: f"{v:.4f} s ({100 * v / total:.0f}%)" for k, v in phases.items()}}
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
