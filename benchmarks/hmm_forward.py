"""Benchmark the discrete-HMM log marginal against hmmlearn and Pyro in one run.

One sequence of ``V = 27`` symbols drawn from a random categorical HMM. For each
``(T, K)`` it times (median of ``--repeat`` runs, numba compile excluded by a warm-up):

* ours: :func:`inference.discrete.log_marginal` on ``log_emission = log B.T[x]`` (the gather CategoricalHMM does);
* ours + grad: the same followed by ``.backward()`` into all three potentials;
* hmmlearn: ``CategoricalHMM.score``;
* Pyro: ``DiscreteHMM(...).log_prob`` (``oom`` when ``T K^2`` float64 exceeds 4 GB).

The start distribution is the stationary distribution of the transition matrix, so
Pyro's convention (an extra transition before the first emission) gives the same value.
Prints a markdown table with the ratios hmmlearn/ours and pyro/ours and checks our value
against hmmlearn's to 1e-6 relative.

Usage::

    python benchmarks/hmm_forward.py --T 10000 100000 --K 2 8 32 128 --repeat 3
    python benchmarks/hmm_forward.py --quick
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (the benchmarks' shared helpers)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.discrete import log_marginal  # noqa: E402

NUM_SYMBOLS = 27
PYRO_MEMORY_LIMIT_BYTES = 4e9


def _median_seconds(function: Callable[[], object], repeat: int) -> float:
    return _timing.median_seconds(function, repeat)  # after one untimed warm-up call


def _random_hmm(num_states: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    transition = rng.dirichlet(np.ones(num_states), size=num_states)
    emission = rng.dirichlet(np.ones(NUM_SYMBOLS), size=num_states)
    eigenvalues, eigenvectors = np.linalg.eig(transition.T)
    stationary = np.abs(np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))]))
    return stationary / stationary.sum(), transition, emission


def _sample_symbols(
    start: np.ndarray, transition: np.ndarray, emission: np.ndarray, num_steps: int, rng: np.random.Generator
) -> np.ndarray:
    cumulative_transition = transition.cumsum(-1)
    cumulative_emission = emission.cumsum(-1)
    state = rng.choice(len(start), p=start)
    uniforms = rng.random((num_steps, 2))
    symbols = np.empty(num_steps, dtype=np.int64)
    for t in range(num_steps):
        symbols[t] = min(np.searchsorted(cumulative_emission[state], uniforms[t, 0], side="right"), NUM_SYMBOLS - 1)
        state = min(np.searchsorted(cumulative_transition[state], uniforms[t, 1], side="right"), len(start) - 1)
    return symbols


def benchmark_case(num_steps: int, num_states: int, repeat: int, seed: int) -> dict[str, object]:
    """Time every implementation on one random problem; returns one table row."""
    from hmmlearn.hmm import CategoricalHMM

    rng = np.random.default_rng(seed)
    start, transition, emission = _random_hmm(num_states, rng)
    symbols = _sample_symbols(start, transition, emission, num_steps, rng)

    log_initial = torch.from_numpy(np.log(start))
    log_transition = torch.from_numpy(np.log(transition))
    log_emission_table = torch.from_numpy(np.log(emission))
    symbols_tensor = torch.from_numpy(symbols)

    def ours() -> torch.Tensor:
        return log_marginal(log_initial, log_transition, log_emission_table.T[symbols_tensor][None])

    leaves = [x.clone().requires_grad_() for x in (log_initial, log_transition, log_emission_table)]

    def ours_with_grad() -> None:
        for leaf in leaves:
            leaf.grad = None
        log_emission = leaves[2].T[symbols_tensor][None]
        log_marginal(leaves[0], leaves[1], log_emission).sum().backward()

    model = CategoricalHMM(n_components=num_states, n_features=NUM_SYMBOLS)
    model.startprob_, model.transmat_, model.emissionprob_ = start, transition, emission
    observations = symbols[:, None]

    row: dict[str, object] = dict(T=num_steps, K=num_states)
    row["ours"] = _median_seconds(ours, repeat)
    row["ours_grad"] = _median_seconds(ours_with_grad, repeat)
    row["hmmlearn"] = _median_seconds(lambda: model.score(observations), repeat)
    ours_value = ours().item()
    hmmlearn_value = model.score(observations)
    row["relative_error"] = abs(ours_value - hmmlearn_value) / abs(hmmlearn_value)
    row["agrees"] = row["relative_error"] < 1e-6

    if num_steps * num_states**2 * 8 > PYRO_MEMORY_LIMIT_BYTES:
        row["pyro"] = None
    else:
        import pyro.distributions as dist

        hmm = dist.DiscreteHMM(
            log_initial, log_transition, dist.Categorical(logits=log_emission_table), duration=num_steps
        )
        with torch.no_grad():
            row["pyro"] = _median_seconds(lambda: hmm.log_prob(symbols_tensor), repeat)
            pyro_value = hmm.log_prob(symbols_tensor).item()
        row["pyro_relative_error"] = abs(pyro_value - hmmlearn_value) / abs(hmmlearn_value)
    return row


def format_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of the timings (seconds) and speed-up ratios."""
    lines = [
        "| T | K | ours (s) | ours+grad (s) | hmmlearn (s) | pyro (s) | hmmlearn/ours | pyro/ours | rel. err vs hmmlearn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pyro = "oom" if row["pyro"] is None else f"{row['pyro']:.4f}"
        pyro_ratio = "-" if row["pyro"] is None else f"{row['pyro'] / row['ours']:.1f}x"
        lines.append(
            f"| {row['T']} | {row['K']} | {row['ours']:.4f} | {row['ours_grad']:.4f} | {row['hmmlearn']:.4f} | "
            f"{pyro} | {row['hmmlearn'] / row['ours']:.1f}x | {pyro_ratio} | {row['relative_error']:.1e} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict[str, object]]:
    if args.quick:
        args.T, args.K, args.repeat = [2000], [2, 8], 1
    rows = []
    for num_steps in args.T:
        for num_states in args.K:
            rows.append(benchmark_case(num_steps, num_states, args.repeat, args.seed))
            print(f"done T={num_steps} K={num_states}", file=sys.stderr, flush=True)
    print(f"torch threads: {torch.get_num_threads()}")
    print(format_table(rows))
    disagreeing = [(row["T"], row["K"]) for row in rows if not row["agrees"]]
    print("value check vs hmmlearn (1e-6 relative):", "OK" if not disagreeing else f"FAILED for {disagreeing}")
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, nargs="+", default=[10_000, 100_000], help="sequence lengths")
    parser.add_argument("--K", type=int, nargs="+", default=[2, 8, 32, 128], help="numbers of hidden states")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny run: T=2000, K in {2, 8}, one repeat")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
