"""The HMM family against brute force, Pyro's own enumeration and hmmlearn."""

import itertools
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.batch import SequenceBatch
from inference.fit import fit
from zoo.hmm import CategoricalHMM, GaussianHMM, PoissonHMM

DTYPE = torch.float64


def random_chain(k, generator):
    initial = torch.distributions.Dirichlet(torch.ones(k, dtype=DTYPE)).sample()
    transition = torch.distributions.Dirichlet(torch.ones(k, k, dtype=DTYPE)).sample()
    return initial, transition


def make_model(emission, k, seed):
    """A random HMM of each emission type, float64, and observations for it."""
    torch.manual_seed(seed)
    initial, transition = random_chain(k, None)
    if emission == "categorical":
        probs = torch.distributions.Dirichlet(torch.ones(k, 4, dtype=DTYPE)).sample()
        return CategoricalHMM.from_probs(initial, transition, probs)
    if emission == "diag":
        return GaussianHMM.from_params(initial, transition, torch.randn(k, 2, dtype=DTYPE),
                                       0.3 + torch.rand(k, 2, dtype=DTYPE))
    if emission == "full":
        a = torch.randn(k, 2, 2, dtype=DTYPE)
        return GaussianHMM.from_params(initial, transition, torch.randn(k, 2, dtype=DTYPE),
                                       a @ a.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=DTYPE))
    return PoissonHMM.from_params(initial, transition, 0.5 + 4 * torch.rand(k, 2, dtype=DTYPE))


def brute_force(model, x):
    """Log-likelihood, state marginals and MAP path of one sequence ``x`` by
    enumerating all K^T state paths, with emissions scored by torch.distributions."""
    k, length = model.num_states, x.shape[0]
    initial, transition = model.initial_probs.detach(), model.transition_probs.detach()

    def emission_log_prob(t, s):
        if isinstance(model, CategoricalHMM):
            return model.emission_probs[s, x[t]].log()
        if isinstance(model, PoissonHMM):
            observed = ~x[t].isnan()
            return dist.Poisson(model.rates[s][observed]).log_prob(x[t][observed]).sum()
        observed = ~x[t].isnan()
        if not observed.any():
            return torch.zeros((), dtype=DTYPE)
        mean = model.means[s][observed]
        cov = model.covariances[s]
        cov = torch.diag(cov) if cov.dim() == 1 else cov
        cov = cov[observed][:, observed]
        return dist.MultivariateNormal(mean, cov).log_prob(x[t][observed])

    log_joints = {}
    for path in itertools.product(range(k), repeat=length):
        lp = initial[path[0]].log() + emission_log_prob(0, path[0])
        for t in range(1, length):
            lp = lp + transition[path[t - 1], path[t]].log() + emission_log_prob(t, path[t])
        log_joints[path] = lp.detach()
    paths = list(log_joints)
    values = torch.stack([log_joints[p] for p in paths])
    log_z = torch.logsumexp(values, 0)
    weights = (values - log_z).exp()
    marginals = torch.zeros(length, k, dtype=DTYPE)
    for w, path in zip(weights, paths):
        marginals[torch.arange(length), torch.tensor(path)] += w
    best = paths[int(values.argmax())]
    return log_z, marginals, torch.tensor(best), values.max()


EMISSIONS = ["categorical", "diag", "full", "poisson"]


@pytest.mark.parametrize("emission", EMISSIONS)
@pytest.mark.parametrize("k, length, seed", [(2, 6, 0), (3, 5, 1), (3, 4, 2)])
def test_exact_inference_matches_brute_force(emission, k, length, seed):
    model = make_model(emission, k, seed)
    x = model.sample(1, length, torch.Generator().manual_seed(seed)).values
    if emission in ("diag", "full"):
        x[0, 1, 0] = float("nan")  # a partly missing row
        x[0, 2] = float("nan")  # a wholly missing row
    log_z, marginals, path, best = brute_force(model, x[0])
    assert torch.allclose(model.log_prob(x).detach()[0], log_z, atol=1e-10, rtol=1e-10)
    assert torch.allclose(model.smooth(x)[0], marginals, atol=1e-10)
    decoded = model.decode(x)[0]
    # The MAP path's log joint equals the best one (paths may tie on a missing row, so compare values).
    assert torch.allclose(_path_log_joint(model, x[0], decoded), best, atol=1e-10)
    if emission in ("categorical", "poisson"):
        assert torch.equal(decoded, path)


