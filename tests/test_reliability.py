"""Issue 15's bad inputs, one row each: what a user gives, and the message it must get.

Each row builds its bad input in a fresh temporary directory and calls the
entry point the CLI calls (see each module for the mechanism and its own
tests); the error must be of the stated type (a ValueError or FileExistsError,
which the CLI prints as one line, never a traceback) and name the problem.
"""

from __future__ import annotations

import os

import pytest
import torch

from inference.memory import InsufficientMemoryError, check_memory, hmm_fit_memory
from inference.rundir import (
    DamagedRunError,
    RefusedReplacementError,
    ResumeMismatchError,
    RunDirectory,
    fingerprint_file,
)
from zoo.data import SequenceData, load_data, read_csv, require_counts, require_real, split_data
from zoo.hmm import CategoricalHMM


def _work_dir(tmp_path):
    """``work/`` with a user's data and notes, the issue's first case."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "good.csv").write_text("x\n1\n2\n3\n")
    (work / "notes.txt").write_text("my notes")
    return work


def _run(tmp_path, states=2):
    run = RunDirectory.create(tmp_path / "run", manifest=True)
    model = CategoricalHMM(states, 3)
    run.save_model(model)
    data = tmp_path / "data.txt"
    data.write_text("abcabc")
    run.write_json("config", {"family": "hmm", "data": str(data), "model_config": model.config(),
                              "fit": {"method": "em"}, "data_fingerprint": fingerprint_file(data)})
    return run


def force_on_a_users_directory(tmp_path):
    RunDirectory.create(_work_dir(tmp_path), force=True)


def force_on_the_current_directory(tmp_path):
    work = _work_dir(tmp_path)
    os.chdir(work)
    RunDirectory.create(".", force=True, data_paths=["good.csv"])


def force_on_the_parent_directory(tmp_path):
    os.chdir(_work_dir(tmp_path))
    RunDirectory.create("..", force=True)


def force_on_the_datas_directory(tmp_path):
    run = _run(tmp_path)
    run.write_json("my_data.json", [1, 2, 3])  # a run-like name, but it is the data
    RunDirectory.stage(run.path, force=True, data_paths=[run.path / "my_data.json"])


def force_on_a_run_with_a_users_file(tmp_path):
    run = _run(tmp_path)
    (run.path / "notes.txt").write_text("mine")
    RunDirectory.stage(run.path, force=True)


def resume_with_other_states(tmp_path):
    run = _run(tmp_path)
    config = run.read_json("config")
    run.check_resume({**config, "model_config": {**config["model_config"], "num_states": 8}})


def resume_with_another_method(tmp_path):
    run = _run(tmp_path)
    run.check_resume({**run.read_json("config"), "family": "hmm", "fit": {"method": "svi"}})


def resume_on_other_data(tmp_path):
    run = _run(tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("abcabcabc")
    run.check_resume({**run.read_json("config"), "data": str(other), "data_fingerprint": fingerprint_file(other)})


def resume_a_directory_that_is_no_run(tmp_path):
    RunDirectory.open(_work_dir(tmp_path)).check_resume({"data": "good.csv"})


def empty_model_safetensors(tmp_path):
    run = _run(tmp_path)
    (run.path / "model.safetensors").write_bytes(b"")
    run.load_state_dict_into(CategoricalHMM(2, 3))


def truncated_model_safetensors(tmp_path):
    run = _run(tmp_path)
    path = run.path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    run.load_state_dict_into(CategoricalHMM(2, 3))


def foreign_model_safetensors(tmp_path):
    run = _run(tmp_path)
    (run.path / "model.safetensors").write_bytes(b"PK\x03\x04 a zip file, not tensors")
    run.load_state_dict_into(CategoricalHMM(2, 3))


def model_of_the_wrong_size(tmp_path):
    run = _run(tmp_path, states=8)  # config.json edited to 2 states afterwards
    run.load_state_dict_into(CategoricalHMM(2, 3))


def invalid_config_json(tmp_path):
    run = _run(tmp_path)
    (run.path / "config.json").write_text('{"data": "a.txt", ')
    run.read_json("config.json")


def csv_with_infinity(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("t,x\n1,0.5\n2,-inf\n")
    read_csv(path, time_column="t")


def csv_with_a_named_empty_column(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("x,y\n1,\n2,NA\n")
    read_csv(path, columns=["x", "y"])


def poisson_on_negative_data(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("x\n1\n-2\n")
    require_counts(read_csv(path), "--emission poisson")


def poisson_on_fractional_data(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("x\n1\n2.5\n")
    require_counts(read_csv(path), "--emission poisson")


def gaussian_on_a_text_file(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("call me ishmael\n")
    require_real(load_data(path), "--emission gaussian")


def a_100000_state_hmm(tmp_path):
    estimate = hmm_fit_memory(100_000, num_symbols=1440, batch_sequences=1, batch_steps=100_000)
    check_memory(estimate, limit_bytes=64 * 2**30, what="--states 100000")


def splits_of_empty_sequences(tmp_path):
    from zoo.data import as_sequence_data

    data: SequenceData = as_sequence_data(torch.zeros(4, 3, 1), "real", lengths=torch.tensor([0, 3, 0, 0]))
    split_data(data, (0.5, 0.25, 0.25))


#: (bad input, the error type the CLI prints as one line, a fragment of the message).
CASES = [
    (force_on_a_users_directory, RefusedReplacementError, "is not a seqzoo run directory"),
    (force_on_the_current_directory, RefusedReplacementError, "'.' is the current directory"),
    (force_on_the_parent_directory, RefusedReplacementError, "'..' is a directory above the current one"),
    (force_on_the_datas_directory, RefusedReplacementError, "holds the data file"),
    (force_on_a_run_with_a_users_file, RefusedReplacementError, "also holds 'notes.txt', which no run wrote"),
    (resume_with_other_states, ResumeMismatchError, "the run was fitted with --states 2, not 8"),
    (resume_with_another_method, ResumeMismatchError, "the run was fitted with --method em, not svi"),
    (resume_on_other_data, ResumeMismatchError, "the run was fitted on other data"),
    (resume_a_directory_that_is_no_run, DamagedRunError, "has no config.json"),
    (empty_model_safetensors, DamagedRunError, "model.safetensors: the file is empty"),
    (truncated_model_safetensors, DamagedRunError, "model.safetensors: not a readable safetensors file"),
    (foreign_model_safetensors, DamagedRunError, "truncated or foreign"),
    (model_of_the_wrong_size, DamagedRunError, "'transition_logits' has shape (8, 8), not (2, 2)"),
    (invalid_config_json, DamagedRunError, "config.json: invalid JSON at line 1"),
    (csv_with_infinity, ValueError, "series.csv: line 3, column 'x': expected a finite number"),
    (csv_with_a_named_empty_column, ValueError, "column(s) ['y'] hold no numbers"),
    (poisson_on_negative_data, ValueError, "--emission poisson needs nonnegative integer counts, but"),
    (poisson_on_fractional_data, ValueError, "has 2.5 at sequence 0, step 1"),
    (gaussian_on_a_text_file, ValueError, "--emission gaussian needs a .csv or .npz file of numbers"),
    (a_100000_state_hmm, InsufficientMemoryError, "--states 100000: an HMM with 100,000 states"),
    (splits_of_empty_sequences, ValueError, "only 1 of 4 sequences have any steps"),
]


@pytest.mark.parametrize("make_bad_input, error_type, fragment", CASES, ids=[case[0].__name__ for case in CASES])
def test_bad_input_gets_a_clear_message(tmp_path, monkeypatch, make_bad_input, error_type, fragment):
    monkeypatch.chdir(tmp_path)  # cases that chdir are undone
    with pytest.raises(error_type) as error:
        make_bad_input(tmp_path)
    assert isinstance(error.value, (ValueError, FileExistsError))  # what the CLI prints as one line
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_refused_force_leaves_every_file_in_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for case in (force_on_a_users_directory, force_on_the_current_directory, force_on_the_parent_directory):
        with pytest.raises(RefusedReplacementError):
            case(tmp_path)
        os.chdir(tmp_path)
        work = tmp_path / "work"
        assert sorted(p.name for p in work.iterdir()) == ["good.csv", "notes.txt"]
        assert (work / "notes.txt").read_text() == "my notes"
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
