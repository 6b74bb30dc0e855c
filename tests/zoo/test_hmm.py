"""The HMM family against brute force, Pyro's own enumeration and hmmlearn; kernel and
enumerated ELBOs, mean-field guides, seeding, sample-then-fit recovery and bad input."""

import itertools
import json
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.batch import SequenceBatch
from inference.contract import SequenceModel
from inference.fit import fit
from tests.zoo import em_reference
from zoo.hmm import CategoricalHMM, GaussianHMM, PoissonHMM, _BartlettWishart, _kmeans_plus_plus

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
        return GaussianHMM.from_params(
            initial, transition, torch.randn(k, 2, dtype=DTYPE), 0.3 + torch.rand(k, 2, dtype=DTYPE)
        )
    if emission == "full":
        a = torch.randn(k, 2, 2, dtype=DTYPE)
        return GaussianHMM.from_params(
            initial,
            transition,
            torch.randn(k, 2, dtype=DTYPE),
            a @ a.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=DTYPE),
        )
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
    initial, transition, emission = (
        p.detach() for p in (model.initial_probs, model.transition_probs, model.emission_probs)
    )

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
        total = sum(
            (model.log_prob(torch.cat([x, torch.tensor([[a, symbol]])], 1)).detach() - base).exp()
            for a in range(model.num_symbols)
        )
        assert torch.allclose(forecast.probs[0, 1, symbol].detach(), total[0], atol=1e-12)


def test_gaussian_forecast_moments_match_monte_carlo():
    model = make_model("diag", 2, 8)
    x = model.sample(1, 20, torch.Generator().manual_seed(0)).values
    forecast = model.forecast(x, 1)
    draws = []
    states = model.sample_states(x, num_samples=4000, generator=torch.Generator().manual_seed(1))[:, 0, -1]
    gen = torch.Generator().manual_seed(2)
    nxt = torch.multinomial(model.transition_probs.detach()[states], 1, generator=gen).squeeze(-1)
    draws = (
        model.means.detach()[nxt]
        + torch.randn(4000, 2, generator=gen, dtype=DTYPE) * model.covariances.detach()[nxt].sqrt()
    )
    stderr = draws.std(0) / np.sqrt(4000)
    assert ((draws.mean(0) - forecast.mean[0, 0].detach()).abs() < 5 * stderr).all()


# -- hmmlearn ---------------------------------------------------------------------
try:
    import hmmlearn.hmm as hmmlearn
except ImportError:  # a test extra: only the tests that compare with it skip without it
    hmmlearn = None
requires_hmmlearn = pytest.mark.skipif(hmmlearn is None, reason="hmmlearn is not installed")


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
        ref = hmmlearn.GaussianHMM(
            covariance_type=model.covariance_type,
            params="stmc",
            min_covar=0.0,
            covars_prior=0.0,
            covars_weight=1.0,
            **common,
        )
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


@requires_hmmlearn
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


@requires_hmmlearn
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
        return (
            GaussianHMM.from_params(TRUE_INITIAL, TRUE_TRANSITION, means, torch.full((3, 2), 0.5, dtype=DTYPE)),
            "means",
            0.1,
        )
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
    pairs.index_put_(
        (states[:, :-1].reshape(-1), states[:, 1:].reshape(-1)), torch.ones(1, dtype=DTYPE), accumulate=True
    )
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
        CategoricalHMM.from_probs(
            torch.tensor([0.5, 0.5]), torch.tensor([[0.5, 0.6], [0.5, 0.5]]), torch.ones(2, 3) / 3
        )
    with pytest.raises(ValueError, match="covariances"):
        GaussianHMM.from_params(torch.tensor([0.5, 0.5]), torch.eye(2), torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="guide"):
        CategoricalHMM(2, 3, guide="laplace")
    with pytest.raises(ValueError, match="covariance_type"):
        GaussianHMM(2, 2, covariance_type="spherical")
    with pytest.raises(ValueError, match="marginalize"):
        PoissonHMM(2, 2, marginalize="sample")


