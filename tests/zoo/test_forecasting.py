"""Tests for ``zoo.forecasting``: one forecast type over the families, forecast
evaluation on held-out steps, and the forecast fan."""

from __future__ import annotations

import pytest
import torch

from inference.batch import SequenceBatch
from inference.timeseries import conditional_log_prob_steps
from zoo.forecasting import ForecastDistribution, evaluate_forecasts, forecast, forecast_fan, forecast_targets
from zoo.hmm import GaussianHMM
from zoo.lgssm import LinearGaussianSSM
from zoo.rnn import gru

pytestmark = pytest.mark.usefixtures("one_thread")


def two_regime_hmm() -> GaussianHMM:
    return GaussianHMM.from_params(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64),
        torch.tensor([[-2.0], [3.0]], dtype=torch.float64),
        torch.tensor([[[0.5]], [[2.0]]], dtype=torch.float64),
    ).double()


def test_lgssm_forecast_is_the_kalman_gaussian():
    model = LinearGaussianSSM.local_level(0.5, 1.0, dtype=torch.float64)
    history = torch.randn(2, 15, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cumsum(1)
    prediction = forecast(model, history, 4)
    moments = model.forecast(history, 4)
    assert prediction.kind == "mixture" and prediction.shape == (2, 4)
    assert torch.allclose(prediction.mean(), moments.observation_mean)
    normal = torch.distributions.Normal(moments.observation_mean, moments.observation_cov[..., 0].sqrt())
    lower, upper = prediction.interval(0.9)
    assert torch.allclose(upper, normal.icdf(torch.tensor(0.95, dtype=torch.float64)), atol=1e-8)
    assert torch.allclose(lower, normal.icdf(torch.tensor(0.05, dtype=torch.float64)), atol=1e-8)
    targets = torch.zeros(2, 4, 1, dtype=torch.float64)
    assert torch.allclose(prediction.log_prob(targets), normal.log_prob(targets).sum(-1))


def test_hmm_forecast_is_the_mixture_whose_moments_the_hmm_reports():
    model = two_regime_hmm()
    history = torch.tensor([[[-2.1], [-1.9], [2.5], [3.3]]], dtype=torch.float64)
    prediction = forecast(model, history, 3)
    reported = model.forecast(history, 3)
    assert torch.allclose(prediction.weights, reported.state_probs)
    assert torch.allclose(prediction.mean(), reported.mean)
    second = (prediction.weights.unsqueeze(-1) * (prediction.scales**2 + prediction.means**2)).sum(2)
    assert torch.allclose(second - prediction.mean() ** 2, reported.covariance[..., 0])
    # The mixture quantile inverts the mixture CDF.
    for q in (0.05, 0.5, 0.9):
        quantile = prediction.quantile(q)
        cdf = (
            prediction.weights.unsqueeze(-1)
            * torch.distributions.Normal(prediction.means, prediction.scales).cdf(quantile.unsqueeze(2))
        ).sum(2)
        assert torch.allclose(cdf, torch.full_like(cdf, q), atol=1e-9)


def test_rnn_forecast_samples_the_one_step_predictive_of_the_history():
    model = gru("categorical", num_symbols=4, hidden_size=8, embedding_dim=4).double()
    model.reset_parameters(torch.Generator().manual_seed(5))
    history = torch.tensor([[0, 3, 1, 1, 2]])
    prediction = forecast(model, history, 2, num_samples=4000, generator=torch.Generator().manual_seed(0))
    assert prediction.kind == "categorical" and prediction.probs.shape == (1, 2, 4)
    # The exact one-step predictive: the conditional score of each possible next symbol.
    exact = torch.stack([conditional_log_prob_steps(model, history, torch.tensor([[v]]))[0, 0].exp() for v in range(4)])
    assert torch.allclose(prediction.probs[0, 0], exact, atol=0.03)
    real = gru("gaussian", dim=1, hidden_size=8, embedding_dim=None).double()
    paths = forecast(
        real, torch.zeros(3, 6, 1, dtype=torch.float64), 5, num_samples=50, generator=torch.Generator().manual_seed(1)
    )
    again = forecast(
        real, torch.zeros(3, 6, 1, dtype=torch.float64), 5, num_samples=50, generator=torch.Generator().manual_seed(1)
    )
    assert paths.kind == "samples" and paths.samples.shape == (50, 3, 5, 1)
    assert torch.equal(paths.samples, again.samples)


def test_forecast_targets_hold_out_only_test_steps():
    series = SequenceBatch.from_tensor(torch.arange(10.0).reshape(1, 10, 1))
    histories, targets, held_out = forecast_targets(series, [6, 7, 9], 3, test_start=8)
    assert histories.lengths.tolist() == [6, 7, 9]
    assert targets[0, :, 0].tolist() == [6.0, 7.0, 8.0]
    # Held out: steps 8 and 9 only (6 and 7 were fit on; 10 and 11 do not exist).
    assert held_out.tolist() == [[False, False, True], [False, True, True], [True, False, False]]


def test_interval_coverage_is_calibrated_on_data_from_the_model():
    truth = LinearGaussianSSM.local_level(0.3, 1.0, initial="prior", initial_var=1.0, dtype=torch.float64)
    with torch.no_grad():
        series = truth.sample(1, 700, generator=torch.Generator().manual_seed(2))
    evaluation = evaluate_forecasts(truth, series, test_start=200, steps=2)
    assert evaluation.num_targets.tolist() == [500, 500]
    assert evaluation.coverage[0.9][0].item() == pytest.approx(0.9, abs=0.04)
    assert evaluation.coverage[0.5][0].item() == pytest.approx(0.5, abs=0.06)
    assert evaluation.coverage[0.9][1].item() == pytest.approx(0.9, abs=0.04)
    # Longer leads are harder: the 2-step forecast is worse in RMSE and CRPS.
    assert evaluation.rmse[1] > evaluation.rmse[0] and evaluation.crps[1] > evaluation.crps[0]
    row = evaluation.summary(1)
    assert set(row) == {"lead", "targets", "rmse", "crps", "coverage_50", "coverage_90", "log_loss"}


def test_forecast_fan_draws_every_model(tmp_path):
    model = LinearGaussianSSM.local_level(0.5, 1.0, dtype=torch.float64)
    series = torch.randn(1, 30, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).cumsum(1)
    fans = {"local level": forecast(model, series[:, :20], 10), "hmm": forecast(two_regime_hmm(), series[:, :20], 10)}
    figure = forecast_fan(series, fans, origin=20, title="test")
    axis = figure.axes[0]
    # Observed, origin marker, and per model its mean and the two dashed 90% bounds.
    assert len(axis.lines) == 1 + 1 + 3 * len(fans)
    assert len(axis.collections) == len(fans)  # one filled 50% band per model
    figure.savefig(tmp_path / "fan.png")
    with pytest.raises(ValueError, match="origin"):
        forecast_fan(series, fans, origin=0)


def test_forecast_distribution_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        ForecastDistribution("normal")
    with pytest.raises(ValueError, match="mixture"):
        ForecastDistribution(
            "mixture", weights=torch.ones(1, 2, 1), means=torch.zeros(1, 2, 1), scales=torch.ones(1, 2, 1)
        )
    symbols = ForecastDistribution("categorical", probs=torch.full((1, 2, 3), 1 / 3))
    with pytest.raises(ValueError, match="no mean"):
        symbols.mean()
    with pytest.raises(ValueError, match="steps"):
        forecast(two_regime_hmm(), torch.zeros(1, 3, 1, dtype=torch.float64), 0)


@pytest.mark.parametrize("observation, cell", [("gaussian", "gru"), ("categorical", "lstm")])
def test_rnn_continuations_branch_after_one_pass_and_match_sample(observation, cell):
    """The RNN's forecast runs the history once and branches: the same draws as
    ``sample(prime=history)`` under the same generator."""
    from zoo.rnn import RecurrentModel

    torch.manual_seed(0)
    kwargs = {"dim": 1} if observation == "gaussian" else {"num_symbols": 5}
    model = RecurrentModel(observation, cell=cell, hidden_size=8, num_layers=2, **kwargs).double().eval()
    history = torch.randn(12, 1, dtype=torch.float64) if observation == "gaussian" else torch.randint(0, 5, (12,))
    fast = model._continuations(history, 4, 30, torch.Generator().manual_seed(3))
    slow = model.sample(30, 4, torch.Generator().manual_seed(3), prime=history).values
    assert fast.shape == slow.shape
    if observation == "gaussian":
        assert torch.allclose(fast, slow, atol=1e-10)
    else:
        assert torch.equal(fast, slow)


def test_evaluate_forecasts_in_groups_of_origins_equals_one_call(monkeypatch):
    """Grouping the origins (to bound a filter's memory) changes no score."""
    import zoo.forecasting as forecasting

    torch.manual_seed(1)
    model = GaussianHMM(2, 1).double()
    series = SequenceBatch.from_tensor(torch.cat([torch.randn(1, 30, 1), 3 + torch.randn(1, 30, 1)], 1).double())
    whole = evaluate_forecasts(model, series, test_start=45, steps=3)
    monkeypatch.setattr(forecasting, "_HISTORY_STEPS_PER_CALL", 100)  # groups of 1-2 origins
    grouped = evaluate_forecasts(model, series, test_start=45, steps=3)
    for name in ("rmse", "crps", "log_loss", "num_targets"):
        assert torch.allclose(getattr(whole, name).double(), getattr(grouped, name).double(), atol=1e-12), name
    for level in (0.5, 0.9):
        assert torch.equal(whole.coverage[level], grouped.coverage[level])
