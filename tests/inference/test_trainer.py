"""The trainer's hooks and options: each test fails if its hook is ignored."""

from __future__ import annotations

import dataclasses
import math
import signal

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroParam

from inference import SequenceBatch, SequenceModel, sequence_plate
from inference.fit import (
    EMOptions,
    KLAnnealing,
    LossOutput,
    NUTSOptions,
    ParameterAverage,
    RunWriter,
    SVIOptions,
    fit,
    make_elbo,
)
from inference.rundir import RunDirectory
from inference.scoring import score
from inference.training import gains_accelerating
from tests.inference.test_fit import (
    ConjugateGaussian,
    GaussianMixture,
    PointGaussian,
    ScriptedEM,
    _gaussian_data,
    _mixture_data,
)


def _conjugate_posterior(data: SequenceBatch, prior_scale=2.0, noise_scale=1.0) -> tuple[float, float]:
    """Exact posterior mean and sd of ``mu`` in :class:`ConjugateGaussian` (prior mean 0)."""
    values = data.values[data.mask]
    precision = prior_scale**-2 + len(values) / noise_scale**2
    return float(values.sum()) / noise_scale**2 / precision, precision**-0.5


class AnnealedMAP(SequenceModel):
    """``mu ~ N(0, 0.5)`` with a Delta guide, ``x ~ N(mu, 1)``; ``annealing_factor``
    scales the prior (in model and guide). The ELBO is deterministic:
    ``a * log N(loc | 0, 0.5) + sum_t log N(x_t | loc, 1)``, maximised at
    ``loc = sum x / (n + 4 a)``."""

    family = "toy_annealed"

    def __init__(self) -> None:
        super().__init__()
        self.loc = PyroParam(torch.tensor(0.0))

    def config(self):
        return {}

    def model(self, batch, annealing_factor: float = 1.0):
        with pyro.poutine.scale(scale=annealing_factor):
            mu = pyro.sample("mu", dist.Normal(0.0, 0.5))
        with sequence_plate(batch):
            pyro.sample(
                "obs", dist.Normal(mu, 1.0).expand(batch.values.shape).mask(batch.mask).to_event(1), obs=batch.values
            )

    def guide(self, batch, annealing_factor: float = 1.0):
        with pyro.poutine.scale(scale=annealing_factor):
            pyro.sample("mu", dist.Delta(self.loc))

    def log_prob(self, values, lengths=None):
        batch = SequenceBatch.from_tensor(values, lengths)
        return (dist.Normal(self.loc, 1.0).log_prob(values) * batch.mask).sum(-1)


# -- loss, step_kwargs -------------------------------------------------------------
def test_kl_annealing_schedule_values():
    schedule = KLAnnealing(start=0.25, epochs=3)
    assert [schedule(epoch, 0)["annealing_factor"] for epoch in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="start"):
        KLAnnealing(start=1.5)


def test_annealing_changes_the_trained_result_and_the_unannealed_objective_is_logged():
    data = _gaussian_data(num_sequences=10, length=20, loc=1.5)
    values = data.values[data.mask]
    n, total = len(values), float(values.sum())
    options = dict(max_epochs=400, learning_rate=0.05, lr_schedule="constant", progress=False)
    plain = AnnealedMAP()
    fit(plain, data, **options)
    annealed = AnnealedMAP()
    result = fit(annealed, data, step_kwargs=KLAnnealing(start=0.01, epochs=10**9), **options)
    assert float(plain.loc.detach()) == pytest.approx(total / (n + 4), abs=2e-4)
    assert float(annealed.loc.detach()) == pytest.approx(total / (n + 4 * 0.01), abs=2e-4)
    # The logged objective is the unannealed ELBO at the (converged) parameters, not the annealed one.
    loc = annealed.loc.detach().double()
    unannealed = float(dist.Normal(0.0, 0.5).log_prob(loc) + dist.Normal(loc, 1.0).log_prob(values.double()).sum())
    assert result.history[-1]["objective"] == pytest.approx(unannealed, abs=1e-3)
    annealed_value = unannealed - 0.99 * float(dist.Normal(0.0, 0.5).log_prob(loc))
    assert abs(result.history[-1]["objective"] - annealed_value) > 1.0


