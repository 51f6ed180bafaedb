"""Start the model runtime, build the app and serve it with waitress; `--workers N` runs N such processes under the
toolkit's one supervisor (`serving/supervisor.py`).

Processes, not threads, are what use more cores: Paddle Inference's CPU predictor holds the GIL for much of
`run()`, so `--workers N` starts N complete server processes sharing the port (SO_REUSEPORT: the kernel spreads
connections over them), each with its own runtime (model versions, golden checks, hot swap, batcher, metrics).
The supervisor restarts a worker that dies, forwards SIGHUP (look for a new model version now) and drains every
worker on SIGTERM; `/metrics` sums all workers (Prometheus multi-process mode). `--threads` are waitress's request
threads within each process.

Readiness is truthful: `/ready` answers 200 only while a golden-checked model version is loaded and the worker is
not draining. The ready line (`serving.upload ready: model M version V http HOST:PORT`, on stdout) is printed once
the socket listens with a checked model behind it. SIGTERM drains: /ready turns 503, the listening socket closes,
requests in flight finish (up to --drain_timeout_s), then the process exits 0.

Hardening against slow clients (waitress alone closes a connection only after `channel_timeout` of silence, so a
client trickling a byte every 20 s holds it forever, and 100 of them exhaust waitress's connection limit): a
request's headers must arrive within --header_timeout_s of its first byte, however slowly they trickle, or the
connection is closed; the whole request, body included, within --body_timeout_s of its first byte plus one second
per --body_min_rate_kib KiB received (Apache mod_reqtimeout's rule: a client keeping up that rate is never cut
off), or it is answered 408 (JSON) and the connection closed. Both are checked every second on waitress's loop
thread, which also receives the bodies: no request thread waits for a slow client. Idle keep-alive connections
close after --idle_timeout_s; --max_connections per worker.

Latency of small uploads: the header and a small answer leave in one send (waitress sends them separately, waking
the client twice), the most recently idle request thread takes the next request (warm caches; waitress wakes the
longest idle), the multipart form is split by `multipart.py`'s fast path, and the process keeps memory freed after
a request for the next one (`ctrkit.cpu_env.keep_freed_memory`).
Waitress answers some requests itself, before the app sees them (a body over the size limit, a malformed
request); `JsonErrorTask` makes those answers JSON too, so a client never has to parse anything else.
"""
from __future__ import annotations

import _thread
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

import waitress
import waitress.utilities
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask, WSGITask

from ctrkit.cpu_env import keep_freed_memory
from ctrkit.runtime import ModelRuntime, freeze_startup_heap
from serving.upload.app import create_app
from serving.upload.scoring import Scorer
from serving.upload.settings import MIB, READY_LINE, UploadSettings
from serving.upload.store import ResultStore, redact_url

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 1.0  # how often connections are checked for header and idle timeouts
RECV_BYTES = 256 * 1024       # bytes read from a connection per turn of waitress's loop
DRAIN_GRACE_S = 0.5           # on SIGTERM, before deciding which connections have a request in flight
COALESCE_BYTES = 256 * 1024   # answers up to this size leave in one send with their header


class JsonErrorTask(ErrorTask):
    """waitress's own error answers (413, 400, 431, ...) as `{"code", "msg"}` JSON."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            limit = (self.channel.server.adj.max_request_body_size - 1) / MIB
            msg = f"upload too large: the limit is {limit:g} MiB"
        else:
            msg = f"{error.reason}: {error.body}"
        body = json.dumps({"code": error.code, "msg": msg}, separators=(",", ":")).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class DrainAwareTask(WSGITask):
    """While the server drains, every answer closes its connection (`Connection: close`), so clients reconnect
    to another worker."""

    def build_response_header(self):
        draining = getattr(self.channel.server, "draining", None)
        if draining is not None and draining.is_set():
            self.set_close_on_finish()
        return super().build_response_header()

    def write(self, data) -> None:
        """The header and a small first body chunk go out in one send (waitress sends them separately: two
        segments, and the client wakes up twice per answer)."""
        if not self.wrote_header and data and self.complete and len(data) <= COALESCE_BYTES:
            header = self.build_response_header()
            self.wrote_header = True
            if self.has_body and not self.chunked_response and (self.content_length is None
                                                                 or len(data) <= self.content_length):
                if self.content_length is not None:
                    self.content_bytes_written += len(data)
                self.channel.write_soon(header + data)
                return
            self.channel.write_soon(header)  # (anything unusual: waitress's own accounting below)
        super().write(data)


class RequestTimeout(waitress.utilities.Error):
    code = 408
    reason = "Request Timeout"


class GuardedChannel(HTTPChannel):
    """JSON error answers, closing answers while draining, and the time the current request's first byte arrived
    and how many of its bytes have arrived (for the header and body timeouts)."""

    error_task_class = JsonErrorTask
    task_class = DrainAwareTask
    header_started = 0.0
    request_bytes = 0
    timed_out = False  # answered 408: whatever else the client sends is dropped

    def received(self, data):
        if self.timed_out:
            return True
        if data and self.request is None:  # the first bytes of a new request
            self.header_started = time.time()
            self.request_bytes = 0
        self.request_bytes += len(data)
        return super().received(data)

    def headers_overdue(self, cutoff: float) -> bool:
        request = self.request
        return request is not None and not request.headers_finished and self.header_started < cutoff

    def body_overdue(self, now: float, timeout_s: float, min_rate: float) -> bool:
        """Headers complete, body still arriving, and later than `timeout_s` after the request's first byte plus
        one second per `min_rate` bytes received. Not while a task of this connection runs (pipelined requests
        are not read meanwhile, so their bodies cannot progress)."""
        request = self.request
        if request is None or not request.headers_finished or request.completed or self.requests:
            return False
        allowance = timeout_s + (self.request_bytes / min_rate if min_rate > 0 else 0.0)
        return now - self.header_started > allowance

    def answer_timeout(self, msg: str) -> None:
        """Answer the request whose body is late with 408 (a JsonErrorTask, as waitress does for its own errors)
        and close the connection once it is written; runs on the server's loop thread."""
        with self.requests_lock:
            request = self.request
            if request is None or request.completed:
                return
            request.error = RequestTimeout(msg)
            request.completed = True
            self.request = None
            self.timed_out = True
            self.requests.append(request)
            if len(self.requests) == 1:
                self.server.add_task(self)


