"""The one lines -> predictions path: `tools/paddle_infer.py` and the upload service (`serving/upload`) both score
text lines through it.

    schema = model_schema(exported_model)                  # from model_meta.json, never hard-coded counts
    chunks = iter_chunks(stream, source, chunk_lines)     # exactly `chunk_lines` whole lines per chunk
    lock = FormatLock(schema)                             # per file: the format is detected once, then locked
    for scored in score_chunks(map(lock, chunks), schema, batch_predictor(runtime)):  # pipelined if it pays
        scored.chunk.first_line, scored.probs, scored.labels ...

- **Reading**: a binary stream (a file, an uploaded file) is read in blocks and cut into chunks of exactly
  `chunk_lines` lines (the last one may be shorter; a last line without a newline counts). Line numbers are the
  file's physical 1-based line numbers, in results and in error messages.
- **Parsing** is the data layer's (`ctrkit.data`), driven by the exported model's feature schema (never by
  hard-coded feature counts). The format of a file (slot / raw / ..., with or without labels) is detected once,
  from its first line that shows one, and locked: a later line in another format is a `DataFormatError` naming the
  file and the line ("this line is slot format (...) but the file is raw Criteo (tab-separated) (from its first
  data line); a file must keep one format").
- **Pipelining**: `score_chunks(..., pipeline=True)` parses the next chunk in a background thread while the
  current one is predicted, with at most `PIPELINE_DEPTH` parsed chunks waiting: memory is bounded by a few chunks,
  however large the input. That pays when the model call releases the GIL: ONNX Runtime does for the whole call.
  Paddle Inference's CPU `run()` holds it for much of the call, and a parse thread then only trades the GIL with it
  (each hand-over can wait out Python's 5 ms switch interval): measured on the 2-core machine with the default
  DeepFM, 100k slot lines took 1.7-2.4 s with parse and predict alternating in one thread and 3.1-3.6 s with the
  parse thread. So `pipeline_for(backend)` (score_chunks's default) pipelines for onnxruntime and
  alternates for paddle; both keep memory bounded by a chunk or two.
- **Predicting** goes through the serving runtime (`ctrkit.runtime.ModelRuntime`: backend paddle or onnxruntime,
  golden-checked); `batch_predictor(runtime)` makes the `predict(batch) -> float32 [B]` callable.

`predict_files` is `paddle_infer.py`'s driver: in-process, or with `workers > 0` whole chunks (parse +
predict) go to worker processes, each with its own runtime, results in input order.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import math
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from ctrkit.metrics import auc, logloss
from ctrkit.predictions import PredictionWriter

WARMUP_BATCHES = 3
PIPELINE_DEPTH = 2           # parsed chunks waiting for the predictor (bounds memory)
PIPELINE_BACKENDS = ("onnxruntime",)  # backends whose model call releases the GIL: a parse thread overlaps it
READ_BYTES = 1 << 20         # bytes read from a stream at a time
CHUNKS_IN_FLIGHT_PER_WORKER = 4
# Below this much input, starting worker processes (each imports Paddle: ~2 s) costs more than it saves.
WORKERS_MIN_INPUT_BYTES = 32 << 20


# ------------------------------------------------------------------------------------------------------ reading

@dataclass(frozen=True)
class Chunk:
    source: str                # file name (or "upload") for error messages
    first_line: int            # 1-based line number of the chunk's first line in its file
    block: bytes               # whole lines, each ending with b"\n"
    rows: int                  # number of lines in `block`
    layout: Any = None         # the file's locked format (set by FormatLock)
    detected_at: int = 0       # the line it was detected from


def iter_chunks(stream: BinaryIO, source: str, chunk_lines: int, read_bytes: int = READ_BYTES,
                tee: Callable[[bytes], Any] | None = None) -> Iterator[Chunk]:
    """Chunks of exactly `chunk_lines` lines of a binary stream (the last one may be shorter). `tee` (optional)
    receives every byte read, in order (the upload service's save=true copy)."""
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    pending = b""
    line = 1
    while True:
        data = stream.read(read_bytes)
        if tee is not None and data:
            tee(data)
        if not data:
            if pending:
                if not pending.endswith(b"\n"):  # last line without a newline
                    pending += b"\n"
                yield Chunk(source, line, pending, pending.count(b"\n"))
            return
        pending = pending + data if pending else data
        if pending.count(b"\n") < chunk_lines:
            continue
        ends = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8) == 10)  # b"\n"
        start = 0
        for i in range(chunk_lines - 1, len(ends), chunk_lines):
            end = int(ends[i]) + 1
            yield Chunk(source, line, pending[start:end], chunk_lines)
            line += chunk_lines
            start = end
        pending = pending[start:]


