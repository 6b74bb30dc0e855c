"""Tests of the discrete-chain kernels against brute-force enumeration and each other."""

from __future__ import annotations

import itertools

import pytest
import torch

from inference import discrete
from inference.discrete import filter as hmm_filter
from inference.discrete import (
    forward_backward,
    log_marginal,
    pair_marginals,
    sample_paths,
    viterbi,
)

# Every backend runs on CPU: "numba" and "parallel" through the public `method`, and the
# torch sequential loop (the CUDA fallback) through the private entry points.
BACKENDS = ["numba", "torch", "parallel"]


def _prepared(*args):
    return discrete._prepare(*args, *([None] * (4 - len(args))))


def _log_marginal(backend, *args):
    if backend == "torch":
        return discrete._torch_forward(*_prepared(*args))[0]
    return log_marginal(*args, method="sequential" if backend == "numba" else "parallel")


def _forward_backward(backend, *args):
    if backend == "torch":
        prepared = _prepared(*args)
        return discrete._smoothed_by_autograd(lambda *a: discrete._torch_forward(*a)[0], *prepared)
    return forward_backward(*args, method="sequential" if backend == "numba" else "parallel")


def _filter(backend, *args):
    if backend == "torch":
        return discrete.Filtered(*discrete._torch_forward(*_prepared(*args)))
    return hmm_filter(*args, method="sequential" if backend == "numba" else "parallel")


def _viterbi(backend, *args):
    if backend == "torch":
        return discrete._torch_viterbi(*_prepared(*args))
    return viterbi(*args, method="sequential" if backend == "numba" else "parallel")


def _random_problem(generator, num_seq, num_steps, num_states, *, shared=True, scale=1.0, dtype=torch.float64):
    """Unnormalised random log potentials."""
    log_initial = scale * torch.randn(num_states, generator=generator, dtype=dtype)
    shape = (num_states, num_states) if shared else (num_seq, num_states, num_states)
    log_transition = scale * torch.randn(shape, generator=generator, dtype=dtype)
    log_emission = scale * torch.randn(num_seq, num_steps, num_states, generator=generator, dtype=dtype)
    return log_initial, log_transition, log_emission


