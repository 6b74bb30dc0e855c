"""The run directory: the one place a fit, a CLI command or an example writes files.

Every write is atomic: the bytes go to a temporary file in the same directory,
are flushed to disk, and replace the target with :func:`os.replace`, so a crash
leaves either the old file or the new one, never half of one. Tensors are
stored as safetensors and everything else as JSON; nothing is ever pickled, and
nothing is ever unpickled on load.

Replacing a run (``--force``) never deletes a user's files: only a directory
recognised as a run (its manifest, or the files a run writes: ``config.json``,
``model.json``, ...) is replaced, only the files a run writes are removed, and a
directory holding anything else, the current directory or one above it, or a
directory holding the data, is refused. :meth:`RunDirectory.stage` writes a new
run beside the old one and swaps it in on ``commit()``, so a failed or
interrupted run leaves the old one intact. Damaged files (truncated, empty or
foreign safetensors, tensors of the wrong shape, invalid JSON) raise
:class:`DamagedRunError`, naming the file, the run and what was expected, and
:meth:`RunDirectory.check_resume` compares a resumed run's settings and data
(see :func:`fingerprint_file`) with the run's own before any file is touched.

Example:
    >>> import tempfile, torch
    >>> run = RunDirectory.create(tempfile.mkdtemp() + "/run")
    >>> _ = run.save_tensors("weights", {"w": torch.ones(2)}, metadata={"step": 3})
    >>> tensors, metadata = run.load_tensors("weights")
    >>> tensors["w"].tolist(), metadata["step"]
    ([1.0, 1.0], 3)
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

#: safetensors metadata must map str to str; ours is one JSON document under this key.
_METADATA_KEY = "seqzoo_metadata"

#: The manifest of a run: a hidden JSON file listing every file the run wrote
#: (written by :meth:`RunDirectory.write_manifest` and by ``commit()`` of a staged run).
MANIFEST_NAME = ".seqzoo-run.json"
#: Files whose presence makes a directory without a manifest a seqzoo run
#: (runs written before the manifest existed; a fit, a comparison, a diagnosis).
RUN_SIGNATURE_FILES = ("config.json", "model.json", "comparison.json", "diagnose.json")
#: Names (glob patterns) of the files a run may hold besides its manifest's: what
#: ``fit``, ``compare``, ``decode`` and ``diagnose`` write, and our atomic writes'
#: temporary files left by a crash. A CSV is a run's only under these names: a
#: user's data file never is.
RUN_FILE_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.png",
    "*.md",
    "inference_data.nc",
    "decoded.csv",
    "summary.csv",
    "loo_compare.csv",
    ".*.tmp",
)


class RunDirectoryError(ValueError):
    """Base of the errors about a run directory the CLI prints as one line."""


class DamagedRunError(RunDirectoryError):
    """A file of a run directory is missing, truncated, foreign or of the wrong shape."""


class ResumeMismatchError(RunDirectoryError):
    """``--resume`` asked for different settings or data than the run was fitted with."""


class RefusedReplacementError(FileExistsError):
    """``--force`` would delete something that is not a seqzoo run's own file."""


def _is_run_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILE_PATTERNS)