def iter_file_chunks(paths: Iterable[str], chunk_lines: int) -> Iterator[Chunk]:
    """Chunks of every file in turn (a file's last chunk may be shorter)."""
    for path in paths:
        with open(path, "rb") as f:
            yield from iter_chunks(f, path, chunk_lines)


# ------------------------------------------------------------------------------------------------------ parsing

def model_schema(exported):
    """The exported model's feature schema (model_meta `schema`); an older export without one is Criteo with its
    `feature_spec` (the data layer takes either)."""
    schema = getattr(exported, "schema", None)
    if schema is not None:
        return schema
    if exported.meta.get("schema") is not None:
        from ctrkit.schema import FeatureSchema

        return FeatureSchema.from_dict(exported.meta["schema"])
    return exported.feature_spec


class FormatLock:
    """Sets each chunk's `layout` to its file's format, detected once per file (at its first chunk that shows
    one) and locked for the rest of the file, so chunks can be parsed anywhere (a thread, a worker process)."""

    def __init__(self, schema):
        self.schema = schema
        self.source: str | None = None
        self.layout = None
        self.detected_at = 0

    def __call__(self, chunk: Chunk) -> Chunk:
        from ctrkit.data.parsing import find_layout

        if chunk.source != self.source:  # a new file: detect again
            self.source, self.layout = chunk.source, None
        if self.layout is None:
            self.layout = find_layout(chunk.block, self.schema, chunk.source, chunk.first_line)
            self.detected_at = chunk.first_line
        return replace(chunk, layout=self.layout, detected_at=self.detected_at)


def parse_chunk(schema, chunk: Chunk):
    """Parse one chunk with its file's locked format (the data layer's FileParser: a line in another format is a
    DataFormatError that says so, naming file and line)."""
    from ctrkit.data.parsing import FileParser

    parser = FileParser(schema, chunk.source)
    if chunk.layout is not None:
        parser.layout, parser.detected_at = chunk.layout, chunk.detected_at
    return parser.parse_block(chunk.block, chunk.first_line)


# --------------------------------------------------------------------------------------------------- predicting

def batch_inputs(contract) -> Callable[[Any], dict]:
    """`inputs(batch) -> {input name: array}` for a served model's contract (its sparse and, when it has one,
    dense input)."""
    names = {spec.kind: spec.name for spec in contract.inputs}
    dense, sparse = names.get("dense"), names.get("sparse")

    def inputs(batch) -> dict:
        named = {sparse: batch.sparse}
        if dense is not None:
            named[dense] = batch.dense
        return named

    return inputs


def batch_predictor(runtime) -> Callable[[Any], np.ndarray]:
    """`predict(batch) -> float32 [B]` through a `ctrkit.runtime.ModelRuntime` (inputs named by the served
    model's contract: its dense and sparse inputs)."""
    inputs = batch_inputs(runtime.contract)

    def predict(batch) -> np.ndarray:
        return runtime.predict(inputs(batch)).probs

    predict.backend = runtime.options.backend  # (score_chunks decides on a parse thread by it)
    return predict


@dataclass
class ScoredChunk:
    chunk: Chunk
    probs: np.ndarray              # float32 [rows]
    labels: np.ndarray | None      # float32 [rows] when the lines carry labels
    parse_s: float                 # time parsing this chunk (in the parse thread)
    predict_s: float               # time predicting it

    @property
    def first_line(self) -> int:
        """File line number of the first prediction: a CSV/TSV header line (a file's first line, so at the start
        of its first chunk) has no prediction."""
        return self.chunk.first_line + self.chunk.rows - len(self.probs)


