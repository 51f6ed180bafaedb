"""One supervisor for the worker processes of every server (`serving.rpc`, `serving.upload`, `serving.oip`).

    sup = Supervisor([sys.executable, "-m", "serving.rpc", ...], workers=4, env={...},
                     is_ready=lambda line: line.startswith("serving.rpc ready"))
    ready_lines = sup.start()      # each worker's first stdout line; RuntimeError if one fails to start
    print("ready", flush=True)
    return sup.supervise()         # until SIGTERM / SIGINT: restart dead workers, forward SIGHUP; then drain all

Workers are complete servers sharing their ports (SO_REUSEPORT; the caller reserves the ports first so every
worker gets the same ones). A worker is ready when it prints its ready line (`is_ready`); its later stdout goes
to the supervisor's stderr. A worker that dies is restarted (its Prometheus multi-process files are marked dead);
one that dies again and again within `crash_window_s` of its start (`max_crashes` times) stops the whole group
with exit status 1, so a broken deployment does not restart forever. SIGTERM / SIGINT drain every worker (they
get SIGTERM and `drain_timeout_s` + 30 s before SIGKILL); the exit status is the worst of theirs. A worker can
have SIGHUP sent to every worker (`reload_all_workers()`).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

log = logging.getLogger("serving.supervisor")
SUPERVISOR_PID_ENV = "CTRKIT_SUPERVISOR_PID"  # set in each worker's environment: who to ask to signal them all


def reload_all_workers() -> bool:
    """From a worker: ask its supervisor to send SIGHUP to every worker (each looks for new model versions).
    False when this process is not a supervised worker (then there is no one else to tell)."""
    pid = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not pid.isdigit() or int(pid) != os.getppid():  # only the parent that set it: never signal anyone else
        return False
    os.kill(int(pid), signal.SIGHUP)
    return True


def first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The first line `proc` writes to its (piped, text) stdout; "" if it exits or `timeout_s` passes first."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return out[0] if out else ""


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
    """Send `sig` (if it still runs), wait up to `timeout_s`, then SIGKILL; its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProcess:
    """One server started as a child process (tests, benchmarks): `command` with stdout piped, stderr to
    `log_path` (None: inherited); `ready_line` = its first stdout line (the servers print their ready line
    first), `match` = the `ready` pattern's match on it (None: it did not get ready within `timeout_s`; the
    caller stops it and reports)."""

    def __init__(self, command: list[str], ready, *, log_path: str | None = None, cwd: str | None = None,
                 timeout_s: float = 300.0):
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else None
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=cwd)
        self.ready_line = first_line(self.proc, timeout_s)
        self.match = ready.search(self.ready_line)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        status = stop_process(self.proc, sig, timeout_s)
        if self._log is not None:
            self._log.close()
        return status


