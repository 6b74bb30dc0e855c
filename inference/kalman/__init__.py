r"""Exact inference kernels for linear-Gaussian state-space models (Kalman filtering).

The model, with state dimension ``d`` and observation dimension ``p`` (matrices act on
column vectors):

.. math::

    S_1 \sim \mathcal N(\mu_0, \Sigma_0), \qquad
    S_t = A S_{t-1} + w_t,\ w_t \sim \mathcal N(0, Q), \qquad
    X_t = H S_t + v_t,\ v_t \sim \mathcal N(0, R).

Every function takes the same arguments:

* ``transition_matrix``  :math:`A`        ``(d, d)`` or ``(N, d, d)``;
* ``transition_cov``     :math:`Q`        ``(d, d)`` or ``(N, d, d)``, positive definite;
* ``observation_matrix`` :math:`H`        ``(p, d)`` or ``(N, p, d)``;
* ``observation_cov``    :math:`R`        ``(p, p)`` or ``(N, p, p)``, positive definite;
* ``initial_mean``       :math:`\mu_0`    ``(d,)`` or ``(N, d)``;
* ``initial_cov``        :math:`\Sigma_0` ``(d, d)`` or ``(N, d, d)``, positive definite;
* ``observations``       ``(N, T, p)``; ``NaN`` marks a missing entry (a single entry or
  a whole row);
* ``lengths``            ``(N,)`` integer or ``None`` (every sequence has ``T`` steps);
  steps at or after a sequence's length are padding and are ignored.

Parameters without the leading ``N`` are shared by the batch. Outputs have the dtype and
device of ``observations`` (float32 or float64); the other tensors must match them.
Outputs at padded steps are zero. A length-0 sequence has log normaliser 0.

Algorithms
----------
*Filter.* Prediction :math:`m_{t|t-1} = A m_{t-1}`, :math:`P_{t|t-1} = A P_{t-1} A^\top + Q`;
update with the innovation :math:`e_t = x_t - H m_{t|t-1}`, its covariance
:math:`F_t = H P_{t|t-1} H^\top + R` (Cholesky factorised) and the gain
:math:`K_t = P_{t|t-1} H^\top F_t^{-1}`. The torch loop uses the Joseph form
:math:`P_t = (I - K_t H) P_{t|t-1} (I - K_t H)^\top + K_t R K_t^\top`, which stays
symmetric positive semi-definite under rounding in float32; the numba kernel (float64)
uses :math:`P_t = P_{t|t-1} - W^\top W` with :math:`W = L_t^{-1} H P_{t|t-1}`,
:math:`F_t = L_t L_t^\top`. Every covariance is symmetrised. The log normaliser is
:math:`\sum_t \log \mathcal N(e_t; 0, F_t)`; its terms are ``step_log_likelihood``.

*Steady state* (numba kernel, ``steady_state=True``, the default). When two successive
predicted covariances of fully observed steps differ by at most ``1e-13`` relative (max-abs
norm), the Riccati recursion has converged to rounding: the kernel caches :math:`K`,
:math:`L` and the filtered/predicted covariances and from then on updates only the means,
``O(d^2 + d p)`` per step instead of ``O(d^3 + d^2 p + p^3)``. It is used only for
time-invariant parameters (all of them are, per sequence) and only on fully observed
steps: a step with a missing entry runs the full update and the detection starts again.
Results agree with the full update to ~1e-12 relative (tested at 1e-10).

*Exact diffuse initialisation* (``diffuse=True``; Durbin & Koopman 2012, §5.2, §7.2; here
computed as de Jong's augmented filter, D&K §5.7). :math:`S_1` has an improper flat prior.
Write :math:`S_1 = c + s` for a fixed reference point :math:`c`. Given :math:`s`, every
quantity of the filter is that of the filter started at :math:`m_1 = c, P_1 = 0` except
the means, which are affine in :math:`s`: :math:`m_{t} + X_t s`, with :math:`X_1 = I` and :math:`X` updated like the mean
(:math:`X \leftarrow A X`, :math:`X \leftarrow X - K_t H X`). The innovations are
:math:`e_t - E_t s` with :math:`E_t = H X_{t|t-1}`, so the information on :math:`s`,
:math:`\mathcal S_t = \sum E^\top F^{-1} E`, :math:`b_t = \sum E^\top F^{-1} e`, is
accumulated alongside. The diffuse log-likelihood is

.. math:: \log L_d = \lim_{\kappa\to\infty} \big[\log p_\kappa(x) + \tfrac d2 \log\kappa\big]
          = \sum_t \log \mathcal N(e_t; 0, F_t) + \tfrac12 b^\top \mathcal S^{-1} b
            - \tfrac12 \log|\mathcal S|,

with :math:`p_\kappa` the likelihood under :math:`S_1 \sim \mathcal N(\cdot, \kappa I)`. This
is D&K's convention (−633.4646 on the Nile local level); the log of the Lebesgue integral
:math:`\int p(x \mid s_1) ds_1` is :math:`\log L_d + \tfrac d2 \log 2\pi`. The posterior
of :math:`S_1` given :math:`x_{1:t}` is :math:`\mathcal N(\mathcal S_t^{-1} b_t, \mathcal S_t^{-1})`
once :math:`\mathcal S_t` is positive definite (the state is *identified*); filtered,
predicted and smoothed moments combine the conditional ones with it
(:math:`m + X \hat s`, :math:`P + X \mathcal S^{-1} X^\top`) and are exact there; before
that they are ``NaN``. A sequence whose observations never identify :math:`S_1` raises
``ValueError``. ``step_log_likelihood`` holds the increments of the diffuse
log-likelihood of the prefixes (0 before identification). Nothing depends on :math:`c`
mathematically, but the combination cancels :math:`\sum e^\top F^{-1} e` against
:math:`b^\top \mathcal S^{-1} b`, which loses digits when :math:`c` is far from the data
while :math:`X_t` decays slowly; so a first pass from :math:`c = 0` (log-likelihood only)
estimates :math:`E[S_1 \mid x]` and the reported pass runs from there (about twice the
cost of the non-diffuse filter).

*Missing entries*, exactly and per sequence: at a step where entry ``j`` is missing, row
``j`` of :math:`H` is zeroed, row and column ``j`` of :math:`R` become those of the
identity and :math:`x_{t,j} = 0` (torch loop; the numba kernel drops the entry). Then
:math:`F_t` is block diagonal with a unit block for the missing entries,
:math:`e_{t,j} = 0` and column ``j`` of the gain is zero, so the update equals that of the
marginal model over the observed entries, and the log density differs from it only by
:math:`-\tfrac12 \log 2\pi` per missing entry, which is added back.

*Padding.* At padded steps every entry is missing and the transition is replaced by the
identity with zero noise, so the filtered moments are carried unchanged to step ``T``
(the forecast starts there) and the smoothed and sampled states of the valid steps are
exactly those of the unpadded sequence.

*Smoother* (Rauch–Tung–Striebel): :math:`J_t = P_t A^\top P_{t+1|t}^{-1}`,
:math:`m^s_t = m_t + J_t (m^s_{t+1} - m_{t+1|t})`,
:math:`P^s_t = P_t + J_t (P^s_{t+1} - P_{t+1|t}) J_t^\top` and the lag-one covariance
:math:`\operatorname{Cov}(S_{t+1}, S_t \mid x) = P^s_{t+1} J_t^\top` (the cross moments of
the E-step of EM). The numba kernel reuses :math:`J` over a steady-state stretch of the
filter, and there, once two successive smoothed covariances agree to ``1e-12`` relative,
also the smoothed and lag-one covariances (the backward recursion has converged), so
only the means are updated.

*Forward-filter backward-sample*: :math:`S_L \sim \mathcal N(m_L, P_L)`, then
:math:`S_t \mid S_{t+1} \sim \mathcal N(m_t + J_t (S_{t+1} - m_{t+1|t}),
P_t - J_t P_{t+1|t} J_t^\top)` (a torch loop). With ``diffuse``, :math:`S_1` is drawn
from its posterior first and the path given it.

*Parallel in time* (``method="parallel"``; Särkkä & García-Fernández 2021). The filter
is an associative scan (``O(log T)`` depth) over the elements
:math:`(A_k, b_k, C_k, \eta_k, J_k)` of their eq. (10)–(12): :math:`p(s_k \mid s_{k-1}, x_k)
= \mathcal N(A_k s_{k-1} + b_k, C_k)` and the information :math:`(\eta_k, J_k)` that
:math:`x_k` carries on :math:`s_{k-1}`; step 1 is the filtered law of :math:`S_1`. Missing
entries and padding use the same conventions as above (a padded step is the identity
element). The log densities are then computed for all steps at once from the one-step
predictions :math:`A m_{t-1}`, :math:`A P_{t-1} A^\top + Q`. The smoother is a backward
scan of the affine kernels :math:`s_t = J_t s_{t+1} + (m_t - J_t m_{t+1|t}) +
\mathcal N(0, P_t - J_t P_{t+1|t} J_t^\top)`. With ``diffuse``, the mean columns carry the
basis :math:`X` as extra columns. Plain torch operations: any device, float32/float64,
differentiable by autograd. It agrees with the sequential kernels to ~1e-12 in float64.

Dispatch (``method``)
---------------------
``"auto"``: on CPU, when no input requires grad (or grad mode is off), the numba kernels,
in float64 (float32 inputs are converted and the results cast back), one compiled call
over all sequences, single-threaded, releasing the GIL. On CPU with inputs requiring grad,
:func:`log_marginal` is an autograd Function whose forward pass runs the numba filter, one
numba smoother pass and the closed-form score of Fisher's identity, and whose backward pass
scales that score by the upstream gradient (``_LogMarginal``, ``_fused``; exact, first
derivatives only; the score is computed even if ``backward`` is never called); the other functions run the
torch loop over time, batched over sequences, in the input dtype, differentiable by
autograd. On any other device (CUDA), the parallel scan (differentiable by autograd).
``"sequential"``: numba without gradients, else the torch loop (the reference the
smoother's gradient is tested against), on any device. ``"parallel"``: the scan on any
device.

Memory
------
:func:`log_marginal` and :func:`forecast` by numba store ``O(N T)`` (per-step log
densities) plus ``O(N d^2)``; with gradients, :func:`log_marginal` holds, during its forward
call, the filtered, predicted and smoothed means, ``O(N T d)``, and one filtered and
predicted covariance per step that is not a steady-state step plus one pair per
steady-state epoch (``O(N d^2)`` once the filter has converged; ``O(N T d^2)`` at most, and
with ``diffuse``, whose basis :math:`X_t` is per step); the smoother adds the
covariances into the score's sums as it goes. It keeps only the score (the size of the
inputs) for ``backward``. The other functions, the torch loop and the parallel scan
store the moments and a few temporaries of the same size: ``O(N T d^2)`` (``O(N T d
(d + p))`` for the scan's elements); nothing larger.

Example:
    >>> d, p = 2, 1
    >>> eye = torch.eye(d)
    >>> x = torch.randn(3, 5, p)
    >>> log_marginal(0.9 * eye, 0.1 * eye, torch.ones(p, d), torch.eye(p),
    ...              torch.zeros(d), eye, x).shape
    torch.Size([3])
"""

from __future__ import annotations

import torch  # noqa: F401  (the docstring examples, run by doctest in this namespace, use it)

from ._api import forecast, kalman_filter, log_marginal, rts_smoother, sample_states
from ._common import KalmanFiltered, KalmanForecast, KalmanSmoothed
from .varying_noise import VaryingNoiseSmoothed, kalman_smoother_varying_noise

__all__ = [
    "KalmanFiltered",
    "KalmanForecast",
    "KalmanSmoothed",
    "VaryingNoiseSmoothed",
    "forecast",
    "kalman_filter",
    "kalman_smoother_varying_noise",
    "log_marginal",
    "rts_smoother",
    "sample_states",
]
