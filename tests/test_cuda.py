"""CUDA tests (``pytest -m cuda``): every kernel and family on the GPU agrees with the CPU.

Skipped without a GPU. The GPU paths are the parallel (associative-scan) kernels and the
torch loops; the CPU references are the numba kernels and the Kalman smoother's gradient,
so each test compares two independent implementations.
"""

from __future__ import annotations

import pytest
import torch

from inference import discrete, kalman
from inference.batch import SequenceBatch
from inference.fit import fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")


def _hmm_potentials(num_states: int = 4, num_seq: int = 3, num_steps: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    log_initial = torch.randn(num_states, generator=gen, dtype=torch.float64).log_softmax(-1)
    log_transition = torch.randn(num_states, num_states, generator=gen, dtype=torch.float64).log_softmax(-1)
    log_emission = torch.randn(num_seq, num_steps, num_states, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([num_steps, num_steps - 7, 1])[:num_seq]
    return log_initial, log_transition, log_emission, lengths


@pytest.mark.parametrize("method", ["auto", "sequential", "parallel"])
def test_hmm_scans_match_cpu(method):
    potentials = _hmm_potentials()
    on_gpu = [value.to(CUDA) for value in potentials]
    torch.testing.assert_close(
        discrete.log_marginal(*on_gpu, method=method).cpu(), discrete.log_marginal(*potentials), rtol=1e-10, atol=1e-10
    )
    smoothed = discrete.forward_backward(*on_gpu, method=method)
    reference = discrete.forward_backward(*potentials)
    torch.testing.assert_close(smoothed.state_marginals.cpu(), reference.state_marginals, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(smoothed.transition_counts.cpu(), reference.transition_counts, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(discrete.viterbi(*on_gpu, method=method).path.cpu(), discrete.viterbi(*potentials).path)


@pytest.mark.parametrize("method", ["auto", "sequential", "parallel"])
def test_hmm_gradients_match_cpu(method):
    potentials = _hmm_potentials(seed=1)
    grads = []
    for device in ("cpu", CUDA):
        leaves = [value.to(device).requires_grad_() for value in potentials[:3]]
        weights = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64, device=device)
        value = discrete.log_marginal(*leaves, potentials[3].to(device), method=method if device == CUDA else "auto")
        grads.append([grad.cpu() for grad in torch.autograd.grad((weights * value).sum(), leaves)])
    for gpu, cpu in zip(grads[1], grads[0]):
        torch.testing.assert_close(gpu, cpu, rtol=1e-8, atol=1e-10)


def test_categorical_log_marginal_gradients_match_cpu():
    """log_marginal_categorical: on the GPU the gather in torch and the scan's autograd; on
    CPU the gather inside the numba kernels. Value and the three gradients agree."""
    gen = torch.Generator().manual_seed(2)
    potentials = (
        torch.randn(3, generator=gen, dtype=torch.float64),
        torch.randn(3, 3, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
    )
    codes, lengths = torch.randint(0, 5, (2, 30), generator=gen), torch.tensor([30, 12])
    results = []
    for device in ("cpu", CUDA):
        leaves = [value.to(device).requires_grad_() for value in potentials]
        value = discrete.log_marginal_categorical(*leaves, codes.to(device), lengths.to(device))
        results.append([value.detach().cpu(), *(grad.cpu() for grad in torch.autograd.grad(value.sum(), leaves))])
    for gpu, cpu in zip(results[1], results[0]):
        torch.testing.assert_close(gpu, cpu, rtol=1e-8, atol=1e-10)


def _kalman_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    state_dim, obs_dim = 3, 2

    def spd(size):
        root = torch.randn(size, size, generator=gen, dtype=torch.float64)
        return root @ root.T + 0.5 * torch.eye(size, dtype=torch.float64)

    transition = torch.randn(state_dim, state_dim, generator=gen, dtype=torch.float64)
    transition = 0.9 * transition / torch.linalg.eigvals(transition).abs().max()
    params = (
        transition,
        spd(state_dim),
        torch.randn(obs_dim, state_dim, generator=gen, dtype=torch.float64),
        spd(obs_dim),
        torch.randn(state_dim, generator=gen, dtype=torch.float64),
        spd(state_dim),
    )
    observations = torch.randn(3, 30, obs_dim, generator=gen, dtype=torch.float64)
    observations[0, 4, 1] = float("nan")
    observations[1, 9] = float("nan")
    return params, observations, torch.tensor([30, 22, 5])


@pytest.mark.parametrize("diffuse", [False, True])
@pytest.mark.parametrize("method", ["auto", "sequential", "parallel"])
def test_kalman_scans_match_cpu(diffuse, method):
    params, observations, lengths = _kalman_problem()
    on_gpu = [value.to(CUDA) for value in (*params, observations, lengths)]
    torch.testing.assert_close(
        kalman.log_marginal(*on_gpu, diffuse=diffuse, method=method).cpu(),
        kalman.log_marginal(*params, observations, lengths, diffuse=diffuse),
        rtol=1e-9,
        atol=1e-9,
    )
    smoothed = kalman.rts_smoother(*on_gpu, diffuse=diffuse, method=method)
    reference = kalman.rts_smoother(*params, observations, lengths, diffuse=diffuse)
    for gpu, cpu in zip(smoothed, reference):
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("diffuse", [False, True])
@pytest.mark.parametrize("method", ["auto", "sequential", "parallel"])
def test_kalman_gradients_match_the_cpu_smoother_gradient(diffuse, method):
    """GPU autograd (scan or loop) against the CPU gradient by the smoother (Fisher's identity)."""
    params, observations, lengths = _kalman_problem(seed=1)
    roots = [torch.linalg.cholesky(value) for value in (params[1], params[3], params[5])]
    base = (params[0], roots[0], params[2], roots[1], params[4], roots[2], observations)
    grads = []
    for device in ("cpu", CUDA):
        leaves = [value.to(device).requires_grad_() for value in base]
        transition, q_root, obs_matrix, r_root, initial_mean, p_root, values = leaves
        value = kalman.log_marginal(
            transition,
            q_root @ q_root.T,
            obs_matrix,
            r_root @ r_root.T,
            initial_mean,
            p_root @ p_root.T,
            values,
            lengths.to(device),
            diffuse=diffuse,
            method="auto" if device == "cpu" else method,
        )
        grads.append(
            [
                torch.nan_to_num(grad).cpu() if grad is not None else torch.zeros_like(leaf).cpu()
                for leaf, grad in zip(leaves, torch.autograd.grad(value.sum(), leaves, allow_unused=True))
            ]
        )
    for gpu, cpu in zip(grads[1], grads[0]):
        torch.testing.assert_close(gpu, cpu, rtol=1e-7, atol=1e-9)


def _svi_steps_on_gpu(model, batch):
    """Two SVI epochs on the GPU: finite objectives, parameters moved and still on the GPU."""
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    result = fit(model, batch, method="svi", max_epochs=2, device="cuda", progress=False)
    after = dict(model.named_parameters())
    assert all(value.device.type == "cuda" for value in after.values())
    assert any(not torch.equal(before[name].to(CUDA), value.detach()) for name, value in after.items())
    assert len(result.history) == 2
    assert all(torch.isfinite(torch.as_tensor(record["objective"])) for record in result.history)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(batch.values.to(CUDA), batch.lengths.to(CUDA))).all()


def test_svi_step_hmm():
    from zoo.hmm import CategoricalHMM

    truth = CategoricalHMM.from_probs(
        torch.tensor([0.6, 0.4]),
        torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]),
    )
    batch = truth.sample(4, 50, generator=torch.Generator().manual_seed(0))
    _svi_steps_on_gpu(CategoricalHMM(2, 3), batch)


def test_svi_step_lgssm():
    from zoo.lgssm import LinearGaussianSSM

    truth = LinearGaussianSSM.local_level(level_var=0.5, noise_var=1.0, dtype=torch.float64)
    batch = truth.sample(3, 40, generator=torch.Generator().manual_seed(0))
    _svi_steps_on_gpu(LinearGaussianSSM.local_level(level_var=1.0, noise_var=2.0, dtype=torch.float64), batch)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_svi_step_rnn(cell):
    from zoo.rnn import RecurrentModel

    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (4, 20), generator=gen)
    batch = SequenceBatch(values=values, lengths=torch.tensor([20, 18, 11, 3]))
    _svi_steps_on_gpu(RecurrentModel("categorical", num_symbols=5, cell=cell, hidden_size=8, embedding_dim=4), batch)
