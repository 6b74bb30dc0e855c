"""The command line under ``torchrun`` (zoo/parallel.py): ``torchrun --nproc-per-node 2 -m zoo fit|compare``
on CPU with gloo, against the same commands in one process.

The launched processes load a small ``sitecustomize`` (an audit hook, see
:data:`AUDIT_HOOK`) that records, per rank, every file each one opens for
writing, renames, creates or deletes under the runs folder, so the tests can
check that rank 0 wrote every file and rank 1 none.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference.distributed import DataParallel, DistributedError, ReadOnlyRunDirectory
from inference.rundir import MANIFEST_NAME, RunDirectory
from zoo import parallel
from zoo.cli import main
from zoo.registry import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

REPOSITORY = Path(__file__).resolve().parents[1]
#: Seconds a collective waits for a dead peer in these runs (SEQZOO_DISTRIBUTED_TIMEOUT).
COLLECTIVE_TIMEOUT = 15

#: A sitecustomize for the launched ranks: write-like file events under $SEQZOO_TEST_WATCHED, one log per rank.
AUDIT_HOOK = textwrap.dedent("""
    import os, sys
    _rank, _logs = os.environ.get("RANK"), os.environ.get("SEQZOO_TEST_AUDIT")
    if _rank is not None and _logs:
        _watched = os.path.realpath(os.environ["SEQZOO_TEST_WATCHED"]) + os.sep
        with open(os.path.join(_logs, f"pid.rank{_rank}"), "w") as _pid:
            _pid.write(str(os.getpid()))
        _log = open(os.path.join(_logs, f"writes.rank{_rank}"), "a", buffering=1)
        _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        _CHANGES = {"os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree", "os.truncate", "os.link",
                    "os.symlink", "os.chmod", "shutil.copyfile", "shutil.move"}

        def _audit(event, args):
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None))[:3]
                writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                           else isinstance(flags, int) and bool(flags & _WRITE_FLAGS))
                paths = [path] if writing else []
            elif event in _CHANGES:  # a rename names its source and its target
                paths = list(args[:2]) if event in ("os.rename", "shutil.move", "os.link") else [args[0]]
            else:
                return
            for path in paths:
                if isinstance(path, (str, bytes, os.PathLike)):
                    full = os.path.realpath(os.fsdecode(path))
                    if (full + os.sep).startswith(_watched):
                        _log.write(f"{event} {full}\\n")

        sys.addaudithook(_audit)
