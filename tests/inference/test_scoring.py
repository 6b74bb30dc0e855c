"""Tests of held-out scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inference import SequenceBatch, SequenceModel
from inference.scoring import Score, count_observed_steps, observed_steps_per_sequence, score


class IndependentGaussian(SequenceModel):
    """``x_{n,t,d} ~ N(loc, 1)``, missing (NaN) entries skipped; records its mode when scored."""

    family = "toy_iid"
    likelihood_kind = "exact"

    def __init__(self, loc: float = 0.5) -> None:
        super().__init__()
        self.loc = torch.nn.Parameter(torch.tensor(loc, dtype=torch.float64))
        self.modes_seen: list[bool] = []
        self.chunk_sizes: list[int] = []

    def config(self):
        return {"loc": float(self.loc.detach())}

    def log_prob(self, values, lengths=None):
        self.modes_seen.append(self.training)
        self.chunk_sizes.append(values.shape[0])
        batch = SequenceBatch.from_tensor(values, lengths)
        observed = ~torch.isnan(values) & batch.mask.reshape(batch.mask.shape + (1,) * (values.dim() - 2))
        log_density = torch.distributions.Normal(self.loc, 1.0).log_prob(torch.nan_to_num(values))
        return (log_density * observed).flatten(1).sum(-1)


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(5, 6, 2, generator=generator, dtype=torch.float64)
    values[0, 1, :] = float("nan")  # a fully missing step: not observed
    values[1, 2, 0] = float("nan")  # a half-missing step: still observed
    values[2, 4:, :] = float("nan")  # beyond the length anyway
    lengths = torch.tensor([6, 5, 4, 6, 3])
    return SequenceBatch(values, lengths)


def test_observed_steps_count_steps_with_any_entry():
    batch = _data()
    assert observed_steps_per_sequence(batch).tolist() == [5, 5, 4, 6, 3]
    assert count_observed_steps(batch) == 23
    symbols = SequenceBatch(torch.zeros(2, 4, dtype=torch.long), torch.tensor([4, 2]))
    assert count_observed_steps(symbols) == symbols.num_steps == 6


def test_score_matches_hand_computation():
    batch = _data()
    model = IndependentGaussian(loc=0.5)
    result = score(model, batch)
    assert isinstance(result, Score) and result.kind == "exact"
    # Per-sequence log-likelihoods by hand, entry by entry.
    expected = []
    for n in range(5):
        total = 0.0
        for t in range(int(batch.lengths[n])):
            for d in range(2):
                x = float(batch.values[n, t, d])
                if not math.isnan(x):
                    total += -0.5 * (x - 0.5) ** 2 - 0.5 * math.log(2 * math.pi)
        expected.append(total)
    assert result.per_sequence.tolist() == pytest.approx(expected, rel=1e-12)
    assert result.log_prob == pytest.approx(sum(expected), rel=1e-12)
    assert result.num_steps == 23
    assert result.per_step == pytest.approx(sum(expected) / 23, rel=1e-12)
    # Ratio-estimator standard error, by hand with numpy.
    y, x = np.array(expected), np.array([5, 5, 4, 6, 3], dtype=float)
    r = y.sum() / x.sum()
    stderr = math.sqrt(np.sum((y - r * x) ** 2) / (5 - 1) / (5 * x.mean() ** 2))
    assert result.stderr == pytest.approx(stderr, rel=1e-10)


def test_score_chunks_eval_mode_and_single_sequence():
    batch = _data()
    model = IndependentGaussian()
    model.train()
    whole = score(model, batch)
    model.chunk_sizes.clear()
    chunked = score(model, batch, batch_size=2)
    assert model.chunk_sizes == [2, 2, 1]
    assert torch.allclose(whole.per_sequence, chunked.per_sequence, rtol=0, atol=1e-12)
    assert set(model.modes_seen) == {False} and model.training  # eval while scoring, mode restored
    single = score(model, batch[0])
    assert single.stderr is None and single.num_steps == 5


def test_score_rejects_bad_input():
    model = IndependentGaussian()
    with pytest.raises(ValueError, match="batch_size"):
        score(model, _data(), batch_size=0)
    empty = SequenceBatch(torch.full((1, 3, 2), float("nan"), dtype=torch.float64), torch.tensor([3]))
    with pytest.raises(ValueError, match="no observed"):
        score(model, empty)


class ImportanceBound(IndependentGaussian):
    """A stochastic lower bound: the exact log-likelihood minus the mean of
    ``num_particles`` |N(0, 1)| draws from torch's global RNG."""

    def log_prob_batch(self, batch, *, num_particles=1):
        self.particles_seen = num_particles
        gap = torch.randn(num_particles, batch.num_sequences, dtype=torch.float64).abs().mean(0)
        return self.log_prob(batch.values, batch.lengths) - gap

    def likelihood_label(self, num_particles=1):
        return f"IWAE bound (M={num_particles})"


def test_score_of_a_stochastic_bound_is_seeded_and_leaves_the_global_rng_alone():
    batch = _data()
    model = ImportanceBound()
    exact = score(IndependentGaussian(), batch).log_prob
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = score(model, batch, num_particles=4, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream did not move
    other = score(model, batch, num_particles=4, seed=6)
    assert model.particles_seen == 4 and first.kind == "IWAE bound (M=4)"
    assert first.log_prob < exact and other.log_prob < exact
    assert first.log_prob != other.log_prob
    assert score(model, batch, num_particles=4, seed=5).log_prob == first.log_prob
    with pytest.raises(ValueError, match="num_particles"):
        score(model, batch, num_particles=0)