# -- padding and missing entries in both marginalisations, mean-field guides, seeding ----------
# Fixed parameters: a 3-state chain with each emission type (categorical, Gaussian
# diag and full, Poisson).
INITIAL = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
TRANSITION = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], dtype=DTYPE)
MEANS = torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]], dtype=DTYPE)
FULL_COVARIANCES = torch.tensor(
    [[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 0.8]], [[0.4, 0.0], [0.0, 0.9]]], dtype=DTYPE
)


def models(**kwargs):
    """The four fixed models (same values on every call), built with ``kwargs``."""
    generator = torch.Generator().manual_seed(0)
    exponentials = -torch.rand(3, 4, generator=generator, dtype=DTYPE).log()
    emission = exponentials / exponentials.sum(-1, keepdim=True)  # flat-Dirichlet rows
    return [
        CategoricalHMM.from_probs(INITIAL, TRANSITION, emission, **kwargs),
        GaussianHMM.from_params(
            INITIAL, TRANSITION, MEANS, 0.3 + torch.rand(3, 2, generator=generator, dtype=DTYPE), **kwargs
        ),
        GaussianHMM.from_params(INITIAL, TRANSITION, MEANS, FULL_COVARIANCES, **kwargs),
        PoissonHMM.from_params(
            INITIAL, TRANSITION, torch.tensor([[1.0, 4.0], [6.0, 0.5], [12.0, 2.0]], dtype=DTYPE), **kwargs
        ),
    ]


def ragged_batch(model, seed):
    """Three sequences of lengths 7, 4, 1 (the padding holds sampled values, which
    must be ignored); for vector emissions one entry and one whole step missing."""
    batch = model.sample(3, 7, torch.Generator().manual_seed(seed))
    values = batch.values.clone()
    if values.is_floating_point():
        values[0, 2, 0] = float("nan")
        values[1, 3] = float("nan")
    return SequenceBatch(values, torch.tensor([7, 4, 1]))


def elbo_loss(model, batch, marginalize):
    other = type(model)(**{**model.config(), "marginalize": marginalize}).to(DTYPE)
    other.load_state_dict(model.state_dict())
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1) if marginalize == "enumerate" else pyro.infer.Trace_ELBO()
    pyro.set_rng_seed(0)
    return elbo.differentiable_loss(other.model, other.guide, batch).item()


@pytest.mark.parametrize("guide", ["map", "meanfield"])
@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_kernel_and_enumerate_agree_with_missing_entries_and_padding(index, guide):
    model = models(guide=guide)[index]
    batch = ragged_batch(model, index)
    kernel, enumerated = elbo_loss(model, batch, "kernel"), elbo_loss(model, batch, "enumerate")
    assert kernel == pytest.approx(enumerated, rel=1e-10, abs=1e-8)
    if guide == "map":
        # With point parameters the ELBO is -(log-likelihood + log prior).
        expected = model.log_prob(batch.values, batch.lengths).sum() + model.log_prior()
        assert kernel == pytest.approx(-expected.item(), rel=1e-10)


@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_meanfield_point_values_equal_the_given_parameters(index):
    map_model, meanfield_model = models()[index], models(guide="meanfield")[index]
    names = ["initial_probs", "transition_probs"] + {
        0: ["emission_probs"],
        1: ["means", "covariances"],
        2: ["means", "covariances"],
        3: ["rates"],
    }[index]
    for name in names:
        # Dirichlet factors carry a 0.1 concentration floor (100 per entry): means within 1e-3.
        tolerance = 1e-3 if name.endswith("probs") else 1e-10
        assert torch.allclose(getattr(meanfield_model, name), getattr(map_model, name), rtol=0, atol=tolerance), name
    # Free parameters of the point model only; the guide's are excluded.
    assert meanfield_model.num_parameters == map_model.num_parameters
    assert sum(p.numel() for p in meanfield_model.parameters()) > sum(p.numel() for p in map_model.parameters())


