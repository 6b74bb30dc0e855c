"""Document-level kernels of the topic models, pure tensor code: the likelihood with topic
assignments summed out, document completion scores, each document's local (Newton/Laplace)
posterior over its topic logits, static EM and the k-means seeding of topics."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from inference.batch import SequenceBatch

__all__ = ["CompletionScore", "LocalPosterior", "cluster_documents", "document_log_likelihood", "unigram_completion"]


# --------------------------------------------------------------------------
# The likelihood, topic assignments summed out
# --------------------------------------------------------------------------
def document_log_likelihood(
    eta: Tensor, topic_word_logits: Tensor, word_ids: Tensor, counts: Tensor, slices: Tensor
) -> Tensor:
    r"""Log-likelihood of bag-of-words documents with each word's topic summed out.

    :math:`\sum_i c_{d,i} \log \sum_k \mathrm{softmax}(\eta_d)_k\, \mathrm{softmax}(\beta_{t(d),k})_{w_{d,i}}`.

    Args:
        eta: ``(*sample, N, K)`` topic logits of each document.
        topic_word_logits: ``(*sample, S, K, V)`` :math:`\beta`.
        word_ids: ``(N, L)`` int64 word ids.
        counts: ``(N, L)`` counts (0 on padding).
        slices: ``(N,)`` int64 slice of each document.

    Returns:
        ``(*sample, N)`` log-likelihoods.
    """
    log_topic_word = torch.log_softmax(topic_word_logits, -1).transpose(-1, -2)  # (*sample, S, V, K)
    # (*sample, N, L, K): each document's words under each topic of its slice
    log_word_topic = log_topic_word[..., slices[:, None], word_ids, :]
    log_theta = torch.log_softmax(eta, -1).unsqueeze(-2)  # (*sample, N, 1, K)
    log_word = torch.logsumexp(log_theta + log_word_topic, -1)  # (*sample, N, L)
    return (counts.to(log_word.dtype) * log_word).sum(-1)


class CompletionScore(NamedTuple):
    """Held-out log-likelihood of documents' second halves given their first halves.

    Attributes:
        log_prob: ``(N,)`` nats of each document's held-out words.
        num_tokens: ``(N,)`` held-out tokens per document.
    """

    log_prob: Tensor
    num_tokens: Tensor

    @property
    def perplexity(self) -> float:
        """Per-word perplexity ``exp(-sum log_prob / sum num_tokens)``."""
        return math.exp(-float(self.log_prob.sum()) / float(self.num_tokens.sum()))


def unigram_completion(
    train: SequenceBatch, held_out: SequenceBatch, num_words: int, pseudo_count: float = 0.5
) -> CompletionScore:
    """The unigram baseline: every word drawn from the training corpus's word
    frequencies (``pseudo_count`` added to every word)."""
    totals = torch.full((num_words,), float(pseudo_count), dtype=torch.float64)
    totals.scatter_add_(0, train.values[..., 0].reshape(-1), (train.values[..., 1] * train.mask).reshape(-1).double())
    log_p = (totals / totals.sum()).log()
    counts = (held_out.values[..., 1] * held_out.mask).double()
    return CompletionScore((counts * log_p[held_out.values[..., 0]]).sum(-1), counts.sum(-1).long())


class LocalPosterior(NamedTuple):
    r"""Documents' Gaussian posteriors over their topic logits :math:`\eta_d`.

    Attributes:
        loc: ``(N, K)`` means (the MAP of :math:`\eta_d` when converged).
        cov: ``(N, K, K)`` covariances (inverse curvature at ``loc``).
        start: ``(N, K)`` the encoder's means the Newton steps started from.
    """

    loc: Tensor
    cov: Tensor
    start: Tensor


def _gaussian_kl_to_isotropic(loc: Tensor, cov: Tensor, prior_loc: Tensor, prior_scale: float) -> Tensor:
    """``KL(N(loc, cov) || N(prior_loc, prior_scale^2 I))``: ``loc`` ``(N, K)``, ``cov`` ``(N, K, K)``,
    ``prior_loc`` ``(*sample, N, K)`` -> ``(*sample, N)``."""
    K = loc.shape[-1]
    variance = prior_scale**2
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1) / variance
    mahalanobis = ((loc - prior_loc) ** 2).sum(-1) / variance
    return 0.5 * (trace + mahalanobis - K + K * math.log(variance) - torch.logdet(cov))


def _split_batch(batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """``(N, L)`` word ids and counts (0 on padding) of a bag-of-words batch."""
    if batch.values.dim() != 3 or batch.values.shape[-1] != 2 or batch.values.is_floating_point():
        raise ValueError(
            f"batch.values: expected (N, L, 2) int64 (word id, count) pairs from zoo.data.corpus, "
            f"got {tuple(batch.values.shape)} {batch.values.dtype}"
        )
    return batch.values[..., 0], batch.values[..., 1] * batch.mask


def _document_curvature(theta: Tensor, totals: Tensor, precision: float) -> Tensor:
    """``(N, K, K)`` curvature :math:`n_d(\\mathrm{diag}\\,\theta_d - \theta_d\theta_d^\top) + \\mathrm{precision}\\, I`
    of :func:`_newton_document_modes`'s bound; ``theta`` ``(N, K)``, ``totals`` ``(N, 1)``."""
    eye = torch.eye(theta.shape[-1], dtype=theta.dtype)
    return totals[..., None] * (torch.diag_embed(theta) - theta[:, :, None] * theta[:, None, :]) + precision * eye


