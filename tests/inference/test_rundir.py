"""Tests of the run-directory helper."""

from __future__ import annotations

import json
import os
import pickle

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from inference.rundir import RunDirectory  # noqa: E402


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 2))
        self.register_buffer("counts", torch.arange(4))

    def config(self):
        return {"size": 3}


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_create_refuses_to_clobber_and_force_replaces(tmp_path):
    target = tmp_path / "run"
    run = RunDirectory.create(target)
    run.write_text("old.txt", "old")
    run.write_manifest()  # old.txt is the run's own file: --force may delete it
    with pytest.raises(FileExistsError, match="--force") as error:
        RunDirectory.create(target)
    assert str(target) in str(error.value)
    assert (target / "old.txt").read_text() == "old"
    replaced = RunDirectory.create(target, force=True)
    assert _listing(replaced.path) == []
    assert _listing(tmp_path) == ["run"]  # the .old-* sibling is gone
    (tmp_path / "empty").mkdir()
    assert RunDirectory.create(tmp_path / "empty").path == tmp_path / "empty"  # an empty dir is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        RunDirectory.create(tmp_path / "file", force=True)


def test_open_needs_an_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        RunDirectory.open(tmp_path / "missing")
    RunDirectory.create(tmp_path / "run").write_json("a", {"x": 1})
    assert RunDirectory.open(tmp_path / "run").read_json("a.json") == {"x": 1}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    run.write_json("config", {"a": [1, 2.5, None], "b": "text"})
    run.write_text("notes.txt", "hello")
    run.save_tensors("weights", {"w": torch.ones(2)})
    run.write_json("config", {"a": 2})  # overwrite
    assert _listing(run.path) == ["config.json", "notes.txt", "weights.safetensors"]
    assert run.read_json("config") == {"a": 2}
    # A failing write (not JSON-serialisable) leaves the old file and no temp file.
    with pytest.raises(TypeError):
        run.write_json("config", {"a": object()})
    assert run.read_json("config") == {"a": 2}
    with pytest.raises(TypeError, match="tensors"):
        run.save_tensors("weights", {"w": [1.0]})
    assert _listing(run.path) == ["config.json", "notes.txt", "weights.safetensors"]
    with pytest.raises(ValueError, match="name"):
        run.write_text("../escape.txt", "no")


def test_safetensors_round_trip(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {
        "transposed": base.t(),
        "shared": base[0],
        "ints": torch.tensor([1, 2], dtype=torch.long),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "grad": torch.ones(2, requires_grad=True),
    }
    run.save_tensors("state", tensors, metadata={"step": 4, "nested": {"a": [1, 2]}})
    loaded, metadata = run.load_tensors("state.safetensors")
    assert metadata == {"step": 4, "nested": {"a": [1, 2]}}
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value.detach()), name
    run.save_tensors("bare", {"x": torch.zeros(1)})
    assert run.load_tensors("bare", device="cpu")[1] == {}


def test_save_model_and_load_never_unpickle(tmp_path, monkeypatch):
    run = RunDirectory.create(tmp_path / "run")
    model = _Tiny()
    run.save_model(model)
    assert run.read_json("model") == {"class": f"{__name__}._Tiny", "config": {"size": 3}}

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = _Tiny()
    assert not torch.equal(fresh.weight, model.weight)
    run.load_state_dict_into(fresh)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.counts, model.counts)


class _Payload:
    executed = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.executed = True
        return "payload"


def test_a_pickle_disguised_as_safetensors_is_rejected(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    (run.path / "evil.safetensors").write_bytes(pickle.dumps({"w": _Payload()}))
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do: what matters is that nothing ran)
        run.load_tensors("evil")
    assert not _Payload.executed


