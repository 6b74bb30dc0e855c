"""The linear-Gaussian state-space family against a dense joint Gaussian (brute force),
between its two Pyro forms, and by parameter recovery; constructors and bad input."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from inference.batch import SequenceBatch
from inference.contract import SequenceModel
from inference.fit import fit
from tests.zoo import em_reference
from zoo.lgssm import (
    PARAMETER_NAMES,
    Imputation,
    LinearGaussianSSM,
    _InverseWishart,
    _VectorToPositiveDefinite,
    positive_definite_matrix,
)

DTYPE = torch.float64


def random_params(d, p, seed, stable=0.8):
    """Random system: a contraction A, full positive-definite covariances."""
    g = torch.Generator().manual_seed(seed)

    def spd(k, scale):
        m = torch.randn(k, k, generator=g, dtype=DTYPE)
        return scale * (m @ m.T / k + 0.5 * torch.eye(k, dtype=DTYPE))

    a = torch.randn(d, d, generator=g, dtype=DTYPE)
    a = stable * a / torch.linalg.matrix_norm(a, 2)
    return {
        "transition_matrix": a,
        "observation_matrix": torch.randn(p, d, generator=g, dtype=DTYPE),
        "transition_cov": spd(d, 0.5),
        "observation_cov": spd(p, 0.3),
        "initial_mean": torch.randn(d, generator=g, dtype=DTYPE),
        "initial_cov": spd(d, 1.0),
    }


def make_model(d, p, seed, **kwargs):
    params = random_params(d, p, seed)
    return LinearGaussianSSM.from_params(*(params[name] for name in PARAMETER_NAMES), **kwargs)


def dense_joint(model, length):
    """Mean and covariance of the stacked (S_1..S_T, X_1..X_T), built from the definition."""
    a, b = model.transition_matrix.detach(), model.observation_matrix.detach()
    q, r = model.transition_cov.detach(), model.observation_cov.detach()
    m0, p0 = model.initial_mean.detach(), model.initial_cov.detach()
    d = b.shape[1]
    means, covs = [m0], [p0]
    for _ in range(1, length):
        means.append(a @ means[-1])
        covs.append(a @ covs[-1] @ a.T + q)
    state_cov = torch.zeros(length * d, length * d, dtype=DTYPE)
    for t in range(length):
        for s in range(t + 1):
            block = torch.linalg.matrix_power(a, t - s) @ covs[s]  # Cov(S_t, S_s)
            state_cov[t * d : (t + 1) * d, s * d : (s + 1) * d] = block
            state_cov[s * d : (s + 1) * d, t * d : (t + 1) * d] = block.T
    emit = torch.block_diag(*[b] * length)
    obs_cov = emit @ state_cov @ emit.T + torch.block_diag(*[r] * length)
    state_mean = torch.cat(means)
    joint_mean = torch.cat([state_mean, emit @ state_mean])
    joint_cov = torch.cat([torch.cat([state_cov, state_cov @ emit.T], 1), torch.cat([emit @ state_cov, obs_cov], 1)])
    return joint_mean, joint_cov


def dense_posterior(model, x):
    """Log-likelihood, state posterior (mean (T, d), cov (T*d, T*d)) and the conditional of
    the missing entries of one sequence ``x (T, p)``, by Gaussian conditioning."""
    length, p = x.shape
    d = model.state_dim
    mean, cov = dense_joint(model, length)
    flat = x.reshape(-1)
    obs = torch.cat([torch.zeros(length * d, dtype=torch.bool), ~flat.isnan()])
    hidden = ~obs
    solve = torch.linalg.solve(
        cov[obs][:, obs], torch.cat([cov[hidden][:, obs].T, (flat[~flat.isnan()] - mean[obs])[:, None]], 1)
    )
    cond_mean = mean[hidden] + cov[hidden][:, obs] @ solve[:, -1]
    cond_cov = cov[hidden][:, hidden] - cov[hidden][:, obs] @ solve[:, :-1]
    log_like = dist.MultivariateNormal(mean[obs], cov[obs][:, obs]).log_prob(flat[~flat.isnan()])
    k = length * d
    missing = flat.isnan()
    return (
        log_like,
        cond_mean[:k].reshape(length, d),
        cond_cov[:k, :k],
        cond_mean[k:],
        cond_cov[k:, k:].diagonal(),
        missing,
    )


def with_gaps(x):
    x = x.clone()
    x[0, 1, 0] = float("nan")  # a single entry
    x[0, 2] = float("nan")  # a whole row
    return x


@pytest.mark.parametrize("d, p, length, seed", [(1, 1, 5, 0), (2, 3, 4, 1), (3, 2, 5, 2)])
def test_exact_inference_matches_a_dense_joint_gaussian(d, p, length, seed):
    model = make_model(d, p, seed)
    x = with_gaps(model.sample(1, length, torch.Generator().manual_seed(seed)).values)
    log_like, state_mean, state_cov, missing_mean, missing_var, missing = dense_posterior(model, x[0])
    assert torch.allclose(model.log_prob(x).detach()[0], log_like, rtol=1e-10, atol=1e-10)
    smoothed = model.smooth(x)
    assert torch.allclose(smoothed.smoothed_mean[0], state_mean, atol=1e-9)
    for t in range(length):
        assert torch.allclose(
            smoothed.smoothed_cov[0, t], state_cov[t * d : (t + 1) * d, t * d : (t + 1) * d], atol=1e-9
        )
    imputed = model.impute(x)
    assert isinstance(imputed, Imputation)
    flat_mean, flat_var = imputed.mean[0].reshape(-1), imputed.var[0].reshape(-1)
    assert torch.allclose(flat_mean[missing], missing_mean, atol=1e-9)
    assert torch.allclose(flat_var[missing], missing_var, atol=1e-9)
    assert torch.equal(flat_mean[~missing], x[0].reshape(-1)[~missing]) and (flat_var[~missing] == 0).all()


def test_burn_drops_the_first_terms_exactly():
    model = make_model(2, 2, 3)
    x = with_gaps(model.sample(2, 5, torch.Generator().manual_seed(0)).values)
    for burn in (1, 2):
        dense_all = dense_posterior(model, x[0])[0]
        dense_head = dense_posterior(model, x[0, :burn])[0] if not x[0, :burn].isnan().all() else 0.0
        got = model.log_prob(x, burn=burn).detach()[0]
        assert torch.allclose(got, dense_all - dense_head, rtol=1e-10)
    assert torch.allclose(model.log_prob(x, burn=9).detach(), torch.zeros(2, dtype=DTYPE))


def test_masked_batch_equals_one_by_one():
    model = make_model(2, 3, 4)
    lengths = torch.tensor([7, 1, 4])
    values = with_gaps(model.sample(3, 7, torch.Generator().manual_seed(0)).values)
    together = model.log_prob(values, lengths).detach()
    smoothed = model.smooth(values, lengths)
    imputed = model.impute(values, lengths)
    for n, length in enumerate(lengths.tolist()):
        alone = values[n : n + 1, :length]
        assert torch.allclose(together[n], model.log_prob(alone).detach()[0], rtol=1e-12)
        assert torch.allclose(smoothed.smoothed_mean[n, :length], model.smooth(alone).smoothed_mean[0], atol=1e-12)
        assert torch.allclose(imputed.mean[n, :length], model.impute(alone).mean[0], atol=1e-12, equal_nan=True)
        assert (imputed.mean[n, length:] == 0).all() and (imputed.var[n, length:] == 0).all()


def test_from_params_round_trip_and_config_rebuild():
    params = random_params(2, 3, 5)
    model = LinearGaussianSSM.from_params(
        *(params[name] for name in PARAMETER_NAMES), learn=("transition_cov", "observation_matrix")
    )
    for name, value in params.items():
        assert torch.allclose(getattr(model, name).detach(), value, atol=1e-12), name
    assert set(model.parameter_sites()) == {"transition_cov", "observation_matrix"}
    assert model.fixed_names == ("transition_matrix", "observation_cov", "initial_mean", "initial_cov")
    rebuilt = LinearGaussianSSM(**model.config()).to(DTYPE)
    rebuilt.load_state_dict(model.state_dict())
    x = model.sample(2, 6, torch.Generator().manual_seed(0)).values
    assert torch.allclose(rebuilt.log_prob(x), model.log_prob(x))
    # Parameter sites round trip through set_parameter_values.
    start = dict(params, transition_cov=torch.eye(2, dtype=DTYPE), observation_matrix=torch.zeros(3, 2, dtype=DTYPE))
    other = LinearGaussianSSM.from_params(
        *(start[name] for name in PARAMETER_NAMES), learn=("transition_cov", "observation_matrix")
    )
    assert not torch.allclose(other.log_prob(x), model.log_prob(x))
    other.set_parameter_values(model.parameter_values())
    assert torch.allclose(other.log_prob(x), model.log_prob(x), rtol=1e-12)
    assert model.num_parameters == 3 + 6


def test_structured_constructors():
    level = LinearGaussianSSM.local_level(2.0, 3.0, initial="prior", dtype=DTYPE)
    assert level.state_dim == level.obs_dim == 1
    assert torch.equal(level.transition_matrix, torch.ones(1, 1, dtype=DTYPE))
    assert level.transition_cov.item() == pytest.approx(2.0) and level.observation_cov.item() == pytest.approx(3.0)
    assert set(level.parameter_sites()) == {"transition_var", "observation_var"}
    trend = LinearGaussianSSM.local_linear_trend(1.0, 0.5, 2.0, initial="prior", dtype=DTYPE)
    assert torch.equal(trend.transition_matrix, torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=DTYPE))
    assert torch.equal(trend.observation_matrix, torch.tensor([[1.0, 0.0]], dtype=DTYPE))
    assert torch.allclose(trend.transition_cov, torch.diag(torch.tensor([1.0, 0.5], dtype=DTYPE)))
    assert set(trend.parameter_sites()) == {"transition_var", "observation_cov"}
    assert trend.site_dims()["transition_var"] == ("state",)
    # The local linear trend's second difference of the signal is white noise: its sample obeys it.
    batch, states = trend.sample_with_states(1, 4000, torch.Generator().manual_seed(0))
    slope_steps = states[0, 1:, 1] - states[0, :-1, 1]
    assert abs(slope_steps.var().item() - 0.5) < 0.05


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.log_prob(torch.zeros(2, 5)), r"shape \(N, T, 3\)"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 2, dtype=DTYPE)), r"shape \(N, T, 3\)"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=torch.long)), "float observations"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=DTYPE), torch.tensor([1.0, 2.0])), "lengths"),
        (lambda m: m.log_prob(torch.zeros(2, 5, 3, dtype=DTYPE), burn=-1), "burn"),
        (lambda m: m.log_prob(torch.full((1, 2, 3), float("inf"), dtype=DTYPE)), "infinite"),
        (lambda m: m.sample(0, 5), "num_sequences"),
        (lambda m: m.set_values({"transition_cov": -torch.eye(2, dtype=DTYPE)}), "positive-definite"),
        (lambda m: m.set_values({"observation_matrix": torch.zeros(2, 2, dtype=DTYPE)}), r"shape \(3, 2\)"),
        (lambda m: m.set_parameter_values({"nope": torch.zeros(1)}), "unknown site"),
        (lambda m: LinearGaussianSSM(0, 2), "state_dim"),
        (lambda m: LinearGaussianSSM(2, 2, transition_cov_type="banded"), "transition_cov_type"),
        (lambda m: LinearGaussianSSM(2, 2, fixed={"gamma": torch.eye(2)}), "unknown parameter"),
        (lambda m: LinearGaussianSSM(2, 2, fixed={"observation_cov": torch.ones(2, 2)}), "positive-definite"),
        (lambda m: LinearGaussianSSM(2, 2, latent="sampled", initial="diffuse"), "latent='sampled'"),
        (
            lambda m: LinearGaussianSSM.from_params(
                torch.eye(2), torch.ones(3, 3), torch.eye(2), torch.eye(3), torch.zeros(2), torch.eye(2)
            ),
            r"observation_matrix: expected shape \(p, 2\)",
        ),
    ],
)
def test_bad_input_raises_naming_the_argument(call, message):
    model = make_model(2, 3, 0)
    with pytest.raises(ValueError, match=message):
        call(model)


pytestmark = pytest.mark.usefixtures("one_thread")


def objectives_never_decrease(history):
    values = [record["objective"] for record in history]
    return all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:]))


def test_em_never_decreases_and_recovers_a_local_level():
    truth = LinearGaussianSSM.local_level(1.5, 4.0, initial="prior", initial_var=10.0, dtype=DTYPE)
    train = truth.sample(4, 250, torch.Generator().manual_seed(0))
    model = LinearGaussianSSM.local_level(1.0, 1.0, initial="prior", initial_var=10.0, dtype=DTYPE, prior="none")
    result = fit(model, train, method="em", max_iterations=150, progress=False)
    assert result.stopped == "converged"
    assert objectives_never_decrease(result.history)
    # The MLE scores the training data at least as well as the truth, and lies near it.
    assert model.log_prob(train.values).sum() >= truth.log_prob(train.values).sum()
    assert model.transition_cov.item() == pytest.approx(1.5, rel=0.3)
    assert model.observation_cov.item() == pytest.approx(4.0, rel=0.15)
    # EM's fixed point is a stationary point of the exact likelihood (what a gradient fit finds).
    log_vars = [model.transition_log_var, model.observation_log_var]
    gradients = torch.autograd.grad(model.log_prob(train.values).sum(), log_vars)
    assert max(abs(g.item()) for g in gradients) < 0.05  # nats per unit log-variance, over 1000 steps


@pytest.mark.parametrize("cov_type", ["full", "diag"])
@pytest.mark.parametrize("prior", ["weak", "none"])
def test_em_never_decreases_the_objective_with_missing_entries(cov_type, prior):
    truth = make_model(2, 3, 7)
    train = truth.sample(3, 40, torch.Generator().manual_seed(1))
    values = train.values.clone()
    values[:, 5] = float("nan")  # whole rows: allowed for a full observation covariance
    if cov_type == "diag":
        values[0, 7, 1] = values[2, 11, 0] = float("nan")
    train = SequenceBatch(values, torch.tensor([40, 31, 17]))
    model = LinearGaussianSSM(2, 3, transition_cov_type=cov_type, observation_cov_type=cov_type, prior=prior).to(DTYPE)
    result = fit(model, train, method="em", max_iterations=25, progress=False)
    assert len(result.history) > 10
    assert objectives_never_decrease(result.history)
    # The objective is log-likelihood plus log prior at the parameters before each update.
    model_copy = LinearGaussianSSM(**model.config()).to(DTYPE)
    model_copy.load_state_dict(model.state_dict())
    expected = model.log_prob(train.values, train.lengths).sum() + model.log_prior()
    assert model_copy.em_step(train).item() == pytest.approx(expected.item(), rel=1e-10)


def test_em_with_a_full_observation_covariance_rejects_partly_missing_steps():
    model = make_model(2, 3, 0)
    values = model.sample(1, 5, torch.Generator().manual_seed(0)).values
    values[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="observation_cov_type='diag'"):
        model.em_step(SequenceBatch.from_tensor(values))


@pytest.mark.parametrize("guide", ["map", "meanfield"])
@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_marginal_and_sampled_forms_give_the_same_elbo(guide, cov_type):
    """With the exact smoothing posterior as the states' guide, log p(x, s) - log q(s) is the
    exact log-likelihood for every draw of s: the two forms' ELBOs agree draw by draw."""
    params = random_params(2, 3, 11)
    if cov_type == "diag":
        params["transition_cov"] = torch.diag(params["transition_cov"].diagonal())
        params["observation_cov"] = torch.diag(params["observation_cov"].diagonal())
    forms = {
        latent: LinearGaussianSSM.from_params(
            *(params[n] for n in PARAMETER_NAMES),
            guide=guide,
            latent=latent,
            transition_cov_type=cov_type,
            observation_cov_type=cov_type,
        )
        for latent in ("marginal", "sampled")
    }
    batch = forms["marginal"].sample(3, 6, torch.Generator().manual_seed(2))
    values = with_gaps(batch.values)
    batch = SequenceBatch(values, torch.tensor([6, 4, 1]))
    for seed in range(3):
        losses = {}
        for latent, model in forms.items():
            pyro.set_rng_seed(seed)
            losses[latent] = Trace_ELBO().differentiable_loss(model.model, model.guide, batch).item()
        assert losses["sampled"] == pytest.approx(losses["marginal"], rel=1e-10, abs=1e-8)
    if guide == "map":
        expected = forms["marginal"].log_prob(values, batch.lengths).sum() + forms["marginal"].log_prior()
        assert -losses["marginal"] == pytest.approx(expected.item(), rel=1e-10)


