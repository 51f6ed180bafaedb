"""Load the model, build the app and serve it with waitress until SIGTERM or SIGINT.

Processes, not threads, are what use more cores here: Paddle Inference's CPU predictor holds the GIL for the
whole of `run()` (measured: another Python thread of the process stalls for the full duration of a batch), so
extra predictor threads in one process would just take turns. `--workers N` therefore starts N worker processes
(spawned, each with its own model copy and predictor) that accept connections from one listening socket bound
here; `--threads` are waitress's request threads within each process, and `--cpu_threads` lets one predictor use
several cores for one batch. The parent supervises: SIGTERM/SIGINT stop every worker cleanly, and a worker that
dies stops the service (exit status non-zero) rather than leaving it silently short of capacity.

Waitress answers some requests itself, before the app sees them (a body over the size limit, a malformed
request); `JsonErrorTask` makes those answers JSON too, so a client never has to parse anything else.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket

import waitress
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from ctrkit.cli import run_cli, setup_logging
from ctrkit.inference import InferenceError, PredictorOptions, PredictorPool, load_exported_model
from serving.upload.app import create_app
from serving.upload.scoring import Scorer
from serving.upload.settings import MIB, UploadSettings
from serving.upload.store import ResultStore, redact_url

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30  # how long workers get to finish requests in flight after SIGTERM


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


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


class _Stop(Exception):
    """Raised by the signal handler to leave a blocking wait."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # waitress's loop turns this into a clean shutdown


def build_app(settings: UploadSettings):
    """Load the exported model, build the predictor (checked against the golden batch) and the app."""
    exported = load_exported_model(settings.model)
    options = PredictorOptions(device=settings.device, gpu_id=settings.gpu_id, onednn=settings.use_onednn,
                               cpu_threads=settings.cpu_threads)
    pool = PredictorPool(exported, options, size=1)  # one is enough: run() holds the GIL (module docstring)
    scorer = Scorer(pool, exported.feature_spec, settings.batch_size)
    store = ResultStore(settings.redis_url, exported.name, settings.redis_ttl)
    log.info("pid %d: model %s from %s [%s]; redis %s; uploads up to %g MiB, save=true keeps them in %s",
             os.getpid(), exported.name, settings.model, options.describe(),
             redact_url(settings.redis_url) if settings.redis_url else "disabled", settings.max_upload_mb,
             os.path.abspath(settings.upload_dir))
    return create_app(scorer, store, model_name=exported.name, upload_dir=settings.upload_dir,
                      max_upload_bytes=settings.max_upload_bytes)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from (bound once, so port 0 means one port for all)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


def serve_socket(settings: UploadSettings, sock: socket.socket) -> None:
    """Build the app and serve on `sock` until SIGTERM/SIGINT; requests in flight are finished first."""
    app = build_app(settings)
    socket_map: dict = {}
    server = waitress.create_server(
        app, map=socket_map, sockets=[sock], threads=settings.threads, ident="ctrkit-upload",
        # waitress rejects a body at or over this size from its Content-Length, before reading it.
        max_request_body_size=settings.max_upload_bytes + 1)
    for dispatcher in socket_map.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = JsonErrorChannel
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    host, port = sock.getsockname()[:2]
    log.info("pid %d: serving on http://%s:%s", os.getpid(), host, port)
    server.run()
    log.info("pid %d: stopped", os.getpid())


def _worker(settings: UploadSettings, sock: socket.socket) -> None:
    setup_logging()
    run_cli(lambda: serve_socket(settings, sock), user_errors=(InferenceError,))


def serve(settings: UploadSettings) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status (0: stopped cleanly)."""
    sock = bind(settings.host, settings.port)
    if settings.workers == 1:
        serve_socket(settings, sock)
        return 0
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: forking after Paddle's threads is unsafe
    workers = [context.Process(target=_worker, args=(settings, sock), name=f"upload-worker-{i}")
               for i in range(settings.workers)]
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    status = 0
    try:
        for worker in workers:
            worker.start()
        log.info("pid %d: supervising %d workers on %s:%s", os.getpid(), len(workers), *sock.getsockname()[:2])
        ended = multiprocessing.connection.wait([w.sentinel for w in workers])
        dead = next(w for w in workers if w.sentinel in ended)
        dead.join()
        log.error("worker %s (pid %d) exited with status %s; stopping the service", dead.name, dead.pid,
                  dead.exitcode)
        status = dead.exitcode if dead.exitcode and dead.exitcode > 0 else 1  # (< 0: killed by a signal)
    except _Stop as stop:
        log.info("%s: stopping %d workers", stop, len(workers))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = _stop_workers(workers) or status
    return status


def _stop_workers(workers) -> int:
    """SIGTERM every live worker, wait, SIGKILL stragglers; 1 if any had to be killed or failed to stop."""
    started = [worker for worker in workers if worker.pid is not None]
    for worker in started:
        if worker.is_alive():
            worker.terminate()
    status = 0
    for worker in started:
        worker.join(STOP_TIMEOUT_S)
        if worker.is_alive():
            log.error("worker %s (pid %d) did not stop within %d s; killing it", worker.name, worker.pid,
                      STOP_TIMEOUT_S)
            worker.kill()
            worker.join()
            status = 1
    return status
