"""Shared pieces of the Kalman kernels: result types, constants, input checks and the choice of backend.

See :mod:`inference.kalman` for the model, the conventions and the algorithms.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
from torch import Tensor

from ..validation import check_lengths

if TYPE_CHECKING:
    from .diffuse import _InitialPosterior


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

_T = TypeVar("_T")


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
    initial_posterior: _InitialPosterior | None
    valid: Tensor  # (N, T) bool


def _stored(value: _T | None, name: str) -> _T:
    """``value``, an optional field of :class:`_Raw` or :class:`_FilterState` that the caller's
    path guarantees: the ``T d^2`` fields are stored unless the filter ran with ``store=False``,
    the basis and information fields (and ``initial_posterior``) exist only with ``diffuse``,
    ``steady_epoch`` only from the numba filter with ``store``."""
    if value is None:
        raise RuntimeError(f"{name}: not stored by the filter (an internal error of the dispatch in inference.kalman)")
    return value


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
        raise ValueError(f"transition_matrix: expected shape (d, d) or (N, d, d), got {tuple(transition_matrix.shape)}")
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
    """Map ``method`` to ``"numba"``, ``"torch"`` (sequential loop) or ``"parallel"`` (*Dispatch* in
    the docstring of :mod:`inference.kalman`)."""
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if method == "parallel" or (method == "auto" and params.observations.device.type != "cpu"):
        return "parallel"
    needs_grad = torch.is_grad_enabled() and any(value.requires_grad for value in params if isinstance(value, Tensor))
    if params.observations.device.type == "cpu" and not needs_grad:
        return "numba"
    return "torch"
