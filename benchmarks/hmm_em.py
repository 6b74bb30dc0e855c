"""Baum–Welch iteration time: seqzoo's ``CategoricalHMM.em_step`` against
hmmlearn's ``CategoricalHMM.fit`` (one E-step plus M-step per iteration), on
one sequence of V=27 symbols, in the same run. Prints a markdown table with
the ratio hmmlearn / ours (higher is better for us).

Run by hand::

    python benchmarks/hmm_em.py                 # T = 10^5, K = 2, 8, 32, 128
    python benchmarks/hmm_em.py --quick         # T = 10^4, K = 2, 8
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from inference.batch import SequenceBatch
from zoo.hmm import CategoricalHMM

NUM_SYMBOLS = 27


def random_parameters(num_states: int, rng: np.random.Generator):
    initial = rng.dirichlet(np.ones(num_states))
    transition = rng.dirichlet(np.ones(num_states), size=num_states)
    emission = rng.dirichlet(np.ones(NUM_SYMBOLS), size=num_states)
    return initial, transition, emission


def time_ours(params, codes: np.ndarray, iterations: int, repeat: int) -> float:
    batch = SequenceBatch.from_tensor(torch.as_tensor(codes)[None])
    timings = []
    for _ in range(repeat):
        model = CategoricalHMM.from_probs(*(torch.as_tensor(p) for p in params))
        model.em_step(batch)  # warm-up: numba compilation, allocations
        start = time.perf_counter()
        for _ in range(iterations):
            model.em_step(batch)
        timings.append((time.perf_counter() - start) / iterations)
    return statistics.median(timings)


def time_hmmlearn(params, codes: np.ndarray, iterations: int, repeat: int) -> float:
    from hmmlearn.hmm import CategoricalHMM as ReferenceHMM

    timings = []
    for _ in range(repeat):
        model = ReferenceHMM(
            n_components=len(params[0]),
            n_features=NUM_SYMBOLS,
            n_iter=iterations,
            tol=0.0,
            init_params="",
            params="ste",
            implementation="scaling",
        )
        model.startprob_, model.transmat_, model.emissionprob_ = params
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(codes[:, None])
        timings.append((time.perf_counter() - start) / iterations)
    return statistics.median(timings)


def main(args) -> None:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"Baum–Welch seconds per iteration, one sequence, V={NUM_SYMBOLS}, torch threads={args.threads}")
    print("| T | K | seqzoo | hmmlearn | hmmlearn / seqzoo |")
    print("|---|---|---|---|---|")
    for length in args.T:
        codes = rng.integers(0, NUM_SYMBOLS, size=length)
        for num_states in args.K:
            params = random_parameters(num_states, rng)
            ours = time_ours(params, codes, args.iterations, args.repeat)
            reference = time_hmmlearn(params, codes, args.iterations, args.repeat)
            print(
                f"| {length:.0e} | {num_states} | {ours:.4f} | {reference:.4f} | {reference / ours:.1f}x |", flush=True
            )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[100_000])
    parser.add_argument("--K", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="T = 10^4, K = 2, 8")
    args = parser.parse_args(argv)
    if args.quick:
        args.T, args.K, args.repeat = [10_000], [2, 8], 1
    return args


if __name__ == "__main__":
    main(parse_args())
