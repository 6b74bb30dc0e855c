"""Shannon's letters: a 2-state HMM learns vowels and consonants by itself.

A 2-state categorical HMM is fitted by Baum–Welch to the first 20,000
characters of English (``builtin:letters``: a–z and space), starting from
near-uniform parameters (uniform × (1 ± 1%) noise, renormalised). The
log-likelihood sits on a long plateau, then jumps within a few iterations (a
"phase transition") after which one state emits the vowels and space and the
other the consonants. For each noise seed this script reports the jump
iteration, the final log-likelihood and each state's preferred letters, and
plots P(state | letter) against iteration, as in the lecture's figure.

Not every start gets there: one run of EM ends in the vowel/consonant optimum
for most noise seeds, but some end in a worse local optimum, and a stopping
rule can stop on the plateau itself, with both states still identical. So the
script reports, over all the seeds, the share of runs ending in each optimum
(final log-likelihoods within ``--optimum-tolerance`` nats are one optimum;
a run whose two states are still the same is "the plateau"), the spread of the
jump iteration, and, for every seed that missed the best optimum, a fit with
``--restarts`` random restarts from the same start (restart 0 is the same
near-uniform start, as in ``seqzoo fit --restarts``), showing that restarts
find the best optimum.

Run::

    python examples/shannon_letters.py                      # 20,000 characters, 24 seeds
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
        probs = torch.ones(*shape, dtype=torch.float64) * (
            1 + noise * (2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1)
        )
        return probs / probs.sum(-1, keepdim=True)

    return CategoricalHMM.from_probs(
        perturbed(num_states), perturbed(num_states, num_states), perturbed(num_states, num_symbols)
    )


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


#: Two states whose emission distributions differ by less than this (total
#: variation) are the same state: the run is still on the symmetric plateau
#: (there the distance is ~0.004, at the optima 0.4 and more).
SAME_STATE_DISTANCE = 0.05


def run_seed(batch, symbols: str, seed: int, args, num_restarts: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    model = near_uniform_hmm(2, len(symbols), args.noise, generator)
    trajectory = []  # p(state 0 | letter) per iteration, (iterations, V)

    def record(_record: dict) -> None:
        trajectory.append(state_given_letter(model)[0])

    result = fit(
        model,
        batch,
        method="em",
        max_iterations=args.max_iterations,
        tolerance=args.tolerance,
        patience=args.patience,
        progress=False,
        seed=seed,
        callbacks=[record],
        num_restarts=num_restarts,
    )
    # With restarts the history holds every restart; the trace is the kept (best) one's.
    kept = max(range(len(result.restarts or [0])), key=(result.restarts or [0]).__getitem__)
    log_likelihoods = np.array([r["objective"] for r in result.history if r.get("restart", 0) == kept])
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
    state_distance = 0.5 * float(np.abs(emission[0] - emission[1]).sum())
    preferred = ["".join(symbols[i] for i in np.argsort(-emission[k])[:8]).replace(" ", "␣") for k in range(2)]
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
        "num_restarts": num_restarts,
        "restart_objectives": list(result.restarts or []),  # log-likelihood + log prior, per restart
        "state_distance": state_distance,
        "on_plateau": state_distance < SAME_STATE_DISTANCE,
        "log_likelihood_trace": log_likelihoods.tolist(),
        "state0_given_letter": np.array(trajectory).tolist(),
    }


def plot(results: list[dict], symbols: str, out: Path, labels: list[str] | None = None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    # One colour per end point (the seeds are too many for a legend entry each).
    labels = labels or [f"seed {r['seed']}" for r in results]
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(labels))}
    shown = set()
    # The plateau's runs last and thick: they stop early, under the others' lines.
    for r, label in sorted(zip(results, labels), key=lambda pair: pair[1] == "plateau"):
        count = labels.count(label)
        axes[0].plot(
            np.arange(1, len(r["log_likelihood_trace"]) + 1),
            r["log_likelihood_trace"],
            color=colours[label],
            lw=2.5 if label == "plateau" else 1,
            alpha=0.8,
            label=None if label in shown else f"{label} ({count} seed{'s' if count > 1 else ''})",
        )
        shown.add(label)
    # Zoom on the plateau and the jump; the first step (fitting letter frequencies) gains far more.
    later = np.concatenate(
        [r["log_likelihood_trace"][2:] for r in results if len(r["log_likelihood_trace"]) > 2] or [[0.0]]
    )
    span = max(later.max() - later.min(), 1.0)
    axes[0].set_ylim(later.min() - 0.2 * span, later.max() + 0.1 * span)
    axes[0].set_xlabel("Baum–Welch iteration")
    axes[0].set_ylabel("log-likelihood + log prior (nats)")
    axes[0].set_title("The plateau and the jump")
    axes[0].legend(fontsize="small")
    best = max(results, key=lambda r: r["final_log_likelihood"])
    trajectory = np.array(best["state0_given_letter"])  # (iterations, V)
    if best["vowel_state"] == 1:
        trajectory = 1 - trajectory
    for v, symbol in enumerate(symbols):
        color = "tab:red" if symbol in VOWELS else "tab:gray"
        axes[1].plot(np.arange(1, len(trajectory) + 1), trajectory[:, v], color=color, lw=1)
        axes[1].annotate(
            "␣" if symbol == " " else symbol, (len(trajectory), trajectory[-1, v]), fontsize=8, color=color
        )
    axes[1].set_xlabel("Baum–Welch iteration")
    axes[1].set_ylabel("P(vowel state | letter)")
    axes[1].set_title(f"seed {best['seed']}: vowels and space (red) split from consonants")
    fig.tight_layout()
    fig.savefig(out / "shannon_letters.png", dpi=120)
    plt.close(fig)


def optimum_labels(results: list[dict], tolerance: float) -> list[str]:
    """Names each run's end point: ``"plateau"`` when its two states are still the same,
    else ``"optimum 1"`` (the best), ``"optimum 2"``, ... by final log-likelihood, runs
    within ``tolerance`` nats of an optimum's best run belonging to it."""
    centres: list[float] = []
    for value in sorted((r["final_log_likelihood"] for r in results if not r["on_plateau"]), reverse=True):
        if not centres or centres[-1] - value > tolerance:
            centres.append(value)
    labels = []
    for r in results:
        if r["on_plateau"]:
            labels.append("plateau")
        else:
            labels.append(
                f"optimum {min(range(len(centres)), key=lambda i: abs(centres[i] - r['final_log_likelihood'])) + 1}"
            )
    return labels