def _newton_document_modes(
    eta: Tensor,
    document: Tensor,
    log_word_topic: Tensor,
    counts: Tensor,
    prior_loc: Tensor,
    precision: float,
    steps: int,
    tolerance: float,
) -> Tensor:
    r"""``(N, K)`` modes of :math:`\log p(w_d \mid \eta_d) + \log N(\eta_d; \mathrm{prior\_loc}, I/\mathrm{precision})`
    by Newton steps from ``eta`` on the bound that holds the responsibilities fixed.

    Args:
        eta: ``(N, K)`` start.
        document, log_word_topic, counts: the flat (document, word) pairs (:func:`_flat_words`):
            ``(nnz,)`` document of each pair, ``(nnz, K)`` log probability of its word under each
            topic (of the document's slice), ``(nnz,)`` float counts.
        prior_loc: ``(N, K)``; precision: ``annealing / a^2`` (> 0).
    """
    N = eta.shape[0]
    totals = torch.zeros(N, dtype=counts.dtype).index_add_(0, document, counts)[:, None]  # (N, 1)
    for _ in range(steps):
        log_theta = torch.log_softmax(eta, -1)
        responsibilities = torch.softmax(log_theta[document] + log_word_topic, -1)  # (nnz, K)
        expected = torch.zeros_like(eta).index_add_(0, document, counts[:, None] * responsibilities)  # (N, K)
        theta = log_theta.exp()
        gradient = expected - totals * theta - precision * (eta - prior_loc)
        # clamped: a document far from its start must not jump past the mode in one step
        step = torch.linalg.solve(_document_curvature(theta, totals, precision), gradient).clamp(-5.0, 5.0)
        eta = eta + step
        if float(step.abs().max()) < tolerance:
            break
    return eta


