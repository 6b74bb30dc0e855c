"""Data-parallel fitting (inference/distributed.py): 2 CPU processes over gloo,
spawned by the tests, against single-process runs over the union of the shards."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch

from inference import SequenceBatch
from inference.batch import iterate_minibatches
from inference.distributed import WATCHDOG_EXIT_CODE, DataParallel, _Watchdog, shard_minibatches, shard_slice
from inference.fit import fit
from inference.training.loops import _uses_split_em
from zoo.hmm import CategoricalHMM, _dirichlet_mode
from zoo.rnn import RecurrentModel

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD_SIZE = 2
#: Seconds a collective waits for a dead peer in these tests (the process-group timeout).
COLLECTIVE_TIMEOUT = 15.0


# -- data and models shared by the parent and the spawned ranks ------------------------
def symbol_data(num_sequences: int = 16, length: int = 7) -> SequenceBatch:
    generator = torch.Generator().manual_seed(3)
    values = torch.randint(0, 4, (num_sequences, length), generator=generator)
    lengths = torch.randint(3, length + 1, (num_sequences,), generator=generator)
    return SequenceBatch.from_tensor(values, lengths)


def make_rnn(dropout: float = 0.0) -> RecurrentModel:
    return RecurrentModel(
        "categorical", num_symbols=4, cell="gru", hidden_size=6, embedding_dim=3, dropout=dropout
    ).double()


def make_hmm() -> CategoricalHMM:
    return CategoricalHMM(2, 4).double()


class SplitEMHMM(CategoricalHMM):
    """A categorical HMM whose Baum-Welch is split into the contract's
    ``e_step`` (additive counts) and ``m_step`` (the family's MAP update)."""

    def e_step(self, batch):
        from inference import discrete

        point = self._point()
        log_emission = self._emission_log_prob(self._check_observations(batch.values, "values"), point).double()
        posterior = discrete.forward_backward(
            point["initial"].log().double(), point["transition"].log().double(), log_emission, batch.lengths
        )
        codes = batch.values.reshape(-1)
        emission_counts = torch.zeros(self.num_symbols, self.num_states, dtype=torch.float64)
        emission_counts.index_add_(0, codes, posterior.state_marginals.reshape(-1, self.num_states))
        return {
            "log_likelihood": posterior.log_normalizer.sum(),
            "initial": posterior.state_marginals[:, 0].sum(0),
            "transition": posterior.transition_counts.sum(0),
            "emission": emission_counts.T,
        }

    def m_step(self, statistics):
        with torch.no_grad():
            self.initial_logits.copy_(_dirichlet_mode(statistics["initial"], self.initial_concentration).log())
            self.transition_logits.copy_(_dirichlet_mode(statistics["transition"], self.transition_concentration).log())
            self.emission_logits.copy_(_dirichlet_mode(statistics["emission"], self.emission_concentration).log())


SVI_OPTIONS = dict(batch_size=8, max_epochs=3, learning_rate=0.05, lr_schedule="constant", progress=False)


# -- the scenarios each rank runs --------------------------------------------------------
def scenario_svi(parallel: DataParallel, out: Path, family: str) -> dict:
    model = make_rnn() if family == "rnn" else make_hmm()
    data = symbol_data()
    result = parallel.fit(model, data[:12], valid=data[12:], seed=5, **SVI_OPTIONS)
    return {"state": model.state_dict(), "history": result.history}


def scenario_em(parallel: DataParallel, out: Path, family: str) -> dict:
    model, data = em_model_and_data(family)
    result = parallel.fit(model, data, method="em", max_iterations=6, progress=False, seed=1)
    return {"state": model.state_dict(), "history": result.history}


def em_model_and_data(family: str):
    if family == "lgssm":
        from zoo.lgssm import LinearGaussianSSM

        truth = LinearGaussianSSM(2, 2).double()
        data = truth.sample(9, 12, generator=torch.Generator().manual_seed(2))
        return LinearGaussianSSM(2, 2).double(), data
    model = SplitEMHMM(2, 4).double() if family == "split_hmm" else make_hmm()
    return model, symbol_data(num_sequences=11)


def scenario_killed(parallel: DataParallel, out: Path, family: str) -> dict:
    def die(record):
        if parallel.rank == 1 and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no clean-up, no goodbye to the process group

    started = time.monotonic()
    try:
        parallel.fit(make_rnn(), symbol_data(), batch_size=4, max_epochs=50, progress=False, step_callbacks=[die])
    finally:
        (out / f"rank{parallel.rank}.seconds").write_text(f"{time.monotonic() - started}")
    return {}


def scenario_resume(parallel: DataParallel, out: Path, family: str) -> dict:
    # Dropout draws from each rank's own RNG stream, so the per-rank RNG states must be restored.
    data = symbol_data()
    options = dict(SVI_OPTIONS, max_epochs=4, checkpoint_every=1)
    uninterrupted = make_rnn(dropout=0.3)
    parallel.fit(uninterrupted, data, seed=2, **options)
    run = parallel.create_run(out / "run")
    parallel.fit(make_rnn(dropout=0.3), data, seed=2, checkpoint=run, **dict(options, max_epochs=2))
    resumed = make_rnn(dropout=0.3)
    result = parallel.fit(resumed, data, seed=2, checkpoint=run, resume=True, **options)
    return {
        "state": resumed.state_dict(),
        "uninterrupted": uninterrupted.state_dict(),
        "history": result.history,
        "files": sorted(p.name for p in (out / "run").iterdir()),
    }


def scenario_nonfinite(parallel: DataParallel, out: Path, family: str) -> dict:
    from pyro.infer import Trace_ELBO

    calls = []

    def loss(model, batch):
        calls.append(1)
        value = Trace_ELBO().differentiable_loss(model.model, model.guide, batch)
        # Rank 1 alone sees a NaN loss at its third evaluation (the first is the lazy one).
        return value * float("nan") if parallel.rank == 1 and len(calls) == 3 else value

    parallel.fit(make_rnn(), symbol_data(), loss=loss, **SVI_OPTIONS)
    return {}


SCENARIOS = {
    "nonfinite": scenario_nonfinite,
    "svi": scenario_svi,
    "em": scenario_em,
    "killed": scenario_killed,
    "resume": scenario_resume,
}


def run_rank(rank: int, init_file: str, out: str, scenario: str, family: str) -> None:
    torch.set_num_threads(1)
    out_dir = Path(out)
    try:
        parallel = DataParallel.initialize(
            backend="gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=COLLECTIVE_TIMEOUT,
        )
        with parallel:
            result = SCENARIOS[scenario](parallel, out_dir, family)
        torch.save(result, out_dir / f"rank{rank}.pt")
    except BaseException:
        (out_dir / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


#: Seconds rank 1 goes on working after rank 0 has finished, in the leaving tests.
LATE = 3.0


def leave_rank(rank: int, init_file: str, out: str, scenario: str, family: str) -> None:
    """Rank 1 finishes ``LATE`` seconds after rank 0, which finishes normally (``scenario``
    "leave") or by an exception ("leave_failing"). Each rank records the seconds it spent
    leaving the ``with`` block, and its error if any."""
    torch.set_num_threads(1)
    out_dir = Path(out)
    parallel = DataParallel.initialize(
        backend="gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE, timeout=COLLECTIVE_TIMEOUT
    )
    parallel.barrier("start together")
    finished = time.monotonic()
    try:
        with parallel:
            if rank == 1:
                time.sleep(LATE)
            finished = time.monotonic()
            if rank == 0 and scenario == "leave_failing":
                raise ValueError("rank 0 failed")
    except BaseException:
        (out_dir / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        (out_dir / f"rank{rank}.leave_seconds").write_text(f"{time.monotonic() - finished}")


def spawn(tmp_path: Path, scenario: str, family: str = "", timeout: float = 120.0, target=run_rank) -> list[int]:
    """Runs ``scenario`` in ``WORLD_SIZE`` spawned processes (each runs ``target``); their exit
    codes. Fails the test (and kills them) if they are not all done within ``timeout``."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=target, args=(rank, str(tmp_path / "rendezvous"), str(tmp_path), scenario, family), daemon=True
        )
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for rank in hung:
        processes[rank].kill()
        processes[rank].join()
    assert not hung, f"ranks {hung} still running after {timeout} s (a hang)"
    return [process.exitcode for process in processes]


def results(tmp_path: Path, exitcodes: list[int]) -> list[dict]:
    errors = {
        rank: (tmp_path / f"rank{rank}.error").read_text()
        for rank in range(WORLD_SIZE)
        if (tmp_path / f"rank{rank}.error").exists()
    }
    assert not errors and exitcodes == [0] * WORLD_SIZE, f"exit codes {exitcodes}, errors: {errors}"
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def assert_states_close(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


# -- in-process tests -----------------------------------------------------------------------
@pytest.mark.parametrize("num_sequences,batch_size", [(16, 8), (16, 16), (13, 6), (12, 5)])
def test_shards_cover_each_minibatch_equally(num_sequences, batch_size):
    data = symbol_data(num_sequences)
    single = [b.indices.tolist() for b in iterate_minibatches(data, batch_size, torch.Generator().manual_seed(4))]
    shards = [
        [b for b in shard_minibatches(data, batch_size, torch.Generator().manual_seed(4), rank=rank, world_size=3)]
        for rank in range(3)
    ]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(single)  # equal step counts
    for step, expected in enumerate(single):
        pieces = [shards[rank][step] for rank in range(3)]
        assert len({p.num_sequences for p in pieces}) == 1  # equal slices
        assert all(p.population == num_sequences for p in pieces)
        union = [i for p in pieces for i in p.indices.tolist()]
        # The union is the single-process mini-batch, padded by repeating its first sequences.
        assert union[: len(expected)] == expected
        assert union[len(expected) :] == (expected * 3)[: len(union) - len(expected)]
        assert len(union) - len(expected) < 3


def test_shard_slices_partition():
    for n in range(0, 9):
        slices = [shard_slice(n, rank, 3) for rank in range(3)]
        assert [i for s in slices for i in range(n)[s]] == list(range(n))
        assert max(s.stop - s.start for s in slices) - min(s.stop - s.start for s in slices) <= 1


def hang_in_a_collective() -> None:
    watchdog = _Watchdog(rank=0, timeout=0.5, grace=0.5)
    watchdog.pending = ("a collective that never returns", time.monotonic())
    time.sleep(60)


def test_watchdog_ends_a_process_stuck_in_a_collective():
    process = multiprocessing.get_context("spawn").Process(target=hang_in_a_collective, daemon=True)
    started = time.monotonic()
    process.start()
    process.join(50)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail("the watchdog did not end the process")
    assert process.exitcode == WATCHDOG_EXIT_CODE
    assert time.monotonic() - started < 50


# -- spawned tests ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("family", ["rnn", "hmm"])
def test_svi_equals_single_process_over_union_of_shards(tmp_path, family):
    ranks = results(tmp_path, spawn(tmp_path, "svi", family))
    model = make_rnn() if family == "rnn" else make_hmm()
    data = symbol_data()
    reference = fit(model, data[:12], valid=data[12:], seed=5, **SVI_OPTIONS)
    for rank in ranks:
        assert_states_close(rank["state"], model.state_dict(), atol=1e-9)
        # The global validation score is the single-process one.
        assert [r["valid_log_prob_per_step"] for r in rank["history"]] == pytest.approx(
            [r["valid_log_prob_per_step"] for r in reference.history], abs=1e-9
        )
    # Training really moved the parameters (the comparison is not of two initial states).
    assert not torch.allclose(
        model.state_dict()["output.weight" if family == "rnn" else "emission_logits"],
        (make_rnn() if family == "rnn" else make_hmm()).state_dict()[
            "output.weight" if family == "rnn" else "emission_logits"
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", ["split_hmm", "hmm", "lgssm"])
def test_em_equals_single_process_em(tmp_path, family):
    model, data = em_model_and_data(family)
    # Distributed EM sums e_step statistics across ranks: a family without the split must not pass as a skip.
    assert _uses_split_em(model), f"{type(model).__name__} has no e_step/m_step to split"
    ranks = results(tmp_path, spawn(tmp_path, "em", family))
    reference = fit(model, data, method="em", max_iterations=6, progress=False, seed=1)
    for rank in ranks:
        assert_states_close(rank["state"], model.state_dict(), atol=1e-9)
        assert [r["objective"] for r in rank["history"]] == pytest.approx(
            [r["objective"] for r in reference.history], rel=1e-12
        )
    if family == "split_hmm":
        # The split E/M steps are the family's own Baum-Welch.
        baum_welch = make_hmm()
        fit(baum_welch, data, method="em", max_iterations=6, progress=False, seed=1)
        assert_states_close(model.state_dict(), baum_welch.state_dict(), atol=1e-9)


@pytest.mark.slow
def test_killed_rank_ends_the_run_with_an_error(tmp_path):
    exitcodes = spawn(tmp_path, "killed", timeout=COLLECTIVE_TIMEOUT + 90)
    assert exitcodes[1] == -signal.SIGKILL
    assert exitcodes[0] != 0
    error = (tmp_path / "rank0.error").read_text()
    assert "DistributedError" in error and "another process probably died" in error, error
    # Rank 0 gave up within the stated timeout (plus the watchdog's grace), not after a hang.
    assert float((tmp_path / "rank0.seconds").read_text()) < COLLECTIVE_TIMEOUT + 10


@pytest.mark.slow
def test_nonfinite_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    exitcodes = spawn(tmp_path, "nonfinite")
    assert exitcodes == [1, 1]
    for rank in range(WORLD_SIZE):
        error = (tmp_path / f"rank{rank}.error").read_text()
        assert "FloatingPointError: fit: the loss is not finite on 1 of 2 processes" in error, error
        assert "DistributedError" not in error
    assert "(this one: yes)" in (tmp_path / "rank1.error").read_text()


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted(tmp_path):
    ranks = results(tmp_path, spawn(tmp_path, "resume"))
    for rank in ranks:
        assert_states_close(rank["state"], rank["uninterrupted"], atol=1e-12)
        assert [r["step"] for r in rank["history"]] == [1, 2, 3, 4]
    assert_states_close(ranks[1]["state"], ranks[0]["state"], atol=0)
    assert "checkpoint.safetensors" in ranks[0]["files"] and "model.safetensors" in ranks[0]["files"]


def leave_seconds(tmp_path: Path) -> list[float]:
    return [float((tmp_path / f"rank{rank}.leave_seconds").read_text()) for rank in range(WORLD_SIZE)]


@pytest.mark.slow
def test_ranks_that_finish_normally_leave_the_group_together(tmp_path):
    # Leaving alone can abort a peer still using the gloo connections (std::terminate, exit -6).
    assert spawn(tmp_path, "leave", target=leave_rank) == [0, 0]
    assert not list(tmp_path.glob("rank*.error"))
    rank0, rank1 = leave_seconds(tmp_path)
    assert LATE - 0.5 < rank0 < LATE + 10, rank0  # rank 0 waited for rank 1 ...
    assert rank1 < 2.0, rank1  # ... which found it waiting


@pytest.mark.slow
def test_a_rank_that_failed_leaves_at_once_and_its_peer_gets_an_error(tmp_path):
    exitcodes = spawn(tmp_path, "leave_failing", target=leave_rank, timeout=COLLECTIVE_TIMEOUT + 90)
    assert exitcodes[0] == 1 and "ValueError: rank 0 failed" in (tmp_path / "rank0.error").read_text()
    rank0, rank1 = leave_seconds(tmp_path)
    assert rank0 < 2.0, rank0  # the failed rank did not wait for a peer
    # The peer's wait ends with an error naming it (not a hang, not a silent success).
    assert exitcodes[1] == 1
    error = (tmp_path / "rank1.error").read_text()
    assert "DistributedError: rank 1: barrier before leaving the process group failed" in error, error
    assert rank1 < COLLECTIVE_TIMEOUT + 10, rank1