def _read_manifest(path: Path) -> set[str] | None:
    """The file names listed by ``path``'s manifest, or None without a (readable) one."""
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a seqzoo run (a manifest, or one
    of :data:`RUN_SIGNATURE_FILES`)."""
    path = Path(path)
    return path.is_dir() and (
        (path / MANIFEST_NAME).is_file() or any((path / name).is_file() for name in RUN_SIGNATURE_FILES)
    )


def _foreign_entries(path: Path) -> list[str]:
    """Entries of the run directory ``path`` (relative names) that no run wrote:
    neither in its manifest, nor named like a run's file, nor a sub-run
    (``diagnostics/``, one model of a comparison) holding only run files."""
    manifest = _read_manifest(path) or set()
    foreign = []
    for entry in sorted(path.iterdir(), key=lambda e: e.name):
        if entry.is_symlink():
            foreign.append(entry.name)  # never follow or delete a link's target
        elif entry.is_dir():
            if not is_run_directory(entry):
                # A folder a run wrote through file names like "plots/a.png" is listed by its files.
                listed = [name for name in manifest if name.startswith(entry.name + "/")]
                inside = [str(p.relative_to(path)) for p in entry.rglob("*") if not p.is_dir()]
                if not listed or any(name not in manifest for name in inside):
                    foreign.append(entry.name + "/")
            else:
                foreign.extend(f"{entry.name}/{name}" for name in _foreign_entries(entry))
        elif entry.name != MANIFEST_NAME and entry.name not in manifest and not _is_run_file(entry.name):
            foreign.append(entry.name)
    return foreign


def check_replaceable(path: str | os.PathLike, data_paths: Iterable[str | os.PathLike] = ()) -> None:
    """Refuses, with a message naming the reason, to replace ``path`` with a new run.

    ``path`` may be replaced when it is missing, empty, or a seqzoo run holding
    only files a run writes, and it is neither the current directory, nor a
    directory above it, nor a directory holding one of ``data_paths``.

    Raises:
        RefusedReplacementError: naming the directory and why (up to five
            foreign file names).
    """
    given = Path(path)
    resolved = given.resolve()
    shown = str(given)
    if resolved.exists() and not resolved.is_dir():
        raise RefusedReplacementError(f"--force: {shown!r} exists and is not a directory; it is left as is")
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        raise RefusedReplacementError(
            f"--force: {shown!r} is the current directory; refusing to replace it (name a new directory for the run)"
        )
    if resolved in cwd.parents:
        raise RefusedReplacementError(
            f"--force: {shown!r} is a directory above the current one; refusing to replace it "
            "(name a new directory for the run)"
        )
    for data_path in data_paths:
        data_resolved = Path(data_path).resolve()
        if data_resolved == resolved or resolved in data_resolved.parents:
            raise RefusedReplacementError(
                f"--force: {shown!r} holds the data file {str(data_path)!r}; refusing to replace it "
                "(write the run elsewhere)"
            )
    if not resolved.is_dir() or not any(resolved.iterdir()):
        return
    if not is_run_directory(resolved):
        names = sorted(e.name for e in resolved.iterdir())
        raise RefusedReplacementError(
            f"--force: {shown!r} is not a seqzoo run directory (no {MANIFEST_NAME} or config.json; it holds "
            f"{_some(names)}); refusing to delete it. Choose a new directory for the run"
        )
    foreign = _foreign_entries(resolved)
    if foreign:
        raise RefusedReplacementError(
            f"--force: the run directory {shown!r} also holds {_some(foreign)}, which no run wrote; refusing "
            "to delete it. Move those files out, or choose a new directory for the run"
        )


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove_run_files(path: Path) -> None:
    """Deletes the files a run wrote in ``path`` (checked by :func:`check_replaceable`), its
    sub-runs, then the directory itself; anything else found meanwhile is left, with a warning."""
    manifest = _read_manifest(path) or set()
    for entry in sorted(path.iterdir(), key=lambda e: e.name):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            if is_run_directory(entry):
                _remove_run_files(entry)
            else:
                for file in sorted(entry.rglob("*"), reverse=True):
                    if file.is_file() and str(file.relative_to(path)) in manifest:
                        file.unlink()
                    elif file.is_dir() and not any(file.iterdir()):
                        file.rmdir()
                if not any(entry.iterdir()):
                    entry.rmdir()
        elif entry.name == MANIFEST_NAME or entry.name in manifest or _is_run_file(entry.name):
            entry.unlink()
    try:
        path.rmdir()
    except OSError:
        warnings.warn(
            f"{str(path)!r}: left in place, it holds files no run wrote: "
            f"{_some(sorted(e.name for e in path.iterdir()))}",
            stacklevel=3,
        )


# -- data fingerprints ---------------------------------------------------------
def fingerprint_file(path: str | os.PathLike, *, chunk_bytes: int = 1 << 20) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a data file: what ``--resume`` compares.

    Args:
        path: the file (read in chunks of ``chunk_bytes``, so any size is fine).
    """
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return {"path": str(path), "size": path.stat().st_size, "sha256": digest.hexdigest()}


