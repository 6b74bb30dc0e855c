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

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor

from .validation import check_lengths
from .validation import valid_mask as _valid_mask

__all__ = [
    "KalmanFiltered",
    "KalmanForecast",
    "KalmanSmoothed",
    "forecast",
    "kalman_filter",
    "log_marginal",
    "rts_smoother",
    "sample_states",
]

_LOG_2PI = math.log(2.0 * math.pi)
_METHODS = ("auto", "sequential", "parallel")
# Reassociation lets LLVM vectorise the inner products; no "nnan": NaN marks missing entries.
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
# Relative change of the predicted covariance below which the numba kernel reuses the gain.
_STEADY_TOL = 1e-13
# The smoother's test of convergence of its covariances: looser, as the backward recursion's
# rounding noise at d = 64 sits near 1e-13 relative and the test then never passed (the
# smoothed moments still agree with the full recursion to ~1e-13 relative).
_SMOOTHER_STEADY_TOL = 1e-12


class KalmanFiltered(NamedTuple):
    """Result of :func:`kalman_filter`. Zero at padded steps.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood :math:`\\log p(x_{1:L})`.
        filtered_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:t}]`.
        filtered_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:t})`.
        predicted_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:t-1}]`.
        predicted_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:t-1})`.
        step_log_likelihood: ``(N, T)`` :math:`\\log p(x_t \\mid x_{1:t-1})` over the observed
            entries of step ``t`` (0 where none is observed); sums to ``log_normalizer``. With
            ``diffuse``, the increments of the diffuse log-likelihood of :math:`x_{1:t}`: 0
            before the state is identified, the whole diffuse term at the step that identifies it.
    """

    log_normalizer: Tensor
    filtered_mean: Tensor
    filtered_cov: Tensor
    predicted_mean: Tensor
    predicted_cov: Tensor
    step_log_likelihood: Tensor


class KalmanSmoothed(NamedTuple):
    """Result of :func:`rts_smoother`. Zero at padded steps.

    Attributes:
        log_normalizer: ``(N,)`` log marginal likelihood.
        smoothed_mean: ``(N, T, d)`` :math:`E[S_t \\mid x_{1:L}]`.
        smoothed_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t \\mid x_{1:L})`.
        lag_one_cov: ``(N, T, d, d)`` :math:`\\operatorname{Cov}(S_t, S_{t-1} \\mid x_{1:L})`
            (rows index :math:`S_t`); zero at ``t = 0``.
    """

    log_normalizer: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    lag_one_cov: Tensor


class KalmanForecast(NamedTuple):
    """Result of :func:`forecast`: predictive moments after the end of each sequence.

    Attributes:
        state_mean: ``(N, steps, d)`` :math:`E[S_{L+k} \\mid x_{1:L}]`, ``k = 1..steps``.
        state_cov: ``(N, steps, d, d)``.
        observation_mean: ``(N, steps, p)`` :math:`E[X_{L+k} \\mid x_{1:L}]`.
        observation_cov: ``(N, steps, p, p)``.
    """

    state_mean: Tensor
    state_cov: Tensor
    observation_mean: Tensor
    observation_cov: Tensor


class _Params(NamedTuple):
    transition_matrix: Tensor  # (N, d, d)
    transition_cov: Tensor  # (N, d, d)
    observation_matrix: Tensor  # (N, p, d)
    observation_cov: Tensor  # (N, p, p)
    initial_mean: Tensor  # (N, d)
    initial_cov: Tensor  # (N, d, d)
    observations: Tensor  # (N, T, p), NaN at missing entries
    lengths: Tensor  # (N,) int64


class _Raw(NamedTuple):
    """Filter output before the diffuse combination; padded steps carry the last valid moments.

    With ``diffuse`` the moments are those given :math:`S_1 = c` (filter from
    :math:`m_1 = c, P_1 = 0`, ``c`` passed as ``initial_mean``); the mean given
    :math:`S_1 = c + s` is ``mean + basis @ s``, and
    ``info_matrix``/``info_vector`` are the accumulated information on :math:`S_1`. Fields of
    size ``T d^2`` are ``None`` when not stored.
    """

    step_log_likelihood: Tensor  # (N, T), given S_1 = c with diffuse
    filtered_mean: Tensor | None  # (N, T, d)
    filtered_cov: Tensor | None  # (N, T, d, d)
    predicted_mean: Tensor | None
    predicted_cov: Tensor | None
    filtered_basis: Tensor | None  # (N, T, d, d), diffuse only
    predicted_basis: Tensor | None
    info_matrix: Tensor | None  # (N, T, d, d) cumulative, diffuse only
    info_vector: Tensor | None  # (N, T, d)
    final_mean: Tensor  # (N, d) filtered moments at step T (carried through padding)
    final_cov: Tensor
    final_basis: Tensor | None
    final_info_matrix: Tensor | None
    final_info_vector: Tensor | None
    steady_epoch: Tensor | None  # (N, T) int64 (numba): > 0 where the steady-state gain was used
    valid: Tensor  # (N, T) bool


class _FilterState(NamedTuple):
    """Unmasked filter output: padded steps carry the last valid filtered moments."""

    log_normalizer: Tensor
    step_log_likelihood: Tensor | None
    filtered_mean: Tensor | None
    filtered_cov: Tensor | None
    predicted_mean: Tensor | None
    predicted_cov: Tensor | None
    final_mean: Tensor
    final_cov: Tensor
    initial_posterior: "_InitialPosterior | None"
    valid: Tensor  # (N, T) bool


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name}: expected dtype float32 or float64, got {value.dtype}")
    return value


def _prepare(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None,
) -> _Params:
    """Validate shapes, dtypes and devices; expand the parameters to a leading ``N``."""
    observations = _check_tensor("observations", observations)
    if observations.dim() != 3 or observations.shape[1] < 1 or observations.shape[2] < 1:
        raise ValueError(
            f"observations: expected shape (N, T, p) with T >= 1 and p >= 1, got {tuple(observations.shape)}"
        )
    num_seq, num_steps, obs_dim = observations.shape
    dtype, device = observations.dtype, observations.device
    transition_matrix = _check_tensor("transition_matrix", transition_matrix)
    if transition_matrix.dim() not in (2, 3) or transition_matrix.shape[-1] < 1:
        raise ValueError(
            f"transition_matrix: expected shape (d, d) or (N, d, d), got {tuple(transition_matrix.shape)}"
        )
    state_dim = transition_matrix.shape[-1]
    expected = {
        "transition_matrix": (state_dim, state_dim),
        "transition_cov": (state_dim, state_dim),
        "observation_matrix": (obs_dim, state_dim),
        "observation_cov": (obs_dim, obs_dim),
        "initial_mean": (state_dim,),
        "initial_cov": (state_dim, state_dim),
    }
    values = {
        "transition_matrix": transition_matrix,
        "transition_cov": transition_cov,
        "observation_matrix": observation_matrix,
        "observation_cov": observation_cov,
        "initial_mean": initial_mean,
        "initial_cov": initial_cov,
    }
    expanded = {}
    for name, shape in expected.items():
        value = _check_tensor(name, values[name])
        if value.shape not in (shape, (num_seq, *shape)):
            raise ValueError(
                f"{name}: expected shape {shape} or {(num_seq, *shape)} (d={state_dim} from transition_matrix, "
                f"N={num_seq} and p={obs_dim} from observations), got {tuple(value.shape)}"
            )
        if value.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype} (that of observations), got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{name}: expected device {device} (that of observations), got {value.device}")
        expanded[name] = value.expand(num_seq, *shape)

    lengths = check_lengths(lengths, num_seq, num_steps, device)
    return _Params(**expanded, observations=observations, lengths=lengths)


def _symmetrise(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _choose_backend(params: _Params, method: str) -> str:
    """Map ``method`` to ``"numba"``, ``"torch"`` (sequential loop) or ``"parallel"`` (module docstring)."""
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method == "parallel" or (method == "auto" and params.observations.device.type != "cpu"):
        return "parallel"
    needs_grad = torch.is_grad_enabled() and any(
        value.requires_grad for value in params if isinstance(value, Tensor)
    )
    if params.observations.device.type == "cpu" and not needs_grad:
        return "numba"
    return "torch"


# --------------------------------------------------------------------------------------
# Sequential filter, torch loop (any device, autograd)
# --------------------------------------------------------------------------------------


def _torch_filter(params: _Params, diffuse: bool) -> _Raw:
    """Kalman filter over all ``T`` steps (padded steps: identity transition, nothing observed).

    With ``diffuse``, runs from :math:`m_1 = c` (``initial_mean``), :math:`P_1 = 0` and carries the basis
    :math:`X_t` of the dependence of the state mean on :math:`s_1` and the accumulated
    information :math:`(\\sum_t E_t^\\top F_t^{-1} E_t, \\sum_t E_t^\\top F_t^{-1} e_t)`.
    """
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype, device = observations.dtype, observations.device
    valid = _valid_mask(params.lengths, num_steps)
    observed = ~torch.isnan(observations) & valid[..., None]  # (N, T, p)
    values = torch.where(observed, observations, torch.zeros((), dtype=dtype, device=device))
    state_eye = torch.eye(state_dim, dtype=dtype, device=device)

    step_lls, filtered_means, filtered_covs, predicted_means, predicted_covs = [], [], [], [], []
    filtered_bases, predicted_bases, info_matrices, info_vectors = [], [], [], []
    if diffuse:
        mean = params.initial_mean  # the reference point of the diffuse start (see _run_filter)
        cov = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
        basis = state_eye.expand(num_seq, state_dim, state_dim)
        info_matrix = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
        info_vector = torch.zeros(num_seq, state_dim, dtype=dtype, device=device)
    else:
        mean, cov = params.initial_mean, params.initial_cov
    for t in range(num_steps):
        if t > 0:
            step_valid = valid[:, t, None, None]
            transition = torch.where(step_valid, params.transition_matrix, state_eye)
            noise = torch.where(step_valid, params.transition_cov, torch.zeros_like(state_eye))
            mean = (transition @ mean[..., None])[..., 0]
            cov = _symmetrise(transition @ cov @ transition.transpose(-1, -2) + noise)
            if diffuse:
                basis = transition @ basis
        predicted_means.append(mean)
        predicted_covs.append(cov)
        if diffuse:
            predicted_bases.append(basis)

        mask = observed[:, t].to(dtype)  # (N, p)
        obs_matrix = params.observation_matrix * mask[..., None]
        # Missing entries get unit variance, uncorrelated with the rest (see module docstring).
        obs_cov = params.observation_cov * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1.0 - mask)
        innovation = values[:, t] - (obs_matrix @ mean[..., None])[..., 0]  # (N, p)
        cov_obs_t = cov @ obs_matrix.transpose(-1, -2)  # (N, d, p)
        innovation_cov = _symmetrise(obs_matrix @ cov_obs_t + obs_cov)
        innovation_chol = torch.linalg.cholesky(innovation_cov)
        gain = torch.cholesky_solve(cov_obs_t.transpose(-1, -2), innovation_chol).transpose(-1, -2)  # (N, d, p)
        mean = mean + (gain @ innovation[..., None])[..., 0]
        residual_op = state_eye - gain @ obs_matrix
        cov = _symmetrise(
            residual_op @ cov @ residual_op.transpose(-1, -2) + gain @ obs_cov @ gain.transpose(-1, -2)
        )
        filtered_means.append(mean)
        filtered_covs.append(cov)

        whitened = torch.linalg.solve_triangular(innovation_chol, innovation[..., None], upper=False)[..., 0]
        if diffuse:
            obs_basis = obs_matrix @ basis  # (N, p, d): E_t, zero rows at missing entries
            basis = basis - gain @ obs_basis
            white_basis = torch.linalg.solve_triangular(innovation_chol, obs_basis, upper=False)
            info_matrix = info_matrix + white_basis.transpose(-1, -2) @ white_basis
            info_vector = info_vector + (white_basis.transpose(-1, -2) @ whitened[..., None])[..., 0]
            filtered_bases.append(basis)
            info_matrices.append(info_matrix)
            info_vectors.append(info_vector)
        log_det = 2.0 * innovation_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        num_observed = mask.sum(-1)
        step_lls.append(-0.5 * (whitened.square().sum(-1) + log_det + num_observed * _LOG_2PI))

    stack = lambda values: torch.stack(values, 1)  # noqa: E731
    return _Raw(
        step_log_likelihood=stack(step_lls),
        filtered_mean=stack(filtered_means),
        filtered_cov=stack(filtered_covs),
        predicted_mean=stack(predicted_means),
        predicted_cov=stack(predicted_covs),
        filtered_basis=stack(filtered_bases) if diffuse else None,
        predicted_basis=stack(predicted_bases) if diffuse else None,
        info_matrix=stack(info_matrices) if diffuse else None,
        info_vector=stack(info_vectors) if diffuse else None,
        final_mean=mean,
        final_cov=cov,
        final_basis=basis if diffuse else None,
        final_info_matrix=info_matrix if diffuse else None,
        final_info_vector=info_vector if diffuse else None,
        steady_epoch=None,
        valid=valid,
    )