def _flat_words(word_ids: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The non-padding (document, word id, count) triples of a padded bag-of-words layout, each
    ``(nnz,)``: paragraphs of ~35 distinct words padded to a batch's longest (~400) waste ~10x."""
    document, position = torch.nonzero(counts > 0, as_tuple=True)
    return document, word_ids[document, position], counts[document, position].float()


def _static_em(
    word_ids: Tensor, counts: Tensor, log_topics: Tensor, iterations: int, precision: float = 1.0, newton_steps: int = 3
) -> tuple[Tensor, float]:
    """EM for static logistic-normal LDA with point topics: ``(K, V)`` log topics refined for
    ``iterations`` (MAP ``eta_d`` by warm-started Newton steps on the responsibility bound, then
    topics proportional to the expected word-topic counts + 0.1). Returns the log topics and the
    final mean per-document objective (log-likelihood at the modes + log prior, up to a constant).
    Works on the flat (document, word, count) triples."""
    N, K = word_ids.shape[0], log_topics.shape[0]
    document, words, counts = _flat_words(word_ids, counts)
    eta = prior_loc = torch.zeros(N, K)
    objective = -math.inf
    for iteration in range(iterations + 1):
        log_word_topic = log_topics.T[words]  # (nnz, K)
        eta = _newton_document_modes(eta, document, log_word_topic, counts, prior_loc, precision, newton_steps, 0.0)
        joint = torch.log_softmax(eta, -1)[document] + log_word_topic  # (nnz, K)
        log_lik = torch.zeros(N).index_add_(0, document, counts * torch.logsumexp(joint, -1))
        objective = float((log_lik - 0.5 * precision * (eta**2).sum(-1)).mean())
        if iteration == iterations:
            break
        weighted = counts[:, None] * torch.softmax(joint, -1)  # (nnz, K)
        expected_counts = torch.full((log_topics.shape[1], K), 0.1).index_add_(0, words, weighted)
        log_topics = torch.log(expected_counts / expected_counts.sum(0)).T.contiguous()
    return log_topics, objective


def cluster_documents(
    word_ids: Tensor,
    counts: Tensor,
    num_words: int,
    num_clusters: int,
    *,
    generator: torch.Generator | None = None,
    iterations: int = 10,
) -> Tensor:
    """Spherical k-means of bag-of-words documents on their unit-length tf-idf vectors, sparse.

    k-means++ seeding (each next centre drawn with probability proportional to the cosine distance
    to the nearest chosen one), then ``iterations`` Lloyd steps. Similarities are summed over each
    document's (word, count) pairs, never through a dense documents x vocabulary matrix.

    Args:
        word_ids: ``(N, L)`` int64 word ids; counts: ``(N, L)`` counts (0 on padding).
        num_words: ``V``; num_clusters: ``C`` (at most ``N``).

    Returns:
        ``(N,)`` int64 cluster of each document.
    """
    N = word_ids.shape[0]
    if not 1 <= num_clusters <= N:
        raise ValueError(f"num_clusters: expected 1..{N} (the number of documents), got {num_clusters}")
    document, words, counts = _flat_words(word_ids, counts)
    document_frequency = torch.zeros(num_words).index_add_(0, words, torch.ones_like(counts))
    weights = counts * (torch.log((N + 1) / (document_frequency[words] + 1)) + 1)  # tf-idf, (nnz,)
    norms = torch.zeros(N).index_add_(0, document, weights**2).sqrt().clamp(min=1e-12)
    weights = weights / norms[document]  # unit-length documents

    def similarity(centres: Tensor) -> Tensor:  # (C, V) -> (N, C) cosine similarities
        return torch.zeros(N, centres.shape[0]).index_add_(0, document, weights[:, None] * centres.T[words])

    def centre_of(members: Tensor) -> Tensor:  # (N,) bool -> (V,) unit centre
        chosen = members[document]
        centre = torch.zeros(num_words).index_add_(0, words[chosen], weights[chosen])
        return centre / centre.norm().clamp(min=1e-12)

    first = torch.randint(0, N, (1,), generator=generator)
    centres = [centre_of(torch.arange(N) == first)]
    distance = 1 - similarity(centres[0][None]).squeeze(-1)
    for _ in range(1, num_clusters):
        probabilities = distance.clamp(min=0) + 1e-12
        chosen = torch.multinomial(probabilities / probabilities.sum(), 1, generator=generator)
        centres.append(centre_of(torch.arange(N) == chosen))
        distance = torch.minimum(distance, 1 - similarity(centres[-1][None]).squeeze(-1))
    centres = torch.stack(centres)
    labels = similarity(centres).argmax(-1)
    for _ in range(iterations):
        for c in range(num_clusters):
            if bool((labels == c).any()):  # an emptied cluster keeps its centre
                centres[c] = centre_of(labels == c)
        new_labels = similarity(centres).argmax(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels
