"""Count-table baselines against hand counting."""

import math

import pytest
import torch

from inference.batch import SequenceBatch
from zoo import baselines


def test_unigram_and_bigram_equal_hand_counts():
    train = SequenceBatch.from_sequences([torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0])])
    v, alpha = 3, 0.5
    unigram = baselines.unigram_log_probs(train, v, alpha)
    # counts: 0 -> 2, 1 -> 2, 2 -> 2 over 6 symbols
    assert torch.allclose(unigram.exp(), torch.full((3,), 1 / 3, dtype=torch.float64))
    initial, transition = baselines.bigram_log_probs(train, v, alpha)
    # pairs: 0->1, 1->1, 1->2, 2->0 ; row 1 has counts [0, 1, 1] + alpha
    assert transition[1].exp().tolist() == pytest.approx([0.5 / 3.5, 1.5 / 3.5, 1.5 / 3.5])
    test = SequenceBatch.from_sequences([torch.tensor([1, 2, 0]), torch.tensor([0])])
    expected = [
        unigram[1] + transition[1, 2] + transition[2, 0],
        unigram[0],
    ]
    assert baselines.bigram_score(initial, transition, test).tolist() == pytest.approx([float(e) for e in expected])
    assert baselines.unigram_score(unigram, test).tolist() == pytest.approx([3 * math.log(1 / 3), math.log(1 / 3)])


def test_codes_out_of_range_are_rejected():
    train = SequenceBatch.from_sequences([torch.tensor([0, 5])])
    with pytest.raises(ValueError, match=r"codes in \[0, 3\)"):
        baselines.unigram_log_probs(train, 3)
