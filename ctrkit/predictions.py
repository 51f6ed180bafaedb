"""The one prediction-file format and writer of the toolkit (tools/infer.py, tools/paddle_infer.py, the RPC client,
the upload service's saved results).

A prediction file holds one predicted click probability per line, in input order, written with
`PREDICTION_FORMAT` = "%.9g": nine significant digits round-trip every float32 exactly (so a file written here
and read back with numpy gives the very same float32 values), and small CTRs keep their digits (`3.1e-08`, never
`0.0000000`). Files appear atomically: written to a hidden temporary and renamed when complete.

    write_predictions("preds.txt", probs)                  # all at once
    with PredictionWriter("preds.txt") as out:              # streaming; an exception leaves no file behind
        for probs in batches: out.write(probs)
    read_predictions("preds.txt") -> float32 array

No paddle import: serving code uses it.
"""
from __future__ import annotations

import os
from contextlib import ExitStack

import numpy as np

from ctrkit.fsutil import atomic_write

PREDICTION_FORMAT = "%.9g"


def format_predictions(probs) -> str:
    """Lines of `PREDICTION_FORMAT`, each ending in a newline ("" for no predictions)."""
    values = np.asarray(probs, dtype=np.float32).ravel().tolist()
    return "".join(PREDICTION_FORMAT % p + "\n" for p in values)


class PredictionWriter:
    """Streams predictions to `path` atomically. `path` None or "" writes nothing (a no-op writer).
    `close(complete=True)` publishes the file, `close(complete=False)` discards it; as a context manager the file
    is published when the block succeeds and discarded when it raises."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = os.fspath(path) if path else None
        self.count = 0
        self._stack = ExitStack()
        self._file = self._stack.enter_context(atomic_write(self.path, "w")) if self.path else None

    def write(self, probs) -> None:
        text = format_predictions(probs)
        self.count += text.count("\n")
        if self._file is not None and text:
            self._file.write(text)

    def close(self, complete: bool = True) -> None:
        if self._file is None:
            return
        self._file = None
        if complete:
            self._stack.close()
        else:
            self._stack.__exit__(RuntimeError, RuntimeError("discarded"), None)

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


def write_predictions(path: str | os.PathLike, probs) -> None:
    """Write every prediction of `probs` to `path` at once (atomically)."""
    with PredictionWriter(path) as out:
        out.write(probs)


def read_predictions(path: str | os.PathLike) -> np.ndarray:
    """A prediction file back as a float32 array."""
    with open(path, encoding="utf-8") as f:
        return np.array([float(line) for line in f if line.strip()], dtype=np.float32)
