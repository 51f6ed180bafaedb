"""Writing files and directories so that readers never see a half-written one.

- `atomic_write(path, mode="w")`: a context manager yielding an open file on a hidden temporary sibling
  (`.<name>.tmp-<random>`); when the block succeeds the data is flushed, fsync'ed and renamed over `path`, when it
  raises the temporary is removed and `path` is untouched.
- `write_text_atomic(path, text)`, `write_bytes_atomic(path, data)`, `write_json_atomic(path, data)`: one-call forms.
- `staged_directory(final_dir)`: the same for a whole directory (checkpoints, exports).
The only atomic-write helpers of the toolkit: do not write another.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                 newline: str | None = None, fsync: bool = True) -> Iterator[IO[Any]]:
    """Yield a file open for writing (`mode` "w"/"wt" or "wb") on a hidden sibling of `path`; replace `path` with
    it when the block completes (creating the parent directory), delete it when the block raises. A crash leaves
    at most a hidden `.<name>.tmp-*` file, never a partial `path`."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; servers under other users must read what it holds
        binary = "b" in mode
        with os.fdopen(fd, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 1) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=indent)


@contextmanager
def staged_directory(final_dir: str) -> Iterator[str]:
    """Yield a new hidden sibling of `final_dir` to fill; when the block succeeds it replaces `final_dir`
    (removing an older one), when it raises it is deleted. A crash leaves at most a hidden `.name.tmp-*`
    directory, never a partial `final_dir`."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; servers under other users must read what it holds
    try:
        yield staging
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.rename(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
