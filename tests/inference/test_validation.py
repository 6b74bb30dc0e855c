"""The one lengths check and valid-step mask shared by the kernels and the families."""

import pytest
import torch

from inference.validation import check_lengths, valid_mask


def test_check_lengths_defaults_converts_and_rejects():
    assert torch.equal(check_lengths(None, 3, 5), torch.full((3,), 5))
    lengths = check_lengths(torch.tensor([5, 0, 2], dtype=torch.int32), 3, 5)
    assert lengths.dtype == torch.long and lengths.tolist() == [5, 0, 2]
    with pytest.raises(TypeError, match="lengths: expected a torch.Tensor or None"):
        check_lengths([5, 0, 2], 3, 5)
    with pytest.raises(ValueError, match="lengths: expected an integer dtype"):
        check_lengths(torch.tensor([5.0, 0.0, 2.0]), 3, 5)
    with pytest.raises(ValueError, match=r"lengths: expected shape \(3,\)"):
        check_lengths(torch.tensor([5, 0]), 3, 5)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 5\], got min 0, max 6"):
        check_lengths(torch.tensor([6, 0, 2]), 3, 5)
    with pytest.raises(ValueError, match=r"expected values in \[0, 5\], got min -1"):
        check_lengths(torch.tensor([1, -1, 2]), 3, 5)


def test_valid_mask_marks_exactly_the_real_steps():
    mask = valid_mask(torch.tensor([3, 0, 1]), 4)
    assert mask.tolist() == [[True, True, True, False], [False, False, False, False], [True, False, False, False]]


def test_every_consumer_uses_the_one_check():
    """The kernels and both families raise the shared check's message for the same bad lengths."""
    from inference import discrete, kalman
    from zoo.hmm import CategoricalHMM
    from zoo.lgssm import LinearGaussianSSM

    bad = torch.tensor([4, 1])
    message = r"lengths: expected values in \[0, 3\], got min 1, max 4"
    with pytest.raises(ValueError, match=message):
        discrete.log_marginal(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2, 3, 2), bad)
    eye = torch.eye(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        kalman.log_marginal(
            eye, eye, eye, eye, torch.zeros(1, dtype=torch.float64), eye, torch.zeros(2, 3, 1, dtype=torch.float64), bad
        )
    with pytest.raises(ValueError, match=message):
        CategoricalHMM(2, 2).log_prob(torch.zeros(2, 3, dtype=torch.long), bad)
    with pytest.raises(ValueError, match=message):
        LinearGaussianSSM(1, 1).log_prob(torch.zeros(2, 3, 1), bad)
