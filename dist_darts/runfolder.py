"""The run folder's one writer: every file a job writes goes through atomic_write (temp file, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable) -> None:
    """Replace path with data (bytes, text, or a function writing to a binary file) so that a reader or a crash
    sees either the old file or the new one, never a part: temp file in the same folder, flush, fsync, rename,
    fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
