"""Issue 15's bad inputs, one row each: what a user gives, and the message it must get.

Each row builds its bad input in a fresh temporary directory and calls the
entry point the CLI calls (see each module for the mechanism and its own
tests); the error must be of the stated type (a ValueError or FileExistsError,
which the CLI prints as one line, never a traceback) and name the problem.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from inference.memory import InsufficientMemoryError, check_memory
from inference.rundir import (
    DamagedRunError,
    RefusedReplacementError,
    ResumeMismatchError,
    RunDirectory,
    fingerprint_file,
)
from zoo.data import SequenceData, load_data, read_csv, require_counts, require_real, split_data
from zoo.hmm import CategoricalHMM, hmm_fit_memory


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
    run.write_json(
        "config",
        {
            "family": "hmm",
            "data": str(data),
            "model_config": model.config(),
            "fit": {"method": "em"},
            "data_fingerprint": fingerprint_file(data),
        },
    )
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


# -- the same cases through the command line ------------------------------------
# Each row: a setup in a fresh directory returning (argv, watched directory); the
# command must exit with the stated code, print the fragment (one line, no traceback)
# and leave every file under the watched directory byte for byte as it was.
from zoo.cli import main  # noqa: E402

TEXT = "the cat sat on the mat and the dog ate a bone " * 6


def _text(tmp_path, name="tiny.txt", text=TEXT):
    path = tmp_path / name
    path.write_text(text)
    return path


def _fit_run(tmp_path, *extra):
    """A fitted 2-state HMM run directory (3 EM iterations) on a tiny text."""
    out = tmp_path / "run"
    argv = [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--out",
        str(out),
        "--max-iterations",
        "3",
        "--no-progress",
        *extra,
    ]
    assert main(argv) == 0
    return out, argv


def _snapshot(directory):
    if directory is None or not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _cli_work_dir(tmp_path):
    """``work/`` of the issue's first case, with a series long enough to split."""
    work = _work_dir(tmp_path)
    (work / "good.csv").write_text("x\n" + "\n".join(str(v % 7) for v in range(60)) + "\n")
    return work


def cli_force_on_a_users_directory(tmp_path):
    work = _cli_work_dir(tmp_path)
    data = _text(tmp_path)  # elsewhere: refused for the user's files alone
    return ["fit", "hmm", "--data", str(data), "--states", "2", "--out", str(work), "--force"], work


def cli_force_on_the_datas_directory(tmp_path):
    work = _cli_work_dir(tmp_path)
    return ["fit", "hmm", "--data", str(work / "good.csv"), "--states", "2", "--out", str(work), "--force"], work


def cli_force_on_the_current_directory(tmp_path):
    work = _cli_work_dir(tmp_path)
    os.chdir(work)
    return ["fit", "hmm", "--data", "good.csv", "--states", "2", "--out", ".", "--force"], work


def cli_force_on_the_parent_directory(tmp_path):
    work = _cli_work_dir(tmp_path)
    inner = work / "inner"
    inner.mkdir()
    os.chdir(inner)
    return ["fit", "hmm", "--data", "../good.csv", "--states", "2", "--out", "..", "--force"], work


def cli_compare_force_on_a_users_directory(tmp_path):
    work = _cli_work_dir(tmp_path)
    return ["compare", "--data", str(_text(tmp_path)), "--models", "hmm:states=2", "--out", str(work), "--force"], work


def cli_resume_as_another_family(tmp_path):
    out, _ = _fit_run(tmp_path)
    other = _text(tmp_path, "other.txt", "completely different text, with 92 other symbols? " * 5)
    return ["fit", "gru", "--data", str(other), "--out", str(out), "--resume", "--epochs", "1"], out


def cli_resume_with_other_states(tmp_path):
    out, argv = _fit_run(tmp_path)
    return [*(a if a != "2" else "8" for a in argv), "--resume"], out


def cli_resume_with_another_first(tmp_path):
    out, argv = _fit_run(tmp_path, "--first", "200")
    return [*(a if a != "200" else "100" for a in argv), "--resume"], out