@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_meanfield_svi_raises_an_elbo_that_stays_below_the_maximum_likelihood(index):
    """SVI with the mean-field guide raises the ELBO, and the ELBO stays a bound: with proper
    priors, ELBO <= log p(x) = log E_prior p(x | theta) <= max_theta log p(x | theta), which EM
    started at the generating parameters attains (measured after 200 steps: 15 to 85 nats below
    it; an ELBO that dropped a term or mis-scaled the sequence plate would cross it)."""
    import copy

    from inference.fit import fit

    model = models(guide="meanfield")[index]
    batch = model.sample(6, 30, torch.Generator().manual_seed(1))
    elbo = pyro.infer.Trace_ELBO(num_particles=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    pyro.set_rng_seed(0)
    start = -sum(elbo.differentiable_loss(model.model, model.guide, batch).item() for _ in range(10)) / 10
    for _ in range(40):
        optimizer.zero_grad()
        elbo.differentiable_loss(model.model, model.guide, batch).backward()
        optimizer.step()
    end = -sum(elbo.differentiable_loss(model.model, model.guide, batch).item() for _ in range(10)) / 10
    assert end > start + 5, (start, end)
    maximum = copy.deepcopy(models()[index])
    fit(maximum, batch, method="em", max_iterations=200, progress=False)
    with torch.no_grad():
        max_log_likelihood = float(maximum.log_prob(batch.values, batch.lengths).sum())
    assert end < max_log_likelihood, (end, max_log_likelihood)


def test_bartlett_wishart_moments():
    scale_tril = torch.linalg.cholesky(FULL_COVARIANCES[:2])
    law = _BartlettWishart(torch.tensor([4.5, 7.0], dtype=DTYPE), scale_tril=scale_tril)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draws = law.rsample((40000,))
    stderr = (law.variance / 40000).sqrt()
    assert ((draws.mean(0) - law.mean).abs() < 5 * stderr).all()
    assert torch.allclose(draws.var(0), law.variance, rtol=0.05)


def test_kmeans_plus_plus_picks_one_point_per_cluster():
    generator = torch.Generator().manual_seed(0)
    clusters = MEANS.repeat_interleave(200, 0) + 0.05 * torch.randn(600, 2, generator=generator, dtype=DTYPE)
    for seed in range(10):
        centres = _kmeans_plus_plus(clusters, 3, torch.Generator().manual_seed(seed))
        nearest = torch.cdist(centres, MEANS).argmin(-1)
        assert sorted(nearest.tolist()) == [0, 1, 2]
        assert all((clusters == c).all(-1).any() for c in centres)  # centres are data points


def test_initialize_from_data_seeds_gaussian_means_at_the_clusters():
    truth = GaussianHMM.from_params(INITIAL, TRANSITION, MEANS, torch.full((3, 2), 0.1, dtype=DTYPE))
    train = truth.sample(10, 100, torch.Generator().manual_seed(0))
    model = GaussianHMM(3, 2).to(DTYPE)
    model.initialize_from_data(train, torch.Generator().manual_seed(0))
    nearest = torch.cdist(model.means.detach(), MEANS)
    assert sorted(nearest.argmin(-1).tolist()) == [0, 1, 2] and (nearest.min(-1).values < 1.6).all()  # 5 sd
    assert model._seed_points.shape == (1000, 2)
    assert "_seed_points" not in model.state_dict()


@requires_hmmlearn
@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_em_step_on_a_padded_batch_matches_hmmlearn(index):
    hmm = hmmlearn
    model = models()[index]
    config = {**model.config(), "initial_concentration": 1.0, "transition_concentration": 1.0}
    config.update(
        {
            0: {"emission_concentration": 1.0},
            1: {"mean_prior_scale": 1e8, "precision_rate": 1e-300},
            2: {"mean_prior_scale": 1e8, "precision_rate": 1e-300},
            3: {"rate_rate": 1e-300},
        }[index]
    )
    model = type(model)(**config).to(DTYPE)
    model.load_state_dict(models()[index].state_dict())
    batch = models()[index].sample(4, 50, torch.Generator().manual_seed(2))
    lengths = torch.tensor([50, 31, 12, 3])
    common = dict(n_components=3, init_params="", n_iter=1, tol=0.0, implementation="scaling")
    if index == 0:
        ref = hmm.CategoricalHMM(n_features=4, params="ste", **common)
        ref.emissionprob_ = model.emission_probs.detach().numpy()
    elif index in (1, 2):
        ref = hmm.GaussianHMM(
            covariance_type=model.covariance_type,
            params="stmc",
            min_covar=0.0,
            covars_prior=0.0,
            covars_weight=1.0,
            **common,
        )
        ref.means_, ref.covars_ = model.means.detach().numpy(), model.covariances.detach().numpy()
    else:
        ref = hmm.PoissonHMM(params="stl", lambdas_prior=0.0, lambdas_weight=0.0, **common)
        ref.lambdas_ = model.rates.detach().numpy()
    ref.startprob_, ref.transmat_ = model.initial_probs.detach().numpy(), model.transition_probs.detach().numpy()
    sequences = [batch.values[n, :length] for n, length in enumerate(lengths.tolist())]
    stacked = torch.cat(sequences).numpy()
    stacked = stacked.reshape(-1, 1) if stacked.ndim == 1 else stacked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_score = ref.score(stacked, lengths.tolist())
        ref.fit(stacked, lengths.tolist())
    # Garbage (but valid) padding must not matter.
    padded = batch.values.clone()
    padded[1, 31:] = padded[0, 31:] if index == 0 else 1e3
    log_prior_before = model.log_prior().item()
    objective = model.em_step(SequenceBatch(padded, lengths))
    # The objective is the log-likelihood plus log prior at the parameters before the update.
    assert objective.item() == pytest.approx(expected_score + log_prior_before, rel=1e-9)
    assert np.allclose(model.initial_probs.detach().numpy(), ref.startprob_, atol=1e-10)
    assert np.allclose(model.transition_probs.detach().numpy(), ref.transmat_, atol=1e-10)
    if index == 0:
        assert np.allclose(model.emission_probs.detach().numpy(), ref.emissionprob_, atol=1e-10)
    elif index == 3:
        assert np.allclose(model.rates.detach().numpy(), ref.lambdas_, rtol=1e-8)
    else:
        assert np.allclose(model.means.detach().numpy(), ref.means_, rtol=1e-6, atol=1e-8)
        theirs = ref.covars_ if index == 2 else np.diagonal(ref.covars_, axis1=-2, axis2=-1)
        assert np.allclose(model.covariances.detach().numpy(), theirs, rtol=1e-6)


def test_inputs_may_be_numpy_and_models_float32():
    model = models()[0]
    codes = np.array([[0, 1, 3, 2]], dtype=np.int32)
    assert torch.allclose(model.log_prob(codes), model.log_prob(torch.as_tensor(codes).long()))
    for float_model in (
        CategoricalHMM(3, 4),
        GaussianHMM(3, 2),
        GaussianHMM(3, 2, covariance_type="full"),
        PoissonHMM(3, 2),
    ):
        batch = float_model.sample(2, 5, torch.Generator().manual_seed(0))
        objective = float_model.em_step(batch)
        assert torch.isfinite(objective)  # the E-step runs in float64 by design
        assert float_model.log_prob(batch.values.numpy()).dtype == torch.float32


def test_em_with_priors_never_lowers_the_map_objective():
    for model in models():
        model.reset_parameters(torch.Generator().manual_seed(3))
        batch = models()[[type(m) for m in models()].index(type(model))].sample(5, 40, torch.Generator().manual_seed(4))
        objectives = [model.em_step(batch).item() for _ in range(15)]
        assert all(b >= a - 1e-9 * abs(a) for a, b in zip(objectives, objectives[1:])), objectives


@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_filter_is_the_last_smoothed_marginal_of_each_prefix(index):
    model = models()[index]
    batch = ragged_batch(model, 10 + index)
    filtered = model.filter(batch.values, batch.lengths)
    for n, length in enumerate(batch.lengths.tolist()):
        for t in range(length):
            prefix = batch.values[n : n + 1, : t + 1]
            assert torch.allclose(filtered[n, t], model.smooth(prefix)[0, t], atol=1e-12)
        assert (filtered[n, length:] == 0).all()


def test_posterior_path_samples_match_the_smoothed_marginals():
    model = models()[1]
    batch = ragged_batch(model, 3)
    paths = model.sample_states(
        batch.values, batch.lengths, num_samples=4000, generator=torch.Generator().manual_seed(0)
    )
    marginals = model.smooth(batch.values, batch.lengths)
    assert ((paths == -1) == ~batch.mask).all()
    empirical = torch.nn.functional.one_hot(paths.clamp(min=0), 3).to(DTYPE).mean(0) * batch.mask.unsqueeze(-1)
    stderr = (marginals * (1 - marginals) / 4000).sqrt()
    assert ((empirical - marginals).abs() <= 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("index", [2, 3], ids=["full", "poisson"])
def test_forecast_propagates_the_last_filtered_state(index):
    model = models()[index]
    batch = ragged_batch(model, 5)
    forecast = model.forecast(batch.values, 3, lengths=batch.lengths)
    filtered = model.filter(batch.values, batch.lengths)
    last = filtered[torch.arange(3), batch.lengths - 1]
    transition = model.transition_probs.detach()
    expected = torch.stack(
        [last @ transition, last @ transition @ transition, last @ transition @ transition @ transition], 1
    )
    assert torch.allclose(forecast.state_probs, expected, atol=1e-12)
    if index == 3:  # Poisson mixture: mean sum_k p_k lambda_k, variance sum_k p_k (lambda_k + lambda_k^2) - mean^2
        rates = model.rates.detach()
        mean = expected @ rates
        assert torch.allclose(forecast.mean, mean, atol=1e-12)
        assert torch.allclose(
            forecast.covariance.diagonal(dim1=-2, dim2=-1), expected @ (rates + rates**2) - mean**2, atol=1e-10
        )
    else:  # Gaussian mixture covariance: sum_k p_k (Sigma_k + mu_k mu_k^T) - m m^T
        means, covariances = model.means.detach(), model.covariances.detach()
        mean = expected @ means
        second = torch.einsum("nsk,kde->nsde", expected, covariances + means.unsqueeze(-1) * means.unsqueeze(-2))
        assert torch.allclose(forecast.covariance, second - mean.unsqueeze(-1) * mean.unsqueeze(-2), atol=1e-10)


def test_near_uniform_initialisation_stays_within_the_noise_band():
    model = CategoricalHMM(4, 27).to(DTYPE)
    model.set_near_uniform(noise=0.01, generator=torch.Generator().manual_seed(0))
    for probs in (model.initial_probs, model.transition_probs, model.emission_probs):
        size = probs.shape[-1]
        assert torch.allclose(probs.sum(-1), torch.ones((), dtype=DTYPE))
        assert ((probs * size - 1).abs() <= 2.1 * 0.01).all() and not torch.allclose(
            probs, torch.full_like(probs, 1 / size)
        )


@pytest.mark.parametrize("guide", ["map", "meanfield"])
@pytest.mark.parametrize("index", range(4), ids=["categorical", "diag", "full", "poisson"])
def test_config_and_state_dict_rebuild_every_model(index, guide):
    model = models(guide=guide)[index]
    batch = ragged_batch(model, 7)
    if index in (1, 2):
        model.initialize_from_data(batch, torch.Generator().manual_seed(0))  # sets the data-scaled prior buffers
    rebuilt = type(model)(**json.loads(json.dumps(model.config()))).to(DTYPE)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.log_prob(batch.values, batch.lengths), model.log_prob(batch.values, batch.lengths))
    assert torch.equal(rebuilt.log_prior(), model.log_prior())


def test_poisson_accepts_integer_counts():
    model = models()[3]
    counts = model.sample(2, 6, torch.Generator().manual_seed(0)).values
    assert torch.equal(model.log_prob(counts.long()), model.log_prob(counts))
    assert torch.equal(model.log_prob(counts.numpy().astype(np.int32)), model.log_prob(counts))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: models()[3].log_prob(torch.ones(1, 2, 2, dtype=torch.bool)),
            r"nonnegative counts of shape \(N, T, 2\)",
        ),
        (
            lambda: models()[1].log_prob(torch.ones(1, 2, 2, dtype=torch.long)),
            r"float observations of shape \(N, T, 2\)",
        ),
        (
            lambda: models()[0].log_prob(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3])),
            r"lengths: expected shape \(2,\)",
        ),
        (
            lambda: models()[0].log_prob(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 4])),
            r"lengths: expected values in \[0, 3\]",
        ),
        (lambda: models()[0].forecast(torch.zeros(1, 3, dtype=torch.long), 0), "steps: expected a positive int"),
        (
            lambda: models(guide="meanfield")[0].em_step(
                SequenceBatch.from_tensor(torch.zeros(1, 3, dtype=torch.long))
            ),
            "guide='map'",
        ),
        (lambda: GaussianHMM.from_params(INITIAL, TRANSITION, MEANS, -torch.ones(3, 2, dtype=DTYPE)), "covariances"),
        (lambda: PoissonHMM.from_params(INITIAL, TRANSITION, torch.zeros(3, 2, dtype=DTYPE)), "rates"),
        (
            lambda: CategoricalHMM.from_probs(INITIAL[:2], TRANSITION, torch.full((3, 2), 0.5)),
            r"initial: expected shape \(3,\)",
        ),
    ],
)
def test_more_bad_inputs_raise_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("index", [1, 3], ids=["diag", "poisson"])
def test_pyro_enumeration_of_an_unrolled_model_agrees_with_padding(index):
    """An independently written pyro.markov model with masked padded steps, enumerated by
    TraceEnum_ELBO with an empty guide, gives the summed exact log-likelihood."""
    model = models()[index]
    batch = model.sample(3, 6, torch.Generator().manual_seed(4))
    lengths = torch.tensor([6, 3, 1])
    initial, transition = model.initial_probs.detach(), model.transition_probs.detach()
    if index == 1:
        emission = lambda state: dist.Normal(  # noqa: E731
            model.means.detach()[state], model.covariances.detach()[state].sqrt()
        ).to_event(1)
    else:
        emission = lambda state: dist.Poisson(model.rates.detach()[state]).to_event(1)  # noqa: E731

    def unrolled():
        with pyro.plate("sequences", 3, dim=-1):
            state = None
            for t in pyro.markov(range(6)):
                with pyro.poutine.mask(mask=t < lengths):
                    probs = initial if state is None else transition[state]
                    state = pyro.sample(f"s_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
                    pyro.sample(f"x_{t}", emission(state), obs=batch.values[:, t])

    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(unrolled, lambda: None)
    assert -loss == pytest.approx(model.log_prob(batch.values, lengths).sum().item(), rel=1e-10)


def test_docstring_examples_run():
    import doctest

    import zoo.hmm

    failures, attempted = doctest.testmod(zoo.hmm, optionflags=doctest.ELLIPSIS)
    assert attempted >= 8 and failures == 0


# -- EM split into additive statistics (e_step) and their maximiser (m_step) ---------------


def _clone(model):
    copy = type(model)(**model.config()).to(DTYPE)
    copy.load_state_dict(model.state_dict())
    return copy


@pytest.mark.parametrize("case", em_reference.HMM_CASES)
def test_e_step_statistics_of_two_halves_give_the_whole_batch_m_step(case):
    """Statistics are sums over sequences: two halves (one padded, one with missing values)
    add up to the whole batch's, and the M-step from the sum is the whole batch's M-step."""
    model, batch = em_reference.build_case(case)
    whole = model.e_step(batch)
    first, second = model.e_step(batch[:1]), model.e_step(batch[1:])
    assert set(whole) == set(first) == set(second)
    assert {"log_likelihood", "initial_counts", "transition_counts"} <= set(whole)
    summed = {key: first[key] + second[key] for key in whole}
    for key in whole:
        assert torch.allclose(summed[key], whole[key], rtol=1e-12, atol=1e-12), key
    # The halves are not the whole: a statistic that ignored one half would fail above.
    assert not torch.allclose(first["transition_counts"], whole["transition_counts"])
    from_halves, from_whole = _clone(model), _clone(model)
    from_halves.m_step(summed)
    from_whole.m_step(whole)
    for name, value in from_whole.parameter_values().items():
        assert torch.allclose(from_halves.parameter_values()[name], value, rtol=1e-10, atol=1e-12), name
    assert not torch.allclose(from_whole.transition_probs, model.transition_probs)  # the M-step moved something


@pytest.mark.parametrize("case", em_reference.HMM_CASES)
def test_default_em_step_reproduces_the_per_step_posterior_em(case):
    """The contract's em_step (e_step, log prior, m_step) gives the objective and the
    parameters the former per-step-posterior Baum–Welch gave on the same case."""
    reference = json.loads(em_reference.REFERENCE_PATH.read_text())[case]
    model, batch = em_reference.build_case(case)
    assert type(model).em_step is SequenceModel.em_step  # no family override left
    objective = model.em_step(batch)
    assert objective.item() == pytest.approx(reference["objective"], rel=1e-12)
    for name, value in em_reference.state_of(model).items():
        assert np.allclose(value, reference["after"][name], rtol=1e-9, atol=1e-12), name


def test_e_step_counts_are_the_expected_counts_over_all_state_paths():
    """Expected initial, transition and emission counts by enumerating every state path."""
    model = models()[0]
    codes = torch.tensor([[0, 3, 3, 1, 2], [2, 2, 0, 1, 1]])
    statistics = model.e_step(SequenceBatch(codes, torch.tensor([5, 4])))
    k, v = model.num_states, model.num_symbols
    initial, transition, emission = (
        x.detach() for x in (model.initial_probs, model.transition_probs, model.emission_probs)
    )
    expected = {
        "initial_counts": torch.zeros(k, dtype=DTYPE),
        "transition_counts": torch.zeros(k, k, dtype=DTYPE),
        "emission_counts": torch.zeros(k, v, dtype=DTYPE),
    }
    log_likelihood = 0.0
    for sequence in (codes[0], codes[1, :4]):
        joints = {}
        for path in itertools.product(range(k), repeat=len(sequence)):
            p = initial[path[0]] * emission[path[0], sequence[0]]
            for t in range(1, len(sequence)):
                p = p * transition[path[t - 1], path[t]] * emission[path[t], sequence[t]]
            joints[path] = p
        total = sum(joints.values())
        log_likelihood += float(total.log())
        for path, p in joints.items():
            weight = p / total
            expected["initial_counts"][path[0]] += weight
            for t in range(1, len(path)):
                expected["transition_counts"][path[t - 1], path[t]] += weight
            for t, symbol in enumerate(sequence.tolist()):
                expected["emission_counts"][path[t], symbol] += weight
    assert statistics["log_likelihood"].item() == pytest.approx(log_likelihood, rel=1e-12)
    for key, value in expected.items():
        assert torch.allclose(statistics[key], value, atol=1e-12), key
