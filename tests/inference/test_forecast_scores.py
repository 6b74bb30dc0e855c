"""Tests for ``inference.forecast_scores``."""

from __future__ import annotations

import math

import pytest
import torch

from inference.forecast_scores import (
    crps_gaussian,
    crps_gaussian_mixture,
    crps_samples,
    interval_coverage,
    log_loss,
    mean_score,
    rmse,
)


def crps_by_integration(cdf, target: float, low: float, high: float, points: int = 200_001) -> float:
    """The defining integral of (F(z) - 1{z >= y})^2: F^2 below y plus (1 - F)^2 above
    (split at y, where the indicator jumps), each by the trapezoid rule on a fine grid."""
    below = torch.linspace(low, target, points, dtype=torch.float64)
    above = torch.linspace(target, high, points, dtype=torch.float64)
    return float(torch.trapezoid(cdf(below) ** 2, below) + torch.trapezoid((1 - cdf(above)) ** 2, above))


def test_gaussian_crps_known_value_closed_form_and_monte_carlo():
    # CRPS(N(0, 1), 0) = 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi).
    value = crps_gaussian(
        torch.tensor(0.0, dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64),
        torch.tensor(0.0, dtype=torch.float64),
    )
    assert value.item() == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), abs=1e-12)
    mean, scale, target = 1.5, 2.0, -0.7
    closed = crps_gaussian(
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(scale, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
    ).item()
    normal = torch.distributions.Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    )
    assert closed == pytest.approx(crps_by_integration(normal.cdf, target, -30, 30), abs=1e-6)
    # Monte Carlo: E|X - y| - E|X - X'| / 2 with independent draws; 400k draws give ~3e-3 error.
    generator = torch.Generator().manual_seed(0)
    x = mean + scale * torch.randn(400_000, generator=generator, dtype=torch.float64)
    x_prime = mean + scale * torch.randn(400_000, generator=generator, dtype=torch.float64)
    monte_carlo = (x - target).abs().mean() - 0.5 * (x - x_prime).abs().mean()
    assert closed == pytest.approx(monte_carlo.item(), abs=0.015)


def test_mixture_crps_reduces_to_the_gaussian_and_matches_the_integral():
    targets = torch.tensor([-1.0, 0.3, 4.0], dtype=torch.float64)
    one = crps_gaussian_mixture(
        torch.ones(3, 1, dtype=torch.float64),
        torch.full((3, 1), 0.5, dtype=torch.float64),
        torch.full((3, 1), 1.3, dtype=torch.float64),
        targets,
    )
    assert torch.allclose(
        one,
        crps_gaussian(torch.tensor(0.5, dtype=torch.float64), torch.tensor(1.3, dtype=torch.float64), targets),
        atol=1e-12,
    )
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    scales = torch.tensor([0.5, 1.5], dtype=torch.float64)

    def cdf(z):
        return (weights * torch.distributions.Normal(means, scales).cdf(z.unsqueeze(-1))).sum(-1)

    for target in targets.tolist():
        got = crps_gaussian_mixture(weights, means, scales, torch.tensor(target, dtype=torch.float64)).item()
        assert got == pytest.approx(crps_by_integration(cdf, target, -30, 30), abs=1e-6)


def test_sample_crps_equals_the_all_pairs_formula_and_approaches_the_closed_form():
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(37, 2, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    pairs = (samples.unsqueeze(0) - samples.unsqueeze(1)).abs()  # (S, S, 2, 3)
    to_target = (samples - targets).abs().mean(0)
    assert torch.allclose(crps_samples(samples, targets), to_target - 0.5 * pairs.mean((0, 1)), atol=1e-12)
    assert torch.allclose(
        crps_samples(samples, targets, fair=True), to_target - 0.5 * pairs.sum((0, 1)) / (37 * 36), atol=1e-12
    )
    many = 0.4 + 2.0 * torch.randn(100_000, 1, generator=generator, dtype=torch.float64)
    target = torch.tensor([1.1], dtype=torch.float64)
    closed = crps_gaussian(torch.tensor(0.4, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), target)
    assert crps_samples(many, target).item() == pytest.approx(closed.item(), abs=0.01)
    with pytest.raises(ValueError, match="samples"):
        crps_samples(samples, targets[0])


def test_coverage_and_rmse_use_held_out_points_only():
    lower = torch.zeros(2, 4)
    upper = torch.ones(2, 4)
    # Steps 0-1 of each row were fit on (not held out): they lie far outside the interval.
    targets = torch.tensor([[9.0, 9.0, 0.5, 2.0], [-9.0, -9.0, 0.2, float("nan")]])
    held_out = torch.tensor([[False, False, True, True], [False, False, True, True]])
    # Held out and observed: 0.5 (in), 2.0 (out), 0.2 (in); the NaN is skipped.
    assert interval_coverage(lower, upper, targets, held_out).item() == pytest.approx(2 / 3)
    per_lead = interval_coverage(lower, upper, targets, held_out, dim=0)
    assert per_lead[2].item() == 1.0 and per_lead[3].item() == 0.0 and torch.isnan(per_lead[0])
    # Changing a point that is not held out changes nothing.
    moved = targets.clone()
    moved[0, 0] = 0.5
    assert interval_coverage(lower, upper, moved, held_out).item() == pytest.approx(2 / 3)
    predictions = torch.full((2, 4), 0.5)
    assert rmse(predictions, targets, held_out).item() == pytest.approx(math.sqrt((0 + 1.5**2 + 0.3**2) / 3))
    with pytest.raises(ValueError, match="bool"):
        interval_coverage(lower, upper, targets, held_out.float())
    with pytest.raises(ValueError, match="lower <= upper"):
        interval_coverage(upper, lower, targets, held_out)


def test_log_loss_and_mean_score():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]])
    targets = torch.tensor([[1, 2]])
    held_out = torch.tensor([[True, True]])
    assert log_loss(probs, targets, held_out).item() == pytest.approx(-(math.log(0.25) + math.log(0.8)) / 2, rel=1e-6)
    assert log_loss(probs, targets, torch.tensor([[False, True]])).item() == pytest.approx(-math.log(0.8), rel=1e-6)
    with pytest.raises(ValueError, match="symbol codes"):
        log_loss(probs, torch.tensor([[1, 7]]), held_out)
    scores = torch.tensor([[1.0, 2.0, 30.0]])
    assert mean_score(scores, torch.tensor([[True, True, False]])).item() == pytest.approx(1.5)
