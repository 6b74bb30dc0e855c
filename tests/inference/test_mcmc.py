"""NUTS through fit(method="nuts") (inference/mcmc.py): convergence on a known
3-state Gaussian HMM, sample statistics, state recovery, and simulation-based
calibration on a tiny HMM whose exact posterior is known by quadrature.

Sizes. The default run uses 4 chains of 100 warm-up + 50 draws started at an EM
fit (about 30-50 s of CPU; a warm-up much shorter than 100 leaves Pyro's mass
matrix and step size badly adapted, and a chain can crawl at tree depth 10) and
checks r_hat < 1.1 (split r_hat of 25-draw halves is itself noisy: 1.07 seen
on a converged run), bulk ESS > 100 (of 200 draws), at most 1 of the 18 true
values outside its 99% interval and at most 4 outside their 90% intervals. The full-size version (@slow: 4 x (500 + 500)) checks
r_hat < 1.01, bulk ESS > 400 and at most 4 of 18 outside the 90% intervals
(P(>= 5 misses) = 0.028 for 18 independent 90% intervals). Simulation-based
calibration: 100 replications with the exact posterior by quadrature (default)
and with NUTS (@slow).
"""

import math
import os
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from inference import arviz as export
from inference import discrete
from inference.batch import SequenceBatch, sequence_plate
from inference.contract import SequenceModel
from inference.fit import fit
from zoo.hmm import GaussianHMM

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


pytestmark = pytest.mark.usefixtures("one_thread")


TRUE_MEANS = torch.tensor([[-4.0], [0.0], [4.0]], dtype=torch.float64)


def three_state_truth() -> GaussianHMM:
    transition = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]], dtype=torch.float64)
    initial = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return GaussianHMM.from_params(initial, transition, TRUE_MEANS, torch.ones(3, 1, dtype=torch.float64))


def run_three_state(num_samples, warmup_steps, seed=0):
    truth = three_state_truth()
    batch, states = truth.sample_with_states(5, 60, generator=torch.Generator().manual_seed(1))
    model = GaussianHMM(3, 1).double()
    fit(model, batch, method="em", max_iterations=100, progress=False, seed=seed)  # chains start at the MAP
    result = fit(
        model,
        batch,
        method="nuts",
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=4,
        seed=seed,
        progress=False,
        initialize=False,
    )
    return truth, batch, states, model, result


def coverage_misses(idata, truth, probability):
    """Number of scalar parameters whose central interval misses the true value."""
    misses = 0
    lower, upper = (1 - probability) / 2, (1 + probability) / 2
    for name, value in truth.parameter_values().items():
        draws = idata.posterior[name].values.reshape(-1, *value.shape)
        low, high = np.quantile(draws, [lower, upper], axis=0)
        misses += int(((value.numpy() < low) | (value.numpy() > high)).sum())
    return misses


@pytest.fixture(scope="module")
def three_state_run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield run_three_state(num_samples=50, warmup_steps=100)
    finally:
        torch.set_num_threads(threads)


def test_nuts_converges_and_covers_the_truth_ci_size(three_state_run):
    truth, batch, _, model, result = three_state_run
    idata = export.to_inference_data(model, batch, result, num_predictive_draws=5)
    summary = az.summary(idata, kind="diagnostics", round_to="none")
    assert summary["r_hat"].max() < 1.1, summary
    assert summary["ess_bulk"].min() > 100, summary
    # 18 scalar parameters: P(>= 2 outside their 99% intervals) = 0.014 and
    # P(>= 5 outside their 90% intervals) = 0.028 for independent exact intervals.
    assert coverage_misses(idata, truth, 0.99) <= 1
    assert coverage_misses(idata, truth, 0.90) <= 4
    # Labels aligned and in canonical order: posterior means of the states sorted like the truth.
    np.testing.assert_allclose(idata.posterior["means"].mean(("chain", "draw")).values, TRUE_MEANS.numpy(), atol=0.4)