def _path_log_joint(model, x, path):
    initial, transition = model.initial_probs.detach(), model.transition_probs.detach()
    log_emission = model._emission_log_prob(model._check_observations(x[None], "x"), model._point())[0].detach()
    lp = initial[path[0]].log() + log_emission[0, path[0]]
    for t in range(1, len(path)):
        lp = lp + transition[path[t - 1], path[t]].log() + log_emission[t, path[t]]
    return lp


@pytest.mark.parametrize("emission", EMISSIONS)
def test_masked_batch_equals_one_by_one(emission):
    model = make_model(emission, 3, 5)
    lengths = torch.tensor([7, 1, 4])
    batch = model.sample(3, 7, torch.Generator().manual_seed(0))
    together = model.log_prob(batch.values, lengths).detach()
    marginals = model.smooth(batch.values, lengths)
    paths = model.decode(batch.values, lengths)
    for n, length in enumerate(lengths.tolist()):
        alone = batch.values[n : n + 1, :length]
        assert torch.allclose(together[n], model.log_prob(alone).detach()[0], rtol=1e-12)
        assert torch.allclose(marginals[n, :length], model.smooth(alone)[0], atol=1e-12)
        assert torch.equal(paths[n, :length], model.decode(alone)[0])
        assert (paths[n, length:] == -1).all() and (marginals[n, length:] == 0).all()


def test_pyro_enumeration_of_an_unrolled_model_agrees():
    """An independently written pyro.markov model, enumerated by TraceEnum_ELBO."""
    model = make_model("categorical", 3, 7)
    x = model.sample(2, 6, torch.Generator().manual_seed(1)).values
    initial, transition, emission = (p.detach() for p in (model.initial_probs, model.transition_probs, model.emission_probs))

    def unrolled():
        with pyro.plate("sequences", x.shape[0], dim=-1):
            state = None
            for t in pyro.markov(range(x.shape[1])):
                probs = initial if state is None else transition[state]
                state = pyro.sample(f"s_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                pyro.sample(f"x_{t}", dist.Categorical(emission[state]), obs=x[:, t])

    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(unrolled, lambda: None)
    assert -loss == pytest.approx(model.log_prob(x).sum().item(), rel=1e-10)


@pytest.mark.parametrize("emission", ["categorical", "diag", "poisson"])
@pytest.mark.parametrize("guide", ["map", "meanfield"])
def test_kernel_and_enumerated_models_give_the_same_elbo(emission, guide):
    model = make_model(emission, 3, 11)
    batch = model.sample(3, 8, torch.Generator().manual_seed(2))
    batch = SequenceBatch(batch.values, torch.tensor([8, 5, 2]))
    losses = []
    for marginalize in ("kernel", "enumerate"):
        other = type(model)(**{**model.config(), "marginalize": marginalize, "guide": guide}).to(DTYPE)
        other.load_state_dict(model.state_dict(), strict=False)
        other._sync_variational_to_point()
        elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1) if marginalize == "enumerate" else pyro.infer.Trace_ELBO()
        pyro.set_rng_seed(0)
        losses.append(elbo.differentiable_loss(other.model, other.guide, batch).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)


