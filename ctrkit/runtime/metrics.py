"""One Prometheus registry per serving process: the runtime's metrics, and the front-ends' own (they add
collectors to `RuntimeMetrics.registry`).

Runtime metrics (every front-end shares them; `version` and `backend` labels on the per-request ones):
- `ctrkit_runtime_requests_total{version,backend,result}`: model requests; result `ok` or an error kind
  (`wrong_shape`, `out_of_range`, `not_finite`, ..., `unavailable`, `internal`)
- `ctrkit_runtime_request_latency_seconds{version,backend}`: validation + queue + model call (histogram)
- `ctrkit_runtime_request_batch_size{version,backend}`: samples per request (histogram)
- `ctrkit_runtime_model_batch_size{version,backend}`: samples per model call after dynamic batching (histogram)
- `ctrkit_runtime_model_call_seconds{version,backend}`: duration of each model call (histogram; its count is the
  number of model calls)
- `ctrkit_runtime_request_compute_seconds_total{version,backend}`: model-call time attributed to the requests it
  answered (each request counts its batch's whole call, as Triton's `compute_infer` does)
- `ctrkit_runtime_model_calls_by_batch_size_total{version,backend,batch_size}` and
  `ctrkit_runtime_model_call_seconds_by_batch_size_total{...}`: model calls and their time per exact batch size
  (Triton's `batch_stats`; one series per size that occurred, at most `--batch_max_samples` of them)
- `ctrkit_runtime_last_inference_timestamp_seconds{version,backend}`: when the last model call finished
- `ctrkit_runtime_queue_depth`, `ctrkit_runtime_ready`, `ctrkit_runtime_model_version`,
  `ctrkit_runtime_version_loads_total{result}` (loaded, refused), and the standard `process_*` metrics.

With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set by the supervisor) every process writes its values
there and `render()` answers with the sum over all of them (per-process gauges carry a `pid` label).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (.0002, .0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class RuntimeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry = registry or CollectorRegistry()
        if not self.multiprocess and registry is None:
            ProcessCollector(registry=r)
        labels = ["version", "backend"]
        self.requests = Counter("ctrkit_runtime_requests", "Model requests by version, backend and result (ok or "
                                "an error kind)", labels + ["result"], registry=r)
        self.latency = Histogram("ctrkit_runtime_request_latency_seconds", "Validation, queueing and model call of "
                                 "one request", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.request_samples = Histogram("ctrkit_runtime_request_batch_size", "Samples per accepted request", labels,
                                         buckets=BATCH_BUCKETS, registry=r)
        self.model_samples = Histogram("ctrkit_runtime_model_batch_size", "Samples per model call (after dynamic "
                                       "batching merged requests)", labels, buckets=BATCH_BUCKETS, registry=r)
        self.model_calls = Histogram("ctrkit_runtime_model_call_seconds", "Duration of one model call (a merged "
                                     "batch)", labels, buckets=LATENCY_BUCKETS, registry=r)
        self.request_compute = Counter("ctrkit_runtime_request_compute_seconds", "Model-call time attributed to the "
                                       "requests it answered (each counts its batch's whole call)", labels,
                                       registry=r)
        self.calls_by_size = Counter("ctrkit_runtime_model_calls_by_batch_size", "Model calls per exact batch size",
                                     labels + ["batch_size"], registry=r)
        self.call_seconds_by_size = Counter("ctrkit_runtime_model_call_seconds_by_batch_size", "Time in model calls "
                                            "per exact batch size", labels + ["batch_size"], registry=r)
        self.last_inference = Gauge("ctrkit_runtime_last_inference_timestamp_seconds", "When the last model call "
                                    "finished (Unix time)", labels, registry=r, multiprocess_mode="max")
        self.queue_depth = Gauge("ctrkit_runtime_queue_depth", "Requests waiting for a model instance",
                                 registry=r, multiprocess_mode="livesum")
        self.model_version = Gauge("ctrkit_runtime_model_version", "Model version being served (-1: none)",
                                   registry=r, multiprocess_mode="liveall")
        self.version_loads = Counter("ctrkit_runtime_version_loads", "Model version load attempts by result "
                                     "(loaded, refused)", ["result"], registry=r)
        self.ready = Gauge("ctrkit_runtime_ready", "1 while a checked model version is loaded and the process "
                           "accepts requests", registry=r, multiprocess_mode="livemin")
        self.model_version.set(-1)

    def for_version(self, version: int, backend: str) -> "VersionMetrics":
        return VersionMetrics(self, str(version), backend)

    def _collector(self) -> Collector:
        """What /metrics reads: this process's registry, or with several workers every worker's files."""
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry

    def render(self) -> bytes:
        return generate_latest(self._collector())

    def statistics(self) -> dict[tuple[str, str], "VersionStatistics"]:
        """Totals per (version, backend) since start, over every worker: what Triton's statistics extension
        reports. Read from the same metrics /metrics shows (nothing extra is counted per request)."""
        stats: dict[tuple[str, str], VersionStatistics] = {}
        for family in self._collector().collect():
            if not family.name.startswith("ctrkit_runtime_"):
                continue
            for sample in family.samples:
                stat = _STATISTIC_SAMPLES.get(sample.name)
                if stat is None or "version" not in sample.labels:
                    continue
                key = (sample.labels["version"], sample.labels["backend"])
                entry = stats.setdefault(key, VersionStatistics())
                if stat == "requests":
                    stat = "succeeded" if sample.labels.get("result") == "ok" else "failed"
                if stat in ("calls", "seconds"):  # per batch size: [model calls, seconds]
                    totals = entry.batches.setdefault(int(sample.labels["batch_size"]), [0, 0.0])
                    totals[stat == "seconds"] += sample.value
                elif stat == "last_inference_s":
                    entry.last_inference_s = max(entry.last_inference_s, sample.value)
                else:
                    setattr(entry, stat, getattr(entry, stat) + sample.value)
        return stats


@dataclass
class VersionStatistics:
    """Totals of one (version, backend): requests answered and failed, their time in the runtime (validation,
    queue and model call) and the part of it spent in model calls, samples, model calls, last call."""

    succeeded: float = 0
    failed: float = 0
    latency_s: float = 0.0
    compute_s: float = 0.0
    samples: float = 0
    model_calls: float = 0
    last_inference_s: float = 0.0
    batches: dict[int, list] = field(default_factory=dict)  # batch size -> [model calls, seconds]


_STATISTIC_SAMPLES = {"ctrkit_runtime_requests_total": "requests",
                      "ctrkit_runtime_request_latency_seconds_sum": "latency_s",
                      "ctrkit_runtime_request_compute_seconds_total": "compute_s",
                      "ctrkit_runtime_request_batch_size_sum": "samples",
                      "ctrkit_runtime_model_call_seconds_count": "model_calls",
                      "ctrkit_runtime_last_inference_timestamp_seconds": "last_inference_s",
                      "ctrkit_runtime_model_calls_by_batch_size_total": "calls",
                      "ctrkit_runtime_model_call_seconds_by_batch_size_total": "seconds"}


class VersionMetrics:
    """The labelled children of one (version, backend), resolved once: cheap to use per request."""

    def __init__(self, m: RuntimeMetrics, version: str, backend: str):
        self._m, self._labels = m, (version, backend)
        self.ok = m.requests.labels(version, backend, "ok")
        self.latency = m.latency.labels(version, backend)
        self.request_samples = m.request_samples.labels(version, backend)
        self.model_samples = m.model_samples.labels(version, backend)
        self.model_calls = m.model_calls.labels(version, backend)
        self.request_compute = m.request_compute.labels(version, backend)
        self.last_inference = m.last_inference.labels(version, backend)
        self._by_size: dict[int, tuple] = {}  # batch size -> its (calls, seconds) children, resolved once

    def batch_done(self, samples: int, requests: int, seconds: float) -> None:
        """After each model call (the batcher's OnBatch)."""
        self.model_samples.observe(samples)
        self.model_calls.observe(seconds)
        self.request_compute.inc(seconds * requests)
        self.last_inference.set(time.time())
        by_size = self._by_size.get(samples)
        if by_size is None:
            labels = (*self._labels, str(samples))
            by_size = self._by_size[samples] = (self._m.calls_by_size.labels(*labels),
                                                self._m.call_seconds_by_size.labels(*labels))
        by_size[0].inc()
        by_size[1].inc(seconds)

    def error(self, kind: str) -> None:
        self._m.requests.labels(*self._labels, kind).inc()
