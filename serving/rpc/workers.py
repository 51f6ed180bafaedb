"""`--workers N`: N complete server processes on the same gRPC and HTTP ports.

One Python process answers on about one core: the interpreter lock serialises request handling, and Paddle
holds it for much of a small predictor call. With SO_REUSEPORT the kernel spreads incoming connections over the
workers (a connection stays with its worker, so spread needs several client connections). This supervisor
reserves the ports, starts the workers with the same flags, prints one ready line once all are ready, forwards
SIGTERM / SIGINT (drain) and SIGHUP (look for model versions) to them, and stops them all (exit status 1) if one
exits on its own. Each worker loads, self-checks and swaps model versions by itself; /metrics answers with the
sum over all workers (Prometheus multi-process mode).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from serving.rpc.metrics import MULTIPROC_ENV
from serving.rpc.server import READY_LINE, http_port, predictor_options

log = logging.getLogger("serving.rpc.workers")


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) so the port is ours and known before the workers start; they bind it too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {e}") from None
    return sock


class Supervisor:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        predictor_options(args)  # refuse impossible flag mixes before starting anything
        self.args = args
        self.argv = argv
        self._stop_requested = False
        self._reload_requested = False

    def run(self) -> int:
        args = self.args
        sockets = [_reserve(args.host, args.port), _reserve(args.host, http_port(args))]
        grpc_port, http = (s.getsockname()[1] for s in sockets)
        metrics_dir = tempfile.mkdtemp(prefix="ctrkit-rpc-metrics-")
        # later flags win in argparse: the workers get the resolved ports and run one process each
        cmd = [sys.executable, "-m", "serving.rpc", *self.argv, "--workers", "1", "--port", str(grpc_port),
               "--http_port", str(http), "--reuse_port"]
        env = {**os.environ, MULTIPROC_ENV: metrics_dir}
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(args.workers)]
        try:
            versions = self._wait_ready(workers)
            if versions is None:
                return 2
            print(READY_LINE.format(version=max(versions), host=args.host, grpc_port=grpc_port, http_port=http),
                  flush=True)
            log.info("%d workers ready (pids %s)", len(workers), [w.pid for w in workers])
            return self._supervise(workers)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            for s in sockets:
                s.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _wait_ready(self, workers: list[subprocess.Popen]) -> list[int] | None:
        """Each worker's served version once all printed their ready line; None (workers stopped) otherwise."""
        lines: dict[int, str] = {}

        def read(i: int) -> None:
            lines[i] = workers[i].stdout.readline()

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(workers))]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        if all(lines.get(i, "").startswith("serving.rpc ready") for i in range(len(workers))):
            return [int(lines[i].split()[3]) for i in range(len(workers))]
        log.error("a worker failed to start; stopping the others")
        self._signal_all(workers, signal.SIGTERM)
        for w in workers:
            w.wait()
        return None

    def _supervise(self, workers: list[subprocess.Popen]) -> int:
        while not self._stop_requested:
            time.sleep(0.2)
            if self._reload_requested:
                self._reload_requested = False
                self._signal_all(workers, signal.SIGHUP)
            dead = [w for w in workers if w.poll() is not None]
            if dead:
                log.error("worker pid %d exited with status %d; stopping all workers", dead[0].pid,
                          dead[0].returncode)
                self._stop_all(workers)
                return 1
        return self._stop_all(workers)

    def _stop_all(self, workers: list[subprocess.Popen]) -> int:
        """Drain every worker (SIGTERM) and wait for them; the worst exit status."""
        self._signal_all(workers, signal.SIGTERM)
        deadline = time.monotonic() + self.args.drain_timeout_s + 30
        status = 0
        for w in workers:
            try:
                code = w.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop; killing it", w.pid)
                w.kill()
                code = w.wait()
            status = max(status, code if code >= 0 else 1)
        return status

    @staticmethod
    def _signal_all(workers: list[subprocess.Popen], sig: int) -> None:
        for w in workers:
            if w.poll() is None:
                w.send_signal(sig)

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _request_reload(self, signum, frame) -> None:
        self._reload_requested = True