def test_custom_loss_is_the_only_thing_minimised():
    data = _gaussian_data(loc=1.5)
    seen_kwargs = []

    def pull_to_three(model, batch, **kwargs):
        seen_kwargs.append(kwargs)
        return (model.loc - 3.0) ** 2

    model = PointGaussian()
    result = fit(
        model,
        data,
        loss=pull_to_three,
        step_kwargs=lambda epoch, step: {"epoch_seen": epoch},
        max_epochs=300,
        learning_rate=0.05,
        lr_schedule="constant",
        progress=False,
    )
    # The ELBO's optimum is the data mean (about 1.5): only the custom loss pulls loc to 3.
    assert float(model.loc.detach()) == pytest.approx(3.0, abs=1e-3)
    assert result.history[-1]["objective"] == pytest.approx(0.0, abs=1e-5)  # objective = -loss
    assert seen_kwargs[-1] == {"epoch_seen": 299}


class OwnLossGaussian(PointGaussian):
    """A family with its own ``loss``: minimises (loc - 2)^2, reports a fixed objective."""

    def loss(self, batch, scale: float = 1.0):
        return LossOutput(loss=scale * (self.loc - 2.0) ** 2, objective=-42.0)


def test_model_loss_and_loss_output():
    model = OwnLossGaussian()
    result = fit(
        model,
        _gaussian_data(),
        loss="model",
        step_kwargs=lambda epoch, step: {"scale": 2.0},
        max_epochs=200,
        learning_rate=0.05,
        lr_schedule="constant",
        progress=False,
    )
    assert float(model.loc.detach()) == pytest.approx(2.0, abs=1e-3)
    assert {record["objective"] for record in result.history} == {-42.0}
    with pytest.raises(ValueError, match="loss"):
        fit(PointGaussian(), _gaussian_data(), loss="model", progress=False)
    with pytest.raises(TypeError, match="LossOutput"):
        fit(PointGaussian(), _gaussian_data(), loss=lambda model, batch: 1.0, progress=False)


class OwnLossByDefault(OwnLossGaussian):
    def fit_defaults(self, method):
        return dataclasses.replace(super().fit_defaults(method), loss="model")


def test_auto_loss_is_the_familys_own_where_it_names_it():
    """``loss="auto"`` (the default) uses ``model.loss`` for a family whose ``fit_defaults``
    names ``"model"`` (its objective -42 is logged), and the ELBO for one that does not."""
    result = fit(OwnLossByDefault(), _gaussian_data(), max_epochs=3, progress=False)
    assert {record["objective"] for record in result.history} == {-42.0}
    result = fit(OwnLossGaussian(), _gaussian_data(), max_epochs=3, progress=False)
    assert -42.0 not in {record["objective"] for record in result.history}


@pytest.mark.parametrize(
    "elbo",
    [
        TraceMeanField_ELBO(),
        TraceGraph_ELBO(num_particles=4),
        RenyiELBO(alpha=0.5, num_particles=4),
        Trace_ELBO(num_particles=4),
    ],
    ids=["meanfield", "tracegraph", "renyi", "trace"],
)
def test_any_elbo_instance_fits_the_conjugate_posterior(elbo):
    # TraceGraph_ELBO and RenyiELBO have no differentiable_loss: the trainer uses their loss_and_grads.
    data = _gaussian_data(num_sequences=8, length=15, loc=1.5)
    model = ConjugateGaussian()
    fit(model, data, loss=elbo, max_epochs=600, learning_rate=0.03, final_learning_rate=0.003, progress=False)
    mean, sd = _conjugate_posterior(data)
    assert float(model.guide_loc.detach()) == pytest.approx(mean, abs=0.03)
    if isinstance(elbo, RenyiELBO):
        # A Renyi (alpha < 1) bound with few particles trains a wider, mass-covering q; it still leaves
        # the initial scale 1.0 far behind, so its gradient reached the scale.
        assert 0.9 * sd < float(model.guide_scale.detach()) < 0.5
    else:
        assert float(model.guide_scale.detach()) == pytest.approx(sd, rel=0.3)
    assert make_elbo(model, elbo) is elbo