def _spread(values: list[int]) -> dict:
    """Count, min, quartiles, median and max of jump iterations."""
    if not values:
        return {"runs": 0}
    array = np.array(values)
    return {
        "runs": int(len(array)),
        "min": int(array.min()),
        "median": float(np.median(array)),
        "max": int(array.max()),
        "quartiles": [float(q) for q in np.percentile(array, [25, 75])],
    }


def summarise(results: list[dict], tolerance: float) -> dict:
    """Share of seeds per end point, and the spread of the jump iteration among runs that jumped."""
    labels = optimum_labels(results, tolerance)
    optima = {}
    for label in sorted(set(labels), key=lambda name: (name == "plateau", name)):
        members = [r for r, own in zip(results, labels) if own == label]
        best = max(members, key=lambda r: r["final_log_likelihood"])
        k = best["vowel_state"]
        optima[label] = {
            "seeds": [r["seed"] for r in members],
            "share": len(members) / len(results),
            "final_log_likelihood": best["final_log_likelihood"],
            "preferred_letters": [best["preferred_letters"][k], best["preferred_letters"][1 - k]],
        }
    for label, optimum in optima.items():
        if label != "plateau":
            optimum["jump_iteration"] = _spread(
                [r["jump_iteration"] for r, own in zip(results, labels) if own == label and r["jump_nats"] > 1.0]
            )
    spread = _spread(
        [r["jump_iteration"] for r, label in zip(results, labels) if label != "plateau" and r["jump_nats"] > 1.0]
    )
    return {
        "num_seeds": len(results),
        "optima": optima,
        "jump_iteration": spread,
        "stopped_on_plateau": [r["seed"] for r, label in zip(results, labels) if label == "plateau"],
    }


