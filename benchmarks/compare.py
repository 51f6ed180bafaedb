"""Compare two benchmark reports and flag regressions:

    python benchmarks/compare.py BASE NEW [--threshold 0.10] [--metric METRIC]

BASE and NEW are results.json files (or the --out directories holding them); METRIC is samples_per_s (default),
p50_ms, p90_ms, p99_ms or cpu_ms_per_batch. Cells are matched by their configuration and batch size; serving runs
by transport, concurrency and batch. Printed ratios are NEW / BASE. A regression is: a metric worse by more than the threshold (throughput lower, latency higher), a
cell that was ok in BASE and is wrong, failed or skipped in NEW, an RPC serving run with more errors or QPS lower
by more than the threshold, or the upload endpoint's sample latency / lines per second worse by more than it.
Exit status: 0 no regression, 1 at least one regression, 2 unreadable input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from matrix_spec import Cell

HIGHER_IS_BETTER = {"samples_per_s": True, "p50_ms": False, "p90_ms": False, "p99_ms": False,
                    "cpu_ms_per_batch": False}
ENV_KEYS = ("cpu_model", "logical_cpus", "paddle", "onnxruntime", "gpus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--threshold", type=float, default=0.10,
                        help="relative change that counts as a regression (default 0.10 = 10%%)")
    parser.add_argument("--metric", choices=sorted(HIGHER_IS_BETTER), default="samples_per_s",
                        help="cell metric to compare (default samples_per_s)")
    args = parser.parse_args(argv)
    try:
        base, new = load_results(args.base), load_results(args.new)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ENV_KEYS:
        if base["environment"].get(key) != new["environment"].get(key):
            print(f"note: environments differ in {key}: {base['environment'].get(key)!r} -> "
                  f"{new['environment'].get(key)!r}")
    regressions = compare_cells(base["cells"], new["cells"], args.metric, args.threshold)
    regressions += compare_serving(base.get("serving"), new.get("serving"), args.threshold)
    print(f"\n{regressions} regression(s) beyond {args.threshold:.0%}" if regressions else
          f"\nno regression beyond {args.threshold:.0%}")
    return 1 if regressions else 0


def load_results(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if not isinstance(results, dict) or "cells" not in results or "environment" not in results:
        raise ValueError(f"{path} is not a benchmarks/run.py results.json (no 'cells' / 'environment')")
    return results


def compare_cells(base: list[dict], new: list[dict], metric: str, threshold: float) -> int:
    """Print one line per cell in either report; return the number of regressions."""
    new_by_key = {Cell.from_dict(c).key(): c for c in new}
    base_keys = {Cell.from_dict(c).key() for c in base}
    regressions = 0
    print(f"{'configuration':<48} {'batch':>6} {'base':>12} {'new':>12} {'new/base':>9}  verdict ({metric})")
    for b in base:
        n = new_by_key.get(Cell.from_dict(b).key())
        verdict, ratio = cell_verdict(b, n, metric, threshold)
        regressions += verdict.startswith("REGRESSION")
        print(f"{b['config']:<48} {b['batch']:>6} {_value(b, metric):>12} {_value(n, metric):>12} "
              f"{'' if ratio is None else f'{ratio:.3f}':>9}  {verdict}")
    for n in new:
        if Cell.from_dict(n).key() not in base_keys:
            print(f"{n['config']:<48} {n['batch']:>6} {'':>12} {_value(n, metric):>12} {'':>9}  only in new")
    return regressions


def cell_verdict(base: dict, new: dict | None, metric: str, threshold: float) -> tuple[str, float | None]:
    if new is None:
        return "only in base", None
    if base["status"] != "ok":
        return ("fixed" if new["status"] == "ok" else f"{base['status']} in both"), None
    if new["status"] != "ok":
        return f"REGRESSION: now {new['status']} ({new['reason'][:80]})", None
    ratio = new[metric] / base[metric] if base[metric] else None
    return _verdict(ratio, HIGHER_IS_BETTER[metric], threshold), ratio


def compare_serving(base: dict | None, new: dict | None, threshold: float) -> int:
    """RPC runs (QPS, errors) and the upload endpoint (sample p50, lines/s per case); returns the regressions."""
    rows = []  # (name, base value, new value, higher is better, base errors, new errors)
    new_runs = {_rpc_key(r): r for r in ((new or {}).get("rpc") or {}).get("runs", [])}
    for b in ((base or {}).get("rpc") or {}).get("runs", []):
        n = new_runs.get(_rpc_key(b))
        rows.append((f"rpc QPS {_rpc_key(b)}", b["qps"], n and n["qps"], True, b["errors"], n and n["errors"]))
    base_upload, new_upload = (((r or {}).get("upload") or {}).get("result") for r in (base, new))
    if base_upload:
        rows.append(("upload sample p50 ms", base_upload["latency"]["p50_ms"],
                     new_upload and new_upload["latency"]["p50_ms"], False, 0, 0))
        for case, t in base_upload["throughput"].items():
            n = new_upload and new_upload["throughput"].get(case)
            rows.append((f"upload lines/s {case}", t["best_lines_per_s"], n and n["best_lines_per_s"], True, 0, 0))
    if not rows:
        return 0
    regressions = 0
    print(f"\n{'serving':<48} {'base':>12} {'new':>12} {'new/base':>9}  verdict")
    for name, b, n, higher_is_better, b_errors, n_errors in rows:
        ratio = n / b if n is not None and b else None
        if n is None:
            verdict = "only in base"
        elif n_errors > b_errors:
            verdict = f"REGRESSION: errors {b_errors} -> {n_errors}"
        else:
            verdict = _verdict(ratio, higher_is_better, threshold)
        regressions += verdict.startswith("REGRESSION")
        print(f"{name:<48} {b:>12,.1f} {'' if n is None else f'{n:,.1f}':>12} "
              f"{'' if ratio is None else f'{ratio:.3f}':>9}  {verdict}")
    return regressions


def _verdict(ratio: float | None, higher_is_better: bool, threshold: float) -> str:
    if ratio is None:
        return "no base value"
    worse = ratio < 1 - threshold if higher_is_better else ratio > 1 + threshold
    better = ratio > 1 + threshold if higher_is_better else ratio < 1 - threshold
    return "REGRESSION" if worse else "better" if better else "same"


def _rpc_key(run: dict) -> str:
    return f"{run['transport']} c={run['concurrency']} b={run['batch']}"


def _value(cell: dict | None, metric: str) -> str:
    if cell is None:
        return ""
    if cell["status"] != "ok":
        return cell["status"]
    return f"{cell[metric]:,.1f}"


if __name__ == "__main__":
    sys.exit(main())
