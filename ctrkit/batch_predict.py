"""Offline batch prediction over slot or raw Criteo files (behind `tools/paddle_infer.py`).

Lines are read in chunks of `batch_size`; each chunk is parsed (`ctrkit.data.parse_lines`) and scored by a
predictor from `ctrkit.inference`. Parsing is pure Python and Paddle's `run()` holds the GIL, so threads
would not overlap them: with `workers > 0` whole chunks (parse + predict) go to worker processes, each
with its own golden-checked predictor, and results come back in input order, so the output has one
prediction per input line in the order read. A bounded window of chunks in flight keeps memory flat
however large the input.
"""
from __future__ import annotations

import collections
import datetime
import itertools
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ctrkit.data import parse_lines
from ctrkit.inference import ExportedModel, InferenceError, Predictor, PredictorOptions, create_predictor
from ctrkit.metrics import auc, logloss

WARMUP_BATCHES = 3
CHUNKS_IN_FLIGHT_PER_WORKER = 4
# Below this much input, starting worker processes (each imports Paddle: ~2 s) costs more than it saves.
WORKERS_MIN_INPUT_BYTES = 32 << 20


@dataclass(frozen=True)
class Chunk:
    source: str
    first_line: int
    lines: list[bytes]


@dataclass(frozen=True)
class ChunkResult:
    probs: np.ndarray            # float32 [n]
    labels: np.ndarray | None    # float32 [n] when the lines carry labels
    parse_s: float
    infer_s: float


def iter_chunks(paths: Iterable[str], size: int) -> Iterator[Chunk]:
    """Consecutive chunks of `size` lines (the last one of each file may be shorter)."""
    for path in paths:
        with open(path, "rb") as f:
            first = 1
            while lines := list(itertools.islice(f, size)):
                yield Chunk(path, first, lines)
                first += len(lines)


class ChunkScorer:
    """Parses and scores chunks with one predictor (in this process or in a worker process)."""

    def __init__(self, predictor: Predictor, batch_size: int, warmup_batches: int = WARMUP_BATCHES):
        self.predictor = predictor
        self.spec = predictor.model.feature_spec
        dense, sparse, _ = predictor.model.golden()
        reps = -(-batch_size // len(dense))
        warm_dense, warm_sparse = np.tile(dense, (reps, 1))[:batch_size], np.tile(sparse, (reps, 1))[:batch_size]
        for _ in range(warmup_batches):  # first runs allocate and pick kernels; keep them out of the latencies
            predictor.predict(warm_dense, warm_sparse)

    def __call__(self, chunk: Chunk) -> ChunkResult:
        t0 = time.perf_counter()
        batch = parse_lines(chunk.lines, self.spec, source=chunk.source, first_line_number=chunk.first_line).batch
        t1 = time.perf_counter()
        probs = self.predictor.predict(batch.dense, batch.sparse)
        t2 = time.perf_counter()
        labels = None if batch.label is None else batch.label.reshape(-1)
        return ChunkResult(probs, labels, t1 - t0, t2 - t1)


_worker_scorer: ChunkScorer | None = None


def _init_worker(model: ExportedModel, options: PredictorOptions, batch_size: int) -> None:
    global _worker_scorer
    _worker_scorer = ChunkScorer(create_predictor(model, options), batch_size)


def _score_in_worker(chunk: Chunk) -> ChunkResult:
    return _worker_scorer(chunk)


def _in_order(executor: ProcessPoolExecutor, chunks: Iterator[Chunk], window: int) -> Iterator[ChunkResult]:
    """Submit chunks keeping at most `window` in flight; yield results in submission order."""
    pending = collections.deque(executor.submit(_score_in_worker, c) for c in itertools.islice(chunks, window))
    while pending:
        result = pending.popleft().result()
        for chunk in itertools.islice(chunks, 1):
            pending.append(executor.submit(_score_in_worker, chunk))
        yield result


def default_workers(paths: list[str], options: PredictorOptions) -> int:
    """0 (all in this process) for small inputs, else one worker per `cpu_threads` CPU cores."""
    if sum(os.path.getsize(p) for p in paths) < WORKERS_MIN_INPUT_BYTES:
        return 0
    return max(1, (os.cpu_count() or 1) // options.cpu_threads)


class PredictionWriter:
    """One plain decimal prediction per line, written to `<path>.tmp` and renamed when complete."""

    def __init__(self, path: str | None):
        self.path = path
        self._file = None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(path + ".tmp", "w", encoding="utf-8")

    def write(self, probs: np.ndarray) -> None:
        if self._file is not None and probs.size:
            self._file.write("\n".join(["%.7f" % p for p in probs.tolist()]))
            self._file.write("\n")

    def close(self, complete: bool) -> None:
        if self._file is None:
            return
        self._file.close()
        if complete:
            os.replace(self.path + ".tmp", self.path)
        else:
            os.remove(self.path + ".tmp")


def predict_files(model: ExportedModel, options: PredictorOptions, paths: list[str], batch_size: int,
                  workers: int = 0, output: str | None = None) -> dict:
    """Score every line of `paths`; returns the run report (see `report`)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    start = time.perf_counter()
    predictor = create_predictor(model, options)  # capability and golden checks before any worker starts
    writer = PredictionWriter(output)
    chunks = iter_chunks(paths, batch_size)
    executor = None
    completed = False
    try:
        if workers == 0:
            results: Iterator[ChunkResult] = map(ChunkScorer(predictor, batch_size), chunks)
        else:
            del predictor
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(model, options, batch_size))
            results = _in_order(executor, chunks, CHUNKS_IN_FLIGHT_PER_WORKER * workers)
        stats = _consume(results, writer, start)
        completed = True
    except BrokenProcessPool as exc:
        raise InferenceError(f"a prediction worker process died ({exc}); rerun with --num_workers 0 to see why") \
            from None
    finally:
        writer.close(completed)
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    stats["wall_s"] = time.perf_counter() - start
    return report(model, options, paths, batch_size, workers, output, stats)


def _consume(results: Iterator[ChunkResult], writer: PredictionWriter, t_start: float) -> dict:
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
        infer_s.append(result.infer_s)
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


def report(model: ExportedModel, options: PredictorOptions, paths: list[str], batch_size: int, workers: int,
           output: str | None, stats: dict) -> dict:
    """The run record: what ran where, how fast, and how well."""
    latencies = np.asarray(stats["infer_s"]) * 1000.0
    wall = stats["wall_s"]

    def pct(q):
        return round(float(np.percentile(latencies, q)), 3) if latencies.size else None

    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": model.directory,
        "model": model.name,
        "configuration": options.describe(),
        "options": options.to_dict(),
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
        # summed over batches (so over all workers: CPU-time-like, not wall time)
        "preprocess_s": round(float(np.sum(stats["parse_s"])), 3),
        "inference_s": round(float(np.sum(stats["infer_s"])), 3),
        "postprocess_s": round(stats["postprocess_s"], 3),
        "auc": _number(stats["auc"]),  # None without labels, or with one class only (AUC undefined)
        "logloss": _number(stats["logloss"]),
        "output": os.path.abspath(output) if output else None,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