def fingerprint_tensor(values: Tensor, lengths: Tensor | None = None) -> dict[str, Any]:
    """``{"shape", "dtype", "sha256"}`` of data held as tensors (e.g. a built-in data
    set, or the data after ``--first``): the bytes of ``values`` (``(N, T, ...)``) on
    the CPU, and of ``lengths`` ``(N,)`` when given."""
    digest = hashlib.sha256()
    for tensor in (values, lengths):
        if tensor is not None:
            array = tensor.detach().to("cpu").contiguous()
            digest.update(str((tuple(array.shape), str(array.dtype))).encode())
            digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return {"shape": list(values.shape), "dtype": str(values.dtype).replace("torch.", ""), "sha256": digest.hexdigest()}


#: The command-line flag of each setting a run's config.json records (for messages).
SETTING_FLAGS = {
    "family": "the family",
    "data": "--data",
    "kind": "--kind",
    "first": "--first",
    "split": "--split",
    "seed": "--seed",
    "time_column": "--time-column",
    "sequence_column": "--sequence-column",
    "num_states": "--states",
    "emission": "--emission",
    "covariance": "--covariance",
    "hidden_size": "--hidden",
    "hidden": "--hidden",
    "num_layers": "--layers",
    "layers": "--layers",
    "state_dim": "--state-dim",
    "method": "--method",
    "guide": "--guide",
    "model": "the model",
    "class": "the model class",
}


def _flag(name: str, flags: Mapping[str, str]) -> str:
    return flags.get(name) or SETTING_FLAGS.get(name) or "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "(not given)" if value is None else str(value)


