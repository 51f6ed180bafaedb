"""Inference benchmark matrix over an exported model; every cell in its own process, every output verified.

    python benchmarks/run.py --model <export dir> [--matrix benchmarks/matrix.yaml]
                             [--profile quick|full|tutorial|engines] --out <dir> [--no-serving]

Writes <out>/results.json, <out>/report.md and PNG charts. Exit status: 0 when every cell is ok or skipped and
the serving section (when the profile has one) ran without errors or was not run (with the reason); 1 when any
cell is wrong or failed, a serving part failed or a serving run had errors (the report is written either way);
2 for bad arguments, a bad matrix file or an unreadable model.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from matrix_env import capture_environment
from matrix_serving import not_run, run_serving
from matrix_spec import Cell, MatrixError, Profile, load_profile
from report import RESULT_FIELDS, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "matrix_worker.py")
STDERR_TAIL_LINES = 15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="exported model directory (tools/to_static.py output)")
    parser.add_argument("--matrix", default=os.path.join(HERE, "matrix.yaml"))
    parser.add_argument("--profile", default="quick", help="profile in the matrix file (quick, full, tutorial, engines)")
    parser.add_argument("--out", required=True, help="directory for report.md, results.json and the charts")
    parser.add_argument("--no-serving", action="store_true", help="leave out the serving section")
    args = parser.parse_args(argv)

    from ctrkit.inference import ExportedModelError, load_exported_model
    try:
        profile = load_profile(args.matrix, args.profile)
        exported = load_exported_model(args.model)
    except (MatrixError, ExportedModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_dir = exported.directory
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    environment = capture_environment()
    print(f"{len(profile.cells)} cells, profile {profile.name}, model {model_dir}", file=sys.stderr)
    cells = [run_cell_process(model_dir, cell, profile, i, len(profile.cells))
             for i, cell in enumerate(profile.cells, 1)]
    serving = None
    if profile.serving is not None:
        serving = (not_run(profile.serving, "--no-serving was given") if args.no_serving
                   else run_serving(model_dir, profile.serving))
    environment["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results = {
        "schema_version": 1,
        "command": command,
        "profile": profile.name,
        "profile_description": profile.description,
        "matrix": os.path.abspath(args.matrix),
        "model": {"path": model_dir, "name": exported.name,
                  "hyper_parameters": exported.meta["hyper_parameters"]},
        "measure": profile.measure,
        "tolerance": profile.tolerance,
        "environment": environment,
        "cells": cells,
        "serving": serving,
    }
    for path in write_report(args.out, results):
        print(f"wrote {path}", file=sys.stderr)
    bad = [f"{c['config']} b={c['batch']}: {c['status']}" for c in cells if c["status"] in ("wrong", "error")]
    bad += serving_problems(serving or {})
    for problem in bad:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if bad else 0


def serving_problems(serving: dict) -> list[str]:
    """Failed serving parts and RPC runs with errors."""
    problems = [f"serving {part}: {body['reason']}" for part, body in serving.items() if body["status"] == "failed"]
    return problems + [f"serving rpc {r['transport']} c={r['concurrency']} b={r['batch']}: {r['errors']} errors"
                       for r in serving.get("rpc", {}).get("runs", []) if r["errors"]]


def run_cell_process(model_dir: str, cell: Cell, profile: Profile, index: int, total: int) -> dict:
    """Run one cell in a fresh Python process; a crash or timeout becomes an "error" cell, never a skip."""
    timeout = profile.measure["cell_timeout_s"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ctrkit-bench-") as tmp:
        job_path, result_path, err_path = (os.path.join(tmp, n) for n in ("job.json", "result.json", "stderr"))
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump({"model": model_dir, "cell": cell.to_dict(), "measure": profile.measure,
                       "tolerance": profile.tolerance_for(cell)}, f)
        with open(err_path, "w+", encoding="utf-8") as err:
            try:
                proc = subprocess.run([sys.executable, WORKER, job_path, result_path], stdout=err, stderr=err,
                                      env={**os.environ, **cell.env_dict()}, timeout=timeout, check=False)
                outcome = _read_result(result_path, proc.returncode, err)
            except subprocess.TimeoutExpired:
                outcome = {"status": "error", "reason": f"timed out after {timeout:g} s (measure.cell_timeout_s)"}
    result = {**cell.to_dict(), "config": cell.config_name(), **dict.fromkeys(RESULT_FIELDS), **outcome,
              "wall_s": round(time.perf_counter() - start, 2)}
    _print_progress(result, index, total)
    return result


def _read_result(result_path: str, returncode: int, err) -> dict:
    if returncode == 0 and os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as f:
            return json.load(f)
    err.seek(0)
    tail = " / ".join(line.strip() for line in err.read().splitlines()[-STDERR_TAIL_LINES:] if line.strip())
    return {"status": "error", "reason": f"worker exited with status {returncode}: {tail}"}


def _print_progress(r: dict, index: int, total: int) -> None:
    head = f"[{index}/{total}] {r['config']} b={r['batch']}: {r['status']}"
    if r["samples_per_s"] is not None:
        head += f", {r['samples_per_s']:,.0f} samples/s, p50 {r['p50_ms']:.3g} ms, p99 {r['p99_ms']:.3g} ms"
    if r["reason"]:
        head += f" ({r['reason'][:200]})"
    print(head, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
