"""Score an uploaded file as it is read: `batch_size` lines at a time are parsed (`ctrkit.data.parse_lines`),
predicted by a pooled predictor and handed to a sink, so memory is bounded by the batch, not the file.

Sinks: `TopK` keeps only the k best predictions, `AllPredictions` keeps one float32 per line (4 bytes a
line, for full=true), and the Redis writer in `store.py` stores each batch as it comes.
Line numbers are 1-based physical line numbers of the uploaded file, in answers and in error messages.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ctrkit.data import DataFormatError, FeatureSpec, detect_layout, parse_lines
from ctrkit.inference import PredictorPool


class UploadInputError(ValueError):
    """The upload cannot be scored (malformed line, empty file); the message is for the client."""


class Sink(Protocol):
    def add(self, first_line: int, probs: np.ndarray) -> None: ...

    def answer(self) -> dict:
        """The result fields of the JSON answer."""


@dataclass
class Timings:
    """Milliseconds spent per stage (for debug=true)."""
    parse_ms: float = 0.0
    inference_ms: float = 0.0
    store_ms: float = 0.0

    def as_dict(self, total_ms: float) -> dict:
        return {"parse_ms": round(self.parse_ms, 3), "inference_ms": round(self.inference_ms, 3),
                "store_ms": round(self.store_ms, 3), "total_ms": round(total_ms, 3)}


class TopK:
    """The k highest predictions seen so far, highest first; ties go to the earlier line."""

    def __init__(self, k: int):
        self.k = k
        self.scores = np.empty(0, np.float32)
        self.lines = np.empty(0, np.int64)

    def add(self, first_line: int, probs: np.ndarray) -> None:
        scores = np.concatenate([self.scores, probs])
        lines = np.concatenate([self.lines, np.arange(first_line, first_line + len(probs), dtype=np.int64)])
        keep = np.lexsort((lines, -scores))[:self.k]  # primary key: score descending; then line ascending
        self.scores, self.lines = scores[keep], lines[keep]

    def answer(self) -> dict:
        return {"dtype": "float32", "index": self.lines.tolist(), "data": [[p] for p in self.scores.tolist()]}


@dataclass
class AllPredictions:
    """Every prediction in input order."""
    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, first_line: int, probs: np.ndarray) -> None:
        self.parts.append(probs)

    def answer(self) -> dict:
        return {"dtype": "float32", "data": [[p] for p in np.concatenate(self.parts).tolist()]}


def _batches(raw_lines: Iterable[bytes], batch_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines) per batch of `batch_size` lines."""
    batch: list[bytes] = []
    first = 1
    for number, line in enumerate(raw_lines, start=1):
        batch.append(line)
        if len(batch) == batch_size:
            yield first, batch
            first, batch = number + 1, []
    if batch:
        yield first, batch


class Scorer:
    """Parses and predicts uploads with a shared predictor pool (thread-safe: one predictor per batch)."""

    def __init__(self, pool: PredictorPool, spec: FeatureSpec, batch_size: int):
        self.pool = pool
        self.spec = spec
        self.batch_size = batch_size

    def score(self, raw_lines: Iterable[bytes], sink: Sink) -> tuple[int, Timings]:
        """Feed every line's prediction to `sink`; returns (line count, timings).
        Raises UploadInputError for a malformed line (naming it) or an empty upload."""
        timings = Timings()
        count = 0
        spec = self.spec
        batches = _batches(raw_lines, self.batch_size)
        while True:
            start = time.perf_counter()
            item = next(batches, None)
            if item is None:
                break
            first, lines = item
            try:
                batch = parse_lines(lines, spec, source="upload", first_line_number=first).batch
            except DataFormatError as exc:
                raise UploadInputError(f"line {exc.line_number}: {exc.reason}") from None
            if spec.data_format == "auto":  # the rest of the file must keep the format it starts with
                spec = replace(spec, data_format=detect_layout(lines[0]).fmt)
            parsed = time.perf_counter()
            with self.pool.acquire() as predictor:
                probs = predictor.predict(batch.dense, batch.sparse)
            predicted = time.perf_counter()
            sink.add(first, probs)
            timings.parse_ms += (parsed - start) * 1e3
            timings.inference_ms += (predicted - parsed) * 1e3
            timings.store_ms += (time.perf_counter() - predicted) * 1e3
            count += len(probs)
        if count == 0:
            raise UploadInputError("the uploaded file is empty (no lines)")
        return count, timings
