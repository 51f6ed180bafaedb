"""save=true: keep an upload under the upload directory, with a name the server chooses.

The bytes are copied while the file is scored (no second pass) into a hidden `.partial` file, renamed to
`<UTC time>-<random>.txt` only when the whole upload was scored; a rejected upload leaves nothing behind.
The client's file name is never used for anything on disk. The directory is created by the first save, so
a server that never saves leaves no trace on disk.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone


class UploadSaver:
    def __init__(self, directory: str):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.name = f"{stamp}-{uuid.uuid4().hex}.txt"
        self.path = os.path.join(directory, self.name)
        self.partial_path = os.path.join(directory, f".{self.name}.partial")
        os.makedirs(directory, exist_ok=True)
        self.file = open(self.partial_path, "xb")

    def tee(self, raw_lines: Iterable[bytes]) -> Iterator[bytes]:
        for line in raw_lines:
            self.file.write(line)
            yield line

    def commit(self) -> str:
        """Publish the saved file; returns its name (relative to the upload directory)."""
        self.file.close()
        os.rename(self.partial_path, self.path)
        return self.name

    def discard(self) -> None:
        self.file.close()
        if os.path.exists(self.partial_path):
            os.unlink(self.partial_path)
