"""Exact diffuse initialisation: the conditional filter combined with the information on :math:`S_1`.

See *Exact diffuse initialisation* in :mod:`inference.kalman`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._common import _FilterState, _Raw, _stored, _symmetrise

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
        (status == 0) & (pivots > tol * diagonal).all(-1) & (diagonal > tol * largest).all(-1) & (largest[..., 0] > 0)
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


def _combine(
    mean: Tensor, cov: Tensor, basis: Tensor, posterior_mean: Tensor, posterior_cov: Tensor
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
    final = _initial_posterior(
        _stored(raw.final_info_matrix, "final_info_matrix"), _stored(raw.final_info_vector, "final_info_vector")
    )
    if not bool(final.identified.all()):
        raise _not_identified_error(final.identified)
    log_normalizer = raw.step_log_likelihood.sum(-1) + final.log_normalizer
    final_mean, final_cov = _combine(
        raw.final_mean, raw.final_cov, _stored(raw.final_basis, "final_basis"), final.mean, final.cov
    )
    if raw.filtered_mean is None:
        return _FilterState(log_normalizer, None, None, None, None, None, final_mean, final_cov, final, raw.valid)
    # (N, T): information from x_{1:t}
    steps = _initial_posterior(_stored(raw.info_matrix, "info_matrix"), _stored(raw.info_vector, "info_vector"))
    nan = torch.full((), torch.nan, dtype=log_normalizer.dtype, device=log_normalizer.device)
    filtered_mean, filtered_cov = _combine(
        raw.filtered_mean,
        _stored(raw.filtered_cov, "filtered_cov"),
        _stored(raw.filtered_basis, "filtered_basis"),
        steps.mean,
        steps.cov,
    )
    filtered_mean = torch.where(steps.identified[..., None], filtered_mean, nan)
    filtered_cov = torch.where(steps.identified[..., None, None], filtered_cov, nan)
    # The prediction of step t uses the information of x_{1:t-1}.
    previous_identified = torch.cat([torch.zeros_like(steps.identified[:, :1]), steps.identified[:, :-1]], 1)
    previous_mean = torch.cat([torch.zeros_like(steps.mean[:, :1]), steps.mean[:, :-1]], 1)
    previous_cov = torch.cat([torch.zeros_like(steps.cov[:, :1]), steps.cov[:, :-1]], 1)
    predicted_mean, predicted_cov = _combine(
        _stored(raw.predicted_mean, "predicted_mean"),
        _stored(raw.predicted_cov, "predicted_cov"),
        _stored(raw.predicted_basis, "predicted_basis"),
        previous_mean,
        previous_cov,
    )
    predicted_mean = torch.where(previous_identified[..., None], predicted_mean, nan)
    predicted_cov = torch.where(previous_identified[..., None, None], predicted_cov, nan)
    # Diffuse log-likelihood of each prefix x_{1:t} (0 until it identifies s_1); its increments.
    prefix = torch.where(
        steps.identified,
        raw.step_log_likelihood.cumsum(-1) + steps.log_normalizer,
        torch.zeros((), dtype=nan.dtype, device=nan.device),
    )
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