def test_save_figure_writes_png_and_closes(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    number = fig.number
    path = run.save_figure("curve", fig)
    assert path.name == "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(number)
    assert [name for name in os.listdir(run.path) if name.endswith(".tmp")] == []


# -- issue 15: --force never deletes a user's files -----------------------------
from inference.rundir import (  # noqa: E402
    MANIFEST_NAME,
    DamagedRunError,
    RefusedReplacementError,
    ResumeMismatchError,
    check_replaceable,
    fingerprint_file,
    fingerprint_tensor,
    is_run_directory,
)


def _legacy_run(path):
    """A run directory as `seqzoo fit` wrote it before manifests existed."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"data": "good.csv", "model_config": {"num_states": 2}}')
    (path / "model.json").write_text('{"class": "zoo.hmm.CategoricalHMM", "config": {}}')
    (path / "model.safetensors").write_bytes(b"x")
    (path / "log_likelihood_trace.png").write_bytes(b"png")
    (path / "decoded.csv").write_text("sequence,time,state\n")
    (path / "diagnostics").mkdir()
    (path / "diagnostics" / "diagnose.json").write_text("{}")
    (path / "diagnostics" / "summary.csv").write_text("a\n")
    return path


def test_force_refuses_a_directory_holding_a_users_files(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "good.csv").write_text("x\n1\n")
    (work / "notes.txt").write_text("my notes")
    with pytest.raises(RefusedReplacementError, match="not a seqzoo run directory") as error:
        RunDirectory.create(work, force=True)
    assert "notes.txt" in str(error.value) and "good.csv" in str(error.value)
    assert _listing(work) == ["good.csv", "notes.txt"] and (work / "notes.txt").read_text() == "my notes"
    # A run directory with a user's file added is refused too, naming that file.
    run = _legacy_run(tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RefusedReplacementError, match="'notes.txt', which no run wrote"):
        RunDirectory.create(run, force=True)
    with pytest.raises(RefusedReplacementError, match="notes.txt"):
        RunDirectory.stage(run, force=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "model.json").exists()
    assert _listing(tmp_path) == ["run", "work"]  # no staging or .old-* sibling left behind


def test_force_refuses_the_current_directory_its_parents_and_the_datas_directory(tmp_path, monkeypatch):
    run = _legacy_run(tmp_path / "outer" / "run")
    monkeypatch.chdir(run)
    for given, reason in (
        (".", "is the current directory"),
        ("..", "above the current one"),
        (str(tmp_path), "above the current one"),
    ):
        with pytest.raises(RefusedReplacementError, match=reason):
            RunDirectory.create(given, force=True)
        with pytest.raises(RefusedReplacementError, match=reason):
            RunDirectory.stage(given, force=True)
    monkeypatch.chdir(tmp_path)
    # The data file sits in a run directory under a run-like name: still refused.
    (run / "series.json").write_text("[1, 2]")
    with pytest.raises(RefusedReplacementError, match="holds the data file"):
        RunDirectory.create(run, force=True, data_paths=[run / "series.json"])
    assert (run / "series.json").exists() and (run / "config.json").exists()


def test_force_replaces_a_run_and_deletes_only_its_files(tmp_path):
    # A legacy run (config.json, no manifest) with a diagnostics sub-run.
    legacy = _legacy_run(tmp_path / "legacy")
    assert is_run_directory(legacy)
    assert _listing(RunDirectory.create(legacy, force=True).path) == []
    # A run with a manifest may hold files of any name the run wrote.
    run = RunDirectory.create(tmp_path / "run", manifest=True)
    run.write_json("config", {"a": 1})
    run.write_text("ozone_imputed.csv", "t,x\n")
    run.write_text("samples/sample_0.txt", "abc")
    RunDirectory.create(run.path / "diagnostics", manifest=True).write_json("diagnose", {})
    assert sorted(json.loads((run.path / MANIFEST_NAME).read_text())["files"]) == [
        "config.json",
        "ozone_imputed.csv",
        "samples/sample_0.txt",
    ]
    check_replaceable(run.path)
    fresh = RunDirectory.create(run.path, force=True)
    assert _listing(fresh.path) == [] and _listing(tmp_path) == ["legacy", "run"]
    # A folder the manifest does not account for is not the run's.
    other = RunDirectory.create(tmp_path / "other", manifest=True)
    other.write_json("config", {})
    (other.path / "photos").mkdir()
    (other.path / "photos" / "cat.jpg").write_bytes(b"jpg")
    with pytest.raises(RefusedReplacementError, match="photos/"):
        RunDirectory.create(other.path, force=True)


def test_staged_run_replaces_the_old_one_only_on_commit(tmp_path):
    old = _legacy_run(tmp_path / "run")
    before = _listing(old)
    with RunDirectory.stage(old, force=True) as staged:
        staged.write_json("config", {"new": True})
        assert _listing(old) == before  # nothing touched while the new run is written
        assert staged.path.parent == tmp_path and staged.path.name.startswith(".new-run-")
    assert staged.state == "committed" and staged.path == old.resolve()
    assert _listing(old) == [MANIFEST_NAME, "config.json"]
    assert RunDirectory.open(old).read_json("config") == {"new": True}
    assert _listing(tmp_path) == ["run"]
    # The committed run is known as ours: it can be replaced again.
    with RunDirectory.stage(old, force=True) as again:
        again.write_text("decoded.csv", "x\n")
    assert _listing(old) == [MANIFEST_NAME, "decoded.csv"]
    # A missing target is simply created.
    with RunDirectory.stage(tmp_path / "a" / "new") as created:
        created.write_json("config", {})
    assert _listing(tmp_path / "a" / "new") == [MANIFEST_NAME, "config.json"]


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_replacement_leaves_the_old_run_intact(tmp_path, failure):
    old = _legacy_run(tmp_path / "run")
    contents = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    with pytest.raises(failure):
        with RunDirectory.stage(old, force=True) as staged:
            staged.write_json("config", {"new": True})
            raise failure()
    assert staged.state == "aborted"
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == contents
    assert _listing(tmp_path) == ["run"]


def test_a_failed_swap_puts_the_old_run_back(tmp_path, monkeypatch):
    old = _legacy_run(tmp_path / "run")
    contents = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    staged = RunDirectory.stage(old, force=True)
    staged.write_json("config", {"new": True})
    real_replace, calls = os.replace, []

    def failing_replace(source, destination):
        calls.append(source)
        if len(calls) == 2:  # moving the new run in place fails (after the old one went aside)
            raise KeyboardInterrupt
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        staged.commit()
    monkeypatch.setattr(os, "replace", real_replace)
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == contents
    staged.abort()
    assert _listing(tmp_path) == ["run"]


def test_commit_checks_the_target_again(tmp_path):
    old = _legacy_run(tmp_path / "run")
    staged = RunDirectory.stage(old, force=True)
    staged.write_json("config", {"new": True})
    (old / "notes.txt").write_text("written while the run was fitting")
    with pytest.raises(RefusedReplacementError, match="new run is kept in"):
        staged.commit()
    assert (old / "notes.txt").exists() and (staged.path / "config.json").exists()
    staged.abort()
    assert not staged.path.exists()


# -- issue 15: --resume is checked before any file is touched -------------------
def _fitted_run(tmp_path, data_file):
    run = RunDirectory.create(tmp_path / "run", manifest=True)
    config = {
        "family": "hmm",
        "model": "hmm(states=2)",
        "data": str(data_file),
        "kind": "categorical",
        "first": 100000,
        "split": [0.8, 0.1, 0.1],
        "seed": 0,
        "model_config": {"num_states": 2, "num_symbols": 27},
        "fit": {"method": "em"},
        "data_fingerprint": fingerprint_file(data_file),
    }
    run.write_json("config", config)
    return run, config


def test_check_resume_names_the_setting_that_differs(tmp_path):
    data_file = tmp_path / "text.txt"
    data_file.write_text("hello world")
    run, config = _fitted_run(tmp_path, data_file)
    stamp = (run.path / "config.json").stat().st_mtime_ns
    run.check_resume(config)  # the same request resumes
    cases = [
        ({"model_config": {"num_states": 8, "num_symbols": 27}}, "fitted with --states 2, not 8"),
        ({"family": "gru"}, "fitted with the family hmm, not gru"),
        ({"fit": {"method": "svi"}}, "fitted with --method em, not svi"),
        ({"first": 5000}, "fitted with --first 100000, not 5000"),
        ({"split": (0.5, 0.25, 0.25)}, "fitted with --split 0.8,0.1,0.1, not 0.5,0.25,0.25"),
    ]
    for change, message in cases:
        with pytest.raises(ResumeMismatchError, match=message):
            run.check_resume({**config, **change})
    other = tmp_path / "other.txt"
    other.write_text("another text")
    with pytest.raises(ResumeMismatchError, match=r"other data: .*text.txt \(11 bytes.*not .*other.txt \(12 bytes"):
        run.check_resume({**config, "data": str(other), "data_fingerprint": fingerprint_file(other)})
    # The same bytes under another path are the same data.
    copy = tmp_path / "copy.txt"
    copy.write_bytes(data_file.read_bytes())
    run.check_resume({**config, "data": str(copy), "data_fingerprint": fingerprint_file(copy)})
    # A flag map names a family's own flags.
    with pytest.raises(ResumeMismatchError, match="fitted with --hidden-size 32, not 64"):
        run.write_json("config", {**config, "model_config": {"hidden_size": 32}})
        run.check_resume({**config, "model_config": {"hidden_size": 64}}, flags={"hidden_size": "--hidden-size"})
    run.write_json("config", config)
    assert json.loads((run.path / "config.json").read_text()) == config
    assert stamp <= (run.path / "config.json").stat().st_mtime_ns


def test_check_resume_without_fingerprint_compares_paths_and_needs_a_config(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    with pytest.raises(DamagedRunError, match="no config.json"):
        run.check_resume({"data": "a.txt"})
    run.write_json("config", {"data": "a.txt", "model_config": {"num_states": 2}})
    run.check_resume({"data": "a.txt", "model_config": {"num_states": 2, "new_setting": 1}})
    with pytest.raises(ResumeMismatchError, match="--data a.txt, not b.txt"):
        run.check_resume({"data": "b.txt", "data_fingerprint": {"sha256": "0"}})


def test_fingerprints_change_with_the_content(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("x\n1\n")
    second.write_text("x\n2\n")
    assert fingerprint_file(first)["size"] == 4
    assert fingerprint_file(first)["sha256"] != fingerprint_file(second)["sha256"]
    values = torch.arange(6.0).reshape(1, 6, 1)
    assert fingerprint_tensor(values)["sha256"] == fingerprint_tensor(values.clone())["sha256"]
    assert fingerprint_tensor(values)["sha256"] != fingerprint_tensor(values[:, :5])["sha256"]
    assert fingerprint_tensor(values)["sha256"] != fingerprint_tensor(values.double())["sha256"]
    assert (
        fingerprint_tensor(values, torch.tensor([6]))["sha256"]
        != fingerprint_tensor(values, torch.tensor([5]))["sha256"]
    )


# -- issue 15: damaged files name the file, the run and what was expected -------
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.write_bytes(b""), "the file is empty"),
        (lambda path: path.write_bytes(path.read_bytes()[:-7]), "truncated or foreign"),
        (lambda path: path.write_bytes(b'{"not": "safetensors"}'), "truncated or foreign"),
        (lambda path: path.write_bytes(os.urandom(64)), "truncated or foreign"),
    ],
)
def test_a_damaged_safetensors_file_is_named(tmp_path, damage, message):
    run = RunDirectory.create(tmp_path / "run")
    run.save_model(_Tiny())
    damage(run.path / "model.safetensors")
    with pytest.raises(DamagedRunError, match=message) as error:
        run.load_state_dict_into(_Tiny())
    assert str(run.path / "model.safetensors") in str(error.value)
    assert "expected a safetensors file written by seqzoo" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_a_tensor_of_the_wrong_shape_or_another_models_tensors_are_named(tmp_path):
    run = RunDirectory.create(tmp_path / "run")
    run.save_tensors("model", {"weight": torch.zeros(8, 2), "counts": torch.arange(4)})
    with pytest.raises(
        DamagedRunError, match=r"tensor 'weight' has shape \(8, 2\), not \(3, 2\) \(run .*expected the shapes"
    ):
        run.load_state_dict_into(_Tiny())
    run.save_tensors("model", {"transition_logits": torch.zeros(2, 2)})
    with pytest.raises(
        DamagedRunError,
        match=r"from another model: it lacks 'counts', 'weight' and holds unknown "
        r"'transition_logits'.*expected the tensors of a _Tiny",
    ):
        run.load_state_dict_into(_Tiny())
    with pytest.raises(FileNotFoundError, match="missing.safetensors: missing from run"):
        run.load_tensors("missing")


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "config.json: empty"),
        ('{"data": "a.txt",', "config.json: invalid JSON at line 1, column 18"),
        ("\xff\xfe", "config.json: invalid JSON"),
    ],
)
def test_an_invalid_config_json_is_named(tmp_path, content, message):
    run = RunDirectory.create(tmp_path / "run")
    (run.path / "config.json").write_text(content)
    with pytest.raises(DamagedRunError, match=message) as error:
        run.read_json("config.json")
    assert str(run.path) in str(error.value) and "expected a JSON file written by seqzoo" in str(error.value)
    (run.path / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DamagedRunError, match="not UTF-8 text"):
        run.read_json("config")


def test_interrupted_message_names_the_checkpoint_and_the_resume_command(tmp_path):
    from inference.rundir import interrupted_message

    run = RunDirectory.create(tmp_path / "my run")
    command = ["seqzoo", "fit", "hmm", "--data", "a b.txt", "--out", str(run.path), "--force"]
    assert (
        interrupted_message(run, command)
        == f"interrupted before the first checkpoint: nothing to resume in {str(run.path)!r}"
    )
    run.save_tensors("checkpoint", {"w": torch.zeros(1)}, metadata={"step": 20})
    run.write_json("checkpoint", {"step": 20})
    message = interrupted_message(run, command)
    assert message == (
        f"interrupted; the last checkpoint is {run.path / 'checkpoint.safetensors'} (step 20); continue with: "
        f"seqzoo fit hmm --data 'a b.txt' --out '{run.path}' --resume"
    )
    assert interrupted_message(run, command[:-1] + ["--resume"]).count("--resume") == 1
