"""Command-line registration of the ``dtm`` and ``lda`` families (importing it registers both)."""

from __future__ import annotations

from typing import Any

import torch

from ..data.corpus import batch_slices
from ..registry import Family, UsageError, register
from .documents import unigram_completion
from .figures import drift_figure, prevalence_figure, top_words_text
from .model import DynamicTopicModel, StaticTopicModel


# --------------------------------------------------------------------------
# Registry entries (zoo/registry.py, docs/families.md): `seqzoo fit dtm|lda`, compare specs dtm:...|lda:...
# --------------------------------------------------------------------------
def _add_lda_arguments(group) -> None:
    group.add_argument("--topics", type=int, default=20, help="number of topics K (default 20)")


def _add_dtm_arguments(group) -> None:
    _add_lda_arguments(group)
    group.add_argument("--topic-drift", type=float, default=0.2, help="step scale of the topics' word logits (0.2)")


def _topic_settings(args) -> dict[str, str]:
    settings = {"topics": str(args.topics)}
    if getattr(args, "topic_drift", None) is not None:
        settings["topic_drift"] = str(args.topic_drift)
    return settings


def _corpus_sizes(data) -> tuple[int, int]:
    """``(V, S)`` of corpus data (:class:`zoo.data.corpus.CorpusData`)."""
    words, labels = getattr(data, "words", None), getattr(data, "slice_labels", None)
    if words is None or labels is None:
        raise UsageError("dtm/lda: expected corpus data (--data builtin:sotu, or a CSV with --text-column)")
    return len(words), len(labels)


def _topic_options(name: str, settings: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, convert in (("topics", int), ("topic_drift", float)):
        if key in settings:
            try:
                options[key] = convert(settings[key])
            except ValueError:
                raise UsageError(f"{name}: {key} must be a number, got {settings[key]!r}") from None
    return options


def _build_dtm(data, settings: dict[str, str]) -> DynamicTopicModel:
    num_words, num_slices = _corpus_sizes(data)
    options = _topic_options("dtm", settings)
    try:
        return DynamicTopicModel(
            num_words, options.get("topics", 20), num_slices, topic_drift=options.get("topic_drift", 0.2)
        )
    except ValueError as error:
        raise UsageError(f"dtm: {error}") from None


def _build_lda(data, settings: dict[str, str]) -> StaticTopicModel:
    num_words, _ = _corpus_sizes(data)
    try:
        return StaticTopicModel(num_words, _topic_options("lda", settings).get("topics", 20))
    except ValueError as error:
        raise UsageError(f"lda: {error}") from None


def _corpus_outputs(run, model: DynamicTopicModel, splits, data) -> None:
    """What `seqzoo fit dtm|lda` writes beside the scores: top words per topic per slice,
    topic prevalence over time (CSV and figure), three topics' drifting words, and the
    held-out perplexity by document completion beside the unigram baseline."""
    from ..data.corpus import split_document_halves

    vocabulary, labels = data.words, list(data.slice_labels)
    train = splits.train.batch
    # Static LDA has one set of topics for every slice.
    topic_labels = labels if model.num_slices == len(labels) else ["all slices"]
    run.write_text("top_words.txt", top_words_text(model, vocabulary, topic_labels))
    run.write_text("top_words_relevance.txt", top_words_text(model, vocabulary, topic_labels, relevance=0.6))
    # (S, K) mean proportions of each data slice's training documents (NaN for a slice without one)
    slices = batch_slices(train)
    sums = torch.zeros(len(labels), model.num_topics).index_add_(0, slices, model.document_proportions(train))
    prevalence = sums / torch.bincount(slices, minlength=len(labels)).unsqueeze(-1)
    rows = ["slice," + ",".join(f"topic{k}" for k in range(model.num_topics))]
    rows += [f"{label}," + ",".join(f"{float(p):.6g}" for p in prevalence[s]) for s, label in enumerate(labels)]
    run.write_text("topic_prevalence.csv", "\n".join(rows) + "\n")
    run.save_figure("topic_prevalence.png", prevalence_figure(model, vocabulary, labels, prevalence))
    if model.num_slices > 1:
        run.save_figure("topic_drift.png", drift_figure(model, vocabulary, labels))
    held = splits.test if splits.test is not None else splits.valid
    if held is None:
        return
    tokens = (held.batch.values[..., 1] * held.batch.mask).sum(-1)
    held_batch = held.batch[torch.nonzero(tokens >= 2).squeeze(-1)]
    if held_batch.num_sequences == 0:
        return
    observed, held_half = split_document_halves(held_batch, torch.Generator().manual_seed(0))
    completion = model.complete_documents(observed, held_half)
    unigram = unigram_completion(train, held_half, model.num_words)
    run.write_json(
        "completion.json",
        {
            "protocol": "document completion: each held-out document's tokens split at random into halves; "
            "eta is the MAP given the first half under the fitted prior N(alpha_t, a^2 I) with the "
            "posterior-mean topics; the second half is scored; unigram = training frequencies + 0.5",
            "part": "test" if splits.test is not None else "valid",
            "documents": held_batch.num_sequences,
            "scored_tokens": int(completion.num_tokens.sum()),
            "perplexity": {type(model).family: completion.perplexity, "unigram": unigram.perplexity},
        },
    )


register(
    Family(
        name="dtm",
        help="dynamic topic model (topics drift over time slices)",
        add_arguments=_add_dtm_arguments,
        settings_from_args=_topic_settings,
        build=_build_dtm,
        label=lambda s: f"dtm-topics{s.get('topics', 20)}",
        model_classes=(DynamicTopicModel,),
        data_kinds=("corpus",),
        plots=_corpus_outputs,
    )
)
register(
    Family(
        name="lda",
        help="static logistic-normal LDA (the DTM with one slice)",
        add_arguments=_add_lda_arguments,
        settings_from_args=_topic_settings,
        build=_build_lda,
        label=lambda s: f"lda-topics{s.get('topics', 20)}",
        model_classes=(StaticTopicModel,),
        data_kinds=("corpus",),
        plots=_corpus_outputs,
    )
)
