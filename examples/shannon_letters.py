"""Shannon's letters: a 2-state HMM learns vowels and consonants by itself.

A 2-state categorical HMM is fitted by Baum–Welch to the first 20,000
characters of English (``builtin:letters``: a–z and space), starting from
near-uniform parameters (uniform × (1 ± 1%) noise, renormalised). The
log-likelihood sits on a long plateau, then jumps within a few iterations (a
"phase transition") after which one state emits the vowels and space and the
other the consonants. For several noise seeds this script reports the jump
iteration, the final log-likelihood and each state's preferred letters, and
plots P(state | letter) against iteration, as in the lecture's figure.

Run::

    python examples/shannon_letters.py                      # 20,000 characters, 5 seeds
    python examples/shannon_letters.py --num-chars 3000 --seeds 0 --max-iterations 40   # tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.fit import fit  # noqa: E402
from zoo.data import load_data  # noqa: E402
from zoo.hmm import CategoricalHMM  # noqa: E402

VOWELS = set(" aeiou")


def near_uniform_hmm(num_states: int, num_symbols: int, noise: float, generator: torch.Generator) -> CategoricalHMM:
    """Uniform parameters times (1 ± noise) uniform noise, renormalised."""

    def perturbed(*shape):
        probs = torch.ones(*shape, dtype=torch.float64) * (1 + noise * (2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1))
        return probs / probs.sum(-1, keepdim=True)

    return CategoricalHMM.from_probs(perturbed(num_states), perturbed(num_states, num_states), perturbed(num_states, num_symbols))


def state_given_letter(model: CategoricalHMM) -> np.ndarray:
    """``(K, V)`` p(state | letter) under the chain's stationary state distribution."""
    transition = model.transition_probs.detach().double()
    # pi (A - I) = 0 with sum(pi) = 1: replace one (redundant) equation by the sum.
    system = transition.T - torch.eye(len(transition), dtype=transition.dtype)
    system[-1] = 1.0
    rhs = torch.zeros(len(transition), dtype=transition.dtype)
    rhs[-1] = 1.0
    stationary = torch.linalg.solve(system, rhs)
    joint = stationary[:, None] * model.emission_probs.detach().double()
    return (joint / joint.sum(0, keepdim=True)).numpy()


def run_seed(batch, symbols: str, seed: int, args) -> dict:
    generator = torch.Generator().manual_seed(seed)
    model = near_uniform_hmm(2, len(symbols), args.noise, generator)
    trajectory = []  # p(state 0 | letter) per iteration, (iterations, V)

    def record(_record: dict) -> None:
        trajectory.append(state_given_letter(model)[0])

    result = fit(model, batch, method="em", max_iterations=args.max_iterations, tolerance=args.tolerance,
                 patience=args.patience, progress=False, seed=seed, callbacks=[record])
    log_likelihoods = np.array([r["objective"] for r in result.history])
    gains = np.diff(log_likelihoods)
    # The first iterations fit the letter frequencies (thousands of nats); the
    # plateau starts when a step gains less than a nat, and the jump is the
    # largest gain after that.
    flat = np.flatnonzero(gains < 1.0)
    plateau_start = int(flat[0]) + 1 if len(flat) else len(gains)
    jump = plateau_start + int(np.argmax(gains[plateau_start:])) if plateau_start < len(gains) else 0
    emission = model.emission_probs.detach().double().numpy()
    with torch.no_grad():
        final = float(model.log_prob(batch.values, batch.lengths).sum())
    vowel_index = [symbols.index(c) for c in VOWELS if c in symbols]
    vowel_mass = emission[:, vowel_index].sum(1)
    vowel_state = int(np.argmax(vowel_mass))
    preferred = [
        "".join(symbols[i] for i in np.argsort(-emission[k])[:8]).replace(" ", "␣") for k in range(2)
    ]
    return {
        "seed": seed,
        "iterations": len(log_likelihoods),
        "jump_iteration": jump,
        "plateau_start": plateau_start,
        "jump_nats": float(gains[jump - 1]) if jump else 0.0,
        "final_log_likelihood": final,
        "vowel_state": vowel_state,
        "vowel_state_mass_on_space_and_vowels": float(vowel_mass[vowel_state]),
        "preferred_letters": preferred,
        "stopped": result.stopped,
        "log_likelihood_trace": log_likelihoods.tolist(),
        "state0_given_letter": np.array(trajectory).tolist(),
    }