def test_nuts_result_statistics_states_and_point(three_state_run):
    truth, batch, states, model, result = three_state_run
    mcmc = result.mcmc
    assert result.method == "nuts" and len(result.history) == 4
    assert mcmc.num_chains == 4 and mcmc.num_draws == 50
    for name, prior in model.parameter_sites().items():
        assert mcmc.draws[name].shape == (4, 50, *prior.event_shape)
    depth, steps = mcmc.sample_stats["tree_depth"], mcmc.sample_stats["n_steps"]
    # A trajectory of depth d doubled d times: between 2^(d-1) and 2^d - 1 leapfrog steps.
    assert ((2 ** (depth - 1) <= steps) & (steps <= 2**depth - 1)).all()
    step_size = mcmc.sample_stats["step_size"]
    assert (step_size == step_size[:, :1]).all()  # fixed after warm-up, per chain
    accept = mcmc.sample_stats["acceptance_rate"]
    assert ((accept >= 0) & (accept <= 1)).all() and 0.6 < float(accept.mean()) < 0.99
    assert mcmc.num_divergences == 0
    assert torch.isfinite(mcmc.sample_stats["lp"]).all()
    # States by forward-filtering backward-sampling at each draw: almost always the true ones here.
    assert mcmc.states.shape == (4, 50, 5, 60)
    agreement = (mcmc.states == states).double().mean()
    assert agreement > 0.95
    # The model holds the posterior mean.
    for name, value in model.parameter_values().items():
        torch.testing.assert_close(value, mcmc.draws[name].mean((0, 1)), rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_nuts_full_size_targets():
    truth, batch, _, model, result = run_three_state(num_samples=500, warmup_steps=500)
    idata = export.to_inference_data(model, batch, result, num_predictive_draws=5)
    summary = az.summary(idata, kind="diagnostics", round_to="none")
    assert summary["r_hat"].max() < 1.01, summary
    assert summary["ess_bulk"].min() > 400, summary
    assert coverage_misses(idata, truth, 0.90) <= 4


# -- a tiny model known exactly ------------------------------------------------------
class TwoStateChain(SequenceModel):
    """Test model: two states, uniform start, fixed N(-1, 1) / N(1, 1) emissions, and
    a Dirichlet(1, 1) prior on each transition row; only the rows are parameters.
    It implements the contract from scratch, so NUTS and export see nothing but it."""

    family = "two-state-test"

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("transition", torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64))
        self.register_buffer("means", torch.tensor([-1.0, 1.0], dtype=torch.float64))

    def _log_emission(self, values):
        return dist.Normal(self.means, 1.0).log_prob(values.unsqueeze(-1))  # (N, T, 2)

    def parameter_sites(self):
        return {"transition": dist.Dirichlet(torch.ones(2, 2, dtype=torch.float64)).to_event(1)}

    def parameter_values(self):
        return {"transition": self.transition.clone()}

    def set_parameter_values(self, values):
        if "transition" in values:
            self.transition.copy_(torch.as_tensor(values["transition"], dtype=torch.float64))

    def site_dims(self):
        return {"transition": ("state", "next_state")}

    def model(self, batch):
        transition = pyro.sample("transition", self.parameter_sites()["transition"])
        with sequence_plate(batch):
            pyro.factor(
                "observations",
                discrete.log_marginal(
                    torch.full((2,), -math.log(2), dtype=torch.float64),
                    transition.log(),
                    self._log_emission(batch.values),
                    batch.lengths,
                ),
            )

    def guide(self, batch):
        pyro.sample("transition", dist.Delta(self.transition, event_dim=2))

    def log_prob(self, values, lengths=None):
        return discrete.log_marginal(
            torch.full((2,), -math.log(2), dtype=torch.float64),
            self.transition.log(),
            self._log_emission(values),
            lengths,
        )

    def sample(self, num_sequences, length, generator=None):
        states = torch.empty(num_sequences, length, dtype=torch.long)
        states[:, 0] = torch.randint(2, (num_sequences,), generator=generator)
        for t in range(1, length):
            states[:, t] = torch.multinomial(self.transition[states[:, t - 1]], 1, generator=generator).squeeze(-1)
        noise = torch.randn(num_sequences, length, generator=generator, dtype=torch.float64)
        return SequenceBatch.from_tensor(self.means[states] + noise)

    def config(self):
        return {}


