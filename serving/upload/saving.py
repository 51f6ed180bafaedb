"""save=true: keep an upload under the upload directory, with a name the server chooses.

The bytes are copied while the file is scored (no second pass) through the toolkit's one atomic-write helper
(`ctrkit.fsutil.atomic_write`: a hidden temporary beside the target), which becomes `<UTC time>-<random>.txt`
only when the whole upload was scored; a rejected upload leaves nothing behind. The client's file name is never
used for anything on disk. The directory is created by the first save, so a server that never saves leaves no
trace on disk.
"""
from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from datetime import datetime, timezone

from ctrkit.fsutil import atomic_write


class UploadSaver:
    def __init__(self, directory: str):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.name = f"{stamp}-{uuid.uuid4().hex}.txt"
        self.path = os.path.join(directory, self.name)
        os.makedirs(directory, exist_ok=True)
        self._stack = ExitStack()
        self.file = self._stack.enter_context(atomic_write(self.path, "wb", fsync=False))

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> str:
        """Publish the saved file; returns its name (relative to the upload directory)."""
        self._stack.close()
        return self.name

    def discard(self) -> None:
        self._stack.__exit__(RuntimeError, RuntimeError("discarded"), None)
