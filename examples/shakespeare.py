"""Tiny Shakespeare: HMMs against RNN, GRU and LSTM under the same time budget.

Character-level language models on Tiny Shakespeare (first 90% of the text for
training, the last 10% for validation): HMMs with 16, 64 and 256 states
(Baum–Welch) against an Elman RNN, a GRU and an LSTM (embedding 64, one layer of
256 units, sequences of 128 characters, mini-batches of 64, Adam with learning
rate 2e-3, all through ``inference.fit.fit``), each under the same wall-clock
budget on one CPU thread. Every model is scored exactly on the whole validation
text, in nats per character (± a standard error over 20 contiguous blocks), next
to the unigram and bigram count tables; a latent-state model that does not beat
the bigram has learned nothing a bigram table cannot hold. Writes
``shakespeare.json``, ``shakespeare.md`` (the table and a temperature-0.8 sample of
each model) and ``learning_curves.png`` into ``--out``.

Run::

    python examples/shakespeare.py --out results/shakespeare                  # 5 min per model, ~35 min
    python examples/shakespeare.py --budget-minutes 2 --models hmm:16 lstm gru --out OUT
    python examples/shakespeare.py --first 20000 --budget-minutes 0.1 --models hmm:4 lstm:32 --out OUT   # tiny

The data file is ``../shared/data/tinyshakespeare.txt`` (or ``$SEQZOO_SHARED_DATA``,
or ``--data``).
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

from inference.fit import fit
from inference.scoring import ratio_standard_error, score
from zoo import baselines, plots
from zoo.data import load_data, split_data
from zoo.hmm import CategoricalHMM
from zoo.rnn import RecurrentModel

DEFAULT_MODELS = ["hmm:16", "hmm:64", "hmm:256", "rnn", "gru", "lstm"]
NUM_BLOCKS = 20
TEMPERATURE = 0.8


def default_data_path() -> Path:
    shared = os.environ.get("SEQZOO_SHARED_DATA")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return root / "tinyshakespeare.txt"


def block_stderr(per_step: torch.Tensor) -> float | None:
    """Standard error of the mean log-likelihood per character over contiguous blocks."""
    if len(per_step) < 2 * NUM_BLOCKS:
        return None
    blocks = torch.tensor_split(per_step.double().cpu(), NUM_BLOCKS)
    return ratio_standard_error(torch.stack([b.sum() for b in blocks]), torch.tensor([len(b) for b in blocks]))


def hmm_per_step(model: CategoricalHMM, codes: torch.Tensor) -> torch.Tensor:
    """``(T,)`` log p(x_t | x_<t) under an HMM, from its filtered state probabilities."""
    filtered = model.filter(codes.unsqueeze(0))[0].double()
    predicted = torch.cat([model.initial_probs.double().unsqueeze(0), filtered[:-1] @ model.transition_probs.double()])
    return (predicted * model.emission_probs.double()[:, codes].T).sum(-1).log()


def build(spec: str, num_symbols: int, args):
    family, _, size = spec.partition(":")
    if family == "hmm":
        return CategoricalHMM(int(size or 16), num_symbols)
    if family in ("rnn", "gru", "lstm"):
        return RecurrentModel(
            "categorical",
            num_symbols=num_symbols,
            cell=family,
            hidden_size=int(size or args.hidden),
            embedding_dim=args.embedding,
        )
    raise SystemExit(f"--models: expected hmm:K, rnn[:H], gru[:H] or lstm[:H], got {spec!r}")


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    data_path = Path(args.data)
    if not data_path.exists():
        raise SystemExit(f"{data_path}: not found; pass --data or set SEQZOO_SHARED_DATA")
    data = load_data(data_path)
    if args.first:
        data = data.head(args.first)
    splits = split_data(data, (0.9, 0.1, 0.0))
    train, valid = splits.train.batch, splits.valid.batch
    valid_codes = valid.values[0, : int(valid.lengths[0])]
    vocabulary, num_symbols = data.vocabulary, data.num_symbols
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"Tiny Shakespeare: {train.num_steps} training and {valid.num_steps} validation characters, "
        f"{num_symbols} symbols; {args.budget_minutes} min per model on {args.threads} thread(s)",
        file=sys.stderr,
    )

    rows = []
    unigram = baselines.unigram_log_probs(train, num_symbols)
    initial, transition = baselines.bigram_log_probs(train, num_symbols)
    for name, per_step, parameters in (
        ("unigram", unigram[valid_codes], num_symbols - 1),
        (
            "bigram",
            torch.cat([initial[valid_codes[:1]], transition[valid_codes[:-1], valid_codes[1:]]]),
            (num_symbols - 1) * (num_symbols + 1),
        ),
    ):
        rows.append(
            {
                "model": name,
                "parameters": parameters,
                "seconds": 0.0,
                "stopped": "counted",
                "valid_nats_per_char": -float(per_step.mean()),
                "stderr": block_stderr(per_step),
            }
        )

    curves, samples = {}, {}
    for index, spec in enumerate(args.models):
        model = build(spec, num_symbols, args)
        label = spec if ":" in spec or spec == "hmm" else f"{spec}:{model.hidden_size}"
        print(f"[{index + 1}/{len(args.models)}] {label}", file=sys.stderr)
        if isinstance(model, CategoricalHMM):
            options = dict(method="em", max_iterations=args.max_iterations)
            train_batch = train
        else:
            options = dict(
                method="svi",
                max_epochs=10**6,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                eval_every=args.eval_every,
                patience=10**6,
            )
            train_batch = train.chunk(args.chunk_length)
        started = time.perf_counter()
        result = fit(
            model,
            train_batch,
            valid=valid,
            time_budget=args.budget_minutes * 60,
            seed=args.seed,
            progress=args.progress,
            description=f"[{index + 1}/{len(args.models)}] {label}",
            **options,
        )
        seconds = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            if isinstance(model, CategoricalHMM):
                per_step = hmm_per_step(model, valid_codes)
            else:
                per_step = model.log_prob_steps(valid.values, valid.lengths)[0]
        total = score(model, valid).per_step  # the shared scorer; agrees with the per-step sum
        assert math.isclose(float(per_step.sum()) / len(per_step), total, rel_tol=1e-4, abs_tol=1e-4)
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            if isinstance(model, RecurrentModel):
                codes = model.sample(
                    1, args.sample_length, generator, temperature=TEMPERATURE, prime=vocabulary.encode(args.prime)
                ).values[0]
                text = args.prime + vocabulary.decode(codes)
            else:
                text = vocabulary.decode(model.sample(1, args.sample_length, generator).values[0])
        rows.append(
            {
                "model": label,
                "parameters": int(model.num_parameters),
                "seconds": round(seconds, 1),
                "stopped": result.stopped,
                "steps": len(result.history),
                "valid_nats_per_char": -total,
                "stderr": block_stderr(per_step),
            }
        )
        curves[label] = result.history
        samples[label] = text
        print(f"    valid {-total:.4f} nats/char after {seconds:.0f} s ({result.stopped})", file=sys.stderr)

    for row in rows:
        row["valid_bits_per_char"] = row["valid_nats_per_char"] / math.log(2)
    report = {
        "data": str(data_path),
        "first": args.first,
        "split": "first 90% train, last 10% validation",
        "budget_minutes_per_model": args.budget_minutes,
        "threads": args.threads,
        "sample_temperature": TEMPERATURE,
        "likelihood": "exact for every model",
        "rows": rows,
        "samples": samples,
    }
    (out / "shakespeare.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "shakespeare.md").write_text(markdown(report))
    plots.learning_curves(curves, title="Tiny Shakespeare: validation log-likelihood").savefig(
        out / "learning_curves.png", dpi=120
    )
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# Tiny Shakespeare ({report['split']})",
        "",
        f"Budget {report['budget_minutes_per_model']} min per model on {report['threads']} CPU thread(s). "
        "Validation negative log-likelihood (exact), lower is better; ± one standard error over "
        f"{NUM_BLOCKS} contiguous blocks of the validation text.",
        "",
        "| model | parameters | seconds | stopped | valid nats/char | valid bits/char |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        stderr = f" ± {row['stderr']:.3f}" if row.get("stderr") else ""
        lines.append(
            f"| {row['model']} | {row['parameters']} | {row['seconds']} | {row['stopped']} | "
            f"{row['valid_nats_per_char']:.3f}{stderr} | {row['valid_bits_per_char']:.3f} |"
        )
    lines += [
        "",
        f"## Samples (recurrent networks at temperature {report['sample_temperature']}, primed; HMMs at 1)",
        "",
    ]
    for name, text in report["samples"].items():
        lines += [f"**{name}**", "", "```", text, "```", ""]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(default_data_path()))
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="hmm:K, rnn[:H], gru[:H], lstm[:H]")
    parser.add_argument("--budget-minutes", type=float, default=5.0, help="training wall time per model")
    parser.add_argument("--first", type=int, help="use only the first N characters (tiny runs)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--chunk-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=1, help="RNN epochs between validation scores")
    parser.add_argument(
        "--max-iterations", type=int, default=500, help="HMM EM iterations (the budget usually stops first)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prime", default="ROMEO:")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
