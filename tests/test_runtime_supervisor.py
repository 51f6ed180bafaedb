"""serving/supervisor.py with stand-in workers: readiness, restart of a dead worker, giving up on a crash loop,
draining every worker on stop."""
from __future__ import annotations

import signal
import sys
import threading
import time

import psutil
import pytest

from serving.supervisor import Supervisor

@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """Supervisor.start() installs SIGTERM/SIGINT/SIGHUP handlers in the main thread: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# a worker: prints its ready line, then waits; exits 0 on SIGTERM after "draining"
WORKER = r"""
import signal, sys, time
stop = False
def term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while not stop:
    time.sleep(0.02)
print("drained", flush=True)
sys.exit(0)
"""


def test_restart_and_drain():
    sup = Supervisor([sys.executable, "-c", WORKER], 2, is_ready=lambda line: line.startswith("ready"),
                     drain_timeout_s=5)
    assert sup.start() == ["ready\n", "ready\n"]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(sup.supervise()))
    runner.start()
    try:
        first = sup.pids()
        psutil.Process(first[0]).kill()
        deadline = time.monotonic() + 30
        while sup.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.restarts == 1 and first[0] not in sup.pids() and first[1] in sup.pids()
    finally:
        sup.request_stop()
        runner.join(30)
    assert result == [0]
    assert all(p.poll() == 0 for p in sup.workers)  # both drained (SIGTERM) and exited 0


def test_crash_loop_gives_up():
    code = "print('ready', flush=True); import sys; sys.exit(3)"
    sup = Supervisor([sys.executable, "-c", code], 1, is_ready=lambda line: line.startswith("ready"),
                     max_crashes=2, crash_window_s=60)
    sup.start()
    assert sup.supervise() == 1
    assert sup.restarts == 2


def test_worker_that_never_gets_ready():
    sup = Supervisor([sys.executable, "-c", "import sys; sys.exit(2)"], 2, is_ready=lambda line: line.startswith("r"))
    with pytest.raises(RuntimeError, match="failed to start"):
        sup.start()
