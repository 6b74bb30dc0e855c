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
(:func:`markov_normal_kl`, which :meth:`DynamicTopicModel.loss` calls, registered
with ``torch.distributions.kl`` so ``TraceMeanField_ELBO`` uses it too) and
mini-batches over documents.

**Each document's** :math:`q(\eta_d)` **is a local posterior.** In the training
loss (:meth:`DynamicTopicModel.loss`, which ``fit`` and ``seqzoo fit`` use) a
document's :math:`q(\eta_d)` is found, not amortised
(:meth:`DynamicTopicModel.local_posteriors`): at most ``local_steps`` Newton
steps, given the posterior-mean topics :math:`\bar\beta` and slice means
:math:`\bar\alpha`, on the bound of :math:`\log p(w_d \mid \eta_d, \bar\beta)
+ \log N(\eta_d; \bar\alpha_{t(d)}, a^2 I)` that holds the word-topic
responsibilities fixed, towards the MAP of :math:`\eta_d`, whose inverse
curvature is the full K x K covariance (a Laplace approximation; no gradient
flows through it). The topics and :math:`\alpha` then step on the ELBO under
these posteriors, the documents' KL to :math:`N(\alpha_{t(d)}, a^2 I)` in closed
form. The Newton steps start from an amortised encoder's mean: an MLP on the
bag of words (a sum of word embeddings weighted by ``log(1 + count)``, never a
dense documents x vocabulary matrix) whose output is an offset from the guide's
mean of :math:`\alpha_{t(d)}`. The encoder does not enter the ELBO: it regresses
onto the local posteriors (their diagonal), to start the next Newton steps
close. Scoring (:meth:`DynamicTopicModel.log_prob_batch`), the documents' topic
proportions and document completion use the local posteriors as well; only the
Pyro ``guide`` keeps the encoder itself as :math:`\eta_d`'s guide (the offset
added to the guide's draw of :math:`\alpha_{t(d)}`).

**The discrete Kalman filter** (:class:`DiscreteKalmanFilter`): one Gaussian
state per slice, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, \Gamma)`, and the
slice's words :math:`W_t \sim \mathrm{Softmax}(B S_t)`. The softmax likelihood
is replaced by its Gaussian (Laplace) approximation at a linearisation point,
a pseudo-observation :math:`y_t = S_t + \epsilon_t`,
:math:`\epsilon_t \sim N(0, R_t)`, so filtering and smoothing are a Kalman
filter with a time-varying observation covariance ``R_t``; iterating the
linearisation at the smoothed means gives the Laplace posterior.

The package reads in six parts:

* :mod:`zoo.dtm.distributions` — the random-walk prior, the Markov guide and their KL;
* :mod:`zoo.dtm.documents` — document-level tensor kernels: the likelihood with the topics
  summed out, completion scores, the local posteriors' Newton steps, static EM, k-means seeding;
* :mod:`zoo.dtm.model` — :class:`DynamicTopicModel` and :class:`StaticTopicModel`;
* :mod:`zoo.dtm.kalman_filter` — :class:`DiscreteKalmanFilter`;
* :mod:`zoo.dtm.figures` — top words, prevalence and drift figures;
* :mod:`zoo.dtm.registration` — the ``dtm`` and ``lda`` command-line families.

Shapes: ``S`` slices, ``K`` topics, ``V`` words, ``N`` documents, ``L`` distinct
words of the longest document.

References:
    D. Blei and J. Lafferty, "Dynamic topic models", ICML 2006.
"""

from __future__ import annotations

from .distributions import _LOG_2PI, MarkovNormal, RandomWalkNormal, markov_normal_kl  # noqa: F401
from .documents import (  # noqa: F401
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
    unigram_completion,
)
from .figures import _slice_positions, drift_figure, prevalence_figure, top_words_text  # noqa: F401
from .kalman_filter import DiscreteKalmanFilter, LaplacePosterior
from .model import DynamicTopicModel, StaticTopicModel, _Encoder  # noqa: F401

# The public classes' home is this package (pickles, reprs and the "class" of a saved model.json
# name zoo.dtm, as before the split).
for _cls in (
    CompletionScore,
    DiscreteKalmanFilter,
    DynamicTopicModel,
    LaplacePosterior,
    LocalPosterior,
    MarkovNormal,
    RandomWalkNormal,
    StaticTopicModel,
):
    _cls.__module__ = __name__
del _cls

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

# Importing the package registers the `dtm` and `lda` command-line families.
from .registration import (  # noqa: E402, F401
    _add_dtm_arguments,
    _add_lda_arguments,
    _build_dtm,
    _build_lda,
    _corpus_outputs,
    _corpus_sizes,
    _topic_options,
    _topic_settings,
)