def test_elbo_and_loss_keywords_are_one_option():
    with pytest.raises(ValueError, match="once"):
        fit(PointGaussian(), _gaussian_data(), elbo="trace", loss="trace", progress=False)
    assert isinstance(make_elbo(PointGaussian(), "meanfield"), TraceMeanField_ELBO)


# -- learning rate ---------------------------------------------------------------------
def _lrs(**options) -> list[float]:
    result = fit(PointGaussian(), _gaussian_data(), progress=False, **options)
    return [record["lr"] for record in result.history]


def test_learning_rate_schedules_are_read_back():
    lr, final = 0.1, 0.01
    cosine = _lrs(max_epochs=8, learning_rate=lr, final_learning_rate=final, lr_schedule="cosine")
    assert cosine == pytest.approx([final + (lr - final) * 0.5 * (1 + math.cos(math.pi * e / 8)) for e in range(8)])
    warm = _lrs(max_epochs=8, learning_rate=lr, lr_schedule="warmup_cosine", warmup_epochs=3)
    expected = [lr * (e + 1) / 4 for e in range(3)] + [lr * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(5)]
    assert warm == pytest.approx(expected)
    assert _lrs(max_epochs=5, learning_rate=lr, lr_schedule="constant") == pytest.approx([lr] * 5)
    exponential = _lrs(max_epochs=4, learning_rate=lr, final_learning_rate=final)
    assert exponential == pytest.approx([lr * (final / lr) ** (e / 4) for e in range(4)])
    step = _lrs(
        max_epochs=6,
        learning_rate=lr,
        lr_schedule=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5),
    )
    assert step == pytest.approx([lr, lr, lr / 2, lr / 2, lr / 4, lr / 4])
    with pytest.raises(ValueError, match="lr_schedule"):
        _lrs(lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_epochs"):
        _lrs(lr_schedule="warmup_cosine")


class FlatScore(PointGaussian):
    """Its validation score never changes (log_prob ignores the parameter)."""

    def log_prob(self, values, lengths=None):
        return torch.zeros(values.shape[0])


def test_plateau_schedule_halves_the_rate_when_validation_stalls():
    data = _gaussian_data()
    result = fit(
        FlatScore(),
        data,
        valid=data,
        max_epochs=12,
        learning_rate=0.1,
        lr_schedule="plateau",
        patience=6,
        progress=False,
    )
    lrs = [record["lr"] for record in result.history]
    # ReduceLROnPlateau(patience=3): the first score is the best; after more than 3 bad epochs the rate halves.
    assert lrs[:5] == pytest.approx([0.1] * 5)
    assert lrs[5] == pytest.approx(0.05)
    assert result.stopped == "early_stopping" and len(lrs) == 7


def test_weight_decay_moves_the_fit_from_the_mean_to_the_map():
    # Unit-variance Gaussian data: the maximum-likelihood loc is the sample mean, and weight decay
    # lambda (a N(0, 1/lambda) prior) moves it to the MAP sum x / (n + lambda).
    data = _gaussian_data(loc=1.5)
    values = data.values[data.mask]
    mean, map_loc = float(values.mean()), float(values.sum() / (values.numel() + 100.0))
    plain, decayed = PointGaussian(), PointGaussian()
    options = dict(max_epochs=400, learning_rate=0.05, final_learning_rate=1e-4, progress=False)
    fit(plain, data, **options)
    fit(decayed, data, weight_decay=100.0, **options)
    assert float(plain.loc.detach()) == pytest.approx(mean, abs=0.01)
    assert float(decayed.loc.detach()) == pytest.approx(map_loc, abs=0.01)
    assert mean - map_loc > 0.3  # the two are far apart on this data


def test_weight_decay_is_a_gaussian_prior_even_when_the_clip_binds():
    # The prior's gradient joins the data's before the clip, so the fixed point is the MAP
    # sum x / (n + lambda) however small clip_norm is. (Decay added after the clip, Adam's own,
    # would stop where lambda * loc equals the clipped gradient: loc <= clip_norm / lambda = 0.01.)
    data = _gaussian_data(loc=1.5)
    values = data.values[data.mask]
    map_loc = float(values.sum() / (values.numel() + 100.0))
    model = PointGaussian()
    fit(
        model,
        data,
        weight_decay=100.0,
        clip_norm=1.0,
        max_epochs=400,
        learning_rate=0.05,
        final_learning_rate=1e-4,
        progress=False,
    )
    assert float(model.loc.detach()) == pytest.approx(map_loc, abs=0.01)
    assert map_loc > 0.5


# -- gradient and stop hooks, callbacks, writer ---------------------------------------
def test_gradient_hook_sees_unclipped_gradients_and_its_change_takes_effect():
    data = _gaussian_data(loc=1.5)
    norms = []

    def record_norm(parameters):
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))

    fit(PointGaussian(), data, max_epochs=3, clip_norm=1e-3, gradient_hook=record_norm, progress=False)
    assert len(norms) == 3 and min(norms) > 1.0  # far above clip_norm: the hook runs before the clip

    def zero(parameters):
        for parameter in parameters:
            parameter.grad.zero_()

    model = PointGaussian(init_loc=0.25)
    fit(model, data, max_epochs=20, gradient_hook=zero, progress=False)
    assert float(model.loc.detach()) == 0.25  # no gradient reached the optimiser