def plot(results: list[dict], symbols: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        axes[0].plot(np.arange(1, len(r["log_likelihood_trace"]) + 1), r["log_likelihood_trace"], label=f"seed {r['seed']}")
    # Zoom on the plateau and the jump; the first step (fitting letter frequencies) gains far more.
    later = np.concatenate([r["log_likelihood_trace"][2:] for r in results if len(r["log_likelihood_trace"]) > 2] or [[0.0]])
    span = max(later.max() - later.min(), 1.0)
    axes[0].set_ylim(later.min() - 0.2 * span, later.max() + 0.1 * span)
    axes[0].set_xlabel("Baum–Welch iteration")
    axes[0].set_ylabel("log-likelihood (nats)")
    axes[0].set_title("The plateau and the jump")
    axes[0].legend(fontsize="small")
    best = max(results, key=lambda r: r["final_log_likelihood"])
    trajectory = np.array(best["state0_given_letter"])  # (iterations, V)
    if best["vowel_state"] == 1:
        trajectory = 1 - trajectory
    for v, symbol in enumerate(symbols):
        color = "tab:red" if symbol in VOWELS else "tab:gray"
        axes[1].plot(np.arange(1, len(trajectory) + 1), trajectory[:, v], color=color, lw=1)
        axes[1].annotate("␣" if symbol == " " else symbol, (len(trajectory), trajectory[-1, v]), fontsize=8, color=color)
    axes[1].set_xlabel("Baum–Welch iteration")
    axes[1].set_ylabel("P(vowel state | letter)")
    axes[1].set_title(f"seed {best['seed']}: vowels and space (red) split from consonants")
    fig.tight_layout()
    fig.savefig(out / "shannon_letters.png", dpi=120)
    plt.close(fig)


def main(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("builtin:letters").head(args.num_chars)
    symbols = "".join(data.vocabulary.symbols)
    results = [run_seed(data.batch, symbols, seed, args) for seed in args.seeds]
    print(f"2-state HMM on the first {data.num_steps} characters of builtin:letters")
    print(f"{'seed':>4} {'iters':>6} {'jump at':>8} {'jump (nats)':>12} {'final ll':>12}  vowel-state mass  preferred letters (vowel state | other)")
    for r in results:
        k = r["vowel_state"]
        print(f"{r['seed']:>4} {r['iterations']:>6} {r['jump_iteration']:>8} {r['jump_nats']:>12.1f} {r['final_log_likelihood']:>12.1f}"
              f"  {r['vowel_state_mass_on_space_and_vowels']:>16.2f}  {r['preferred_letters'][k]} | {r['preferred_letters'][1 - k]}")
    plot(results, symbols, out)
    summary = [{k: v for k, v in r.items() if k not in ("log_likelihood_trace", "state0_given_letter")} for r in results]
    (out / "shannon_letters.json").write_text(json.dumps(summary, indent=2))
    print(f"figure: {out / 'shannon_letters.png'}")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-chars", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--noise", type=float, default=0.01, help="relative noise on the uniform start")
    parser.add_argument("--max-iterations", type=int, default=1500)
    # The plateau gains far less than 1e-6 nats per character per iteration
    # for hundreds of iterations; a looser rule stops on it, before the jump.
    parser.add_argument("--tolerance", type=float, default=1e-10, help="EM stops when it gains less than this many nats per character per iteration ...")
    parser.add_argument("--patience", type=int, default=50, help="... for this many iterations in a row")
    parser.add_argument("--out", default="examples/output/shannon_letters")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
