r"""Exact inference kernels for discrete-state Markov chains (hidden Markov models).

Every function takes the same three potentials and optional lengths:

* ``log_initial``    ``(K,)`` or ``(N, K)``: log potentials of :math:`s_1`;
* ``log_transition`` ``(K, K)`` or ``(N, K, K)``: log potentials indexed ``[from, to]``;
* ``log_emission``   ``(N, T, K)``: :math:`\log p(x_t \mid s_t = k)`; padded steps are ignored;
* ``lengths``        ``(N,)`` integer or ``None`` (every sequence has ``T`` steps).

Potentials need not be normalised: the log normaliser is

.. math:: \log Z = \log \sum_{s_{1:L}} \pi(s_1) e(1, s_1) \prod_{t=2}^{L} A(s_{t-1}, s_t) e(t, s_t),

and a length-0 sequence has :math:`\log Z = 0`. Outputs have the dtype and device of
``log_emission``.

Algorithms
----------
*Sequential, scaled probability space.* The forward recursion
:math:`\alpha_t = (\alpha_{t-1} \tilde A) \circ \tilde e_t`, renormalised at every step,
with :math:`\tilde e_t = \exp(\log e_t - \max_k \log e_{t,k})` and
:math:`\tilde A = \exp(\log A - \max \log A)`; the log normaliser is the sum of the
log normalising constants :math:`\log c_t` plus the subtracted maxima. The backward
recursion :math:`\beta_{t-1} = \tilde A (\tilde e_t \circ \beta_t) / c_t` gives the
smoothed marginals :math:`\gamma_t = \alpha_t \circ \beta_t` and the expected transition
counts :math:`\sum_t \alpha_{t-1}(i) \tilde A_{ij} \tilde e_t(j) \beta_t(j) / c_t`.
These are exactly the gradients of :math:`\log Z` with respect to ``log_emission``,
``log_transition`` and ``log_initial``, so :func:`log_marginal` is a
:class:`torch.autograd.Function` whose backward pass is one backward recursion (exact,
not a finite-difference or unrolled graph). On CPU the recursions are numba kernels in
float64 (float32 inputs are converted and results cast back), looping over sequences in
one compiled call; they run single-threaded (and release the GIL) because numba's
OpenMP pool spin-waits against torch's own threads and slowed the surrounding
tensor code several-fold. On other devices a torch loop over time does the same in the
input dtype.
Scaling keeps every quantity in ``[0, 1]``; its only failure mode is a transition
potential more than ~700 nats below the largest one on every path carrying the mass, which
underflows to zero (the log-space parallel path has no such limit).

*Parallel, log space.* Steps ``2..L`` become matrices
:math:`M_t(i, j) = \log A(i, j) + \log e_t(j)` (padded steps are the log-identity: 0 on
the diagonal, :math:`-\infty` elsewhere) combined by a tree reduction (log normaliser)
or an associative scan (filtering) of log-semiring matrix products, ``O(log T)`` depth.
Posterior marginals come from autograd of the log normaliser. Viterbi uses the max-plus
semiring; the MAP path is read off the gradient of the max-plus normaliser, which
``torch.max`` routes through exactly one argmax per product (a consistent backtrack, even
under ties). Forward-filter backward-sample draws with a torch loop over time.

Memory
------
Sequential paths use ``O(N T K)`` (the filtered marginals, plus ``int32`` back-pointers
for Viterbi); nothing of size ``T K^2`` is ever built. The parallel path materialises
``O(N T K^2)`` (``O(N T K^3)`` for Viterbi) and :func:`pair_marginals` is ``O(N T K^2)``
by definition.

Dispatch (``method="auto"``)
----------------------------
CPU: the numba sequential kernels. Other devices (CUDA): the parallel scan when its
working set fits in a quarter of the free device memory, else the torch sequential loop.
``"sequential"`` means numba on CPU and the torch loop elsewhere; ``"parallel"`` is the
scan on any device.

Example:
    >>> log_initial = torch.zeros(2)
    >>> log_transition = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).log()
    >>> log_emission = torch.randn(3, 5, 2)
    >>> log_marginal(log_initial, log_transition, log_emission).shape
    torch.Size([3])
"""

from __future__ import annotations

import torch  # noqa: F401  (the docstring examples, run by doctest in this namespace, use it)

# Besides the public API (``__all__``), the private helpers stay importable from here, as they
# were from the single module ``inference/discrete.py`` (the tests call some as ``discrete._name``).
from ._api import (
    _smoothed_by_autograd,  # noqa: F401
    filter,
    forward_backward,
    log_marginal,
    log_marginal_categorical,
    pair_marginals,
    sample_paths,
    viterbi,
)
from ._autograd import (  # noqa: F401
    _CategoricalLogMarginal,
    _numba_backward,
    _numba_forward,
    _NumbaLogMarginal,
    _scaled_potentials,
    _ScaledPotentials,
)
from ._common import (  # noqa: F401
    _METHODS,
    _SAFE_FASTMATH,
    Filtered,
    MAPPath,
    Smoothed,
    _check_float,
    _choose_backend,
    _memory_budget,
    _prepare,
    _scan_bytes,
    _shift,
)
from ._numba import (  # noqa: F401
    _backward_kernel,
    _backward_sample_kernel,
    _categorical_backward_kernel,
    _categorical_forward_kernel,
    _exp_shifted,
    _forward_kernel,
    _fused_forward_kernel,
    _inverse_cdf,
    _viterbi_kernel,
)
from ._scan import (  # noqa: F401
    _associative_scan,
    _log_matmul_exp,
    _max_plus,
    _parallel_filter,
    _parallel_log_normalizer,
    _parallel_viterbi,
    _SafeLog,
    _step_matrices,
    _tree_reduce,
)
from ._torch import (  # noqa: F401
    _torch_backward_sample,
    _torch_forward,
    _torch_viterbi,
)

__all__ = [
    "Filtered",
    "MAPPath",
    "Smoothed",
    "filter",
    "forward_backward",
    "log_marginal",
    "log_marginal_categorical",
    "pair_marginals",
    "sample_paths",
    "viterbi",
]
