"""Serving section of the benchmark report, measured by the serving benchmarks (they start the servers in
their own processes and drive them from separate client processes):

- rpc: benchmarks/serving_bench.py (`python -m serving.rpc` under tools/rec_client.py load) for every transport x
  batch x concurrency: QPS, samples/s, p50/p99, errors.
- upload: benchmarks/upload_bench.py (`python -m serving.upload`): round-trip latency of the 80-line sample and
  lines/s of a large upload.

Matrix keys (profile `serving:`): rpc {transports, concurrency, batch, duration_s, server_flags};
upload {requests, lines, repeat, server_args}.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
UPLOAD_BENCH = os.path.join(HERE, "upload_bench.py")
SCHEMA = {
    "rpc": {"transports": list, "concurrency": list, "batch": list, "duration_s": (int, float), "server_flags": str},
    "upload": {"requests": int, "lines": int, "repeat": int, "server_args": str},
}
UPLOAD_TIMEOUT_S = 900


def check_serving_config(config: dict, where: str) -> list[str]:
    """Problems with a profile's `serving:` mapping (empty when it is valid)."""
    problems = []
    for part, body in config.items():
        if part not in SCHEMA:
            problems.append(f"{where}: unknown part {part!r}; parts: {', '.join(SCHEMA)}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}.{part}: expected a mapping")
            continue
        for key, value in body.items():
            expected = SCHEMA[part].get(key)
            if expected is None:
                problems.append(f"{where}.{part}: unknown key {key!r}; keys: {', '.join(SCHEMA[part])}")
            elif not isinstance(value, expected) or isinstance(value, bool):
                problems.append(f"{where}.{part}.{key}: invalid value {value!r}")
    return problems


def run_serving(model_dir: str, config: dict) -> dict:
    """{"rpc": {status, reason, runs}, "upload": {status, reason, result}} for the parts the profile names.
    status: ok, not_run (this export or checkout cannot run it; reason says why) or failed (reason)."""
    section = {}
    if "rpc" in config:
        section["rpc"] = _run_rpc(model_dir, config["rpc"])
    if "upload" in config:
        section["upload"] = _run_upload(model_dir, config["upload"])
    return section


def not_run(config: dict, reason: str) -> dict:
    """The section when serving was not measured at all."""
    return {part: {"status": "not_run", "reason": reason} for part in config}


def _run_rpc(model_dir: str, cfg: dict) -> dict:
    try:
        from serving_bench import BenchError, run_rpc_bench
    except ImportError as e:
        return {"status": "not_run", "reason": f"benchmarks/serving_bench.py is not available ({e})", "runs": []}
    if not os.path.isdir(os.path.join(model_dir, "serving_server")):
        return {"status": "not_run", "reason": f"{model_dir} has no serving_server/ (export with tools/to_static.py "
                                                "--serving)", "runs": []}
    try:
        runs = run_rpc_bench(model_dir, cfg.get("transports", ["grpc", "http"]), cfg.get("concurrency", [1]),
                             cfg.get("batch", [1]), cfg.get("duration_s", 5), server_flags=shlex.split(
                                 cfg.get("server_flags", "")), log=lambda msg: print(f"[rpc] {msg}", file=sys.stderr))
    except (BenchError, OSError, subprocess.SubprocessError, ValueError) as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "runs": []}
    return {"status": "ok", "reason": "", "runs": runs}


def _run_upload(model_dir: str, cfg: dict) -> dict:
    if not os.path.isfile(UPLOAD_BENCH):
        return {"status": "not_run", "reason": "benchmarks/upload_bench.py is not available", "result": None}
    with tempfile.TemporaryDirectory(prefix="ctrkit-upload-bench-") as work_dir:
        cmd = [sys.executable, UPLOAD_BENCH, "--model", model_dir, "--work_dir", work_dir,
               "--requests", str(cfg.get("requests", 100)), "--lines", str(cfg.get("lines", 100_000)),
               "--repeat", str(cfg.get("repeat", 3)), "--server_args", cfg.get("server_args", "")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=UPLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"upload_bench.py ran longer than {UPLOAD_TIMEOUT_S} s",
                    "result": None}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " / ".join(proc.stderr.strip().splitlines()[-5:])
        return {"status": "failed", "reason": f"upload_bench.py exited with {proc.returncode}: {tail}",
                "result": None}
    result = json.loads(lines[-1])
    print(f"[upload] 80-line round trip p50 {result['latency']['p50_ms']} ms; " + ", ".join(
        f"{case} {t['best_lines_per_s']:,} lines/s" for case, t in result["throughput"].items()), file=sys.stderr)
    return {"status": "ok", "reason": "", "result": result}