GRID = 80


def quadrature_posterior(batch):
    """Exact posterior of (a, b) = (A[0, 0], A[1, 1]) on a GRID x GRID midpoint grid."""
    cells = (torch.arange(GRID, dtype=torch.float64) + 0.5) / GRID
    a, b = torch.meshgrid(cells, cells, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    transition = torch.stack([torch.stack([a, 1 - a], -1), torch.stack([1 - b, b], -1)], -2)  # (G^2, 2, 2)
    log_emission = dist.Normal(torch.tensor([-1.0, 1.0], dtype=torch.float64), 1.0).log_prob(batch.values.unsqueeze(-1))
    log_like = sum(
        discrete.log_marginal(
            torch.full((2,), -math.log(2), dtype=torch.float64),
            transition.log(),
            sequence.expand(GRID * GRID, *sequence.shape),
        )
        for sequence in log_emission  # (T, 2) each
    )
    weights = torch.softmax(log_like, 0)  # flat prior
    return a, b, weights


def sbc_ranks(num_replications, num_posterior_draws, posterior_draws_fn, seed=0):
    """Rank of each true parameter among its posterior draws, per replication."""
    generator = torch.Generator().manual_seed(seed)
    model = TwoStateChain()
    ranks = []
    for replication in range(num_replications):
        true_transition = _dirichlet_rows(generator)
        model.set_parameter_values({"transition": true_transition})
        batch = model.sample(1, 30, generator=generator)
        a, b = posterior_draws_fn(batch, num_posterior_draws, replication)
        ranks.append([int((a < true_transition[0, 0]).sum()), int((b < true_transition[1, 1]).sum())])
    return np.array(ranks)


def _dirichlet_rows(generator):
    """Two independent Dirichlet(1, 1) rows, i.e. uniform (a, b), from ``generator``."""
    a, b = torch.rand(2, generator=generator, dtype=torch.float64)
    return torch.stack([torch.stack([a, 1 - a]), torch.stack([1 - b, b])])


def assert_uniform_ranks(ranks, num_posterior_draws, level=1e-3):
    """Chi-square test of uniform ranks over 0..num_posterior_draws, for each parameter."""
    for column in ranks.T:
        counts = np.bincount(column, minlength=num_posterior_draws + 1)
        statistic, p_value = stats.chisquare(counts)
        assert p_value > level, (counts, p_value)


def test_simulation_based_calibration_of_the_exact_posterior():
    """SBC (Talts et al., 2018) with the posterior by quadrature: ranks of the true
    transition probabilities among 9 posterior draws are uniform on 0..9 (chi-square
    test at level 0.001 over 100 replications, 10 expected per bin). This checks that
    the likelihood the samplers target (kernel + priors + simulator) is the model."""
    generator = torch.Generator().manual_seed(11)

    def draws(batch, count, replication):
        a, b, weights = quadrature_posterior(batch)
        cells = torch.multinomial(weights, count, replacement=True, generator=generator)
        jitter = (torch.rand(2, count, generator=generator, dtype=torch.float64) - 0.5) / GRID
        return a[cells] + jitter[0], b[cells] + jitter[1]

    ranks = sbc_ranks(100, 9, draws)
    assert_uniform_ranks(ranks, 9)
    # The test has power: a posterior shifted by 0.1 fails it.
    shifted = sbc_ranks(100, 9, lambda batch, count, r: tuple(value + 0.1 for value in draws(batch, count, r)))
    with pytest.raises(AssertionError):
        assert_uniform_ranks(shifted, 9)


def test_nuts_matches_the_exact_posterior_of_a_tiny_model():
    """fit(method="nuts") on a model written against the contract only: posterior
    means and standard deviations of both transition probabilities agree with
    quadrature within Monte Carlo error (4 standard errors from the ESS)."""
    model = TwoStateChain()
    model.set_parameter_values({"transition": torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)})
    batch = model.sample(2, 40, generator=torch.Generator().manual_seed(3))
    result = fit(model, batch, method="nuts", num_samples=250, warmup_steps=100, num_chains=1, progress=False, seed=2)
    a, b, weights = quadrature_posterior(batch)
    idata = export.to_inference_data(model, batch, result, posterior_predictive=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one chain: no r_hat
        summary = az.summary(idata, kind="all")
    for value, (row, column) in ((a, (0, 0)), (b, (1, 1))):
        exact_mean = float((weights * value).sum())
        exact_sd = float((weights * (value - exact_mean) ** 2).sum().sqrt())
        draws = result.mcmc.draws["transition"][:, :, row, column].reshape(-1)
        ess = summary.loc[f"transition[{row}, {column}]", "ess_bulk"]
        assert abs(float(draws.mean()) - exact_mean) < 4 * exact_sd / math.sqrt(ess)
        assert abs(float(draws.std()) - exact_sd) < 0.15 * exact_sd
    assert result.mcmc.states is None  # the test model has no sample_states


@pytest.mark.slow
def test_simulation_based_calibration_of_nuts():
    """SBC of the sampler itself: 100 replications, each one NUTS chain of 100 warm-up
    + 180 draws thinned to 9 (every 20th), chi-square at level 0.001."""

    def draws(batch, count, replication):
        model = TwoStateChain()
        result = fit(
            model,
            batch,
            method="nuts",
            num_samples=180,
            warmup_steps=100,
            num_chains=1,
            progress=False,
            seed=replication,
            sample_states=False,
        )
        kept = result.mcmc.draws["transition"][0, 19::20][:count]
        return kept[:, 0, 0], kept[:, 1, 1]

    ranks = sbc_ranks(100, 9, draws, seed=5)
    assert_uniform_ranks(ranks, 9)


def test_nuts_refuses_models_without_parameter_sites_and_stray_options():
    class NoPriors(TwoStateChain):
        def parameter_sites(self):
            return {}

    batch = TwoStateChain().sample(1, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no parameter sites"):
        fit(NoPriors(), batch, method="nuts", progress=False)
    with pytest.raises(TypeError, match="method='nuts'"):
        fit(TwoStateChain(), batch, method="svi", target_accept_prob=0.9, progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        fit(TwoStateChain(), batch, method="nuts", num_chains=0, progress=False)


# -- the Kalman family -----------------------------------------------------------------
def local_level_run(num_sequences, length, num_samples, warmup_steps, num_chains):
    from zoo.lgssm import LinearGaussianSSM

    truth = LinearGaussianSSM.local_level(level_var=0.5, noise_var=1.0, dtype=torch.float64)
    batch = truth.sample(num_sequences, length, generator=torch.Generator().manual_seed(0))
    model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=1.0, dtype=torch.float64)
    result = fit(
        model,
        batch,
        method="nuts",
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        num_chains=num_chains,
        progress=False,
        initialize=False,
    )
    return truth, batch, model, result


@pytest.mark.slow
def test_nuts_local_level_full_size_targets():
    """Kalman-filter likelihood (about 1 minute on one CPU core, most of it NUTS at ~1 ms
    per gradient and the 2000 FFBS paths, hence @slow): 4 x (500 + 500) draws, r_hat < 1.01, bulk ESS > 400, both variances inside their
    99% intervals; smoothed level paths by FFBS have the data's shape."""
    truth, batch, model, result = local_level_run(4, 50, 500, 500, 4)
    idata = export.to_inference_data(model, batch, result, num_predictive_draws=5)
    summary = az.summary(idata, kind="diagnostics", round_to="none")
    assert summary["r_hat"].max() < 1.01, summary
    assert summary["ess_bulk"].min() > 400, summary
    assert coverage_misses(idata, truth, 0.99) == 0
    assert result.mcmc.states.shape == (4, 500, 4, 50, 1)


def local_level_sbc_ranks(num_replications, num_posterior_draws, grid_size, seed=0):
    """SBC of the local-level model with the noise variance fixed at 1 and the level
    variance learned under the model's own prior; exact posterior on a log grid."""
    from zoo.lgssm import LinearGaussianSSM

    one = torch.ones(1, 1, dtype=torch.float64)

    def build(level_var):
        return LinearGaussianSSM.from_params(
            one,
            one,
            level_var * one,
            one,
            torch.zeros(1, dtype=torch.float64),
            one,
            learn=("transition_cov",),
            transition_cov_type="diag",
        )

    generator = torch.Generator().manual_seed(seed)
    model = build(1.0)
    prior = model.parameter_sites()["transition_var"]
    log_grid = torch.linspace(math.log(1e-7), math.log(1e3), grid_size, dtype=torch.float64)
    grid = log_grid.exp()
    ranks = []
    for _ in range(num_replications):
        uniform = torch.rand(1, generator=generator, dtype=torch.float64)
        inverse_gamma = prior.base_dist
        assert torch.all(inverse_gamma.concentration == 1)  # InverseGamma(1, b) = b / Exp(1)
        true_value = (inverse_gamma.rate / -torch.log1p(-uniform)).reshape(1)
        model.set_parameter_values({"transition_var": true_value})
        batch = model.sample(1, 20, generator=generator)
        log_post = (
            torch.stack([_local_level_log_likelihood(model, batch, value) for value in grid])
            + prior.log_prob(grid.reshape(-1, 1))
            + log_grid
        )  # density on the log scale
        weights = torch.softmax(log_post, 0)
        cells = torch.multinomial(weights, num_posterior_draws, replacement=True, generator=generator)
        step = float(log_grid[1] - log_grid[0])
        draws = (
            log_grid[cells] + (torch.rand(num_posterior_draws, generator=generator, dtype=torch.float64) - 0.5) * step
        ).exp()
        ranks.append([int((draws < true_value).sum())])
    return np.array(ranks)


def _local_level_log_likelihood(model, batch, value):
    model.set_parameter_values({"transition_var": value.reshape(1)})
    with torch.no_grad():
        return model.log_prob(batch.values, batch.lengths).sum()


@pytest.mark.slow
def test_simulation_based_calibration_of_the_local_level_posterior():
    """SBC for a tiny Kalman model: 100 replications, the level variance's rank among 9
    draws of its exact (log-grid quadrature) posterior uniform by chi-square at 0.001."""
    assert_uniform_ranks(local_level_sbc_ranks(100, 9, 120), 9)


@pytest.mark.parametrize("config", ["local_level", "full_prior", "diag_none", "minibatch"])
def test_potential_without_the_trace_equals_pyros(config):
    """inference.mcmc.potential_energy (the model's nuts_log_likelihood, priors built once,
    closed-form inverse-gamma sites) gives Pyro's potential of the traced model, value and
    gradient, at random unconstrained points; latent="sampled" keeps Pyro's trace."""
    from pyro.infer.mcmc.util import initialize_model

    from inference.mcmc import potential_energy
    from zoo.lgssm import LinearGaussianSSM

    if config == "local_level" or config == "minibatch":
        model = LinearGaussianSSM.local_level(level_var=2.0, noise_var=3.0, dtype=torch.float64)
    elif config == "full_prior":
        model = LinearGaussianSSM(2, 2, initial="prior").double()
    else:
        model = LinearGaussianSSM(2, 1, transition_cov_type="diag", observation_cov_type="diag", prior="none").double()
    truth_batch = model.sample(3, 15, generator=torch.Generator().manual_seed(4))
    batch = SequenceBatch(values=truth_batch.values, lengths=torch.tensor([15, 11, 7]))
    if config == "minibatch":
        batch = batch.with_population(10)
    model.initialize_from_data(batch, generator=torch.Generator().manual_seed(0))
    energy, transforms = potential_energy(model, batch)
    from pyro.infer.autoguide.initialization import init_to_value

    _, pyro_energy, pyro_transforms, _ = initialize_model(
        model.model, (batch,), max_plate_nesting=1, init_strategy=init_to_value(values=model.parameter_values())
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        point = {
            name: (
                transforms[name](value)
                + 0.3 * torch.randn(transforms[name](value).shape, generator=generator, dtype=torch.float64)
            ).requires_grad_()
            for name, value in model.parameter_values().items()
        }
        ours = energy(point)
        reference = pyro_energy(point)
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-9)
        for ours_grad, reference_grad in zip(
            torch.autograd.grad(ours, list(point.values())), torch.autograd.grad(reference, list(point.values()))
        ):
            torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-8, atol=1e-8)
    assert set(transforms) == set(pyro_transforms)
    sampled = LinearGaussianSSM(1, 1, latent="sampled").double()
    assert potential_energy(sampled, batch) is None


# -- chains in parallel worker processes --------------------------------------------------
def _tiny_runs(make_model, batch, **options):
    """The same 2-chain run one after another in this process and in 2 worker processes."""
    results = []
    for num_workers in (1, 2):
        model = make_model()
        results.append(
            fit(
                model,
                batch,
                method="nuts",
                num_samples=15,
                warmup_steps=15,
                num_chains=2,
                seed=3,
                progress=False,
                initialize=False,
                max_tree_depth=4,
                num_workers=num_workers,
                **options,
            )
        )
    return results


def _assert_same_draws(serial, parallel):
    assert serial.mcmc.num_workers == 1 and parallel.mcmc.num_workers == 2
    assert serial.mcmc.draws.keys() == parallel.mcmc.draws.keys()
    for name in serial.mcmc.draws:
        assert torch.equal(serial.mcmc.draws[name], parallel.mcmc.draws[name]), name
    for name in serial.mcmc.sample_stats:
        assert torch.equal(serial.mcmc.sample_stats[name], parallel.mcmc.sample_stats[name]), name
    # The two chains differ (own seed, own start), so equality is not the trivial one.
    first = next(iter(serial.mcmc.draws.values()))
    assert not torch.equal(first[0], first[1])
    assert [entry["chain"] for entry in parallel.history] == [0, 1]  # callbacks in chain order
    assert all(entry["cpu_seconds"] > 0 for entry in parallel.history)


def test_parallel_chains_give_the_serial_draws_through_pyros_trace():
    """TwoStateChain has no nuts_log_likelihood: NUTS runs over Pyro's trace of model()."""
    batch = TwoStateChain().sample(2, 20, generator=torch.Generator().manual_seed(0))
    serial, parallel = _tiny_runs(TwoStateChain, batch)
    _assert_same_draws(serial, parallel)


def test_parallel_chains_give_the_serial_draws_through_the_direct_potential():
    from zoo.lgssm import LinearGaussianSSM

    def make():
        return LinearGaussianSSM.local_level(level_var=1.0, noise_var=1.0, dtype=torch.float64)

    batch = LinearGaussianSSM.local_level(level_var=0.5, noise_var=1.0, dtype=torch.float64).sample(
        2, 20, generator=torch.Generator().manual_seed(0)
    )
    serial, parallel = _tiny_runs(make, batch, sample_states=False)
    _assert_same_draws(serial, parallel)


@pytest.mark.slow
def test_spawned_workers_give_the_serial_draws():
    """start_method="spawn" pickles the model and the batch (its covariates too) to fresh
    interpreters (about 10 s of imports per worker here, hence @slow)."""
    truth = GaussianHMM(2, 1).double()
    data = truth.sample(2, 20, generator=torch.Generator().manual_seed(0))
    batch = SequenceBatch(values=data.values, lengths=data.lengths, covariates={"year": torch.tensor([1, 2])})
    serial, parallel = _tiny_runs(lambda: GaussianHMM(2, 1).double(), batch, start_method="spawn")
    _assert_same_draws(serial, parallel)


class FailingChain(TwoStateChain):
    """Raises in the chain seeded 1 (run_nuts seeds chain c with seed + c)."""

    def model(self, batch):
        if torch.initial_seed() == 1:
            raise ValueError("the likelihood failed")
        return super().model(batch)


def test_an_exception_in_a_worker_is_reraised_naming_its_chain():
    batch = TwoStateChain().sample(1, 10, generator=torch.Generator().manual_seed(0))
    for num_workers in (2, 1):  # the same exception and note in a worker and in this process
        with pytest.raises(ValueError, match="the likelihood failed") as caught:
            fit(
                FailingChain(),
                batch,
                method="nuts",
                num_samples=5,
                warmup_steps=5,
                num_chains=2,
                seed=0,
                progress=False,
                num_workers=num_workers,
            )
        assert any("NUTS chain 1" in note for note in caught.value.__notes__)
        if num_workers == 2:
            assert "the likelihood failed" in str(caught.value.__cause__)  # the worker's traceback


class UnpicklableError(Exception):
    def __init__(self, code, detail):  # pickling calls __init__(*args) with one argument: fails
        super().__init__(f"{detail} ({code})")


class UnpicklableFailure(TwoStateChain):
    def model(self, batch):
        if torch.initial_seed() == 1:
            raise UnpicklableError(7, "a failure that does not pickle")
        return super().model(batch)


def test_an_exception_that_does_not_pickle_becomes_a_chain_error():
    from inference.mcmc import ChainError

    batch = TwoStateChain().sample(1, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ChainError, match=r"NUTS chain 1 failed in a worker process: UnpicklableError: a failure"
    ) as caught:
        fit(
            UnpicklableFailure(),
            batch,
            method="nuts",
            num_samples=5,
            warmup_steps=5,
            num_chains=2,
            progress=False,
            num_workers=2,
        )
    assert caught.value.chain == 1


def _during_the_run(action):
    """Calls ``action(workers)`` from a thread once two NUTS workers are alive."""
    import multiprocessing
    import threading
    import time

    seen = []

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = [child for child in multiprocessing.active_children() if child.name.startswith("nuts-worker")]
            if len(workers) == 2:
                time.sleep(0.5)
                seen.extend(workers)
                action(workers)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


def _long_run(num_workers=2):
    from zoo.lgssm import LinearGaussianSSM

    model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=1.0, dtype=torch.float64)
    batch = model.sample(1, 20, generator=torch.Generator().manual_seed(0))
    fit(
        model,
        batch,
        method="nuts",
        num_samples=100_000,
        warmup_steps=10,
        num_chains=2,
        progress=False,
        initialize=False,
        num_workers=num_workers,
        sample_states=False,
    )


