"""Tests of the one fit loop on toy models with known answers."""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.nn import PyroParam
from torch.distributions import constraints

from inference import SequenceBatch, SequenceModel, sequence_plate
from inference.fit import FitResult, fit, make_elbo
from inference.rundir import RunDirectory
from inference.scoring import score


def _scalar(tensor: torch.Tensor) -> float:
    return tensor.detach().item()


# -- toy models ----------------------------------------------------------------
def _observed(batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values with NaN set to 0, (N, T) observed mask)``."""
    observed = batch.mask & ~torch.isnan(batch.values)
    return torch.nan_to_num(batch.values), observed


class ConjugateGaussian(SequenceModel):
    """``mu ~ N(prior_loc, prior_scale)``, ``x_{n,t} ~ N(mu, noise_scale)``; mean-field Normal guide."""

    family = "toy_conjugate"

    def __init__(self, prior_loc: float = 0.0, prior_scale: float = 2.0, noise_scale: float = 1.0) -> None:
        super().__init__()
        self.prior_loc, self.prior_scale, self.noise_scale = prior_loc, prior_scale, noise_scale
        self.guide_loc = PyroParam(torch.tensor(0.0))
        self.guide_scale = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def config(self):
        return {"prior_loc": self.prior_loc, "prior_scale": self.prior_scale, "noise_scale": self.noise_scale}

    def model(self, batch):
        zero = torch.zeros((), device=batch.device)
        mu = pyro.sample("mu", dist.Normal(zero + self.prior_loc, zero + self.prior_scale))
        values, observed = _observed(batch)
        with sequence_plate(batch):
            pyro.sample(
                "obs", dist.Normal(mu, self.noise_scale).expand(values.shape).mask(observed).to_event(1), obs=values
            )

    def guide(self, batch):
        pyro.sample("mu", dist.Normal(self.guide_loc, self.guide_scale))

    def log_prob(self, values, lengths=None):
        batch = SequenceBatch.from_tensor(values, lengths)
        values, observed = _observed(batch)
        return (dist.Normal(self.guide_loc, self.noise_scale).log_prob(values) * observed).sum(-1)


class PointGaussian(SequenceModel):
    """``x_{n,t} ~ N(mu, 1)`` with ``mu`` a point parameter; the guide samples nothing."""

    family = "toy_point"

    def __init__(self, init_loc: float = 0.0) -> None:
        super().__init__()
        self.init_loc = init_loc
        self.loc = PyroParam(torch.tensor(init_loc))

    def config(self):
        return {"init_loc": self.init_loc}

    def model(self, batch):
        values, observed = _observed(batch)
        with sequence_plate(batch):
            pyro.sample("obs", dist.Normal(self.loc, 1.0).expand(values.shape).mask(observed).to_event(1), obs=values)

    def guide(self, batch):
        pass

    def log_prob(self, values, lengths=None):
        batch = SequenceBatch.from_tensor(values, lengths)
        values, observed = _observed(batch)
        return (dist.Normal(self.loc, 1.0).log_prob(values) * observed).sum(-1)


class GaussianMixture(SequenceModel):
    """Two-component mixture over steps: ``locs ~ N(0, prior_scale)``,
    ``z_{n,t} ~ Cat(weights)`` (enumerated), ``x_{n,t} ~ N(locs[z], 1)``.

    ``locs`` has a Delta guide; ``weights`` is a point parameter of the model.
    ``em_step`` is the closed-form MAP EM update.
    """

    family = "toy_mixture"
    has_enumerated_sites = True
    supports_em = True

    def __init__(self, init_locs=(-1.0, 1.0), prior_scale: float = 10.0) -> None:
        super().__init__()
        self.init_locs, self.prior_scale = list(init_locs), prior_scale
        self.weights = PyroParam(torch.full((2,), 0.5, dtype=torch.float64), constraint=constraints.simplex)
        self.guide_locs = PyroParam(torch.tensor(self.init_locs, dtype=torch.float64))

    def config(self):
        return {"init_locs": self.init_locs, "prior_scale": self.prior_scale}

    def prior(self):
        return dist.Normal(torch.zeros_like(self.guide_locs), self.prior_scale).to_event(1)

    @config_enumerate
    def model(self, batch):
        locs = pyro.sample("locs", self.prior())
        values, observed = _observed(batch)
        with sequence_plate(batch, dim=-2), pyro.plate("time", batch.max_length, dim=-1):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Normal(locs[z], 1.0).mask(observed), obs=values)

    def guide(self, batch):
        pyro.sample("locs", dist.Delta(self.guide_locs).to_event(1))

    def _log_joint(self, values):
        # (N, T, K): log w_k + log N(x_{n,t} | loc_k, 1)
        return self.weights.log() + dist.Normal(self.guide_locs, 1.0).log_prob(values.unsqueeze(-1))

    def log_prob(self, values, lengths=None):
        batch = SequenceBatch.from_tensor(values, lengths)
        values, observed = _observed(batch)
        return (self._log_joint(values).logsumexp(-1) * observed).sum(-1)

    def em_step(self, batch):
        with torch.no_grad():
            values, observed = _observed(batch)
            log_joint = self._log_joint(values)
            log_marginal = log_joint.logsumexp(-1)
            objective = (log_marginal * observed).sum() + self.prior().log_prob(self.guide_locs)
            responsibilities = (log_joint - log_marginal.unsqueeze(-1)).exp() * observed.unsqueeze(-1)
            counts = responsibilities.sum((0, 1))
            sums = (responsibilities * values.unsqueeze(-1)).sum((0, 1))
            self.guide_locs = sums / (counts + self.prior_scale**-2)
            self.weights = counts / counts.sum()
        return objective

    def reset_parameters(self, generator=None):
        locs = torch.randn(2, generator=generator, dtype=torch.float64) * 3
        self.guide_locs = locs.to(self.guide_locs.device)
        self.weights = torch.full_like(self.weights, 0.5)


class SaddleRestartMixture(GaussianMixture):
    """Every restart after the first starts at the symmetric saddle (equal locs, equal weights)."""

    def reset_parameters(self, generator=None):
        self.guide_locs = torch.zeros_like(self.guide_locs)
        self.weights = torch.full_like(self.weights, 0.5)


class ScriptedEM(SequenceModel):
    """``em_step`` returns a scripted sequence of objectives (to test the stopping rule)."""

    family = "toy_scripted"
    supports_em = True

    def __init__(self, objectives) -> None:
        super().__init__()
        self.objectives = list(objectives)
        self.calls = 0
        self.value = torch.nn.Parameter(torch.zeros(()))

    def config(self):
        return {"objectives": self.objectives}

    def log_prob(self, values, lengths=None):
        return torch.zeros(values.shape[0])

    def em_step(self, batch):
        objective = self.objectives[min(self.calls, len(self.objectives) - 1)]
        self.calls += 1
        return torch.tensor(objective, dtype=torch.float64)


def _gaussian_data(num_sequences=10, length=20, loc=1.5, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    values = loc + torch.randn(num_sequences, length, generator=generator, dtype=dtype)
    lengths = torch.randint(length // 2, length + 1, (num_sequences,), generator=generator)
    lengths[0] = length
    return SequenceBatch.from_tensor(values, lengths)


def _mixture_data(num_sequences=8, length=25, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = (torch.rand(num_sequences, length, generator=generator) < 0.7).long()
    locs = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    values = locs[z] + torch.randn(num_sequences, length, generator=generator, dtype=torch.float64)
    return SequenceBatch.from_tensor(values)


# -- SVI -------------------------------------------------------------------------
def test_svi_recovers_conjugate_posterior():
    data = _gaussian_data(num_sequences=10, length=20)
    model = ConjugateGaussian(prior_loc=0.0, prior_scale=2.0, noise_scale=1.0)
    result = fit(
        model, data, max_epochs=600, learning_rate=0.05, final_learning_rate=0.002, num_particles=2, progress=False
    )
    values, observed = _observed(data)
    n = int(observed.sum())
    precision = 1 / 2.0**2 + n / 1.0**2
    posterior_mean = float((values * observed).sum()) / precision
    posterior_sd = precision**-0.5
    assert result.method == "svi" and result.stopped == "max_steps" and len(result.history) == 600
    assert _scalar(model.guide_loc) == pytest.approx(posterior_mean, abs=0.15 * posterior_sd)
    assert _scalar(model.guide_scale) == pytest.approx(posterior_sd, rel=0.1)
    # The objective is an ELBO, so it sits below the exact log evidence, here in closed form.
    x = values[observed].double()
    cov = torch.eye(n, dtype=torch.float64) + 4.0
    log_evidence = float(torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(x))
    final_objective = sum(r["objective"] for r in result.history[-100:]) / 100
    assert final_objective < log_evidence + 0.05
    assert final_objective == pytest.approx(log_evidence, abs=0.5)
    assert result.history[-1]["objective_per_step"] == pytest.approx(result.history[-1]["objective"] / n)
    assert result.history[-1]["lr"] == pytest.approx(0.05 * (0.002 / 0.05) ** (599 / 600))


def test_auto_elbo_picks_traceenum_and_loss_is_exact_marginal():
    data = _mixture_data()
    model = GaussianMixture(init_locs=(-0.5, 1.0))
    assert isinstance(make_elbo(model, "auto"), TraceEnum_ELBO)
    assert isinstance(make_elbo(ConjugateGaussian(), "auto"), Trace_ELBO)
    assert not isinstance(make_elbo(ConjugateGaussian(), "auto"), TraceEnum_ELBO)
    with pytest.raises(ValueError, match="elbo"):
        make_elbo(model, "tracegraph")

    # Exact -log p(x, locs) at the Delta guide's locs, by hand: sum_t log sum_k w_k N(x_t | loc_k, 1).
    locs = torch.tensor([-0.5, 1.0], dtype=torch.float64)
    x = data.values
    log_weights = model.weights.detach().log()  # 0.5 up to the simplex transform's rounding
    log_lik = torch.logsumexp(log_weights - 0.5 * (x.unsqueeze(-1) - locs) ** 2 - 0.5 * math.log(2 * math.pi), -1)
    log_prior = float(dist.Normal(torch.zeros(2, dtype=torch.float64), 10.0).log_prob(locs).sum())
    exact = float(log_lik.sum()) + log_prior
    loss = make_elbo(model, "auto").differentiable_loss(model.model, model.guide, data)
    assert _scalar(loss) == pytest.approx(-exact, rel=1e-10)

    # fit with "auto": the first epoch's objective (full batch, before the first update) is that exact value.
    result = fit(model, data, max_epochs=120, learning_rate=0.1, progress=False)
    assert result.history[0]["objective"] == pytest.approx(exact, rel=1e-10)
    assert sorted(model.guide_locs.tolist()) == pytest.approx([-2.0, 2.0], abs=0.3)
    assert result.history[-1]["objective"] > exact


def test_minibatch_elbo_is_unbiased():
    data = _gaussian_data(num_sequences=12, length=10)
    model = ConjugateGaussian()
    elbo = make_elbo(model, "trace", num_particles=1)
    # A Delta-free guide: average over the guide's randomness by drawing many particles.
    pyro.set_rng_seed(0)
    full = sum(_scalar(elbo.differentiable_loss(model.model, model.guide, data)) for _ in range(400)) / 400
    generator = torch.Generator().manual_seed(1)
    estimates = []
    for _ in range(400):
        order = torch.randperm(12, generator=generator)[:4]  # a random mini-batch of 4 sequences
        minibatch = data[order].with_population(12)
        estimates.append(_scalar(elbo.differentiable_loss(model.model, model.guide, minibatch)))
    estimates = torch.tensor(estimates, dtype=torch.float64)
    assert float(estimates.mean()) == pytest.approx(full, abs=4 * float(estimates.std()) / 20)
    # Without scaling (population left at the mini-batch size) the estimate is far off.
    unscaled = _scalar(elbo.differentiable_loss(model.model, model.guide, data[torch.arange(4)].with_population(4)))
    assert abs(unscaled - full) > 10 * float(estimates.std()) / 20

    # In fit: with equal mini-batches and a tiny learning rate, the epoch objective
    # (mean of the mini-batch estimates) equals the full-batch objective of a deterministic model.
    point = PointGaussian(init_loc=0.3)
    exact = -_scalar(make_elbo(point).differentiable_loss(point.model, point.guide, data))
    result = fit(point, data, batch_size=4, max_epochs=1, learning_rate=1e-9, progress=False)
    assert result.history[0]["objective"] == pytest.approx(exact, rel=1e-6)


def test_early_stopping_restores_best_valid_state():
    generator = torch.Generator().manual_seed(3)
    train = SequenceBatch.from_tensor(2.0 + torch.randn(6, 30, generator=generator))
    valid = SequenceBatch.from_tensor(0.0 + torch.randn(6, 30, generator=generator))
    model = PointGaussian(init_loc=-3.0)  # moves from -3 towards 2, passing the valid optimum near 0
    locs = []
    result = fit(
        model,
        train,
        valid=valid,
        max_epochs=500,
        learning_rate=0.1,
        patience=3,
        progress=False,
        callbacks=[lambda record: locs.append(_scalar(model.loc))],
    )
    assert result.stopped == "early_stopping"
    assert len(result.history) < 500
    scores = [r["valid_log_prob_per_step"] for r in result.history]
    best_index = max(range(len(scores)), key=scores.__getitem__)
    assert result.best_step == result.history[best_index]["step"]
    assert result.best_valid_log_prob_per_step == scores[best_index]
    assert len(result.history) == best_index + 1 + 3  # exactly `patience` evaluations without improvement
    assert _scalar(model.loc) == locs[best_index] != locs[-1]
    assert score(model, valid).per_step == result.best_valid_log_prob_per_step
    assert abs(_scalar(model.loc) - float(valid.values.mean())) < 0.2


def test_eval_every_and_no_valid_keeps_last_state():
    data = _gaussian_data()
    valid = _gaussian_data(seed=5)
    model = PointGaussian()
    result = fit(model, data, valid=valid, max_epochs=7, eval_every=3, learning_rate=0.05, progress=False)
    evaluated = [r["step"] for r in result.history if r["valid_log_prob_per_step"] is not None]
    assert evaluated == [3, 6, 7]  # every 3 steps and at the last
    model = PointGaussian()
    locs = []
    result = fit(
        model,
        data,
        max_epochs=5,
        learning_rate=0.05,
        progress=False,
        callbacks=[lambda record: locs.append(_scalar(model.loc))],
    )
    assert result.best_valid_log_prob_per_step is None and result.best_step == 5
    assert _scalar(model.loc) == locs[-1]


class _FakeClock:
    """A ``time.perf_counter`` that moves only when told: a budget test independent of the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_time_budget_stops_cleanly(monkeypatch):
    import inference.training.loops as loops

    clock = _FakeClock()
    monkeypatch.setattr(loops.time, "perf_counter", clock)
    data = _gaussian_data()
    # Each epoch's callback "takes" 1/16 s (exact in binary), after the epoch's budget check: the
    # 3/16 s budget is spent once three callbacks have run, so the fourth epoch's check stops it.
    result = fit(
        PointGaussian(),
        data,
        max_epochs=10_000,
        time_budget=3 / 16,
        progress=False,
        callbacks=[lambda record: clock.advance(1 / 16)],
    )
    assert result.stopped == "time_budget" and len(result.history) == 4
    # One mini-batch per epoch: the budget runs out after an epoch's last one, so none is partial.
    assert not any(record["partial"] for record in result.history)
    em_model = ScriptedEM([float(i) for i in range(10_000)])
    result = fit(
        em_model,
        data,
        method="em",
        max_iterations=10_000,
        time_budget=3 / 16,
        progress=False,
        callbacks=[lambda record: clock.advance(1 / 16)],
    )
    assert result.stopped == "time_budget" and len(result.history) == 4
    # Without a budget the same clock never stops a fit: it runs to its limit.
    result = fit(PointGaussian(), data, max_epochs=7, progress=False, callbacks=[lambda record: clock.advance(100.0)])
    assert result.stopped != "time_budget" and len(result.history) == 7