def test_stop_hook_can_stop_and_can_overrule():
    data = _gaussian_data()
    decisions = []

    def stop_at_three(decision):
        decisions.append(decision)
        return len(decisions) >= 3

    result = fit(PointGaussian(), data, max_epochs=50, stop_hook=stop_at_three, progress=False)
    assert result.stopped == "stop_hook" and len(result.history) == 3
    assert decisions == [False, False, False]
    # EM: a hook that never agrees to stop overrules convergence.
    converging = [0.0, 10.0] + [10.0] * 50
    result = fit(
        ScriptedEM(converging),
        SequenceBatch.from_tensor(torch.zeros(1, 10)),
        method="em",
        patience=2,
        max_iterations=20,
        stop_hook=lambda decision: False,
        progress=False,
    )
    assert result.stopped == "max_steps" and len(result.history) == 20
    result = fit(
        ScriptedEM(converging),
        SequenceBatch.from_tensor(torch.zeros(1, 10)),
        method="em",
        patience=2,
        max_iterations=20,
        stop_hook=lambda decision: True,
        progress=False,
    )
    assert result.stopped == "stop_hook" and len(result.history) == 1


def test_step_callbacks_run_once_per_optimiser_step():
    data = _gaussian_data(num_sequences=10)
    steps = []
    fit(PointGaussian(), data, max_epochs=3, batch_size=4, step_callbacks=[steps.append], progress=False)
    assert [s["step"] for s in steps] == list(range(1, 10))  # 3 epochs x 3 mini-batches
    assert [s["epoch"] for s in steps] == [0] * 3 + [1] * 3 + [2] * 3
    assert all(math.isfinite(s["loss"]) and s["objective"] == pytest.approx(-s["loss"]) for s in steps)


class SilentWriter(RunWriter):
    """A rank-other-than-0 writer: records what it was asked to write, writes nothing."""

    def __init__(self, run=None):
        super().__init__(run)
        self.calls = []

    def save_checkpoint(self, tensors, state):
        self.calls.append(("checkpoint", state["step"]))

    def save_model(self, model):
        self.calls.append(("model", None))


