"""Dynamic batching: concurrent small requests are merged into one model call.

Each worker thread holds one model instance of the pool for its lifetime. It takes the oldest queued job, then
gathers more until the merged batch would exceed `max_samples` or `window_s` has passed since it took the first
one (`window_s == 0`: only what is already queued, so an idle server adds no latency and a busy one batches what
piled up). The merged inputs go through the instance once and every job gets its own slice back.

Jobs complete through a callback, so a thread can wait for one (`predict`) and an asyncio front-end can await
one (`submit` with a callback that hands the result to its loop) without a thread of its own per request.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

Done = Callable[[np.ndarray | None, BaseException | None], None]  # (result, error)
OnBatch = Callable[[int, int, float], None]  # after each model call: (samples, requests, seconds it took)


def _ignore_batch(samples: int, requests: int, seconds: float) -> None:
    """The default OnBatch: nothing recorded."""


class _Job:
    __slots__ = ("arrays", "rows", "done")

    def __init__(self, arrays: tuple[np.ndarray, ...], done: Done):
        self.arrays, self.rows, self.done = arrays, len(arrays[0]), done


class _Waiter:
    """The cheapest one-shot wait: a lock the waiting thread blocks on until the batcher releases it."""

    __slots__ = ("lock", "result", "error")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result = self.error = None

    def __call__(self, result, error) -> None:
        self.result, self.error = result, error
        self.lock.release()

    def wait(self) -> np.ndarray:
        self.lock.acquire()
        if self.error is not None:
            raise self.error
        return self.result


class DynamicBatcher:
    """Run model calls for many request threads through `workers` threads (one pooled instance each)."""

    def __init__(self, pool, workers: int, window_s: float, max_samples: int,
                 on_batch: OnBatch = _ignore_batch, name: str = "batcher"):
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

    def predict(self, *arrays: np.ndarray) -> np.ndarray:
        waiter = _Waiter()
        self._queue.put(_Job(arrays, waiter))
        return waiter.wait()

    def submit(self, arrays: tuple[np.ndarray, ...], done: Done) -> None:
        """Queue a call; `done(result, error)` runs on a batcher thread when it is answered."""
        self._queue.put(_Job(arrays, done))

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
        jobs, samples = [first], first.rows
        deadline = time.monotonic() + self._window_s if self._window_s else 0.0
        while samples < self._max_samples:
            try:
                if deadline:
                    remaining = deadline - time.monotonic()
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, None, True
            if samples + job.rows > self._max_samples:
                return jobs, job, False
            jobs.append(job)
            samples += job.rows
        return jobs, None, False

    def _work(self) -> None:
        carry: _Job | None = None
        stop = False
        while not stop:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                break
            jobs, carry, stop = self._gather(first)
            with self._pool.acquire() as instance:
                run_jobs(instance, jobs, self._on_batch, self._max_samples)
        if carry is not None:  # stop arrived while a job was carried over: answer it before leaving
            with self._pool.acquire() as instance:
                run_jobs(instance, [carry], self._on_batch, self._max_samples)


def run_chunked(instance, arrays: tuple, max_rows: int) -> np.ndarray:
    """instance.run over at most `max_rows` rows at a time: a request larger than the merge limit never makes the
    model hold intermediates for more rows than a merged batch would (Paddle keeps them between runs)."""
    rows = len(arrays[0])
    if rows <= max_rows:
        return instance.run(*arrays)
    return np.concatenate([instance.run(*(a[i:i + max_rows] for a in arrays)) for i in range(0, rows, max_rows)])


def run_jobs(instance, jobs: list, on_batch: OnBatch, max_rows: int = 1 << 62) -> None:
    """One model call for `jobs` (merged when several), each job answered with its own slice."""
    called_at = time.perf_counter()
    try:
        if len(jobs) == 1:
            outs = [run_chunked(instance, jobs[0].arrays, max_rows)]
        else:
            merged = instance.run(*(np.concatenate(parts) for parts in zip(*(j.arrays for j in jobs))))
            outs, start = [], 0
            for j in jobs:  # plain slices: np.split costs ~30 us for 8 parts, this ~2 us
                outs.append(merged[start:start + j.rows])
                start += j.rows
        on_batch(sum(j.rows for j in jobs), len(jobs), time.perf_counter() - called_at)
    except Exception as e:  # every waiting request gets the error; the worker lives on
        log.exception("model call failed for a batch of %d request(s)", len(jobs))
        for j in jobs:
            j.done(None, e)
        return
    for j, out in zip(jobs, outs):
        j.done(out, None)


class DirectRunner:
    """Batching off: each request thread borrows an instance from the pool for its own call."""

    def __init__(self, pool, on_batch: OnBatch = _ignore_batch):
        self._pool = pool
        self._on_batch = on_batch

    def predict(self, *arrays: np.ndarray) -> np.ndarray:
        with self._pool.acquire() as instance:
            start = time.perf_counter()
            out = instance.run(*arrays)
            seconds = time.perf_counter() - start
        self._on_batch(len(arrays[0]), 1, seconds)
        return out

    def submit(self, arrays: tuple[np.ndarray, ...], done: Done) -> None:
        def call() -> None:
            try:
                result = self.predict(*arrays)
            except Exception as e:
                done(None, e)
                return
            done(result, None)

        threading.Thread(target=call, daemon=True).start()

    def queued(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing queued here: in-flight calls hold their instance until they return."""