def test_a_killed_worker_is_reported_with_its_chain_and_no_worker_outlives_the_run():
    import signal

    from inference.mcmc import ChainError

    thread, workers = _during_the_run(lambda workers: os.kill(workers[0].pid, signal.SIGKILL))
    with pytest.raises(ChainError, match=r"NUTS chain [01]: its worker process \(pid \d+\) died with exit code -9"):
        _long_run()
    thread.join()
    assert len(workers) == 2 and not any(worker.is_alive() for worker in workers)


def test_ctrl_c_ends_every_worker():
    import signal

    thread, workers = _during_the_run(lambda workers: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        _long_run()
    thread.join()
    assert len(workers) == 2 and not any(worker.is_alive() for worker in workers)
    for worker in workers:
        with pytest.raises(ProcessLookupError):  # ended and reaped, not left a zombie
            os.kill(worker.pid, 0)


def test_worker_options_are_checked():
    from inference.mcmc import available_cores, default_num_workers

    assert default_num_workers(8) == min(8, available_cores()) and default_num_workers(1) == 1
    assert default_num_workers(4, "meta") == 1  # chains stay in this process off the CPU
    batch = TwoStateChain().sample(1, 5, generator=torch.Generator().manual_seed(0))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_workers"):
            fit(TwoStateChain(), batch, method="nuts", num_workers=bad, progress=False)
    with pytest.raises(ValueError, match="start_method"):
        fit(TwoStateChain(), batch, method="nuts", num_workers=2, start_method="thread", progress=False)
