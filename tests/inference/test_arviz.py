"""ArviZ export, label alignment, PSIS-LOO and comparison (inference/arviz.py, inference/labels.py).

Posteriors here are cheap: draws from a mean-field guide, point estimates, and
MCMC results assembled from guide draws (the NUTS sampler itself is tested in
test_mcmc.py).
"""

import warnings

import numpy as np
import pyro
import pytest
import torch

from inference import arviz as export
from inference.batch import SequenceBatch
from inference.labels import align_state_labels, permute_states
from inference.mcmc import MCMCResult
from zoo.hmm import CategoricalHMM, GaussianHMM, PoissonHMM

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


pytestmark = pytest.mark.usefixtures("one_thread")


TRANSITION = torch.tensor([[0.85, 0.1, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]], dtype=torch.float64)
INITIAL = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def categorical_hmm(guide="meanfield"):
    emission = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    return CategoricalHMM.from_probs(INITIAL, TRANSITION, emission, guide=guide)


def gaussian_hmm(guide="meanfield", covariance="diag"):
    means = torch.tensor([[-4.0, 0.0], [0.0, 1.0], [4.0, -1.0]], dtype=torch.float64)
    if covariance == "diag":
        covariances = torch.full((3, 2), 0.5, dtype=torch.float64)
    else:
        covariances = torch.tensor([[1.0, 0.3], [0.3, 1.0]], dtype=torch.float64).expand(3, 2, 2).clone()
    return GaussianHMM.from_params(INITIAL, TRANSITION, means, covariances, guide=guide)


def poisson_hmm(guide="meanfield"):
    rates = torch.tensor([[1.0], [6.0], [15.0]], dtype=torch.float64)
    return PoissonHMM.from_params(INITIAL, TRANSITION, rates, guide=guide)


FAMILIES = {
    "categorical": categorical_hmm,
    "gaussian-diag": gaussian_hmm,
    "gaussian-full": lambda guide="meanfield": gaussian_hmm(guide, "full"),
    "poisson": poisson_hmm,
}


def simulate(model, num_sequences=6, length=25, seed=0):
    batch = model.sample(num_sequences, length, generator=torch.Generator().manual_seed(seed))
    if batch.values.is_floating_point():
        # The vector families scale their priors by the data; record it as fit() would.
        model.initialize_from_data(batch, torch.Generator().manual_seed(0))
    return batch


def model_and_data(family, seed=0):
    truth = FAMILIES[family]("map")
    batch = truth.sample(6, 25, generator=torch.Generator().manual_seed(seed))
    model = FAMILIES[family]("meanfield")
    if batch.values.is_floating_point():
        model.initialize_from_data(batch, torch.Generator().manual_seed(0))
    model.set_parameter_values(truth.parameter_values())  # the guide is centred on the truth
    return model, batch