class LastIdleFirst(threading.Condition):
    """A Condition whose notify() wakes the thread that began waiting last. waitress's request threads wait on one
    Condition, which wakes the longest idle: sequential requests then rotate over all --threads threads, each
    running with cold caches (measured ~0.1-0.2 ms of an 80-line upload); the most recently idle thread's are warm.
    """

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters
        while waiters and n > 0:
            waiter = waiters.pop()
            try:
                waiter.release()
            except RuntimeError:  # released already by an interrupted notify (as in threading.Condition)
                continue
            n -= 1


def _guarded_maintenance(header_timeout_s: float, body_timeout_s: float, body_min_rate_kib: float):
    min_rate = body_min_rate_kib * 1024  # bytes per second

    def maintenance(self, now: float) -> None:
        BaseWSGIServer.maintenance(self, now)  # idle keep-alive connections (adj.channel_timeout)
        cutoff = now - header_timeout_s
        for channel in list(self.active_channels.values()):
            if not isinstance(channel, GuardedChannel) or channel.will_close or channel.timed_out:
                continue
            if channel.headers_overdue(cutoff):
                log.info("closing connection from %s: request headers not complete within %g s", channel.addr,
                         header_timeout_s)
                channel.will_close = True
            elif channel.body_overdue(now, body_timeout_s, min_rate):
                late = (f"request body not received in time: {now - channel.header_started:.0f} s for "
                        f"{channel.request_bytes} bytes (allowed: {body_timeout_s:g} s"
                        + (f" + 1 s per {body_min_rate_kib:g} KiB received)" if min_rate > 0 else ")"))
                log.info("answering 408 to %s: %s", channel.addr, late)
                channel.answer_timeout(late)
    return maintenance


def build_runtime(settings: UploadSettings) -> ModelRuntime:
    """Load the highest good model version (golden-checked through the serving path) and watch for newer ones."""
    runtime = ModelRuntime(settings.model, settings.runtime)
    runtime.start(watch=True)
    return runtime


def build_app(settings: UploadSettings, runtime: ModelRuntime, draining: threading.Event):
    store = ResultStore(settings.redis_url, lambda: runtime.current.exported.name, settings.redis_ttl)
    scorer = Scorer(runtime, settings.batch_size)
    log.info("pid %d: model %s version %s from %s [%s]; redis %s; uploads up to %g MiB, save=true keeps them in %s",
             os.getpid(), runtime.current.exported.name, runtime.version, settings.model,
             settings.runtime.describe(), redact_url(settings.redis_url) if settings.redis_url else "disabled",
             settings.max_upload_mb, os.path.abspath(settings.upload_dir))
    return create_app(runtime, scorer, store, upload_dir=settings.upload_dir,
                      max_upload_bytes=settings.max_upload_bytes, draining=draining)


def listen_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {exc}") from None
    return sock


def create_server(settings: UploadSettings, app, sock: socket.socket, draining: threading.Event):
    """waitress on `sock`, with JSON error answers, the slow-client limits, and draining answers."""
    server = waitress.create_server(
        app, map={}, sockets=[sock], threads=settings.threads, ident="ctrkit-upload",
        # waitress rejects a body at or over this size from its Content-Length, before reading it.
        max_request_body_size=settings.max_upload_bytes + 1,
        connection_limit=settings.max_connections + 2,  # waitress counts its listening socket and trigger too
        channel_timeout=settings.idle_timeout_s, cleanup_interval=MAINTENANCE_INTERVAL_S,
        recv_bytes=RECV_BYTES)  # large uploads arrive in far fewer loop turns than with waitress's 8 KiB
    if not isinstance(server, BaseWSGIServer):  # one socket: waitress returns its server directly
        raise RuntimeError(f"unexpected waitress server {type(server).__name__}")
    server.__class__ = type("GuardedServer", (type(server),),
                            {"channel_class": GuardedChannel,
                             "maintenance": _guarded_maintenance(settings.header_timeout_s,
                                                                 settings.body_timeout_s,
                                                                 settings.body_min_rate_kib)})
    server.draining = draining
    server.task_dispatcher.queue_cv.__class__ = LastIdleFirst  # (its threads already wait on this object)
    return server