def test_every_write_goes_through_the_writer(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    writer = SilentWriter(run)
    fit(PointGaussian(), _gaussian_data(), max_epochs=5, checkpoint_every=2, writer=writer, progress=False)
    assert writer.calls == [("checkpoint", 2), ("checkpoint", 4), ("checkpoint", 5), ("model", None)]
    assert list(run.path.iterdir()) == []
    # The default writer writes into the checkpoint run directory.
    fit(PointGaussian(), _gaussian_data(), max_epochs=2, checkpoint=run, progress=False)
    assert {p.name for p in run.path.iterdir()} >= {"checkpoint.json", "checkpoint.safetensors"}


# -- options records --------------------------------------------------------------------
def test_options_records_match_keywords_and_keywords_override():
    data = _gaussian_data()
    by_keywords = fit(PointGaussian(), data, max_epochs=4, learning_rate=0.2, progress=False)
    record = SVIOptions(max_epochs=4, learning_rate=0.2, progress=False)
    by_record = fit(PointGaussian(), data, options=record)
    assert [r["objective"] for r in by_record.history] == [r["objective"] for r in by_keywords.history]
    overridden = fit(PointGaussian(), data, options=record, max_epochs=2)
    assert len(overridden.history) == 2 and record.max_epochs == 4
    with pytest.raises(TypeError, match="EMOptions"):
        fit(PointGaussian(), data, method="em", options=record)
    with pytest.raises(ValueError, match="max_iterations"):
        fit(GaussianMixture(), _mixture_data(), method="em", options=EMOptions(max_iterations=0))
    assert NUTSOptions().num_chains == 4


# -- EM ------------------------------------------------------------------------------------
class SplitMixture(GaussianMixture):
    """The mixture's EM as the contract's e_step / m_step (additive statistics)."""

    def e_step(self, batch):
        values, observed = torch.nan_to_num(batch.values), batch.mask
        log_joint = self._log_joint(values)
        log_marginal = log_joint.logsumexp(-1)
        responsibilities = (log_joint - log_marginal.unsqueeze(-1)).exp() * observed.unsqueeze(-1)
        return {
            "log_likelihood": (log_marginal * observed).sum(),
            "counts": responsibilities.sum((0, 1)),
            "sums": (responsibilities * values.unsqueeze(-1)).sum((0, 1)),
        }

    def m_step(self, statistics):
        self.guide_locs = statistics["sums"] / (statistics["counts"] + self.prior_scale**-2)
        self.weights = statistics["counts"] / statistics["counts"].sum()

    def log_prior(self):
        return self.prior().log_prob(self.guide_locs)


def test_statistics_hook_sums_statistics_of_another_shard():
    data = _mixture_data(num_sequences=8)
    first, second = data[:4], data[4:]
    reference = SplitMixture(init_locs=(-0.5, 0.5))
    full = fit(reference, data, method="em", max_iterations=15, tolerance=0.0, progress=False)
    # As a two-process all-reduce would: each iteration adds the other half's statistics.
    sharded = SplitMixture(init_locs=(-0.5, 0.5))

    def all_reduce(statistics):
        other = sharded.e_step(second)
        return {name: value + other[name] for name, value in statistics.items()}

    result = fit(
        sharded, first, method="em", max_iterations=15, tolerance=0.0, statistics_hook=all_reduce, progress=False
    )
    assert [r["objective"] for r in result.history] == pytest.approx([r["objective"] for r in full.history], rel=1e-12)
    assert torch.allclose(sharded.guide_locs, reference.guide_locs, rtol=1e-10)
    # The split path agrees with the family's own em_step.
    classic = GaussianMixture(init_locs=(-0.5, 0.5))
    classic_result = fit(classic, data, method="em", max_iterations=15, tolerance=0.0, progress=False)
    assert [r["objective"] for r in classic_result.history] == pytest.approx(
        [r["objective"] for r in full.history], rel=1e-12
    )
    with pytest.raises(ValueError, match="statistics_hook"):
        fit(GaussianMixture(), data, method="em", statistics_hook=lambda s: s, progress=False)


def test_gains_accelerating():
    assert gains_accelerating([1.0, 1.1, 1.3, 1.6], noise=0.0)
    assert not gains_accelerating([1.6, 1.3, 1.1, 1.0], noise=0.0)
    assert not gains_accelerating([1e-20, 3e-20, 5e-20, 9e-20], noise=1e-15)  # rising, but only rounding noise
    assert not gains_accelerating([1.0], noise=0.0)


def test_em_does_not_stop_on_a_plateau_whose_gains_rise():
    data = SequenceBatch.from_tensor(torch.zeros(1, 10))  # 10 observed steps
    # Leaving a saddle: gains far below tolerance but growing by 10% an iteration, until the jump;
    # then a geometric approach to the optimum.
    objectives, value, gain = [0.0], 0.0, 1e-9
    for _ in range(60):
        value += gain
        gain *= 1.1
        objectives.append(value)
    plateau_end = len(objectives)
    step = 50.0
    for _ in range(200):
        value += step
        step *= 0.5
        objectives.append(value)
    result = fit(
        ScriptedEM(objectives), data, method="em", tolerance=1e-6, patience=20, max_iterations=500, progress=False
    )
    assert result.stopped == "converged"
    assert len(result.history) > plateau_end + 20  # the old rule stopped at iteration 21, on the plateau


class RefusesToConverge(ScriptedEM):
    def em_converged_check(self):
        return False


def test_em_converged_check_can_refuse_convergence():
    data = SequenceBatch.from_tensor(torch.zeros(1, 10))
    result = fit(
        RefusesToConverge([0.0, 10.0] + [10.0] * 100), data, method="em", patience=3, max_iterations=30, progress=False
    )
    assert result.stopped == "max_steps" and len(result.history) == 30


# -- resume at or past the limit (issue 15: it used to hang) ----------------------------------
class _Interrupt(Exception):
    pass


def _raise_at(step):
    def callback(record):
        if record["step"] == step:
            raise _Interrupt

    return callback


@pytest.fixture
def fails_after_10_seconds():
    def handler(signum, frame):
        raise TimeoutError("fit did not return: the resume loop hangs")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_em_resume_at_or_past_max_iterations_returns_at_once(tmp_path, fails_after_10_seconds):
    data = _mixture_data()
    run = RunDirectory.create(tmp_path / "run")
    options = dict(method="em", tolerance=0.0, patience=1000, progress=False, checkpoint_every=10)
    with pytest.raises(_Interrupt):  # killed mid-run, after the checkpoint at iteration 20
        fit(
            GaussianMixture(init_locs=(-0.5, 0.5)),
            data,
            max_iterations=100,
            checkpoint=run,
            callbacks=[_raise_at(20)],
            **options,
        )
    for max_iterations in (10, 20):
        resumed = GaussianMixture(init_locs=(-0.5, 0.5))
        result = fit(
            resumed, data, max_iterations=max_iterations, checkpoint=RunDirectory.open(run.path), resume=True, **options
        )
        assert result.stopped == "max_steps"
        assert len(result.history) == 20 and result.restarts == [result.history[-1]["objective"]]


def test_svi_resume_at_or_past_max_epochs_returns_at_once(tmp_path, fails_after_10_seconds):
    data = _gaussian_data()
    run = RunDirectory.create(tmp_path / "run")
    with pytest.raises(_Interrupt):
        fit(
            PointGaussian(),
            data,
            max_epochs=100,
            checkpoint=run,
            checkpoint_every=10,
            callbacks=[_raise_at(20)],
            progress=False,
        )
    result = fit(
        PointGaussian(), data, max_epochs=10, checkpoint=RunDirectory.open(run.path), resume=True, progress=False
    )
    assert result.stopped == "max_steps" and len(result.history) == 20


# -- validation through score -------------------------------------------------------------
class NoisyBound(PointGaussian):
    """A stochastic bound: the exact log-likelihood minus |noise| drawn from torch's RNG."""

    likelihood_kind = "noisy bound"

    def log_prob_batch(self, batch, *, num_particles=1):
        exact = self.log_prob(batch.values, batch.lengths)
        return exact - torch.randn(num_particles, batch.num_sequences).abs().mean(0)


def test_validation_of_a_stochastic_bound_is_reproducible():
    data = _gaussian_data()
    runs = [
        fit(
            NoisyBound(),
            data,
            valid=data,
            max_epochs=15,
            learning_rate=0.05,
            patience=3,
            progress=False,
            valid_num_particles=2,
        )
        for _ in range(2)
    ]
    assert [r["valid_log_prob_per_step"] for r in runs[0].history] == [
        r["valid_log_prob_per_step"] for r in runs[1].history
    ]
    model = NoisyBound()
    assert score(model, data, seed=3).log_prob == score(model, data, seed=3).log_prob
    assert score(model, data, seed=3).log_prob != score(model, data, seed=4).log_prob


def test_near_duplicate_states():
    from inference import near_duplicate_states

    distinct = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert not near_duplicate_states(distinct)
    nearly = distinct.clone()
    nearly[2] = nearly[0] + torch.tensor([1e-3, -1e-3, 0.0])
    assert near_duplicate_states(nearly) and not near_duplicate_states(nearly, tolerance=1e-4)
    assert not near_duplicate_states(distinct[:1])


# -- parameter averaging -------------------------------------------------------------
def test_parameter_average_is_closer_to_the_optimum_than_the_noisy_last_iterate():
    # Mini-batch SGD on a constant, large learning rate leaves the point estimate bouncing
    # around the full-data maximum (the mean of the observed values); the averaged iterate
    # must sit much closer to it. An average that tracked the current value would not.
    data = _gaussian_data(num_sequences=40, length=10)
    optimum = float(data.values[data.mask].mean())
    iterate_errors, averaged_errors = [], []
    for seed in range(8):
        model = PointGaussian()
        average = ParameterAverage(model, decay=0.95)
        fit(
            model,
            data,
            max_epochs=30,
            batch_size=2,
            learning_rate=0.05,
            lr_schedule="constant",
            step_callbacks=[average],
            progress=False,
            seed=seed,
        )
        iterate = float(model.loc.detach())
        with average.swapped_in():
            averaged_errors.append((float(model.loc.detach()) - optimum) ** 2)
        assert float(model.loc.detach()) == iterate  # the last iterate is back after the block
        iterate_errors.append((iterate - optimum) ** 2)
    assert sum(averaged_errors) < 0.25 * sum(iterate_errors)


def test_fit_with_average_decay_ends_with_the_average_of_its_own_iterates():
    # Averaging does not change the training path: the same seed with and without it passes
    # through the same iterates, and a ParameterAverage callback over them is what fit ends with.
    data = _gaussian_data(num_sequences=40, length=10)
    options = dict(max_epochs=5, batch_size=2, learning_rate=0.05, lr_schedule="constant", progress=False, seed=3)
    plain, averaged = PointGaussian(), PointGaussian()
    watcher = ParameterAverage(plain, decay=0.9)
    fit(plain, data, step_callbacks=[watcher], **options)
    fit(averaged, data, average_decay=0.9, **options)
    assert float(averaged.loc.detach()) != float(plain.loc.detach())
    with watcher.swapped_in():
        assert torch.equal(averaged.loc.detach(), plain.loc.detach())
    with pytest.raises(ValueError, match="average_decay"):
        fit(PointGaussian(), data, average_decay=1.0, progress=False)


def test_parameter_average_weights_and_restores_exactly():
    layer = torch.nn.Linear(2, 1)
    average = ParameterAverage(layer, decay=0.75)
    with pytest.raises(RuntimeError, match="no update"):
        with average.swapped_in():
            pass
    values = [torch.full((1, 2), 4.0), torch.full((1, 2), 8.0), torch.full((1, 2), 0.0)]
    for value in values:
        with torch.no_grad():
            layer.weight.copy_(value)
        average({})
    expected = 0.75 * (0.75 * 4.0 + 0.25 * 8.0) + 0.25 * 0.0  # the first update starts the average
    with average.swapped_in() as module:
        assert module is layer
        assert torch.equal(layer.weight.detach(), torch.full((1, 2), expected))
    assert torch.equal(layer.weight.detach(), torch.zeros(1, 2))
    for decay in (0.0, 1.0, True, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            ParameterAverage(layer, decay)