class SlowPointGaussian(PointGaussian):
    """A :class:`PointGaussian` whose every loss evaluation takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def model(self, batch):
        time.sleep(self.delay)
        super().model(batch)


def test_time_budget_is_checked_within_a_long_epoch():
    # 200 mini-batches of 0.02 s make a 4 s epoch; a 0.2 s budget must end it mid-way.
    data = _gaussian_data(num_sequences=200)
    valid = _gaussian_data(seed=5)
    model = SlowPointGaussian(delay=0.02)
    started = time.perf_counter()
    result = fit(model, data, valid=valid, batch_size=1, max_epochs=3, time_budget=0.2, progress=False)
    elapsed = time.perf_counter() - started
    assert result.stopped == "time_budget"
    assert len(result.history) == 1 and elapsed < 1.5 and result.history[0]["partial"] is True
    # The cut-short epoch is scored, and its state is the one kept.
    assert result.history[0]["valid_log_prob_per_step"] is not None
    assert result.best_valid_log_prob_per_step == pytest.approx(score(model, valid).per_step)


def _resume_options(run):
    return dict(
        max_epochs=6,
        batch_size=3,
        learning_rate=0.1,
        final_learning_rate=0.01,
        checkpoint=run,
        checkpoint_every=3,
        seed=7,
        progress=False,
        valid=_gaussian_data(seed=9, dtype=torch.float64),
    )


def _interrupt_at_step_3(record):
    if record["step"] == 3:
        raise KeyboardInterrupt


@pytest.mark.parametrize("average_decay", [None, 0.8], ids=["last_iterate", "averaged"])
def test_checkpoint_resume_reproduces_uninterrupted_run(tmp_path, average_decay):
    # With average_decay the parameter average is checkpointed too: one restarted at the resume
    # would end elsewhere.
    data = _gaussian_data(dtype=torch.float64)
    reference = ConjugateGaussian().double()
    reference_result = fit(
        reference, data, **_resume_options(RunDirectory.create(tmp_path / "reference")), average_decay=average_decay
    )

    run = RunDirectory.create(tmp_path / "interrupted")
    interrupted = ConjugateGaussian().double()
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, data, **_resume_options(run), callbacks=[_interrupt_at_step_3], average_decay=average_decay)
    assert run.read_json("checkpoint")["step"] == 3

    resumed = ConjugateGaussian().double()
    resumed_result = fit(
        resumed, data, **_resume_options(RunDirectory.open(run.path)), resume=True, average_decay=average_decay
    )
    assert [r["step"] for r in resumed_result.history] == list(range(1, 7))
    for name, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert [r["objective"] for r in resumed_result.history] == [r["objective"] for r in reference_result.history]
    assert resumed_result.best_step == reference_result.best_step
    # The final model is saved and loads back into a fresh model.
    loaded = RunDirectory.open(run.path).load_state_dict_into(ConjugateGaussian().double())
    assert torch.equal(loaded.guide_loc, resumed.guide_loc)
    assert run.read_json("model")["class"].endswith("ConjugateGaussian")

    # A different interruption-free run (other seed) differs, so the equality above means something.
    other = ConjugateGaussian().double()
    fit(other, data, **{**_resume_options(None), "seed": 8}, average_decay=average_decay)
    assert not torch.equal(other.guide_loc, reference.guide_loc)
    if average_decay is not None:
        # The model ends holding the best validated average, not an iterate, and it scores as validated.
        last_iterate = ConjugateGaussian().double()
        fit(last_iterate, data, **_resume_options(None))
        assert not torch.equal(last_iterate.guide_loc, reference.guide_loc)
        assert reference_result.best_valid_log_prob_per_step == pytest.approx(
            score(reference, _resume_options(None)["valid"], seed=7).per_step, abs=1e-12
        )


def test_resume_requires_a_checkpoint(tmp_path):
    data = _gaussian_data()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(PointGaussian(), data, checkpoint=RunDirectory.create(tmp_path / "empty"), resume=True, progress=False)
    with pytest.raises(ValueError, match="resume"):
        fit(PointGaussian(), data, resume=True, progress=False)


# -- EM --------------------------------------------------------------------------
def test_em_objective_is_monotone_and_converges():
    data = _mixture_data()
    model = GaussianMixture(init_locs=(-0.5, 0.5))
    result = fit(model, data, method="em", max_iterations=500, tolerance=1e-8, patience=5, progress=False)
    objectives = [r["objective"] for r in result.history]
    assert all(b >= a - 1e-9 for a, b in zip(objectives, objectives[1:]))
    assert result.stopped == "converged" and len(objectives) < 500
    assert sorted(model.guide_locs.tolist()) == pytest.approx([-2.0, 2.0], abs=0.3)
    assert _scalar(model.weights.max()) == pytest.approx(0.7, abs=0.1)
    assert result.restarts == [objectives[-1]]


def test_em_plateau_rule_needs_patience_consecutive_small_gains():
    data = SequenceBatch.from_tensor(torch.zeros(1, 10))  # 10 observed steps
    # Gains per step: 1, 1e-12 (one tiny change), 1, 1, then tiny forever.
    objectives = [0.0, 10.0, 10.0 + 1e-11, 20.0, 30.0] + [30.0 + 1e-11 * i for i in range(1, 50)]
    model = ScriptedEM(objectives)
    result = fit(model, data, method="em", tolerance=1e-6, patience=3, max_iterations=100, progress=False)
    assert result.stopped == "converged"
    # Iteration 3 is a lone small gain; small gains then run from iteration 6 and reach 3 at iteration 8.
    assert len(result.history) == 8
    # A slow but steady climb (gain just above tolerance every iteration) never converges.
    steady = ScriptedEM([2e-5 * i for i in range(200)])
    result = fit(steady, data, method="em", tolerance=1e-6, patience=3, max_iterations=50, progress=False)
    assert result.stopped == "max_steps" and len(result.history) == 50


def test_em_restarts_keep_the_best(tmp_path):
    data = _mixture_data()
    model = SaddleRestartMixture(init_locs=(-1.0, 1.0))  # restart 0 is good, restarts 1, 2 sit at the saddle
    result = fit(
        model,
        data,
        method="em",
        num_restarts=3,
        patience=5,
        progress=False,
        checkpoint=RunDirectory.create(tmp_path / "run"),
    )
    assert len(result.restarts) == 3
    assert result.restarts[0] > result.restarts[1] + 10
    assert result.restarts[1] == pytest.approx(result.restarts[2])
    assert sorted(model.guide_locs.tolist()) == pytest.approx([-2.0, 2.0], abs=0.3)  # the best state, not the last
    first_restart = [r for r in result.history if r["restart"] == 0]
    assert result.best_step == first_restart[-1]["step"]
    final = _scalar(model.log_prob(data.values).sum() + model.prior().log_prob(model.guide_locs))
    assert final == pytest.approx(result.restarts[0], abs=1e-6)


def test_em_rejects_models_without_em():
    with pytest.raises(ValueError, match="supports_em"):
        fit(PointGaussian(), _gaussian_data(), method="em", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(GaussianMixture(), _mixture_data(), method="em", batch_size=2, progress=False)


# -- arguments and result --------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "mcmc"}, "method: expected 'svi', 'em' or 'nuts'"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"time_budget": -1.0}, "time_budget"),
    ],
)
def test_bad_arguments_raise(options, message):
    with pytest.raises(ValueError, match=message):
        fit(PointGaussian(), _gaussian_data(), progress=False, **options)


def test_nuts_is_a_method_but_needs_parameter_sites():
    # "nuts" is valid: the refusal names the model's missing priors, not the method.
    with pytest.raises(ValueError, match="no parameter sites"):
        fit(
            PointGaussian(),
            _gaussian_data(),
            method="nuts",
            num_samples=5,
            warmup_steps=5,
            num_chains=1,
            progress=False,
        )


def test_result_and_progress_bar(capsys):
    result = fit(PointGaussian(), _gaussian_data(), max_epochs=3, progress=True, description="toy fit")
    assert isinstance(result, FitResult) and result.seconds > 0
    assert set(result.history[0]) == {
        "step",
        "objective",
        "objective_per_step",
        "valid_log_prob_per_step",
        "lr",
        "seconds",
        "partial",
    }
    captured = capsys.readouterr()
    assert "toy fit" in captured.err and captured.out == ""


def test_em_resume_with_more_iterations_continues_the_last_restart(tmp_path):
    data = _mixture_data()
    options = dict(method="em", tolerance=0.0, patience=1000, progress=False)
    reference = GaussianMixture(init_locs=(-0.5, 0.5))
    reference_result = fit(reference, data, max_iterations=12, **options)

    run = RunDirectory.create(tmp_path / "run")
    model = GaussianMixture(init_locs=(-0.5, 0.5))
    first = fit(model, data, max_iterations=5, checkpoint=run, **options)
    assert first.stopped == "max_steps" and len(first.history) == 5
    resumed = GaussianMixture(init_locs=(-0.5, 0.5))
    result = fit(resumed, data, max_iterations=12, checkpoint=RunDirectory.open(run.path), resume=True, **options)
    assert [r["iteration"] for r in result.history] == list(range(1, 13))
    assert [r["objective"] for r in result.history] == [r["objective"] for r in reference_result.history]
    assert torch.equal(resumed.guide_locs, reference.guide_locs)
    assert result.restarts == reference_result.restarts


def test_em_does_not_stop_on_the_shannon_letters_plateau():
    """Issue 15: a 2-state HMM on 20,000 letters from the near-uniform start of
    ``examples/shannon_letters.py`` (noise seed 7) sits on a plateau with two
    near-identical states whose gains stay below 1e-10 nats per letter for ~100
    iterations; the old rule (50 small gains in a row) stopped at iteration 52.
    The gains there rise, so the run must go on to the vowel/consonant split."""
    from examples.shannon_letters import near_uniform_hmm
    from zoo.data import load_data

    data = load_data("builtin:letters").head(20_000)
    symbols = "".join(data.vocabulary.symbols)
    model = near_uniform_hmm(2, len(symbols), 0.01, torch.Generator().manual_seed(7))
    result = fit(
        model, data.batch, method="em", max_iterations=1500, tolerance=1e-10, patience=50, progress=False, seed=7
    )
    objectives = [r["objective"] for r in result.history]
    plateau = objectives[51]  # where the old rule stopped
    assert result.stopped == "converged" and len(objectives) > 150
    assert objectives[-1] > plateau + 1000  # the split gains over a thousand nats
    emission = model.emission_probs.detach()
    vowel_state = int(emission[:, [symbols.index(c) for c in " aeiou"]].sum(1).argmax())
    assert float(emission[vowel_state, [symbols.index(c) for c in " aeiou"]].sum()) > 0.7
