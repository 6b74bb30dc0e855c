"""Tests of the run-directory helper."""

from __future__ import annotations

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
    tensors = {"transposed": base.t(), "shared": base[0], "ints": torch.tensor([1, 2], dtype=torch.long),
               "scalar": torch.tensor(3.5, dtype=torch.float64), "grad": torch.ones(2, requires_grad=True)}
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
    with pytest.raises(Exception):
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