def test_sampled_states_guide_is_the_exact_smoothing_posterior():
    model = make_model(2, 2, 3, latent="sampled")
    values = with_gaps(model.sample(1, 5, torch.Generator().manual_seed(0)).values)
    batch = SequenceBatch.from_tensor(values)
    posterior = pyro.poutine.trace(model.guide).get_trace(batch).nodes["states"]["fn"]
    _, dense_mean, dense_cov, _, _, _ = dense_posterior(model, values[0])
    pyro.set_rng_seed(0)
    draws = posterior.rsample((4000,))  # (4000, 1, T, d)
    # Its density is the dense posterior's, for any path.
    dense = dist.MultivariateNormal(dense_mean.reshape(-1), dense_cov)
    for draw in draws[:3, 0]:
        assert posterior.log_prob(draw[None]).item() == pytest.approx(
            dense.log_prob(draw.reshape(-1)).item(), rel=1e-10
        )
    # Its draws have the smoother's moments (Monte Carlo, within 6 standard errors).
    smoothed = model.smooth(values)
    error = (draws.mean(0) - smoothed.smoothed_mean).abs()
    scale = smoothed.smoothed_cov.diagonal(dim1=-2, dim2=-1).sqrt() / math.sqrt(4000)
    assert (error < 6 * scale).all()
    # The model's FFBS sampler too, and its second moments.
    paths = model.sample_states(values, num_samples=4000, generator=torch.Generator().manual_seed(1))
    centred = (paths - smoothed.smoothed_mean).reshape(4000, -1)
    sample_cov = centred.T @ centred / 4000
    standard_error = (
        dense_cov.diagonal()[:, None] * dense_cov.diagonal()[None, :] + dense_cov.square()
    ).sqrt() / math.sqrt(4000)
    assert ((sample_cov - dense_cov).abs() < 6 * standard_error).all()


