"""The DMM's optional bfloat16 guide RNN (``rnn_precision="bfloat16"``): the matrix products of the
guide RNN and of its projection run on bfloat16-rounded factors with float32 sums. Not exact, so
the tests bound the error against the float32 computation (which the other DMM tests tie to
``nn.RNN`` and Pyro's ELBO) and check that the bfloat16 path is really taken."""

import pytest
import torch

from inference.batch import SequenceBatch
from zoo.dmm import DeepMarkovModel, _LowPrecisionLinear, _run_rnn


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_bfloat16_rnn_is_close_to_float32_and_keeps_padding_zero():
    torch.manual_seed(0)
    rnn = torch.nn.RNN(12, 32, nonlinearity="tanh", batch_first=True)
    inputs = torch.bernoulli(torch.full((5, 9, 12), 0.3)).requires_grad_()
    h_0 = (0.1 * torch.randn(5, 32)).requires_grad_()
    lengths = torch.tensor([9, 4, 7, 1, 9])
    weights = torch.randn(5, 9, 32)
    exact = _run_rnn(rnn, inputs, h_0, lengths)
    low = _run_rnn(rnn, inputs, h_0, lengths, torch.bfloat16)
    assert low.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: a relative error of a few 1e-3, not 0 (the path is taken)
    assert 1e-5 < _relative(low, exact) < 2e-2
    for i, length in enumerate(lengths.tolist()):
        assert (low[i, length:] == 0).all()
    wrt = [inputs, h_0, *rnn.parameters()]
    for a, b in zip(torch.autograd.grad((low * weights).sum(), wrt), torch.autograd.grad((exact * weights).sum(), wrt)):
        assert _relative(a, b) < 3e-2


def test_low_precision_linear_matches_linear():
    torch.manual_seed(1)
    x = torch.randn(3, 7, 40, requires_grad=True)
    weight = torch.randn(6, 40, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    out = _LowPrecisionLinear.apply(x, weight, bias, torch.bfloat16)
    reference = torch.nn.functional.linear(x, weight, bias)
    assert out.shape == (3, 7, 6) and 1e-5 < _relative(out, reference) < 1e-2
    upstream = torch.randn(3, 7, 6)
    for a, b in zip(
        torch.autograd.grad((out * upstream).sum(), [x, weight, bias]),
        torch.autograd.grad((reference * upstream).sum(), [x, weight, bias]),
    ):
        assert a.shape == b.shape and _relative(a, b) < 1e-2


def test_bfloat16_model_loss_and_gradients_are_close_to_float32():
    torch.manual_seed(2)
    exact = DeepMarkovModel("bernoulli", dim=20, z_dim=6, transition_dim=16, emitter_dim=16, rnn_dim=48)
    low = DeepMarkovModel(
        "bernoulli", dim=20, z_dim=6, transition_dim=16, emitter_dim=16, rnn_dim=48, rnn_precision="bfloat16"
    )
    low.load_state_dict(exact.state_dict())
    assert low.config()["rnn_precision"] == "bfloat16" and DeepMarkovModel(**low.config()).rnn_precision == "bfloat16"
    g = torch.Generator().manual_seed(0)
    batch = SequenceBatch.from_sequences([torch.bernoulli(torch.full((t, 20), 0.2), generator=g) for t in (11, 4, 8)])
    noise = torch.randn(3, 11, 6, generator=g)
    losses, grads = [], []
    for model in (exact, low):
        loss = -model.elbo_per_sequence(batch, noise=noise).sum()
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=2e-3)
    flat = [torch.cat([g.reshape(-1) for g in gs]) for gs in grads]
    assert _relative(flat[1], flat[0]) < 2e-2
    with pytest.raises(ValueError, match="rnn_precision"):
        DeepMarkovModel("bernoulli", dim=4, rnn_precision="float16")
