"""Deep Markov model: the vectorised ELBO against Pyro's, the Kalman special case, IWAE, masks,
recovery of a nonlinear transition, and robustness to a high learning rate."""

import math
from pathlib import Path

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from inference.batch import SequenceBatch
from inference.fit import fit
from inference.kalman import log_marginal, rts_smoother
from inference.training import KLAnnealing
from zoo.dmm import GUIDES, DeepMarkovModel

JSB = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "jsb_chorales.json"


def _small(observation="bernoulli", **options):
    sizes = dict(z_dim=3, transition_dim=8, emitter_dim=8, rnn_dim=8)
    sizes.update(options)
    width = {"num_symbols": 5} if observation == "categorical" else {"dim": 4}
    return DeepMarkovModel(observation, **width, **sizes)


def _batch(observation, lengths=(6, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for length in lengths:
        if observation == "categorical":
            seqs.append(torch.randint(0, 5, (length,), generator=g))
        elif observation == "bernoulli":
            seqs.append(torch.bernoulli(torch.full((length, 4), 0.3), generator=g))
        else:
            x = torch.randn(length, 4, generator=g)
            x[length // 2, 1] = float("nan")  # one missing entry
            seqs.append(x)
    return SequenceBatch.from_sequences(seqs)


# -- the vectorised loss is Pyro's ELBO ------------------------------------------------
@pytest.mark.parametrize("observation", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("guide", GUIDES)
@pytest.mark.parametrize("num_iafs", [0, 1])
def test_loss_equals_pyro_elbo_on_the_same_sample(observation, guide, num_iafs):
    """Same seed, so the same guide draws: the Monte Carlo estimator equals Trace_ELBO on the
    per-step model/guide, and the analytic-KL estimator equals TraceMeanField_ELBO (which also
    integrates each z_t analytically given the sampled z_{t-1}); annealed and with a mini-batch scale."""
    torch.manual_seed(0)
    model = _small(observation, guide=guide, num_iafs=num_iafs)
    batch = _batch(observation).with_population(7)
    torch.manual_seed(1)
    ours = model.loss(batch, annealing_factor=0.3, estimator="mc").loss
    torch.manual_seed(1)
    pyro_loss = Trace_ELBO().differentiable_loss(model.model, model.guide, batch, annealing_factor=0.3)
    assert ours.item() == pytest.approx(pyro_loss.item(), rel=1e-5)
    # and the gradients agree
    grads = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True)  # mf: no z_q_0
    torch.manual_seed(1)
    pyro_loss = Trace_ELBO().differentiable_loss(model.model, model.guide, batch, annealing_factor=0.3)
    pyro_grads = torch.autograd.grad(pyro_loss, list(model.parameters()), allow_unused=True)
    for ours_g, pyro_g in zip(grads, pyro_grads):
        assert (ours_g is None) == (pyro_g is None)
        if ours_g is not None:
            torch.testing.assert_close(ours_g, pyro_g, rtol=1e-4, atol=1e-5)
    if not num_iafs:
        torch.manual_seed(1)
        analytic = model.loss(batch, annealing_factor=0.3).loss
        torch.manual_seed(1)
        mean_field = TraceMeanField_ELBO().differentiable_loss(model.model, model.guide, batch, annealing_factor=0.3)
        assert analytic.item() == pytest.approx(mean_field.item(), rel=1e-5)
        assert abs(analytic.item() - ours.item()) > 1e-3  # the two estimators differ per sample


def test_analytic_and_mc_estimators_agree_in_expectation():
    torch.manual_seed(0)
    model = _small("bernoulli").double()
    batch = _batch("bernoulli").to(dtype=torch.float64)
    repeated = SequenceBatch(batch.values.repeat(4000, 1, 1), batch.lengths.repeat(4000))
    with torch.no_grad():
        mc = model.elbo_per_sequence(repeated, "mc").reshape(4000, 3)
        analytic = model.elbo_per_sequence(repeated, "analytic").reshape(4000, 3)
    diff = mc.mean(0) - analytic.mean(0)
    stderr = (mc.var(0) / 4000 + analytic.var(0) / 4000).sqrt()
    assert (diff.abs() < 4 * stderr).all(), (diff, stderr)
    assert (analytic.var(0) < mc.var(0)).all()  # why the analytic KL is the default


# -- the Kalman special case -----------------------------------------------------------
class ExactGuideDMM(DeepMarkovModel):
    """A linear-Gaussian DMM (z_dim 1) whose guide is the exact posterior from the RTS smoother:
    q(z_t | z_{t-1}, x) = the Gaussian conditional of the smoothed pair (z_{t-1}, z_t)."""

    scale_inflation = 1.0

    def kalman_arguments(self):
        a = self.transition.matrix.weight
        q = self.transition.scale().diag_embed() ** 2
        h = self.emitter.weight
        r = self.emission_scale().diag_embed() ** 2
        return a, q, h, r, a @ self.z_0, q

    def _guide_features(self, batch, inputs):
        # enable_grad: parameters that need gradients select the torch loop, which needs no numba
        # compilation (a minute on a loaded machine) for these tiny sizes.
        with torch.enable_grad():
            smoothed = rts_smoother(*self.kalman_arguments(), batch.values, batch.lengths)
        mean, var = smoothed.smoothed_mean[..., 0].detach(), smoothed.smoothed_cov[..., 0, 0].detach()
        cross = smoothed.lag_one_cov[..., 0, 0].detach()  # Cov(z_t, z_{t-1} | x)
        prev_mean = torch.cat([torch.zeros_like(mean[:, :1]), mean[:, :-1]], 1)
        prev_var = torch.cat([torch.ones_like(var[:, :1]), var[:, :-1]], 1)
        real = batch.mask
        gain = torch.where(real, cross / torch.where(real, prev_var, 1.0), 0.0)
        cond_var = torch.where(real, var - gain * cross, 1.0)
        return torch.stack([mean, gain, prev_mean, cond_var.sqrt() * self.scale_inflation], -1)

    def _guide_conditional(self, z_prev, features):
        loc = features[..., 0:1] + features[..., 1:2] * (z_prev - features[..., 2:3])
        return loc, features[..., 3:4]


def _linear_gaussian(seed=0):
    torch.manual_seed(seed)
    model = ExactGuideDMM("gaussian", dim=2, z_dim=1, rnn_dim=4, transition="linear", emission="linear").double()
    with torch.no_grad():
        model.transition.matrix.weight.fill_(0.8)
        model.transition.raw_scale.fill_(-0.5)
        model.z_0.fill_(0.7)
        model.emitter.weight.copy_(torch.tensor([[1.0], [-0.5]]))
        model.emitter.bias.zero_()  # the Kalman kernels have no offsets
        model.emission_raw_scale.copy_(torch.tensor([0.2, -0.3]))
    values, _ = model.sample_with_states(4, 9, torch.Generator().manual_seed(seed))
    x = values.values.clone()
    x[1, 4, 0] = float("nan")
    x[0, 7:] = 123.0  # padding garbage
    batch = SequenceBatch(x, torch.tensor([7, 9, 1, 5]))
    exact = log_marginal(*model.kalman_arguments(), torch.where(batch.mask[..., None], x, 0.0), batch.lengths)
    return model, batch, exact.detach()


def test_elbo_with_the_exact_smoother_as_guide_is_the_kalman_log_likelihood():
    model, batch, exact = _linear_gaussian()
    with torch.no_grad():
        for seed in range(3):  # every single sample: log p(x, z) - log q(z | x) = log p(x)
            torch.manual_seed(seed)
            elbo = model.elbo_per_sequence(batch, "mc")
            torch.testing.assert_close(elbo, exact, rtol=0, atol=1e-6)
        # The analytic-KL estimator is unbiased for the same value (the KL gap is zero).
        repeated = SequenceBatch(batch.values.repeat(3000, 1, 1), batch.lengths.repeat(3000))
        analytic = model.elbo_per_sequence(repeated, "analytic").reshape(3000, 4)
    assert (analytic.mean(0) - exact).abs().max() < 4 * (analytic.var(0).max() / 3000).sqrt() + 1e-9


def test_iwae_rises_with_particles_towards_the_exact_log_likelihood():
    model, batch, exact = _linear_gaussian(1)
    model.scale_inflation = 2.0  # a worse (but valid) proposal: the ELBO has a gap
    bounds = []
    with torch.no_grad():
        for m in (1, 8, 64, 512):
            torch.manual_seed(m)
            draws = torch.stack(
                [
                    model.log_prob_batch(batch, num_particles=m) if m > 1 else model.elbo_per_sequence(batch, "mc")
                    for _ in range(20)
                ]
            )
            bounds.append(draws.mean(0).sum().item())
    gaps = [exact.sum().item() - b for b in bounds]
    assert gaps[0] > 0.5, gaps  # the inflated guide leaves a visible gap
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] > -0.02 and gaps[-1] < 0.05 * gaps[0], gaps


# -- masks -----------------------------------------------------------------------------
@pytest.mark.parametrize("observation", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("guide", GUIDES)
def test_masked_batch_equals_one_by_one_and_ignores_padding(observation, guide):
    torch.manual_seed(0)
    model = _small(observation, guide=guide, num_iafs=1).double()
    batch = _batch(observation, lengths=(6, 2, 4, 6))
    if observation != "categorical":
        batch = batch.to(dtype=torch.float64)
    noise = torch.randn(4, 6, 3, dtype=torch.float64)
    garbage = batch.values.clone()
    pad = ~batch.mask
    garbage[pad] = (
        torch.full_like(garbage[pad], 99)
        if observation == "categorical"
        else torch.full_like(garbage[pad], float("nan"))
    )
    with torch.no_grad():
        together = model.elbo_per_sequence(batch, "mc", noise=noise)
        with_garbage = model.elbo_per_sequence(SequenceBatch(garbage, batch.lengths), "mc", noise=noise)
        alone = torch.cat(
            [model.elbo_per_sequence(batch[i], "mc", noise=noise[i : i + 1, : batch.lengths[i]]) for i in range(4)]
        )
        post = model.posterior(batch)
        post_alone = [model.posterior(batch[i]) for i in range(4)]
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(together, with_garbage, rtol=0, atol=0)
    assert torch.isfinite(together).all()
    for i, p in enumerate(post_alone):
        length = int(batch.lengths[i])
        torch.testing.assert_close(post.loc[i, :length], p.loc[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(post.scale[i, :length], p.scale[0], rtol=1e-10, atol=1e-10)
    # a padded step's garbage also leaves the gradient finite
    model.loss(SequenceBatch(garbage, batch.lengths)).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- scoring API ---------------------------------------------------------------------
def test_bounds_are_reproducible_under_a_seed_and_labelled():
    torch.manual_seed(0)
    model = _small("bernoulli")
    batch = _batch("bernoulli")
    with torch.random.fork_rng():
        torch.manual_seed(5)
        first = model.log_prob_batch(batch, num_particles=10)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        second = model.log_prob_batch(batch, num_particles=10)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert model.likelihood_label(1) == "ELBO" and model.likelihood_label(10) == "IWAE bound (M=10)"
    assert model.log_prob(batch.values, batch.lengths).shape == (3,)
    sample = model.sample(5, 11, torch.Generator().manual_seed(0))
    again = model.sample(5, 11, torch.Generator().manual_seed(0))
    assert sample.values.shape == (5, 11, 4) and set(sample.values.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(sample.values, again.values)
    assert _small("categorical").sample(2, 3).values.shape == (2, 3)
    rebuilt = DeepMarkovModel(**model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert model.num_parameters < sum(p.numel() for p in model.parameters())  # guide_* excluded


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="guide"):
        DeepMarkovModel("bernoulli", dim=3, guide="forward")
    with pytest.raises(ValueError, match="dim"):
        DeepMarkovModel("bernoulli")
    model = _small("bernoulli")
    with pytest.raises(ValueError, match=r"\(N, T, 4\)"):
        model.loss(SequenceBatch.from_tensor(torch.zeros(2, 3, 5)))
    with pytest.raises(ValueError, match="analytic KL"):
        _small("bernoulli", num_iafs=1).loss(_batch("bernoulli"), estimator="analytic")
    with pytest.raises(ValueError, match="num_particles"):
        model.log_prob_batch(_batch("bernoulli"), num_particles=0)
    # Spec settings (seqzoo fit/compare): each bad one is named, as text or as a value.
    from types import SimpleNamespace

    from zoo.dmm import build_dmm
    from zoo.registry import UsageError

    data = SimpleNamespace(kind="binary", dim=4)
    for settings, message in (
        ({"guide_dropout": "half"}, "guide_dropout must be a number, got 'half'"),
        ({"guide_dropout": "1.5"}, "guide_dropout: expected a number in"),
        ({"weight_decay": "-1"}, "weight_decay: expected a nonnegative number"),
        ({"z_dim": "2.5"}, "z_dim must be an int"),
        ({"particles": "many"}, "particles must be an int"),
        ({"average": "1"}, "average_decay: expected a number in"),
        ({"dropout": "0.1"}, "unknown settings"),
    ):
        with pytest.raises(UsageError, match=message):
            build_dmm(data, settings)
    built = build_dmm(
        data, {"guide_dropout": "0.25", "weight_decay": "3", "z_dim": "2", "particles": "5", "average": "0.99"}
    )
    assert built.guide_dropout == 0.25 and built.z_dim == 2
    assert built.fit_defaults("svi").weight_decay == 3.0 and built.score_particles() == 5
    assert built.fit_defaults("svi").average_decay == 0.99
    assert build_dmm(data, {}).fit_defaults("svi").average_decay is None  # off unless asked


# -- learning ------------------------------------------------------------------------
FIXED_POINT = 1.5


def _nonlinear_ssm(num_sequences, length, seed):
    """z_t = z* + 0.5 (z_{t-1} - z*) - 0.4 sin(z_{t-1} - z*) + 0.2 eps (a contraction to z* = 1.5),
    z_1 ~ N(-1.5, 0.5^2); x_t = (z_t, tanh z_t) + 0.1 noise."""
    g = torch.Generator().manual_seed(seed)
    z = -1.5 + 0.5 * torch.randn(num_sequences, generator=g)
    zs = []
    for _ in range(length):
        zs.append(z)
        d = z - FIXED_POINT
        z = FIXED_POINT + 0.5 * d - 0.4 * torch.sin(d) + 0.2 * torch.randn(num_sequences, generator=g)
    z = torch.stack(zs, 1)
    x = torch.stack([z, torch.tanh(z)], -1) + 0.1 * torch.randn(num_sequences, length, 2, generator=g)
    return SequenceBatch.from_tensor(x)


def test_short_training_improves_the_bound_and_recovers_the_fixed_point():
    """Held-out ELBO per step rises by at least 2 nats; the learned transition's mean map has a fixed
    point whose emission mean is within 0.15 of the true (z*, tanh z*) (latent coordinates are not
    identified, observation space is)."""
    torch.manual_seed(0)
    model = DeepMarkovModel("gaussian", dim=2, z_dim=2, transition_dim=16, emitter_dim=16, rnn_dim=16)
    train, held_out = _nonlinear_ssm(64, 20, 0), _nonlinear_ssm(32, 20, 1)

    def held_out_per_step():
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            return (
                model.log_prob_batch(SequenceBatch(held_out.values.repeat(8, 1, 1), held_out.lengths.repeat(8)))
                .mean()
                .item()
                / 20
            )

    before = held_out_per_step()
    result = fit(
        model,
        train,
        loss="model",
        max_epochs=60,
        batch_size=16,
        learning_rate=1e-2,
        final_learning_rate=2e-3,
        step_kwargs=KLAnnealing(start=0.2, epochs=5),
        progress=False,
    )
    after = held_out_per_step()
    assert after > before + 2.0, (before, after, result.history[-1])
    starts = model.posterior(held_out).loc[:, -1]  # the guide's states at the end of held-out sequences
    with torch.no_grad():
        fixed = model.transition_fixed_point(starts)
        assert (model.transition(fixed)[0] - fixed).abs().max() < 1e-4  # converged
        observed = model.emitter(fixed)
    target = torch.tensor([FIXED_POINT, math.tanh(FIXED_POINT)])
    assert (observed - target).abs().max() < 0.15, observed


@pytest.mark.slow
@pytest.mark.skipif(not JSB.is_file(), reason=f"needs {JSB} (the shared data folder)")
def test_learning_rate_3e_3_trains_20_epochs_on_jsb_without_nan():
    """Paper sizes (z 100, transition 200, emitter 100, guide RNN 600) on 40 JSB chorales, lr 3e-3:
    Pyro's example NaNs within two epochs at this rate; the scale floors and clipping keep us finite."""
    from zoo.data import load_polyphonic

    train = load_polyphonic(JSB, "train").batch[:40]
    torch.manual_seed(0)
    model = DeepMarkovModel("bernoulli", dim=88)
    records = fit(
        model,
        train,
        loss="model",
        max_epochs=20,
        batch_size=20,
        learning_rate=3e-3,
        warmup_epochs=0,
        lr_schedule="constant",
        progress=False,
    ).history
    assert all(math.isfinite(r["objective_per_step"]) for r in records)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert records[-1]["objective_per_step"] > records[0]["objective_per_step"] + 20  # it learns, not just survives


def test_trains_through_the_shared_fit_loop_to_the_best_iid_fit():
    """``inference.fit.fit`` trains a DMM with its default loss (``"auto"``: the family's own
    vectorised ELBO, ``loss="model"``) and with Pyro's ``Trace_ELBO`` on the per-step model/guide.
    The frames are independent Bernoulli draws, so the best a sequence model can do on them is the
    per-dimension maximum-likelihood fit (-1.58 nats per step on these frames); the trained bound
    must come close to it (measured at 60 epochs: -1.68 with the family's loss, -2.08 with the
    noisier per-step Trace_ELBO, from -2.9) and, being a lower bound, not rise above it."""
    from inference.fit import fit

    torch.manual_seed(0)
    probs = torch.tensor([0.9, 0.1, 0.8, 0.2])
    train = SequenceBatch(torch.bernoulli(probs.expand(16, 8, 4)), torch.randint(3, 9, (16,)))
    frames = train.values[train.mask]  # (steps, 4)
    rate = frames.mean(0)
    best_iid = float((frames * rate.log() + (1 - frames) * (1 - rate).log()).sum(-1).mean())
    for loss, within in (("auto", 0.2), ("trace", 0.7)):
        model = _small("bernoulli")
        result = fit(model, train, valid=train, loss=loss, max_epochs=60, batch_size=8, progress=False)
        scores = [r["valid_log_prob_per_step"] for r in result.history if r["valid_log_prob_per_step"] is not None]
        assert all(math.isfinite(s) for s in scores)
        assert best_iid - within < scores[-1] < best_iid + 0.05, (loss, best_iid, scores)
        assert scores[-1] > scores[0] + 0.5, (loss, scores)


# -- the command line ------------------------------------------------------------------
def _binary_npz(tmp_path):
    from zoo.data import as_sequence_data, save_npz

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(6, 11, (20,), generator=g)
    values = torch.bernoulli(torch.full((20, 10, 5), 0.3), generator=g)
    path = tmp_path / "frames.npz"
    save_npz(as_sequence_data(values, "binary", lengths=lengths), path)
    return path


def test_cli_fit_sample_decode(tmp_path, capsys):
    """``seqzoo fit dmm`` trains through the trainer with the family's own options (loss="model", KL
    annealing from its flags) and scores with the IWAE bound of ``--particles``; ``sample`` prints the
    model's draws; ``decode`` writes the guide's means and scales."""
    import json

    from inference.rundir import RunDirectory
    from inference.scoring import score
    from zoo.cli import load_model, main
    from zoo.data import load_data, split_data

    data_path = _binary_npz(tmp_path)
    run_path = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "dmm",
                "--data",
                str(data_path),
                "--z-dim",
                "2",
                "--transition-dim",
                "4",
                "--emitter-dim",
                "4",
                "--rnn-dim",
                "4",
                "--epochs",
                "3",
                "--annealing-epochs",
                "2",
                "--min-annealing",
                "0.5",
                "--particles",
                "4",
                "--weight-decay",
                "5",
                "--guide-dropout",
                "0.1",
                "--average",
                "0.9",
                "--no-progress",
                "--out",
                str(run_path),
            ]
        )
        == 0
    )
    summary = json.loads((run_path / "summary.json").read_text())
    config = json.loads((run_path / "config.json").read_text())
    assert summary["likelihood"] == "IWAE bound (M=4)"
    assert config["fit"]["loss"] == "model" and config["fit"]["clip_norm"] == 10.0
    assert config["fit"]["step_kwargs"].startswith("KLAnnealing(start=0.5, epochs=2")
    assert config["fit"]["learning_rate"] == 3e-3 and config["fit"]["batch_size"] == 20
    assert config["fit"]["weight_decay"] == 5.0  # the family's training settings reach the trainer
    assert config["fit"]["average_decay"] == 0.9
    model = load_model(RunDirectory.open(run_path))
    assert model.guide_dropout == 0.1  # a model setting, rebuilt from config.json
    data = load_data(str(data_path))
    test = split_data(data, (0.8, 0.1, 0.1), seed=0).test.batch
    assert summary["test_log_likelihood"] == pytest.approx(score(model, test, num_particles=4).per_step, rel=1e-6)
    capsys.readouterr()

    assert main(["sample", str(run_path), "--length", "7", "--num-sequences", "2", "--seed", "3"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    printed = torch.tensor([[[float(v) for v in row.split(",")] for row in block.split("\n")] for block in blocks])
    expected = model.sample(2, 7, generator=torch.Generator().manual_seed(3)).values
    torch.testing.assert_close(printed, expected)

    assert main(["decode", str(run_path), "--data", str(data_path)]) == 0
    lines = (run_path / "decoded.csv").read_text().strip().split("\n")
    assert lines[0] == "sequence,time,loc_0,loc_1,scale_0,scale_1"
    assert len(lines) - 1 == int(data.batch.lengths.sum())
    table = torch.tensor([[float(v) for v in line.split(",")] for line in lines[1:]], dtype=torch.float64)
    posterior = model.posterior(data.batch)
    mask = data.batch.mask
    torch.testing.assert_close(table[:, 2:4], posterior.loc[mask].double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table[:, 4:6], posterior.scale[mask].double(), rtol=1e-5, atol=1e-5)
    assert (table[:, 4:6] > 0).all()

    # diagnose: a point posterior, with the guide's state paths in the export
    assert main(["diagnose", str(run_path), "--guide-draws", "5", "--predictive-draws", "6"]) == 0
    import arviz as az

    idata = az.from_netcdf(run_path / "diagnostics" / "inference_data.nc")
    assert idata.posterior_states["sampled_states"].dims == ("chain", "draw", "sequence", "time", "latent")
    assert idata.posterior_states["sampled_states"].shape[:2] == (1, 6)
    assert (run_path / "diagnostics" / "posterior_states.png").is_file()


# -- ArviZ export ------------------------------------------------------------------------
def test_to_inference_data_exports_guide_state_paths_and_per_sequence_bounds():
    """Posterior state trajectories are guide draws with named dims (NaN on padding; at t = 0 their
    mean and sd are q(z_1 | x)'s, which depends on no earlier draw); the log-likelihood group holds
    each sequence's ELBO, whose mean over the export's draws matches the model's own estimate."""
    from inference.arviz import to_inference_data

    torch.manual_seed(0)
    model = _small("bernoulli").double()
    batch = _batch("bernoulli", lengths=(6, 3, 5, 6)).to(dtype=torch.float64)
    idata = to_inference_data(model, batch, "point", num_predictive_draws=400, seed=0)
    paths = idata.posterior_states["sampled_states"]
    assert paths.dims == ("chain", "draw", "sequence", "time", "latent") and paths.shape == (1, 400, 4, 6, 3)
    values = torch.as_tensor(paths.values[0])  # (S, N, T, Z)
    assert torch.isnan(values[:, ~batch.mask]).all() and not torch.isnan(values[:, batch.mask]).any()
    posterior = model.posterior(batch)
    first = values[:, :, 0]  # (S, N, Z)
    stderr = posterior.scale[:, 0] / math.sqrt(400)
    assert ((first.mean(0) - posterior.loc[:, 0]).abs() < 4.5 * stderr).all()
    torch.testing.assert_close(first.std(0), posterior.scale[:, 0], rtol=0.15, atol=0)
    # later steps differ from the mean path (they depend on sampled z_{t-1}) but stay finite
    assert torch.isfinite(values[:, batch.mask]).all()

    bounds = idata.log_likelihood["obs"]
    assert bounds.dims == ("chain", "draw", "sequence") and bounds.shape == (1, 1, 4)
    assert idata.attrs["likelihood_kind"] == "ELBO"
    with torch.no_grad():
        draws = torch.stack([model.elbo_per_sequence(batch) for _ in range(300)])
    exported = torch.as_tensor(bounds.values[0, 0])
    assert ((exported - draws.mean(0)).abs() < 5 * draws.std(0) + 1e-9).all()


@pytest.mark.parametrize("guide", GUIDES)
def test_vectorised_loss_equals_pyro_elbos_in_float64(guide):
    """In float64 the pure-torch loss is Pyro's ELBO to rounding: Trace_ELBO (MC estimator) and
    TraceMeanField_ELBO (analytic KL), on a masked, mini-batch-scaled, annealed batch."""
    torch.manual_seed(0)
    model = _small("bernoulli", guide=guide).double()
    batch = _batch("bernoulli", lengths=(6, 2, 5)).to(dtype=torch.float64).with_population(9)
    for estimator, elbo in (("mc", Trace_ELBO()), ("analytic", TraceMeanField_ELBO())):
        torch.manual_seed(3)
        ours = model.loss(batch, annealing_factor=0.7, estimator=estimator).loss
        torch.manual_seed(3)
        reference = elbo.differentiable_loss(model.model, model.guide, batch, annealing_factor=0.7)
        assert ours.dtype == torch.float64
        assert ours.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-10)


def test_fit_with_the_model_loss_passes_the_annealing_schedule():
    """fit(loss="model", step_kwargs=KLAnnealing(...)) calls DeepMarkovModel.loss with the schedule's
    factor for each epoch, and the logged objective is the unannealed ELBO (finite, rising)."""
    torch.manual_seed(0)
    probs = torch.tensor([0.9, 0.1, 0.8, 0.2])
    train = SequenceBatch(torch.bernoulli(probs.expand(16, 8, 4)), torch.randint(3, 9, (16,)))
    model = _small("bernoulli")
    seen = []
    original = model.loss

    def spy(batch, annealing_factor=1.0, **kwargs):
        seen.append(annealing_factor)
        return original(batch, annealing_factor=annealing_factor, **kwargs)

    model.loss = spy
    schedule = KLAnnealing(start=0.25, epochs=3)
    result = fit(
        model, train, loss="model", step_kwargs=schedule, max_epochs=6, batch_size=8, learning_rate=1e-2, progress=False
    )
    # one lazy-initialisation call, then two mini-batches per epoch
    assert seen[1:] == [schedule(epoch, 0)["annealing_factor"] for epoch in range(6) for _ in range(2)]
    assert seen[1:3] == [0.25, 0.25] and seen[-1] == 1.0
    objectives = [r["objective_per_step"] for r in result.history]
    assert all(math.isfinite(o) for o in objectives) and objectives[-1] > objectives[0]


# -- the fused guide loop ----------------------------------------------------------------
def test_fused_guide_loop_gradcheck():
    """The hand-written backward of the sequential guide draw against finite differences (float64)."""
    from zoo.dmm import _StructuredGuideLoop

    g = torch.Generator().manual_seed(0)
    n, t, z, h = 3, 5, 2, 4
    args = [
        torch.randn(n, t, 2 * z, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(n, t, z, generator=g, dtype=torch.float64),
        torch.randn(z, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(h, z, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(h, generator=g, dtype=torch.float64, requires_grad=True),
        torch.randn(2 * z, h, generator=g, dtype=torch.float64, requires_grad=True),
    ]
    full = [n] * t
    assert torch.autograd.gradcheck(lambda *a: _StructuredGuideLoop.apply(*a, 0.01, full, torch.arange(n)), args)
    # sequences of lengths 5, 3, 1 (sorted, longest first): padded steps are skipped, gradients still exact
    assert torch.autograd.gradcheck(
        lambda *a: _StructuredGuideLoop.apply(*a, 0.01, [3, 2, 2, 1, 1], torch.arange(n)), args
    )


class _UnfusedDMM(DeepMarkovModel):
    """Overriding _guide_conditional sends the guide through the plain autograd loop."""

    def _guide_conditional(self, z_prev, features):
        return super()._guide_conditional(z_prev, features)


@pytest.mark.parametrize("guide", ["st-r", "st-lr"])
def test_fused_guide_loop_equals_the_autograd_loop(guide):
    """Same seed: the same draws, loss and parameter gradients with and without the fused loop."""
    sizes = dict(dim=4, z_dim=3, transition_dim=8, emitter_dim=8, rnn_dim=8, guide=guide)
    torch.manual_seed(0)
    fused = DeepMarkovModel("bernoulli", **sizes).double()
    plain = _UnfusedDMM("bernoulli", **sizes).double()
    plain.load_state_dict(fused.state_dict())
    batch = _batch("bernoulli", lengths=(6, 2, 5)).to(dtype=torch.float64).with_population(8)
    losses, grads = [], []
    for model in (fused, plain):
        torch.manual_seed(4)
        loss = model.loss(batch, annealing_factor=0.4).loss
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_fused_rnn_equals_torch_rnn_and_gradcheck():
    """_TanhRNN is nn.RNN(tanh): same outputs and gradients (inputs, h_0, weights), and its backward
    passes gradcheck in float64."""
    from zoo.dmm import _run_rnn, _TanhRNN

    torch.manual_seed(0)
    rnn = torch.nn.RNN(3, 5, nonlinearity="tanh", batch_first=True).double()
    inputs = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    h_0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, 5, dtype=torch.float64)
    ours = _run_rnn(rnn, inputs, h_0, torch.full((4,), 6))
    reference, _ = rnn(inputs, h_0.unsqueeze(0))
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    wrt = [inputs, h_0, *rnn.parameters()]
    for a, b in zip(
        torch.autograd.grad((ours * weights).sum(), wrt), torch.autograd.grad((reference * weights).sum(), wrt)
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # variable lengths (unsorted): each sequence's real steps equal nn.RNN on that sequence alone; padding is 0
    lengths = torch.tensor([3, 6, 1, 4])
    ours = _run_rnn(rnn, inputs, h_0, lengths)
    for i, length in enumerate(lengths.tolist()):
        alone, _ = rnn(inputs[i : i + 1, :length], h_0[i : i + 1].unsqueeze(0))
        torch.testing.assert_close(ours[i, :length], alone[0], rtol=1e-12, atol=1e-12)
        assert (ours[i, length:] == 0).all()
    args = [inputs, h_0, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    assert torch.autograd.gradcheck(lambda *a: _TanhRNN.apply(*a, [4] * 6), args)
    assert torch.autograd.gradcheck(lambda *a: _TanhRNN.apply(*a, [4, 3, 3, 2, 1, 1]), args)


def test_guide_dropout_acts_in_the_training_loss_only():
    torch.manual_seed(0)
    dropped = _small("bernoulli", guide_dropout=0.5)
    plain = _small("bernoulli")
    plain.load_state_dict(dropped.state_dict())
    batch = _batch("bernoulli")

    def seeded(function):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return function()

    # Training mode: the loss drops guide features (different values; gradients still finite).
    loss = seeded(lambda: dropped.loss(batch).loss)
    assert not torch.allclose(loss, seeded(lambda: plain.loss(batch).loss))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in dropped.parameters() if p.grad is not None)
    # Scoring and posteriors never drop, in either mode; nor does the loss in eval mode.
    for mode in (True, False):
        dropped.train(mode), plain.train(mode)
        for score in (
            lambda m: m.log_prob_batch(batch),
            lambda m: m.log_prob_batch(batch, num_particles=4),
            lambda m: m.posterior(batch).loc,
        ):
            torch.testing.assert_close(seeded(lambda: score(dropped)), seeded(lambda: score(plain)), rtol=0, atol=0)
    torch.testing.assert_close(
        seeded(lambda: dropped.loss(batch).loss), seeded(lambda: plain.loss(batch).loss), rtol=0, atol=0
    )
    assert DeepMarkovModel(**dropped.config()).guide_dropout == 0.5
    with pytest.raises(ValueError, match="guide_dropout"):
        _small("bernoulli", guide_dropout=1.0)
