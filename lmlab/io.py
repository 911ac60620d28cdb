"""Atomic writes, in one place: a file or a directory appears under its final name only when complete.

    atomic_write_text(path, text)            # write to a hidden temporary file beside `path`, fsync, rename
    atomic_write_bytes(path, data)
    with atomic_file(path) as tmp:           # for writers that take a path (safetensors, tokenizers)
        save_file(tensors, str(tmp))
    with atomic_dir(root) as tmp:            # build a directory, then rename it into place
        (tmp / "meta.json").write_text(...)

The temporary name is `.<name>.tmp<pid>` beside the target (same filesystem, so the rename is atomic on
POSIX; the pid keeps concurrent writers apart). On an exception the temporary is removed and the target is
left as it was. A kill at any moment leaves either the old target or the new one, never a partial one.
This module imports nothing from lmlab: every layer may use it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_write_text", "atomic_write_bytes", "atomic_file", "atomic_dir", "fsync_dir", "tmp_name"]


def tmp_name(path: Path) -> Path:
    """The hidden temporary sibling of `path` that this process writes before renaming."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (makes a rename inside it durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_file(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path; when the block ends without error, fsync it and rename it to `path`."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    path = Path(path)
    with atomic_file(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextlib.contextmanager
def atomic_dir(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block ends without error, rename it to
    `path` (an existing `path` is removed first). fsync=True also syncs every file and both directories,
    for data that must survive a power loss (checkpoints); caches can skip it."""
    path = Path(path)
    tmp = tmp_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if fsync:
            for f in tmp.iterdir():
                if f.is_file():
                    _fsync_file(f)
            fsync_dir(tmp)
        if path.exists():  # rewriting the same entry: replace it
            shutil.rmtree(path)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
