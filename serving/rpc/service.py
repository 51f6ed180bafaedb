"""The transport-independent core: one call answers one serialised request, for gRPC and HTTP alike."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from serving.rpc import protocol as P
from serving.rpc.metrics import ServerMetrics
from serving.rpc.protocol import InferenceRequest, Outputs, RequestError
from serving.rpc.versions import VersionManager

log = logging.getLogger(__name__)


class InferenceService:
    """Decode -> validate -> predict -> encode, with metrics, in-flight tracking and draining."""

    def __init__(self, versions: VersionManager, metrics: ServerMetrics):
        self.versions = versions
        self.metrics = metrics
        self._draining = False
        self._inflight = 0
        self._idle = threading.Condition()

    @property
    def draining(self) -> bool:
        return self._draining

    def answer(self, transport: str, body: bytes, decode: Callable[[bytes], InferenceRequest],
               encode: Callable[[Outputs], bytes]) -> tuple[bytes, int]:
        """(encoded answer, model version); raises RequestError for anything but success."""
        start = time.perf_counter()
        err_no = 0
        request = None
        with self._idle:
            self._inflight += 1
        self.metrics.inflight.inc()
        try:
            if self._draining:
                raise RequestError(P.UNAVAILABLE, "server is shutting down; retry on another replica")
            request = decode(body)
            model = self.versions.acquire()
            try:
                outputs = model.infer(request)
                self.metrics.request_samples.observe(len(next(iter(outputs.tensors.values()))[1]))
                return encode(outputs), model.version
            finally:
                self.versions.release(model)
        except RequestError as e:
            err_no = e.kind.err_no
            e.log_id = request.log_id if request is not None else 0
            raise
        except Exception as e:  # never leak a traceback to the client; the log keeps it
            err_no = P.INTERNAL.err_no
            log.exception("internal error while answering a %s request", transport)
            raise RequestError(P.INTERNAL, f"internal server error ({type(e).__name__}); see the server log") \
                from None
        finally:
            self.metrics.requests.labels(transport, str(err_no)).inc()
            self.metrics.latency.labels(transport).observe(time.perf_counter() - start)
            self.metrics.inflight.dec()
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def start_draining(self) -> None:
        self._draining = True
        self.metrics.ready.set(0)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if `timeout_s` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout_s)