@pytest.fixture(scope="module")
def exported():
    """family -> (model, batch, guide export), computed once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            model, batch = model_and_data(family)
            before = {name: value.clone() for name, value in model.state_dict().items()}
            idata = export.to_inference_data(model, batch, "guide", num_draws=60, num_predictive_draws=10, seed=1)
            # The model is left as it was.
            for name, value in model.state_dict().items():
                assert torch.equal(value, before[name]), name
            torch.set_num_threads(threads)
            cache[family] = model, batch, idata
        return cache[family]

    return get


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_guide_export_has_every_group_and_round_trips_netcdf(family, exported, tmp_path):
    model, batch, idata = exported(family)
    for group in (
        "posterior",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        "sample_stats",
        "posterior_states",
    ):
        assert hasattr(idata, group), group
    sites = model.parameter_sites()
    assert set(idata.posterior.data_vars) == set(sites)
    for name, dims in model.site_dims().items():
        assert idata.posterior[name].dims == ("chain", "draw", *dims)
        assert idata.posterior[name].shape == (1, 60, *sites[name].event_shape)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "sequence")
    assert idata.posterior_predictive["obs"].shape[:3] == (1, 10, batch.num_sequences)
    assert idata.posterior_states["state_probs"].dims == ("sequence", "time", "state")
    np.testing.assert_allclose(idata.posterior_states["state_probs"].values.sum(-1), 1.0, atol=1e-6)
    assert idata.attrs["log_likelihood_unit"] == "sequence"

    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    for group in idata.groups():
        original, reloaded = getattr(idata, group), getattr(loaded, group)
        for name in original.data_vars:
            np.testing.assert_array_equal(original[name].values, reloaded[name].values)
            assert original[name].dims == reloaded[name].dims
    assert loaded.attrs["posterior_kind"] == "guide"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_arviz_functions_run_on_every_family(family, exported):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, batch, idata = exported(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ: one chain (no r_hat), few draws, Pareto k
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = az.summary(idata, kind="stats", hdi_prob=0.9)
        az.plot_trace(idata, compact=True)
        az.plot_ppc(idata, num_pp_samples=10)
        elpd = export.loo(idata, warn=False)
        plain = az.loo(idata, pointwise=True)
    plt.close("all")
    assert len(summary) == sum(int(np.prod(p.event_shape)) for p in model.parameter_sites().values())
    assert np.isfinite(elpd["elpd_loo"]) and np.isfinite(plain["elpd_loo"])
    assert elpd["n_data_points"] == batch.num_sequences


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_log_likelihood_is_log_prob_per_sequence_at_each_draw(family):
    model, batch = model_and_data(family, seed=3)
    idata = export.to_inference_data(model, batch, "guide", num_draws=5, posterior_predictive=False, states=False)
    copy = FAMILIES[family]("map")
    if batch.values.is_floating_point():
        copy.initialize_from_data(batch, torch.Generator().manual_seed(0))
    for draw in (0, 4):
        values = {name: torch.as_tensor(idata.posterior[name].values[0, draw]) for name in model.parameter_sites()}
        copy.set_parameter_values(values)
        expected = copy.log_prob(batch.values, batch.lengths).detach().numpy()
        np.testing.assert_allclose(idata.log_likelihood["obs"].values[0, draw], expected, rtol=1e-6, atol=1e-6)
    # The importance ratio log p(θ, x) - log q(θ), against Pyro's own densities: the model's trace
    # conditioned on the draw (log prior + marginal log-likelihood) and the guide's trace at the draw.
    # Unaligned draws: q is evaluated where it drew (a relabelled draw has another q density).
    assert not model.has_enumerated_sites  # the model's trace holds the exact marginal likelihood
    idata = export.to_inference_data(
        model, batch, "guide", num_draws=5, posterior_predictive=False, states=False, align_labels=False
    )
    stats = idata.sample_stats
    for draw in range(5):
        values = {name: torch.as_tensor(idata.posterior[name].values[0, draw]) for name in model.parameter_sites()}
        with torch.no_grad():
            log_joint = pyro.poutine.trace(pyro.poutine.condition(model.model, data=values)).get_trace(batch)
            log_q = pyro.poutine.trace(pyro.poutine.condition(model.guide, data=values)).get_trace(batch)
            expected = float(log_joint.log_prob_sum()) - float(log_q.log_prob_sum())
        np.testing.assert_allclose(stats["log_importance_ratio"].values[0, draw], expected, rtol=1e-9, atol=1e-6)


def test_point_export_is_one_draw_and_replicates_the_plug_in_predictive():
    model = gaussian_hmm("map")
    batch = simulate(model)
    idata = export.to_inference_data(model, batch, None, num_predictive_draws=7)
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 1
    np.testing.assert_allclose(idata.posterior["means"].values[0, 0], model.means.detach().numpy())
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0, 0], model.log_prob(batch.values).detach().numpy())
    assert idata.posterior_predictive.sizes["draw"] == 7
    replicas = idata.posterior_predictive["obs"].values[0]
    assert not np.allclose(replicas[0], replicas[1])  # independent replicated data sets
    with pytest.raises(ValueError, match="point estimate"):
        export.loo(idata)


def test_ragged_sequences_are_nan_padded_in_observed_and_replicated_data():
    model = gaussian_hmm("meanfield")
    full = simulate(model, num_sequences=3, length=12)
    batch = SequenceBatch(full.values, torch.tensor([12, 7, 4]))
    idata = export.to_inference_data(model, batch, "guide", num_draws=4, num_predictive_draws=2)
    observed = idata.observed_data["obs"].values
    assert np.isnan(observed[1, 7:]).all() and not np.isnan(observed[1, :7]).any()
    replicated = idata.posterior_predictive["obs"].values
    assert np.isnan(replicated[:, :, 2, 4:]).all() and not np.isnan(replicated[:, :, 2, :4]).any()
    # Smoothed marginals vanish on padding and sum to one elsewhere.
    probs = idata.posterior_states["state_probs"].values
    np.testing.assert_allclose(probs[2, :4].sum(-1), 1.0, atol=1e-6)
    assert np.all(probs[2, 4:] == 0)


def test_svi_history_goes_into_sample_stats():
    from inference.fit import fit

    model = categorical_hmm("meanfield")
    batch = simulate(model, num_sequences=4, length=15)
    result = fit(model, batch, method="svi", max_epochs=5, learning_rate=0.01, progress=False, initialize=False)
    idata = export.to_inference_data(model, batch, "guide", num_draws=10, fit_result=result, posterior_predictive=False)
    np.testing.assert_allclose(idata.sample_stats["elbo"].values, [r["objective"] for r in result.history])
    assert idata.sample_stats["elbo"].dims == ("fit_step",)


# -- label alignment ------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_permuting_every_state_axis_leaves_the_likelihood_unchanged(family):
    """The family's state_label_axes name every state-indexed axis: relabelling all of
    them consistently is a symmetry of the likelihood and the prior."""
    model = FAMILIES[family]("map")
    batch = simulate(model, num_sequences=3, length=10)
    values = model.parameter_values()
    log_prob = model.log_prob(batch.values)
    prior = model.log_prior()
    permuted = permute_states(values, torch.tensor([2, 0, 1]), model.state_label_axes())
    model.set_parameter_values(permuted)
    torch.testing.assert_close(model.log_prob(batch.values), log_prob)
    torch.testing.assert_close(model.log_prior(), prior)
    assert not torch.allclose(model.parameter_values()["transition"], values["transition"])


def _guide_chains(model, batch, num_chains, per_chain, seed=0):
    draws, _ = export.draw_from_guide(model, batch, num_chains * per_chain, seed=seed)
    return {name: value.reshape(num_chains, per_chain, *value.shape[1:]) for name, value in draws.items()}


def test_alignment_undoes_a_permuted_chain_and_restores_r_hat():
    model, batch = model_and_data("gaussian-diag")
    draws = _guide_chains(model, batch, num_chains=3, per_chain=100)
    axes = model.state_label_axes()
    scrambled = {name: value.clone() for name, value in draws.items()}
    # Chain 1 entirely relabelled by (2, 0, 1); chain 2 switches labels half way through.
    for chain, start, permutation in ((1, 0, [2, 0, 1]), (2, 50, [1, 0, 2])):
        for index in range(start, 100):
            relabelled = permute_states(
                {name: value[chain, index] for name, value in draws.items()}, torch.tensor(permutation), axes
            )
            for name in scrambled:
                scrambled[name][chain, index] = relabelled[name]

    def max_r_hat(values):
        dataset = {name: value.numpy() for name, value in values.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmax(az.summary(az.from_dict(posterior=dataset), kind="diagnostics")["r_hat"]))

    assert max_r_hat(scrambled) > 1.5
    aligned, permutations = align_state_labels(model, scrambled)
    for name in draws:
        torch.testing.assert_close(aligned[name], draws[name])
    assert permutations[1, 0].tolist() == [1, 2, 0]  # the inverse of (2, 0, 1)
    assert permutations[0].eq(torch.arange(3)).all()
    assert max_r_hat(aligned) < 1.05


def test_alignment_on_categorical_emissions_and_mcmc_export():
    """An MCMCResult assembled by hand goes through the same export; its labels
    were aligned by the sampler, so export keeps them."""
    model, batch = model_and_data("categorical")
    draws = _guide_chains(model, batch, num_chains=2, per_chain=30, seed=4)
    swapped = {name: value.clone() for name, value in draws.items()}
    for index in range(30):
        relabelled = permute_states(
            {name: value[1, index] for name, value in draws.items()}, torch.tensor([1, 0, 2]), model.state_label_axes()
        )
        for name in swapped:
            swapped[name][1, index] = relabelled[name]
    aligned, _ = align_state_labels(model, swapped)
    # Same result as aligning the unscrambled draws, which only reorders the states
    # once, globally, into the canonical order (rows sorted by their emission probabilities).
    reference, permutations = align_state_labels(model, draws)
    assert (permutations == permutations[0, 0]).all()
    for name in draws:
        torch.testing.assert_close(aligned[name], reference[name])
    first_column = reference["emission"][..., 0]
    assert (first_column.mean((0, 1)).diff() > 0).all()
    stats = {
        "diverging": torch.zeros(2, 30, dtype=torch.bool),
        "tree_depth": torch.full((2, 30), 3),
        "n_steps": torch.full((2, 30), 7),
        "step_size": torch.full((2, 30), 0.3, dtype=torch.float64),
        "acceptance_rate": torch.full((2, 30), 0.9, dtype=torch.float64),
        "lp": torch.zeros(2, 30, dtype=torch.float64),
    }
    result = MCMCResult(draws=aligned, sample_stats=stats)
    idata = export.to_inference_data(model, batch, result, num_predictive_draws=5)
    assert idata.attrs["posterior_kind"] == "nuts"
    assert idata.posterior["emission"].dims == ("chain", "draw", "state", "symbol")
    assert set(idata.sample_stats.data_vars) == {
        "diverging",
        "tree_depth",
        "n_steps",
        "step_size",
        "acceptance_rate",
        "lp",
    }
    assert idata.posterior_predictive.sizes["draw"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        elpd = export.loo(idata, warn=False)
    assert np.isfinite(elpd["elpd_loo"])


# -- LOO and comparison ---------------------------------------------------------------
def test_variational_loo_with_constant_ratios_is_plain_psis_loo():
    """With p(theta, x)/q(theta) constant, the importance-sampling correction must do
    nothing: the result equals az.loo on independent draws (reff = 1)."""
    model, batch = model_and_data("poisson")
    idata = export.to_inference_data(model, batch, "guide", num_draws=200, posterior_predictive=False, states=False)
    idata.sample_stats["log_importance_ratio"] = idata.sample_stats["log_importance_ratio"] * 0 + 3.0
    corrected = export.loo(idata, warn=False)
    plain_data = az.from_dict(log_likelihood={"obs": idata.log_likelihood["obs"].values})
    plain_data.add_groups({"posterior": idata.posterior})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = az.loo(plain_data, pointwise=True, reff=1.0)
    np.testing.assert_allclose(corrected["elpd_loo"], plain["elpd_loo"], rtol=1e-10)
    np.testing.assert_allclose(corrected["p_loo"], plain["p_loo"], rtol=1e-8)
    np.testing.assert_allclose(corrected["pareto_k"].values, np.asarray(plain["pareto_k"]), rtol=1e-10)


def _generalized_pareto_log_ratios(k: float, num_draws: int) -> np.ndarray:
    """Log importance ratios whose upper tail is a generalized Pareto of shape ``k``:
    ``1 + x`` at the ``(i + 1/2) / S`` quantiles of GPD(k), shuffled."""
    u = (np.arange(num_draws) + 0.5) / num_draws
    x = ((1 - u) ** (-k) - 1) / k
    return np.random.default_rng(0).permutation(np.log1p(x))


def test_guide_too_narrow_warning_on_ratios_with_a_known_tail():
    """Pareto k-hat recovers the tail shape of the ratios, and the warning uses
    the sample-size-aware threshold of Vehtari et al. (2024, PSIS, Sec. 3):
    k < min(1 - 1/log10 S, 0.7), which is 0.60 for S = 300 draws, so a tail of
    shape 0.65 is already flagged although it is below 0.7."""
    model, batch = model_and_data("gaussian-diag", seed=5)
    idata = export.to_inference_data(model, batch, "guide", num_draws=300, posterior_predictive=False, states=False)
    for shape, too_narrow in ((0.3, False), (0.65, True), (0.9, True)):
        ratios = _generalized_pareto_log_ratios(shape, 300).reshape(1, -1)
        idata.sample_stats["log_importance_ratio"] = idata.sample_stats["log_importance_ratio"] * 0 + ratios
        khat = export.importance_sampling_khat(idata)
        assert khat == pytest.approx(shape, abs=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            export.loo(idata, warn=True)
        flagged = any("too narrow" in str(w.message) for w in caught)
        assert flagged == too_narrow, (shape, khat)


def test_compare_prefers_the_true_number_of_states():
    truth = gaussian_hmm("map")
    batch = truth.sample(10, 30, generator=torch.Generator().manual_seed(7))
    models = {}
    for states in (1, 3):
        model = GaussianHMM(states, 2, guide="meanfield").double()
        model.initialize_from_data(batch, torch.Generator().manual_seed(0))
        if states == 3:
            model.set_parameter_values(truth.parameter_values())
        else:
            flat = batch.values.reshape(-1, 2)
            model.set_parameter_values(
                {
                    "initial": torch.ones(1, dtype=torch.float64),
                    "transition": torch.ones(1, 1, dtype=torch.float64),
                    "means": flat.mean(0, keepdim=True),
                    "precisions": 1 / flat.var(0, keepdim=True),
                }
            )
        models[f"K={states}"] = export.to_inference_data(
            model, batch, "guide", num_draws=100, posterior_predictive=False, states=False
        )
    table = export.compare(models, warn=False)
    assert table.index[0] == "K=3"
    assert table.loc["K=1", "elpd_diff"] > 5 * table.loc["K=1", "dse"]
    with pytest.raises(ValueError, match="at least two"):
        export.compare({"K=3": models["K=3"]})


# -- the other families: Kalman (LGSSM) and recurrent networks ---------------------------
def test_lgssm_guide_export_summary_loo_ppc_and_states(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.diagnostics import plot_posterior_states, posterior_predictive_checks
    from zoo.lgssm import LinearGaussianSSM

    truth = LinearGaussianSSM.local_level(level_var=0.5, noise_var=1.0, dtype=torch.float64)
    batch = truth.sample(6, 30, generator=torch.Generator().manual_seed(0))
    model = LinearGaussianSSM.local_level(level_var=0.5, noise_var=1.0, dtype=torch.float64, guide="meanfield")
    idata = export.to_inference_data(model, batch, "guide", num_draws=30, num_predictive_draws=5)
    assert set(idata.posterior.data_vars) == {"transition_var", "observation_var"}
    assert idata.posterior["transition_var"].dims == ("chain", "draw", "state")
    states = idata.posterior_states
    assert states["smoothed_mean"].dims == ("sequence", "time", "latent")
    assert states["smoothed_cov"].dims == ("sequence", "time", "latent", "latent_bis")
    # The exported log-likelihood at a draw is the Kalman filter's at that draw.
    copy = LinearGaussianSSM.local_level(dtype=torch.float64)
    copy.set_parameter_values(
        {name: torch.as_tensor(idata.posterior[name].values[0, 3]) for name in ("transition_var", "observation_var")}
    )
    np.testing.assert_allclose(
        idata.log_likelihood["obs"].values[0, 3], copy.log_prob(batch.values).detach().numpy(), rtol=1e-8
    )
    # Mixture covariance over draws >= the covariance at the mean draw's smoother (it adds the spread of the means).
    assert (states["smoothed_cov"].values[..., 0, 0] > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        az.summary(idata, kind="stats")
        az.plot_trace(idata)
        az.plot_ppc(idata, num_pp_samples=5)
        elpd = export.loo(idata, warn=False)
    assert np.isfinite(elpd["elpd_loo"]) and elpd["n_data_points"] == 6
    table = {row["statistic"]: row for row in posterior_predictive_checks(idata, model)}
    assert {"mean", "sd", "lag1_autocorrelation", "mean_run_length"} <= set(table)
    assert plot_posterior_states(idata) is not None
    plt.close("all")
    idata.to_netcdf(str(tmp_path / "lgssm.nc"))
    loaded = az.from_netcdf(str(tmp_path / "lgssm.nc"))
    np.testing.assert_array_equal(loaded.posterior_states["smoothed_cov"].values, states["smoothed_cov"].values)


def test_rnn_point_export_has_likelihood_and_predictive_but_no_posterior(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.rnn import RecurrentModel

    torch.manual_seed(0)
    model = RecurrentModel("categorical", num_symbols=4, cell="gru", hidden_size=8, embedding_dim=4).double()
    batch = SequenceBatch(torch.randint(4, (5, 12)), torch.tensor([12, 12, 9, 12, 5]))
    assert model.parameter_sites() == {}
    idata = export.to_inference_data(model, batch, None, num_predictive_draws=6)
    assert not hasattr(idata, "posterior")
    np.testing.assert_allclose(
        idata.log_likelihood["obs"].values[0, 0],
        model.log_prob(batch.values, batch.lengths).detach().numpy(),
        rtol=1e-10,
    )
    replicated = idata.posterior_predictive["obs"].values
    assert replicated.shape == (1, 6, 5, 12) and np.isnan(replicated[:, :, 4, 5:]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        az.plot_ppc(idata, num_pp_samples=6)
    plt.close("all")
    with pytest.raises(ValueError, match="point estimate"):
        export.loo(idata)
    idata.to_netcdf(str(tmp_path / "rnn.nc"))
    np.testing.assert_array_equal(
        az.from_netcdf(str(tmp_path / "rnn.nc")).log_likelihood["obs"].values, idata.log_likelihood["obs"].values
    )
