"""The dynamic topic model (:class:`DynamicTopicModel`) and static logistic-normal LDA
(:class:`StaticTopicModel`), with the bag-of-words encoder that starts each document's local posterior."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel

from ..data.corpus import WordVocabulary, bag_of_words_batch, batch_slices
from .distributions import MarkovNormal, RandomWalkNormal, markov_normal_kl
from .documents import (
    CompletionScore,
    LocalPosterior,
    _document_curvature,
    _flat_words,
    _gaussian_kl_to_isotropic,
    _newton_document_modes,
    _split_batch,
    _static_em,
    cluster_documents,
    document_log_likelihood,
)

__all__ = ["DynamicTopicModel", "StaticTopicModel"]


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

    def __init__(
        self,
        num_words: int,
        num_topics: int,
        num_slices: int,
        *,
        topic_drift: float = 0.2,
        proportion_drift: float = 0.2,
        document_scale: float = 1.0,
        topic_scale: float = 3.0,
        proportion_scale: float = 1.0,
        hidden_size: int = 100,
        local_steps: int = 20,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_words", num_words),
            ("num_topics", num_topics),
            ("num_slices", num_slices),
            ("hidden_size", hidden_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name, value in (
            ("topic_drift", topic_drift),
            ("proportion_drift", proportion_drift),
            ("document_scale", document_scale),
            ("topic_scale", topic_scale),
            ("proportion_scale", proportion_scale),
        ):
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

    def initialize_from_data(
        self,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        *,
        restarts: int = 3,
        em_iterations: int = 20,
        kmeans_iterations: int = 10,
        max_documents: int = 3000,
    ) -> None:
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
            labels = cluster_documents(
                ids,
                cnts,
                self.num_words,
                min(self.num_topics, len(chosen)),
                generator=generator,
                iterations=kmeans_iterations,
            )
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
        return dict(
            num_words=self.num_words,
            num_topics=self.num_topics,
            num_slices=self.num_slices,
            topic_drift=self.topic_drift,
            proportion_drift=self.proportion_drift,
            document_scale=self.document_scale,
            topic_scale=self.topic_scale,
            proportion_scale=self.proportion_scale,
            hidden_size=self.hidden_size,
            local_steps=self.local_steps,
        )

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
            raise ValueError(
                f"batch slice covariate: expected values in [0, {self.num_slices - 1}], "
                f"got range [{int(slices.min())}, {int(slices.max())}]"
            )
        return slices

    # -- distributions ----------------------------------------------------
    def beta_prior(self) -> RandomWalkNormal:
        return RandomWalkNormal(self.topic_scale, self.topic_drift, self.num_slices, self.num_topics * self.num_words)

    def alpha_prior(self) -> RandomWalkNormal:
        return RandomWalkNormal(self.proportion_scale, self.proportion_drift, self.num_slices, self.num_topics)

    def beta_guide(self) -> MarkovNormal:
        return MarkovNormal(self.guide_beta_loc, self.guide_beta_log_scale.exp(), torch.tanh(self.guide_beta_coupling))

    def alpha_guide(self) -> MarkovNormal:
        return MarkovNormal(
            self.guide_alpha_loc, self.guide_alpha_log_scale.exp(), torch.tanh(self.guide_alpha_coupling)
        )

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

    def local_posteriors(
        self, batch: SequenceBatch, *, steps: int | None = None, tolerance: float = 1e-3, annealing_factor: float = 1.0
    ) -> LocalPosterior:
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
            eta = _newton_document_modes(
                start, document, log_word_topic, counts, prior_loc, precision, steps, tolerance
            )
            return LocalPosterior(
                eta, torch.linalg.inv(_document_curvature(torch.softmax(eta, -1), totals, precision)), start
            )

    def loss(self, batch: SequenceBatch, annealing_factor: float = 1.0, num_particles: int = 1) -> Tensor:
        r"""Negative ELBO of ``batch`` scaled to the full corpus, with every KL in closed form.

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
        elbo = (
            scale_up * documents
            - markov_normal_kl(beta_q, self.beta_prior())
            - markov_normal_kl(alpha_q, self.alpha_prior())
        )
        # The encoder learns to predict the local posteriors (offsets from the slice means).
        loc, scale = self.guide_encoder(word_ids, counts)
        target = dist.Normal(local.loc - self.proportion_logits()[slices], local.cov.diagonal(dim1=-2, dim2=-1).sqrt())
        encoder_loss = scale_up * torch.distributions.kl_divergence(target, dist.Normal(loc, scale)).sum()
        return -elbo + (encoder_loss - encoder_loss.detach())

    # -- scoring ----------------------------------------------------------
    def log_prob_batch(self, batch: SequenceBatch, *, num_particles: int = 1) -> Tensor:
        """``(N,)`` per-document ELBO at the posterior-mean topics and slice means:
        :math:`E_{q(\\eta_d)}[\\log p(w_d \\mid \\eta_d, \bar\beta)] - \\mathrm{KL}(q(\\eta_d) \\| p(\\eta_d \\mid \bar\alpha))`
        with :math:`q(\\eta_d)` the document's local posterior (:meth:`local_posteriors`), a lower bound
        on :math:`\\log p(w_d \\mid \bar\beta, \bar\alpha)`; Monte Carlo over ``num_particles`` draws of
        :math:`\\eta_d` (torch's global RNG)."""
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

    def top_words(
        self, vocabulary: WordVocabulary, num_words: int = 10, relevance: float = 1.0
    ) -> list[list[list[str]]]:
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

    def complete_documents(
        self, observed: SequenceBatch, held_out: SequenceBatch, *, steps: int = 100
    ) -> CompletionScore:
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
    def to_inference_data(
        self,
        batch: SequenceBatch | None = None,
        *,
        vocabulary: WordVocabulary | None = None,
        slice_labels: list[str] | None = None,
        num_draws: int = 10,
        seed: int = 0,
    ):
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
                    draws.append(
                        bound - _gaussian_kl_to_isotropic(local.loc, local.cov, alpha[m, slices], self.document_scale)
                    )
                log_lik = torch.stack(draws)
        coords = {
            "slice": slice_labels or list(range(S)),
            "topic": list(range(K)),
            "word": list(vocabulary.words) if vocabulary is not None else list(range(V)),
        }
        dims = {"beta": ["slice", "topic", "word"], "alpha": ["slice", "topic"], "documents": ["document"]}
        return az.from_dict(
            posterior={"beta": beta.numpy()[None], "alpha": alpha.numpy()[None]},
            log_likelihood=None if log_lik is None else {"documents": log_lik.numpy()[None]},
            coords=coords,
            dims=dims,
        )

    # -- sampling ---------------------------------------------------------
    def sample_documents(
        self,
        topic_word_logits: Tensor,
        proportion_logits: Tensor,
        slices: Tensor,
        length: int,
        generator: torch.Generator | None = None,
    ) -> SequenceBatch:
        """Documents of ``length`` tokens each at given ``(S, K, V)`` topics and ``(S, K)`` slice means."""
        eta = proportion_logits[slices] + self.document_scale * torch.randn(
            len(slices), self.num_topics, generator=generator
        )
        topics = torch.multinomial(torch.softmax(eta, -1), length, replacement=True, generator=generator)  # (N, length)
        word_probs = torch.softmax(topic_word_logits, -1)[slices[:, None], topics]  # (N, length, V)
        words = torch.multinomial(word_probs.reshape(-1, self.num_words), 1, generator=generator).reshape(
            len(slices), length
        )
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