class RunDirectory:
    """A directory holding the outputs of one run.

    Build one with :meth:`create` (a new run) or :meth:`open` (an existing
    one), not with the constructor.

    Attributes:
        path: the directory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._written: set[str] = set()  # names written through this object, for the manifest

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- construction -------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        force: bool = False,
        data_paths: Iterable[str | os.PathLike] = (),
        manifest: bool = False,
    ) -> RunDirectory:
        """Creates a fresh run directory.

        To keep the old run until the new one is complete, use :meth:`stage`.

        Args:
            path: where the run lives. Created with its parents if missing; an
                existing empty directory is used as is.
            force: replace an existing non-empty directory, only if it is a
                seqzoo run holding only files a run writes (see
                :func:`check_replaceable`); those files are deleted, nothing else.
            data_paths: the data file(s) the run reads: a directory holding one
                is never replaced.
            manifest: write the hidden manifest (:data:`MANIFEST_NAME`) at once
                and keep it current, so the run's every file is known as its own
                (what the CLI does; off by default so a plain directory of files
                stays exactly what the caller wrote).

        Raises:
            FileExistsError: ``path`` is a non-empty directory and ``force`` is
                False, or ``path`` exists and is not a directory.
            RefusedReplacementError: (a FileExistsError) ``force`` and ``path``
                holds something no run wrote, is the current directory or one
                above it, or holds a data file.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"run directory {str(path)!r} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise FileExistsError(
                    f"run directory {str(path)!r} exists and is not empty; pass --force (force=True) to replace it"
                )
            check_replaceable(path, data_paths)
            resolved = path.resolve()
            # Rename first, so a half-deleted old run is never mistaken for the new one.
            aside = resolved.with_name(f".old-{resolved.name}-{uuid.uuid4().hex[:8]}")
            os.replace(resolved, aside)
            try:
                resolved.mkdir()
            except BaseException:
                os.replace(aside, resolved)
                raise
            _remove_run_files(aside)
        else:
            path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        if manifest:
            run.write_manifest()
        return run

    @classmethod
    def stage(
        cls, path: str | os.PathLike, *, force: bool = False, data_paths: Iterable[str | os.PathLike] = ()
    ) -> StagedRunDirectory:
        """Starts a new run that replaces ``path`` only once it is complete.

        The new run is written into a hidden sibling directory; ``commit()``
        checks ``path`` again, then swaps the new run in and deletes the old
        run's files; ``abort()`` (or leaving a ``with`` block by an exception,
        KeyboardInterrupt included) deletes the new run and leaves ``path``
        untouched. The checks of :meth:`create` are made before anything is
        written.

        Example:
            >>> import tempfile
            >>> target = tempfile.mkdtemp() + "/diagnostics"
            >>> with RunDirectory.stage(target) as run:
            ...     _ = run.write_json("report", {"ok": True})
            >>> RunDirectory.open(target).read_json("report")
            {'ok': True}
        """
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"run directory {str(target)!r} exists and is not a directory")
        if target.is_dir() and any(target.iterdir()) and not force:
            raise FileExistsError(
                f"run directory {str(target)!r} exists and is not empty; pass --force (force=True) to replace it"
            )
        check_replaceable(target, data_paths)
        resolved = target.resolve()
        resolved.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=resolved.parent, prefix=f".new-{resolved.name}-"))
        staged = StagedRunDirectory(staging, target=target, force=force, data_paths=tuple(data_paths))
        staged.write_manifest()  # kept current by every write, so the committed run is known as ours
        return staged

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDirectory:
        """Opens an existing run directory.

        Raises:
            FileNotFoundError: ``path`` is not an existing directory.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
        return cls(path)

    # -- paths --------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run directory (which may not exist yet).

        Raises:
            ValueError: ``name`` is empty, absolute, or climbs out with ``..``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty relative file name, got {name!r}")
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"name: expected a path inside the run directory, got {name!r}")
        return self.path / relative

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists in the run directory."""
        return self.file(name).exists()

    @staticmethod
    def _with_suffix(name: str, suffix: str) -> str:
        return name if name.endswith(suffix) else name + suffix

    def _write_bytes(self, name: str, data: bytes) -> Path:
        target = self.file(name)
        relative = str(Path(name))
        is_new = relative not in self._written
        self._written.add(relative)
        if is_new and relative != MANIFEST_NAME and (self.path / MANIFEST_NAME).is_file():
            self._record_in_manifest()
        target.parent.mkdir(parents=True, exist_ok=True)
        # The temp file sits next to the target so os.replace is a rename within one file system.
        descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
            raise
        return target

    def write_manifest(self) -> Path:
        """Writes the hidden manifest listing every file this run wrote (with those
        an earlier manifest lists), so that ``--force`` knows them for the run's own.
        Once it exists, every later write of a new file name updates it."""
        return self._record_in_manifest()

    def _record_in_manifest(self) -> Path:
        files = sorted(((_read_manifest(self.path) or set()) | self._written) - {MANIFEST_NAME})
        text = json.dumps({"seqzoo_run": 1, "files": files}, indent=1) + "\n"
        return self._write_bytes(MANIFEST_NAME, text.encode("utf-8"))

    def _damaged(self, name: str, problem: str, expected: str) -> DamagedRunError:
        return DamagedRunError(f"{self.file(name)}: {problem} (run {str(self.path)!r}; expected {expected})")

    # -- resuming -------------------------------------------------------------
    def check_resume(self, requested: Mapping[str, Any], *, flags: Mapping[str, str] | None = None) -> None:
        """Refuses to resume this run with different settings or data; touches no file.

        Compares ``requested`` with the run's ``config.json``, key by key:
        ``family``, ``model`` / ``class``, every entry of ``model_config`` (e.g.
        ``num_states``), the data options (``data``, ``kind``, ``first``,
        ``split``, ``seed``, ``time_column``, ``sequence_column``), ``fit`` →
        ``method``, and the data's fingerprint ``data_fingerprint`` (from
        :func:`fingerprint_file` or :func:`fingerprint_tensor`). A key only one
        side has is not compared, except that a requested data fingerprint
        against a run without one compares the data paths. When both sides
        have a fingerprint, equal contents under another path are accepted.

        Args:
            requested: what the resumed command would write to config.json.
            flags: setting name → the flag to name in messages (extends
                :data:`SETTING_FLAGS`).

        Raises:
            DamagedRunError: the run has no readable ``config.json`` (nothing to resume).
            ResumeMismatchError: naming the first setting that differs, as the
                run's value and the requested one, e.g. ``--resume: the run was
                fitted with --states 2, not 8``.
        """
        flags = dict(flags or {})
        if not self.exists("config.json"):
            raise DamagedRunError(
                f"--resume: {str(self.path)!r} has no config.json; it is not a run that can be resumed"
            )
        recorded = self.read_json("config.json")
        if not isinstance(recorded, dict):
            raise self._damaged("config.json", "not a JSON object", "the run's settings as a JSON object")

        def differ(name: str, was: Any, now: Any) -> None:
            raise ResumeMismatchError(
                f"--resume: the run was fitted with {_flag(name, flags)} {_shown(was)}, not {_shown(now)} "
                f"(run {str(self.path)!r}; start a new run with another --out, or repeat the run's settings)"
            )

        for name in ("family", "model", "class", "kind", "first", "split", "seed", "time_column", "sequence_column"):
            if name in recorded and name in requested and _normalise(recorded[name]) != _normalise(requested[name]):
                differ(name, recorded[name], requested[name])
        was_config, now_config = recorded.get("model_config") or {}, requested.get("model_config") or {}
        for name in sorted(set(was_config) & set(now_config)):
            if _normalise(was_config[name]) != _normalise(now_config[name]):
                differ(name, was_config[name], now_config[name])
        was_method = (recorded.get("fit") or {}).get("method")
        now_method = (requested.get("fit") or {}).get("method", requested.get("method"))
        if was_method is not None and now_method is not None and was_method != now_method:
            differ("method", was_method, now_method)
        was_print, now_print = recorded.get("data_fingerprint"), requested.get("data_fingerprint")
        if was_print and now_print:
            if was_print.get("sha256") != now_print.get("sha256"):
                raise ResumeMismatchError(
                    f"--resume: the run was fitted on other data: {_describe_data(recorded.get('data'), was_print)}, "
                    f"not {_describe_data(requested.get('data'), now_print)} (run {str(self.path)!r})"
                )
        elif "data" in recorded and "data" in requested and str(recorded["data"]) != str(requested["data"]):
            differ("data", recorded["data"], requested["data"])

    def write_text(self, name: str, text: str) -> Path:
        """Atomically writes UTF-8 ``text`` to ``name`` (used as given)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return self._write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically writes ``obj`` as JSON to ``name`` (``.json`` appended if missing).

        Raises:
            TypeError: ``obj`` holds something JSON cannot represent; the old
                file, if any, is left untouched.
        """
        # Serialise fully before touching the disk so a bad object leaves nothing behind.
        text = json.dumps(obj, indent=2, sort_keys=False)
        return self._write_bytes(self._with_suffix(name, ".json"), (text + "\n").encode("utf-8"))

    def read_json(self, name: str) -> Any:
        """Reads the JSON file ``name`` (``.json`` appended if missing).

        Raises:
            FileNotFoundError: the file is missing.
            DamagedRunError: it is not valid UTF-8 JSON (empty, truncated, foreign).
        """
        name = self._with_suffix(name, ".json")
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise self._damaged(
                name, f"not UTF-8 text (byte {error.start})", "a JSON file written by seqzoo"
            ) from error
        except json.JSONDecodeError as error:
            problem = (
                "empty"
                if not error.doc.strip()
                else f"invalid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
            )
            raise self._damaged(name, problem, "a JSON file written by seqzoo") from error

    # -- tensors --------------------------------------------------------------
    def save_tensors(self, name: str, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
        """Atomically writes tensors to ``name`` (``.safetensors`` appended if missing).

        Args:
            name: file name.
            tensors: name to tensor; each is detached, moved to the CPU, made
                contiguous and copied (so tensors sharing storage are allowed).
            metadata: optional JSON-serialisable mapping stored in the file header.
        """
        prepared: dict[str, Tensor] = {}
        for key, value in tensors.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"tensors[{key!r}]: expected a torch.Tensor, got {type(value).__name__}")
            prepared[key] = value.detach().to("cpu").contiguous().clone()
        header = None if metadata is None else {_METADATA_KEY: json.dumps(dict(metadata))}
        return self._write_bytes(self._with_suffix(name, ".safetensors"), safetensors_save(prepared, metadata=header))

    def load_tensors(
        self, name: str, device: torch.device | str | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Reads a safetensors file written by :meth:`save_tensors`.

        Args:
            name: file name (``.safetensors`` appended if missing).
            device: where to put the tensors (default CPU).

        Returns:
            ``(tensors, metadata)``; ``metadata`` is ``{}`` when none was saved.

        Raises:
            FileNotFoundError: the file is missing.
            DamagedRunError: the file is empty, truncated or not safetensors.
        """
        name = self._with_suffix(name, ".safetensors")
        path = self.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from run {str(self.path)!r}")
        expected = "a safetensors file written by seqzoo"
        size = path.stat().st_size
        if size == 0:
            raise self._damaged(name, "the file is empty", expected)
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
            tensors = safetensors_load(path.read_bytes())
            metadata = json.loads(header[_METADATA_KEY]) if _METADATA_KEY in header else {}
        except Exception as error:  # safetensors raises its own SafetensorError, and OSError/ValueError
            raise self._damaged(
                name,
                f"not a readable safetensors file of {size} bytes, truncated or foreign "
                f"({type(error).__name__}: {error})",
                expected,
            ) from error
        if device is not None:
            tensors = {key: value.to(device) for key, value in tensors.items()}
        return tensors, metadata

    # -- figures --------------------------------------------------------------
    def save_figure(self, name: str, fig) -> Path:
        """Atomically renders a matplotlib figure with the Agg backend and closes it.

        Args:
            name: file name; its suffix picks the format (``.png`` appended if
                there is none).
            fig: a :class:`matplotlib.figure.Figure`.
        """
        import io

        import matplotlib.pyplot as plt
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        if not Path(name).suffix:
            name = name + ".png"
        try:
            FigureCanvasAgg(fig)  # render off-screen whatever backend made the figure
            buffer = io.BytesIO()
            fig.savefig(buffer, format=Path(name).suffix.lstrip("."))
        finally:
            plt.close(fig)
        return self._write_bytes(name, buffer.getvalue())

    # -- models ---------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, name: str = "model") -> tuple[Path, Path]:
        """Writes ``<name>.safetensors`` (the ``state_dict``) and ``<name>.json``
        (``{"class": "<module>.<qualname>", "config": model.config()}``)."""
        cls = type(model)
        # The contract's config() (any module with one will do), read before anything is written.
        # torch types a module's unknown attributes as Tensor | Module, hence the ignore.
        config = model.config()  # type: ignore[operator]
        tensors_path = self.save_tensors(name, model.state_dict())
        json_path = self.write_json(name, {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config})
        return tensors_path, json_path

    def load_state_dict_into(self, model: torch.nn.Module, name: str = "model") -> torch.nn.Module:
        """Loads ``<name>.safetensors`` into ``model`` (strict) on the model's device; returns ``model``.

        Raises:
            DamagedRunError: the file is damaged (see :meth:`load_tensors`), lacks
                a tensor the model has or holds one it has not, or a tensor's
                shape differs from the model's (naming the tensor and both shapes).
        """
        state = model.state_dict()
        first = next(iter(state.values()), None)
        device = first.device if first is not None else None
        tensors, _ = self.load_tensors(name, device=device)
        file_name = self._with_suffix(name, ".safetensors")
        what = f"the tensors of a {type(model).__name__}"
        missing, unexpected = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
        if missing or unexpected:
            parts = ([f"lacks {_some(missing)}"] if missing else []) + (
                [f"holds unknown {_some(unexpected)}"] if unexpected else []
            )
            raise self._damaged(file_name, "from another model: it " + " and ".join(parts), what)
        wrong = [
            f"{key!r} has shape {tuple(tensors[key].shape)}, not {tuple(value.shape)}"
            for key, value in state.items()
            if tuple(tensors[key].shape) != tuple(value.shape)
        ]
        if wrong:
            raise self._damaged(
                file_name,
                "tensor " + "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else ""),
                "the shapes of the model that model.json describes; the file is from another model "
                "or config.json/model.json was changed",
            )
        model.load_state_dict(tensors)
        return model


def interrupted_message(run: RunDirectory, command: Sequence[str], *, checkpoint_name: str = "checkpoint") -> str:
    """The one line to print on Ctrl-C: where the last checkpoint is and the command
    that continues from it (``command`` with ``--resume`` added, ``--force`` dropped).

    Args:
        run: the run directory the interrupted command wrote.
        command: the command line as typed, e.g. ``["seqzoo", "fit", "hmm", ...]``.
        checkpoint_name: the checkpoint's file name without suffix (``inference.fit.CHECKPOINT_NAME``).
    """
    import shlex

    tensors = run.file(checkpoint_name + ".safetensors")
    if not tensors.is_file():
        return f"interrupted before the first checkpoint: nothing to resume in {str(run.path)!r}"
    try:
        step = run.read_json(checkpoint_name).get("step")
    except (OSError, ValueError, AttributeError):
        step = None
    resumed = [word for word in command if word != "--force"]
    if "--resume" not in resumed:
        resumed.append("--resume")
    where = f"{tensors}" + (f" (step {step})" if step is not None else "")
    return f"interrupted; the last checkpoint is {where}; continue with: {shlex.join(resumed)}"


def _normalise(value: Any) -> Any:
    """JSON round trip: tuples become lists, so a recorded value compares equal to a requested one."""
    return json.loads(json.dumps(value, default=str))


def _describe_data(path: Any, fingerprint: Mapping[str, Any]) -> str:
    size = f"{fingerprint['size']:,} bytes" if "size" in fingerprint else f"shape {fingerprint.get('shape')}"
    return f"{path if path is not None else fingerprint.get('path', 'data')} ({size}, sha256 {str(fingerprint.get('sha256'))[:12]}…)"


class StagedRunDirectory(RunDirectory):
    """A new run written beside the one it will replace; see :meth:`RunDirectory.stage`.

    Attributes:
        path: where the files go now (a hidden sibling of ``target``), then
            ``target`` after :meth:`commit`.
        target: the directory the run replaces.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        target: str | os.PathLike,
        force: bool = False,
        data_paths: Sequence[str | os.PathLike] = (),
    ) -> None:
        super().__init__(path)
        self.target = Path(target)
        self._force = force
        self._data_paths = tuple(data_paths)
        self.state = "open"  # "open", "committed" or "aborted"

    def __repr__(self) -> str:
        return f"StagedRunDirectory({str(self.path)!r} -> {str(self.target)!r}, {self.state})"

    def commit(self) -> RunDirectory:
        """Swaps the new run in place of ``target`` and deletes the old run's files.

        ``target`` is checked again first (something may have been added meanwhile):
        when it may no longer be replaced the new run stays in its staging directory
        and the error names it.

        Returns:
            ``self``, now pointing at ``target``.

        Raises:
            RefusedReplacementError, FileExistsError: as :meth:`RunDirectory.create`.
        """
        if self.state != "open":
            raise RuntimeError(f"{self!r}: already {self.state}")
        self.write_manifest()
        target = self.target.resolve()
        try:
            if target.is_dir() and any(target.iterdir()):
                if not self._force:
                    raise FileExistsError(
                        f"run directory {str(self.target)!r} exists and is not empty; "
                        f"pass --force (force=True) to replace it"
                    )
            check_replaceable(self.target, self._data_paths)
        except FileExistsError as error:
            raise type(error)(f"{error}. The new run is kept in {str(self.path)!r}") from error
        aside = None
        if target.exists():
            aside = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
            os.replace(target, aside)
        try:
            os.replace(self.path, target)
        except BaseException:
            if aside is not None:
                os.replace(aside, target)  # the old run goes back where it was
            raise
        self.path = target
        self.state = "committed"
        if aside is not None:
            _remove_run_files(aside)
        return self

    def abort(self) -> None:
        """Deletes the new run (only its own files); ``target`` is left untouched."""
        if self.state != "open":
            return
        self.state = "aborted"
        if self.path.is_dir():
            shutil.rmtree(self.path)  # our own mkdtemp directory, written only through this object

    def __enter__(self) -> StagedRunDirectory:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
