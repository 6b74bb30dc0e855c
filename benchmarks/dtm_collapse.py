"""Topic-collapse benchmark (docs/dtm.md, "Topic collapse"): documents simulated from well-separated
drifting topics are fitted through ``inference.fit.fit(..., loss="model")``; per seed it prints the worst
matched topic's total variation from the truth (matched by permutation, worst over slices), the closest
pair of fitted topics, the largest mean prevalence and the fit time, and at the end the share of seeds
that recover the topics (worst matched TV below ``--tolerance`` AND closest fitted pair above
``--min-pair``).

    PYTHONPATH=. python benchmarks/dtm_collapse.py --seeds 10
    PYTHONPATH=. python benchmarks/dtm_collapse.py --seeds 3 --init truth     # started at the true topics
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.fit import fit  # noqa: E402
from zoo.dtm import DynamicTopicModel  # noqa: E402


def truth_topics(V: int, K: int, S: int, gen: torch.Generator) -> torch.Tensor:
    """``(S, K, V)`` word logits: topic k lives on words ``k*V/K .. (k+1)*V/K - 1`` (logit 1.5 + a
    random base + a random walk of step 0.3 over the slices; -3 elsewhere)."""
    logits = torch.full((S, K, V), -3.0)
    per = V // K
    base = torch.randn(K, per, generator=gen)
    for k in range(K):
        walk = base[k] + 0.3 * torch.randn(S, per, generator=gen).cumsum(0)
        logits[:, k, k * per : (k + 1) * per] = 1.5 + walk
    return logits


def topic_errors(model: DynamicTopicModel, truth: torch.Tensor) -> tuple[float, float]:
    """(worst matched total variation over topics and slices, closest pair of fitted topics)."""
    fitted = torch.softmax(model.topic_word_logits(), -1)
    true = torch.softmax(truth, -1)
    K = fitted.shape[1]
    tv = 0.5 * (fitted[:, :, None] - true[:, None]).abs().sum(-1).amax(0)  # (K fitted, K true), worst slice
    rows, cols = linear_sum_assignment(tv.numpy())
    pair = 0.5 * (fitted[:, :, None] - fitted[:, None]).abs().sum(-1).amin(0) + 10 * torch.eye(K)
    return tv[rows, cols].max().item(), pair.min().item()


def simulate(seed: int, K: int = 8, V: int = 160, S: int = 5, N: int = 3000, length: int = 30):
    gen = torch.Generator().manual_seed(100 + seed)
    truth = truth_topics(V, K, S, gen)
    model = DynamicTopicModel(V, K, S, topic_drift=0.2)
    slices = torch.arange(N) % S
    alpha = 0.5 * torch.randn(S, K, generator=gen)
    return model, truth, model.sample_documents(truth, alpha, slices, length, gen)


def run(
    seed: int,
    K: int = 8,
    V: int = 160,
    S: int = 5,
    N: int = 3000,
    length: int = 30,
    epochs: int = 30,
    lr: float = 0.05,
    init: str = "data",
    **fit_options,
):
    """Simulates, fits, returns ``(worst matched TV, closest pair, largest prevalence, fit seconds, model)``."""
    model, truth, batch = simulate(seed, K, V, S, N, length)
    if init == "truth":
        with torch.no_grad():
            model.guide_beta_loc.copy_(torch.log_softmax(truth, -1).reshape(S, -1))
    start = time.perf_counter()
    fit(
        model,
        batch,
        method="svi",
        loss="model",
        max_epochs=epochs,
        batch_size=256,
        learning_rate=lr,
        progress=False,
        seed=seed,
        initialize=init == "data",
        **fit_options,
    )
    seconds = time.perf_counter() - start
    matched, pair = topic_errors(model, truth)
    prevalence = model.topic_prevalence(batch).mean(0)
    return matched, pair, prevalence.max().item(), seconds, model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--init", choices=["data", "truth"], default="data")
    parser.add_argument("--tolerance", type=float, default=0.25, help="worst matched TV that counts as recovered")
    parser.add_argument("--min-pair", type=float, default=0.5, help="closest fitted pair that counts as distinct")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recovered, times = 0, []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        matched, pair, top, seconds, _ = run(seed, epochs=args.epochs, lr=args.learning_rate, init=args.init)
        ok = matched < args.tolerance and pair > args.min_pair
        recovered += ok
        times.append(seconds)
        print(
            f"seed {seed}: worst matched TV {matched:.3f}  closest pair {pair:.3f}  largest prevalence {top:.3f}  "
            f"{seconds:.0f} s  {'recovered' if ok else 'NOT recovered'}",
            flush=True,
        )
    print(
        f"recovered {recovered}/{args.seeds} seeds (worst matched TV < {args.tolerance}, closest pair > "
        f"{args.min_pair}); fit time median {sorted(times)[len(times) // 2]:.0f} s"
    )


if __name__ == "__main__":
    main()
