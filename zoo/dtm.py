r"""Dynamic topic models (Blei & Lafferty, ICML 2006), static LDA, and the discrete Kalman filter.

**The dynamic topic model.** Documents ``d`` carry a time slice ``t(d)`` in
``0..S-1``. K topics have word logits :math:`\beta_{t,k} \in \mathbb R^V` that
drift as Gaussian random walks, and the slices' mean topic logits
:math:`\alpha_t \in \mathbb R^K` drift likewise:

.. math::
    \beta_{0,k} \sim N(0, \sigma_0^2 I),\quad \beta_{t,k} \mid \beta_{t-1,k} \sim N(\beta_{t-1,k}, \gamma^2 I),\\
    \alpha_0 \sim N(0, \sigma_\alpha^2 I),\quad \alpha_t \mid \alpha_{t-1} \sim N(\alpha_{t-1}, \delta^2 I),\\
    \eta_d \sim N(\alpha_{t(d)}, a^2 I),\quad \theta_d = \mathrm{softmax}(\eta_d),\quad
    w_{d,i} \sim \textstyle\sum_k \theta_{d,k}\, \mathrm{softmax}(\beta_{t(d),k}).

The word's topic assignment is summed out exactly (the mixture above), so a
document's likelihood is :math:`\sum_{v} c_{d,v} \log \sum_k \theta_{d,k}
\phi_{t(d),k,v}` over its *distinct* words ``v`` with counts ``c`` (the
sparse ``(id, count)`` layout of :mod:`zoo.data.corpus`; it equals the per-token
likelihood of the ordered words). Static LDA (:class:`StaticTopicModel`) is the
same code with one slice (a logistic-normal prior on the proportions, as in
the DTM paper's comparison, not a Dirichlet).

**Guides.** Each topic's chain :math:`\beta_{0:S-1,k}` (and the chain of
:math:`\alpha`) gets a structured Gauss-Markov guide, elementwise per word:

.. math:: q(\beta_t \mid \beta_{t-1}) = N\big(m_t + \rho_t (\beta_{t-1} - m_{t-1}),\ s_t^2\big),

the family of the Kalman-smoother posterior of a random walk (marginal
variances :math:`v_t = \rho_t^2 v_{t-1} + s_t^2`, lag-one covariances
:math:`\rho_t v_{t-1}`). We fit it by SVI instead of Blei & Lafferty's
variational Kalman filter because that filter needs a Gaussian
pseudo-observation variance that changes at every slice (and iterates to a
fixed point per topic and word), while the Markov guide gives the same
family, a closed-form KL divergence to the random-walk prior
(:func:`markov_normal_kl`, registered with ``torch.distributions.kl`` so
``TraceMeanField_ELBO`` uses it) and mini-batches over documents. Each
document's :math:`\eta_d` comes from an amortised encoder: an MLP on the bag of
words (a sum of word embeddings weighted by ``log(1 + count)``, never a dense
documents x vocabulary matrix), whose mean is an offset from the guide's mean
of :math:`\alpha_{t(d)}`.

**The discrete Kalman filter** (:class:`DiscreteKalmanFilter`): one Gaussian
state per slice, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, \Gamma)`, and the
slice's words :math:`W_t \sim \mathrm{Softmax}(B S_t)`. The softmax likelihood
is replaced by its Gaussian (Laplace) approximation at a linearisation point,
a pseudo-observation :math:`y_t = S_t + \epsilon_t`,
:math:`\epsilon_t \sim N(0, R_t)`, so filtering and smoothing are a Kalman
filter with a time-varying observation covariance ``R_t``; iterating the
linearisation at the smoothed means gives the Laplace posterior.

Shapes: ``S`` slices, ``K`` topics, ``V`` words, ``N`` documents, ``L`` distinct
words of the longest document.

References:
    D. Blei and J. Lafferty, "Dynamic topic models", ICML 2006.
"""

from __future__ import annotations

import dataclasses

import math
from typing import Any, ClassVar, NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.kalman import kalman_smoother_varying_noise

from .data.corpus import WordVocabulary, bag_of_words_batch, batch_slices
from .registry import Family, UsageError, register