def test_forecast_is_the_exact_predictive():
    model = make_model("categorical", 3, 3)
    x = model.sample(1, 6, torch.Generator().manual_seed(4)).values
    forecast = model.forecast(x, 2)
    base = model.log_prob(x).detach()
    for symbol in range(model.num_symbols):
        extended = torch.cat([x, torch.tensor([[symbol]])], 1)
        expected = (model.log_prob(extended).detach() - base).exp()
        assert torch.allclose(forecast.probs[0, 0, symbol].detach(), expected[0], atol=1e-12)
    # Two steps ahead: sum over the intermediate symbol.
    for symbol in range(model.num_symbols):
        total = sum((model.log_prob(torch.cat([x, torch.tensor([[a, symbol]])], 1)).detach() - base).exp() for a in range(model.num_symbols))
        assert torch.allclose(forecast.probs[0, 1, symbol].detach(), total[0], atol=1e-12)


def test_gaussian_forecast_moments_match_monte_carlo():
    model = make_model("diag", 2, 8)
    x = model.sample(1, 20, torch.Generator().manual_seed(0)).values
    forecast = model.forecast(x, 1)
    draws = []
    states = model.sample_states(x, num_samples=4000, generator=torch.Generator().manual_seed(1))[:, 0, -1]
    gen = torch.Generator().manual_seed(2)
    nxt = torch.multinomial(model.transition_probs.detach()[states], 1, generator=gen).squeeze(-1)
    draws = model.means.detach()[nxt] + torch.randn(4000, 2, generator=gen, dtype=DTYPE) * model.covariances.detach()[nxt].sqrt()
    stderr = draws.std(0) / np.sqrt(4000)
    assert ((draws.mean(0) - forecast.mean[0, 0].detach()).abs() < 5 * stderr).all()


# -- hmmlearn ---------------------------------------------------------------------
hmmlearn = pytest.importorskip("hmmlearn.hmm")


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _mle(model):
    """The same model with flat priors: EM's M-step is then the MLE, as hmmlearn's."""
    config = {**model.config(), "initial_concentration": 1.0, "transition_concentration": 1.0}
    if isinstance(model, CategoricalHMM):
        config["emission_concentration"] = 1.0
    elif isinstance(model, GaussianHMM):
        config.update(mean_prior_scale=1e8, precision_shape=1.0, precision_rate=1e-300)
    else:
        config.update(rate_shape=1.0, rate_rate=1e-300)
    other = type(model)(**config).to(DTYPE)
    other.load_state_dict(model.state_dict())
    return other


def _reference(model):
    k = model.num_states
    common = dict(n_components=k, init_params="", n_iter=1, tol=0.0, implementation="scaling")
    if isinstance(model, CategoricalHMM):
        ref = hmmlearn.CategoricalHMM(n_features=model.num_symbols, params="ste", **common)
        ref.emissionprob_ = model.emission_probs.detach().numpy()
    elif isinstance(model, GaussianHMM):
        # covars_prior 0 and covars_weight at most 1 (diag) / D (full) make hmmlearn's M-step the MLE.
        ref = hmmlearn.GaussianHMM(covariance_type=model.covariance_type, params="stmc", min_covar=0.0,
                                   covars_prior=0.0, covars_weight=1.0, **common)
        ref.means_ = model.means.detach().numpy()
        ref.covars_ = model.covariances.detach().numpy()
    else:
        ref = hmmlearn.PoissonHMM(params="stl", lambdas_prior=0.0, lambdas_weight=0.0, **common)
        ref.lambdas_ = model.rates.detach().numpy()
    ref.startprob_ = model.initial_probs.detach().numpy()
    ref.transmat_ = model.transition_probs.detach().numpy()
    return ref


def _to_hmmlearn(values):
    return values.reshape(-1, *values.shape[2:]).numpy() if values.dim() == 3 else values.reshape(-1, 1).numpy()


@pytest.mark.parametrize("emission", EMISSIONS)
def test_score_and_decode_match_hmmlearn(emission):
    model = make_model(emission, 3, 21)
    batch = model.sample(3, 40, torch.Generator().manual_seed(5))
    ref = _reference(model)
    lengths = [40, 40, 40]
    expected = _quiet(ref.score, _to_hmmlearn(batch.values), lengths)
    assert model.log_prob(batch.values).sum().item() == pytest.approx(expected, rel=1e-10)
    _, ref_path = _quiet(ref.decode, _to_hmmlearn(batch.values[:1]))
    assert model.decode(batch.values[:1])[0].tolist() == ref_path.tolist()


