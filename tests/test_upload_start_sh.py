"""Docker/start.sh run directly on the host (as CI does, there is no Docker engine): it starts the RPC server
and the upload service, both answer, SIGTERM stops both with a clean exit; a dying server takes the script
down with a non-zero status."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from upload_helpers import REPO_ROOT, free_port, stop, wait_http_ok

START_SH = os.path.join(REPO_ROOT, "Docker", "start.sh")

if not os.path.isfile(os.path.join(REPO_ROOT, "serving", "rpc", "__main__.py")):
    pytest.skip("serving.rpc (the RPC server start.sh also starts) does not exist yet", allow_module_level=True)


def start(model_dir: str, log_path: str) -> tuple[subprocess.Popen, dict]:
    ports = {"RPC_PORT": free_port(), "RPC_HTTP_PORT": free_port(), "UPLOAD_PORT": free_port()}
    env = {**os.environ, "PYTHON": sys.executable, **{k: str(v) for k, v in ports.items()}}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", START_SH, model_dir], env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, ports


def wait_both_ready(proc: subprocess.Popen, ports: dict, log_path: str) -> None:
    try:
        wait_http_ok(f"http://127.0.0.1:{ports['RPC_HTTP_PORT']}/ready", proc)
        wait_http_ok(f"http://127.0.0.1:{ports['UPLOAD_PORT']}/ready", proc)
        deadline = time.monotonic() + 30  # start.sh announces readiness after its own probes
        while "start.sh: ready" not in open(log_path).read():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    except (RuntimeError, AssertionError):
        stop(proc)
        raise AssertionError("start.sh did not come up; its output:\n" + open(log_path).read()) from None


def port_closed(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
        return False
    except requests.ConnectionError:
        return True


def test_start_sh_serves_both_and_stops_cleanly_on_sigterm(exported_deepfm, slot_sample, tmp_path):
    log_path = str(tmp_path / "start.log")
    proc, ports = start(exported_deepfm, log_path)
    wait_both_ready(proc, ports, log_path)
    children = psutil.Process(proc.pid).children()
    assert len(children) == 2

    upload = requests.post(f"http://127.0.0.1:{ports['UPLOAD_PORT']}/upload", params={"user_id": "sh"},
                           files={"file": open(slot_sample, "rb")}, timeout=60)
    assert upload.status_code == 200 and upload.json()["count"] == 80
    no_redis = requests.post(f"http://127.0.0.1:{ports['UPLOAD_PORT']}/upload",
                             params={"user_id": "sh", "re_model": "redis"}, files={"file": open(slot_sample, "rb")},
                             timeout=60)
    assert no_redis.status_code == 503 and "not enabled" in no_redis.json()["msg"]
    rpc_ready = requests.get(f"http://127.0.0.1:{ports['RPC_HTTP_PORT']}/ready", timeout=10)
    assert rpc_ready.status_code == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, open(log_path).read()
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    assert all(port_closed(port) for port in (ports["RPC_HTTP_PORT"], ports["UPLOAD_PORT"]))
    assert "start.sh: stopped (status 0)" in open(log_path).read()


def test_start_sh_exits_non_zero_when_a_server_dies(exported_deepfm, tmp_path):
    log_path = str(tmp_path / "start.log")
    proc, ports = start(exported_deepfm, log_path)
    wait_both_ready(proc, ports, log_path)
    rpc, upload = sorted(psutil.Process(proc.pid).children(), key=lambda p: "serving.upload" in p.cmdline())
    upload.kill()
    assert proc.wait(timeout=60) == 1
    assert not rpc.is_running() or rpc.status() == psutil.STATUS_ZOMBIE
    assert "upload server exited unexpectedly" in open(log_path).read()


def test_start_sh_rejects_a_missing_model_dir(tmp_path):
    result = subprocess.run(["bash", START_SH, str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr
