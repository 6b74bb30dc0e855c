r"""Topic-conditioned character-level text: a GRU told each paragraph's topic proportions.

The lectures' "Topics in scientific texts": condition a recurrent network's
transitions on a document's inferred topic vector,
:math:`h_t = \tanh(W_{hh} h_{t-1} + W_{xh} x_t + W_{x\theta} \theta_d)` (for a
GRU/LSTM the context enters every gate the same way), and generate text per
topic. On the State of the Union paragraphs (``zoo.data.corpus.load_sotu``, the
packaged ``builtin:sotu``):

1. paragraphs are split **by document** into train / valid / test;
2. a topic model (static logistic-normal LDA by default, or the DTM with
   decades as slices) is fitted to the *training* paragraphs' bags of words,
   and gives each paragraph its proportions :math:`\theta_d` (the mode of its
   solved local posterior, ``document_proportions``);
3. a character-level GRU (or LSTM/Elman) conditioned on :math:`\theta_d`
   (the ``"context"`` covariate of the RNN family) and an unconditioned one of
   the same architecture are trained on the same chunks, with the same seed and
   the same wall-clock budget, through ``inference.fit.fit``;
4. both are scored exactly on the test paragraphs, in nats per character with
   a standard error across documents (and the paired difference with its own
   standard error), under two protocols:

   * **whole paragraph, θ from the whole paragraph** -- θ is side information
     inferred from the very words being scored (the lectures' setting; the
     conditioned model is not charged for θ, so this flatters it);
   * **completion: θ from the first half, score the second half** -- both
     models read the first half (at a word boundary near the middle) and are
     scored on the rest; θ comes from the first half's words only, so no
     information from the scored text reaches either model except through
     the text it has read;

5. samples are generated under one-hot topic vectors (labelled with the
   topic's most relevant words), and, as a check that reads more than the
   eye does, the topic model's encoder infers the proportions of each
   generated text: if conditioning works, text generated under topic ``k``
   puts more weight on topic ``k`` than unconditioned samples do.

Text is whitespace-normalised (runs of spaces and line breaks become one
space, as the source file wraps lines) and each paragraph ends with a newline,
so the models learn where paragraphs stop. Characters of held-out paragraphs
never seen in training map to one reserved unknown symbol.

Run::

    python examples/topic_conditioned_text.py --output examples/output/topic_conditioned_text   # defaults: ~20 min
    python examples/topic_conditioned_text.py --max-docs 200 --topics 4 --minutes 0.05 --hidden 32 \
        --first-year 1990 --topic-epochs 3 --output /tmp/tiny                                    # tiny run
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.batch import SequenceBatch  # noqa: E402
from inference.fit import fit  # noqa: E402
from inference.scoring import ratio_standard_error  # noqa: E402
from inference.training import KLAnnealing  # noqa: E402
from zoo.data.corpus import SOTU_PATH, Corpus, bag_of_words_batch, batch_slices, read_corpus, tokenize  # noqa: E402
from zoo.dtm import DynamicTopicModel, StaticTopicModel  # noqa: E402
from zoo.rnn import RecurrentModel  # noqa: E402

#: Marks a paragraph's end (the models learn to stop).
END = "\n"
#: Stands for any held-out character never seen in training.
UNKNOWN = "\x00"
_WHITESPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------
# Data: the paragraphs' text beside the topic model's bags of words
# --------------------------------------------------------------------------
def normalise(text: str) -> str:
    """One space for every run of whitespace (the source file wraps its lines), stripped."""
    return _WHITESPACE.sub(" ", text).strip()


def paragraph_texts(corpus: Corpus, text_column: str = "text") -> list[str]:
    """The raw text of each document of ``corpus``, in its order.

    ``read_corpus`` keeps only each document's file line (``corpus.lines``,
    ``csv.reader.line_num`` after the row); this re-reads the file the same way
    and picks those rows.
    """
    path = Path(corpus.source)
    opened = (
        io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        if path.name.endswith(".gz")
        else open(path, encoding="utf-8", newline="")
    )
    wanted = set(corpus.lines.tolist())
    by_line: dict[int, str] = {}
    with opened as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader)]
        text_at = header.index(text_column)
        for row in reader:
            if reader.line_num in wanted:
                by_line[reader.line_num] = row[text_at]
    return [by_line[int(line)] for line in corpus.lines]


def first_half_cut(text: str) -> int:
    """Character index where a text's second half starts: the first space at or
    after the middle (the whole text when there is none)."""
    space = text.find(" ", len(text) // 2)
    return len(text) if space < 0 else space + 1


def bags_of_words(texts: list[str], corpus: Corpus, slices: torch.Tensor) -> SequenceBatch:
    """Sparse ``(id, count)`` batch of ``texts`` in ``corpus``'s vocabulary (its tokeniser)."""
    return bag_of_words_batch([corpus.vocabulary.encode(tokenize(t)) for t in texts], slices)