def cli_resume_on_other_data_under_the_same_name(tmp_path):
    out, argv = _fit_run(tmp_path)
    _text(tmp_path, text=TEXT.replace("cat", "act"))  # same path and symbols, other contents
    return [*argv, "--resume"], out


def cli_resume_past_the_iteration_limit(tmp_path):
    out, argv = _fit_run(tmp_path)
    return [*(a if a != "3" else "2" for a in argv), "--resume"], out


def cli_a_100000_state_hmm(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "100000",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_compare_a_100000_state_hmm_last(tmp_path):
    return [
        "compare",
        "--data",
        str(_text(tmp_path)),
        "--models",
        "hmm:states=2",
        "hmm:states=100000",
        "--out",
        str(tmp_path / "cmp"),
    ], tmp_path


def cli_zero_states(tmp_path):
    return ["fit", "hmm", "--data", str(_text(tmp_path)), "--states", "0", "--out", str(tmp_path / "run")], tmp_path


def cli_first_zero(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--first",
        "0",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_time_budget_negative(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--time-budget",
        "-1",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_time_budget_zero(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--time-budget",
        "0",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_poisson_on_negative_data(tmp_path):
    data = tmp_path / "series.csv"
    data.write_text("x\n" + "\n".join(str(v) for v in [1, 2, -2, 3] * 5) + "\n")
    return [
        "fit",
        "hmm",
        "--data",
        str(data),
        "--states",
        "2",
        "--emission",
        "poisson",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_poisson_on_fractional_data(tmp_path):
    data = tmp_path / "series.csv"
    data.write_text("x\n" + "\n".join(str(v) for v in [1, 2, 2.5, 3] * 5) + "\n")
    return [
        "fit",
        "hmm",
        "--data",
        str(data),
        "--states",
        "2",
        "--emission",
        "poisson",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_gaussian_on_a_text_file(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--emission",
        "gaussian",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_sampled_states_with_a_diffuse_start(tmp_path):
    return [
        "fit",
        "lgssm",
        "--data",
        "builtin:nile",
        "--state-dim",
        "1",
        "--latent",
        "sampled",
        "--out",
        str(tmp_path / "run"),
    ], tmp_path


def cli_compare_hmm_without_states(tmp_path):
    return ["compare", "--data", str(_text(tmp_path)), "--models", "hmm", "--out", str(tmp_path / "cmp")], tmp_path


def cli_compare_a_setting_given_twice(tmp_path):
    return [
        "compare",
        "--data",
        str(_text(tmp_path)),
        "--models",
        "hmm:states=2,states=3",
        "--out",
        str(tmp_path / "cmp"),
    ], tmp_path


def cli_compare_two_identical_specs(tmp_path):
    return [
        "compare",
        "--data",
        str(_text(tmp_path)),
        "--models",
        "hmm:states=2",
        "hmm:states=2",
        "--out",
        str(tmp_path / "cmp"),
    ], tmp_path


def cli_decode_an_empty_model_safetensors(tmp_path):
    out, _ = _fit_run(tmp_path)
    (out / "model.safetensors").write_bytes(b"")
    return ["decode", str(out)], out


def cli_decode_a_foreign_model_safetensors(tmp_path):
    out, _ = _fit_run(tmp_path)
    (out / "model.safetensors").write_bytes(b"PK\x03\x04 a zip file, not tensors")
    return ["decode", str(out)], out


def cli_decode_a_tensor_of_the_wrong_shape(tmp_path):
    out, _ = _fit_run(tmp_path)
    description = json.loads((out / "model.json").read_text())
    description["config"]["num_states"] = 3  # model.json edited: the tensors are 2-state
    (out / "model.json").write_text(json.dumps(description))
    return ["decode", str(out)], out


def cli_decode_an_invalid_config_json(tmp_path):
    out, _ = _fit_run(tmp_path)
    (out / "config.json").write_text('{"data": "a.txt", ')
    return ["decode", str(out)], out


def cli_decode_a_model_json_that_fits_no_class(tmp_path):
    out, _ = _fit_run(tmp_path)
    description = json.loads((out / "model.json").read_text())
    description["config"]["no_such_setting"] = 1
    (out / "model.json").write_text(json.dumps(description))
    return ["diagnose", str(out)], out


def cli_split_without_held_out_data(tmp_path):
    return [
        "fit",
        "hmm",
        "--data",
        str(_text(tmp_path)),
        "--states",
        "2",
        "--split",
        "1,0,0",
        "--max-iterations",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ], None


#: (setup, exit code, a fragment of what is printed).
CLI_CASES = [
    (cli_force_on_a_users_directory, 2, "is not a seqzoo run directory"),
    (cli_force_on_the_datas_directory, 2, "holds the data file"),
    (cli_force_on_the_current_directory, 2, "'.' is the current directory"),
    (cli_force_on_the_parent_directory, 2, "'..' is a directory above the current one"),
    (cli_compare_force_on_a_users_directory, 2, "is not a seqzoo run directory"),
    (cli_resume_as_another_family, 2, "the run was fitted with the family hmm, not gru"),
    (cli_resume_with_other_states, 2, "the run was fitted with --states 2, not 8"),
    (cli_resume_with_another_first, 2, "the run was fitted with --first 200, not 100"),
    (cli_resume_on_other_data_under_the_same_name, 2, "the run was fitted on other data"),
    (
        cli_resume_past_the_iteration_limit,
        0,
        "already reached its limit: checkpoint at iteration 3, --max-iterations 2",
    ),
    (cli_a_100000_state_hmm, 2, "an HMM with 100,000 states"),
    (cli_compare_a_100000_state_hmm_last, 2, "compare hmm-states100000: an HMM with 100,000 states"),
    (cli_zero_states, 2, "--states: expected a positive integer, got 0"),
    (cli_first_zero, 2, "--first: expected a positive number of time steps, got 0"),
    (cli_time_budget_negative, 2, "--time-budget: expected a positive number of minutes, got -1"),
    (cli_time_budget_zero, 2, "--time-budget: expected a positive number of minutes, got 0"),
    (cli_poisson_on_negative_data, 2, "--emission poisson needs nonnegative integer counts, but"),
    (cli_poisson_on_fractional_data, 2, "has 2.5 at sequence 0, step 2"),
    (cli_gaussian_on_a_text_file, 2, "--emission gaussian needs a .csv or .npz file of numbers"),
    (cli_sampled_states_with_a_diffuse_start, 2, "add --initial prior"),
    (cli_compare_hmm_without_states, 2, "the following arguments are required: --states"),
    (cli_compare_a_setting_given_twice, 2, "states is given twice (states=2, states=3)"),
    (cli_compare_two_identical_specs, 2, "hmm-states2 given more than once"),
    (cli_decode_an_empty_model_safetensors, 2, "model.safetensors: the file is empty"),
    (cli_decode_a_foreign_model_safetensors, 2, "model.safetensors: not a readable safetensors file"),
    (cli_decode_a_tensor_of_the_wrong_shape, 2, "'transition_logits' has shape (2, 2), not (3, 3)"),
    (cli_decode_an_invalid_config_json, 2, "config.json: invalid JSON at line 1"),
    (cli_decode_a_model_json_that_fits_no_class, 2, "model.json: its settings do not make a CategoricalHMM"),
    (cli_split_without_held_out_data, 0, "valid and test: no held-out data"),
]


@pytest.mark.parametrize("setup, exit_code, fragment", CLI_CASES, ids=[case[0].__name__ for case in CLI_CASES])
def test_cli_bad_input_gets_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, setup, exit_code, fragment):
    monkeypatch.chdir(tmp_path)
    argv, watched = setup(tmp_path)
    before = _snapshot(watched)
    capsys.readouterr()
    assert main(argv) == exit_code
    printed = capsys.readouterr()
    assert fragment in printed.out + printed.err
    assert "Traceback" not in printed.err
    if exit_code:
        assert len(printed.err.strip().splitlines()) == 1, printed.err
    assert _snapshot(watched) == before  # a refusal writes, deletes and rewrites nothing
    assert not list(tmp_path.rglob(".new-*")) and not list(tmp_path.rglob(".old-*"))  # no staging left behind
    if "100,000 states" in fragment:
        assert not (tmp_path / "run").exists() and not (tmp_path / "cmp").exists()  # no half-written run