def pipelined(items: Iterable, fn: Callable, depth: int = PIPELINE_DEPTH) -> Iterator[tuple[Any, Any, float]]:
    """(item, fn(item), seconds) for every item, in order; `fn` runs in a background thread up to `depth` items
    ahead of the consumer. An exception from `items` or `fn` is raised to the consumer at its place in the order;
    closing the generator (or an exception in the consumer) stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                start = time.perf_counter()
                value = fn(item)
                if not put((True, (item, value, time.perf_counter() - start))):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put((True, None))

    thread = threading.Thread(target=produce, name="lines-parser", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is None:
                return
            yield value
    finally:
        stop.set()
        thread.join()


def pipeline_for(backend: str) -> bool:
    """Whether parsing in a background thread overlaps prediction with this backend (see the module docstring)."""
    return backend in PIPELINE_BACKENDS


def score_chunks(chunks: Iterable[Chunk], schema, predict: Callable[[Any], np.ndarray], *,
                 pipeline: bool | None = None) -> Iterator[ScoredChunk]:
    """Parse (in a background thread when `pipeline`) and predict every chunk, in order. Chunks should come
    through a FormatLock (one format per file). `pipeline` None: `pipeline_for` the backend of `predict` (as
    `batch_predictor` records it; paddle when unknown)."""
    if pipeline is None:
        pipeline = pipeline_for(getattr(predict, "backend", "paddle"))
    def parse(chunk):
        return parse_chunk(schema, chunk)

    def serial(items):
        for chunk in items:
            start = time.perf_counter()
            batch = parse(chunk)
            yield chunk, batch, time.perf_counter() - start

    chunks = iter(chunks)
    if pipeline:
        ahead = list(itertools.islice(chunks, 2))
        # one chunk only (a small upload): nothing to overlap, and no thread to start
        parsed = pipelined(itertools.chain(ahead, chunks), parse) if len(ahead) > 1 else serial(ahead)
    else:
        parsed = serial(chunks)
    try:
        for chunk, batch, parse_s in parsed:
            start = time.perf_counter()
            probs = predict(batch)
            predict_s = time.perf_counter() - start
            labels = None if batch.label is None else batch.label.reshape(-1)
            yield ScoredChunk(chunk, probs, labels, parse_s, predict_s)
    finally:
        parsed.close()


def score_stream(stream: BinaryIO, source: str, schema, predict: Callable[[Any], np.ndarray],
                 chunk_lines: int, *, tee: Callable[[bytes], Any] | None = None,
                 pipeline: bool | None = None) -> Iterator[ScoredChunk]:
    """`score_chunks` over one stream (the upload service's path)."""
    lock = FormatLock(schema)
    return score_chunks(map(lock, iter_chunks(stream, source, chunk_lines, tee=tee)), schema, predict,
                        pipeline=pipeline)


# --------------------------------------------------------------------------------------- paddle_infer.py driver

def open_runtime(model_dir: str, options):
    """A started `ModelRuntime` for one caller: one model instance, no dynamic batching, no version watcher
    (golden-checked like every served version). `options`: RuntimeOptions (backend + predictor options)."""
    from ctrkit.runtime import BatchingOptions, ModelRuntime

    options = replace(options, instances=1, batching=BatchingOptions(enabled=False), version_poll_s=0)
    runtime = ModelRuntime(model_dir, options)
    runtime.start(watch=False)  # ctrkit.runtime.ModelLoadError (an InferenceError) when the model cannot load
    return runtime


def warm_up(predict: Callable, model, batch_size: int, batches: int = WARMUP_BATCHES) -> None:
    """First runs allocate and pick kernels; keep them out of the latencies."""
    from ctrkit.data import Batch

    dense, sparse, _ = model.golden()
    reps = -(-batch_size // len(dense))
    batch = Batch(np.tile(dense, (reps, 1))[:batch_size], np.tile(sparse, (reps, 1))[:batch_size], None)
    for _ in range(batches):
        predict(batch)


class ChunkScorer:
    """Parses and scores whole chunks (in a worker process) through its own runtime."""

    def __init__(self, model_dir: str, options, batch_size: int):
        self.runtime = open_runtime(model_dir, options)
        exported = self.runtime.current.exported
        self.schema = model_schema(exported)
        self.predict = batch_predictor(self.runtime)
        warm_up(self.predict, exported, batch_size)

    def __call__(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        t0 = time.perf_counter()
        batch = parse_chunk(self.schema, chunk)
        t1 = time.perf_counter()
        probs = self.predict(batch)
        t2 = time.perf_counter()
        labels = None if batch.label is None else batch.label.reshape(-1)
        return probs, labels, t1 - t0, t2 - t1


_worker_scorer: ChunkScorer | None = None


def _init_worker(model_dir: str, options, batch_size: int) -> None:
    global _worker_scorer
    from ctrkit.cpu_env import configure_cpu_env, keep_freed_memory

    configure_cpu_env()
    keep_freed_memory()  # like paddle_infer.py's own process
    _worker_scorer = ChunkScorer(model_dir, options, batch_size)


def _score_in_worker(chunk: Chunk):
    return _worker_scorer(chunk)


def _in_order(executor: ProcessPoolExecutor, chunks: Iterator[Chunk], window: int) -> Iterator[ScoredChunk]:
    """Submit chunks keeping at most `window` in flight; yield results in submission order."""
    pending = collections.deque((c, executor.submit(_score_in_worker, c)) for c in itertools.islice(chunks, window))
    while pending:
        chunk, future = pending.popleft()
        probs, labels, parse_s, predict_s = future.result()
        for nxt in itertools.islice(chunks, 1):
            pending.append((nxt, executor.submit(_score_in_worker, nxt)))
        yield ScoredChunk(chunk, probs, labels, parse_s, predict_s)


def default_workers(paths: list[str], predictor_options) -> int:
    """0 (all in this process) for small inputs, else one worker per `cpu_threads` CPU cores."""
    if sum(os.path.getsize(p) for p in paths) < WORKERS_MIN_INPUT_BYTES:
        return 0
    return max(1, (os.cpu_count() or 1) // max(1, predictor_options.cpu_threads))


def predict_files(model_dir: str, options, paths: list[str], batch_size: int, workers: int = 0,
                  output: str | None = None, pipeline: bool | None = None) -> dict:
    """Score every line of `paths` with the exported model in `model_dir` (`options`: RuntimeOptions); returns
    the run report (see `report`). `pipeline` None: `pipeline_for(options.backend)`."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    start = time.perf_counter()
    runtime = open_runtime(model_dir, options)  # capability and golden checks before any worker starts
    model = runtime.current.exported
    schema = model_schema(model)
    chunks = map(FormatLock(schema), iter_file_chunks(paths, batch_size))
    writer = PredictionWriter(output)
    executor = None
    completed = False
    try:
        if workers == 0:
            predict = batch_predictor(runtime)
            warm_up(predict, model, batch_size)
            results: Iterator[ScoredChunk] = score_chunks(chunks, schema, predict, pipeline=pipeline)
        else:
            runtime.close()
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(model_dir, options, batch_size))
            results = _in_order(executor, chunks, CHUNKS_IN_FLIGHT_PER_WORKER * workers)
        stats = _consume(results, writer, start)
        completed = True
    except BrokenProcessPool as exc:
        from ctrkit.inference import InferenceError

        raise InferenceError(f"a prediction worker process died ({exc}); rerun with --num_workers 0 to see why") \
            from None
    finally:
        writer.close(completed)
        runtime.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    stats["wall_s"] = time.perf_counter() - start
    return report(model, options, paths, batch_size, workers, output, stats)


def _consume(results: Iterator[ScoredChunk], writer: PredictionWriter, t_start: float) -> dict:
    probs, labels, parse_s, infer_s = [], [], [], []
    post_s = 0.0
    first_result_s = None
    for result in results:
        t0 = time.perf_counter()
        if first_result_s is None:
            first_result_s = t0 - t_start
        writer.write(result.probs)
        probs.append(result.probs)
        if result.labels is not None:
            labels.append(result.labels)
        parse_s.append(result.parse_s)
        infer_s.append(result.predict_s)
        post_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    all_probs = np.concatenate(probs) if probs else np.empty(0, dtype=np.float32)
    all_labels = np.concatenate(labels) if labels and sum(map(len, labels)) == all_probs.size else None
    metrics = {"auc": auc(all_labels, all_probs), "logloss": logloss(all_labels, all_probs)} \
        if all_labels is not None and all_probs.size else {"auc": None, "logloss": None}
    post_s += time.perf_counter() - t0
    return {"samples": int(all_probs.size), "batches": len(probs), "parse_s": parse_s, "infer_s": infer_s,
            "postprocess_s": post_s, "first_result_s": first_result_s, **metrics}


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def describe(options) -> str:
    """The backend configuration in one line (paddle_infer.py runs one model instance per process)."""
    return options.describe().rsplit(" instances=", 1)[0]


def report(model, options, paths: list[str], batch_size: int, workers: int, output: str | None,
           stats: dict) -> dict:
    """The run record: what ran where, how fast, and how well."""
    latencies = np.asarray(stats["infer_s"]) * 1000.0
    wall = stats["wall_s"]

    def pct(q):
        return round(float(np.percentile(latencies, q)), 3) if latencies.size else None

    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": model.directory,
        "model": model.name,
        "backend": options.backend,
        "configuration": describe(options),
        "options": dataclasses.asdict(options),
        "data": list(paths),
        "batch_size": batch_size,
        "workers": workers,
        "samples": stats["samples"],
        "batches": stats["batches"],
        "wall_s": round(wall, 3),
        "samples_per_s": round(stats["samples"] / wall, 1) if wall > 0 else None,
        "startup_s": round(stats["first_result_s"], 3) if stats["first_result_s"] is not None else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "mean": round(float(latencies.mean()), 3) if latencies.size else None},
        # summed over batches (parsing overlaps prediction, and workers run in parallel: CPU-time-like)
        "preprocess_s": round(float(np.sum(stats["parse_s"])), 3),
        "inference_s": round(float(np.sum(stats["infer_s"])), 3),
        "postprocess_s": round(stats["postprocess_s"], 3),
        "auc": _number(stats["auc"]),  # None without labels, or with one class only (AUC undefined)
        "logloss": _number(stats["logloss"]),
        "output": os.path.abspath(output) if output else None,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
