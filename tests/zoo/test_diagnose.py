"""Posterior predictive checks (zoo/diagnostics.py) and `seqzoo diagnose` end to end."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from inference import arviz as export
from zoo import diagnostics
from zoo.cli import main
from zoo.data import as_sequence_data, load_data, save_npz, split_data
from zoo.hmm import GaussianHMM

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


pytestmark = pytest.mark.usefixtures("one_thread")


def test_summary_statistics_of_symbols_by_hand():
    values = np.array([[0, 0, 1, 1, 1, 2], [2, 2, 0, 0, 0, 0]])
    statistics = diagnostics.summary_statistics(values, num_symbols=4)
    assert statistics["frequency[0]"] == pytest.approx(6 / 12)
    assert statistics["frequency[1]"] == pytest.approx(3 / 12)
    assert statistics["frequency[2]"] == pytest.approx(3 / 12)
    assert statistics["frequency[3]"] == 0
    assert statistics["repeat_rate"] == pytest.approx((3 + 4) / 10)  # equal neighbours / pairs
    assert statistics["mean_run_length"] == pytest.approx(12 / 5)  # runs 2,3,1 and 2,4


def test_summary_statistics_of_real_values_by_hand_with_padding():
    values = np.array([[[1.0], [2.0], [3.0], [4.0]], [[4.0], [3.0], [np.nan], [np.nan]]])  # second: length 2
    statistics = diagnostics.summary_statistics(values)
    pooled = np.array([1.0, 2, 3, 4, 4, 3])
    assert statistics["mean"] == pytest.approx(pooled.mean())
    assert statistics["sd"] == pytest.approx(pooled.std())
    pairs = np.array([[1, 2], [2, 3], [3, 4], [4, 3]], dtype=float)
    assert statistics["lag1_autocorrelation"] == pytest.approx(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])
    # Above the median 3: F F F T | T F -> runs 3, 1 | 1, 1
    assert statistics["mean_run_length"] == pytest.approx(6 / 4)


def persistent_truth():
    return GaussianHMM.from_params(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor([[0.95, 0.05], [0.05, 0.95]], dtype=torch.float64),
        torch.tensor([[-2.0], [2.0]], dtype=torch.float64),
        torch.tensor([[1.0], [1.0]], dtype=torch.float64),
    )


def test_ppc_flags_a_model_without_memory_and_passes_the_true_one():
    """Data with long state runs: a 1-state model replicates independent draws, whose
    lag-1 autocorrelation never reaches the observed one (p-value 0), while the true
    model's replicas bracket it."""
    batch = persistent_truth().sample(4, 100, generator=torch.Generator().manual_seed(0))
    truth_copy = persistent_truth()
    truth_copy.initialize_from_data(batch)  # scales the priors; resets the parameters
    truth_copy.set_parameter_values(persistent_truth().parameter_values())
    flat = batch.values.reshape(-1, 1)
    iid = GaussianHMM(1, 1).double()
    iid.initialize_from_data(batch)
    iid.set_parameter_values(
        {
            "initial": torch.ones(1, dtype=torch.float64),
            "transition": torch.ones(1, 1, dtype=torch.float64),
            "means": flat.mean(0, keepdim=True),
            "precisions": 1 / flat.var(0, keepdim=True),
        }
    )
    tables = {}
    for name, model in (("true", truth_copy), ("iid", iid)):
        idata = export.to_inference_data(model, batch, None, num_predictive_draws=40, seed=1)
        tables[name] = {row["statistic"]: row for row in diagnostics.posterior_predictive_checks(idata, model)}
    assert tables["iid"]["lag1_autocorrelation"]["p_value"] == 0
    assert tables["iid"]["mean_run_length"]["p_value"] == 0
    assert 0.05 < tables["true"]["lag1_autocorrelation"]["p_value"] < 0.95
    assert 0.05 < tables["true"]["sd"]["p_value"] < 0.95
    # The occupancy discrepancy exists for HMMs and is centred for the true model.
    assert 0.05 < tables["true"]["occupancy[0]"]["p_value"] < 0.95
    figure = diagnostics.plot_ppc_statistics(*diagnostics.replicated_statistics(idata, iid))
    assert len([ax for ax in figure.axes if ax.get_visible()]) == len(tables["iid"])