# Loop turns a flush may yield while other callbacks are ready: a gRPC call takes several turns (and completions
# through grpc's poller) from its start to its handler, so 4 turns merged ~1.3 concurrent batch-1 calls and 32
# merge ~4-7 (docs/rpc.md, "Dynamic batching"). Turns only pass while there is other work, never on an idle loop.
MAX_DEFERRALS = 32
# weight of the newest model call in the moving average of their duration that bounds the join wait
CALL_AVERAGE_WEIGHT = 0.1


class Arrivals:
    """Requests a front-end has started to receive on one event loop that have not reached a LoopBatcher yet
    (e.g. a gRPC call whose message is still being read). The loop batcher waits (bounded by its join window) for
    them to join the model call it is about to make. `expect()` when one starts, `arrived()` when it is decoded or
    has failed; a count that a lost `arrived()` left behind is cleared when a join window expires unused."""

    __slots__ = ("pending", "waiter")

    def __init__(self):
        self.pending = 0
        self.waiter = None  # the LoopBatcher waiting for arrivals (to flush as soon as the last one is in)

    def expect(self) -> None:
        self.pending += 1

    def arrived(self) -> None:
        """Call before decoding it (in the same step as the submit, so it joins the batch being waited for)."""
        if self.pending > 0:
            self.pending -= 1
        if self.pending == 0 and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter._wake()


_ARRIVALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def loop_arrivals(loop=None) -> Arrivals:
    """The Arrivals counter of `loop` (default: the running loop), shared by every LoopBatcher on it."""
    import asyncio
    loop = loop or asyncio.get_running_loop()
    arrivals = _ARRIVALS.get(loop)
    if arrivals is None:
        arrivals = _ARRIVALS[loop] = Arrivals()
    return arrivals


