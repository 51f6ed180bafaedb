"""The transport-independent core of the front-end: one call answers one serialised request (gRPC and HTTP).

decode (protocol) -> feeds to arrays (FeedMap) -> ctrkit.runtime (validation, batching, model) -> encode.
Runtime errors become the protocol's err_no; the front-end's metrics count requests by transport and err_no.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from ctrkit.runtime import ModelRuntime, NotReadyError, RuntimeInputError
from ctrkit.runtime.metrics import LATENCY_BUCKETS

from serving.rpc import protocol as P
from serving.rpc.feeds import FeedMap
from serving.rpc.limits import ByteBudget
from serving.rpc.protocol import InferenceRequest, Outputs, RequestError

log = logging.getLogger(__name__)

KIND_ERRORS = {"missing_input": P.MISSING_FEED, "unknown_input": P.UNKNOWN_NAME, "wrong_dtype": P.WRONG_DTYPE,
               "wrong_shape": P.WRONG_SHAPE, "out_of_range": P.OUT_OF_RANGE, "not_finite": P.NOT_FINITE,
               "empty_batch": P.EMPTY_BATCH, "too_large": P.TOO_LARGE}


class FrontendMetrics:
    """`ctrkit_rpc_*`: requests by transport and err_no, latency by transport, requests in flight; registered in
    the runtime's registry, so /metrics shows the runtime's and the front-end's metrics together."""

    def __init__(self, registry):
        self.requests = Counter("ctrkit_rpc_requests", "Requests answered, by transport and err_no (0 = success)",
                                ["transport", "err_no"], registry=registry)
        self.latency = Histogram("ctrkit_rpc_request_latency_seconds", "Request received to answer ready (decode, "
                                 "validate, queue, predict, encode)", ["transport"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.inflight = Gauge("ctrkit_rpc_inflight_requests", "Requests being processed", registry=registry,
                              multiprocess_mode="livesum")
        self._ok = {t: self.requests.labels(t, "0") for t in ("grpc", "http_json", "http_proto")}
        self._latency = {t: self.latency.labels(t) for t in ("grpc", "http_json", "http_proto")}

    def count(self, transport: str, err_no: int, seconds: float | None = None) -> None:
        (self._ok[transport] if err_no == 0 else self.requests.labels(transport, str(err_no))).inc()
        if seconds is not None:
            self._latency[transport].observe(seconds)


def feed_map(model) -> FeedMap:
    """The FeedMap of a loaded version, built once per version."""
    feeds = getattr(model, "_rpc_feed_map", None)
    if feeds is None:
        feeds = model._rpc_feed_map = FeedMap(model)
    return feeds


class InferenceService:
    def __init__(self, runtime: ModelRuntime, metrics: FrontendMetrics, budget: ByteBudget, budget_wait_s: float):
        self.runtime = runtime
        self.metrics = metrics
        self.budget = budget
        self.budget_wait_s = budget_wait_s
        self.max_batch = runtime.options.batching.max_request_batch
        self._inflight = 0
        self._idle = threading.Condition()
        # one process: the gauge reads the count when scraped (no metric update per request); several worker
        # processes (multi-process mode) need each one's value written
        self._count_inflight = runtime.metrics.multiprocess
        if not self._count_inflight:
            metrics.inflight.set_function(lambda: self._inflight)

    @property
    def draining(self) -> bool:
        return self.runtime.draining

    async def answer_async(self, transport: str, body: bytes, decode: Callable[[bytes], InferenceRequest],
                           encode: Callable[[Outputs], bytes], reserve: bool = False) -> tuple[bytes, int]:
        """(encoded answer, model version) for the asyncio front-ends (gRPC, HTTP); RequestError for anything but
        success. `reserve`: take the body's share of the decode budget here (HTTP reserves it before reading the
        body)."""
        start = time.perf_counter()
        err_no = 0
        self._enter()
        request = None
        cost = self.budget.cost(len(body), False) if reserve else 0
        reserved = False
        try:
            if self.runtime.draining:
                raise RequestError(P.UNAVAILABLE, "server is shutting down; retry on another replica")
            if reserve:
                reserved = self.budget.try_acquire(cost) or await asyncio.get_running_loop().run_in_executor(
                    None, self.budget.acquire, cost, self.budget_wait_s)
                if not reserved:
                    raise _busy(len(body), self.budget.limit)
            request = decode(body)
            with self.runtime.session() as model:
                feeds = feed_map(model)
                inputs, per_field = feeds.inputs(request, self.max_batch)
                fetch = feeds.fetch_names(request.fetch_var_names)
                t1 = time.time()
                try:
                    prob = await model.predict_async(inputs)
                except RuntimeInputError as e:
                    raise _input_error(e, feeds, per_field) from None
                return encode(_outputs(request, feeds, fetch, prob, t1)), model.version
        except BaseException as e:
            err_no, error = self._error(e, transport, request)
            raise error from None
        finally:
            if reserved:
                self.budget.release(cost)
            self.metrics.count(transport, err_no, time.perf_counter() - start)
            self._leave()

    # --------------------------------------------------------------------------------------- helpers
    def _error(self, e: BaseException, transport: str, request) -> tuple[int, RequestError]:
        if isinstance(e, RequestError):
            error = e
        elif isinstance(e, NotReadyError):
            error = RequestError(P.UNAVAILABLE, f"{e}; retry on another replica")
        elif isinstance(e, Exception):  # never leak a traceback to the client; the log keeps it
            log.error("internal error while answering a %s request", transport, exc_info=e)
            error = RequestError(P.INTERNAL, f"internal server error ({type(e).__name__}); see the server log")
        else:
            raise e  # KeyboardInterrupt, cancellation: not a request error
        error.log_id = request.log_id if request is not None else 0
        return error.kind.err_no, error

    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1
        if self._count_inflight:
            self.metrics.inflight.inc()

    def _leave(self) -> None:
        if self._count_inflight:
            self.metrics.inflight.dec()
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (decoding included); False if `timeout_s` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout_s)


def _busy(body_bytes: int, limit: int) -> RequestError:
    return RequestError(P.TOO_LARGE, f"request of {body_bytes} bytes does not fit the memory this server gives "
                                     f"to requests being decoded ({limit >> 20} MiB, shared by concurrent requests)"
                                     "; retry later or send smaller batches")


def _input_error(e: RuntimeInputError, feeds: FeedMap, per_field: bool) -> RequestError:
    message = e.message
    if per_field and e.input == feeds.sparse_name and e.where is not None:
        row, col = e.where
        field = feeds.field_at(col)
        column = col - next(f.start for f in feeds.contract.fields if f.name == field)
        message = message.replace(f"'{e.input}' [{row}, {col}]", f"'{field}' [{row}, {column}]", 1)
    return RequestError(KIND_ERRORS.get(e.kind, P.BAD_REQUEST), f"feed {message}")


def _outputs(request: InferenceRequest, feeds: FeedMap, fetch: list[str], prob, t1: float) -> Outputs:
    prob = prob.reshape(-1, 1)
    # Paddle Serving's convention: (start, end) pairs in microseconds, here validation and prediction
    profile = [int(t1 * 1e6)] * 3 + [int(time.time() * 1e6)] if request.profile_server else []
    return Outputs({alias: (feeds.fetch_name, prob) for alias in fetch}, request.log_id, profile)