def test_positive_definite_transform_and_inverse_wishart():
    transform = _VectorToPositiveDefinite()
    vector = torch.randn(6, dtype=DTYPE)
    matrix = transform(vector)
    assert positive_definite_matrix.check(matrix)
    assert torch.allclose(transform.inv(matrix), vector)
    rows, cols = torch.tril_indices(3, 3)
    jacobian = torch.autograd.functional.jacobian(lambda v: transform(v)[rows, cols], vector)
    assert torch.allclose(transform.log_abs_det_jacobian(vector, matrix), torch.linalg.slogdet(jacobian)[1])
    scipy_stats = pytest.importorskip("scipy.stats")
    psi = random_params(3, 1, 0)["initial_cov"]
    law = _InverseWishart(torch.tensor(6.5, dtype=DTYPE), torch.linalg.cholesky(psi))
    expected = scipy_stats.invwishart(df=6.5, scale=psi.numpy()).logpdf(matrix.detach().numpy())
    assert law.log_prob(matrix).item() == pytest.approx(expected, rel=1e-10)
    draws = law.rsample((20000,))
    assert torch.allclose(draws.mean(0), law.mean, atol=0.05 * law.mean.abs().max())


def nile_batch():
    from zoo.data import load_data

    try:
        return load_data("builtin:nile").batch.to(dtype=DTYPE)
    except Exception as error:  # the data set ships with statsmodels
        pytest.skip(f"builtin:nile unavailable: {error}")


