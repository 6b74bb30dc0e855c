r"""Scores of probabilistic forecasts: CRPS, RMSE, interval coverage, log-loss.

Pure tensor functions (no model, no Pyro). Elementwise scores keep the targets'
shape; the summaries (:func:`rmse`, :func:`interval_coverage`, :func:`mean_score`)
average over *held-out* entries only: every summary takes a ``held_out`` mask of
the targets' shape and also skips missing (NaN) targets, so points the model was
fit on, or padding, never enter a forecast score.

The continuous ranked probability score of a predictive distribution :math:`F` at
an outcome :math:`y` (Gneiting & Raftery 2007, *Strictly proper scoring rules*,
JASA 102) is

.. math::

    \mathrm{CRPS}(F, y) = \int (F(z) - \mathbb 1\{z \ge y\})^2\,dz
                       = E|X - y| - \tfrac12 E|X - X'|, \quad X, X' \sim F \text{ i.i.d.}

(lower is better; in the data's units). Closed forms: the Gaussian, and the
Gaussian mixture (Grimit et al. 2006, *The continuous ranked probability score for
circular variables*, QJRMS 132, eq. 5); for samples, the energy form above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_SQRT_PI = math.sqrt(math.pi)


def _standard_normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def _standard_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def crps_gaussian(mean: Tensor, scale: Tensor, targets: Tensor) -> Tensor:
    r"""CRPS of :math:`N(\mu, \sigma^2)` at ``targets``, elementwise:
    :math:`\sigma\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi]`, :math:`z = (y - \mu)/\sigma`.

    Args:
        mean, scale, targets: broadcastable tensors; ``scale > 0``.
    """
    if bool((torch.as_tensor(scale) <= 0).any()):
        raise ValueError("scale: expected positive standard deviations")
    z = (targets - mean) / scale
    return scale * (z * (2 * _standard_normal_cdf(z) - 1) + 2 * _standard_normal_pdf(z) - 1 / _SQRT_PI)


def _expected_absolute(mean: Tensor, variance: Tensor) -> Tensor:
    """:math:`E|Z|` for :math:`Z \\sim N(\\mu, s^2)`: :math:`2 s \\varphi(\\mu/s) + \\mu(2\\Phi(\\mu/s) - 1)`."""
    scale = variance.sqrt()
    z = mean / scale
    return 2 * scale * _standard_normal_pdf(z) + mean * (2 * _standard_normal_cdf(z) - 1)


def crps_gaussian_mixture(weights: Tensor, means: Tensor, scales: Tensor, targets: Tensor) -> Tensor:
    r"""CRPS of the mixture :math:`\sum_k w_k N(\mu_k, \sigma_k^2)` at ``targets``:
    :math:`\sum_k w_k A(y - \mu_k, \sigma_k^2) - \tfrac12 \sum_{k,l} w_k w_l A(\mu_k - \mu_l,
    \sigma_k^2 + \sigma_l^2)` with :math:`A(m, s^2) = E|N(m, s^2)|`.

    Args:
        weights: ``(..., K)`` mixture weights summing to 1.
        means, scales: ``(..., K)``.
        targets: ``(...)``.

    Returns:
        ``(...)``.
    """
    if weights.shape[-1:] != means.shape[-1:] or means.shape != scales.shape:
        raise ValueError(
            f"weights, means, scales: expected matching (..., K) shapes, got {tuple(weights.shape)}, "
            f"{tuple(means.shape)}, {tuple(scales.shape)}"
        )
    if bool((scales <= 0).any()):
        raise ValueError("scales: expected positive standard deviations")
    variances = scales**2
    to_target = (weights * _expected_absolute(targets.unsqueeze(-1) - means, variances)).sum(-1)
    pair_mean = means.unsqueeze(-1) - means.unsqueeze(-2)  # (..., K, K)
    pair_variance = variances.unsqueeze(-1) + variances.unsqueeze(-2)
    pair_weight = weights.unsqueeze(-1) * weights.unsqueeze(-2)
    spread = (pair_weight * _expected_absolute(pair_mean, pair_variance)).sum((-1, -2))
    return to_target - 0.5 * spread


def crps_samples(samples: Tensor, targets: Tensor, *, fair: bool = False) -> Tensor:
    r"""CRPS of the empirical distribution of ``samples`` (energy form),
    :math:`\frac1S\sum_s |x_s - y| - \frac{1}{2S^2}\sum_{s,s'} |x_s - x_{s'}|`, in
    :math:`O(S \log S)` by sorting. ``fair=True`` divides the second sum by
    :math:`S(S-1)` instead (unbiased for the CRPS of the distribution sampled).

    Args:
        samples: ``(S, ...)``.
        targets: ``(...)``.
    """
    num = samples.shape[0]
    if samples.shape[1:] != targets.shape:
        raise ValueError(
            f"samples: expected shape (S, {', '.join(map(str, targets.shape))}), got {tuple(samples.shape)}"
        )
    if num < (2 if fair else 1):
        raise ValueError(f"samples: expected at least {2 if fair else 1} samples, got {num}")
    to_target = (samples - targets).abs().mean(0)
    ordered = samples.sort(0).values
    rank = torch.arange(1, num + 1, dtype=samples.dtype, device=samples.device)
    rank = rank.reshape(num, *([1] * targets.dim()))
    pair_sum = 2 * ((2 * rank - num - 1) * ordered).sum(0)  # sum over all ordered pairs of |x_s - x_s'|
    return to_target - 0.5 * pair_sum / (num * (num - 1) if fair else num * num)


def _kept(targets: Tensor, held_out: Tensor) -> Tensor:
    if held_out.dtype != torch.bool:
        raise ValueError(f"held_out: expected a bool mask, got {held_out.dtype}")
    held_out = held_out.expand(targets.shape) if held_out.shape != targets.shape else held_out
    observed = ~torch.isnan(targets) if targets.is_floating_point() else torch.ones_like(held_out)
    return held_out & observed


def mean_score(scores: Tensor, held_out: Tensor, *, dim=None, targets: Tensor | None = None) -> Tensor:
    """Mean of elementwise ``scores`` over held-out entries (and non-NaN ``targets``).

    Args:
        scores: ``(...)`` elementwise scores (CRPS, log-loss, squared error ...).
        held_out: bool ``(...)``: which entries are held-out forecast targets.
        dim: dimensions averaged over (``None``: all); e.g. ``(0, 2)`` of
            ``(origins, lead, D)`` gives one value per lead.
        targets: when given, NaN targets are skipped too.

    Returns:
        The mean (NaN where no entry is held out).
    """
    kept = _kept(targets if targets is not None else scores, held_out)
    kept = kept & ~torch.isnan(scores)
    total = torch.where(kept, scores, torch.zeros_like(scores))
    if dim is None:
        return total.sum() / kept.sum()
    return total.sum(dim) / kept.sum(dim)


def rmse(predictions: Tensor, targets: Tensor, held_out: Tensor, *, dim=None) -> Tensor:
    """Root mean squared error of point ``predictions`` over held-out, observed targets."""
    return mean_score((predictions - targets) ** 2, held_out, dim=dim, targets=targets).sqrt()


def interval_coverage(lower: Tensor, upper: Tensor, targets: Tensor, held_out: Tensor, *, dim=None) -> Tensor:
    """Fraction of held-out, observed targets inside ``[lower, upper]``."""
    if bool((lower > upper).any()):
        raise ValueError("lower, upper: expected lower <= upper everywhere")
    inside = ((targets >= lower) & (targets <= upper)).to(lower.dtype)
    return mean_score(inside, held_out, dim=dim, targets=targets)


def log_loss(probs: Tensor, targets: Tensor, held_out: Tensor, *, dim=None) -> Tensor:
    """Mean negative log-probability (nats) of held-out symbol ``targets``.

    Args:
        probs: ``(..., V)`` predictive probabilities.
        targets: ``(...)`` int64 symbol codes (any value where not held out).
        held_out: bool ``(...)``.
    """
    if probs.shape[:-1] != targets.shape:
        raise ValueError(f"probs: expected shape ({', '.join(map(str, targets.shape))}, V), got {tuple(probs.shape)}")
    codes = torch.where(held_out, targets, torch.zeros_like(targets)).long()
    if codes.numel() and (codes.min() < 0 or codes.max() >= probs.shape[-1]):
        raise ValueError(f"targets: expected symbol codes in [0, {probs.shape[-1]}) where held out")
    nll = -probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1).clamp(min=torch.finfo(probs.dtype).tiny).log()
    return mean_score(nll, held_out, dim=dim)


__all__ = [
    "crps_gaussian",
    "crps_gaussian_mixture",
    "crps_samples",
    "interval_coverage",
    "log_loss",
    "mean_score",
    "rmse",
]