@pytest.mark.parametrize("emission", ["categorical", "diag", "full", "poisson"])
def test_one_em_step_matches_hmmlearn(emission):
    model = _mle(make_model(emission, 3, 31))
    batch = make_model(emission, 3, 32).sample(4, 60, torch.Generator().manual_seed(6))
    ref = _reference(model)
    _quiet(ref.fit, _to_hmmlearn(batch.values), [60] * 4)
    model.em_step(batch)
    assert np.allclose(model.initial_probs.detach().numpy(), ref.startprob_, atol=1e-8)
    assert np.allclose(model.transition_probs.detach().numpy(), ref.transmat_, atol=1e-8)
    if emission == "categorical":
        assert np.allclose(model.emission_probs.detach().numpy(), ref.emissionprob_, atol=1e-8)
    elif emission == "poisson":
        assert np.allclose(model.rates.detach().numpy(), ref.lambdas_, atol=1e-6)
    else:
        assert np.allclose(model.means.detach().numpy(), ref.means_, atol=1e-6)
        ours = model.covariances.detach().numpy()
        theirs = ref.covars_ if emission == "full" else np.diagonal(ref.covars_, axis1=-2, axis2=-1)
        assert np.allclose(ours, theirs, rtol=1e-5)


# -- learning ---------------------------------------------------------------------
def best_permutation(true, fitted):
    k = true.shape[0]
    return min(itertools.permutations(range(k)), key=lambda p: float((fitted[list(p)] - true).abs().sum()))


TRUE_TRANSITION = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.15, 0.8]], dtype=DTYPE)
TRUE_INITIAL = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)


def true_model(emission):
    if emission == "categorical":
        probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.05, 0.05, 0.45, 0.45]], dtype=DTYPE)
        return CategoricalHMM.from_probs(TRUE_INITIAL, TRUE_TRANSITION, probs), "emission_probs", 0.05
    if emission == "gaussian":
        means = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]], dtype=DTYPE)
        return GaussianHMM.from_params(TRUE_INITIAL, TRUE_TRANSITION, means, torch.full((3, 2), 0.5, dtype=DTYPE)), "means", 0.1
    rates = torch.tensor([[1.0], [6.0], [15.0]], dtype=DTYPE)
    return PoissonHMM.from_params(TRUE_INITIAL, TRUE_TRANSITION, rates), "rates", 0.5


@pytest.mark.parametrize("emission", ["categorical", "gaussian", "poisson"])
def test_em_recovers_parameters(emission):
    truth, emission_name, tolerance = true_model(emission)
    train = truth.sample(20, 250, torch.Generator().manual_seed(0))
    config = {k: v for k, v in truth.config().items()}
    model = type(truth)(**config).to(DTYPE)
    result = fit(model, train, method="em", max_iterations=300, num_restarts=3, progress=False, seed=0)
    objectives = [r["objective"] for r in result.history if r.get("restart", 0) == result.history[-1].get("restart", 0)]
    assert all(b >= a - 1e-8 * abs(a) for a, b in zip(objectives, objectives[1:]))
    true_emission = getattr(truth, emission_name).detach()
    fitted_emission = getattr(model, emission_name).detach()
    perm = list(best_permutation(true_emission, fitted_emission))
    assert (fitted_emission[perm] - true_emission).abs().max() < tolerance
    fitted_transition = model.transition_probs.detach()[perm][:, perm]
    assert (fitted_transition - TRUE_TRANSITION).abs().max() < 0.05
    # The fitted model scores held-out data about as well as the truth.
    test = truth.sample(10, 250, torch.Generator().manual_seed(1))
    gap = (truth.log_prob(test.values).sum() - model.log_prob(test.values).sum()).item() / test.num_steps
    assert gap < 0.01