def test_nile_local_level_matches_durbin_koopman_and_statsmodels():
    batch = nile_batch()
    at_mle = LinearGaussianSSM.local_level(1469.1, 15099.0, dtype=DTYPE)  # exact diffuse by default
    with torch.no_grad():
        assert at_mle.log_prob(batch.values).item() == pytest.approx(-633.4646, abs=1e-4)
    # statsmodels' approximate diffuse start: a_1 = 0, P_1 = 1e6, the first term dropped.
    approximate = LinearGaussianSSM.local_level(1469.1, 15099.0, initial="prior", initial_var=1e6, dtype=DTYPE)
    statsmodels = pytest.importorskip("statsmodels.api")
    reference = statsmodels.tsa.UnobservedComponents(batch.values[0, :, 0].numpy(), "local level").loglike(
        [15099.0, 1469.1]
    )
    with torch.no_grad():
        assert approximate.log_prob(batch.values, burn=1).item() == pytest.approx(reference, rel=1e-8)
    # EM from elsewhere lands on the exact-diffuse MLE.
    model = LinearGaussianSSM.local_level(1000.0, 10000.0, dtype=DTYPE, prior="none")
    result = fit(model, batch, method="em", max_iterations=2000, tolerance=1e-12, progress=False)
    assert objectives_never_decrease(result.history)
    assert model.transition_cov.item() == pytest.approx(1469.1, rel=1e-3)
    assert model.observation_cov.item() == pytest.approx(15099.0, rel=1e-3)


