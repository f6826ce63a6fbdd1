"""Small file helpers shared by every layer: atomic writes (a crash never leaves a partial file
where a finished one is expected) and short content digests for output sidecars."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def file_digest(path, length: int = 12) -> str:
    """Short sha256 of a file, recorded in output sidecars."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def atomic_write(path, write) -> None:
    """`write(tmp_path)` into a temporary file in the same folder, then rename it over `path`:
    a crash mid-write leaves any previous file at `path` intact, and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj, path) -> None:
    """torch.save through atomic_write, fsynced before the rename."""
    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)
