"""Score an uploaded file as it is read, through the toolkit's one lines -> predictions path
(`ctrkit.batch_predict`): `batch_size` lines at a time are parsed by the data layer with the served model's
feature schema (the file's format detected at its first line and locked), predicted by the runtime (with
ONNX Runtime the next chunk is parsed while the current one is predicted; see ctrkit/batch_predict.py for why not
with Paddle), and each chunk's predictions go to a sink, so memory is bounded by a few chunks, not the file. One upload is predicted by one model version from start to end (a hot swap meanwhile
serves the next upload).

Sinks: `TopK` keeps only the k best predictions, `AllPredictions` keeps one float32 per line (4 bytes a
line, for full=true), and the Redis writer in `store.py` stores each batch as it comes.
Line numbers are 1-based physical line numbers of the uploaded file, in answers and in error messages.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import numpy as np

from ctrkit.batch_predict import batch_inputs, model_schema, pipeline_for, score_stream
from ctrkit.data import DataFormatError
from ctrkit.runtime import ModelRuntime, RuntimeInputError


class UploadInputError(ValueError):
    """The upload cannot be scored (malformed line, empty file); the message is for the client."""


class Sink(Protocol):
    def add(self, first_line: int, probs: np.ndarray) -> None: ...

    def answer(self) -> dict:
        """The result fields of the JSON answer."""


@dataclass
class Timings:
    """Milliseconds spent per stage (for debug=true). Parsing runs in a background thread, overlapping
    inference: parse_ms + inference_ms can exceed the total."""
    parse_ms: float = 0.0
    inference_ms: float = 0.0
    store_ms: float = 0.0
    version: int | None = None
    model: str = ""

    def as_dict(self, total_ms: float) -> dict:
        return {"parse_ms": round(self.parse_ms, 3), "inference_ms": round(self.inference_ms, 3),
                "store_ms": round(self.store_ms, 3), "total_ms": round(total_ms, 3), "model_version": self.version}


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


class RawJSON(str):
    """Text that is already JSON (the app puts it into the answer as it is)."""


def nested_json(values: np.ndarray) -> RawJSON:
    """`[[p],[p],...]` exactly as json.dumps would write `[[p] for p in values.tolist()]`, about twice as fast
    (one flat dumps of the floats, then the brackets by string replacement)."""
    flat = json.dumps(values.tolist(), separators=(",", ":"))
    return RawJSON("[]" if flat == "[]" else "[[" + flat[1:-1].replace(",", "],[") + "]]")


@dataclass
class AllPredictions:
    """Every prediction in input order."""
    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, first_line: int, probs: np.ndarray) -> None:
        self.parts.append(probs)

    def answer(self) -> dict:
        return {"dtype": "float32", "data": nested_json(np.concatenate(self.parts))}


class Scorer:
    """Parses and predicts uploads through the model runtime (thread-safe; uploads run concurrently)."""

    def __init__(self, runtime: ModelRuntime, batch_size: int):
        self.runtime = runtime
        self.batch_size = batch_size
        self._schemas: dict[int, object] = {}

    def _schema(self, model):
        schema = self._schemas.get(model.version)
        if schema is None:
            schema = self._schemas[model.version] = model_schema(model.exported)
        return schema

    def score(self, stream: BinaryIO, sink_for: Callable[[str], Sink], *, tee=None) -> tuple[int, Timings, Sink]:
        """Feed every line's prediction to the sink `sink_for(model name)` makes; returns (line count, timings,
        sink). Raises UploadInputError for a malformed line (naming it) or an empty upload, NotReadyError when
        no model version is served."""
        timings = Timings()
        count = 0
        with self.runtime.session() as model:  # one version for the whole upload
            timings.version, timings.model = model.version, model.exported.name
            sink = sink_for(model.exported.name)
            inputs = batch_inputs(model.contract)

            def predict(batch) -> np.ndarray:
                return model.predict(inputs(batch))

            scored = score_stream(stream, "upload", self._schema(model), predict, self.batch_size, tee=tee,
                                  pipeline=pipeline_for(model.backend))
            try:
                for item in scored:
                    start = time.perf_counter()
                    sink.add(item.first_line, item.probs)
                    timings.store_ms += (time.perf_counter() - start) * 1e3
                    timings.parse_ms += item.parse_s * 1e3
                    timings.inference_ms += item.predict_s * 1e3
                    count += len(item.probs)
            except DataFormatError as exc:
                raise UploadInputError(f"line {exc.line_number}: {exc.reason}") from None
            except RuntimeInputError as exc:  # the parser vouches for lines; this names what the model refused
                raise UploadInputError(f"the model refused a batch of lines: {exc}") from None
            finally:
                scored.close()
        if count == 0:
            raise UploadInputError("the uploaded file is empty (no lines)")
        return count, timings, sink