def test_diffuse_model_smooths_imputes_and_samples():
    batch = nile_batch()
    values = batch.values.clone()
    values[0, 40:45] = float("nan")
    model = LinearGaussianSSM.local_level(1469.1, 15099.0, initial_mean=1100.0, initial_var=100.0**2, dtype=DTYPE)
    imputed = model.impute(values)
    smoothed = model.smooth(values)
    assert torch.allclose(imputed.mean[0, 40:45], smoothed.smoothed_mean[0, 40:45])
    assert torch.allclose(imputed.var[0, 40:45, 0], smoothed.smoothed_cov[0, 40:45, 0, 0] + 15099.0)
    forecast = model.forecast(values, steps=3)
    assert torch.allclose(forecast.observation_mean[0, :, 0], smoothed.smoothed_mean[0, -1, 0].expand(3))
    synthetic, states = model.sample_with_states(2000, 2, torch.Generator().manual_seed(0))
    assert abs(states[:, 0, 0].mean().item() - 1100.0) < 6 * 100.0 / math.sqrt(2000)


def test_forecast_matches_simulation():
    model = make_model(2, 3, 8)
    values = with_gaps(model.sample(1, 6, torch.Generator().manual_seed(0)).values)
    forecast = model.forecast(values, steps=3)
    num = 20000
    generator = torch.Generator().manual_seed(1)
    state = model.sample_states(values, num_samples=num, generator=generator)[:, 0, -1]  # (S, d)
    a, b = model.transition_matrix.detach(), model.observation_matrix.detach()
    q_tril = torch.linalg.cholesky(model.transition_cov.detach())
    r_tril = torch.linalg.cholesky(model.observation_cov.detach())
    for k in range(3):
        state = state @ a.T + torch.randn(num, 2, generator=generator, dtype=DTYPE) @ q_tril.T
        x = state @ b.T + torch.randn(num, 3, generator=generator, dtype=DTYPE) @ r_tril.T
        predicted_var = forecast.observation_cov[0, k].diagonal()
        assert ((x.mean(0) - forecast.observation_mean[0, k]).abs() < 6 * (predicted_var / num).sqrt()).all()
        assert ((x.var(0) - predicted_var).abs() < 6 * predicted_var * math.sqrt(2 / num)).all()