def test_svi_map_recovers_a_gaussian_hmm():
    truth, _, _ = true_model("gaussian")
    train = truth.sample(10, 200, torch.Generator().manual_seed(3))
    model = GaussianHMM(3, 2).to(DTYPE)
    fit(model, train, method="svi", max_epochs=400, learning_rate=0.05, progress=False, seed=1)
    perm = list(best_permutation(truth.means.detach(), model.means.detach()))
    assert (model.means.detach()[perm] - truth.means.detach()).abs().max() < 0.15
    assert (model.transition_probs.detach()[perm][:, perm] - TRUE_TRANSITION).abs().max() < 0.08


def test_sample_frequencies_match_parameters():
    truth, _, _ = true_model("categorical")
    batch, states = truth.sample_with_states(50, 400, torch.Generator().manual_seed(9))
    pairs = torch.zeros(3, 3, dtype=DTYPE)
    pairs.index_put_((states[:, :-1].reshape(-1), states[:, 1:].reshape(-1)), torch.ones(1, dtype=DTYPE), accumulate=True)
    empirical = pairs / pairs.sum(-1, keepdim=True)
    stderr = (TRUE_TRANSITION * (1 - TRUE_TRANSITION) / pairs.sum(-1, keepdim=True)).sqrt()
    assert ((empirical - TRUE_TRANSITION).abs() < 5 * stderr).all()
    emitted = torch.zeros(3, 4, dtype=DTYPE)
    emitted.index_put_((states.reshape(-1), batch.values.reshape(-1)), torch.ones(1, dtype=DTYPE), accumulate=True)
    empirical = emitted / emitted.sum(-1, keepdim=True)
    probs = truth.emission_probs.detach()
    stderr = (probs * (1 - probs) / emitted.sum(-1, keepdim=True)).sqrt()
    assert ((empirical - probs).abs() < 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("guide", ["map", "meanfield"])
def test_state_dict_round_trip_rebuilds_the_model(guide):
    model = CategoricalHMM(3, 5, guide=guide)
    model.reset_parameters(torch.Generator().manual_seed(0))
    copy = CategoricalHMM(**model.config())
    copy.load_state_dict(model.state_dict())
    x = torch.randint(0, 5, (2, 9))
    assert torch.equal(copy.log_prob(x), model.log_prob(x))


def test_num_parameters_counts_free_parameters():
    assert CategoricalHMM(3, 5).num_parameters == 2 + 6 + 12
    assert GaussianHMM(3, 2).num_parameters == 2 + 6 + 6 + 6
    assert GaussianHMM(3, 2, covariance_type="full").num_parameters == 2 + 6 + 6 + 9
    assert PoissonHMM(2, 4).num_parameters == 1 + 2 + 8


@pytest.mark.parametrize(
    "make, x, message",
    [
        (lambda: CategoricalHMM(2, 3), torch.tensor([[0.0, 1.0]]), "int64 symbol codes"),
        (lambda: CategoricalHMM(2, 3), torch.tensor([[0, 3]]), r"codes in \[0, 3\)"),
        (lambda: CategoricalHMM(2, 3), torch.tensor([0, 1]), r"shape \(N, T\)"),
        (lambda: GaussianHMM(2, 2), torch.zeros(1, 4, 3), r"\(N, T, 2\)"),
        (lambda: PoissonHMM(2, 1), torch.tensor([[[1.5]]]), "nonnegative integer counts"),
        (lambda: PoissonHMM(2, 1), torch.tensor([[[-1.0]]]), "nonnegative integer counts"),
    ],
)
def test_bad_observations_are_rejected(make, x, message):
    with pytest.raises(ValueError, match=message):
        make().log_prob(x)


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="transition"):
        CategoricalHMM.from_probs(torch.tensor([0.5, 0.5]), torch.tensor([[0.5, 0.6], [0.5, 0.5]]), torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="covariances"):
        GaussianHMM.from_params(torch.tensor([0.5, 0.5]), torch.eye(2), torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="guide"):
        CategoricalHMM(2, 3, guide="laplace")
    with pytest.raises(ValueError, match="full"):
        GaussianHMM(2, 2, covariance_type="full", guide="meanfield")
