"""Dynamic batching: concurrent small requests are merged into one predictor call.

Each worker thread holds one predictor of the pool for its lifetime. It takes the oldest queued job, then
gathers more until the merged batch would exceed `max_samples` or `window_s` has passed since it took the first
one (`window_s == 0`: only what is already queued, so an idle server adds no latency and a busy one batches what
piled up). The merged inputs go through the predictor once and every job gets its own slice back.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (dense [B,13], sparse [B,26]) -> float32 [B]


class _Job:
    __slots__ = ("dense", "sparse", "future")

    def __init__(self, dense: np.ndarray, sparse: np.ndarray):
        self.dense, self.sparse, self.future = dense, sparse, Future()


class DynamicBatcher:
    """Run `predict` for many request threads through `workers` threads (one pooled predictor each)."""

    def __init__(self, pool, workers: int, window_s: float, max_samples: int,
                 on_batch: Callable[[int], None] = lambda n: None, name: str = "batcher"):
        if window_s < 0 or max_samples < 1:
            raise ValueError("batch window must be >= 0 and max_samples >= 1")
        self._window_s = window_s
        self._max_samples = max_samples
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pool = pool
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        job = _Job(dense, sparse)
        self._queue.put(job)
        return job.future.result()

    def queued(self) -> int:
        """Jobs waiting for a worker (approximate, for metrics)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finish every queued job, then stop the workers."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def _gather(self, first: _Job) -> tuple[list[_Job], _Job | None, bool]:
        """Jobs to merge with `first`; a job that would overflow the batch is handed back for the next round."""
        jobs, samples = [first], len(first.dense)
        deadline = time.monotonic() + self._window_s
        while samples < self._max_samples:
            try:
                remaining = deadline - time.monotonic()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if samples + len(job.dense) > self._max_samples:
                return jobs, job, False
            jobs.append(job)
            samples += len(job.dense)
        return jobs, None, False

    def _work(self) -> None:
        with self._pool.acquire() as predictor:
            carry: _Job | None = None
            stop = False
            while not stop:
                first = carry if carry is not None else self._queue.get()
                carry = None
                if first is None:
                    break
                jobs, carry, stop = self._gather(first)
                self._run(predictor, jobs)

    def _run(self, predictor, jobs: list[_Job]) -> None:
        try:
            if len(jobs) == 1:
                outs = [predictor.predict(jobs[0].dense, jobs[0].sparse)]
            else:
                merged = predictor.predict(np.concatenate([j.dense for j in jobs]),
                                           np.concatenate([j.sparse for j in jobs]))
                outs = np.split(merged, np.cumsum([len(j.dense) for j in jobs])[:-1])
            self._on_batch(sum(len(j.dense) for j in jobs))
        except Exception as e:  # every waiting request gets the error; the worker lives on
            log.exception("predictor call failed for a batch of %d request(s)", len(jobs))
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, out in zip(jobs, outs):
            j.future.set_result(out)


class DirectRunner:
    """Batching off: each request thread borrows a predictor from the pool for its own call."""

    def __init__(self, pool, on_batch: Callable[[int], None] = lambda n: None):
        self._pool = pool
        self._on_batch = on_batch

    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        with self._pool.acquire() as predictor:
            out = predictor.predict(dense, sparse)
        self._on_batch(len(dense))
        return out

    def queued(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing queued here: in-flight calls hold their predictor until they return."""