class Drain:
    """SIGTERM/SIGINT: report not ready and stop accepting connections, let every request already begun finish
    (even one whose body is still arriving), then stop the runtime and leave waitress's loop."""

    def __init__(self, server, runtime: ModelRuntime, draining: threading.Event, timeout_s: float):
        self.server, self.runtime, self.draining, self.timeout_s = server, runtime, draining, timeout_s
        self.finished = False

    def __call__(self, signum, frame) -> None:  # runs on the main thread, inside waitress's loop
        if self.finished:
            raise KeyboardInterrupt  # waitress's loop ends on it
        if self.draining.is_set():  # a second Ctrl-C / SIGTERM: stop now
            log.warning("pid %d: %s again: stopping without waiting for requests in flight", os.getpid(),
                        signal.Signals(signum).name)
            raise KeyboardInterrupt
        self.draining.set()  # /ready answers 503; answers carry "Connection: close"
        log.info("pid %d: %s: draining (requests in flight get up to %g s)", os.getpid(),
                 signal.Signals(signum).name, self.timeout_s)
        self.server.accepting = False
        # close the listening socket (other workers take new connections) from inside the loop: closing it here,
        # in a signal handler, could leave its fd in the poll set the interrupted loop retries
        self.server.trigger.pull_trigger(lambda: wasyncore.dispatcher.close(self.server))
        threading.Thread(target=self._finish, name="drain", daemon=True).start()

    def _finish(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        time.sleep(min(DRAIN_GRACE_S, self.timeout_s))  # let the loop read what already arrived on open connections
        while time.monotonic() < deadline and self._busy():
            time.sleep(0.05)
        self.runtime.drain()
        self.runtime.wait_idle(max(0.0, deadline - time.monotonic()))
        self.finished = True
        _thread.interrupt_main()  # runs this handler on the main thread (within a second), which ends the loop

    def _busy(self) -> bool:
        dispatcher = self.server.task_dispatcher
        if dispatcher.active_count or dispatcher.queue:
            return True
        return any(channel.requests or channel.total_outbufs_len  # answers being computed or written
                   or (channel.request is not None and channel.request.headers_finished)  # a body arriving
                   for channel in list(self.server.active_channels.values()))


def serve_one(settings: UploadSettings, reuse_port: bool = False) -> int:
    """One server process: runtime, app, waitress; until SIGTERM/SIGINT (drained). Returns the exit status."""
    keep_freed_memory()  # memory freed after a request stays for the next (see ctrkit/cpu_env.py)
    runtime = build_runtime(settings)
    try:
        draining = threading.Event()
        app = build_app(settings, runtime, draining)
        sock = listen_socket(settings.host, settings.port, reuse_port)
        server = create_server(settings, app, sock, draining)
        drain = Drain(server, runtime, draining, settings.drain_timeout_s)
        signal.signal(signal.SIGTERM, drain)
        signal.signal(signal.SIGINT, drain)
        signal.signal(signal.SIGHUP, lambda signum, frame: runtime.reload())
        freeze_startup_heap()  # (no full-collection pauses walking the start-up objects; see ctrkit.runtime)
        host, port = sock.getsockname()[:2]
        print(READY_LINE.format(model=runtime.current.exported.name, version=runtime.version, host=host, port=port),
              flush=True)
        log.info("pid %d: serving on http://%s:%s", os.getpid(), host, port)
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        log.info("pid %d: stopped", os.getpid())
    finally:
        runtime.close()
    return 0


def supervise(settings: UploadSettings, argv: list[str]) -> int:
    """`--workers N`: N copies of this server on one port under the shared supervisor."""
    from serving.supervisor import run_worker_group

    reserved = listen_socket(settings.host, settings.port, reuse_port=True)  # bound, not listening: the port
    port = reserved.getsockname()[1]
    command = [sys.executable, "-m", __package__, *argv, "--workers", "1", "--worker", "--port", str(port)]
    return run_worker_group(command, settings.workers, ready_prefix="serving.upload ready",
                            announce=lambda lines: lines[0].strip() + f" workers {settings.workers}",
                            drain_timeout_s=settings.drain_timeout_s, sockets=[reserved],
                            metrics_prefix="ctrkit-upload-metrics-", start_failed_status=1)


def serve(settings: UploadSettings, argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0: stopped cleanly)."""
    if settings.worker:
        return serve_one(settings, reuse_port=True)
    if settings.workers == 1:
        return serve_one(settings)
    return supervise(settings, sys.argv[1:] if argv is None else argv)