# --------------------------------------------------------------------------------------
# Sequential filter and smoother, numba (CPU, float64)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _cholesky_in_place(matrix, size):  # pragma: no cover
    """Lower Cholesky factor of ``matrix[:size, :size]`` in place; False if not positive definite."""
    for j in range(size):
        acc = matrix[j, j]
        for k in range(j):
            acc -= matrix[j, k] * matrix[j, k]
        if not acc > 0.0:
            return False
        root = np.sqrt(acc)
        matrix[j, j] = root
        for i in range(j + 1, size):
            acc = matrix[i, j]
            for k in range(j):
                acc -= matrix[i, k] * matrix[j, k]
            matrix[i, j] = acc / root
        for i in range(j):
            matrix[i, j] = 0.0
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _forward_substitute(chol, size, rhs, num_cols):  # pragma: no cover
    """``rhs[:size, :num_cols] <- chol[:size, :size]^{-1} rhs`` (lower triangular)."""
    for i in range(size):
        inv = 1.0 / chol[i, i]
        for c in range(num_cols):
            acc = rhs[i, c]
            for k in range(i):
                acc -= chol[i, k] * rhs[k, c]
            rhs[i, c] = acc * inv


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_gain(A, predicted_next, filtered, chol, rhs, gain, dim):  # pragma: no cover
    """The RTS gain ``J = P_t A^T P_{t+1|t}^{-1}`` into ``gain`` (d, d), through ``J^T = P_{t+1|t}^{-1} A P_t``
    by a Cholesky factor of ``predicted_next`` in ``chol`` and two triangular solves in ``rhs`` (scratch,
    d x d each). False where ``predicted_next`` is not positive definite."""
    chol[:, :] = predicted_next
    if not _cholesky_in_place(chol, dim):
        return False
    for i in range(dim):
        for j in range(dim):
            acc = 0.0
            for k in range(dim):
                acc += A[i, k] * filtered[k, j]
            rhs[i, j] = acc
    _forward_substitute(chol, dim, rhs, dim)
    for i in range(dim - 1, -1, -1):  # back substitution with chol^T
        inv = 1.0 / chol[i, i]
        for c in range(dim):
            acc = rhs[i, c]
            for k in range(i + 1, dim):
                acc -= chol[k, i] * rhs[k, c]
            rhs[i, c] = acc * inv
    for i in range(dim):
        for j in range(dim):
            gain[i, j] = rhs[j, i]
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoothed_mean_step(gain, smoothed_next, predicted_next, filtered, diff_vec, out, dim):  # pragma: no cover
    """The RTS mean ``m_t = f_t + J (m_{t+1} - p_{t+1})`` into ``out`` (d,); ``diff_vec`` (d,) scratch."""
    for i in range(dim):
        diff_vec[i] = smoothed_next[i] - predicted_next[i]
    for i in range(dim):
        acc = filtered[i]
        for j in range(dim):
            acc += gain[i, j] * diff_vec[j]
        out[i] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _times_transpose(matrix, gain, out, dim):  # pragma: no cover
    """``out = matrix @ gain^T`` (d, d): the lag-one covariance ``C_{t+1} = V_{t+1} J^T``."""
    for i in range(dim):
        for j in range(dim):
            acc = 0.0
            for k in range(dim):
                acc += matrix[i, k] * gain[j, k]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoothed_cov_step(gain, next_cov, predicted_next, filtered, diff, work, out, dim):  # pragma: no cover
    """The RTS covariance ``V_t = sym(P_t) + J (V_{t+1} - P_{t+1|t}) J^T`` into ``out`` (d, d), with
    ``diff`` and ``work`` as scratch. Returns ``(max |V_t - V_{t+1}|, max |V_t|)``, the smoother's
    steady-state test."""
    for i in range(dim):
        for j in range(dim):
            diff[i, j] = next_cov[i, j] - predicted_next[i, j]
    for i in range(dim):  # work = J diff
        for j in range(dim):
            work[i, j] = 0.0
        for k in range(dim):
            g_ik = gain[i, k]
            for j in range(dim):
                work[i, j] += g_ik * diff[k, j]
    change = 0.0
    scale = 0.0
    for i in range(dim):
        for j in range(i + 1):
            acc = 0.0
            for k in range(dim):
                acc += work[i, k] * gain[j, k]
            value = 0.5 * (filtered[i, j] + filtered[j, i]) + acc
            out[i, j] = value
            out[j, i] = value
            change = max(change, abs(value - next_cov[i, j]))
            scale = max(scale, abs(value))
    return change, scale


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _filter_kernel(transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov,
                   observations, lengths, diffuse, steady_tol, store, compact,
                   step_ll, final_mean, final_cov, final_basis, final_info_matrix, final_info_vector,
                   predicted_mean, predicted_cov, filtered_mean, filtered_cov,
                   predicted_basis, filtered_basis, info_matrix, info_vector, steady_epoch, cov_source,
                   incomplete_slot, num_incomplete, status):  # pragma: no cover
    """Kalman filter of every sequence; see :func:`_numba_filter` for the arrays.

    ``status[n]`` is set to 1 when an innovation covariance is not positive definite.
    With ``store``, ``cov_source[n, t]`` is the step whose stored covariances are those of
    step ``t``: ``t`` itself, except with ``compact``, where a step updated by the cached
    steady-state gain writes no covariance (they are the epoch's, stored at the step that
    entered it, whose index it gives) and padded steps write none: over a steady-state
    epoch the filter writes one pair of ``d x d`` covariances, not two per step. With
    ``store``, the valid steps with a missing entry are numbered in the order ``(n, t)``
    (``incomplete_slot[n, t]``, ``-1`` at the other valid steps, left as given at padded
    ones) and ``num_incomplete[0]`` is their count.
    """
    num_seq, num_steps, obs_dim = observations.shape
    dim = transition.shape[1]
    log_2pi = np.log(2.0 * np.pi)
    mean = np.empty(dim)
    work_vec = np.empty(dim)
    cov = np.empty((dim, dim))
    work = np.empty((dim, dim))
    prev_pred = np.empty((dim, dim))
    basis = np.zeros((dim, dim))
    work_basis = np.empty((dim, dim))
    observed = np.empty(obs_dim, np.int64)
    chol = np.empty((obs_dim, obs_dim))
    white_cross = np.empty((obs_dim, dim))  # L^{-1} H_k P
    white = np.empty((obs_dim, 1))
    white_basis = np.empty((obs_dim, dim))
    ss_white_cross = np.empty((obs_dim, dim))
    ss_chol = np.empty((obs_dim, obs_dim))
    ss_filtered = np.empty((dim, dim))
    ss_predicted = np.empty((dim, dim))
    info_mat = np.zeros((dim, dim))
    info_vec = np.zeros(dim)
    for n in range(num_seq):
        A = transition[n]
        Q = transition_cov[n]
        H = obs_matrix[n]
        R = obs_cov[n]
        length = lengths[n]
        if diffuse:
            mean[:] = initial_mean[n]  # the reference point of the diffuse start
            cov[:, :] = 0.0
            basis[:, :] = 0.0
            for i in range(dim):
                basis[i, i] = 1.0
        else:
            mean[:] = initial_mean[n]
            cov[:, :] = initial_cov[n]
        info_mat[:, :] = 0.0
        info_vec[:] = 0.0
        steady = False
        prev_full = False
        epoch = 0
        epoch_step = 0  # the step that entered the current steady-state epoch
        ss_log_det = 0.0
        for t in range(length):
            candidate = False
            chol_used = chol
            cross_used = white_cross
            if t > 0:
                for i in range(dim):
                    acc = 0.0
                    for j in range(dim):
                        acc += A[i, j] * mean[j]
                    work_vec[i] = acc
                mean[:] = work_vec
                if diffuse:
                    for i in range(dim):
                        for j in range(dim):
                            work_basis[i, j] = 0.0
                        for k in range(dim):
                            a_ik = A[i, k]
                            for j in range(dim):
                                work_basis[i, j] += a_ik * basis[k, j]
                    basis[:, :] = work_basis
                if not steady:
                    for i in range(dim):
                        for j in range(dim):
                            work[i, j] = 0.0
                        for k in range(dim):
                            a_ik = A[i, k]
                            for j in range(dim):
                                work[i, j] += a_ik * cov[k, j]
                    for i in range(dim):
                        for j in range(dim):
                            acc = 0.0
                            for k in range(dim):
                                acc += work[i, k] * A[j, k]
                            cov[i, j] = acc + Q[i, j]
                    diff = 0.0
                    scale = 0.0
                    for i in range(dim):
                        for j in range(i + 1):
                            value = 0.5 * (cov[i, j] + cov[j, i])
                            cov[i, j] = value
                            cov[j, i] = value
                            diff = max(diff, abs(value - prev_pred[i, j]))
                            scale = max(scale, abs(value))
                    candidate = prev_full and diff <= steady_tol * scale
                    prev_pred[:, :] = cov
            else:
                prev_pred[:, :] = cov
            num_obs = 0
            for j in range(obs_dim):
                if not np.isnan(observations[n, t, j]):
                    observed[num_obs] = j
                    num_obs += 1
            steady_step = num_obs == obs_dim and steady
            if store:
                if num_obs < obs_dim:
                    incomplete_slot[n, t] = num_incomplete[0]
                    num_incomplete[0] += 1
                else:
                    incomplete_slot[n, t] = -1
                predicted_mean[n, t] = mean
                if not (compact and steady_step):
                    predicted_cov[n, t] = ss_predicted if steady else cov
                cov_source[n, t] = epoch_step if compact and steady_step else t
                if diffuse:
                    predicted_basis[n, t] = basis

            ll = 0.0
            if steady_step:
                # Steady state: the gain and innovation covariance are those cached at convergence.
                for a in range(obs_dim):
                    acc = observations[n, t, a]
                    for j in range(dim):
                        acc -= H[a, j] * mean[j]
                    white[a, 0] = acc
                _forward_substitute(ss_chol, obs_dim, white, 1)
                square = 0.0
                for a in range(obs_dim):
                    square += white[a, 0] * white[a, 0]
                    w_a = white[a, 0]
                    for i in range(dim):
                        mean[i] += ss_white_cross[a, i] * w_a
                ll = -0.5 * (square + ss_log_det + obs_dim * log_2pi)
                chol_used = ss_chol
                cross_used = ss_white_cross
                if store:
                    steady_epoch[n, t] = epoch
            else:
                if steady:
                    cov[:, :] = ss_predicted  # leave the steady state at a partially observed step
                    steady = False
                if num_obs > 0:
                    # white_cross = L^{-1} H_k P (k x d); chol = H_k P H_k^T + R_k
                    for a in range(num_obs):
                        row = observed[a]
                        for i in range(dim):
                            acc = 0.0
                            for j in range(dim):
                                acc += H[row, j] * cov[j, i]
                            white_cross[a, i] = acc
                    for a in range(num_obs):
                        for c in range(a + 1):
                            acc = R[observed[a], observed[c]]
                            for j in range(dim):
                                acc += white_cross[a, j] * H[observed[c], j]
                            chol[a, c] = acc
                            chol[c, a] = acc
                    if not _cholesky_in_place(chol, num_obs):
                        status[n] = 1
                        break
                    _forward_substitute(chol, num_obs, white_cross, dim)
                    log_det = 0.0
                    for a in range(num_obs):
                        row = observed[a]
                        acc = observations[n, t, row]
                        for j in range(dim):
                            acc -= H[row, j] * mean[j]
                        white[a, 0] = acc
                        log_det += 2.0 * np.log(chol[a, a])
                    _forward_substitute(chol, num_obs, white, 1)
                    square = 0.0
                    for a in range(num_obs):
                        square += white[a, 0] * white[a, 0]
                        w_a = white[a, 0]
                        for i in range(dim):
                            mean[i] += white_cross[a, i] * w_a
                    for i in range(dim):
                        for j in range(i + 1):
                            acc = 0.0
                            for a in range(num_obs):
                                acc += white_cross[a, i] * white_cross[a, j]
                            value = 0.5 * (cov[i, j] + cov[j, i]) - acc
                            cov[i, j] = value
                            cov[j, i] = value
                    ll = -0.5 * (square + log_det + num_obs * log_2pi)
                    chol_used = chol
                    cross_used = white_cross
                    if num_obs == obs_dim and candidate and steady_tol > 0.0:
                        ss_white_cross[:, :] = white_cross
                        ss_chol[:, :] = chol
                        ss_log_det = log_det
                        ss_filtered[:, :] = cov
                        ss_predicted[:, :] = prev_pred
                        steady = True
                        epoch += 1
                        epoch_step = t
                        if store:
                            steady_epoch[n, t] = epoch
                prev_full = num_obs == obs_dim
            if diffuse and num_obs > 0:
                # E_t = H_k X_t whitened; X_t <- X_t - K_t E_t; information += E^T F^{-1} (E, e).
                for a in range(num_obs):
                    row = observed[a]
                    for j in range(dim):
                        acc = 0.0
                        for k in range(dim):
                            acc += H[row, k] * basis[k, j]
                        white_basis[a, j] = acc
                _forward_substitute(chol_used, num_obs, white_basis, dim)
                for a in range(num_obs):
                    for i in range(dim):
                        c_ai = cross_used[a, i]
                        for j in range(dim):
                            basis[i, j] -= c_ai * white_basis[a, j]
                for i in range(dim):
                    for j in range(dim):
                        acc = 0.0
                        for a in range(num_obs):
                            acc += white_basis[a, i] * white_basis[a, j]
                        info_mat[i, j] += acc
                    acc = 0.0
                    for a in range(num_obs):
                        acc += white_basis[a, i] * white[a, 0]
                    info_vec[i] += acc
            step_ll[n, t] = ll
            if store:
                filtered_mean[n, t] = mean
                if not (compact and steady_step):
                    filtered_cov[n, t] = ss_filtered if steady else cov
                if diffuse:
                    filtered_basis[n, t] = basis
                    info_matrix[n, t] = info_mat
                    info_vector[n, t] = info_vec
        if steady:
            cov[:, :] = ss_filtered
        final_mean[n] = mean
        final_cov[n] = cov
        if diffuse:
            final_basis[n] = basis
            final_info_matrix[n] = info_mat
            final_info_vector[n] = info_vec
        if store and not compact:
            for t in range(length, num_steps):
                predicted_mean[n, t] = mean
                predicted_cov[n, t] = cov
                filtered_mean[n, t] = mean
                filtered_cov[n, t] = cov
                if diffuse:
                    predicted_basis[n, t] = basis
                    filtered_basis[n, t] = basis
                    info_matrix[n, t] = info_mat
                    info_vector[n, t] = info_vec


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_kernel(transition, filtered_mean, filtered_cov, predicted_mean, predicted_cov, lengths,
                     steady_epoch, steady_tol, diffuse, filtered_basis, predicted_basis,
                     smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis, status):  # pragma: no cover
    """RTS smoother of every sequence (arrays zero-initialised; padded steps stay zero).

    Within a steady-state epoch of the filter the gain is reused, and once two successive
    smoothed covariances agree to ``steady_tol`` relative, so are the smoothed and lag-one
    covariances (only the means are updated).
    """
    num_seq, num_steps, dim = filtered_mean.shape
    gain = np.empty((dim, dim))
    chol = np.empty((dim, dim))
    rhs = np.empty((dim, dim))
    diff = np.empty((dim, dim))
    work = np.empty((dim, dim))
    diff_vec = np.empty(dim)
    ss_cov = np.empty((dim, dim))
    ss_lag = np.empty((dim, dim))
    for n in range(num_seq):
        A = transition[n]
        length = lengths[n]
        if length == 0:
            continue
        last = length - 1
        smoothed_mean[n, last] = filtered_mean[n, last]
        smoothed_cov[n, last] = filtered_cov[n, last]
        if diffuse:
            smoothed_basis[n, last] = filtered_basis[n, last]
        cached_epoch = 0
        cov_epoch = 0
        for t in range(last - 1, -1, -1):
            epoch = steady_epoch[n, t]
            if epoch == 0 or epoch != cached_epoch:
                if not _smoother_gain(A, predicted_cov[n, t + 1], filtered_cov[n, t], chol, rhs, gain, dim):
                    status[n] = 1
                    break
                cached_epoch = epoch
            _smoothed_mean_step(gain, smoothed_mean[n, t + 1], predicted_mean[n, t + 1], filtered_mean[n, t],
                                diff_vec, smoothed_mean[n, t], dim)
            next_cov = smoothed_cov[n, t + 1]
            if epoch > 0 and epoch == cov_epoch:
                # The backward Riccati recursion has converged within this steady-state epoch.
                smoothed_cov[n, t] = ss_cov
                lag_one_cov[n, t + 1] = ss_lag
            else:
                # cov = P_t + J (next_cov - P_{t+1|t}) J^T; lag_{t+1} = next_cov J^T
                change, scale = _smoothed_cov_step(gain, next_cov, predicted_cov[n, t + 1], filtered_cov[n, t],
                                                   diff, work, smoothed_cov[n, t], dim)
                _times_transpose(next_cov, gain, lag_one_cov[n, t + 1], dim)
                if epoch > 0 and change <= steady_tol * scale:
                    cov_epoch = epoch
                    ss_cov[:, :] = smoothed_cov[n, t]
                    _times_transpose(ss_cov, gain, ss_lag, dim)
            if diffuse:
                for i in range(dim):
                    for j in range(dim):
                        diff[i, j] = smoothed_basis[n, t + 1, i, j] - predicted_basis[n, t + 1, i, j]
                for i in range(dim):
                    for j in range(dim):
                        acc = filtered_basis[n, t, i, j]
                        for k in range(dim):
                            acc += gain[i, k] * diff[k, j]
                        smoothed_basis[n, t, i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _smoother_sums_kernel(transition, filtered_mean, filtered_cov, predicted_mean, predicted_cov, cov_source,
                          lengths, steady_epoch, steady_tol, incomplete_slot, smoothed_mean, incomplete_cov,
                          sum_cov, first_cov, last_cov, sum_lag, status):  # pragma: no cover
    """RTS smoother of every sequence that writes no ``T d^2`` array: the smoothed means,
    and the sums of the smoothed covariances the score needs.

    Reads the filter's compact covariances (``cov_source``, see :func:`_filter_kernel`).
    The recursion is :func:`_smoother_kernel`'s, with the same reuse of the gain within a
    steady-state epoch and of the converged smoothed and lag-one covariances once two
    successive smoothed covariances agree to ``steady_tol`` relative; over such a
    converged stretch the sums take count x the converged matrices. Writes, per sequence
    ``n`` of length ``L > 0``: ``smoothed_mean[n, :L]``; ``sum_cov[n]`` = sum of
    :math:`V_t` over ``t < L``, ``first_cov[n]`` = :math:`V_1`, ``last_cov[n]`` = :math:`V_L`,
    ``sum_lag[n]`` = sum of :math:`C_t = \\operatorname{Cov}(s_t, s_{t-1})` over ``1 <= t < L``;
    and :math:`V_t` into ``incomplete_cov[incomplete_slot[n, t]]`` at the steps with a
    missing entry (slot ``>= 0``; only they need their own covariance in the score).
    """
    num_seq, num_steps, dim = filtered_mean.shape
    gain = np.empty((dim, dim))
    chol = np.empty((dim, dim))
    rhs = np.empty((dim, dim))
    diff = np.empty((dim, dim))
    work = np.empty((dim, dim))
    diff_vec = np.empty(dim)
    next_cov = np.empty((dim, dim))  # V_{t+1}
    cov = np.empty((dim, dim))  # V_t
    ss_cov = np.empty((dim, dim))
    ss_lag = np.empty((dim, dim))
    for n in range(num_seq):
        A = transition[n]
        length = lengths[n]
        if length == 0:
            continue
        last = length - 1
        smoothed_mean[n, last] = filtered_mean[n, last]
        next_cov[:, :] = filtered_cov[n, cov_source[n, last]]
        last_cov[n] = next_cov
        sum_cov[n] = next_cov
        sum_lag[n] = 0.0
        if incomplete_slot[n, last] >= 0:
            incomplete_cov[incomplete_slot[n, last]] = next_cov
        cached_epoch = 0
        cov_epoch = 0
        converged = 0  # steps of the current converged stretch not yet added to the sums
        for t in range(last - 1, -1, -1):
            epoch = steady_epoch[n, t]
            if epoch == 0 or epoch != cached_epoch:
                if not _smoother_gain(A, predicted_cov[n, cov_source[n, t + 1]], filtered_cov[n, cov_source[n, t]],
                                      chol, rhs, gain, dim):
                    status[n] = 1
                    break
                cached_epoch = epoch
            _smoothed_mean_step(gain, smoothed_mean[n, t + 1], predicted_mean[n, t + 1], filtered_mean[n, t],
                                diff_vec, smoothed_mean[n, t], dim)
            if epoch > 0 and epoch == cov_epoch:
                # The backward Riccati recursion has converged within this steady-state epoch
                # (a steady step is fully observed: no incomplete slot to fill).
                converged += 1
                continue
            if converged > 0:
                # Leaving a converged stretch: add it, and V_{t+1} is the converged matrix.
                for i in range(dim):
                    for j in range(dim):
                        sum_cov[n, i, j] += converged * ss_cov[i, j]
                        sum_lag[n, i, j] += converged * ss_lag[i, j]
                converged = 0
                next_cov[:, :] = ss_cov
            # V_t = P_t + J (V_{t+1} - P_{t+1|t}) J^T; C_{t+1} = V_{t+1} J^T
            change, scale = _smoothed_cov_step(gain, next_cov, predicted_cov[n, cov_source[n, t + 1]],
                                               filtered_cov[n, cov_source[n, t]], diff, work, cov, dim)
            _times_transpose(next_cov, gain, work, dim)  # C_{t+1}
            for i in range(dim):
                for j in range(dim):
                    sum_lag[n, i, j] += work[i, j]
                    sum_cov[n, i, j] += cov[i, j]
            if incomplete_slot[n, t] >= 0:
                incomplete_cov[incomplete_slot[n, t]] = cov
            if epoch > 0 and change <= steady_tol * scale:
                cov_epoch = epoch
                ss_cov[:, :] = cov
                _times_transpose(ss_cov, gain, ss_lag, dim)
            next_cov[:, :] = cov
        # Step 0 is never a steady step (the filter decides at t > 0), so a converged stretch
        # has ended inside the loop and next_cov is V_1 here.
        first_cov[n] = next_cov


def _as_numpy(value: Tensor) -> np.ndarray:
    return value.detach().to("cpu", torch.float64).contiguous().numpy()


def _numba_filter(params: _Params, diffuse: bool, store: bool, steady_state: bool) -> _Raw:
    """The filter by :func:`_filter_kernel`; results in the dtype of the observations.

    Without ``store`` only the per-step log densities and the final moments are returned
    (memory ``O(N T + N d^2)``).
    """
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype = observations.dtype
    inputs = [_as_numpy(value) for value in params[:7]]
    lengths = params.lengths.to("cpu", torch.long).contiguous().numpy()
    stored_steps = num_steps if store else 0
    basis_steps = stored_steps if diffuse else 0
    step_ll = np.zeros((num_seq, num_steps))
    final_mean = np.empty((num_seq, state_dim))
    final_cov = np.empty((num_seq, state_dim, state_dim))
    final_basis = np.empty((num_seq, state_dim, state_dim))
    final_info_matrix = np.empty((num_seq, state_dim, state_dim))
    final_info_vector = np.empty((num_seq, state_dim))
    predicted_mean = np.empty((num_seq, stored_steps, state_dim))
    predicted_cov = np.empty((num_seq, stored_steps, state_dim, state_dim))
    filtered_mean = np.empty((num_seq, stored_steps, state_dim))
    filtered_cov = np.empty((num_seq, stored_steps, state_dim, state_dim))
    predicted_basis = np.empty((num_seq, basis_steps, state_dim, state_dim))
    filtered_basis = np.empty((num_seq, basis_steps, state_dim, state_dim))
    info_matrix = np.empty((num_seq, basis_steps, state_dim, state_dim))
    info_vector = np.empty((num_seq, basis_steps, state_dim))
    steady_epoch = np.zeros((num_seq, stored_steps), dtype=np.int64)
    cov_source = np.empty((num_seq, stored_steps), dtype=np.int64)
    incomplete_slot = np.empty((num_seq, stored_steps), dtype=np.int64)
    status = np.zeros(num_seq, dtype=np.int64)
    _filter_kernel(*inputs, lengths, diffuse, _STEADY_TOL if steady_state else 0.0, store, False,
                   step_ll, final_mean, final_cov, final_basis, final_info_matrix, final_info_vector,
                   predicted_mean, predicted_cov, filtered_mean, filtered_cov,
                   predicted_basis, filtered_basis, info_matrix, info_vector, steady_epoch, cov_source,
                   incomplete_slot, np.zeros(1, np.int64), status)
    if status.any():
        raise ValueError(
            "observation_cov: the innovation covariance H P H^T + R is not positive definite "
            f"(sequences {np.nonzero(status)[0].tolist()}); observation_cov must be positive definite"
        )
    device = observations.device
    convert = lambda array: torch.from_numpy(array).to(device=device, dtype=dtype)  # noqa: E731
    return _Raw(
        step_log_likelihood=convert(step_ll),
        filtered_mean=convert(filtered_mean) if store else None,
        filtered_cov=convert(filtered_cov) if store else None,
        predicted_mean=convert(predicted_mean) if store else None,
        predicted_cov=convert(predicted_cov) if store else None,
        filtered_basis=convert(filtered_basis) if store and diffuse else None,
        predicted_basis=convert(predicted_basis) if store and diffuse else None,
        info_matrix=convert(info_matrix) if store and diffuse else None,
        info_vector=convert(info_vector) if store and diffuse else None,
        final_mean=convert(final_mean),
        final_cov=convert(final_cov),
        final_basis=convert(final_basis) if diffuse else None,
        final_info_matrix=convert(final_info_matrix) if diffuse else None,
        final_info_vector=convert(final_info_vector) if diffuse else None,
        steady_epoch=torch.from_numpy(steady_epoch) if store else None,
        valid=_valid_mask(params.lengths, num_steps),
    )


def _numba_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother by :func:`_smoother_kernel`: mean, cov, lag-one cov, basis."""
    num_seq, num_steps, state_dim = raw.filtered_mean.shape
    diffuse = raw.filtered_basis is not None
    basis_steps = num_steps if diffuse else 0
    smoothed_mean = np.zeros((num_seq, num_steps, state_dim))
    smoothed_cov = np.zeros((num_seq, num_steps, state_dim, state_dim))
    lag_one_cov = np.zeros((num_seq, num_steps, state_dim, state_dim))
    smoothed_basis = np.zeros((num_seq, basis_steps, state_dim, state_dim))
    empty = np.empty((num_seq, 0, state_dim, state_dim))
    status = np.zeros(num_seq, dtype=np.int64)
    _smoother_kernel(
        _as_numpy(params.transition_matrix), _as_numpy(raw.filtered_mean), _as_numpy(raw.filtered_cov),
        _as_numpy(raw.predicted_mean), _as_numpy(raw.predicted_cov),
        params.lengths.to("cpu", torch.long).contiguous().numpy(), raw.steady_epoch.contiguous().numpy(),
        _SMOOTHER_STEADY_TOL, diffuse, _as_numpy(raw.filtered_basis) if diffuse else empty,
        _as_numpy(raw.predicted_basis) if diffuse else empty,
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis, status,
    )
    if status.any():
        raise ValueError("transition_cov: a predicted covariance is not positive definite "
                         f"(sequences {np.nonzero(status)[0].tolist()}); transition_cov must be positive definite")
    dtype, device = raw.filtered_mean.dtype, raw.filtered_mean.device
    convert = lambda array: torch.from_numpy(array).to(device=device, dtype=dtype)  # noqa: E731
    return (convert(smoothed_mean), convert(smoothed_cov), convert(lag_one_cov),
            convert(smoothed_basis) if diffuse else None)


# --------------------------------------------------------------------------------------
# Gradient of the log marginal by the smoother (Fisher's identity), numba (CPU, float64)
# --------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _back_substitute(chol, size, rhs, num_cols):  # pragma: no cover
    """``rhs[:size, :num_cols] <- chol[:size, :size]^{-T} rhs`` (``chol`` lower triangular)."""
    for i in range(size - 1, -1, -1):
        inv = 1.0 / chol[i, i]
        for c in range(num_cols):
            acc = rhs[i, c]
            for k in range(i + 1, size):
                acc -= chol[k, i] * rhs[k, c]
            rhs[i, c] = acc * inv


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _spd_inverse(matrix, size, chol, out):  # pragma: no cover
    """``out[:size, :size] <- matrix[:size, :size]^{-1}`` by Cholesky; False if not positive definite."""
    chol[:size, :size] = matrix[:size, :size]
    if not _cholesky_in_place(chol, size):
        return False
    out[:size, :size] = 0.0
    for i in range(size):
        out[i, i] = 1.0
    _forward_substitute(chol, size, out, size)
    _back_substitute(chol, size, out, size)
    return True


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _sandwich(left, middle, out, work):  # pragma: no cover
    """``out <- left @ middle @ left.T`` for ``left`` (a, b), ``middle`` (b, b); ``work`` (a, b)."""
    rows, inner = left.shape
    for i in range(rows):
        for j in range(inner):
            acc = 0.0
            for k in range(inner):
                acc += left[i, k] * middle[k, j]
            work[i, j] = acc
    for i in range(rows):
        for j in range(rows):
            acc = 0.0
            for k in range(inner):
                acc += work[i, k] * left[j, k]
            out[i, j] = acc


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _score_kernel(transition, transition_cov, obs_matrix, obs_cov, initial_mean, initial_cov, observations,
                  lengths, smoothed_mean, sum_cov, first_cov, last_cov, sum_lag, incomplete_slot, incomplete_cov,
                  diffuse, observation_grad, state_rows, state_rows2, obs_rows, obs_rows2,
                  grad_transition, grad_transition_cov, grad_obs_matrix, grad_obs_cov, grad_initial_mean,
                  grad_initial_cov, grad_observations, status):  # pragma: no cover
    """Score of every sequence by Fisher's identity from its smoothed means and the sums of
    its smoothed covariances (gradients zero-initialised; arrays as :func:`_smoother_sums_kernel`).

    ``status[n]`` is 1 when ``transition_cov``, 2 when ``observation_cov`` (or a sub-block of
    it), 3 when ``initial_cov`` is not positive definite. The sums over the steps
    (``sum r_t r_t^T``, ``sum r_t E[s_{t-1}]^T``, and over the fully observed steps
    ``sum w_t E[s_t]^T``, ``sum w_t w_t^T``) are matrix products (BLAS) into the scratch
    rows ``state_rows``, ``state_rows2`` ``(T, d)``, ``obs_rows``, ``obs_rows2`` ``(T, p)``
    (allocated by numpy, once per call: arrays allocated in here page-fault on every call);
    only the steps with a missing entry are visited one by one. Without
    ``observation_grad`` the fully observed steps' ``grad_observations`` are not written.
    """
    num_seq, num_steps, obs_dim = observations.shape
    dim = transition.shape[1]
    sum_rr = np.empty((dim, dim))  # sum r_t r_t^T, r_t = E[s_t] - A E[s_{t-1}]
    sum_rs = np.empty((dim, dim))  # sum r_t E[s_{t-1}]^T
    sum_prev = np.empty((dim, dim))  # sum Cov(s_{t-1})
    sum_next = np.empty((dim, dim))  # sum Cov(s_t), t >= 2
    sum_full = np.empty((dim, dim))  # sum Cov(s_t) over fully observed steps
    residual = np.empty(dim)
    square = np.empty((dim, dim))
    square2 = np.empty((dim, dim))
    inverse = np.empty((dim, dim))
    chol_state = np.empty((dim, dim))
    obs_inverse = np.empty((obs_dim, obs_dim))
    chol_obs = np.empty((obs_dim, obs_dim))
    sub_cov = np.empty((obs_dim, obs_dim))
    sub_inverse = np.empty((obs_dim, obs_dim))
    white = np.empty((obs_dim, 1))
    gain = np.empty((obs_dim, dim))  # R_O^{-1} H_O
    gain_cov = np.empty((obs_dim, dim))  # R_O^{-1} H_O Cov(s_t)
    observed = np.empty(obs_dim, np.int64)
    full_steps = np.empty(num_steps, np.int64)
    for n in range(num_seq):
        length = lengths[n]
        if length == 0:
            continue
        A = transition[n]
        Q = transition_cov[n]
        H = obs_matrix[n]
        R = obs_cov[n]
        mean = smoothed_mean[n]
        # -- transitions: grad_A = Q^{-1} E[sum (s_t - A s_{t-1}) s_{t-1}^T],
        #    grad_Q = Q^{-1} (E[sum (s_t - A s_{t-1})(.)^T] - (L-1) Q) Q^{-1} / 2
        if length > 1:
            for i in range(dim):
                for j in range(dim):
                    sum_next[i, j] = sum_cov[n, i, j] - first_cov[n, i, j]
                    sum_prev[i, j] = sum_cov[n, i, j] - last_cov[n, i, j]
            # Residuals r_t = E[s_t] - A E[s_{t-1}] as rows; their sums of outer products by BLAS.
            previous = mean[: length - 1]
            residuals = state_rows[: length - 1]
            np.dot(previous, np.ascontiguousarray(A.T), residuals)
            for t in range(length - 1):
                for i in range(dim):
                    residuals[t, i] = mean[t + 1, i] - residuals[t, i]
            np.dot(residuals.T, residuals, sum_rr)
            np.dot(residuals.T, previous, sum_rs)
            if not _spd_inverse(Q, dim, chol_state, inverse):
                status[n] = 1
                continue
            # square = sum_rs + sum_lag - A sum_prev  (the expected sum of (s_t - A s_{t-1}) s_{t-1}^T)
            for i in range(dim):
                for j in range(dim):
                    acc = sum_rs[i, j] + sum_lag[n, i, j]
                    for k in range(dim):
                        acc -= A[i, k] * sum_prev[k, j]
                    square[i, j] = acc
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += inverse[i, k] * square[k, j]
                    grad_transition[n, i, j] = acc
            # square2 = E[sum (s_t - A s_{t-1})(.)^T] - (L-1) Q
            #         = sum_rr + sum_next - sum_lag A^T - A sum_lag^T + A sum_prev A^T - (L-1) Q
            _sandwich(A, sum_prev, square2, square)
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc -= sum_lag[n, i, k] * A[j, k] + A[i, k] * sum_lag[n, j, k]
                    square[i, j] = acc
            for i in range(dim):
                for j in range(dim):
                    square2[i, j] += square[i, j] + sum_rr[i, j] + sum_next[i, j] - (length - 1) * Q[i, j]
            _sandwich(inverse, square2, square, sum_rr)
            for i in range(dim):
                for j in range(dim):
                    grad_transition_cov[n, i, j] = 0.25 * (square[i, j] + square[j, i])
        # -- observations: the gradient of sum_t log N(x_t; H s_t, R) in expectation.
        if not _spd_inverse(R, obs_dim, chol_obs, obs_inverse):
            status[n] = 2
            continue
        sum_full[:, :] = sum_cov[n]
        num_full = 0
        for t in range(length):
            slot = incomplete_slot[n, t]
            if slot < 0:
                full_steps[num_full] = t
                num_full += 1
                continue
            # sum_full = sum_cov minus the steps that are not fully observed (rare).
            cov = incomplete_cov[slot]
            for i in range(dim):
                for j in range(dim):
                    sum_full[i, j] -= cov[i, j]
            num_obs = 0
            for j in range(obs_dim):
                if not np.isnan(observations[n, t, j]):
                    observed[num_obs] = j
                    num_obs += 1
            if num_obs == 0:
                continue
            # The marginal model of the observed entries O: R_O = R[O, O], H_O = H[O].
            for a in range(num_obs):
                for b in range(num_obs):
                    sub_cov[a, b] = R[observed[a], observed[b]]
            if not _spd_inverse(sub_cov, num_obs, chol_obs, sub_inverse):
                status[n] = 2
                break
            for a in range(num_obs):
                row = observed[a]
                acc = observations[n, t, row]
                for j in range(dim):
                    acc -= H[row, j] * mean[t, j]
                white[a, 0] = acc
            for a in range(num_obs):
                acc = 0.0
                for b in range(num_obs):
                    acc += sub_inverse[a, b] * white[b, 0]
                grad_observations[n, t, observed[a]] = -acc
                for j in range(dim):
                    acc2 = 0.0
                    for b in range(num_obs):
                        acc2 += sub_inverse[a, b] * H[observed[b], j]
                    gain[a, j] = acc2
            for a in range(num_obs):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += gain[a, k] * cov[k, j]
                    gain_cov[a, j] = acc
            for a in range(num_obs):
                row = observed[a]
                w_a = -grad_observations[n, t, row]
                for j in range(dim):
                    grad_obs_matrix[n, row, j] += w_a * mean[t, j] - gain_cov[a, j]
                for b in range(num_obs):
                    acc = 0.0
                    for k in range(dim):
                        acc += gain_cov[a, k] * gain[b, k]
                    w_b = -grad_observations[n, t, observed[b]]
                    grad_obs_cov[n, row, observed[b]] += 0.5 * (w_a * w_b + acc - sub_inverse[a, b])
        if status[n] != 0:
            continue
        if num_full > 0:
            # The fully observed steps as rows: w_t = R^{-1} (x_t - H E[s_t]) (R^{-1} symmetric).
            # e_t = x_t - H E[s_t]; sum w_t E[s_t]^T = R^{-1} sum e_t E[s_t]^T, sum w_t w_t^T = R^{-1} (sum e_t e_t^T) R^{-1}.
            if num_full == length:
                full_mean = mean[:length]
                full_obs = observations[n, :length]
            else:
                full_mean = state_rows2[:num_full]
                full_obs = obs_rows2[:num_full]
                for k in range(num_full):
                    full_mean[k] = mean[full_steps[k]]
                    full_obs[k] = observations[n, full_steps[k]]
            errors = obs_rows[:num_full]
            np.dot(full_mean, np.ascontiguousarray(H.T), errors)
            for k in range(num_full):
                for a in range(obs_dim):
                    errors[k, a] = full_obs[k, a] - errors[k, a]
            sum_ws = np.dot(obs_inverse, np.dot(errors.T, full_mean))
            sum_ww = np.dot(obs_inverse, np.dot(np.dot(errors.T, errors), obs_inverse))
            if observation_grad:
                weighted = obs_rows2[:num_full]  # w_t as rows (R^{-1} symmetric)
                np.dot(errors, obs_inverse, weighted)
                for k in range(num_full):
                    t = full_steps[k]
                    for a in range(obs_dim):
                        grad_observations[n, t, a] = -weighted[k, a]
            # gain = R^{-1} H; grad_H += sum_ws - gain sum_full; grad_R += (sum_ww + gain sum_full gain^T - n R^{-1}) / 2
            for a in range(obs_dim):
                for j in range(dim):
                    acc = 0.0
                    for b in range(obs_dim):
                        acc += obs_inverse[a, b] * H[b, j]
                    gain[a, j] = acc
            _sandwich(gain, sum_full, sub_cov, gain_cov)
            for a in range(obs_dim):
                for j in range(dim):
                    grad_obs_matrix[n, a, j] += sum_ws[a, j] - gain_cov[a, j]
                for b in range(obs_dim):
                    grad_obs_cov[n, a, b] += 0.5 * (sum_ww[a, b] + sub_cov[a, b] - num_full * obs_inverse[a, b])
        # -- the initial state (not with the diffuse start, whose prior has no parameters)
        if not diffuse:
            if not _spd_inverse(initial_cov[n], dim, chol_state, inverse):
                status[n] = 3
                continue
            for i in range(dim):
                residual[i] = mean[0, i] - initial_mean[n, i]
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += inverse[i, j] * residual[j]
                grad_initial_mean[n, i] = acc
            for i in range(dim):
                for j in range(dim):
                    square2[i, j] = residual[i] * residual[j] + first_cov[n, i, j] - initial_cov[n, i, j]
            _sandwich(inverse, square2, square, sum_rr)
            for i in range(dim):
                for j in range(dim):
                    grad_initial_cov[n, i, j] = 0.25 * (square[i, j] + square[j, i])


_SCORE_ERRORS = {1: "transition_cov", 2: "observation_cov", 3: "initial_cov"}


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _initial_posterior_kernel(info_matrix, info_vector, chol, mean, cov):  # pragma: no cover
    """:func:`_initial_posterior` of one sequence: ``mean <- S^{-1} b``, ``cov <- S^{-1}``.

    Returns ``(identified, b^T S^{-1} b / 2 - log|S| / 2)``, with the same test of
    identification (pivots and diagonal against ``1e3 d eps``).
    """
    dim = info_vector.shape[0]
    tol = 1e3 * dim * 2.220446049250313e-16
    largest = 0.0
    for i in range(dim):
        for j in range(dim):
            chol[i, j] = 0.5 * (info_matrix[i, j] + info_matrix[j, i])
        mean[i] = chol[i, i]  # the diagonal, kept for the pivot test
        largest = max(largest, chol[i, i])
    if not largest > 0.0:
        return False, 0.0
    for i in range(dim):
        if not mean[i] > tol * largest:
            return False, 0.0
    if not _cholesky_in_place(chol, dim):
        return False, 0.0
    log_det_half = 0.0
    for i in range(dim):
        if not chol[i, i] * chol[i, i] > tol * mean[i]:
            return False, 0.0
        log_det_half += np.log(chol[i, i])
    for i in range(dim):
        cov[i, 0] = info_vector[i]
    _forward_substitute(chol, dim, cov, 1)
    _back_substitute(chol, dim, cov, 1)
    quadratic = 0.0
    for i in range(dim):
        mean[i] = cov[i, 0]
        quadratic += info_vector[i] * mean[i]
    cov[:, :] = 0.0
    for i in range(dim):
        cov[i, i] = 1.0
    _forward_substitute(chol, dim, cov, dim)
    _back_substitute(chol, dim, cov, dim)
    return True, 0.5 * quadratic - log_det_half


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _initial_posteriors(info_matrix, info_vector, lengths, posterior_mean, posterior_cov, log_normalizer,
                        status):  # pragma: no cover
    """:func:`_initial_posterior_kernel` of every sequence of positive length; ``status[n] = 1``
    where the state is not identified."""
    num_seq, dim = info_vector.shape
    chol = np.empty((dim, dim))
    for n in range(num_seq):
        if lengths[n] == 0:
            continue
        identified, value = _initial_posterior_kernel(info_matrix[n], info_vector[n], chol, posterior_mean[n],
                                                      posterior_cov[n])
        if not identified:
            status[n] = 1
        log_normalizer[n] = value


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _combine_diffuse_kernel(lengths, smoothed_basis, posterior_mean, posterior_cov, smoothed_mean, smoothed_cov,
                            lag_one_cov):  # pragma: no cover
    """In place, as :func:`rts_smoother`: :math:`E[s_t] = m_t + X_t \hat s`,
    :math:`\operatorname{Cov}(s_t) = P_t + X_t S^{-1} X_t^\top`,
    :math:`\operatorname{Cov}(s_t, s_{t-1}) \mathrel{+}= X_t S^{-1} X_{t-1}^\top`."""
    num_seq, _num_steps, dim = smoothed_mean.shape
    work = np.empty((dim, dim))
    work2 = np.empty((dim, dim))
    for n in range(num_seq):
        for t in range(lengths[n]):
            basis = smoothed_basis[n, t]
            for i in range(dim):
                acc = 0.0
                for j in range(dim):
                    acc += basis[i, j] * posterior_mean[n, j]
                smoothed_mean[n, t, i] += acc
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += basis[i, k] * posterior_cov[n, k, j]
                    work[i, j] = acc  # X_t S^{-1}
            for i in range(dim):
                for j in range(dim):
                    acc = 0.0
                    for k in range(dim):
                        acc += work[i, k] * basis[j, k]
                    work2[i, j] = acc
            for i in range(dim):
                for j in range(i + 1):
                    value = 0.5 * ((smoothed_cov[n, t, i, j] + work2[i, j]) + (smoothed_cov[n, t, j, i] + work2[j, i]))
                    smoothed_cov[n, t, i, j] = value
                    smoothed_cov[n, t, j, i] = value
            if t > 0:
                previous = smoothed_basis[n, t - 1]
                for i in range(dim):
                    for j in range(dim):
                        acc = 0.0
                        for k in range(dim):
                            acc += work[i, k] * previous[j, k]
                        lag_one_cov[n, t, i, j] += acc


def _fused(params: _Params, diffuse: bool, steady_state: bool, with_score: bool, observation_grad: bool = True
           ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
    """Log marginal ``(N,)`` and, with ``with_score``, the gradients of its sum w.r.t. the
    seven inputs (``(N, ...)``, float64), on numpy arrays with no torch work per call.
    Without ``observation_grad`` the gradient w.r.t. the observations is left zero at the
    fully observed steps (it is not asked for).

    With ``diffuse``, a filter pass from ``c = 0`` (nothing stored) and the posterior mean of
    :math:`S_1` as the reference point ``c`` (see :func:`_run_filter`); the filter from there
    (moments stored only with ``with_score``) and the diffuse term; then the RTS smoother,
    the combination of its conditional moments with the posterior of :math:`S_1` (as
    :func:`rts_smoother`), the sums of the smoothed covariances, and :func:`_score_kernel`.
    Without ``diffuse`` the filter stores its covariances compactly (one pair per
    steady-state epoch) and :func:`_smoother_sums_kernel` forms the sums as it goes, so no
    ``T d^2`` array is written (the diffuse basis :math:`X_t` is per step anyway). Each
    kernel is called from Python: called from inside another compiled function, LLVM no
    longer vectorises their loops (8x slower at d = 16).
    """
    inputs = [_as_numpy(value) for value in params[:7]]
    observations = inputs[6]
    num_seq, num_steps, obs_dim = observations.shape
    dim = inputs[0].shape[-1]
    lengths = params.lengths.to("cpu", torch.long).contiguous().numpy()
    steady_tol = _STEADY_TOL if steady_state else 0.0
    stored = num_steps if with_score else 0
    status = np.zeros(num_seq, dtype=np.int64)

    def filter_pass(start: np.ndarray, store: bool) -> tuple[np.ndarray, ...]:
        steps = stored if store else 0
        basis = steps if diffuse else 0
        # np.empty leaves untouched pages unmapped: the compact filter's skipped steps cost nothing.
        arrays = dict(
            step_ll=np.zeros((num_seq, num_steps)), final_mean=np.empty((num_seq, dim)),
            final_cov=np.empty((num_seq, dim, dim)), final_basis=np.empty((num_seq, dim, dim)),
            final_info_matrix=np.empty((num_seq, dim, dim)), final_info_vector=np.empty((num_seq, dim)),
            predicted_mean=np.empty((num_seq, steps, dim)), predicted_cov=np.empty((num_seq, steps, dim, dim)),
            filtered_mean=np.empty((num_seq, steps, dim)), filtered_cov=np.empty((num_seq, steps, dim, dim)),
            predicted_basis=np.empty((num_seq, basis, dim, dim)), filtered_basis=np.empty((num_seq, basis, dim, dim)),
            info_matrix=np.empty((num_seq, basis, dim, dim)), info_vector=np.empty((num_seq, basis, dim)),
            steady_epoch=np.zeros((num_seq, steps), np.int64), cov_source=np.empty((num_seq, steps), np.int64),
            incomplete_slot=np.full((num_seq, steps), -1, np.int64), num_incomplete=np.zeros(1, np.int64))
        _filter_kernel(*inputs[:4], start, inputs[5], observations, lengths, diffuse, steady_tol, store,
                       not diffuse, *arrays.values(), status)
        if status.any():
            raise ValueError("observation_cov: the innovation covariance H P H^T + R is not positive definite "
                             f"(sequences {np.nonzero(status)[0].tolist()}); observation_cov must be positive definite")
        return arrays

    def posterior(arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, cov, value = np.zeros((num_seq, dim)), np.zeros((num_seq, dim, dim)), np.zeros(num_seq)
        _initial_posteriors(arrays["final_info_matrix"], arrays["final_info_vector"], lengths, mean, cov, value, status)
        if status.any():
            raise _not_identified_error(torch.from_numpy(status == 0))
        return mean, cov, value

    start = inputs[4]
    if diffuse:
        start, _, _ = posterior(filter_pass(np.zeros((num_seq, dim)), False))
    filtered = filter_pass(start, with_score)
    log_normalizer = filtered["step_ll"].sum(-1)
    if diffuse:
        posterior_mean, posterior_cov, diffuse_term = posterior(filtered)
        log_normalizer += diffuse_term
    if not with_score:
        return log_normalizer, None
    # The valid steps with a missing entry, numbered by the filter: the score needs their own covariances.
    incomplete_slot, num_incomplete = filtered["incomplete_slot"], int(filtered["num_incomplete"][0])
    smoothed_mean = np.empty((num_seq, num_steps, dim))  # written at every step read below
    sums = [np.zeros((num_seq, dim, dim)) for _ in range(4)]  # sum V_t, V_1, V_L, sum C_t
    if diffuse:
        smoothed_cov = np.empty((num_seq, num_steps, dim, dim))
        lag_one_cov = np.empty((num_seq, num_steps, dim, dim))  # step 0 is never read
        smoothed_basis = np.empty((num_seq, num_steps, dim, dim))
        _smoother_kernel(inputs[0], filtered["filtered_mean"], filtered["filtered_cov"], filtered["predicted_mean"],
                         filtered["predicted_cov"], lengths, filtered["steady_epoch"], _SMOOTHER_STEADY_TOL, diffuse,
                         filtered["filtered_basis"], filtered["predicted_basis"], smoothed_mean, smoothed_cov,
                         lag_one_cov, smoothed_basis, status)
    else:
        incomplete_cov = np.empty((num_incomplete, dim, dim))
        _smoother_sums_kernel(inputs[0], filtered["filtered_mean"], filtered["filtered_cov"],
                              filtered["predicted_mean"], filtered["predicted_cov"], filtered["cov_source"], lengths,
                              filtered["steady_epoch"], _SMOOTHER_STEADY_TOL, incomplete_slot, smoothed_mean,
                              incomplete_cov, *sums, status)
    if status.any():
        raise ValueError("transition_cov: a predicted covariance is not positive definite "
                         f"(sequences {np.nonzero(status)[0].tolist()}); transition_cov must be positive definite")
    if diffuse:
        _combine_diffuse_kernel(lengths, smoothed_basis, posterior_mean, posterior_cov, smoothed_mean, smoothed_cov,
                                lag_one_cov)
        for n, length in enumerate(lengths):
            if length > 0:
                sums[0][n] = smoothed_cov[n, :length].sum(0)
                sums[1][n], sums[2][n] = smoothed_cov[n, 0], smoothed_cov[n, length - 1]
                sums[3][n] = lag_one_cov[n, 1:length].sum(0)
        incomplete_cov = np.ascontiguousarray(smoothed_cov[incomplete_slot >= 0])  # in slot order
    grads = tuple(np.zeros((num_seq, *value.shape[1:])) for value in inputs)
    rows = [np.empty((num_steps, size)) for size in (dim, dim, obs_dim, obs_dim)]  # the score's scratch
    _score_kernel(*inputs, lengths, smoothed_mean, *sums, incomplete_slot, incomplete_cov, diffuse, observation_grad,
                  *rows, *grads, status)
    if status.any():
        code = int(status[status != 0][0])
        raise ValueError(f"{_SCORE_ERRORS[code]}: not positive definite "
                         f"(sequences {np.nonzero(status == code)[0].tolist()})")
    return log_normalizer, grads


class _LogMarginal(torch.autograd.Function):
    r"""Log marginal by the numba filter; its gradient by one smoother pass (Fisher's identity).

    The score of the model is the posterior expectation of the complete-data score,
    :math:`\nabla_\theta \log p(x) = E[\nabla_\theta \log p(s, x) \mid x]`, which for a
    linear-Gaussian model is a closed form of the smoothed moments
    :math:`\hat s_t = E[s_t]`, :math:`V_t = \operatorname{Cov}(s_t)`,
    :math:`C_t = \operatorname{Cov}(s_t, s_{t-1})` (given :math:`x_{1:L}`). With
    :math:`r_t = \hat s_t - A \hat s_{t-1}` and the sums over :math:`t = 2..L`,

    .. math::

        \partial_A = Q^{-1} \textstyle\sum (r_t \hat s_{t-1}^\top + C_t - A V_{t-1}), \quad
        \partial_Q = \tfrac12 Q^{-1} \big(\textstyle\sum [r_t r_t^\top + V_t - C_t A^\top
        - A C_t^\top + A V_{t-1} A^\top] - (L-1) Q\big) Q^{-1};

    per step, over its observed entries :math:`O` (:math:`e_t = x_O - H_O \hat s_t`,
    :math:`w_t = R_O^{-1} e_t`, :math:`Z_t = R_O^{-1} H_O`):
    :math:`\partial_{H_O} \mathrel{+}= w_t \hat s_t^\top - Z_t V_t`,
    :math:`\partial_{R_O} \mathrel{+}= \tfrac12 (w_t w_t^\top + Z_t V_t Z_t^\top - R_O^{-1})`,
    :math:`\partial_{x_O} = -w_t` (0 at missing entries and padding); and
    :math:`\partial_{\mu_0} = \Sigma_0^{-1} u`, :math:`\partial_{\Sigma_0} = \tfrac12
    \Sigma_0^{-1} (u u^\top + V_1 - \Sigma_0) \Sigma_0^{-1}` with :math:`u = \hat s_1 - \mu_0`
    (zero with the diffuse start, whose limit :math:`\kappa \to \infty` leaves only the
    flat-prior posterior in the expectation). Covariance inputs are read through their
    symmetric part, so their gradients are symmetric. Sums of the moments' covariances
    rather than of raw second moments keep the cancellation small when the states are far
    from 0. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, transition_matrix, transition_cov, observation_matrix, observation_cov,
                initial_mean, initial_cov, observations, lengths, diffuse, steady_state):
        # The score is computed here, with the value, in the same compiled call (the filter's
        # moments are then used at once and never leave the kernel); backward only scales it.
        params = _Params(transition_matrix, _symmetrise(transition_cov), observation_matrix,
                         _symmetrise(observation_cov), initial_mean, _symmetrise(initial_cov), observations, lengths)
        log_normalizer, ctx.score = _fused(params, diffuse, steady_state, with_score=True,
                                           observation_grad=ctx.needs_input_grad[6])
        ctx.dtype, ctx.device = observations.dtype, observations.device
        return torch.from_numpy(log_normalizer).to(device=observations.device, dtype=observations.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        scale = grad_output.detach().to("cpu", torch.float64).numpy()
        results = []
        for needed, grad in zip(ctx.needs_input_grad[:7], ctx.score):
            if not needed:
                results.append(None)
                continue
            results.append(torch.from_numpy(grad * scale.reshape(-1, *(1,) * (grad.ndim - 1)))
                           .to(device=ctx.device, dtype=ctx.dtype))
        return (*results, None, None, None)


# --------------------------------------------------------------------------------------
# Exact diffuse initialisation: combine the conditional filter with the information on s_1
# --------------------------------------------------------------------------------------


class _InitialPosterior(NamedTuple):
    """Flat-prior posterior of :math:`s_1` from accumulated information ``(S, b)``."""

    identified: Tensor  # (...) bool: S positive definite
    mean: Tensor  # (..., d)  S^{-1} b
    cov: Tensor  # (..., d, d)  S^{-1}
    log_normalizer: Tensor  # (...)  b^T S^{-1} b / 2 - log|S| / 2


def _initial_posterior(info_matrix: Tensor, info_vector: Tensor) -> _InitialPosterior:
    state_dim = info_matrix.shape[-1]
    dtype = info_matrix.dtype
    tol = 1e3 * state_dim * torch.finfo(dtype).eps
    info_matrix = _symmetrise(info_matrix)
    diagonal = info_matrix.diagonal(dim1=-2, dim2=-1)
    chol, status = torch.linalg.cholesky_ex(info_matrix)
    pivots = chol.diagonal(dim1=-2, dim2=-1).square()
    largest = diagonal.amax(-1, keepdim=True)
    identified = (
        (status == 0)
        & (pivots > tol * diagonal).all(-1)
        & (diagonal > tol * largest).all(-1)
        & (largest[..., 0] > 0)
    )
    eye = torch.eye(state_dim, dtype=dtype, device=info_matrix.device)
    chol = torch.where(identified[..., None, None], chol, eye)
    mean = torch.cholesky_solve(info_vector[..., None], chol)[..., 0]
    cov = torch.cholesky_inverse(chol)
    log_normalizer = 0.5 * (info_vector * mean).sum(-1) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return _InitialPosterior(identified, mean, cov, log_normalizer)


def _not_identified_error(identified: Tensor) -> ValueError:
    missing = torch.nonzero(~identified)[:, 0].tolist()
    return ValueError(
        "diffuse=True: the observations do not identify the initial state of sequences "
        f"{missing} (the information matrix of S_1 is singular: too few observed entries, or "
        "unobservable directions of the state); use diffuse=False with a proper initial_cov"
    )


def _combine(mean: Tensor, cov: Tensor, basis: Tensor, posterior_mean: Tensor, posterior_cov: Tensor
             ) -> tuple[Tensor, Tensor]:
    """Moments of :math:`m + X s_1` with ``s_1 ~ N(posterior)`` and the conditional cov added."""
    combined_mean = mean + (basis @ posterior_mean[..., None])[..., 0]
    combined_cov = _symmetrise(cov + basis @ posterior_cov @ basis.transpose(-1, -2))
    return combined_mean, combined_cov


def _finish(raw: _Raw, diffuse: bool) -> _FilterState:
    """Unconditional filter output from the conditional one (identity without ``diffuse``)."""
    if not diffuse:
        return _FilterState(
            log_normalizer=raw.step_log_likelihood.sum(-1),
            step_log_likelihood=raw.step_log_likelihood,
            filtered_mean=raw.filtered_mean,
            filtered_cov=raw.filtered_cov,
            predicted_mean=raw.predicted_mean,
            predicted_cov=raw.predicted_cov,
            final_mean=raw.final_mean,
            final_cov=raw.final_cov,
            initial_posterior=None,
            valid=raw.valid,
        )
    final = _initial_posterior(raw.final_info_matrix, raw.final_info_vector)
    if not bool(final.identified.all()):
        raise _not_identified_error(final.identified)
    log_normalizer = raw.step_log_likelihood.sum(-1) + final.log_normalizer
    final_mean, final_cov = _combine(raw.final_mean, raw.final_cov, raw.final_basis, final.mean, final.cov)
    if raw.filtered_mean is None:
        return _FilterState(log_normalizer, None, None, None, None, None, final_mean, final_cov, final, raw.valid)
    steps = _initial_posterior(raw.info_matrix, raw.info_vector)  # (N, T): information from x_{1:t}
    nan = torch.full((), torch.nan, dtype=log_normalizer.dtype, device=log_normalizer.device)
    filtered_mean, filtered_cov = _combine(raw.filtered_mean, raw.filtered_cov, raw.filtered_basis,
                                           steps.mean, steps.cov)
    filtered_mean = torch.where(steps.identified[..., None], filtered_mean, nan)
    filtered_cov = torch.where(steps.identified[..., None, None], filtered_cov, nan)
    # The prediction of step t uses the information of x_{1:t-1}.
    previous_identified = torch.cat([torch.zeros_like(steps.identified[:, :1]), steps.identified[:, :-1]], 1)
    previous_mean = torch.cat([torch.zeros_like(steps.mean[:, :1]), steps.mean[:, :-1]], 1)
    previous_cov = torch.cat([torch.zeros_like(steps.cov[:, :1]), steps.cov[:, :-1]], 1)
    predicted_mean, predicted_cov = _combine(raw.predicted_mean, raw.predicted_cov, raw.predicted_basis,
                                             previous_mean, previous_cov)
    predicted_mean = torch.where(previous_identified[..., None], predicted_mean, nan)
    predicted_cov = torch.where(previous_identified[..., None, None], predicted_cov, nan)
    # Diffuse log-likelihood of each prefix x_{1:t} (0 until it identifies s_1); its increments.
    prefix = torch.where(steps.identified, raw.step_log_likelihood.cumsum(-1) + steps.log_normalizer,
                         torch.zeros((), dtype=nan.dtype, device=nan.device))
    step_log_likelihood = prefix - torch.cat([torch.zeros_like(prefix[:, :1]), prefix[:, :-1]], 1)
    return _FilterState(
        log_normalizer=log_normalizer,
        step_log_likelihood=step_log_likelihood,
        filtered_mean=filtered_mean,
        filtered_cov=filtered_cov,
        predicted_mean=predicted_mean,
        predicted_cov=predicted_cov,
        final_mean=final_mean,
        final_cov=final_cov,
        initial_posterior=final,
        valid=raw.valid,
    )


def _run_filter(params: _Params, diffuse: bool, method: str, steady_state: bool, store: bool = True
                ) -> tuple[_Raw, _FilterState, str]:
    if not isinstance(diffuse, bool):
        raise TypeError(f"diffuse: expected a bool, got {type(diffuse).__name__}")
    backend = _choose_backend(params, method)

    def run(start_params: _Params, store_moments: bool) -> _Raw:
        if backend == "numba":
            return _numba_filter(start_params, diffuse, store_moments, steady_state)
        if backend == "parallel":
            return _parallel_filter(start_params, diffuse)
        return _torch_filter(start_params, diffuse)

    if diffuse:
        # The diffuse filter runs given S_1 = c + u (u flat); the result does not depend on c,
        # but with c far from the data the combination cancels large terms. A first pass from
        # c = 0 estimates E[S_1 | x]; the second runs from there (gradients: c is a constant).
        with torch.no_grad():
            first = run(params._replace(initial_mean=torch.zeros_like(params.initial_mean)), False)
            first_posterior = _initial_posterior(first.final_info_matrix, first.final_info_vector)
        if not bool(first_posterior.identified.all()):
            raise _not_identified_error(first_posterior.identified)
        params = params._replace(initial_mean=first_posterior.mean.to(params.initial_mean.dtype))
    raw = run(params, store)
    return raw, _finish(raw, diffuse), backend


def _mask_steps(values: Tensor, valid: Tensor) -> Tensor:
    """Zero ``values`` ``(N, T, ...)`` at padded steps (``values`` itself when there are none)."""
    if bool(valid.all()):
        return values
    shape = valid.shape + (1,) * (values.dim() - 2)
    return torch.where(valid.reshape(shape), values, torch.zeros((), dtype=values.dtype, device=values.device))


def _smoother_gains(params: _Params, raw: _Raw) -> Tensor:
    """``(N, T-1, d, d)`` gains :math:`J_t = P_t A_{t+1}^\\top P_{t+1|t}^{-1}`, ``t = 0..T-2``.

    The identity where step ``t + 1`` is padding (the moments are carried there).
    """
    num_steps = raw.valid.shape[1]
    state_dim = params.transition_matrix.shape[-1]
    state_eye = torch.eye(state_dim, dtype=raw.filtered_cov.dtype, device=raw.filtered_cov.device)
    next_valid = raw.valid[:, 1:, None, None]
    filtered_cov = raw.filtered_cov[:, : num_steps - 1]
    predicted_chol = torch.linalg.cholesky(torch.where(next_valid, raw.predicted_cov[:, 1:], state_eye))
    # J^T = P_{t+1|t}^{-1} A P_t  (both covariances symmetric).
    gains = torch.cholesky_solve(params.transition_matrix[:, None] @ filtered_cov, predicted_chol).transpose(-1, -2)
    return torch.where(next_valid, gains, state_eye)


def _torch_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother, torch loop: mean, cov, lag-one cov, basis (unmasked)."""
    num_steps = raw.valid.shape[1]
    diffuse = raw.filtered_basis is not None
    smoothed_means = [raw.filtered_mean[:, -1]]
    smoothed_covs = [raw.filtered_cov[:, -1]]
    smoothed_bases = [raw.filtered_basis[:, -1]] if diffuse else []
    lag_one_covs = []
    if num_steps > 1:
        gains = _smoother_gains(params, raw)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            next_mean, next_cov = smoothed_means[-1], smoothed_covs[-1]
            mean = raw.filtered_mean[:, t] + (gain @ (next_mean - raw.predicted_mean[:, t + 1])[..., None])[..., 0]
            cov = _symmetrise(
                raw.filtered_cov[:, t] + gain @ (next_cov - raw.predicted_cov[:, t + 1]) @ gain.transpose(-1, -2)
            )
            lag_one_covs.append(next_cov @ gain.transpose(-1, -2))
            smoothed_means.append(mean)
            smoothed_covs.append(cov)
            if diffuse:
                smoothed_bases.append(
                    raw.filtered_basis[:, t] + gain @ (smoothed_bases[-1] - raw.predicted_basis[:, t + 1])
                )
    lag_one_covs.append(torch.zeros_like(smoothed_covs[0]))
    return (
        torch.stack(smoothed_means[::-1], 1),
        torch.stack(smoothed_covs[::-1], 1),
        torch.stack(lag_one_covs[::-1], 1),
        torch.stack(smoothed_bases[::-1], 1) if diffuse else None,
    )


# --------------------------------------------------------------------------------------
# Parallel-in-time filter and smoother (associative scans; any device, autograd)
# --------------------------------------------------------------------------------------


def _associative_scan(elements: tuple[Tensor, ...], combine) -> tuple[Tensor, ...]:
    """Inclusive prefix combination along time (dim 1) of a tuple of ``(N, T, ...)`` tensors.

    ``combine(earlier, later)`` must be associative; depth ``O(log T)``, work ``O(T)``.
    """
    num_steps = elements[0].shape[1]
    if num_steps < 2:
        return elements
    odd = _associative_scan(
        combine(tuple(e[:, 0:-1:2] for e in elements), tuple(e[:, 1::2] for e in elements)), combine
    )  # prefixes ending at steps 1, 3, 5, ...
    rest = tuple(e[:, 2::2] for e in elements)
    if num_steps % 2 == 0:
        even = combine(tuple(o[:, :-1] for o in odd), rest)
    else:
        even = combine(odd, rest)
    even = tuple(torch.cat([e[:, :1], v], 1) for e, v in zip(elements, even))  # prefixes ending at 0, 2, 4, ...
    result = []
    for even_value, odd_value in zip(even, odd):
        interleaved = torch.stack([even_value[:, : odd_value.shape[1]], odd_value], 2).flatten(1, 2)
        if num_steps % 2:
            interleaved = torch.cat([interleaved, even_value[:, -1:]], 1)
        result.append(interleaved)
    return tuple(result)


def _combine_filter_elements(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Särkkä & García-Fernández (2021), eq. (11)-(12): combination of filtering elements.

    An element ``(A, b, C, eta, J)`` stands for :math:`p(s_k \\mid s_{i-1}, x_{i:k}) =
    \\mathcal N(A s_{i-1} + b, C)` and :math:`p(x_{i:k} \\mid s_{i-1}) \\propto
    \\exp(-\\tfrac12 s^\\top J s + s^\\top \\eta)`; ``b`` and ``eta`` have several columns
    (the mean and the diffuse basis).
    """
    a_i, b_i, c_i, eta_i, j_i = earlier
    a_j, b_j, c_j, eta_j, j_j = later
    eye = torch.eye(a_i.shape[-1], dtype=a_i.dtype, device=a_i.device)
    num_cols = b_i.shape[-1]
    # (I + C_i J_j)^{-1} [A_i, b_i + C_i eta_j, C_i]
    solved = torch.linalg.solve(eye + c_i @ j_j, torch.cat([a_i, b_i + c_i @ eta_j, c_i], -1))
    state_dim = a_i.shape[-1]
    solved_a, solved_b, solved_c = solved.split([state_dim, num_cols, state_dim], -1)
    combined_a = a_j @ solved_a
    combined_b = a_j @ solved_b + b_j
    combined_c = _symmetrise(a_j @ solved_c @ a_j.transpose(-1, -2) + c_j)
    # (I + J_j C_i)^{-1} [eta_j - J_j b_i, J_j A_i]
    solved = torch.linalg.solve(eye + j_j @ c_i, torch.cat([eta_j - j_j @ b_i, j_j @ a_i], -1))
    solved_eta, solved_j = solved.split([num_cols, state_dim], -1)
    a_i_t = a_i.transpose(-1, -2)
    combined_eta = a_i_t @ solved_eta + eta_i
    combined_j = _symmetrise(a_i_t @ solved_j + j_i)
    return combined_a, combined_b, combined_c, combined_eta, combined_j


def _combine_smoother_elements(later: tuple[Tensor, ...], earlier: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Composition of backward affine kernels ``s_k = E s_{k+1} + g + N(0, L)`` (scan runs backwards)."""
    e_later, g_later, l_later = later
    e_earlier, g_earlier, l_earlier = earlier
    return (
        e_earlier @ e_later,
        e_earlier @ g_later + g_earlier,
        _symmetrise(e_earlier @ l_later @ e_earlier.transpose(-1, -2) + l_earlier),
    )


def _parallel_filter(params: _Params, diffuse: bool) -> _Raw:
    """The filter by an associative scan; the log densities from the one-step predictions."""
    observations = params.observations
    num_seq, num_steps, obs_dim = observations.shape
    state_dim = params.transition_matrix.shape[-1]
    dtype, device = observations.dtype, observations.device
    valid = _valid_mask(params.lengths, num_steps)
    observed = ~torch.isnan(observations) & valid[..., None]
    mask = observed.to(dtype)  # (N, T, p)
    values = torch.where(observed, observations, torch.zeros((), dtype=dtype, device=device))
    state_eye = torch.eye(state_dim, dtype=dtype, device=device)
    obs_matrix = params.observation_matrix[:, None] * mask[..., None]  # (N, T, p, d)
    obs_cov = params.observation_cov[:, None] * (mask[..., :, None] * mask[..., None, :]) + torch.diag_embed(1.0 - mask)
    transition = torch.where(valid[..., None, None], params.transition_matrix[:, None], state_eye)  # into step t
    noise = torch.where(valid[..., None, None], params.transition_cov[:, None], torch.zeros_like(state_eye))
    obs_matrix_t = obs_matrix.transpose(-1, -2)
    num_cols = 1 + state_dim if diffuse else 1

    # Step 1: the filtered moments of S_1 (prior N(m_0, P_0); with diffuse, m = 0, P = 0, basis I).
    if diffuse:
        first_mean = params.initial_mean[..., None]  # the reference point of the diffuse start
        first_cols = torch.cat([first_mean, state_eye.expand(num_seq, state_dim, state_dim)], -1)
        first_cov = torch.zeros(num_seq, state_dim, state_dim, dtype=dtype, device=device)
    else:
        prior_mean, prior_cov = params.initial_mean, params.initial_cov
        cross = prior_cov @ obs_matrix_t[:, 0]
        chol = torch.linalg.cholesky(_symmetrise(obs_matrix[:, 0] @ cross + obs_cov[:, 0]))
        gain = torch.cholesky_solve(cross.transpose(-1, -2), chol).transpose(-1, -2)
        innovation = values[:, 0] - (obs_matrix[:, 0] @ prior_mean[..., None])[..., 0]
        first_cols = (prior_mean + (gain @ innovation[..., None])[..., 0])[..., None]
        residual_op = state_eye - gain @ obs_matrix[:, 0]
        first_cov = _symmetrise(residual_op @ prior_cov @ residual_op.transpose(-1, -2)
                                + gain @ obs_cov[:, 0] @ gain.transpose(-1, -2))

    # Steps 2..T: elements of eq. (10) (Joseph form for C).
    cross = noise @ obs_matrix_t  # (N, T, d, p)
    chol = torch.linalg.cholesky(_symmetrise(obs_matrix @ cross + obs_cov))
    gain = torch.cholesky_solve(cross.transpose(-1, -2), chol).transpose(-1, -2)  # (N, T, d, p)
    residual_op = state_eye - gain @ obs_matrix
    element_a = residual_op @ transition
    element_b = torch.zeros(num_seq, num_steps, state_dim, num_cols, dtype=dtype, device=device)
    element_b[..., :1] = gain @ values[..., None]
    element_c = _symmetrise(residual_op @ noise @ residual_op.transpose(-1, -2) + gain @ obs_cov @ gain.transpose(-1, -2))
    emitted = obs_matrix @ transition  # H F (N, T, p, d)
    emitted_t = emitted.transpose(-1, -2)
    element_eta = torch.zeros_like(element_b)
    element_eta[..., :1] = emitted_t @ torch.cholesky_solve(values[..., None], chol)
    element_j = _symmetrise(emitted_t @ torch.cholesky_solve(emitted, chol))
    zero_matrix = torch.zeros_like(first_cov)
    first = (zero_matrix, first_cols, first_cov, torch.zeros_like(first_cols), zero_matrix)
    elements = tuple(
        torch.cat([start[:, None], later[:, 1:]], 1)
        for start, later in zip(first, (element_a, element_b, element_c, element_eta, element_j))
    )
    _a, filtered_cols, filtered_cov, _eta, _j = _associative_scan(elements, _combine_filter_elements)

    # One-step predictions and the log densities, all steps at once.
    if diffuse:
        initial_cols = first_cols
        initial_cov = first_cov
    else:
        initial_cols = params.initial_mean[..., None]
        initial_cov = params.initial_cov
    predicted_cols = torch.cat([initial_cols[:, None], transition[:, 1:] @ filtered_cols[:, :-1]], 1)
    predicted_cov = torch.cat([
        initial_cov[:, None],
        _symmetrise(transition[:, 1:] @ filtered_cov[:, :-1] @ transition[:, 1:].transpose(-1, -2) + noise[:, 1:]),
    ], 1)
    innovation = values - (obs_matrix @ predicted_cols[..., :1])[..., 0]
    innovation_chol = torch.linalg.cholesky(_symmetrise(obs_matrix @ predicted_cov @ obs_matrix_t + obs_cov))
    whitened = torch.linalg.solve_triangular(innovation_chol, innovation[..., None], upper=False)[..., 0]
    log_det = 2.0 * innovation_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    step_ll = -0.5 * (whitened.square().sum(-1) + log_det + mask.sum(-1) * _LOG_2PI)
    info_matrix = info_vector = None
    if diffuse:
        white_basis = torch.linalg.solve_triangular(innovation_chol, obs_matrix @ predicted_cols[..., 1:], upper=False)
        info_matrix = torch.cumsum(white_basis.transpose(-1, -2) @ white_basis, 1)
        info_vector = torch.cumsum((white_basis.transpose(-1, -2) @ whitened[..., None])[..., 0], 1)
    return _Raw(
        step_log_likelihood=step_ll,
        filtered_mean=filtered_cols[..., 0],
        filtered_cov=filtered_cov,
        predicted_mean=predicted_cols[..., 0],
        predicted_cov=predicted_cov,
        filtered_basis=filtered_cols[..., 1:] if diffuse else None,
        predicted_basis=predicted_cols[..., 1:] if diffuse else None,
        info_matrix=info_matrix,
        info_vector=info_vector,
        final_mean=filtered_cols[:, -1, :, 0],
        final_cov=filtered_cov[:, -1],
        final_basis=filtered_cols[:, -1, :, 1:] if diffuse else None,
        final_info_matrix=info_matrix[:, -1] if diffuse else None,
        final_info_vector=info_vector[:, -1] if diffuse else None,
        steady_epoch=None,
        valid=valid,
    )


def _parallel_smoother(params: _Params, raw: _Raw) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Conditional RTS smoother by a backward associative scan: mean, cov, lag-one cov, basis."""
    num_seq, num_steps, state_dim = raw.filtered_mean.shape
    diffuse = raw.filtered_basis is not None
    filtered_cols = raw.filtered_mean[..., None]
    predicted_cols = raw.predicted_mean[..., None]
    if diffuse:
        filtered_cols = torch.cat([filtered_cols, raw.filtered_basis], -1)
        predicted_cols = torch.cat([predicted_cols, raw.predicted_basis], -1)
    gains = raw.filtered_cov.new_zeros(num_seq, num_steps, state_dim, state_dim)
    if num_steps > 1:
        gains = torch.cat([_smoother_gains(params, raw), gains[:, :1]], 1)  # E_T = 0
    next_cols = torch.cat([predicted_cols[:, 1:], torch.zeros_like(predicted_cols[:, :1])], 1)
    next_cov = torch.cat([raw.predicted_cov[:, 1:], torch.zeros_like(raw.predicted_cov[:, :1])], 1)
    element_g = filtered_cols - gains @ next_cols
    element_l = _symmetrise(raw.filtered_cov - gains @ next_cov @ gains.transpose(-1, -2))
    reversed_elements = tuple(value.flip(1) for value in (gains, element_g, element_l))
    _e, smoothed_cols, smoothed_cov = (
        value.flip(1) for value in _associative_scan(reversed_elements, _combine_smoother_elements)
    )
    lag_one = smoothed_cov[:, 1:] @ gains[:, :-1].transpose(-1, -2)
    lag_one_cov = torch.cat([torch.zeros_like(smoothed_cov[:, :1]), lag_one], 1)
    return (smoothed_cols[..., 0], smoothed_cov, lag_one_cov, smoothed_cols[..., 1:] if diffuse else None)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def kalman_filter(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanFiltered:
    """Kalman filter: log marginal likelihood and filtered and one-step predicted moments.

    Args:
        (model arguments): see the module docstring (shapes and the missing-value convention).
        diffuse: exact diffuse initialisation (improper flat prior on :math:`S_1`;
            ``initial_mean``/``initial_cov`` are shape-checked and ignored). See the module docstring.
        method: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see *Dispatch* in the module docstring).
        steady_state: let the numba kernel switch to the converged gain of a time-invariant
            system (exact to ~1e-12 relative; see the module docstring). ``False`` runs the full
            update at every step.

    Returns:
        :class:`KalmanFiltered`; moments are zero at padded steps (and NaN, with ``diffuse``,
        where the observations so far do not identify the state).
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    _raw, state, _backend = _run_filter(params, diffuse, method, steady_state)
    return KalmanFiltered(
        log_normalizer=state.log_normalizer,
        filtered_mean=_mask_steps(state.filtered_mean, state.valid),
        filtered_cov=_mask_steps(state.filtered_cov, state.valid),
        predicted_mean=_mask_steps(state.predicted_mean, state.valid),
        predicted_cov=_mask_steps(state.predicted_cov, state.valid),
        step_log_likelihood=_mask_steps(state.step_log_likelihood, state.valid),
    )


def log_marginal(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> Tensor:
    """Log marginal likelihood :math:`\\log p(x_{1:L})` over the observed entries.

    Differentiable with respect to every input. On CPU (``method="auto"``) the gradient
    comes from one smoother pass (Fisher's identity, see ``_LogMarginal``): covariance
    inputs are read through their symmetric part, and it is not twice differentiable;
    ``method="sequential"`` differentiates the torch loop instead (any order). Without
    gradients, on CPU, nothing of size ``T d^2`` is stored.

    Args:
        (model arguments), diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        ``(N,)`` log normaliser of each sequence (0 for a length-0 sequence); with
        ``diffuse``, Durbin & Koopman's exact diffuse log-likelihood.
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    if not isinstance(diffuse, bool):
        raise TypeError(f"diffuse: expected a bool, got {type(diffuse).__name__}")
    backend = _choose_backend(params, method)
    if backend == "torch" and method == "auto" and params.observations.device.type == "cpu":
        # Gradients on CPU: the numba filter and, in the same compiled call, the smoother's score.
        return _LogMarginal.apply(*params, diffuse, steady_state)
    if backend == "numba":
        # Both diffuse passes and the diffuse term in one compiled call (no torch work per call).
        log_normalizer, _ = _fused(params, diffuse, steady_state, with_score=False)
        return torch.from_numpy(log_normalizer).to(device=params.observations.device, dtype=params.observations.dtype)
    return _run_filter(params, diffuse, method, steady_state, store=False)[1].log_normalizer


def rts_smoother(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanSmoothed:
    """Rauch–Tung–Striebel smoother: posterior marginals and lag-one covariances.

    Args:
        (model arguments), diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        :class:`KalmanSmoothed`; zero at padded steps.
    """
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    raw, state, backend = _run_filter(params, diffuse, method, steady_state)
    if backend == "numba":
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _numba_smoother(params, raw)
    elif backend == "parallel":
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _parallel_smoother(params, raw)
    else:
        smoothed_mean, smoothed_cov, lag_one_cov, smoothed_basis = _torch_smoother(params, raw)
    if diffuse:
        posterior = state.initial_posterior
        smoothed_mean, smoothed_cov = _combine(smoothed_mean, smoothed_cov, smoothed_basis,
                                               posterior.mean[:, None], posterior.cov[:, None])
        cross = smoothed_basis[:, 1:] @ posterior.cov[:, None] @ smoothed_basis[:, :-1].transpose(-1, -2)
        lag_one_cov = lag_one_cov + torch.cat([torch.zeros_like(cross[:, :1]), cross], 1)
    return KalmanSmoothed(
        log_normalizer=state.log_normalizer,
        smoothed_mean=_mask_steps(smoothed_mean, state.valid),
        smoothed_cov=_mask_steps(smoothed_cov, state.valid),
        lag_one_cov=_mask_steps(lag_one_cov, state.valid),  # zero at t = 0 by construction
    )


def _draw(mean: Tensor, cov: Tensor, standard: Tensor) -> Tensor:
    """``mean + root(cov) @ standard``; a PSD square root where ``cov`` is singular."""
    cov = _symmetrise(cov)
    chol, status = torch.linalg.cholesky_ex(cov)
    if bool((status != 0).any()):
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        root = eigenvectors * eigenvalues.clamp(min=0).sqrt()[..., None, :]
        chol = torch.where((status != 0)[..., None, None], root, chol)
    return mean + (chol @ standard[..., None])[..., 0]


def sample_states(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> Tensor:
    """Draw state paths from :math:`p(s_{1:L} \\mid x_{1:L})` by forward-filter backward-sample.

    Args:
        (model arguments): see the module docstring.
        num_samples: number of independent paths per sequence (>= 1).
        generator: optional random generator (on the device of ``observations``).
        diffuse, method, steady_state: as in :func:`kalman_filter` (the backward pass is a torch loop).

    Returns:
        ``(num_samples, N, T, d)`` sampled states; zero at padded steps.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    raw, state, _backend = _run_filter(params, diffuse, method, steady_state)
    num_seq, num_steps, state_dim = raw.filtered_mean.shape
    dtype, device = raw.filtered_mean.dtype, raw.filtered_mean.device
    filtered_mean, predicted_mean = raw.filtered_mean[None], raw.predicted_mean[None]  # (1 or S, N, T, d)
    if diffuse:
        # Draw s_1 from its flat-prior posterior, then the path given s_1 (the conditional filter).
        posterior = state.initial_posterior
        initial = _draw(posterior.mean, posterior.cov,
                        torch.randn(num_samples, num_seq, state_dim, generator=generator, dtype=dtype, device=device))
        filtered_mean = filtered_mean + (raw.filtered_basis @ initial[:, :, None, :, None])[..., 0]
        predicted_mean = predicted_mean + (raw.predicted_basis @ initial[:, :, None, :, None])[..., 0]
    noise = torch.randn(num_samples, num_seq, num_steps, state_dim, generator=generator, dtype=dtype, device=device)
    sample = _draw(filtered_mean[:, :, -1], raw.filtered_cov[:, -1], noise[:, :, -1])  # (S, N, d)
    samples = [sample]
    if num_steps > 1:
        gains = _smoother_gains(params, raw)
        for t in range(num_steps - 2, -1, -1):
            gain = gains[:, t]
            cond_mean = filtered_mean[:, :, t] + (gain @ (sample - predicted_mean[:, :, t + 1])[..., None])[..., 0]
            cond_cov = raw.filtered_cov[:, t] - gain @ raw.predicted_cov[:, t + 1] @ gain.transpose(-1, -2)
            # Where step t+1 is padding, S_t is the last valid state (or carries it): draw it from
            # its filtered law, as the conditional covariance there is exactly zero.
            next_valid = raw.valid[:, t + 1]
            cond_mean = torch.where(next_valid[:, None], cond_mean, filtered_mean[:, :, t])
            cond_cov = torch.where(next_valid[:, None, None], cond_cov, raw.filtered_cov[:, t])
            sample = _draw(cond_mean, cond_cov, noise[:, :, t])
            samples.append(sample)
    paths = torch.stack(samples[::-1], 2)  # (S, N, T, d)
    return torch.where(raw.valid[None, :, :, None], paths, torch.zeros((), dtype=dtype, device=device))


def forecast(
    transition_matrix: Tensor,
    transition_cov: Tensor,
    observation_matrix: Tensor,
    observation_cov: Tensor,
    initial_mean: Tensor,
    initial_cov: Tensor,
    observations: Tensor,
    lengths: Tensor | None = None,
    steps: int = 1,
    *,
    diffuse: bool = False,
    method: str = "auto",
    steady_state: bool = True,
) -> KalmanForecast:
    """Predictive moments of the ``steps`` states and observations after each sequence's end.

    Each sequence is forecast from its own length ``L``: step ``k`` is time ``L + k``. A
    length-0 sequence is forecast from the prior, so its first step is :math:`S_1`.

    Args:
        (model arguments): see the module docstring.
        steps: forecast horizon (>= 1).
        diffuse, method, steady_state: as in :func:`kalman_filter`.

    Returns:
        :class:`KalmanForecast`.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    params = _prepare(
        transition_matrix, transition_cov, observation_matrix, observation_cov,
        initial_mean, initial_cov, observations, lengths,
    )
    _raw, state, _backend = _run_filter(params, diffuse, method, steady_state, store=False)
    # Padded steps carry the filtered moments of the last valid step to step T.
    mean, cov = state.final_mean, state.final_cov
    empty = params.lengths == 0
    transition, noise = params.transition_matrix, params.transition_cov
    obs_matrix, obs_cov = params.observation_matrix, params.observation_cov
    state_means, state_covs, obs_means, obs_covs = [], [], [], []
    for k in range(steps):
        mean = (transition @ mean[..., None])[..., 0]
        cov = _symmetrise(transition @ cov @ transition.transpose(-1, -2) + noise)
        if k == 0:
            mean = torch.where(empty[:, None], params.initial_mean, mean)
            cov = torch.where(empty[:, None, None], params.initial_cov, cov)
        state_means.append(mean)
        state_covs.append(cov)
        obs_means.append((obs_matrix @ mean[..., None])[..., 0])
        obs_covs.append(_symmetrise(obs_matrix @ cov @ obs_matrix.transpose(-1, -2) + obs_cov))
    return KalmanForecast(
        state_mean=torch.stack(state_means, 1),
        state_cov=torch.stack(state_covs, 1),
        observation_mean=torch.stack(obs_means, 1),
        observation_cov=torch.stack(obs_covs, 1),
    )


# --------------------------------------------------------------------------
# Time-varying observation noise (identity observation matrix): the kernel of the
# discrete Kalman filter's Gaussian (Laplace) pseudo-observations (zoo.dtm), whose
# covariance R_t changes at every step. Self-contained: it shares no code with the
# kernels above.
# --------------------------------------------------------------------------
def _symmetric_part(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


class VaryingNoiseSmoothed(NamedTuple):
    """Filtered and smoothed moments of :func:`kalman_smoother_varying_noise`.

    Attributes:
        filtered_mean: ``(T, D)``; filtered_cov: ``(T, D, D)``.
        smoothed_mean: ``(T, D)``; smoothed_cov: ``(T, D, D)``.
        log_normalizer: ``()`` log-density of the observed steps' observations.
    """

    filtered_mean: Tensor
    filtered_cov: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    log_normalizer: Tensor


def kalman_smoother_varying_noise(transition_matrix: Tensor, transition_cov: Tensor, initial_mean: Tensor,
                                  initial_cov: Tensor, observations: Tensor, observation_covs: Tensor,
                                  observed: Tensor | None = None) -> VaryingNoiseSmoothed:
    r"""Kalman filter and RTS smoother with an observation covariance that changes at every step.

    :math:`S_0 \sim N(m_0, P_0)`, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, Q)`,
    :math:`y_t = S_t + e_t`, :math:`e_t \sim N(0, R_t)` (identity observation matrix).
    Steps with ``observed[t]`` False get no update and add nothing to the log-normaliser.

    Args:
        transition_matrix: ``(D, D)`` :math:`A`.
        transition_cov: ``(D, D)`` :math:`Q`.
        initial_mean: ``(D,)`` :math:`m_0`.
        initial_cov: ``(D, D)`` :math:`P_0`.
        observations: ``(T, D)`` :math:`y`.
        observation_covs: ``(T, D, D)`` :math:`R_t` (symmetric positive definite where observed).
        observed: ``(T,)`` bool (None: every step).

    Returns:
        :class:`VaryingNoiseSmoothed`. Differentiable in every argument.

    Example:
        >>> out = kalman_smoother_varying_noise(torch.eye(2), 0.1 * torch.eye(2), torch.zeros(2), torch.eye(2),
        ...                                     torch.randn(5, 2), torch.eye(2).expand(5, 2, 2))
        >>> out.smoothed_mean.shape, out.log_normalizer.shape
        (torch.Size([5, 2]), torch.Size([]))
    """
    if observations.dim() != 2:
        raise ValueError(f"observations: expected (T, D), got {tuple(observations.shape)}")
    T, D = observations.shape
    for name, value, shape in (("transition_matrix", transition_matrix, (D, D)), ("transition_cov", transition_cov, (D, D)),
                               ("initial_mean", initial_mean, (D,)), ("initial_cov", initial_cov, (D, D)),
                               ("observation_covs", observation_covs, (T, D, D))):
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
    if observed is None:
        observed = torch.ones(T, dtype=torch.bool)
    elif tuple(observed.shape) != (T,):
        raise ValueError(f"observed: expected shape ({T},), got {tuple(observed.shape)}")
    A, Q = transition_matrix, transition_cov
    eye = torch.eye(D, dtype=observations.dtype, device=observations.device)
    means, covs, pred_means, pred_covs = [], [], [], []
    log_normalizer = observations.new_zeros(())
    mean, cov = initial_mean, initial_cov
    for t in range(T):
        if t > 0:
            mean, cov = A @ mean, A @ cov @ A.T + Q
        pred_means.append(mean)
        pred_covs.append(cov)
        if bool(observed[t]):
            chol = torch.linalg.cholesky(_symmetric_part(cov + observation_covs[t]))
            residual = observations[t] - mean
            whitened = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
            log_normalizer = log_normalizer - 0.5 * (whitened.pow(2).sum() + D * math.log(2 * math.pi)) \
                - chol.diagonal().log().sum()
            gain = torch.cholesky_solve(cov, chol).T  # cov (cov + R_t)^{-1}
            mean = mean + gain @ residual
            cov = _symmetric_part((eye - gain) @ cov)
        means.append(mean)
        covs.append(cov)
    smoothed_means, smoothed_covs = [means[-1]], [covs[-1]]
    for t in range(T - 2, -1, -1):
        # G_t = P_t A^T (P_{t+1|t})^{-1}, by a solve with the symmetric predicted covariance
        smoother_gain = torch.linalg.solve(pred_covs[t + 1], A @ covs[t]).T
        smoothed_means.insert(0, means[t] + smoother_gain @ (smoothed_means[0] - pred_means[t + 1]))
        smoothed_covs.insert(0, _symmetric_part(covs[t] + smoother_gain @ (smoothed_covs[0] - pred_covs[t + 1]) @ smoother_gain.T))
    return VaryingNoiseSmoothed(torch.stack(means), torch.stack(covs), torch.stack(smoothed_means),
                                torch.stack(smoothed_covs), log_normalizer)


__all__ += ["VaryingNoiseSmoothed", "kalman_smoother_varying_noise"]
