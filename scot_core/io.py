"""Atomic writes: a file is either complete or absent, whatever kills the process, and two processes writing the
same name never share a temporary file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; on success it replaces `path` in one rename, on failure it is
    removed. The temporary name carries the process id and a random part (`mkstemp`), so concurrent writers of the
    same file never collide."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as temporary:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary), metadata=metadata)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, value, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def read_json(path: str | os.PathLike, what: str = "file"):
    """Read a JSON file, or raise ValueError naming the file when it is not valid JSON (a torn or hand-edited file)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"The {what} {str(path)!r} is not valid JSON ({error}); delete it to start over.") from None