class CharacterCodes:
    """Characters <-> int64 codes; unseen characters map to :data:`UNKNOWN`."""

    def __init__(self, texts: list[str]) -> None:
        self.symbols = sorted(set("".join(texts)) | {END, UNKNOWN})
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> torch.Tensor:
        unknown = self.index[UNKNOWN]
        return torch.tensor([self.index.get(c, unknown) for c in text], dtype=torch.long)

    def decode(self, codes) -> str:
        return "".join(self.symbols[int(c)] for c in codes)


def token_count(bags: SequenceBatch) -> float:
    """Mean number of vocabulary tokens per document of a bag-of-words batch."""
    return float((bags.values[..., 1] * bags.mask).sum(-1).double().mean())


def proportions(topic_model, batch: SequenceBatch) -> torch.Tensor:
    """``(N, K)`` each document's topic proportions under the fitted topic model
    (the softmax of each document's local-posterior mode, ``document_proportions``)."""
    return topic_model.document_proportions(batch).float()


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------
def per_step_log_probs(
    model: RecurrentModel, batch: SequenceBatch, context: torch.Tensor | None, batch_size: int = 64
) -> list[torch.Tensor]:
    """Each sequence's ``(T_n,)`` exact log p(x_t | x_<t, θ), scored in groups of similar length."""
    model.eval()
    order = torch.argsort(batch.lengths)
    out: list[torch.Tensor | None] = [None] * batch.num_sequences
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            part = batch[chosen]
            steps = model.log_prob_steps(part.values, part.lengths, None if context is None else context[chosen])
            for row, n in enumerate(chosen.tolist()):
                out[n] = steps[row, : int(part.lengths[row])].double()
    return out


def summarise(log_probs: torch.Tensor, num_chars: torch.Tensor) -> dict:
    """Nats per character ``-sum / sum`` and its standard error across documents (ratio estimator)."""
    return {
        "nats_per_char": -float(log_probs.sum() / num_chars.sum()),
        "stderr": ratio_standard_error(log_probs, num_chars),
        "chars": int(num_chars.sum()),
        "documents": int(len(num_chars)),
    }


