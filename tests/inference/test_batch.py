"""SequenceBatch: covariates and real indices stay aligned through every operation."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference import SequenceBatch, SequenceModel, iterate_minibatches, sequence_plate
from inference.scoring import score


def _batch() -> SequenceBatch:
    """Sequence n holds the value n at every real step, so any misalignment shows."""
    lengths = torch.tensor([3, 5, 2, 4, 1])
    values = torch.arange(5, dtype=torch.float32).unsqueeze(-1).expand(5, 5).clone()
    return SequenceBatch(
        values,
        lengths,
        covariates={
            "context": torch.arange(5, dtype=torch.float32).unsqueeze(-1) * torch.tensor([1.0, -1.0]),  # (5, 2)
            "slice": torch.tensor([10, 11, 12, 13, 14]),  # (5,) long
        },
    )


def _assert_aligned(batch: SequenceBatch) -> None:
    """Every row's covariates and index belong to the same original sequence as its values."""
    first = batch.values[:, 0].long()  # the original sequence number of each row
    assert torch.equal(batch.indices, first)
    assert torch.equal(batch.covariates["slice"], first + 10)
    assert torch.equal(batch.covariates["context"][:, 0].long(), first)
    assert batch.values.shape[1] == int(batch.lengths.max())  # padding trimmed


def test_index_select_and_slice_keep_covariates_and_indices():
    batch = _batch()
    assert torch.equal(batch.indices, torch.arange(5)) and batch.index is None
    _assert_aligned(batch)
    for selection in (torch.tensor([3, 0, 2]), slice(1, 4), 4, torch.tensor([True, False, True, False, False])):
        _assert_aligned(batch[selection])
    picked = batch[torch.tensor([2, 4])]
    assert picked.values.shape == (2, 2)  # trimmed to the longest picked sequence
    assert picked.indices.tolist() == [2, 4]
    _assert_aligned(picked[torch.tensor([1])])  # indices of a selection of a selection stay the originals


def test_to_moves_covariates_and_casts_only_floating_ones():
    moved = _batch().to(dtype=torch.float64)
    assert moved.covariates["context"].dtype == torch.float64
    assert moved.covariates["slice"].dtype == torch.long
    assert moved.values.dtype == torch.float64
    _assert_aligned(moved)
    with_index = _batch()[torch.tensor([1, 3])].to("cpu")
    assert with_index.indices.tolist() == [1, 3]


def test_minibatches_chunks_and_from_sequences_keep_covariates():
    batch = _batch()
    seen = []
    for minibatch in iterate_minibatches(batch, 2, torch.Generator().manual_seed(0)):
        _assert_aligned(minibatch)
        assert minibatch.population == 5
        seen.extend(minibatch.indices.tolist())
    assert sorted(seen) == list(range(5))
    pieces = batch.chunk(2)
    assert pieces.lengths.tolist() == [2, 1, 2, 2, 1, 2, 2, 2, 1]
    _assert_aligned(pieces)  # each piece inherits its parent's covariates and index
    assert pieces.indices.tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 4]
    rebuilt = SequenceBatch.from_sequences(batch.sequences(), covariates=batch.covariates, index=batch.indices + 100)
    assert rebuilt.indices.tolist() == [100, 101, 102, 103, 104]
    assert torch.equal(rebuilt.covariates["context"], batch.covariates["context"])
    extended = batch.with_covariates(year=torch.arange(5) + 1990)
    assert extended[3].covariates["year"].tolist() == [1993] and set(extended.covariates) == {
        "context",
        "slice",
        "year",
    }


def test_bad_covariates_are_refused_by_name():
    batch = _batch()
    with pytest.raises(ValueError, match=r"covariates\['context'\]: expected shape \(5, \.\.\.\)"):
        SequenceBatch(batch.values, batch.lengths, covariates={"context": torch.zeros(4, 2)})
    with pytest.raises(TypeError, match=r"covariates\['year'\]"):
        SequenceBatch(batch.values, batch.lengths, covariates={"year": [1, 2, 3, 4, 5]})
    with pytest.raises(ValueError, match="index"):
        SequenceBatch(batch.values, batch.lengths, index=torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError):
        batch.covariates["new"] = torch.zeros(5)  # read-only: a frozen batch cannot change under a model


class ShiftedByCovariate(SequenceModel):
    """``x_{n,t} ~ N(shift_n, 1)`` with ``shift_n`` the batch's ``"shift"`` covariate;
    per-sequence guide means indexed by the plate's real indices."""

    family = "toy_covariate"

    def __init__(self, num_sequences: int) -> None:
        super().__init__()
        self.per_sequence_loc = torch.nn.Parameter(torch.zeros(num_sequences))
        self.plate_indices = []

    def config(self):
        return {"num_sequences": len(self.per_sequence_loc)}

    def log_prob_batch(self, batch, *, num_particles=1):
        shift = batch.covariates["shift"].unsqueeze(-1)  # (N, 1)
        return (dist.Normal(shift, 1.0).log_prob(batch.values) * batch.mask).sum(-1)

    def model(self, batch):
        with sequence_plate(batch) as indices:
            self.plate_indices.append(indices.tolist())
            pyro.sample(
                "obs",
                dist.Normal(self.per_sequence_loc[indices].unsqueeze(-1), 1.0)
                .expand(batch.values.shape)
                .mask(batch.mask)
                .to_event(1),
                obs=batch.values,
            )

    def guide(self, batch):
        pass


def test_a_covariate_reaches_log_prob_batch_through_score():
    batch = _batch()
    batch = batch.with_covariates(shift=batch.values[:, 0].double())  # each sequence's own level
    model = ShiftedByCovariate(5)
    result = score(model, batch, batch_size=2)  # scored in pieces: covariates follow each piece
    expected = dist.Normal(0.0, 1.0).log_prob(torch.zeros(())) * batch.lengths.double()  # every x equals its shift
    assert torch.allclose(result.per_sequence, expected)


def test_sequence_plate_subsamples_the_real_indices():
    batch = _batch()
    model = ShiftedByCovariate(5)
    minibatch = batch[torch.tensor([4, 1])].with_population(5)
    trace = pyro.poutine.trace(model.model).get_trace(minibatch)
    assert model.plate_indices == [[4, 1]]
    assert trace.nodes["obs"]["scale"] == pytest.approx(5 / 2)  # the plate still scales to the population