class LoopBatcher:
    """Dynamic batching inside one asyncio event loop, without threads: a request appends its job and, if none
    is pending, schedules a flush with `call_soon` (or `call_later(window)`). The flush runs after the loop has
    handled every event that was ready (and up to MAX_DEFERRALS more turns while other callbacks are ready, such as
    requests still being received), so the requests that arrived together are merged into one model call, run
    inline. No thread hand-off per request: with Paddle (whose CPU run holds the GIL anyway) or a small
    ONNX Runtime model that is the cheapest path. Used by asyncio front-ends through `predict_async`.

    Join window (`join_s` > 0): when the front-end has announced requests that are still being received
    (`loop_arrivals(loop).expect()`, e.g. gRPC calls whose message is in flight), the flush waits for them, and
    runs as soon as the last announced one has been queued. It waits at most `join_s`, and at most as long as
    the model's recent calls took (their moving average): an arrival left out would wait for the next call
    anyway, so waiting up to one call's time adds no latency that a second call would not, while a wait longer
    than the call (a cheap model) costs more than the call it saves. Nothing is announced on an idle server, so
    it adds no latency there."""

    def __init__(self, pool, loop, window_s: float, max_samples: int,
                 on_batch: OnBatch = _ignore_batch, merge: bool = True, join_s: float = 0.0):
        self._merge = merge
        self._pool = pool
        self._loop = loop
        self._window_s = window_s
        self._max_samples = max_samples
        self._on_batch = on_batch
        self._pending: list[_Job] = []
        self._samples = 0
        self._scheduled = False
        self._deferred = 0
        self._ready = getattr(loop, "_ready", None)  # asyncio's queue of ready callbacks (None on other loops)
        self._join_s = join_s if merge else 0.0
        self._arrivals = loop_arrivals(loop)
        self._join_deadline = 0.0
        self._join_timer = None
        self._call_s: float | None = None  # moving average of the model calls' duration (None: none made yet)

    def submit(self, arrays: tuple[np.ndarray, ...]):
        """An asyncio future answered with float32 [B] (or the model's error)."""
        future = self._loop.create_future()

        def done(result, error) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        job = _Job(arrays, done)
        self._pending.append(job)
        self._samples += job.rows
        if not self._scheduled:
            self._scheduled = True
            if self._window_s:
                self._loop.call_later(self._window_s, self._flush)
            else:
                self._loop.call_soon(self._flush)
        elif self._join_timer is not None and self._samples >= self._max_samples:
            self._wake()  # waiting for arrivals but the batch is full: run now
        return future

    def _wake(self) -> None:
        """The join wait is over (every announced request arrived, or the batch is full): flush after the
        callbacks now ready (the last arrival's decode and submit)."""
        if self._join_timer is not None:
            self._join_timer.cancel()
            self._join_timer = None
            self._loop.call_soon(self._flush)

    def queued(self) -> int:
        return len(self._pending)

    def join_window(self) -> float:
        """The longest a model call now waits for announced arrivals: `join_s`, or the model's recent calls'
        average duration once one has been measured, whichever is shorter."""
        return self._join_s if self._call_s is None else min(self._join_s, self._call_s)

    def _flush(self) -> None:
        self._join_timer = None
        if self._arrivals.waiter is self:
            self._arrivals.waiter = None
        # Other callbacks ready to run (requests being received or decoded, e.g. gRPC completions): let them
        # run first and join this batch; a few rounds at most, so an always-busy loop still flushes.
        if self._ready and self._deferred < MAX_DEFERRALS and self._samples < self._max_samples:
            self._deferred += 1
            self._loop.call_soon(self._flush)
            return
        if self._join_s and self._arrivals.pending and self._samples < self._max_samples:
            now = self._loop.time()
            if not self._join_deadline:
                self._join_deadline = now + self.join_window()
            if now < self._join_deadline:
                self._join_timer = self._loop.call_at(self._join_deadline, self._flush)
                self._arrivals.waiter = self
                return
            self._arrivals.pending = 0  # the window passed and they never came: a lost count, forget it
        self._join_deadline = 0.0
        self._deferred = 0
        self._scheduled = False
        pending, self._pending, self._samples = self._pending, [], 0
        while pending:
            jobs, samples = [], 0
            while pending and (not jobs or self._merge and samples + pending[0].rows <= self._max_samples):
                job = pending.pop(0)
                jobs.append(job)
                samples += job.rows
            called_at = time.perf_counter()
            with self._pool.acquire() as instance:
                run_jobs(instance, jobs, self._on_batch, self._max_samples)
            self._measured_call(time.perf_counter() - called_at)

    def _measured_call(self, seconds: float) -> None:
        if self._call_s is None:
            self._call_s = seconds
        else:
            self._call_s += (seconds - self._call_s) * CALL_AVERAGE_WEIGHT