def main(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data("builtin:letters").head(args.num_chars)
    symbols = "".join(data.vocabulary.symbols)
    results = [run_seed(data.batch, symbols, seed, args) for seed in args.seeds]
    print(f"2-state HMM on the first {data.num_steps} characters of builtin:letters, {len(results)} noise seeds")
    print(
        f"{'seed':>4} {'iters':>6} {'jump at':>8} {'jump (nats)':>12} {'final ll':>12}  vowel-state mass  preferred letters (vowel state | other)"
    )
    for r in results:
        k = r["vowel_state"]
        print(
            f"{r['seed']:>4} {r['iterations']:>6} {r['jump_iteration']:>8} {r['jump_nats']:>12.1f} {r['final_log_likelihood']:>12.1f}"
            f"  {r['vowel_state_mass_on_space_and_vowels']:>16.2f}  {r['preferred_letters'][k]} | {r['preferred_letters'][1 - k]}"
            + ("  (stopped on the plateau)" if r["on_plateau"] else "")
        )
    summary = summarise(results, args.optimum_tolerance)
    print("end points over the seeds:")
    for label, optimum in summary["optima"].items():
        print(
            f"  {label:<10} {optimum['share']:6.1%}  final ll {optimum['final_log_likelihood']:12.1f}  "
            f"{' | '.join(optimum['preferred_letters'])}  seeds {optimum['seeds']}"
        )
        spread = optimum.get("jump_iteration", {"runs": 0})
        if spread["runs"]:
            print(
                f"             jump at iteration: min {spread['min']}, quartiles {spread['quartiles'][0]:.0f}"
                f"-{spread['quartiles'][1]:.0f}, median {spread['median']:.0f}, max {spread['max']} ({spread['runs']} runs)"
            )
    best_label = next(iter(summary["optima"]))
    missed = [r for r, label in zip(results, optimum_labels(results, args.optimum_tolerance)) if label != best_label]
    restarted = []
    if args.restarts > 1:
        best_value = summary["optima"][best_label]["final_log_likelihood"]
        for r in missed:
            again = run_seed(data.batch, symbols, r["seed"], args, num_restarts=args.restarts)
            # Reaching the best single-run optimum, or a better one, counts.
            again["reached_best"] = bool(
                not again["on_plateau"] and again["final_log_likelihood"] >= best_value - args.optimum_tolerance
            )
            restarted.append(again)
            k = again["vowel_state"]
            print(
                f"seed {r['seed']:>3} with --restarts {args.restarts}: final ll {again['final_log_likelihood']:.1f} "
                f"(one run: {r['final_log_likelihood']:.1f}), {again['preferred_letters'][k]} | {again['preferred_letters'][1 - k]}; "
                "restarts' objectives (log-likelihood + log prior) "
                + ", ".join(f"{value:.1f}" for value in again["restart_objectives"])
                + ("; best optimum reached" if again["reached_best"] else "; best optimum NOT reached")
            )
    plot(results, symbols, out, optimum_labels(results, args.optimum_tolerance))
    trim = lambda r: {k: v for k, v in r.items() if k not in ("log_likelihood_trace", "state0_given_letter")}  # noqa: E731
    summary["restarts"] = {"num_restarts": args.restarts, "runs": [trim(r) for r in restarted]}
    summary["settings"] = {
        "num_chars": data.num_steps,
        "noise": args.noise,
        "max_iterations": args.max_iterations,
        "tolerance": args.tolerance,
        "patience": args.patience,
    }
    (out / "shannon_letters.json").write_text(
        json.dumps({"summary": summary, "runs": [trim(r) for r in results]}, indent=2)
    )
    print(f"figure: {out / 'shannon_letters.png'}")
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-chars", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(24)))
    parser.add_argument("--noise", type=float, default=0.01, help="relative noise on the uniform start")
    parser.add_argument("--max-iterations", type=int, default=1500)
    # The plateau gains far less than 1e-6 nats per character per iteration
    # for hundreds of iterations; a looser rule stops on it, before the jump.
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-10,
        help="EM stops when it gains less than this many nats per character per iteration ...",
    )
    parser.add_argument("--patience", type=int, default=50, help="... for this many iterations in a row")
    parser.add_argument(
        "--restarts",
        type=int,
        default=4,
        help="random restarts (restart 0 = the seed's own start) for every seed that misses the best optimum",
    )
    parser.add_argument(
        "--optimum-tolerance",
        type=float,
        default=1.0,
        help="final log-likelihoods within this many nats are one optimum",
    )
    parser.add_argument("--out", default="examples/output/shannon_letters")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