def _brute_force(log_initial, log_transition, log_emission, length):
    """Enumerate all paths of one sequence: log Z, state/pair marginals, counts, MAP."""
    num_states = log_emission.shape[-1]
    paths = torch.tensor(list(itertools.product(range(num_states), repeat=length)))  # (P, L)
    scores = log_initial[paths[:, 0]] + log_emission[torch.arange(length), paths].sum(-1)
    if length > 1:
        scores = scores + log_transition[paths[:, :-1], paths[:, 1:]].sum(-1)
    log_normalizer = torch.logsumexp(scores, 0)
    weights = (scores - log_normalizer).exp()
    one_hot = torch.nn.functional.one_hot(paths, num_states).to(weights.dtype)  # (P, L, K)
    state_marginals = torch.einsum("p,plk->lk", weights, one_hot)
    pairs = torch.einsum("p,pli,plj->lij", weights, one_hot[:, :-1], one_hot[:, 1:])  # (L-1, K, K)
    best = scores.argmax()
    return dict(
        log_normalizer=log_normalizer,
        state_marginals=state_marginals,
        pairs=pairs,
        counts=pairs.sum(0),
        map_path=paths[best],
        map_score=scores[best],
        scores=scores,
        paths=paths,
        unique_map=bool((scores >= scores[best] - 1e-9).sum() == 1),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_states,num_steps,seed", [(2, 6, 0), (3, 5, 1), (3, 6, 2), (1, 4, 3), (2, 1, 4)])
def test_brute_force_all_quantities(backend, num_states, num_steps, seed):
    generator = torch.Generator().manual_seed(seed)
    # Two sequences with their own transitions, the second shorter: covers batched
    # transitions and padding. scale=2 gives strongly unnormalised potentials.
    log_initial, log_transition, log_emission = _random_problem(
        generator, 2, num_steps, num_states, shared=False, scale=2.0
    )
    log_initial = torch.stack([log_initial, log_initial.flip(0)])  # per-sequence initial
    lengths = torch.tensor([num_steps, max(num_steps - 2, 1)])
    args = (log_initial, log_transition, log_emission, lengths)

    result = _forward_backward(backend, *args)
    filtered = _filter(backend, *args)
    decoded = _viterbi(backend, *args)
    pairs = pair_marginals(*args)
    for n in range(2):
        length = int(lengths[n])
        expected = _brute_force(log_initial[n], log_transition[n], log_emission[n, :length], length)
        torch.testing.assert_close(_log_marginal(backend, *args)[n], expected["log_normalizer"])
        torch.testing.assert_close(result.log_normalizer[n], expected["log_normalizer"])
        torch.testing.assert_close(filtered.log_normalizer[n], expected["log_normalizer"])
        torch.testing.assert_close(result.state_marginals[n, :length], expected["state_marginals"])
        torch.testing.assert_close(result.transition_counts[n], expected["counts"])
        torch.testing.assert_close(pairs[n, : length - 1], expected["pairs"])
        assert (result.state_marginals[n, length:] == 0).all()
        assert (filtered.filtered[n, length:] == 0).all()
        assert (pairs[n, length - 1 :] == 0).all()
        # The last filtered marginal equals the last smoothed one.
        torch.testing.assert_close(filtered.filtered[n, length - 1], expected["state_marginals"][-1])
        torch.testing.assert_close(decoded.log_joint[n], expected["map_score"])
        if expected["unique_map"]:
            assert decoded.path[n, :length].tolist() == expected["map_path"].tolist()
        assert (decoded.path[n, length:] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_filtered_matches_brute_force_prefix(backend):
    generator = torch.Generator().manual_seed(7)
    log_initial, log_transition, log_emission = _random_problem(generator, 1, 5, 3)
    filtered = _filter(backend, log_initial, log_transition, log_emission).filtered
    for t in range(5):
        prefix = _brute_force(log_initial, log_transition, log_emission[0, : t + 1], t + 1)
        torch.testing.assert_close(filtered[0, t], prefix["state_marginals"][-1])


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_sample_paths_match_posterior(method):
    generator = torch.Generator().manual_seed(11)
    log_initial, log_transition, log_emission = _random_problem(generator, 1, 4, 2)
    expected = _brute_force(log_initial, log_transition, log_emission[0], 4)
    num_samples = 20000
    samples = sample_paths(
        log_initial,
        log_transition,
        log_emission,
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(0),
        method=method,
    )
    assert samples.shape == (num_samples, 1, 4) and samples.dtype == torch.long
    codes = (samples[:, 0] * (2 ** torch.arange(3, -1, -1))).sum(-1)  # path -> integer, as enumerated
    observed = torch.bincount(codes, minlength=16).double()
    probabilities = (expected["scores"] - expected["log_normalizer"]).exp()
    expected_counts = num_samples * probabilities
    chi_square = ((observed - expected_counts) ** 2 / expected_counts).sum()
    assert chi_square < 37.7  # 99.9% quantile of chi-square with 15 degrees of freedom

    again = sample_paths(
        log_initial,
        log_transition,
        log_emission,
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(0),
        method=method,
    )
    assert torch.equal(samples, again)


def test_sample_paths_padding_and_zero_probability_states():
    log_initial = torch.tensor([0.0, -torch.inf, 0.0])
    log_transition = torch.tensor([[0.0, 0.0, -torch.inf], [0.0, 0.0, 0.0], [-torch.inf, 0.0, 0.0]])
    log_emission = torch.zeros(3, 6, 3)
    lengths = torch.tensor([6, 1, 0])
    for method in ("sequential", "parallel"):
        samples = sample_paths(
            log_initial,
            log_transition,
            log_emission,
            lengths,
            num_samples=200,
            generator=torch.Generator().manual_seed(1),
            method=method,
        )
        assert (samples[:, 0] >= 0).all() and (samples[:, 1, 1:] == -1).all() and (samples[:, 2] == -1).all()
        assert (samples[:, :2, 0] != 1).all()  # impossible first state never drawn
        steps = samples[:, 0]
        forbidden = ((steps[:, :-1] == 0) & (steps[:, 1:] == 2)) | ((steps[:, :-1] == 2) & (steps[:, 1:] == 0))
        assert not forbidden.any()


@pytest.mark.parametrize("num_states", [2, 5, 16])
def test_parallel_matches_sequential(num_states):
    generator = torch.Generator().manual_seed(num_states)
    log_initial, log_transition, log_emission = _random_problem(generator, 3, 500, num_states, shared=False)
    lengths = torch.tensor([500, 321, 1])
    args = (log_initial, log_transition, log_emission, lengths)
    sequential = forward_backward(*args, method="sequential")
    parallel = forward_backward(*args, method="parallel")
    torch_loop = _forward_backward("torch", *args)
    for other in (parallel, torch_loop):
        torch.testing.assert_close(other.log_normalizer, sequential.log_normalizer, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(other.state_marginals, sequential.state_marginals, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(other.transition_counts, sequential.transition_counts, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        hmm_filter(*args, method="parallel").filtered,
        hmm_filter(*args, method="sequential").filtered,
        rtol=1e-8,
        atol=1e-9,
    )
    decoded = {backend: _viterbi(backend, *args) for backend in BACKENDS}
    for backend in ("torch", "parallel"):
        torch.testing.assert_close(decoded[backend].log_joint, decoded["numba"].log_joint, rtol=1e-10, atol=1e-9)
        # Continuous random potentials: the MAP path is unique almost surely.
        assert torch.equal(decoded[backend].path, decoded["numba"].path)


def test_float32_agrees_with_float64_long_sequence():
    generator = torch.Generator().manual_seed(5)
    log_initial, log_transition, log_emission = _random_problem(generator, 2, 10_000, 4)
    lengths = torch.tensor([10_000, 7_000])
    reference = forward_backward(log_initial, log_transition, log_emission, lengths)
    for method in ("sequential", "parallel"):
        single = forward_backward(
            log_initial.float(), log_transition.float(), log_emission.float(), lengths, method=method
        )
        assert single.log_normalizer.dtype == torch.float32
        torch.testing.assert_close(single.log_normalizer.double(), reference.log_normalizer, rtol=1e-5, atol=0)
        torch.testing.assert_close(single.state_marginals.double(), reference.state_marginals, rtol=0, atol=1e-3)
    single = discrete._torch_forward(
        *_prepared(log_initial.float(), log_transition.float(), log_emission.float(), lengths)
    )[0]
    torch.testing.assert_close(single.double(), reference.log_normalizer, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [True, False])
def test_masked_batch_equals_each_sequence_alone(backend, shared):
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([7, 1, 0, 4])
    log_initial, log_transition, log_emission = _random_problem(generator, 4, 7, 3, shared=shared)
    # Padding holds garbage that must be ignored.
    log_emission = torch.where(
        torch.arange(7)[None, :, None] < lengths[:, None, None], log_emission, torch.full_like(log_emission, 1e3)
    )
    batch = _forward_backward(backend, log_initial, log_transition, log_emission, lengths)
    decoded = _viterbi(backend, log_initial, log_transition, log_emission, lengths)
    for n, length in enumerate(lengths.tolist()):
        transition = log_transition if shared else log_transition[n : n + 1]
        alone = _forward_backward(backend, log_initial, transition, log_emission[n : n + 1, :length])
        torch.testing.assert_close(batch.log_normalizer[n], alone.log_normalizer[0])
        torch.testing.assert_close(batch.state_marginals[n, :length], alone.state_marginals[0])
        torch.testing.assert_close(batch.transition_counts[n], alone.transition_counts[0])
        single_path = _viterbi(backend, log_initial, transition, log_emission[n : n + 1, :length])
        assert decoded.path[n, :length].tolist() == single_path.path[0].tolist()
        torch.testing.assert_close(decoded.log_joint[n], single_path.log_joint[0])
    assert batch.log_normalizer[2] == 0 and decoded.log_joint[2] == 0 and (decoded.path[2] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck(backend, shared):
    generator = torch.Generator().manual_seed(9)
    log_initial, log_transition, log_emission = _random_problem(generator, 3, 5, 3, shared=shared)
    lengths = torch.tensor([5, 2, 0])
    inputs = tuple(x.clone().requires_grad_() for x in (log_initial, log_transition, log_emission))
    assert torch.autograd.gradcheck(lambda a, b, c: _log_marginal(backend, a, b, c, lengths), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_is_posterior(backend):
    generator = torch.Generator().manual_seed(12)
    log_initial, log_transition, log_emission = _random_problem(generator, 2, 30, 4, shared=True)
    lengths = torch.tensor([30, 17])
    leaves = [x.clone().requires_grad_() for x in (log_initial, log_transition, log_emission)]
    _log_marginal(backend, *leaves, lengths).sum().backward()
    smoothed = forward_backward(log_initial, log_transition, log_emission, lengths)
    torch.testing.assert_close(leaves[2].grad, smoothed.state_marginals)
    torch.testing.assert_close(leaves[1].grad, smoothed.transition_counts.sum(0))
    torch.testing.assert_close(leaves[0].grad, smoothed.state_marginals[:, 0].sum(0))


def test_float32_gradient_dtype():
    generator = torch.Generator().manual_seed(2)
    leaves = [x.float().requires_grad_() for x in _random_problem(generator, 2, 8, 3)]
    log_marginal(*leaves).sum().backward()
    assert all(leaf.grad.dtype == torch.float32 and torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_long_sequence_stability():
    generator = torch.Generator().manual_seed(4)
    log_initial, log_transition, log_emission = _random_problem(generator, 1, 100_000, 8, scale=3.0)
    double = log_marginal(log_initial, log_transition, log_emission)
    single = log_marginal(log_initial.float(), log_transition.float(), log_emission.float())
    assert torch.isfinite(single).all() and single.dtype == torch.float32
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=0)
    parallel = log_marginal(log_initial.float(), log_transition.float(), log_emission.float(), method="parallel")
    torch.testing.assert_close(parallel.double(), double, rtol=1e-4, atol=0)


def test_normalised_model_matches_hmmlearn():
    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    generator = torch.Generator().manual_seed(6)
    num_states, num_symbols = 3, 5
    start = torch.rand(num_states, generator=generator, dtype=torch.float64)
    start /= start.sum()
    transition = torch.rand(num_states, num_states, generator=generator, dtype=torch.float64)
    transition /= transition.sum(-1, keepdim=True)
    emission = torch.rand(num_states, num_symbols, generator=generator, dtype=torch.float64)
    emission /= emission.sum(-1, keepdim=True)
    symbols = torch.randint(num_symbols, (200,), generator=generator)
    model = hmmlearn.CategoricalHMM(n_components=num_states, n_features=num_symbols)
    model.startprob_, model.transmat_, model.emissionprob_ = start.numpy(), transition.numpy(), emission.numpy()
    expected = model.score(symbols.numpy()[:, None])
    ours = log_marginal(start.log(), transition.log(), emission.log()[:, symbols].T[None])
    assert ours.item() == pytest.approx(expected, rel=1e-10)
    _, expected_path = model.decode(symbols.numpy()[:, None], algorithm="viterbi")
    assert viterbi(start.log(), transition.log(), emission.log()[:, symbols].T[None]).path[0].tolist() == list(
        expected_path
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(log_emission=torch.zeros(4, 3)), r"log_emission: expected shape \(N, T, K\)"),
        (dict(log_emission=torch.zeros(2, 4, 3, dtype=torch.long)), "log_emission: expected dtype"),
        (dict(log_initial=torch.zeros(4)), r"log_initial: expected shape \(3,\) or \(2, 3\)"),
        (dict(log_transition=torch.zeros(3, 2)), r"log_transition: expected shape \(3, 3\) or \(2, 3, 3\)"),
        (dict(log_transition=torch.zeros(5, 3, 3)), "log_transition: expected shape"),
        (dict(lengths=torch.tensor([1.0, 2.0])), "lengths: expected an integer dtype"),
        (dict(lengths=torch.tensor([1, 2, 3])), r"lengths: expected shape \(2,\)"),
        (dict(lengths=torch.tensor([1, 5])), r"lengths: expected values in \[0, 4\]"),
        (dict(method="fast"), "method: expected one of"),
    ],
)
def test_bad_input_raises(kwargs, match):
    arguments = dict(
        log_initial=torch.zeros(3), log_transition=torch.zeros(3, 3), log_emission=torch.zeros(2, 4, 3), lengths=None
    )
    method = kwargs.pop("method", "auto")
    arguments.update(kwargs)
    for function in (log_marginal, hmm_filter, forward_backward, viterbi, sample_paths):
        with pytest.raises(ValueError, match=match):
            function(*arguments.values(), method=method)
    if method == "auto":
        with pytest.raises(ValueError, match=match):
            pair_marginals(*arguments.values())


def test_mixed_precision_potentials_follow_emission_dtype():
    result = forward_backward(torch.zeros(2, dtype=torch.float64), torch.zeros(2, 2), torch.zeros(1, 3, 2))
    assert all(x.dtype == torch.float32 for x in result)
    assert result.log_normalizer.item() == pytest.approx(3 * torch.log(torch.tensor(2.0)).item())


@pytest.mark.parametrize("num_states", [1, 2, 5])
def test_categorical_gather_in_the_kernel_equals_log_marginal(num_states):
    """log_marginal_categorical (the gather inside the numba recursion) equals log_marginal on
    the gathered (N, T, K) potentials: value and gradient of all three inputs, with padding
    (any code there), a length-0 sequence, a zero-probability symbol and unnormalised tables."""
    generator = torch.Generator().manual_seed(num_states)
    num_symbols = 4
    log_initial = torch.randn(num_states, generator=generator, dtype=torch.float64)
    log_transition = torch.randn(num_states, num_states, generator=generator, dtype=torch.float64)
    table = torch.randn(num_states, num_symbols, generator=generator, dtype=torch.float64)
    table[:, 3] = -float("inf")  # symbol 3 is never emitted ...
    codes = torch.randint(0, 3, (4, 7), generator=generator)
    lengths = torch.tensor([7, 3, 0, 5])
    codes[1, 3:] = 3  # ... except on padding, where it must not matter
    weights = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    results = []
    for fused in (True, False):
        leaves = [value.clone().requires_grad_() for value in (log_initial, log_transition, table)]
        if fused:
            value = discrete.log_marginal_categorical(*leaves, codes, lengths)
        else:
            value = discrete.log_marginal(leaves[0], leaves[1], leaves[2].T[codes.clamp(max=2)], lengths)
        grads = torch.autograd.grad((weights * value).sum(), leaves)
        results.append((value.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    assert results[0][0][2] == 0
    for ours, reference in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(ours, torch.nan_to_num(reference, nan=0.0), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="codes"):
        discrete.log_marginal_categorical(log_initial, log_transition, table, codes + 4, lengths)


def test_the_docstring_examples_of_the_kernel_packages_run():
    """Every example in inference.discrete's and inference.kalman's docstrings (the packages and
    each of their modules) gives what it says (one once claimed 16 paths of 3 steps over 2 states)."""
    import doctest
    import importlib
    import pkgutil

    import inference.kalman

    attempted = 0
    for package in (discrete, inference.kalman):
        for name in [package.__name__] + [
            f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
        ]:
            result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
            assert result.failed == 0, name
            attempted += result.attempted
    assert attempted >= 10