@pytest.fixture
def fitted_run(tmp_path):
    truth = persistent_truth()
    batch = truth.sample(12, 30, generator=torch.Generator().manual_seed(2))
    data_path = tmp_path / "two_states.npz"
    save_npz(as_sequence_data(batch.values, "real"), data_path)
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "hmm",
                "--data",
                str(data_path),
                "--states",
                "2",
                "--out",
                str(run),
                "--max-iterations",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    return run, data_path


def test_diagnose_point_estimate_then_nuts(fitted_run, capsys):
    run, data_path = fitted_run
    assert main(["diagnose", str(run), "--no-progress", "--predictive-draws", "20"]) == 0
    out = run / "diagnostics"
    for name in (
        "summary.csv",
        "summary.md",
        "trace.png",
        "ppc.png",
        "ppc_statistics.png",
        "ppc.json",
        "posterior_states.png",
        "loo.json",
        "inference_data.nc",
        "diagnose.json",
    ):
        assert (out / name).is_file(), name
    assert "skipped" in json.loads((out / "loo.json").read_text())
    assert "point estimate" in (out / "summary.md").read_text()
    # Outputs are never overwritten without --force.
    capsys.readouterr()
    assert main(["diagnose", str(run), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err

    assert (
        main(
            [
                "diagnose",
                str(run),
                "--nuts",
                "--chains",
                "2",
                "--draws",
                "15",
                "--warmup",
                "15",
                "--max-tree-depth",
                "4",
                "--predictive-draws",
                "10",
                "--no-progress",
                "--force",
            ]
        )
        == 0
    )
    assert "r_hat" in capsys.readouterr().out
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].split(",")[1:] == [
        "mean",
        "sd",
        "hdi_3%",
        "hdi_97%",
        "mcse_mean",
        "mcse_sd",
        "ess_bulk",
        "ess_tail",
        "r_hat",
    ]
    assert len(summary) == 1 + 2 + 4 + 2 + 2  # initial, transition, means, precisions
    loo = json.loads((out / "loo.json").read_text())
    train = split_data(load_data(data_path), (0.8, 0.1, 0.1), seed=0).train  # what `fit` trained on
    assert loo["n_sequences"] == train.batch.num_sequences and loo["n_samples"] == 2 * 15
    assert math.isfinite(loo["elpd_loo"])
    for name in ("rank.png", "posterior_mean_model.safetensors"):
        assert (out / name).is_file(), name
    idata = az.from_netcdf(str(out / "inference_data.nc"))
    assert idata.posterior.sizes["chain"] == 2 and "diverging" in idata.sample_stats
    # State labels: the posterior means are in canonical (increasing) order.
    means = idata.posterior["means"].mean(("chain", "draw")).values[:, 0]
    assert means[0] < 0 < means[1]


def test_diagnose_meanfield_guide_and_compare_table(tmp_path):
    truth = persistent_truth()
    batch = truth.sample(12, 30, generator=torch.Generator().manual_seed(4))
    data_path = tmp_path / "two_states.npz"
    save_npz(as_sequence_data(batch.values, "real"), data_path)
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "hmm",
                "--data",
                str(data_path),
                "--states",
                "2",
                "--guide",
                "meanfield",
                "--method",
                "svi",
                "--epochs",
                "15",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["diagnose", str(run), "--guide-draws", "60", "--predictive-draws", "8", "--no-progress"]) == 0
    report = json.loads((run / "diagnostics" / "diagnose.json").read_text())
    assert report["posterior"] == "guide" and report["num_draws"] == 60
    loo = json.loads((run / "diagnostics" / "loo.json").read_text())
    train = split_data(load_data(data_path), (0.8, 0.1, 0.1), seed=0).train
    assert math.isfinite(loo["guide_pareto_k"]) and loo["n_sequences"] == train.batch.num_sequences

    out = tmp_path / "compare"
    assert (
        main(
            [
                "compare",
                "--data",
                str(data_path),
                "--models",
                "hmm:states=1,guide=meanfield,method=svi",
                "hmm:states=2,guide=meanfield,method=svi",
                "--epochs",
                "15",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "loo_compare.csv").is_file()
    assert "PSIS-LOO" in (out / "comparison.md").read_text()