def test_nuts_potential_is_the_log_posterior_in_unconstrained_space():
    """The parameter sites work with Pyro's MCMC machinery: its potential at any point is
    -(log-likelihood + log prior + log |Jacobian|) of the model's own log_prob."""
    from pyro.infer.mcmc.util import initialize_model

    model = make_model(2, 2, 9, learn=("transition_matrix", "transition_cov", "observation_cov"))
    batch = model.sample(2, 8, torch.Generator().manual_seed(0))
    model.initialize_from_data(batch)
    _, potential_fn, transforms, _ = initialize_model(model.model, model_args=(batch,))
    # Pyro's transforms map each site's support to reals; move away from the current point.
    generator = torch.Generator().manual_seed(3)
    unconstrained = {}
    for name, value in model.parameter_values().items():
        point = transforms[name](value)
        unconstrained[name] = point + 0.3 * torch.randn(point.shape, generator=generator, dtype=DTYPE)
    constrained = {name: transforms[name].inv(value) for name, value in unconstrained.items()}
    log_jacobian = sum(
        transforms[name].inv.log_abs_det_jacobian(unconstrained[name], constrained[name]).sum() for name in constrained
    )
    model.set_parameter_values(constrained)
    expected = model.log_prob(batch.values).sum() + model.log_prior() + log_jacobian
    assert (-potential_fn(unconstrained)).item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.slow
def test_gradient_fit_reaches_the_em_optimum():
    """fit(method="svi") on the marginal form maximises the exact likelihood: it ends where EM does."""
    truth = LinearGaussianSSM.local_level(1.5, 4.0, initial="prior", initial_var=10.0, dtype=DTYPE)
    train = truth.sample(2, 100, torch.Generator().manual_seed(0))
    fitted = {}
    for method, options in (
        ("em", dict(max_iterations=5000, tolerance=1e-11)),
        ("svi", dict(max_epochs=150, learning_rate=0.1, final_learning_rate=0.002)),
    ):
        model = LinearGaussianSSM.local_level(1.0, 1.0, initial="prior", initial_var=10.0, dtype=DTYPE, prior="none")
        fit(model, train, method=method, progress=False, seed=0, **options)
        with torch.no_grad():
            fitted[method] = model.log_prob(train.values).sum().item() / train.num_steps
    assert fitted["svi"] == pytest.approx(fitted["em"], abs=1e-3)


def test_em_recovers_a_two_state_three_output_system():
    truth = make_model(2, 3, 1)
    train = truth.sample(20, 200, torch.Generator().manual_seed(1))
    model = LinearGaussianSSM(2, 3, prior="none").to(DTYPE)
    result = fit(model, train, method="em", max_iterations=1500, tolerance=1e-10, progress=False)
    assert objectives_never_decrease(result.history)
    with torch.no_grad():
        gap = (model.log_prob(train.values).sum() - truth.log_prob(train.values).sum()).item() / train.num_steps
    assert 0 <= gap < 0.01
    # Identifiable quantities: the stationary covariance of X and its lag-one autocovariance.

    def moments(m):
        a, b, q, r = (
            getattr(m, name).detach()
            for name in ("transition_matrix", "observation_matrix", "transition_cov", "observation_cov")
        )
        stationary = torch.linalg.solve(torch.eye(4, dtype=DTYPE) - torch.kron(a, a), q.reshape(-1)).reshape(2, 2)
        return b @ stationary @ b.T + r, b @ a @ stationary @ b.T

    for fitted_moment, true_moment in zip(moments(model), moments(truth)):
        assert (fitted_moment - true_moment).abs().max() < 0.1 * true_moment.abs().max()


def test_meanfield_svi_on_float32_improves_the_fit_and_keeps_the_point_at_the_means():
    truth = LinearGaussianSSM.local_level(0.5, 1.0, initial="prior", initial_var=4.0)
    train = truth.sample(3, 20, torch.Generator().manual_seed(0))
    config = dict(guide="meanfield", transition_cov_type="full", observation_cov_type="diag")
    start = LinearGaussianSSM(1, 1, **config)
    start.initialize_from_data(train, torch.Generator().manual_seed(0))  # what fit does with seed=0
    model = LinearGaussianSSM(1, 1, **config)
    fit(model, train, method="svi", max_epochs=12, learning_rate=0.1, num_particles=2, progress=False, seed=0)
    with torch.no_grad():
        assert model.log_prob(train.values).sum() > start.log_prob(train.values).sum() + 1.0
    assert model.transition_cov.dtype == torch.float32
    q = model._variational()
    assert torch.allclose(model.transition_cov, q["transition_cov"].mean)
    assert torch.allclose(model.observation_cov.diagonal(), q["observation_var"].mean)


