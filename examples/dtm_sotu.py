"""Dynamic topic model vs static LDA vs unigram on the State of the Union, 1790-2009.

Paragraphs are documents, decades are slices. 10% of the paragraphs are held
out; each held-out paragraph's tokens are split at random into two halves; the
topic models infer the paragraph's proportions from the first half (MAP
under the fitted logistic-normal prior N(alpha_t, a^2 I), a = document_scale,
with the posterior-mean topics) and score the second half; the unigram model
(training word frequencies + 0.5) scores the same halves. Reports per-word
perplexity, fit time, the top words of each topic at each decade, topic
prevalence over time, and a figure of three topics drifting.

    python examples/dtm_sotu.py --out examples/output/dtm_sotu
    python examples/dtm_sotu.py --first-year 1990 --topics 3 --epochs 1 --out /tmp/tiny   # tiny run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: F401  (module-local Pyro params)
from inference.fit import fit
from zoo.data.corpus import SOTU_PATH, batch_slices, read_corpus, split_document_halves
from zoo.dtm import DynamicTopicModel, StaticTopicModel, unigram_completion


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SOTU_PATH), help="corpus CSV (default: the shipped SOTU paragraphs)")
    parser.add_argument("--first-year", type=float, default=None)
    parser.add_argument("--last-year", type=float, default=None)
    parser.add_argument("--slice", type=float, default=10, help="slice width in years")
    parser.add_argument("--min-df", type=int, default=5, help="minimum document frequency of a word")
    parser.add_argument("--max-vocab", type=int, default=None)
    parser.add_argument("--min-tokens", type=int, default=10, help="drop paragraphs with fewer vocabulary tokens")
    parser.add_argument("--topics", type=int, default=20)
    parser.add_argument("--topic-drift", type=float, default=0.2)
    parser.add_argument("--held-out", type=float, default=0.1, help="fraction of paragraphs held out")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--completion-steps", type=int, default=100)
    parser.add_argument("--budget-minutes", type=float, default=None, help="time budget per model fit")
    parser.add_argument("--models", nargs="+", default=["dtm", "lda"], choices=["dtm", "lda"])
    parser.add_argument(
        "--forecast",
        action="store_true",
        help="also fit on the slices before the last and score the last slice's paragraphs",
    )
    parser.add_argument("--skip-completion", action="store_true", help="run only the --forecast experiment")
    parser.add_argument("--save-state", default=None, help="also save the fitted DTM's state_dict here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/output/dtm_sotu")
    return parser.parse_args(argv)


def train(model, train_batch, args) -> tuple[float, int]:
    """Fits ``model`` on its analytic-KL loss; returns (wall seconds, epochs run)."""
    start = time.perf_counter()
    result = fit(
        model,
        train_batch,
        method="svi",
        loss="model",
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        progress=False,
        time_budget=None if args.budget_minutes is None else 60 * args.budget_minutes,
    )
    return time.perf_counter() - start, len(result.history)


def train_tokens(batch) -> int:
    return int((batch.values[..., 1] * batch.mask).sum())


def plots(out: Path, model: DynamicTopicModel, vocabulary, labels, prevalence, topics=(0, 1, 2)) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    years = [float(x) for x in labels]
    fig, ax = plt.subplots(figsize=(9, 5))
    words = model.top_words(vocabulary, 3, relevance=0.6)
    for k in range(model.num_topics):
        ax.plot(years, prevalence[:, k].numpy(), label=f"{k}: {' '.join(words[-1][k])}")
    ax.set_xlabel("decade")
    ax.set_ylabel("mean topic proportion")
    ax.set_title("Topic prevalence over time (held-in paragraphs)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "topic_prevalence.png", dpi=110)
    plt.close(fig)
    written.append("topic_prevalence.png")

    probs = torch.softmax(model.topic_word_logits(), -1)  # (S, K, V)
    relevant = model.top_words(vocabulary, 3, relevance=0.6)
    topics = [k for k in topics if k < model.num_topics]
    fig, axes = plt.subplots(1, len(topics), figsize=(5 * len(topics), 4), squeeze=False)
    for ax, k in zip(axes[0], topics):
        # the words that are ever among the topic's top 3
        # the words that are ever among the topic's 3 most relevant (lambda = 0.6)
        chosen = sorted({int(vocabulary.encode([w])[0]) for s in range(model.num_slices) for w in relevant[s][k][:3]})
        for v in chosen:
            ax.plot(years, probs[:, k, v].numpy(), label=vocabulary.words[v])
        ax.set_title(f"topic {k}")
        ax.set_xlabel("decade")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("word probability")
    fig.tight_layout()
    fig.savefig(out / "topic_drift.png", dpi=110)
    plt.close(fig)
    written.append("topic_drift.png")
    return written


def forecast_next_slice(batch, num_words: int, num_slices: int, args) -> dict:
    """Fits on every paragraph before the last slice and scores the last slice's paragraphs by
    document completion: the DTM's topics and alpha at the last slice are its random walks'
    forecasts (the slice has no training data), LDA's are its static topics."""
    slices = batch_slices(batch)
    last = int(slices.max())
    if int(slices.min()) == last:
        raise SystemExit("--forecast: the corpus has a single slice; nothing to forecast from")
    past, future = batch[torch.nonzero(slices < last).squeeze(-1)], batch[torch.nonzero(slices == last).squeeze(-1)]
    observed, held_half = split_document_halves(future, torch.Generator().manual_seed(args.seed + 1))
    out = {"train_documents": len(past), "forecast_documents": len(future), "perplexity": {}, "fit_seconds": {}}
    out["perplexity"]["unigram"] = unigram_completion(past, held_half, num_words).perplexity
    for name in args.models:
        model = (
            DynamicTopicModel(num_words, args.topics, num_slices, topic_drift=args.topic_drift)
            if name == "dtm"
            else StaticTopicModel(num_words, args.topics)
        )
        out["fit_seconds"][name], out.setdefault("epochs_run", {})[name] = train(model, past, args)
        out["perplexity"][name] = model.complete_documents(observed, held_half, steps=args.completion_steps).perplexity
        print(f"forecast {name}: perplexity {out['perplexity'][name]:.1f}", flush=True)
    return out


