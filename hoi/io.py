"""Small file helpers shared by every layer: atomic writes (a crash never leaves a partial file
where a finished one is expected) and short content digests for output sidecars."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from pathlib import Path

import torch


def file_digest(path, length: int = 12) -> str:
    """Short sha256 of a file, recorded in output sidecars; of a folder (a diffusers model), of
    every file in it, each under its relative path, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


# ".<name>.tmp-<pid>": hidden, beside the file it becomes, and naming the process writing it
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _process_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill would signal a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder) -> list[Path]:
    """Deletes the temporaries (files, or folders being built) that atomic writes left in
    `folder` when their process was killed mid-write (SIGKILL skips the clean-up); a temporary of
    a process still running is kept. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if match and not entry.is_symlink() and not _process_alive(int(match["pid"])):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def writable_parent(path: Path, label: str) -> Path:
    """`path`'s parent folder, made when missing; ValueError naming `label` when something on the
    way is a file or the folder cannot be made."""
    path = Path(path)
    for ancestor in reversed(path.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise ValueError(f"{label} {path}: {ancestor} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{label} {path}: cannot make the folder {path.parent} ({err.strerror or err})") from None
    return path.parent


def atomic_write(path, write) -> None:
    """`write(tmp_path)` into a temporary file in the same folder, then rename it over `path`:
    a crash mid-write leaves any previous file at `path` intact, and no partial file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:  # named by the file it was to become, not by the hidden temporary
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj, path) -> None:
    """torch.save through atomic_write, fsynced before the rename. A write the disk refuses is an
    OSError (torch's zip writer reports it as a RuntimeError about stream positions)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:
                if "inline_container" in str(err) or "PytorchStreamWriter" in str(err):
                    raise OSError(errno.EIO, "the write failed (is the disk full, or a file size limit set?)") from None
                raise
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)
