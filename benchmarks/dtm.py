"""Dynamic topic models: ours (SVI, Markov guide, amortised encoder) against gensim's ``LdaSeqModel``
(Blei & Lafferty's variational Kalman filter EM) and gensim's static ``LdaModel``, on the same SOTU
split, in one run. gensim is a bench extra (``pip install gensim``); without it only ours runs.

Protocol (as in issue 12): paragraphs of the chosen years, slices of ``--slice`` years, the held-out
paragraphs' tokens split at random into halves; every model infers a held-out paragraph's topic
proportions from the first half and scores the second; per-word perplexity. Proportions: ours — MAP
under our fitted logistic-normal prior N(alpha_t, I); gensim's — the same fold-in for all gensim
models: MAP of theta under a symmetric Dirichlet(``--alpha``) by EM on the observed half (100
iterations), with the model's topics at the paragraph's slice.

    python benchmarks/dtm.py                                  # small: 1990-2009, K=5
    python benchmarks/dtm.py --first-year 1946 --last-year 2000 --slice 5 --topics 10 --gensim-em-iterations 20
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference  # noqa: F401
from zoo.data.corpus import SOTU_PATH, batch_slices, read_corpus, split_document_halves
from zoo.dtm import DynamicTopicModel, StaticTopicModel, unigram_completion


def fold_in_perplexity(topic_word: np.ndarray, observed, held, alpha: float, iterations: int = 100) -> float:
    """Per-word perplexity of the held-out halves with theta the MAP under Dirichlet(alpha) of the
    observed halves. ``topic_word``: (S, K, V) probabilities."""
    K = topic_word.shape[1]
    slices = batch_slices(observed).numpy()
    total, tokens = 0.0, 0
    for n in range(observed.num_sequences):
        ids = observed.values[n, : int(observed.lengths[n]), 0].numpy()
        counts = observed.values[n, : int(observed.lengths[n]), 1].numpy().astype(float)
        phi = topic_word[slices[n]][:, ids]  # (K, L)
        theta = np.full(K, 1.0 / K)
        for _ in range(iterations):  # EM for the MAP (alpha >= 1) / posterior-mode-like fixed point
            responsibility = theta[:, None] * phi
            responsibility /= responsibility.sum(0, keepdims=True)
            theta = np.maximum((responsibility * counts).sum(1) + alpha - 1, 1e-12)
            theta /= theta.sum()
        held_ids = held.values[n, : int(held.lengths[n]), 0].numpy()
        held_counts = held.values[n, : int(held.lengths[n]), 1].numpy()
        total += float((held_counts * np.log(theta @ topic_word[slices[n]][:, held_ids])).sum())
        tokens += int(held_counts.sum())
    return math.exp(-total / tokens)


def to_gensim(batch):
    return [
        list(
            zip(
                batch.values[n, : int(batch.lengths[n]), 0].tolist(),
                batch.values[n, : int(batch.lengths[n]), 1].tolist(),
            )
        )
        for n in range(batch.num_sequences)
    ]


def train_ours(model, batch, epochs, batch_size, learning_rate, seed):
    from inference.batch import iterate_minibatches

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.initialize_from_data(batch, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    start = time.perf_counter()
    for _ in range(epochs):
        for minibatch in iterate_minibatches(batch, batch_size, generator):
            optimizer.zero_grad()
            model.loss(minibatch).backward()
            optimizer.step()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-year", type=float, default=1990)
    parser.add_argument("--last-year", type=float, default=2009)
    parser.add_argument("--slice", type=float, default=5)
    parser.add_argument("--topics", type=int, default=5)
    parser.add_argument("--min-df", type=int, default=5)
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--topic-drift", type=float, default=0.2)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet alpha of gensim models' fold-in")
    parser.add_argument("--gensim-em-iterations", type=int, default=3, help="LdaSeqModel em_max_iter")
    parser.add_argument("--skip-gensim-dtm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    corpus = read_corpus(
        SOTU_PATH,
        slice_width=args.slice,
        min_document_frequency=args.min_df,
        time_range=(args.first_year, args.last_year),
    )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(corpus.num_documents, generator=generator)
    num_held = int(round(args.held_out * corpus.num_documents))
    held, train = corpus.batch[order[:num_held].sort().values], corpus.batch[order[num_held:].sort().values]
    observed, held_half = split_document_halves(held, generator)
    V, S, K = len(corpus.vocabulary), corpus.num_slices, args.topics
    results = {
        "documents": corpus.num_documents,
        "train": len(train),
        "held_out": len(held),
        "vocabulary": V,
        "slices": S,
        "topics": K,
        "perplexity": {},
        "seconds": {},
    }
    print(f"{corpus.num_documents} paragraphs, {V} words, {S} slices; K={K}", flush=True)
    results["perplexity"]["unigram"] = unigram_completion(train, held_half, V).perplexity

    for name, model in (
        ("ours_dtm", DynamicTopicModel(V, K, S, topic_drift=args.topic_drift)),
        ("ours_lda", StaticTopicModel(V, K)),
    ):
        results["seconds"][name] = train_ours(model, train, args.epochs, args.batch_size, args.learning_rate, args.seed)
        results["perplexity"][name] = model.complete_documents(observed, held_half).perplexity
        print(name, results["perplexity"][name], f"{results['seconds'][name]:.1f} s", flush=True)

    try:
        from gensim.models import LdaModel, LdaSeqModel
    except ImportError:
        print("gensim is not installed (pip install gensim): compared ours only")
    else:
        docs = to_gensim(train)  # sorted by time (train indices are sorted), as LdaSeqModel needs
        id2word = dict(enumerate(corpus.vocabulary.words))
        start = time.perf_counter()
        lda = LdaModel(docs, num_topics=K, id2word=id2word, passes=10, alpha=0.1, random_state=args.seed)
        results["seconds"]["gensim_lda"] = time.perf_counter() - start
        topic_word = np.broadcast_to(lda.get_topics(), (S, K, V))
        results["perplexity"]["gensim_lda"] = fold_in_perplexity(topic_word, observed, held_half, args.alpha)
        print(
            "gensim_lda", results["perplexity"]["gensim_lda"], f"{results['seconds']['gensim_lda']:.1f} s", flush=True
        )
        if not args.skip_gensim_dtm:
            time_slice = torch.bincount(batch_slices(train), minlength=S).tolist()
            start = time.perf_counter()
            ldaseq = LdaSeqModel(
                corpus=docs,
                id2word=id2word,
                time_slice=time_slice,
                num_topics=K,
                em_min_iter=1,
                em_max_iter=args.gensim_em_iterations,
                random_state=args.seed,
            )
            results["seconds"]["gensim_ldaseq"] = time.perf_counter() - start
            results["gensim_ldaseq_em_iterations"] = args.gensim_em_iterations
            # e_log_prob: (V, S) per topic
            topic_word = np.exp(np.stack([chain.e_log_prob.T for chain in ldaseq.topic_chains], 1))  # (S, K, V)
            topic_word /= topic_word.sum(-1, keepdims=True)
            results["perplexity"]["gensim_ldaseq"] = fold_in_perplexity(topic_word, observed, held_half, args.alpha)
            print(
                "gensim_ldaseq",
                results["perplexity"]["gensim_ldaseq"],
                f"{results['seconds']['gensim_ldaseq']:.1f} s",
                flush=True,
            )
    results["fold_in_alpha"] = args.alpha
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
