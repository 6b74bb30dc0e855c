"""The run directory: the one place a fit, a CLI command or an example writes files.

Every write is atomic: the bytes go to a temporary file in the same directory,
are flushed to disk, and replace the target with :func:`os.replace`, so a crash
leaves either the old file or the new one, never half of one. Tensors are
stored as safetensors and everything else as JSON; nothing is ever pickled, and
nothing is ever unpickled on load.

Example:
    >>> import tempfile, torch
    >>> run = RunDirectory.create(tempfile.mkdtemp() + "/run")
    >>> run.save_tensors("weights", {"w": torch.ones(2)}, metadata={"step": 3})
    >>> tensors, metadata = run.load_tensors("weights")
    >>> tensors["w"].tolist(), metadata["step"]
    ([1.0, 1.0], 3)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

#: safetensors metadata must map str to str; ours is one JSON document under this key.
_METADATA_KEY = "seqzoo_metadata"


class RunDirectory:
    """A directory holding the outputs of one run.

    Build one with :meth:`create` (a new run) or :meth:`open` (an existing
    one), not with the constructor.

    Attributes:
        path: the directory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- construction -------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, *, force: bool = False) -> "RunDirectory":
        """Creates a fresh run directory.

        Args:
            path: where the run lives. Created with its parents if missing; an
                existing empty directory is used as is.
            force: replace an existing non-empty directory. The old directory
                is first renamed to a hidden sibling ``.old-<name>-<id>``, the
                new one is created, and only then is the old one deleted; if
                creating the new one fails the old one is moved back.

        Raises:
            FileExistsError: ``path`` is a non-empty directory and ``force`` is
                False, or ``path`` exists and is not a directory.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"run directory {str(path)!r} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            if not force:
                raise FileExistsError(
                    f"run directory {str(path)!r} exists and is not empty; "
                    f"pass --force (force=True) to replace it"
                )
            aside = path.with_name(f".old-{path.name}-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            try:
                path.mkdir(parents=True)
            except BaseException:
                os.replace(aside, path)
                raise
            shutil.rmtree(aside)
        else:
            path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDirectory":
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

    # -- text and JSON --------------------------------------------------------
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
        """Reads the JSON file ``name`` (``.json`` appended if missing)."""
        return json.loads(self.file(self._with_suffix(name, ".json")).read_text(encoding="utf-8"))

    # -- tensors --------------------------------------------------------------
    def save_tensors(
        self, name: str, tensors: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None
    ) -> Path:
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
        """
        path = self.file(self._with_suffix(name, ".safetensors"))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        tensors = safetensors_load(path.read_bytes())
        if device is not None:
            tensors = {key: value.to(device) for key, value in tensors.items()}
        metadata = json.loads(header[_METADATA_KEY]) if _METADATA_KEY in header else {}
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
        tensors_path = self.save_tensors(name, model.state_dict())
        json_path = self.write_json(name, {"class": f"{cls.__module__}.{cls.__qualname__}", "config": model.config()})
        return tensors_path, json_path

    def load_state_dict_into(self, model: torch.nn.Module, name: str = "model") -> torch.nn.Module:
        """Loads ``<name>.safetensors`` into ``model`` (strict) on the model's device; returns ``model``."""
        first = next(iter(model.state_dict().values()), None)
        device = first.device if first is not None else None
        tensors, _ = self.load_tensors(name, device=device)
        model.load_state_dict(tensors)
        return model
