"""Prometheus metrics of the RPC server (served at HTTP GET /metrics).

One process: a registry of its own plus the standard process metrics. With `--workers N` every worker writes
its values to the shared `PROMETHEUS_MULTIPROC_DIR` the supervisor sets, and whichever worker a scrape reaches
answers with the sum over all workers (per-worker gauges carry a `pid` label).
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ServerMetrics:
    """Requests by transport and err_no, latency, request and predictor batch sizes, queue, model versions."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry = CollectorRegistry()
        if not self.multiprocess:
            ProcessCollector(registry=r)
        self.requests = Counter("ctrkit_rpc_requests", "Inference requests answered, by transport and err_no "
                                "(0 = success)", ["transport", "err_no"], registry=r)
        self.latency = Histogram("ctrkit_rpc_request_latency_seconds", "Time from request received to answer "
                                 "ready (decode, validate, queue, predict, encode)", ["transport"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.request_samples = Histogram("ctrkit_rpc_request_batch_size", "Samples per accepted request",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.predictor_samples = Histogram("ctrkit_rpc_predictor_batch_size", "Samples per predictor call "
                                           "(after dynamic batching merged requests)", buckets=BATCH_BUCKETS,
                                           registry=r)
        self.queue_depth = Gauge("ctrkit_rpc_batch_queue_depth", "Requests waiting for a predictor (sampled "
                                 "every 0.2 s)", registry=r, multiprocess_mode="livesum")
        self.inflight = Gauge("ctrkit_rpc_inflight_requests", "Inference requests being processed", registry=r,
                              multiprocess_mode="livesum")
        self.model_version = Gauge("ctrkit_rpc_model_version", "Model version being served", registry=r,
                                   multiprocess_mode="liveall")
        self.version_loads = Counter("ctrkit_rpc_version_loads", "Model version load attempts by result "
                                     "(loaded, refused)", ["result"], registry=r)
        self.ready = Gauge("ctrkit_rpc_ready", "1 while the server accepts inference requests", registry=r,
                           multiprocess_mode="livemin")

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