""")


@pytest.fixture
def launch(tmp_path):
    """``launch(argv, launcher=...)``: ``torchrun --standalone --nproc-per-node 2 -m zoo ARGV`` (or other
    launcher flags) with the audit hook, in a session of its own."""
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)
    (tmp_path / "runs").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(audit), str(REPOSITORY)]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "SEQZOO_TEST_AUDIT": str(audit),
        "SEQZOO_TEST_WATCHED": str(tmp_path / "runs"),
        "SEQZOO_DISTRIBUTED_TIMEOUT": str(COLLECTIVE_TIMEOUT),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)

    def start(argv, launcher=("--standalone", "--nproc-per-node", "2"), **popen) -> subprocess.Popen:
        command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "zoo", *map(str, argv)]
        return subprocess.Popen(
            command,
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **popen,
        )

    return start


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Waits for a launch; kills its whole session (torchrun and its ranks) if it overruns."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun still running after {timeout} s (a hang)\n{stderr[-3000:]}")
    return stdout, stderr


def writes(tmp_path: Path, rank: int) -> list[str]:
    log = tmp_path / "audit" / f"writes.rank{rank}"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def symbols(tmp_path) -> Path:
    """24 sequences of 6-12 symbols from 4, as an .npz archive."""
    generator = np.random.default_rng(0)
    path = tmp_path / "symbols.npz"
    np.savez(path, values=generator.integers(0, 4, size=(24, 12)), lengths=generator.integers(6, 13, size=24))
    return path


def files_of(run: Path) -> dict[str, Path]:
    return {str(p.relative_to(run)): p for p in sorted(run.rglob("*")) if p.is_file()}


def assert_same_models(single: Path, distributed: Path, atol: float) -> None:
    expected, actual = load_file(single / "model.safetensors"), load_file(distributed / "model.safetensors")
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=lambda m: f"{name}: {m}")


# -- the launched runs -------------------------------------------------------------------------
FITS = {
    # A GRU by SVI: 20 training sequences in global mini-batches of 8 (the last, of 4, sharded 2 + 2).
    "gru-svi": [
        "fit",
        "gru",
        "--hidden",
        "8",
        "--embedding",
        "4",
        "--method",
        "svi",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.05",
    ],
    # A 3-state HMM by EM: each rank's e_step on half the training sequences, statistics all-reduced.
    "hmm-em": ["fit", "hmm", "--states", "3", "--method", "em", "--max-iterations", "8"],
    # A linear-Gaussian state-space model by EM on real-valued sequences (Kalman smoother per rank).
    "lgssm-em": ["fit", "lgssm", "--state-dim", "1", "--method", "em", "--max-iterations", "5"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FITS))
def test_torchrun_fit_equals_one_process_and_only_rank_zero_writes(name, launch, symbols, tmp_path, capsys):
    data = symbols
    if name == "lgssm-em":
        data = tmp_path / "walks.npz"  # 24 random walks of 12 steps
        np.savez(data, values=np.random.default_rng(1).normal(size=(24, 12, 1)).cumsum(1).astype("float32"))
    argv = [*FITS[name], "--data", data, "--seed", "0", "--no-progress"]
    single, distributed = tmp_path / "single", tmp_path / "runs" / "distributed"
    assert main([*map(str, argv), "--out", str(single)]) == 0
    process = launch([*argv, "--out", distributed])
    stdout, stderr = finish(process, timeout=240)
    assert process.returncode == 0, stderr[-3000:]

    # The saved model is the one-process fit with the same (global) mini-batch, to float32 rounding.
    assert_same_models(single, distributed, atol=1e-5 if name != "hmm-em" else 1e-6)
    expected, actual = (json.loads((run / "summary.json").read_text()) for run in (single, distributed))
    for part in ("train", "valid", "test"):
        assert actual[f"{part}_log_likelihood"] == pytest.approx(expected[f"{part}_log_likelihood"], abs=1e-5)
    assert len(actual["history"]) == len(expected["history"]) > 1
    assert [r["valid_log_prob_per_step"] for r in actual["history"]] == pytest.approx(
        [r["valid_log_prob_per_step"] for r in expected["history"]], abs=1e-5
    )

    # The same files as a one-process run, each written by rank 0; rank 1 wrote nothing.
    assert files_of(distributed).keys() == files_of(single).keys()
    assert writes(tmp_path, 1) == []
    written = {Path(line.split(" ", 1)[1]).name for line in writes(tmp_path, 0)}
    assert set(files_of(distributed)) <= written
    # One rank speaks: the summary table is printed once.
    assert stdout.count("run directory:") == 1, stdout


@pytest.mark.slow
def test_torchrun_compare_equals_one_process_and_only_rank_zero_writes(launch, symbols, tmp_path, capsys):
    argv = [
        "compare",
        "--data",
        symbols,
        "--models",
        "hmm:states=2",
        "gru:hidden=8,embedding=4,epochs=2,batch_size=8,lr=0.05",
        "--max-iterations",
        "5",
        "--seed",
        "0",
        "--no-progress",
    ]
    single, distributed = tmp_path / "single", tmp_path / "runs" / "distributed"
    assert main([*map(str, argv), "--out", str(single)]) == 0
    process = launch([*argv, "--out", distributed])
    stdout, stderr = finish(process, timeout=300)
    assert process.returncode == 0, stderr[-3000:]

    models = sorted(p.name for p in single.iterdir() if p.is_dir())
    assert len(models) == 2
    for model in models:
        assert_same_models(single / model, distributed / model, atol=1e-5)
    expected, actual = (json.loads((run / "comparison.json").read_text())["models"] for run in (single, distributed))
    assert [row["model"] for row in actual] == [row["model"] for row in expected]
    for got, want in zip(actual, expected):
        assert got["test_log_likelihood"] == pytest.approx(want["test_log_likelihood"], abs=1e-5)
    assert files_of(distributed).keys() == files_of(single).keys()
    assert writes(tmp_path, 1) == []
    assert stdout.count("comparison:") == 1, stdout


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: The collectives of an SVI fit without validation, by the names their errors give.
FIT_COLLECTIVES = (
    "all-reduce of the gradients",
    "broadcast of the stop decision",
    "all-gather of the RNG states for a checkpoint",
    "barrier after writing a checkpoint",
)
KILLED_FIT = [
    "fit",
    "gru",
    "--hidden",
    "8",
    "--embedding",
    "4",
    "--method",
    "svi",
    "--epochs",
    "100000",
    "--batch-size",
    "4",
    "--split",
    "1,0,0",
    "--no-progress",
]  # no validation part: no early stop


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 2])
def test_torchrun_fit_with_a_killed_rank_ends_with_an_error(nodes, launch, symbols, tmp_path):
    """One node: torchrun's agent sees its worker die and stops the other. Two nodes (two agents of one
    process each, as on two machines): rank 0's next all-reduce fails and it exits with seqzoo's error."""
    out = tmp_path / "runs" / "killed"
    argv = [*KILLED_FIT, "--data", symbols, "--out", out]
    if nodes == 1:
        processes = [launch(argv)]
    else:
        # Static rendezvous: node 0's agent hosts the store, so node 1's death leaves it running and
        # only rank 0's own collectives can notice.
        rendezvous = [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ]
        processes = [launch(argv, launcher=[*rendezvous, "--node-rank", str(node)]) for node in range(2)]
    pid_file = tmp_path / "audit" / "pid.rank1"
    deadline = time.monotonic() + 180
    # config.json is written just before the fit starts; then let a few optimiser steps pass.
    while not (pid_file.exists() and (out / "config.json").exists()):
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            errors = [finish(p, timeout=30)[1] for p in processes]
            pytest.fail(f"the run ended or did not start in time:\n{errors[0][-3000:]}")
        time.sleep(0.2)
    time.sleep(2.0)
    assert all(p.poll() is None for p in processes), "the fit ended before rank 1 could be killed"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # a crash: no clean-up, no goodbye to the group
    killed = time.monotonic()
    outputs = [finish(p, timeout=COLLECTIVE_TIMEOUT + 60) for p in processes]
    seconds = time.monotonic() - killed
    assert all(p.returncode != 0 for p in processes), [p.returncode for p in processes]
    # Within the stated timeout plus the watchdog's grace.
    assert seconds < COLLECTIVE_TIMEOUT + 10, seconds
    stderr = outputs[0][1]
    if nodes == 1:
        assert "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    else:
        # Rank 0 notices in whichever of the fit loop's collectives it is in when its peer dies.
        assert re.search(
            rf"seqzoo fit: error: rank 0: ({'|'.join(FIT_COLLECTIVES)}) failed; another process "
            "probably died",
            stderr,
        ), stderr[-3000:]
    rank0 = int((tmp_path / "audit" / "pid.rank0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(rank0, 0)  # no rank is left behind


# -- in-process checks ------------------------------------------------------------------------
def test_without_torchrun_the_session_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with parallel.session("fit") as group:
        assert group is None and parallel.current() is None
        assert parallel.device_for(None, torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("command", ["decode", "sample", "diagnose"])
def test_other_subcommands_are_refused_under_torchrun(monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match=f"{command}: runs in one process; only fit and compare"):
        with parallel.session(command):
            pass
    assert parallel.current() is None


class RecordingGroup:
    """Stands in for the process group in :func:`parallel.session`: records how it was closed
    (entered and left as a :class:`DataParallel` is)."""

    is_main = True
    fail_to_leave = False
    __enter__ = DataParallel.__enter__
    __exit__ = DataParallel.__exit__

    def __init__(self) -> None:
        self.closes: list[bool] = []

    def close(self, wait_for_others: bool = False) -> None:
        self.closes.append(wait_for_others)
        if wait_for_others and self.fail_to_leave:
            raise DistributedError(
                "rank 0: barrier before leaving the process group failed; another process probably died"
            )


@pytest.fixture
def recording_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    group = RecordingGroup()
    monkeypatch.setattr(DataParallel, "from_environment", staticmethod(lambda **options: group))
    return group


def test_a_session_that_finishes_waits_for_every_rank_before_leaving(recording_group):
    with parallel.session("fit") as group:
        assert group is recording_group and parallel.current() is group
    assert recording_group.closes == [True]
    assert parallel.current() is None


def test_a_session_that_fails_leaves_without_waiting(recording_group):
    with pytest.raises(ValueError, match="bad data"):
        with parallel.session("fit"):
            raise ValueError("bad data")
    assert recording_group.closes == [False]  # its peers may never reach a barrier
    assert parallel.current() is None


def test_a_peer_lost_while_leaving_is_the_distributed_failure(recording_group, capsys):
    recording_group.fail_to_leave = True
    with pytest.raises(SystemExit) as stopped:
        with parallel.session("compare"):
            pass
    assert stopped.value.code == parallel.EXIT_DISTRIBUTED_FAILURE
    assert recording_group.closes == [True]
    assert "seqzoo compare: error: rank 0: barrier before leaving the process group failed" in capsys.readouterr().err


def test_bad_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SEQZOO_DISTRIBUTED_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="SEQZOO_DISTRIBUTED_TIMEOUT: expected a positive number"):
        with parallel.session("fit"):
            pass


def small_model():
    from zoo.hmm import CategoricalHMM

    return CategoricalHMM(2, 3)


def test_read_only_run_directory_reads_and_writes_nothing(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDirectory.create(tmp_path / "run", manifest=True)
    run.write_json("config", {"a": 1})
    run.save_model(small_model())
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}

    view = ReadOnlyRunDirectory(run.path)
    assert view.read_json("config") == {"a": 1}
    assert view.load_tensors("model")[0].keys() == small_model().state_dict().keys()
    view.write_json("config", {"a": 2})
    view.write_text("notes.txt", "x")
    view.save_tensors("other", {"x": torch.zeros(2)})
    view.save_model(small_model())
    view.write_manifest()
    figure = plt.figure()
    assert view.save_figure("trace", figure) == run.path / "trace.png"
    assert not plt.fignum_exists(figure.number)  # closed, not leaked
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before
    assert MANIFEST_NAME in before


def test_launched_reads_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not DataParallel.launched()  # torchrun --nproc-per-node 1: a plain run
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert DataParallel.launched()
