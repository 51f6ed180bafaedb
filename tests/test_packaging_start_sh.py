"""Docker/start.sh's readiness logic with real processes, quickly: PYTHON points to a stand-in interpreter whose
`-m serving.rpc` / `-m serving.upload` start small HTTP servers (in a grandchild process, as the RPC server's
workers do) that answer /ready 503 until the test allows them; everything else (start.sh's own probes) runs in
the real Python. start.sh must announce "ready" only once BOTH of its own children answer, must refuse ports that
another process holds, and must never take another process's answer for its child's."""
from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_SH = os.path.join(REPO, "Docker", "start.sh")

FAKE_SERVER = textwrap.dedent("""
    import http.server, os, sys
    port, gate = int(sys.argv[1]), sys.argv[2]
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = os.path.exists(gate)
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok" if ok else b"starting")
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")

# argv: -m serving.rpc --model M --host H --port P --http_port HP ... | -m serving.upload --model M --host H --port P
FAKE_PYTHON = textwrap.dedent("""\
    #!{python}
    import os, signal, subprocess, sys
    args = sys.argv[1:]
    if args[:1] != ["-m"]:
        os.execv({python!r}, [{python!r}] + args)  # start.sh's own probes
    name = args[1].rsplit(".", 1)[-1]
    flag = "--http_port" if name == "rpc" else "--port"
    port = args[args.index(flag) + 1]
    gate = os.path.join({gates!r}, name)
    if os.path.exists(gate + ".fail"):
        sys.exit(3)
    if os.path.exists(gate + ".mute"):  # alive, but never listens
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    server = subprocess.Popen([{python!r}, {server!r}, port, gate])  # the listener is a grandchild
    stopping = []
    def stop(*_):
        stopping.append(1); server.terminate()  # main's wait() then returns
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = server.wait()
    sys.exit(0 if stopping else rc)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake(tmp_path):
    gates = tmp_path / "gates"
    gates.mkdir()
    server = tmp_path / "fake_server.py"
    server.write_text(FAKE_SERVER)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, gates=str(gates), server=str(server)))
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    ports = {"RPC_PORT": free_port(), "RPC_HTTP_PORT": free_port(), "UPLOAD_PORT": free_port()}
    env = {**os.environ, "PYTHON": str(python), "STARTUP_TIMEOUT": "60", "STOP_TIMEOUT": "10",
           **{k: str(v) for k, v in ports.items()}}
    return {"gates": gates, "server": server, "model": str(model), "ports": ports, "env": env, "log": tmp_path / "start.log"}


def start(fake) -> subprocess.Popen:
    log = open(fake["log"], "wb")
    return subprocess.Popen(["bash", START_SH, fake["model"]], env=fake["env"], stdout=log, stderr=subprocess.STDOUT)


def log_text(fake) -> str:
    return fake["log"].read_text()


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def http_status(port: int) -> int | None:
    import urllib.error
    import urllib.request
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def test_ready_only_when_both_children_answer(fake):
    proc = start(fake)
    try:
        ports = fake["ports"]
        # both listen but answer 503: not ready
        assert wait_for(lambda: http_status(ports["RPC_HTTP_PORT"]) == 503 and http_status(ports["UPLOAD_PORT"]) == 503)
        (fake["gates"] / "upload").touch()
        assert wait_for(lambda: http_status(ports["UPLOAD_PORT"]) == 200)
        time.sleep(1.5)  # several probe rounds with the RPC server still starting
        assert "ready" not in log_text(fake) and proc.poll() is None
        (fake["gates"] / "rpc").touch()
        assert wait_for(lambda: "start.sh: ready" in log_text(fake)), log_text(fake)
    finally:
        status = stop(proc)
    assert status == 0, log_text(fake)
    assert "stopped (status 0)" in log_text(fake)


def test_ports_held_by_another_process_are_refused(fake):
    """A stale server answering 200 on the upload port must not be mistaken for the child: refused up front."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    stale = http.server.ThreadingHTTPServer(("127.0.0.1", fake["ports"]["UPLOAD_PORT"]), Ok)
    threading.Thread(target=stale.serve_forever, daemon=True).start()
    try:
        (fake["gates"] / "rpc").touch()
        (fake["gates"] / "upload").touch()
        proc = start(fake)
        assert proc.wait(60) == 2
    finally:
        stale.shutdown()
        stale.server_close()
    text = log_text(fake)
    assert f"port {fake['ports']['UPLOAD_PORT']} is already in use" in text and "start.sh: ready" not in text


def test_an_answer_from_a_foreign_socket_is_not_readiness(fake):
    """The upload child stays alive but never listens; once start.sh has checked the ports, a foreign server takes
    the upload port and answers 200. That answer is not the child's: start.sh must time out, never say ready."""
    fake["env"]["STARTUP_TIMEOUT"] = "5"
    (fake["gates"] / "upload.mute").touch()
    (fake["gates"] / "rpc").touch()
    proc = start(fake)
    assert wait_for(lambda: http_status(fake["ports"]["RPC_HTTP_PORT"]) == 200)  # past the port check
    foreign = subprocess.Popen([sys.executable, str(fake["server"]), str(fake["ports"]["UPLOAD_PORT"]),
                                str(fake["gates"] / "rpc")])  # answers 200 to /ready
    try:
        assert wait_for(lambda: http_status(fake["ports"]["UPLOAD_PORT"]) == 200)
        assert proc.wait(60) == 1
    finally:
        foreign.terminate()
        foreign.wait()
    text = log_text(fake)
    assert "upload server not ready after 5s" in text and "start.sh: ready" not in text


def test_a_child_that_dies_during_start_up_fails_the_start(fake):
    (fake["gates"] / "upload.fail").touch()
    (fake["gates"] / "rpc").touch()
    proc = start(fake)
    assert proc.wait(60) == 1
    text = log_text(fake)
    assert "upload server exited during start-up" in text and "start.sh: ready" not in text


def test_a_child_that_never_answers_times_out(fake):
    fake["env"]["STARTUP_TIMEOUT"] = "3"
    (fake["gates"] / "rpc").touch()
    proc = start(fake)
    assert proc.wait(60) == 1
    text = log_text(fake)
    assert "upload server not ready after 3s" in text and "start.sh: ready" not in text