__all__ = [
    "CompletionScore",
    "DiscreteKalmanFilter",
    "DynamicTopicModel",
    "LaplacePosterior",
    "LocalPosterior",
    "MarkovNormal",
    "RandomWalkNormal",
    "StaticTopicModel",
    "cluster_documents",
    "document_log_likelihood",
    "drift_figure",
    "markov_normal_kl",
    "prevalence_figure",
    "top_words_text",
    "unigram_completion",
]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------
# Gaussian chains over slices: the random-walk prior and the Markov guide
# --------------------------------------------------------------------------
class RandomWalkNormal(TorchDistribution):
    r"""A Gaussian random walk over ``S`` slices of ``D`` independent coordinates.

    :math:`x_0 \sim N(0, \sigma_0^2)`, :math:`x_t \mid x_{t-1} \sim N(x_{t-1}, \gamma^2)`,
    elementwise. ``event_shape`` is ``(S, D)``.

    Args:
        initial_scale: :math:`\sigma_0` (float or broadcastable to ``(D,)``).
        drift_scale: :math:`\gamma` (the random walk's step scale).
        num_slices: ``S``.
        dim: ``D``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(self, initial_scale: float | Tensor, drift_scale: float | Tensor, num_slices: int, dim: int,
                 validate_args=None) -> None:
        self.initial_scale = torch.as_tensor(initial_scale, dtype=torch.get_default_dtype())
        self.drift_scale = torch.as_tensor(drift_scale, dtype=torch.get_default_dtype())
        self.num_slices, self.dim = int(num_slices), int(dim)
        super().__init__(torch.Size(), torch.Size((self.num_slices, self.dim)), validate_args=validate_args)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        with torch.no_grad():
            steps = torch.randn(shape)
            steps[..., :1, :] *= self.initial_scale
            steps[..., 1:, :] *= self.drift_scale
            return steps.cumsum(-2)

    def log_prob(self, value: Tensor) -> Tensor:
        first = dist.Normal(0.0, self.initial_scale).log_prob(value[..., 0, :]).sum(-1)
        steps = dist.Normal(0.0, self.drift_scale).log_prob(value[..., 1:, :] - value[..., :-1, :]).sum((-2, -1))
        return first + steps


class MarkovNormal(TorchDistribution):
    r"""A Gauss-Markov chain over ``S`` slices, elementwise over ``D`` coordinates.

    :math:`x_0 = m_0 + s_0 \epsilon_0`,
    :math:`x_t = m_t + \rho_t (x_{t-1} - m_{t-1}) + s_t \epsilon_t`. Means are
    ``loc``; marginal variances :math:`v_t = \rho_t^2 v_{t-1} + s_t^2`.
    ``event_shape`` is ``(S, D)``.

    Args:
        loc: ``(S, D)`` means :math:`m`.
        scale: ``(S, D)`` positive innovation scales :math:`s`.
        coupling: ``(S, D)`` coefficients :math:`\rho` (row 0 unused).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "coupling": constraints.real}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, coupling: Tensor, validate_args=None) -> None:
        if loc.dim() != 2 or scale.shape != loc.shape or coupling.shape != loc.shape:
            raise ValueError(
                f"loc, scale, coupling: expected equal (S, D) shapes, got {tuple(loc.shape)}, "
                f"{tuple(scale.shape)}, {tuple(coupling.shape)}"
            )
        self.loc, self.scale, self.coupling = loc, scale, coupling
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        noise = self.scale * torch.randn(torch.Size(sample_shape) + self.event_shape, dtype=self.loc.dtype)
        deviations = [noise[..., 0, :]]
        for t in range(1, self.event_shape[0]):
            deviations.append(self.coupling[t] * deviations[-1] + noise[..., t, :])
        return self.loc + torch.stack(deviations, -2)

    def log_prob(self, value: Tensor) -> Tensor:
        deviation = value - self.loc
        innovation = torch.cat([deviation[..., :1, :], deviation[..., 1:, :] - self.coupling[1:] * deviation[..., :-1, :]], -2)
        return dist.Normal(0.0, self.scale).log_prob(innovation).sum((-2, -1))

    def marginal_variance(self) -> Tensor:
        """``(S, D)`` marginal variances :math:`v_t`."""
        variances = [self.scale[0] ** 2]
        for t in range(1, self.event_shape[0]):
            variances.append(self.coupling[t] ** 2 * variances[-1] + self.scale[t] ** 2)
        return torch.stack(variances, 0)

    def entropy(self) -> Tensor:
        return (0.5 * (1 + _LOG_2PI) + self.scale.log()).sum()


def markov_normal_kl(q: MarkovNormal, p: RandomWalkNormal) -> Tensor:
    r"""Closed-form :math:`\mathrm{KL}(q \,\|\, p)` of a Markov guide from a random-walk prior.

    :math:`E_q[(x_t - x_{t-1})^2] = (m_t - m_{t-1})^2 + v_t + v_{t-1} - 2 \rho_t v_{t-1}
    = (m_t - m_{t-1})^2 + s_t^2 + (1 - \rho_t)^2 v_{t-1}`.
    """
    variance = q.marginal_variance()  # (S, D)
    s0, g = p.initial_scale, p.drift_scale
    first = 0.5 * (2 * torch.log(s0 * torch.ones_like(q.loc[0])) + _LOG_2PI) + (q.loc[0] ** 2 + variance[0]) / (2 * s0**2)
    # v_t + v_{t-1} - 2 rho_t v_{t-1} = s_t^2 + (1 - rho_t)^2 v_{t-1}: no cancellation when gamma is tiny
    cross = (q.loc[1:] - q.loc[:-1]) ** 2 + q.scale[1:] ** 2 + (1 - q.coupling[1:]) ** 2 * variance[:-1]
    steps = 0.5 * (2 * torch.log(g * torch.ones_like(cross)) + _LOG_2PI) + cross / (2 * g**2)
    return first.sum() + steps.sum() - q.entropy()


register_kl(MarkovNormal, RandomWalkNormal)(markov_normal_kl)


# --------------------------------------------------------------------------
# The likelihood, topic assignments summed out
# --------------------------------------------------------------------------
def document_log_likelihood(eta: Tensor, topic_word_logits: Tensor, word_ids: Tensor, counts: Tensor,
                            slices: Tensor) -> Tensor:
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


def unigram_completion(train: SequenceBatch, held_out: SequenceBatch, num_words: int, pseudo_count: float = 0.5) -> CompletionScore:
    """The unigram baseline: every word drawn from the training corpus's word
    frequencies (``pseudo_count`` added to every word)."""
    totals = torch.full((num_words,), float(pseudo_count), dtype=torch.float64)
    totals.scatter_add_(0, train.values[..., 0].reshape(-1), (train.values[..., 1] * train.mask).reshape(-1).double())
    log_p = (totals / totals.sum()).log()
    counts = (held_out.values[..., 1] * held_out.mask).double()
    return CompletionScore((counts * log_p[held_out.values[..., 0]]).sum(-1), counts.sum(-1).long())


class LocalPosterior(NamedTuple):
    """Documents' Gaussian posteriors over their topic logits :math:`\eta_d`.

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
    """``(N, K, K)`` curvature :math:`n_d(\mathrm{diag}\,\theta_d - \theta_d\theta_d^\top) + \mathrm{precision}\, I`
    of :func:`_newton_document_modes`'s bound; ``theta`` ``(N, K)``, ``totals`` ``(N, 1)``."""
    eye = torch.eye(theta.shape[-1], dtype=theta.dtype)
    return totals[..., None] * (torch.diag_embed(theta) - theta[:, :, None] * theta[:, None, :]) + precision * eye