def main(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    time_range = None
    if args.first_year is not None or args.last_year is not None:
        time_range = (
            args.first_year if args.first_year is not None else -math.inf,
            args.last_year if args.last_year is not None else math.inf,
        )
    corpus = read_corpus(
        args.data,
        time_column="year",
        text_column="text",
        slice_width=args.slice,
        min_document_frequency=args.min_df,
        max_vocabulary_size=args.max_vocab,
        time_range=time_range,
    )
    tokens = (corpus.batch.values[..., 1] * corpus.batch.mask).sum(-1)
    batch = corpus.batch[torch.nonzero(tokens >= args.min_tokens).squeeze(-1)]
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(batch), generator=generator)
    num_held = max(1, int(round(args.held_out * len(batch))))
    held, train_batch = batch[order[:num_held]], batch[order[num_held:]]
    observed, held_half = split_document_halves(held, generator)
    V, S = len(corpus.vocabulary), corpus.num_slices
    print(
        f"{len(batch)} paragraphs ({len(train_batch)} train, {len(held)} held out), {V} words, {S} slices, "
        f"{train_tokens(train_batch)} training tokens",
        flush=True,
    )

    results = {
        "data": str(args.data),
        "documents": len(batch),
        "train_documents": len(train_batch),
        "held_out_documents": len(held),
        "vocabulary": V,
        "slices": S,
        "slice_width": args.slice,
        "train_tokens": train_tokens(train_batch),
        "held_out_tokens": train_tokens(held_half),
        "topics": args.topics,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "completion": "MAP eta from the observed half under the fitted prior N(alpha_t, a^2 I), a = 1.0 "
        f"(at most {args.completion_steps} Newton steps), posterior-mean topics",
        "threads": torch.get_num_threads(),
        "perplexity": {},
        "fit_seconds": {},
    }
    unigram = unigram_completion(train_batch, held_half, V)
    results["perplexity"]["unigram"] = unigram.perplexity
    print(f"unigram perplexity {unigram.perplexity:.1f}", flush=True)
    fitted = {}
    for name in [] if args.skip_completion else args.models:
        model = (
            DynamicTopicModel(V, args.topics, S, topic_drift=args.topic_drift)
            if name == "dtm"
            else StaticTopicModel(V, args.topics)
        )
        seconds, epochs_run = train(model, train_batch, args)
        results.setdefault("epochs_run", {})[name] = epochs_run
        score = model.complete_documents(observed, held_half, steps=args.completion_steps)
        results["perplexity"][name] = score.perplexity
        results["fit_seconds"][name] = seconds
        fitted[name] = model
        print(f"{name}: perplexity {score.perplexity:.1f}, fit {seconds:.0f} s", flush=True)

    if args.forecast:
        results["forecast"] = forecast_next_slice(batch, V, S, args)

    files = ["results.json"]
    if "dtm" in fitted:
        model = fitted["dtm"]
        for relevance, name in ((1.0, "top_words.txt"), (0.6, "top_words_relevance.txt")):
            top = model.top_words(corpus.vocabulary, 8, relevance=relevance)
            with open(out / name, "w") as handle:
                handle.write(f"# ranked by relevance lambda = {relevance} (1: probability; Sievert & Shirley 2014)\n")
                for k in range(model.num_topics):
                    handle.write(f"topic {k}\n")
                    for s, label in enumerate(corpus.slice_labels):
                        handle.write(f"  {label}: {' '.join(top[s][k])}\n")
            files.append(name)
        if args.save_state:
            torch.save(model.state_dict(), args.save_state)
        prevalence = model.topic_prevalence(train_batch)
        results["largest_mean_prevalence"] = round(float(prevalence.mean(0).max()), 4)
        results["largest_prevalence_any_decade"] = round(float(prevalence.max()), 4)
        results["prevalence"] = {
            label: [round(float(x), 4) for x in prevalence[s]] for s, label in enumerate(corpus.slice_labels)
        }
        files += plots(out, model, corpus.vocabulary, corpus.slice_labels, prevalence)
    with open(out / "results.json", "w") as handle:
        json.dump(results, handle, indent=2)
    print(json.dumps({k: results[k] for k in ("perplexity", "fit_seconds")}, indent=2))
    print("wrote", ", ".join(str(out / f) for f in files))
    return results


if __name__ == "__main__":
    main(parse_args())
