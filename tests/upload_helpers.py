"""Helpers for the upload service tests: real redis-server and real `python -m serving.upload` processes on
free loopback ports."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import redis
import requests

from serving.supervisor import stop_process

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with status {proc.returncode} before {url} was ready")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:  # refused, or queued until a worker accepts
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> int:
    return stop_process(proc, timeout_s=timeout_s)


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing; CI must install it (scripts/ensure_redis.sh)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    """A throw-away redis-server on a free loopback port, without persistence; can be stopped and restarted."""

    def __init__(self, directory: str):
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class UploadServer:
    """`python -m serving.upload` on a free loopback port; stderr goes to `log_path`."""

    def __init__(self, model_dir: str, log_path: str, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.upload", "--model", model_dir, "--port", str(self.port), *args],
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            self.wait_ready_line()
            wait_http_ok(self.url + "/ready", self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"upload server did not start; its log:\n{self.log()}") from None

    def wait_ready_line(self, timeout_s: float = 300) -> None:
        """The ready line: with --workers N the supervisor prints it once every worker is ready."""
        deadline = time.monotonic() + timeout_s
        while "serving.upload ready" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("no ready line")
            time.sleep(0.1)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int:
        return stop(self.proc)