# --------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------
def fit_topic_model(corpus: Corpus, train_bags: SequenceBatch, args):
    vocabulary_size = len(corpus.vocabulary)
    if args.topic_model == "dtm":
        model = DynamicTopicModel(vocabulary_size, args.topics, corpus.num_slices)
    else:
        model = StaticTopicModel(vocabulary_size, args.topics)
    started = time.perf_counter()
    # KL annealing of the documents' term and a small learning rate: before the DTM's local
    # posterior step (docs/dtm.md) most topics received no paragraph without them (1900-2009,
    # K = 6: 3 of 6 topics used at lr 0.05); kept so the recorded results stay reproducible.
    result = fit(
        model,
        train_bags,
        method="svi",
        loss="model",
        batch_size=512,
        learning_rate=args.topic_lr,
        max_epochs=args.topic_epochs,
        lr_schedule="constant",
        step_kwargs=KLAnnealing(start=0.0, epochs=max(1, args.topic_epochs // 3)),
        time_budget=60 * args.topic_minutes,
        seed=args.seed,
        progress=False,
    )
    return model, {
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": len(result.history),
        "stopped": result.stopped,
    }


def train_rnn(context_dim: int, num_symbols: int, train: SequenceBatch, valid: SequenceBatch, args):
    model = RecurrentModel(
        "categorical",
        num_symbols=num_symbols,
        cell=args.cell,
        hidden_size=args.hidden,
        embedding_dim=args.embedding,
        context_dim=context_dim,
    )
    started = time.perf_counter()
    result = fit(
        model,
        train.chunk(args.chunk_length),
        valid=valid,
        method="svi",
        max_epochs=args.epochs or 10**6,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_schedule="constant",
        patience=10**6,
        eval_every=1,
        time_budget=60 * args.minutes,
        seed=args.seed,
        progress=False,
    )
    return model, {
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": len(result.history),
        "stopped": result.stopped,
        "parameters": int(model.num_parameters),
        "best_valid_nats_per_char": (
            None if result.best_valid_log_prob_per_step is None else -result.best_valid_log_prob_per_step
        ),
        # (epoch, seconds, valid nats/char): compares the two at equal epochs when load on a
        # shared machine gave them different numbers of epochs in the same wall time
        "valid_curve": [
            (record["step"], round(record["seconds"], 1), round(-record["valid_log_prob_per_step"], 4))
            for record in result.history
            if record.get("valid_log_prob_per_step") is not None
        ],
    }


def generate(model: RecurrentModel, codes: CharacterCodes, count: int, context: torch.Tensor | None, args) -> list[str]:
    """``count`` paragraphs (cut at the first paragraph end), the same random numbers for every context."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    drawn = model.sample(
        count,
        args.sample_length,
        generator,
        temperature=args.temperature,
        context=None if context is None else context.expand(count, -1),
    )
    return [codes.decode(row).split(END)[0] for row in drawn.values]


def main(args) -> dict:
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    time_range = None
    if args.first_year is not None or args.last_year is not None:
        time_range = (
            -math.inf if args.first_year is None else args.first_year,
            math.inf if args.last_year is None else args.last_year,
        )
    corpus = read_corpus(
        args.data,
        time_column="year",
        text_column="text",
        slice_width=args.slice,
        min_document_frequency=args.min_df,
        time_range=time_range,
    )
    texts = [normalise(t) for t in paragraph_texts(corpus)]
    tokens = (corpus.batch.values[..., 1] * corpus.batch.mask).sum(-1)
    kept = torch.nonzero(tokens >= args.min_tokens).squeeze(-1)
    generator = torch.Generator().manual_seed(args.seed)
    kept = kept[torch.randperm(len(kept), generator=generator)]
    if args.max_docs is not None:
        kept = kept[: args.max_docs]
    num_test = max(2, round(args.test_fraction * len(kept)))
    num_valid = max(2, min(args.max_valid, round(args.valid_fraction * len(kept))))
    if len(kept) < num_test + num_valid + 2:
        raise SystemExit(
            f"only {len(kept)} paragraphs with at least {args.min_tokens} vocabulary tokens; "
            "widen the years or lower --min-tokens"
        )
    split = {
        "test": kept[:num_test],
        "valid": kept[num_test : num_test + num_valid],
        "train": kept[num_test + num_valid :],
    }
    slices = batch_slices(corpus.batch)
    print(
        f"{len(kept)} paragraphs: {len(split['train'])} train, {len(split['valid'])} valid, "
        f"{len(split['test'])} test; vocabulary {len(corpus.vocabulary)} words",
        flush=True,
    )

    # -- the topic model, on the training paragraphs only
    topic_model, topic_fit = fit_topic_model(corpus, corpus.batch[split["train"]], args)
    theta = {name: proportions(topic_model, corpus.batch[index]) for name, index in split.items()}
    test_texts = [texts[i] for i in split["test"].tolist()]
    cuts = [first_half_cut(t) for t in test_texts]
    theta_first_half = proportions(
        topic_model, bags_of_words([t[:c] for t, c in zip(test_texts, cuts)], corpus, slices[split["test"]])
    )
    prevalence = theta["train"].mean(0)
    top_words = topic_model.top_words(corpus.vocabulary, 8, relevance=0.6)[-1]  # the last slice for the DTM
    print(
        f"{args.topic_model} with {args.topics} topics: {topic_fit['epochs']} epochs in {topic_fit['seconds']} s; "
        f"mean largest proportion {float(theta['train'].max(-1).values.mean()):.2f}",
        flush=True,
    )

    # -- the character models
    codes = CharacterCodes([texts[i] + END for i in split["train"].tolist()])
    batches = {}
    for name, index in split.items():
        sequences = [codes.encode(texts[i] + END) for i in index.tolist()]
        batches[name] = SequenceBatch.from_sequences(sequences, covariates={"context": theta[name]})
    unknown_chars = int((batches["test"].values[batches["test"].mask] == codes.index[UNKNOWN]).sum())
    models, fits = {}, {}
    for name, context_dim in (("conditioned", args.topics), ("unconditioned", 0)):
        print(f"training the {name} {args.cell} for {args.minutes} min ...", flush=True)
        models[name], fits[name] = train_rnn(context_dim, len(codes), batches["train"], batches["valid"], args)
        print(
            f"  {fits[name]['epochs']} epochs, best valid {fits[name]['best_valid_nats_per_char']} nats/char",
            flush=True,
        )

    # -- scores on the test paragraphs
    test = batches["test"]
    lengths = test.lengths.double()
    second_half_chars = torch.tensor([len(t) + len(END) - c for t, c in zip(test_texts, cuts)], dtype=torch.float64)
    steps = {
        "conditioned": per_step_log_probs(models["conditioned"], test, theta["test"]),
        "conditioned, first-half θ": per_step_log_probs(models["conditioned"], test, theta_first_half),
        "unconditioned": per_step_log_probs(models["unconditioned"], test, None),
    }
    whole = {name: torch.stack([s.sum() for s in steps[name]]) for name in ("conditioned", "unconditioned")}
    completion = {
        name: torch.stack([s[c:].sum() for s, c in zip(steps[key], cuts)])
        for name, key in (("conditioned", "conditioned, first-half θ"), ("unconditioned", "unconditioned"))
    }
    train_codes = batches["train"].values[batches["train"].mask]
    unigram_counts = torch.bincount(train_codes, minlength=len(codes)).double() + 0.5
    unigram = (unigram_counts / unigram_counts.sum()).log()
    unigram_whole = torch.stack([unigram[test.values[n, : int(test.lengths[n])]].sum() for n in range(len(test))])
    scores = {
        "whole paragraph, θ from the whole paragraph": {
            "conditioned": summarise(whole["conditioned"], lengths),
            "unconditioned": summarise(whole["unconditioned"], lengths),
            "conditioned minus unconditioned": summarise(whole["conditioned"] - whole["unconditioned"], lengths),
            "character unigram": summarise(unigram_whole, lengths),
        },
        "second half, θ from the first half": {
            "conditioned": summarise(completion["conditioned"], second_half_chars),
            "unconditioned": summarise(completion["unconditioned"], second_half_chars),
            "conditioned minus unconditioned": summarise(
                completion["conditioned"] - completion["unconditioned"], second_half_chars
            ),
        },
    }
    for protocol, rows in scores.items():
        print(
            protocol
            + ": "
            + ", ".join(f"{name} {row['nats_per_char']:.4f} ± {row['stderr'] or 0:.4f}" for name, row in rows.items()),
            flush=True,
        )

    # -- samples under one-hot topic vectors, and what the topic model reads in them
    chosen = args.sample_topics or prevalence.argsort(descending=True)[: min(3, args.topics)].tolist()
    samples, topic_check = {}, {}
    unconditioned_text = generate(models["unconditioned"], codes, args.check_samples, None, args)
    unconditioned_bags = bags_of_words(
        unconditioned_text, corpus, torch.full((len(unconditioned_text),), int(slices.max()))
    )
    unconditioned_theta = proportions(topic_model, unconditioned_bags)
    for k in chosen:
        if not 0 <= k < args.topics:
            raise SystemExit(f"--sample-topics: topic {k} is not in [0, {args.topics})")
        one_hot = torch.nn.functional.one_hot(torch.tensor([k]), args.topics).float()
        text = generate(models["conditioned"], codes, args.check_samples, one_hot, args)
        bags = bags_of_words(text, corpus, torch.full((len(text),), int(slices.max())))
        read = proportions(topic_model, bags)
        label = f"topic {k}: {' '.join(top_words[k])}"
        samples[label] = text[: args.samples_shown]
        topic_check[label] = {
            "mean θ_k of conditioned samples": round(float(read[:, k].mean()), 3),
            "mean θ_k of unconditioned samples": round(float(unconditioned_theta[:, k].mean()), 3),
            "mean θ_k of training paragraphs": round(float(prevalence[k]), 3),
            "vocabulary words per conditioned sample": round(token_count(bags), 1),
        }
    samples["unconditioned"] = unconditioned_text[: args.samples_shown]

    report = {
        "command": "python examples/topic_conditioned_text.py " + " ".join(sys.argv[1:])
        if __name__ == "__main__"
        else None,
        "data": str(args.data),
        "years": [args.first_year, args.last_year],
        "paragraphs": {name: len(index) for name, index in split.items()},
        "test_characters": int(test.lengths.sum()),
        "unknown_test_characters": unknown_chars,
        "symbols": len(codes),
        "vocabulary_words": len(corpus.vocabulary),
        "topic_model": {
            "kind": args.topic_model,
            "topics": args.topics,
            **topic_fit,
            "prevalence": [round(float(p), 3) for p in prevalence],
            "mean_largest_proportion": round(float(theta["train"].max(-1).values.mean()), 3),
            "top_words": [" ".join(w) for w in top_words],
        },
        "rnn": {
            "cell": args.cell,
            "hidden": args.hidden,
            "embedding": args.embedding,
            "chunk_length": args.chunk_length,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "minutes_each": args.minutes,
            "max_epochs": args.epochs,
            "threads": torch.get_num_threads(),
            "fits": fits,
        },
        "scores": scores,
        "topic_check": topic_check,
        "unconditioned_sample_words": round(token_count(unconditioned_bags), 1),
        "sampling": {"temperature": args.temperature, "length": args.sample_length, "per_topic": args.check_samples},
        "samples": samples,
    }
    (output / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (output / "summary.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    fits, topic = report["rnn"]["fits"], report["topic_model"]
    lines = [
        "# Topic-conditioned character model on the State of the Union",
        "",
        f"Paragraphs: {report['paragraphs']['train']} train, {report['paragraphs']['valid']} valid, "
        f"{report['paragraphs']['test']} test ({report['test_characters']} test characters, "
        f"{report['unknown_test_characters']} unseen in training). Topic model: {topic['kind']}, "
        f"K = {topic['topics']}, {topic['epochs']} epochs in {topic['seconds']} s; mean largest proportion "
        f"{topic['mean_largest_proportion']}.",
        "",
        f"Character models: {report['rnn']['cell']}, hidden {report['rnn']['hidden']}, embedding "
        f"{report['rnn']['embedding']}, chunks of {report['rnn']['chunk_length']}, batches of "
        f"{report['rnn']['batch_size']}, Adam at {report['rnn']['learning_rate']}, "
        f"{report['rnn']['minutes_each']} min each"
        + ("" if report["rnn"].get("max_epochs") is None else f" and at most {report['rnn']['max_epochs']} epochs")
        + f" on {report['rnn']['threads']} thread(s).",
        "",
        "| model | parameters | epochs | seconds | best valid nats/char |",
        "|---|---|---|---|---|",
    ]
    for name, row in fits.items():
        best = "-" if row["best_valid_nats_per_char"] is None else f"{row['best_valid_nats_per_char']:.4f}"
        lines.append(f"| {name} | {row['parameters']} | {row['epochs']} | {row['seconds']} | {best} |")
    lines += ["", "Validation nats/char after each epoch (the last one may be cut short by the budget):", ""]
    for name, row in fits.items():
        lines.append(f"- {name}: " + ", ".join(f"{value:.4f}" for _, _, value in row["valid_curve"]))
    lines += [
        "",
        "Test nats per character (exact; ± one standard error across documents, ratio estimator):",
        "",
        "| protocol | model | nats/char | ± | characters |",
        "|---|---|---|---|---|",
    ]
    for protocol, rows in report["scores"].items():
        for name, row in rows.items():
            stderr = "-" if row["stderr"] is None else f"{row['stderr']:.4f}"
            lines.append(f"| {protocol} | {name} | {row['nats_per_char']:.4f} | {stderr} | {row['chars']} |")
    lines += ["", "Topics (top words by relevance 0.6) and their prevalence in the training paragraphs:", ""]
    lines += [f"- {k}: {words} ({p})" for k, (words, p) in enumerate(zip(topic["top_words"], topic["prevalence"]))]
    lines += [
        "",
        f"Topic check: the topic model's proportions of {report['sampling']['per_topic']} generated "
        "paragraphs per one-hot topic vector:",
        "",
        "| topic | θ_k, conditioned samples | θ_k, unconditioned samples | θ_k, training paragraphs "
        "| vocabulary words per sample |",
        "|---|---|---|---|---|",
    ]
    for label, row in report["topic_check"].items():
        lines.append(
            f"| {label} | {row['mean θ_k of conditioned samples']} | "
            f"{row['mean θ_k of unconditioned samples']} | {row['mean θ_k of training paragraphs']} | "
            f"{row['vocabulary words per conditioned sample']} |"
        )
    lines += [
        "",
        f"(Unconditioned samples: {report['unconditioned_sample_words']} vocabulary words each on average; "
        "a sample without vocabulary words gets the prior mean proportions.)",
    ]
    lines += [
        "",
        f"Samples (temperature {report['sampling']['temperature']}, up to "
        f"{report['sampling']['length']} characters, cut at the paragraph end; the same random numbers "
        "under every topic):",
        "",
    ]
    for label, texts in report["samples"].items():
        lines += [f"**{label}**", ""] + [f"> {text}" for text in texts] + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--data", default=str(SOTU_PATH), help="corpus CSV with year and text columns (default: builtin SOTU)"
    )
    parser.add_argument("--output", required=True, help="folder for results.json and summary.md")
    parser.add_argument("--first-year", type=float, default=None)
    parser.add_argument("--last-year", type=float, default=None)
    parser.add_argument("--slice", type=float, default=10, help="slice width in years (the DTM's slices)")
    parser.add_argument("--min-df", type=int, default=5, help="minimum document frequency of a word")
    parser.add_argument("--min-tokens", type=int, default=10, help="drop paragraphs with fewer vocabulary tokens")
    parser.add_argument(
        "--max-docs", type=int, default=None, help="use at most this many paragraphs (chosen at random)"
    )
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--max-valid", type=int, default=300, help="cap on validation paragraphs (scored every epoch)")
    parser.add_argument("--topic-model", choices=["lda", "dtm"], default="lda")
    parser.add_argument("--topics", type=int, default=8)
    parser.add_argument("--topic-epochs", type=int, default=30)
    parser.add_argument("--topic-minutes", type=float, default=2.0)
    parser.add_argument("--topic-lr", type=float, default=0.01)
    parser.add_argument("--cell", choices=["gru", "lstm", "rnn"], default="gru")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--chunk-length", type=int, default=200, help="training pieces (truncated backpropagation)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall time of each character model")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="also stop each character model after this many epochs (equal optimiser steps: "
        "immune to the machine's load, unlike the wall-clock budget)",
    )
    parser.add_argument(
        "--sample-topics",
        type=int,
        nargs="+",
        default=None,
        help="topics to sample under (default: the 3 most prevalent)",
    )
    parser.add_argument("--sample-length", type=int, default=400)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--check-samples", type=int, default=20, help="samples per topic read back by the topic model")
    parser.add_argument("--samples-shown", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("topics", "hidden", "embedding", "chunk_length", "batch_size", "sample_length", "check_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    if args.minutes <= 0 or args.topic_minutes <= 0:
        parser.error("--minutes and --topic-minutes: expected positive numbers")
    return args


if __name__ == "__main__":
    main(parse_args())