def test_docstring_examples_run():
    import doctest

    import zoo.lgssm

    failures, attempted = doctest.testmod(zoo.lgssm, optionflags=doctest.ELLIPSIS)
    assert attempted >= 6 and failures == 0


def test_learned_markov_guide_is_exact_at_the_start_and_a_bound_elsewhere():
    params = random_params(2, 2, 12)
    model = LinearGaussianSSM.from_params(
        *(params[n] for n in PARAMETER_NAMES), latent="sampled", states_guide="learned"
    )
    batch = SequenceBatch(with_gaps(model.sample(2, 6, torch.Generator().manual_seed(0)).values), torch.tensor([6, 4]))
    exact = (model.log_prob(batch.values, batch.lengths).sum() + model.log_prior()).item()
    pyro.set_rng_seed(0)
    assert -Trace_ELBO().differentiable_loss(model.model, model.guide, batch).item() == pytest.approx(exact, rel=1e-10)
    with torch.no_grad():
        model.guide_states_transition_matrix.mul_(0.5)
        model.guide_states_initial_mean.add_(1.0)
    pyro.set_rng_seed(1)
    elbo = -Trace_ELBO(num_particles=40).differentiable_loss(model.model, model.guide, batch)
    # Away from the exact posterior the ELBO is a bound: the gap is KL(q || posterior) > 0
    # (here several nats, far above the estimate's Monte Carlo error).
    assert elbo.item() < exact - 1.0
    # The guide's own parameters receive finite, nonzero gradients: SVI learns them.
    guide_parameters = [p for name, p in model.named_parameters() if name.startswith("guide_states_")]
    assert len(guide_parameters) == 6
    loss = Trace_ELBO(num_particles=8).differentiable_loss(model.model, model.guide, batch)
    gradients = torch.autograd.grad(loss, guide_parameters)
    assert all(torch.isfinite(g).all() for g in gradients) and any(g.abs().max() > 0 for g in gradients)


# -- EM split into additive statistics (e_step) and their maximiser (m_step) ---------------


def _clone(model):
    copy = LinearGaussianSSM(**model.config()).to(DTYPE)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():  # the data scale lives in buffers the priors read
        copy.data_mean.copy_(model.data_mean)
        copy.data_var.copy_(model.data_var)
    return copy


@pytest.mark.parametrize("case", em_reference.LGSSM_CASES)
def test_e_step_statistics_of_two_halves_give_the_whole_batch_m_step(case):
    """Diagonal and full covariances, with padding, single missing entries (diagonal) and
    whole missing rows: the statistics of two halves add up to the whole batch's, and the
    M-step from the sum is the whole batch's M-step."""
    model, batch = em_reference.build_case(case)
    whole = model.e_step(batch)
    first, second = model.e_step(batch[:1]), model.e_step(batch[1:])
    assert set(whole) == set(first) == set(second)
    assert "log_likelihood" in whole and "lag_state_outer" in whole and "observation_state_cross" in whole
    summed = {key: first[key] + second[key] for key in whole}
    for key in whole:
        assert torch.allclose(summed[key], whole[key], rtol=1e-10, atol=1e-10), key
    assert not torch.allclose(first["current_state_outer"], whole["current_state_outer"])
    from_halves, from_whole = _clone(model), _clone(model)
    from_halves.m_step(summed)
    from_whole.m_step(whole)
    after_halves, after_whole = from_halves._point(), from_whole._point()
    for name in PARAMETER_NAMES:
        assert torch.allclose(after_halves[name], after_whole[name], rtol=1e-9, atol=1e-12), name
    assert not torch.allclose(after_whole["transition_matrix"], model.transition_matrix)  # the M-step moved it


