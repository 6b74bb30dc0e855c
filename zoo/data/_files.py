"""File names and bytes: the endings :func:`zoo.data.load_data` reads, stems, gzip."""

from __future__ import annotations

import gzip
from pathlib import Path

#: File name endings :func:`load_data` reads.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".csv", ".csv.gz", ".npz", ".json")
_BUILTIN_PREFIX = "builtin:"


def _stem(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def _extension(path: Path) -> str:
    name = path.name.lower()
    for extension in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension):
            return extension
    return "".join(path.suffixes[-2:]) or "(none)"


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {str(path)!r} (a built-in data set is named builtin:NAME)")
    if not path.is_file():
        raise ValueError(f"{path}: expected a data file, got a directory or special file")


def _read_bytes(path: Path) -> bytes:
    _require_file(path)
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    return raw