def _newton_document_modes(eta: Tensor, document: Tensor, log_word_topic: Tensor, counts: Tensor, prior_loc: Tensor,
                           precision: float, steps: int, tolerance: float) -> Tensor:
    """``(N, K)`` modes of :math:`\log p(w_d \mid \eta_d) + \log N(\eta_d; \mathrm{prior\_loc}, I/\mathrm{precision})`
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


def _static_em(word_ids: Tensor, counts: Tensor, log_topics: Tensor, iterations: int, precision: float = 1.0,
               newton_steps: int = 3) -> tuple[Tensor, float]:
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


def cluster_documents(word_ids: Tensor, counts: Tensor, num_words: int, num_clusters: int, *,
                      generator: torch.Generator | None = None, iterations: int = 10) -> Tensor:
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


# --------------------------------------------------------------------------
# The dynamic topic model
# --------------------------------------------------------------------------
class _Encoder(nn.Module):
    """MLP on a bag of words: ``(N, L)`` ids and counts -> ``(N, K)`` loc and scale."""

    def __init__(self, num_words: int, num_topics: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(num_words, hidden_size, mode="sum")
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.hidden = nn.Linear(hidden_size, hidden_size)
        self.head = nn.Linear(hidden_size, 2 * num_topics)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.embedding.weight.mul_(0.1)
            self.head.bias[num_topics:] = -1.0

    def forward(self, word_ids: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
        if word_ids.shape[-1] == 0:  # documents without words (EmbeddingBag needs a column)
            word_ids, counts = word_ids.new_zeros(word_ids.shape[0], 1), counts.new_zeros(counts.shape[0], 1)
        weights = torch.log1p(counts.to(self.bias.dtype))
        h = F.softplus(self.embedding(word_ids, per_sample_weights=weights) + self.bias)
        h = F.softplus(self.hidden(h))
        loc, raw_scale = self.head(h).chunk(2, -1)
        return loc, F.softplus(raw_scale) + 1e-4


class DynamicTopicModel(SequenceModel):
    r"""The dynamic topic model with a Markov Gaussian guide and an amortised encoder.

    Data: a bag-of-words batch from :mod:`zoo.data.corpus` (``values`` ``(N, L, 2)``
    (word id, count) pairs, covariate ``"slice"`` ``(N,)``).

    Args:
        num_words: ``V``.
        num_topics: ``K``.
        num_slices: ``S``.
        topic_drift: :math:`\gamma`, the step scale of the topics' word logits.
        proportion_drift: :math:`\delta`, the step scale of :math:`\alpha`.
        document_scale: :math:`a`, the spread of a document's :math:`\eta_d` about :math:`\alpha_{t(d)}`.
        topic_scale: :math:`\sigma_0`, the prior scale of :math:`\beta_0`.
        proportion_scale: :math:`\sigma_\alpha`, the prior scale of :math:`\alpha_0`.
        hidden_size: width of the encoder MLP.
        local_steps: Newton steps of each document's local posterior per training step
            (:meth:`local_posteriors`; 0 keeps the encoder's mean).

    Example:
        >>> model = DynamicTopicModel(num_words=50, num_topics=3, num_slices=4)
        >>> batch = model.sample(8, 20)
        >>> model.log_prob_batch(batch).shape
        torch.Size([8])
    """

    exact_likelihood: ClassVar[bool] = False
    likelihood_kind: ClassVar[str] = "ELBO"
    family: ClassVar[str] = "dtm"

    def __init__(self, num_words: int, num_topics: int, num_slices: int, *, topic_drift: float = 0.2,
                 proportion_drift: float = 0.2, document_scale: float = 1.0, topic_scale: float = 3.0,
                 proportion_scale: float = 1.0, hidden_size: int = 100, local_steps: int = 20) -> None:
        super().__init__()
        for name, value in (("num_words", num_words), ("num_topics", num_topics), ("num_slices", num_slices),
                            ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value in (("topic_drift", topic_drift), ("proportion_drift", proportion_drift),
                            ("document_scale", document_scale), ("topic_scale", topic_scale),
                            ("proportion_scale", proportion_scale)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        self.num_words, self.num_topics, self.num_slices = num_words, num_topics, num_slices
        self.topic_drift, self.proportion_drift = float(topic_drift), float(proportion_drift)
        self.document_scale, self.topic_scale = float(document_scale), float(topic_scale)
        self.proportion_scale, self.hidden_size = float(proportion_scale), hidden_size
        if not isinstance(local_steps, int) or local_steps < 0:
            raise ValueError(f"local_steps: expected an int >= 0, got {local_steps!r}")
        self.local_steps = local_steps
        S, K, V = num_slices, num_topics, num_words
        # Guide parameters (the model's global latents are all Bayesian): Markov chains over slices.
        self.guide_beta_loc = nn.Parameter(0.5 * torch.randn(1, K * V).expand(S, K * V).clone())
        self.guide_beta_log_scale = nn.Parameter(torch.full((S, K * V), math.log(min(0.1, topic_drift))))
        # Couplings are tanh of these (|rho| < 1): a coupling above 1 compounds over the slices and
        # blew the marginal variances up on the 22 SOTU decades.
        self.guide_beta_coupling = nn.Parameter(torch.full((S, K * V), math.atanh(0.9)))
        self.guide_alpha_loc = nn.Parameter(torch.zeros(S, K))
        self.guide_alpha_log_scale = nn.Parameter(torch.full((S, K), math.log(min(0.1, proportion_drift))))
        self.guide_alpha_coupling = nn.Parameter(torch.full((S, K), math.atanh(0.9)))
        self.guide_encoder = _Encoder(V, K, hidden_size)

    def initialize_from_data(self, batch: SequenceBatch, generator: torch.Generator | None = None, *,
                             restarts: int = 3, em_iterations: int = 20, kmeans_iterations: int = 10,
                             max_documents: int = 3000) -> None:
        """Starts every slice's topics at static topics found on at most ``max_documents`` random
        documents: ``restarts`` times, spherical k-means of the documents' tf-idf vectors
        (:func:`cluster_documents`) seeds topic ``k`` at its cluster's pooled word frequencies (half
        mixed with the corpus's), and ``em_iterations`` of EM for static logistic-normal LDA refine
        them; the restart with the best objective wins.

        Why: topics seeded from random documents (each a blend of topics) converged to a background
        topic and merged pairs of true topics on simulated data (benchmarks/dtm_collapse.py); k-means
        alone left a duplicated and a merged pair on half the seeds."""
        word_ids, counts = _split_batch(batch)
        counts = counts.float()
        totals = torch.full((self.num_words,), 0.5).index_add_(0, word_ids.reshape(-1), counts.reshape(-1))
        background = totals / totals.sum()
        chosen = torch.randperm(batch.num_sequences, generator=generator)[:max_documents]
        ids, cnts = word_ids[chosen], counts[chosen]
        best, best_objective = None, -math.inf
        for _ in range(max(1, restarts)):
            labels = cluster_documents(ids, cnts, self.num_words, min(self.num_topics, len(chosen)),
                                       generator=generator, iterations=kmeans_iterations)
            log_topics = background.log().expand(self.num_topics, -1).clone()
            for k in range(int(labels.max()) + 1):
                members = labels == k
                pooled = torch.zeros(self.num_words).index_add_(0, ids[members].reshape(-1), cnts[members].reshape(-1))
                log_topics[k] = torch.log(0.5 * background + 0.5 * pooled / pooled.sum().clamp(min=1))
            log_topics, objective = _static_em(ids, cnts, log_topics, em_iterations, 1 / self.document_scale**2)
            if objective > best_objective:
                best, best_objective = log_topics, objective
        logits = best - best.mean(-1, keepdim=True)
        with torch.no_grad():
            self.guide_beta_loc.copy_(logits.reshape(1, -1).expand_as(self.guide_beta_loc))

    # -- configuration ----------------------------------------------------
    def config(self) -> dict[str, Any]:
        return dict(num_words=self.num_words, num_topics=self.num_topics, num_slices=self.num_slices,
                    topic_drift=self.topic_drift, proportion_drift=self.proportion_drift,
                    document_scale=self.document_scale, topic_scale=self.topic_scale,
                    proportion_scale=self.proportion_scale, hidden_size=self.hidden_size,
                    local_steps=self.local_steps)

    def fit_defaults(self, method: str):
        """SVI: the analytic-KL loss (:meth:`loss`), mini-batches of 512 documents, lr 0.05."""
        defaults = super().fit_defaults(method)
        if method == "svi":
            defaults = dataclasses.replace(defaults, loss="model", batch_size=512, learning_rate=0.05)
        return defaults

    def likelihood_label(self, num_particles: int = 1) -> str:
        return f"ELBO per document at the posterior-mean topics (M={num_particles})"

    def _slices(self, batch: SequenceBatch) -> Tensor:
        slices = batch_slices(batch)
        if slices is None:
            if self.num_slices == 1:
                return torch.zeros(batch.num_sequences, dtype=torch.long, device=batch.device)
            raise ValueError("batch: expected the covariate 'slice' (N,) for a model with several slices")
        if slices.numel() and (int(slices.min()) < 0 or int(slices.max()) >= self.num_slices):
            raise ValueError(f"batch slice covariate: expected values in [0, {self.num_slices - 1}], "
                             f"got range [{int(slices.min())}, {int(slices.max())}]")
        return slices

    # -- distributions ----------------------------------------------------
    def beta_prior(self) -> RandomWalkNormal:
        return RandomWalkNormal(self.topic_scale, self.topic_drift, self.num_slices, self.num_topics * self.num_words)

    def alpha_prior(self) -> RandomWalkNormal:
        return RandomWalkNormal(self.proportion_scale, self.proportion_drift, self.num_slices, self.num_topics)

    def beta_guide(self) -> MarkovNormal:
        return MarkovNormal(self.guide_beta_loc, self.guide_beta_log_scale.exp(), torch.tanh(self.guide_beta_coupling))

    def alpha_guide(self) -> MarkovNormal:
        return MarkovNormal(self.guide_alpha_loc, self.guide_alpha_log_scale.exp(), torch.tanh(self.guide_alpha_coupling))

    def topic_word_logits(self) -> Tensor:
        """``(S, K, V)`` posterior-mean word logits :math:`E_q[\\beta]`."""
        return self.guide_beta_loc.detach().reshape(self.num_slices, self.num_topics, self.num_words)

    def proportion_logits(self) -> Tensor:
        """``(S, K)`` posterior-mean :math:`E_q[\\alpha]`."""
        return self.guide_alpha_loc.detach()

    # -- Pyro model and guide ---------------------------------------------
    def model(self, batch: SequenceBatch, annealing_factor: float = 1.0) -> None:
        slices = self._slices(batch)
        word_ids, counts = _split_batch(batch)
        alpha = pyro.sample("alpha", self.alpha_prior())  # (S, K)
        beta = pyro.sample("beta", self.beta_prior()).reshape(self.num_slices, self.num_topics, self.num_words)
        with sequence_plate(batch):
            with pyro.poutine.scale(scale=annealing_factor):
                eta = pyro.sample("eta", dist.Normal(alpha[slices], self.document_scale).to_event(1))
            pyro.factor("words", document_log_likelihood(eta, beta, word_ids, counts, slices))

    def guide(self, batch: SequenceBatch, annealing_factor: float = 1.0) -> None:
        slices = self._slices(batch)
        word_ids, counts = _split_batch(batch)
        alpha = pyro.sample("alpha", self.alpha_guide())
        pyro.sample("beta", self.beta_guide())
        loc, scale = self.guide_encoder(word_ids, counts)
        with sequence_plate(batch):
            with pyro.poutine.scale(scale=annealing_factor):
                pyro.sample("eta", dist.Normal(loc + alpha[slices], scale).to_event(1))

    def local_posteriors(self, batch: SequenceBatch, *, steps: int | None = None, tolerance: float = 1e-3,
                         annealing_factor: float = 1.0) -> LocalPosterior:
        r"""Each document's Gaussian posterior over :math:`\eta_d` given the current posterior-mean topics.

        The variational E-step of correlated/dynamic topic models (Blei & Lafferty): starting from the
        encoder's mean, Newton steps on the minoriser of :math:`\log p(w_d \mid \eta, \bar\beta) +
        \log N(\eta; \bar\alpha_{t(d)}, a^2 I)` that holds the word-topic responsibilities :math:`r_{d,v,k}`
        fixed (an EM bound, so a step does not overshoot where the mixture likelihood is convex):
        gradient :math:`n_{d,k} - n_d \theta_{d,k} - (\eta_d - \bar\alpha)/a^2` with
        :math:`n_{d,k} = \sum_v c_{d,v} r_{d,v,k}`, curvature
        :math:`P_d = n_d(\mathrm{diag}\,\theta_d - \theta_d\theta_d^\top) + I/a^2` (K x K per document).
        Converged, the mean is the MAP of :math:`\eta_d` and :math:`P_d^{-1}` the covariance (Laplace).
        No gradient flows through the result.

        Args:
            batch: bag-of-words documents with their slices.
            steps: Newton steps at most (default ``self.local_steps``); stops once no mean moves more
                than ``tolerance``.
            annealing_factor: weight of the prior term (as in :meth:`loss`).

        Returns:
            :class:`LocalPosterior` with ``loc`` ``(N, K)``, ``cov`` ``(N, K, K)`` and the encoder's
            ``(N, K)`` start.
        """
        slices = self._slices(batch)
        word_ids, counts = _split_batch(batch)
        steps = self.local_steps if steps is None else steps
        with torch.no_grad():
            prior_loc = self.proportion_logits()[slices]  # (N, K)
            start, _ = self.guide_encoder(word_ids, counts)
            start = start + prior_loc
            log_topic_word = torch.log_softmax(self.topic_word_logits(), -1).transpose(-1, -2)  # (S, V, K)
            document, words, counts = _flat_words(word_ids, counts)
            log_word_topic = log_topic_word[slices[document], words]  # (nnz, K)
            totals = torch.zeros(len(slices)).index_add_(0, document, counts)[:, None]  # (N, 1)
            precision = max(annealing_factor, 1e-4) / self.document_scale**2  # > 0: P stays invertible
            eta = _newton_document_modes(start, document, log_word_topic, counts, prior_loc, precision, steps, tolerance)
            return LocalPosterior(eta, torch.linalg.inv(_document_curvature(torch.softmax(eta, -1), totals, precision)), start)

    def loss(self, batch: SequenceBatch, annealing_factor: float = 1.0, num_particles: int = 1) -> Tensor:
        """Negative ELBO of ``batch`` scaled to the full corpus, with every KL in closed form.

        Each document's :math:`q(\eta_d)` is its local posterior (:meth:`local_posteriors`: Newton
        steps from the encoder's mean to the optimum given the current topics, full K x K covariance),
        as in the variational E-step of Blei & Lafferty and stochastic VI (Hoffman et al., 2013); the
        topics and ``alpha`` then step on the ELBO under those posteriors. The encoder does not enter
        the ELBO: it regresses onto the local posteriors (``KL(q_local, diagonal || q_encoder)``) to
        start the next E-step close and to score quickly. The returned value is the negative ELBO
        (the encoder's term adds its gradient, not its value). ``annealing_factor`` weighs the
        documents' KL terms."""
        slices = self._slices(batch)
        word_ids, counts = _split_batch(batch)
        # eta's noise first: models that differ only in S (the vanishing-drift test) draw the same eta
        noise = torch.randn(num_particles, batch.num_sequences, self.num_topics)
        local = self.local_posteriors(batch, annealing_factor=annealing_factor)
        chol = torch.linalg.cholesky(local.cov)  # (N, K, K)
        eta = local.loc + (chol @ noise.unsqueeze(-1)).squeeze(-1)  # (M, N, K)
        alpha_q, beta_q = self.alpha_guide(), self.beta_guide()
        alpha = alpha_q.rsample((num_particles,))  # (M, S, K)
        beta = beta_q.rsample((num_particles,)).reshape(num_particles, self.num_slices, self.num_topics, self.num_words)
        expected_log_lik = document_log_likelihood(eta, beta, word_ids, counts, slices)  # (M, N)
        eta_kl = _gaussian_kl_to_isotropic(local.loc, local.cov, alpha[:, slices], self.document_scale)  # (M, N)
        documents = (expected_log_lik - annealing_factor * eta_kl).mean(0).sum()
        scale_up = (batch.population or batch.num_sequences) / batch.num_sequences
        elbo = scale_up * documents - markov_normal_kl(beta_q, self.beta_prior()) - markov_normal_kl(alpha_q, self.alpha_prior())
        # The encoder learns to predict the local posteriors (offsets from the slice means).
        loc, scale = self.guide_encoder(word_ids, counts)
        target = dist.Normal(local.loc - self.proportion_logits()[slices], local.cov.diagonal(dim1=-2, dim2=-1).sqrt())
        encoder_loss = scale_up * torch.distributions.kl_divergence(target, dist.Normal(loc, scale)).sum()
        return -elbo + (encoder_loss - encoder_loss.detach())

    # -- scoring ----------------------------------------------------------
    def log_prob_batch(self, batch: SequenceBatch, *, num_particles: int = 1) -> Tensor:
        """``(N,)`` per-document ELBO at the posterior-mean topics and slice means:
        :math:`E_{q(\eta_d)}[\log p(w_d \mid \eta_d, \bar\beta)] - \mathrm{KL}(q(\eta_d) \| p(\eta_d \mid \bar\alpha))`
        with :math:`q(\eta_d)` the document's local posterior (:meth:`local_posteriors`), a lower bound
        on :math:`\log p(w_d \mid \bar\beta, \bar\alpha)`; Monte Carlo over ``num_particles`` draws of
        :math:`\eta_d` (torch's global RNG)."""
        slices = self._slices(batch)
        word_ids, counts = _split_batch(batch)
        with torch.no_grad():
            noise = torch.randn(num_particles, batch.num_sequences, self.num_topics)
            local = self.local_posteriors(batch)
            eta = local.loc + (torch.linalg.cholesky(local.cov) @ noise.unsqueeze(-1)).squeeze(-1)
            log_lik = document_log_likelihood(eta, self.topic_word_logits(), word_ids, counts, slices).mean(0)
            kl = _gaussian_kl_to_isotropic(local.loc, local.cov, self.proportion_logits()[slices], self.document_scale)
        return log_lik - kl

    def log_prob(self, values: Tensor, lengths: Tensor | None = None, slices: Tensor | None = None) -> Tensor:
        if lengths is None:
            lengths = torch.full(values.shape[:1], values.shape[1], dtype=torch.long)
        docs = [{int(w): int(c) for w, c in values[n, : int(lengths[n])].tolist()} for n in range(values.shape[0])]
        return self.log_prob_batch(bag_of_words_batch(docs, slices))

    def document_proportions(self, batch: SequenceBatch) -> Tensor:
        """``(N, K)`` each document's topic proportions :math:`\\mathrm{softmax}(E_q[\\eta_d])` under its
        local posterior (:meth:`local_posteriors`)."""
        return torch.softmax(self.local_posteriors(batch).loc, -1)

    def topic_prevalence(self, batch: SequenceBatch) -> Tensor:
        """``(S, K)`` mean topic proportions of each slice's documents in ``batch`` (NaN for an empty slice)."""
        theta = self.document_proportions(batch)
        slices = self._slices(batch)
        sums = torch.zeros(self.num_slices, self.num_topics).index_add_(0, slices, theta)
        sizes = torch.bincount(slices, minlength=self.num_slices).unsqueeze(-1)
        return sums / sizes

    def top_words(self, vocabulary: WordVocabulary, num_words: int = 10, relevance: float = 1.0) -> list[list[list[str]]]:
        r"""``[slice][topic]`` -> the topic's ``num_words`` top words at that slice.

        Ranked by the relevance of Sievert & Shirley (2014),
        :math:`\lambda \log \phi_{t,k,v} + (1 - \lambda) \log(\phi_{t,k,v} / \bar\phi_{t,v})`
        with :math:`\bar\phi_t` the slice's average topic: ``relevance=1`` ranks by probability
        (frequent words lead every topic), ~0.6 brings out what sets a topic apart.
        """
        log_phi = torch.log_softmax(self.topic_word_logits(), -1)  # (S, K, V)
        log_background = torch.logsumexp(log_phi, 1, keepdim=True) - math.log(self.num_topics)
        score = relevance * log_phi + (1 - relevance) * (log_phi - log_background)
        order = score.topk(num_words, -1).indices  # (S, K, n)
        return [[vocabulary.decode(order[s, k]) for k in range(self.num_topics)] for s in range(self.num_slices)]

    def complete_documents(self, observed: SequenceBatch, held_out: SequenceBatch, *, steps: int = 100) -> CompletionScore:
        r"""Document completion: infers each document's proportions from its observed half, scores the other.

        The proportions are the MAP :math:`\hat\eta_d = \arg\max_\eta \log p(w^{obs}_d \mid \eta, \bar\beta)
        + \log N(\eta; \bar\alpha_{t(d)}, a^2 I)` (the fitted logistic-normal prior, posterior-mean topics;
        at most ``steps`` Newton steps from the encoder's mean, :meth:`local_posteriors`), and the held-out
        words are scored under :math:`\sum_k \mathrm{softmax}(\hat\eta_d)_k \bar\phi_{t(d),k}`.
        """
        slices = self._slices(observed)
        if not torch.equal(slices, self._slices(held_out)) or observed.num_sequences != held_out.num_sequences:
            raise ValueError("observed, held_out: expected the same documents (slices) in the same order")
        held_ids, held_counts = _split_batch(held_out)
        eta = self.local_posteriors(observed, steps=steps, tolerance=1e-5).loc
        with torch.no_grad():
            log_prob = document_log_likelihood(eta, self.topic_word_logits(), held_ids, held_counts, slices)
        return CompletionScore(log_prob.double(), held_counts.sum(-1))

    # -- export -----------------------------------------------------------
    def to_inference_data(self, batch: SequenceBatch | None = None, *, vocabulary: WordVocabulary | None = None,
                          slice_labels: list[str] | None = None, num_draws: int = 10, seed: int = 0):
        """ArviZ ``InferenceData`` of ``num_draws`` draws from the variational posterior.

        ``posterior``: ``beta`` (chain, draw, slice, topic, word) word logits and ``alpha``
        (chain, draw, slice, topic); all draws come from one guide, so the topic labels agree
        across draws by construction. ``log_likelihood`` (with ``batch``): ``documents``
        (chain, draw, document), each document's ELBO (:meth:`log_prob_batch`) at that draw's
        topics. Memory: ``num_draws * S * K * V`` floats.
        """
        import arviz as az

        S, K, V = self.num_slices, self.num_topics, self.num_words
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            beta = self.beta_guide().rsample((num_draws,)).reshape(num_draws, S, K, V)
            alpha = self.alpha_guide().rsample((num_draws,))
            log_lik = None
            if batch is not None:
                slices = self._slices(batch)
                word_ids, counts = _split_batch(batch)
                local = self.local_posteriors(batch)
                chol = torch.linalg.cholesky(local.cov)
                draws = []
                for m in range(num_draws):
                    eta = local.loc + (chol @ torch.randn(len(slices), self.num_topics, 1)).squeeze(-1)
                    bound = document_log_likelihood(eta, beta[m], word_ids, counts, slices)
                    draws.append(bound - _gaussian_kl_to_isotropic(local.loc, local.cov, alpha[m, slices], self.document_scale))
                log_lik = torch.stack(draws)
        coords = {"slice": slice_labels or list(range(S)), "topic": list(range(K)),
                  "word": list(vocabulary.words) if vocabulary is not None else list(range(V))}
        dims = {"beta": ["slice", "topic", "word"], "alpha": ["slice", "topic"], "documents": ["document"]}
        return az.from_dict(
            posterior={"beta": beta.numpy()[None], "alpha": alpha.numpy()[None]},
            log_likelihood=None if log_lik is None else {"documents": log_lik.numpy()[None]},
            coords=coords, dims=dims,
        )

    # -- sampling ---------------------------------------------------------
    def sample_documents(self, topic_word_logits: Tensor, proportion_logits: Tensor, slices: Tensor, length: int,
                         generator: torch.Generator | None = None) -> SequenceBatch:
        """Documents of ``length`` tokens each at given ``(S, K, V)`` topics and ``(S, K)`` slice means."""
        eta = proportion_logits[slices] + self.document_scale * torch.randn(len(slices), self.num_topics, generator=generator)
        topics = torch.multinomial(torch.softmax(eta, -1), length, replacement=True, generator=generator)  # (N, length)
        word_probs = torch.softmax(topic_word_logits, -1)[slices[:, None], topics]  # (N, length, V)
        words = torch.multinomial(word_probs.reshape(-1, self.num_words), 1, generator=generator).reshape(len(slices), length)
        return bag_of_words_batch(words.tolist(), slices)

    def sample(self, num_sequences: int, length: int, generator: torch.Generator | None = None) -> SequenceBatch:
        """``num_sequences`` documents of ``length`` tokens at the posterior-mean topics, slices cycling ``0..S-1``."""
        slices = torch.arange(num_sequences) % self.num_slices
        return self.sample_documents(self.topic_word_logits(), self.proportion_logits(), slices, length, generator)


class StaticTopicModel(DynamicTopicModel):
    """Static (logistic-normal) LDA: the DTM with a single slice; any slice covariate is ignored.

    Example:
        >>> lda = StaticTopicModel(num_words=50, num_topics=3)
        >>> lda.log_prob_batch(lda.sample(4, 10)).shape
        torch.Size([4])
    """

    family: ClassVar[str] = "lda"

    def __init__(self, num_words: int, num_topics: int, **options: Any) -> None:
        options.pop("num_slices", None)
        options.setdefault("topic_drift", 1.0)  # unused with one slice
        options.setdefault("proportion_drift", 1.0)
        super().__init__(num_words, num_topics, 1, **options)

    def _slices(self, batch: SequenceBatch) -> Tensor:
        return torch.zeros(batch.num_sequences, dtype=torch.long, device=batch.device)

    def config(self) -> dict[str, Any]:
        config = super().config()
        for key in ("num_slices", "topic_drift", "proportion_drift"):
            config.pop(key)
        return config


# --------------------------------------------------------------------------
# The discrete Kalman filter: Gaussian states, softmax emissions
# --------------------------------------------------------------------------
class LaplacePosterior(NamedTuple):
    """Gaussian approximation of the slices' states.

    Attributes:
        filtered_mean: ``(T, D)``; filtered_cov: ``(T, D, D)``.
        smoothed_mean: ``(T, D)``; smoothed_cov: ``(T, D, D)``.
        pseudo_observations: ``(T, D)`` the Gaussian pseudo-observations :math:`y_t`.
        pseudo_cov: ``(T, D, D)`` their covariances :math:`R_t` (identity x inf where a slice has no word).
        log_normalizer: the log-marginal likelihood of the pseudo-observations (the Gaussian model's).
    """

    filtered_mean: Tensor
    filtered_cov: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    pseudo_observations: Tensor
    pseudo_cov: Tensor
    log_normalizer: Tensor


class DiscreteKalmanFilter(PyroModule):
    r"""Gaussian states per slice with softmax emissions of the slice's words.

    :math:`S_0 \sim N(m_0, P_0)`, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, \Gamma)`,
    :math:`W_t \mid S_t \sim \mathrm{Multinomial}(n_t, \mathrm{softmax}(B S_t))`.

    Args:
        emission_matrix: ``(V, D)`` :math:`B`.
        transition_matrix: ``(D, D)`` :math:`A` (identity when None).
        transition_cov: ``(D, D)`` :math:`\Gamma` (0.01 I when None).
        initial_cov: ``(D, D)`` :math:`P_0` (I when None); :math:`m_0 = 0`.
        learn: names of the parameters to learn by gradient on the Laplace evidence
            (any of ``"emission_matrix"``, ``"transition_matrix"``, ``"transition_cov"``); others are fixed.

    Example:
        >>> dkf = DiscreteKalmanFilter(torch.randn(20, 2))
        >>> counts = dkf.sample(5, words_per_slice=30)[1]
        >>> dkf.smooth(counts).smoothed_mean.shape
        torch.Size([5, 2])
    """

    def __init__(self, emission_matrix: Tensor, transition_matrix: Tensor | None = None,
                 transition_cov: Tensor | None = None, initial_cov: Tensor | None = None,
                 learn: tuple[str, ...] = ()) -> None:
        super().__init__()
        if emission_matrix.dim() != 2:
            raise ValueError(f"emission_matrix: expected (V, D), got {tuple(emission_matrix.shape)}")
        V, D = emission_matrix.shape
        unknown = set(learn) - {"emission_matrix", "transition_matrix", "transition_cov"}
        if unknown:
            raise ValueError(f"learn: unknown parameter names {sorted(unknown)}")
        A = torch.eye(D) if transition_matrix is None else transition_matrix
        Q = 0.01 * torch.eye(D) if transition_cov is None else transition_cov
        P0 = torch.eye(D) if initial_cov is None else initial_cov
        for name, value in (("transition_matrix", A), ("transition_cov", Q), ("initial_cov", P0)):
            if value.shape != (D, D):
                raise ValueError(f"{name}: expected ({D}, {D}), got {tuple(value.shape)}")
        self.emission_matrix = nn.Parameter(emission_matrix.clone(), requires_grad="emission_matrix" in learn)
        self.transition_matrix = nn.Parameter(A.clone(), requires_grad="transition_matrix" in learn)
        if "transition_cov" in learn:
            self.transition_cov = PyroParam(Q.clone(), constraint=constraints.positive_definite)
        else:
            self.register_buffer("transition_cov", Q.clone())
        self.register_buffer("initial_cov", P0.clone())

    @property
    def state_dim(self) -> int:
        return self.emission_matrix.shape[1]

    def gaussian_approximation(self, counts: Tensor, linearization_points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Laplace approximation of each slice's softmax log-likelihood at ``linearization_points``.

        The second-order expansion of :math:`c_t^\top B s - n_t \log\sum_v e^{(Bs)_v}` about
        :math:`s^*` is, up to a constant, :math:`\log N(y_t; s, R_t)` with
        :math:`R_t = H_t^{-1}`, :math:`H_t = n_t B^\top(\mathrm{diag}\,\pi_t - \pi_t\pi_t^\top)B`,
        :math:`y_t = s^* + R_t B^\top(c_t - n_t \pi_t)`, :math:`\pi_t = \mathrm{softmax}(B s^*)`.

        Args:
            counts: ``(T, V)`` word counts of each slice.
            linearization_points: ``(T, D)``.

        Returns:
            ``(y (T, D), R (T, D, D), observed (T,) bool)``; a slice without words is unobserved.
        """
        B = self.emission_matrix
        probs = torch.softmax(linearization_points @ B.T, -1)  # (T, V)
        totals = counts.sum(-1)  # (T,)
        gradient = (counts - totals[:, None] * probs) @ B  # (T, D)
        curvature = torch.einsum("tv,vd,ve->tde", probs, B, B) - torch.einsum("td,te->tde", probs @ B, probs @ B)
        precision = totals[:, None, None] * curvature + 1e-9 * torch.eye(self.state_dim, dtype=B.dtype)
        observed = totals > 0
        safe_precision = torch.where(observed[:, None, None], precision, torch.eye(self.state_dim, dtype=B.dtype))
        pseudo_cov = torch.linalg.inv(safe_precision)
        pseudo_obs = linearization_points + (pseudo_cov @ gradient.unsqueeze(-1)).squeeze(-1)
        return pseudo_obs, pseudo_cov, observed

    def smooth(self, counts: Tensor, *, num_iterations: int = 10, linearization_points: Tensor | None = None,
               tolerance: float = 1e-6) -> LaplacePosterior:
        """Laplace posterior of the states given ``(T, V)`` slice word counts.

        Linearises every slice at ``linearization_points`` (default: the prior mean 0), filters and
        smooths the pseudo-observations, and (``num_iterations`` > 1) re-linearises at the smoothed
        means until they move less than ``tolerance``. With ``num_iterations=1`` this is one Kalman
        filter and smoother pass on fixed pseudo-observations.
        """
        if counts.dim() != 2 or counts.shape[1] != self.emission_matrix.shape[0]:
            raise ValueError(f"counts: expected (T, {self.emission_matrix.shape[0]}), got {tuple(counts.shape)}")
        counts = counts.to(self.emission_matrix.dtype)
        points = counts.new_zeros(counts.shape[0], self.state_dim) if linearization_points is None else linearization_points
        for _ in range(max(1, num_iterations)):
            y, R, observed = self.gaussian_approximation(counts, points)
            filtered_mean, filtered_cov, smoothed_mean, smoothed_cov, log_normalizer = kalman_smoother_varying_noise(
                self.transition_matrix, self.transition_cov, counts.new_zeros(self.state_dim), self.initial_cov,
                y, R, observed)
            moved = float((smoothed_mean - points).abs().max())
            points = smoothed_mean.detach()
            if moved < tolerance:
                break
        return LaplacePosterior(filtered_mean, filtered_cov, smoothed_mean, smoothed_cov, y, R, log_normalizer)

    def sample(self, num_slices: int, words_per_slice: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draws ``(states (T, D), counts (T, V))`` from the model."""
        with torch.no_grad():
            D = self.state_dim
            chol_q, chol_0 = torch.linalg.cholesky(self.transition_cov), torch.linalg.cholesky(self.initial_cov)
            state = chol_0 @ torch.randn(D, generator=generator)
            states, counts = [], []
            for t in range(num_slices):
                if t > 0:
                    state = self.transition_matrix @ state + chol_q @ torch.randn(D, generator=generator)
                states.append(state)
                words = torch.multinomial(torch.softmax(self.emission_matrix @ state, -1), words_per_slice,
                                          replacement=True, generator=generator)
                counts.append(torch.bincount(words, minlength=self.emission_matrix.shape[0]))
            return torch.stack(states), torch.stack(counts).to(self.emission_matrix.dtype)


# --------------------------------------------------------------------------
# Reports and figures (the command line's and the example's)
# --------------------------------------------------------------------------
def top_words_text(model: DynamicTopicModel, vocabulary: WordVocabulary, slice_labels: list[str],
                   num_words: int = 8, relevance: float = 1.0) -> str:
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


def prevalence_figure(model: DynamicTopicModel, vocabulary: WordVocabulary, slice_labels: list[str],
                      prevalence: Tensor):
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


def drift_figure(model: DynamicTopicModel, vocabulary: WordVocabulary, slice_labels: list[str],
                 topics: tuple[int, ...] = (0, 1, 2), words_per_slice: int = 2):
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


# --------------------------------------------------------------------------
# Registry entries (INTERFACES §4): `seqzoo fit dtm|lda`, compare specs dtm:...|lda:...
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
        return DynamicTopicModel(num_words, options.get("topics", 20), num_slices,
                                 topic_drift=options.get("topic_drift", 0.2))
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
    from .data.corpus import split_document_halves

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
    run.write_json("completion.json", {
        "protocol": "document completion: each held-out document's tokens split at random into halves; "
                    "eta is the MAP given the first half under the fitted prior N(alpha_t, a^2 I) with the "
                    "posterior-mean topics; the second half is scored; unigram = training frequencies + 0.5",
        "part": "test" if splits.test is not None else "valid",
        "documents": held_batch.num_sequences, "scored_tokens": int(completion.num_tokens.sum()),
        "perplexity": {type(model).family: completion.perplexity, "unigram": unigram.perplexity},
    })


register(Family(
    name="dtm", help="dynamic topic model (topics drift over time slices)",
    add_arguments=_add_dtm_arguments, settings_from_args=_topic_settings, build=_build_dtm,
    label=lambda s: f"dtm-topics{s.get('topics', 20)}", model_classes=(DynamicTopicModel,),
    data_kinds=("corpus",), plots=_corpus_outputs))
register(Family(
    name="lda", help="static logistic-normal LDA (the DTM with one slice)",
    add_arguments=_add_lda_arguments, settings_from_args=_topic_settings, build=_build_lda,
    label=lambda s: f"lda-topics{s.get('topics', 20)}", model_classes=(StaticTopicModel,),
    data_kinds=("corpus",), plots=_corpus_outputs))
