"""Start and watch the servers the serving benchmarks measure (serving.rpc, serving.oip, the echo server)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from serving.supervisor import ServerProcess  # noqa: E402

READY = {
    "rpc": re.compile(r"serving\.rpc ready: version \S+ grpc [\d.]+:(?P<grpc>\d+) http [\d.]+:(?P<http>\d+)"),
    "oip": re.compile(r"serving\.oip ready: model \S+ version \S+ http [\d.]+:(?P<http>\d+) grpc [\d.]+:(?P<grpc>\d+)"),
    "echo": re.compile(r"echo ready: grpc [\d.]+:(?P<grpc>\d+) http [\d.]+:(?P<http>\d+)"
                       r"(?: grpc_aio [\d.]+:(?P<grpc_aio>\d+))?"),
}


LOAD_CLIENT = os.path.join(REPO, "benchmarks", "load_client.py")


class BenchError(RuntimeError):
    pass


def client_run(target: str, address: str, model: str, concurrency: int, duration: float, batch: int = 1,
               warmup: int = 50, qps: float = 0.0) -> dict:
    """One benchmarks/load_client.py run against `address` (closed loop, or paced to `qps` requests/s in all);
    its JSON summary."""
    cmd = [sys.executable, LOAD_CLIENT, "--target", target, "--address", address, "--model_dir", model,
           "--concurrency", str(concurrency), "--duration", str(duration), "--batch", str(batch),
           "--warmup", str(warmup), "--qps", str(qps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=duration + 600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(f"load client failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def server_command(kind: str, model: str, backend: str, flags: list[str]) -> list[str]:
    if kind == "echo":
        return [sys.executable, os.path.join(REPO, "benchmarks", "echo_server.py"), *flags]
    if kind == "rpc":
        serving = os.path.join(model, "serving_server")
        return [sys.executable, "-m", "serving.rpc", "--model", serving if os.path.isdir(serving) else model,
                "--port", "0", "--http_port", "0", "--backend", backend, "--version_poll_s", "0",
                "--log_level", "WARNING", *flags]
    if kind == "oip":
        return [sys.executable, "-m", "serving.oip", "--model", model, "--http_port", "0", "--grpc_port", "0",
                "--backend", backend, "--version_poll_s", "0", "--log_level", "WARNING", *flags]
    raise BenchError(f"unknown server kind {kind!r}")


class Server(ServerProcess):
    """A server process, ready (ports read from its ready line) or BenchError with the tail of its log."""

    def __init__(self, kind: str, model: str = "", backend: str = "paddle", flags: list[str] | None = None,
                 log_path: str | None = None, timeout_s: float = 300):
        self.kind, self.backend = kind, backend
        super().__init__(server_command(kind, model, backend, flags or []), READY[kind],
                         log_path=log_path or os.devnull, cwd=REPO, timeout_s=timeout_s)
        match = self.match
        if not match:
            self.stop()
            raise BenchError(f"{kind} server did not start: {' '.join(self.command)}\n{self.log_tail()}")
        self.grpc_port, self.http_port = int(match["grpc"]), int(match["http"])
        self.grpc_aio_port = int(match["grpc_aio"]) if kind == "echo" and match["grpc_aio"] else None

    def address(self, transport: str) -> str:
        if transport == "echo_grpc_aio":
            return f"127.0.0.1:{self.grpc_aio_port}"
        return f"127.0.0.1:{self.grpc_port if transport.endswith('grpc') else self.http_port}"

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its workers so far."""
        total = 0.0
        for p in self.processes():
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_mb(self) -> float:
        """Resident memory of the process that serves (the largest, with --workers: the biggest worker)."""
        sizes = []
        for p in self.processes():
            try:
                sizes.append(p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        return round(max(sizes) / 2 ** 20, 1) if sizes else 0.0

    def log_tail(self, n: int = 3000) -> str:
        if self.log_path == os.devnull:
            return ""
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def stop(self, timeout_s: float = 60) -> int | None:
        return super().stop(timeout_s=timeout_s)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]