class Supervisor:
    def __init__(self, command: list[str], workers: int, *, env: dict | None = None,
                 is_ready: Callable[[str], bool] = lambda line: bool(line.strip()), drain_timeout_s: float = 30.0,
                 ready_timeout_s: float = 600.0, crash_window_s: float = 30.0, max_crashes: int = 3,
                 multiproc_dir: str | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.command = command
        self.count = workers
        self.env = env
        self.is_ready = is_ready
        self.drain_timeout_s = drain_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.crash_window_s = crash_window_s
        self.max_crashes = max_crashes
        self.multiproc_dir = multiproc_dir
        self.workers: list[subprocess.Popen | None] = [None] * workers
        self.restarts = 0
        self._started_at = [0.0] * workers
        self._crashes = [0] * workers
        self._stop_requested = False
        self._reload_requested = False

    # -------------------------------------------------------------------------------------- start-up
    def _spawn(self, slot: int) -> subprocess.Popen:
        env = {**(os.environ if self.env is None else self.env), SUPERVISOR_PID_ENV: str(os.getpid())}
        proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, env=env)
        self.workers[slot] = proc
        self._started_at[slot] = time.monotonic()
        return proc

    def _first_line(self, proc: subprocess.Popen) -> str:
        line = first_line(proc, self.ready_timeout_s)
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()
        return line

    @staticmethod
    def _pump(proc: subprocess.Popen) -> None:
        """Keep reading a worker's stdout (so it never blocks on a full pipe); pass it on to stderr."""
        try:
            for line in proc.stdout:
                sys.stderr.write(line)
        except (OSError, ValueError):
            pass

    def start(self) -> list[str]:
        """Start every worker and wait for each one's ready line; RuntimeError (workers stopped) if one fails."""
        self._install_signals()
        procs = [self._spawn(i) for i in range(self.count)]
        lines: list[str] = [""] * self.count

        def wait(i: int) -> None:
            lines[i] = self._first_line(procs[i])

        threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(self.count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = [i for i in range(self.count) if not self.is_ready(lines[i])]
        if bad:
            self._stop_all()
            raise RuntimeError(f"worker {bad[0]} (pid {procs[bad[0]].pid}) failed to start (exit status "
                               f"{procs[bad[0]].poll()}); see its log above")
        log.info("%d workers ready (pids %s)", self.count, [p.pid for p in procs])
        return lines

    # ------------------------------------------------------------------------------------ supervision
    def supervise(self) -> int:
        """Until SIGTERM/SIGINT: restart workers that die, forward SIGHUP. Then drain all; worst exit status."""
        while not self._stop_requested:
            time.sleep(0.2)
            if self._reload_requested:
                self._reload_requested = False
                self._signal_all(signal.SIGHUP)
            for slot, proc in enumerate(self.workers):
                if proc is not None and proc.poll() is not None and not self._stop_requested:
                    if not self._restart(slot, proc):
                        self._stop_all()
                        return 1
        return self._stop_all()

    def _restart(self, slot: int, dead: subprocess.Popen) -> bool:
        lived = time.monotonic() - self._started_at[slot]
        self._crashes[slot] = self._crashes[slot] + 1 if lived < self.crash_window_s else 1
        log.error("worker pid %d exited with status %s after %.1f s; restarting it", dead.pid, dead.returncode, lived)
        self._mark_dead(dead.pid)
        if self._crashes[slot] > self.max_crashes:
            log.error("worker slot %d died %d times within %.0f s of starting; stopping all workers", slot,
                      self._crashes[slot], self.crash_window_s)
            return False
        proc = self._spawn(slot)
        self.restarts += 1
        line = self._first_line(proc)
        if not self.is_ready(line):
            log.error("restarted worker pid %d did not get ready", proc.pid)
            return True  # if it died, the next round sees it and counts the crash
        log.info("worker restarted (pid %d)", proc.pid)
        return True

    def _mark_dead(self, pid: int) -> None:
        if self.multiproc_dir:
            try:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, self.multiproc_dir)
            except Exception:
                log.debug("mark_process_dead(%d)", pid, exc_info=True)

    def _stop_all(self) -> int:
        """Drain every worker (SIGTERM) and wait for them; the worst exit status."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_timeout_s + 30
        status = 0
        for proc in self.workers:
            if proc is None:
                continue
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                code = proc.wait()
            status = max(status, code if code >= 0 else 1)
        return status

    def _signal_all(self, sig: int) -> None:
        for proc in self.workers:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    def pids(self) -> list[int]:
        return [p.pid for p in self.workers if p is not None]

    # ---------------------------------------------------------------------------------------- signals
    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._request_stop)
            signal.signal(signal.SIGINT, self._request_stop)
            signal.signal(signal.SIGHUP, self._request_reload)

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _request_reload(self, signum, frame) -> None:
        self._reload_requested = True

    def request_stop(self) -> None:
        self._stop_requested = True


def run_worker_group(command: list[str], workers: int, *, ready_prefix: str, announce: Callable[[list[str]], str],
                     drain_timeout_s: float, sockets: list, metrics_prefix: str, metrics_parent: str | None = None,
                     start_failed_status: int = 2) -> int:
    """The `--workers N` main loop of every server: `command` (one complete server, on ports the caller reserved:
    `sockets`, closed at the end) run `workers` times under a Supervisor, ready when a worker's stdout line starts
    with `ready_prefix`; prints `announce(ready_lines)` once all are ready, then supervises until SIGTERM/SIGINT.
    Prometheus multi-process files go to a fresh directory (`metrics_prefix`, under `metrics_parent` or the temp
    dir), removed at the end. Returns the exit status (`start_failed_status` when a worker fails to start)."""
    from ctrkit.runtime import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix=metrics_prefix, dir=metrics_parent)
    sup = Supervisor(command, workers, env={**os.environ, MULTIPROC_ENV: metrics_dir},
                     is_ready=lambda line: line.startswith(ready_prefix), drain_timeout_s=drain_timeout_s,
                     multiproc_dir=metrics_dir)
    try:
        try:
            lines = sup.start()
        except RuntimeError as e:
            log.error("%s", e)
            return start_failed_status
        print(announce(lines), flush=True)
        return sup.supervise()
    finally:
        for proc in sup.workers:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