@pytest.mark.parametrize("case", em_reference.LGSSM_CASES)
def test_default_em_step_reproduces_the_smoothed_moment_em(case):
    """The contract's em_step (e_step, log prior, m_step) gives the objective and the
    matrices that the former EM on per-step smoothed moments gave on the same case."""
    reference = json.loads(em_reference.REFERENCE_PATH.read_text())[case]
    model, batch = em_reference.build_case(case)
    assert type(model).em_step is SequenceModel.em_step  # no family override left
    objective = model.em_step(batch)
    assert objective.item() == pytest.approx(reference["objective"], rel=1e-12)
    for name, value in em_reference.state_of(model).items():
        assert torch.allclose(
            torch.tensor(value, dtype=DTYPE), torch.tensor(reference["after"][name], dtype=DTYPE), rtol=1e-9, atol=1e-12
        ), name


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_e_step_statistics_match_a_dense_joint_gaussian(cov_type):
    """The summed second moments of the states and the observation statistics, from the
    dense Gaussian posterior of one sequence."""
    d, p, length = 2, 3, 5
    params = random_params(d, p, 3)
    if cov_type == "diag":
        params["transition_cov"] = torch.diag(params["transition_cov"].diagonal())
        params["observation_cov"] = torch.diag(params["observation_cov"].diagonal())
    model = LinearGaussianSSM.from_params(
        *(params[name] for name in PARAMETER_NAMES), transition_cov_type=cov_type, observation_cov_type=cov_type
    )
    x = model.sample(1, length, torch.Generator().manual_seed(2)).values.clone()
    x[0, 2] = float("nan")  # a whole row: allowed for both covariance types
    if cov_type == "diag":
        x[0, 1, 0] = float("nan")
    statistics = model.e_step(SequenceBatch.from_tensor(x))
    log_like, state_mean, state_cov, *_ = dense_posterior(model, x[0])
    outer = (
        state_cov.reshape(length, d, length, d).permute(0, 2, 1, 3)
        + state_mean[:, None, :, None] * state_mean[None, :, None, :]
    )  # outer[t, s] = E[s_t s_s^T]
    steps = range(1, length)
    assert statistics["log_likelihood"].item() == pytest.approx(log_like.item(), rel=1e-10)
    assert statistics["transition_count"].item() == length - 1
    assert torch.allclose(statistics["previous_state_outer"], sum(outer[t - 1, t - 1] for t in steps), atol=1e-9)
    assert torch.allclose(statistics["current_state_outer"], sum(outer[t, t] for t in steps), atol=1e-9)
    assert torch.allclose(statistics["lag_state_outer"], sum(outer[t, t - 1] for t in steps), atol=1e-9)
    assert statistics["initial_count"].item() == 1
    assert torch.allclose(statistics["initial_state_sum"], state_mean[0], atol=1e-9)
    assert torch.allclose(statistics["initial_state_outer"], outer[0, 0], atol=1e-9)
    observed = ~x[0].isnan()
    filled = torch.where(observed, x[0], torch.zeros((), dtype=DTYPE))
    if cov_type == "diag":
        o = observed.to(DTYPE)
        assert torch.equal(statistics["observed_count"], o.sum(0))
        expected_gram = torch.stack([sum(o[t, j] * outer[t, t] for t in range(length)) for j in range(p)])
        assert torch.allclose(statistics["observed_state_outer"], expected_gram, atol=1e-9)
        assert torch.allclose(statistics["observation_squares"], filled.square().sum(0), atol=1e-12)
    else:
        rows = [t for t in range(length) if observed[t].all()]
        assert statistics["observed_count"].item() == len(rows)
        assert torch.allclose(statistics["observed_state_outer"], sum(outer[t, t] for t in rows), atol=1e-9)
        assert torch.allclose(
            statistics["observation_outer"], sum(torch.outer(x[0, t], x[0, t]) for t in rows), atol=1e-12
        )
    assert torch.allclose(
        statistics["observation_state_cross"],
        sum(torch.outer(filled[t], state_mean[t]) for t in range(length)),
        atol=1e-9,
    )


def test_parameter_specs_declare_storage_sites_and_roles():
    """The declarative specs drive storage, sites and counting: a diffuse model holds the
    initial matrices as buffers, a fixed matrix is a buffer of its value, a diagonal
    covariance is stored as log variances under a ``*_var`` site."""
    model = LinearGaussianSSM(
        2, 3, transition_cov_type="diag", initial="diffuse", fixed={"observation_matrix": torch.ones(3, 2)}
    )
    specs = model._specs
    assert [spec.role.value for spec in specs.values()] == ["learned", "fixed", "learned", "learned", "held", "held"]
    parameters = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert set(parameters) == {"transition_weight", "transition_log_var", "observation_scale_tril_unconstrained"}
    assert {"fixed_observation_matrix", "initial_loc", "initial_scale_tril_unconstrained"} <= set(buffers)
    assert list(model.parameter_sites()) == ["transition_matrix", "transition_var", "observation_cov"]
    assert model.num_parameters == 4 + 2 + 6
    assert torch.equal(model.observation_matrix, torch.ones(3, 2))
    with pytest.raises(ValueError, match="'observation_matrix' is fixed"):
        model.set_values({"observation_matrix": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="expected a diagonal matrix"):
        model.set_values({"transition_cov": torch.tensor([[1.0, 0.1], [0.1, 1.0]])})
