"""`ModelRuntime`: the protocol-free model runtime every front-end serves through.

    runtime = ModelRuntime("models/deepfm", RuntimeOptions(backend="onnxruntime"))
    runtime.start()                       # loads the highest good version (ModelLoadError when none loads)
    out = runtime.predict({"dense_input": dense, "sparse_inputs": sparse})   # Prediction(probs [B], version)
    runtime.drain(); runtime.wait_idle(30); runtime.close()

A version is served only after every model instance passed the export's golden batch AND the golden batch went
through the whole serving path (validation, dynamic batcher, instance); a version that fails is refused and the
old one keeps serving. Requests hold the version they started on, so a hot swap fails nothing in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ctrkit.inference import GOLDEN_ATOL, META_FILE, ExportedModel, GoldenMismatchError, load_exported_model
from ctrkit.runtime.backends import load_backend
from ctrkit.runtime.batching import DirectRunner, DynamicBatcher, LoopBatcher
from ctrkit.runtime.contract import ModelContract, RuntimeInputError, contract_of
from ctrkit.runtime.metrics import RuntimeMetrics
from ctrkit.runtime.options import RuntimeOptions
from ctrkit.runtime.versions import NotReadyError, VersionManager
from ctrkit.serving_config import SERVER_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    probs: np.ndarray   # float32 [B]
    version: int


def freeze_startup_heap() -> None:
    """For servers, once the model is loaded: the objects alive now (Paddle's and the libraries' modules, ~130k)
    leave the garbage collector's view, so a full collection no longer walks them (measured 60-67 ms with DeepFM
    loaded, one such pause every few thousand requests at batch 1; with them frozen the full collections of a
    short load test disappeared). Objects created later, a hot-swapped version's included, are collected as
    usual. Process-wide, so library callers (ctrkit.api, paddle_infer.py) do not call it."""
    gc.collect()
    gc.freeze()


def resolve_model_dir(path: str) -> str:
    """An export directory, or its `serving_server/` when only that holds model_meta.json."""
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    server = os.path.join(path, SERVER_DIR)
    return server if os.path.isfile(os.path.join(server, META_FILE)) else path


class LoadedModel:
    """One model version: its contract, backend instances and batcher. Built only if it passes its checks."""

    def __init__(self, path: str, version: int, options: RuntimeOptions, metrics: RuntimeMetrics):
        self.path = path
        self.version = version
        self.options = options
        self.backend = options.backend
        self.exported: ExportedModel = load_exported_model(resolve_model_dir(path))
        self.contract: ModelContract = contract_of(self.exported)
        self.metrics = metrics.for_version(version, options.backend)
        pool = self._pool = load_backend(self.exported, options)  # golden-checks every instance
        b = options.batching
        on_batch = self.metrics.batch_done
        self._runner = (DynamicBatcher(pool, pool.size, b.window_ms / 1000.0, b.max_samples, on_batch,
                                       name=f"v{version}-batcher") if b.enabled else DirectRunner(pool, on_batch))
        self._loop_batchers: dict = {}  # event loop -> LoopBatcher (asyncio front-ends)
        try:
            self.self_check()
        except Exception:
            self._runner.close()
            raise

    @property
    def meta(self) -> dict:
        return self.exported.meta

    def check(self, inputs: dict) -> tuple[np.ndarray, ...]:
        """Validate one request's arrays (RuntimeInputError) -> arrays in model input order."""
        try:
            return self.contract.check(inputs, self.options.batching.max_request_batch)
        except RuntimeInputError as e:
            self.metrics.error(e.kind)
            raise

    def predict(self, inputs: dict) -> np.ndarray:
        """float32 [B] for one request's arrays (validated here)."""
        return self.run_checked(self.check(inputs))

    def run_checked(self, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
        start = time.perf_counter()
        try:
            out = self._runner.predict(*arrays)
        except Exception:
            self.metrics.error("internal")
            raise
        self._count(start, len(out))
        return out

    async def predict_async(self, inputs: dict) -> np.ndarray:
        """predict() for asyncio front-ends. Requests decoded in one turn of the event loop are merged into one
        model call that runs inline on the loop (LoopBatcher): no thread hand-off per request."""
        arrays = self.check(inputs)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        batcher = self._loop_batchers.get(loop)
        if batcher is None:
            b = self.options.batching
            batcher = self._loop_batchers[loop] = LoopBatcher(
                self._pool, loop, b.window_ms / 1000.0 if b.enabled else 0.0, b.max_samples,
                self.metrics.batch_done, merge=b.enabled, join_s=b.join_us / 1e6)
        try:
            out = await batcher.submit(arrays)
        except Exception:
            self.metrics.error("internal")
            raise
        self._count(start, len(out))
        return out

    def _count(self, start: float, rows: int) -> None:
        m = self.metrics
        m.latency.observe(time.perf_counter() - start)
        m.ok.inc()
        m.request_samples.observe(rows)

    def golden_inputs(self) -> dict:
        dense, sparse, _ = self.exported.golden()
        by_kind = {"dense": dense, "sparse": sparse}
        return {spec.name: by_kind[spec.kind] for spec in self.contract.inputs}

    def self_check(self) -> None:
        """The golden batch through the whole serving path (validation, batcher, instance)."""
        expected = self.exported.golden()[2]
        got = self.predict(self.golden_inputs())
        if self.backend == "constant":
            log.info("version %d: constant backend (answers %g; no golden check: it runs no model)", self.version,
                     self.options.constant_value)
            return
        atol = self.options.predictor.golden_tolerance if self.backend == "paddle" else GOLDEN_ATOL["fp32"]
        diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape \
            else float("inf")
        if not diff <= atol:
            raise GoldenMismatchError(f"self-check of version {self.version} failed: golden batch max abs diff "
                                      f"{diff:.3g} > {atol:g} through the serving path")
        log.info("version %d self-check passed (%s, %d golden rows, max abs diff %.2g)", self.version,
                 self.options.describe(), len(expected), diff)

    def queued(self) -> int:
        return self._runner.queued() + sum(b.queued() for b in list(self._loop_batchers.values()))

    def close(self) -> None:
        self._runner.close()


class ModelRuntime:
    """Numbered versions of one exported model behind one backend, with hot swap, batching and metrics."""

    def __init__(self, model_dir: str, options: RuntimeOptions | None = None,
                 metrics: RuntimeMetrics | None = None):
        self.model_dir = model_dir
        self.options = options or RuntimeOptions()
        self.metrics = metrics or RuntimeMetrics()
        self.versions = VersionManager(model_dir, self._load, self._version_changed)
        self._draining = False
        self._inflight = 0
        self._idle = threading.Condition()

    # ------------------------------------------------------------------------------------ lifecycle
    def _load(self, path: str, version: int) -> LoadedModel:
        return LoadedModel(path, version, self.options, self.metrics)

    def _version_changed(self, result: str, version: int) -> None:
        self.metrics.version_loads.labels(result).inc()
        if result == "loaded":
            self.metrics.model_version.set(version)

    def start(self, watch: bool = True) -> int:
        """Load the highest version that passes its checks (ModelLoadError naming every failure when none does),
        then watch for newer ones every `options.version_poll_s` (0: only on `reload()`)."""
        version = self.versions.load_initial()
        self.metrics.ready.set(1)
        if watch:
            self.versions.start_watcher(self.options.version_poll_s)
        return version

    def reload(self) -> None:
        """Look for a newer version now (e.g. on SIGHUP); returns at once, the watcher does the work."""
        self.versions.wake()

    def check_now(self) -> None:
        """Look for a newer version and swap it in before returning."""
        self.versions.check_now()

    @property
    def ready(self) -> bool:
        """True only while a checked version is loaded and the runtime is not draining."""
        return not self._draining and self.versions.current is not None

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def version(self) -> int | None:
        return self.versions.version

    @property
    def current(self) -> LoadedModel | None:
        return self.versions.current

    @property
    def contract(self) -> ModelContract:
        model = self.versions.current
        if model is None:
            raise NotReadyError("no model version is loaded")
        return model.contract

    def status(self) -> dict:
        """Served, available and refused versions (with reasons), backend and readiness."""
        return {**self.versions.status(), "backend": self.options.backend, "ready": self.ready}

    def queued(self) -> int:
        model = self.versions.current
        n = model.queued() if model is not None else 0
        self.metrics.queue_depth.set(n)
        return n

    def drain(self) -> None:
        """Refuse new requests (NotReadyError) and report not ready; requests in flight go on."""
        self._draining = True
        self.metrics.ready.set(0)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if `timeout_s` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    def close(self) -> None:
        """Stop watching and close the served version (at once, or when its last request is done)."""
        self._draining = True
        self.metrics.ready.set(0)
        self.versions.shutdown()

    # ------------------------------------------------------------------------------------- requests
    @contextlib.contextmanager
    def session(self) -> Iterator[LoadedModel]:
        """Hold the current version for one request (NotReadyError when none is loaded or draining)."""
        if self._draining:
            raise NotReadyError("the server is shutting down")
        model = self.versions.acquire()
        with self._idle:
            self._inflight += 1
        try:
            yield model
        finally:
            self.versions.release(model)
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def predict(self, inputs: dict) -> Prediction:
        """{input name: array} -> Prediction(float32 [B], version). RuntimeInputError for a bad request,
        NotReadyError when no version is served."""
        with self.session() as model:
            return Prediction(model.predict(inputs), model.version)

    async def predict_async(self, inputs: dict) -> Prediction:
        with self.session() as model:
            return Prediction(await model.predict_async(inputs), model.version)
