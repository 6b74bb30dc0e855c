"""Reports and figures of fitted topic models: top words per topic and slice, topic prevalence
and word drift over the slices."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.corpus import WordVocabulary
from .model import DynamicTopicModel

__all__ = ["drift_figure", "prevalence_figure", "top_words_text"]


# --------------------------------------------------------------------------
# Reports and figures (the command line's and the example's)
# --------------------------------------------------------------------------
def top_words_text(
    model: DynamicTopicModel,
    vocabulary: WordVocabulary,
    slice_labels: list[str],
    num_words: int = 8,
    relevance: float = 1.0,
) -> str:
    """The top ``num_words`` words of every topic at every slice, one line per slice
    (ranked as :meth:`DynamicTopicModel.top_words` ranks them)."""
    top = model.top_words(vocabulary, num_words, relevance=relevance)
    lines = [f"# ranked by relevance lambda = {relevance:g} (1: probability; Sievert & Shirley 2014)"]
    for k in range(model.num_topics):
        lines.append(f"topic {k}")
        lines += [f"  {label}: {' '.join(top[s][k])}" for s, label in enumerate(slice_labels)]
    return "\n".join(lines) + "\n"


def _slice_positions(slice_labels: list[str]) -> tuple[list[float], bool]:
    """Numeric x positions of the slices (their start times), or 0..S-1 when a label is not a number."""
    try:
        return [float(label) for label in slice_labels], True
    except ValueError:
        return [float(s) for s in range(len(slice_labels))], False


def prevalence_figure(
    model: DynamicTopicModel, vocabulary: WordVocabulary, slice_labels: list[str], prevalence: Tensor
):
    """A matplotlib figure of each topic's mean proportion ``prevalence`` ``(S, K)`` over the slices,
    each topic labelled by its three most relevant words at the last slice."""
    from matplotlib.figure import Figure

    x, numeric = _slice_positions(slice_labels)
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    words = model.top_words(vocabulary, 3, relevance=0.6)
    for k in range(model.num_topics):
        ax.plot(x, prevalence[:, k].numpy(), label=f"{k}: {' '.join(words[-1][k])}")
    if not numeric:
        ax.set_xticks(x, slice_labels)
    ax.set_xlabel("slice (start)")
    ax.set_ylabel("mean topic proportion")
    ax.set_title("Topic prevalence over time")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def drift_figure(
    model: DynamicTopicModel,
    vocabulary: WordVocabulary,
    slice_labels: list[str],
    topics: tuple[int, ...] = (0, 1, 2),
    words_per_slice: int = 2,
):
    """A matplotlib figure, one panel per topic in ``topics``: the probability over the slices of
    every word that is among the topic's ``words_per_slice`` most relevant (lambda = 0.6) at some slice."""
    from matplotlib.figure import Figure

    x, numeric = _slice_positions(slice_labels)
    probs = torch.softmax(model.topic_word_logits(), -1)  # (S, K, V)
    relevant = model.top_words(vocabulary, words_per_slice, relevance=0.6)
    topics = tuple(k for k in topics if k < model.num_topics)
    fig = Figure(figsize=(5 * len(topics), 4))
    axes = fig.subplots(1, len(topics), squeeze=False)[0]
    for ax, k in zip(axes, topics):
        chosen = sorted({vocabulary.encode([w])[0] for s in range(model.num_slices) for w in relevant[s][k]})
        for v in chosen:
            ax.plot(x, probs[:, k, v].numpy(), label=vocabulary.words[v])
        if not numeric:
            ax.set_xticks(x, slice_labels)
        ax.set_title(f"topic {k}")
        ax.set_xlabel("slice (start)")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("word probability")
    fig.tight_layout()
    return fig
