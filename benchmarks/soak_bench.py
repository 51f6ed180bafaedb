"""Memory of a serving worker, and a soak: a paced load for a bounded time on loopback, then errors and RSS growth.

    python benchmarks/soak_bench.py --model output/deepfm/inference [--server rpc|oip] [--transport grpc|http]
        [--soak_seconds 600] [--qps 1000] [--concurrency 8] [--backend paddle] [--server_flags "..."] [--out soak.json]

Starts one server (`serving.rpc` or `serving.oip`), records the worker's RSS once it is ready, sends a warm-up
(`--warmup_seconds`, default 10% of the soak, at least 10 s), records the RSS again (the baseline: allocators and
caches have grown to their working size), then paces `--qps` requests/s from `--concurrency` threads
(benchmarks/load_client.py, its own process) for `--soak_seconds`, sampling the worker's RSS every
`--sample_s`. Reports errors, achieved QPS, p50/p99, RSS at start / after warm-up / peak / end, and the growth over
the soak (end vs the warm-up baseline). Targets (issue 14): RSS <= 450 MB, 0 errors, growth < 5% over 10 minutes
at 1,000 QPS. Exit status 0 when the soak had no errors and met both memory targets.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import REPO, BenchError, Server, client_run, load_average  # noqa: E402

TARGET = {("rpc", "grpc"): "rpc_grpc", ("rpc", "http"): "rpc_http_proto", ("oip", "grpc"): "oip_grpc",
          ("oip", "http"): "oip_http"}
MAX_RSS_MB, MAX_GROWTH = 450.0, 0.05


def paced_load(server: Server, target: str, model: str, seconds: float, qps: float, concurrency: int) -> dict:
    return client_run(target, server.address(target), model, concurrency, seconds, warmup=0, qps=qps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory")
    p.add_argument("--server", choices=("rpc", "oip"), default="rpc")
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--backend", choices=("paddle", "onnxruntime", "constant"), default="paddle")
    p.add_argument("--soak_seconds", type=float, default=600.0)
    p.add_argument("--warmup_seconds", type=float, default=None, help="default: 10%% of the soak, at least 10 s")
    p.add_argument("--qps", type=float, default=1000.0, help="paced requests/s in total (bounded, loopback only)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--sample_s", type=float, default=5.0, help="RSS sampling interval")
    p.add_argument("--server_flags", default="", help="extra server flags, quoted")
    p.add_argument("--log_dir", default=os.path.join(REPO, "output", "soak_bench"))
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.qps <= 0 or args.soak_seconds <= 0:
        p.error("--qps and --soak_seconds must be > 0 (the soak is paced and bounded)")
    warmup = args.warmup_seconds if args.warmup_seconds is not None else max(10.0, args.soak_seconds / 10)
    os.makedirs(args.log_dir, exist_ok=True)
    target = TARGET[(args.server, args.transport)]
    load_start = load_average()
    try:
        server = Server(args.server, args.model, args.backend, shlex.split(args.server_flags),
                        os.path.join(args.log_dir, f"{args.server}-{args.backend}.log"))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samples: list[tuple[float, float]] = []
    try:
        rss_ready = server.rss_mb()
        warm = paced_load(server, target, args.model, warmup, args.qps, args.concurrency)
        rss_base = server.rss_mb()
        stop = threading.Event()
        t0 = time.monotonic()

        def sample() -> None:
            while not stop.wait(args.sample_s):
                samples.append((round(time.monotonic() - t0, 1), server.rss_mb()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        soak = paced_load(server, target, args.model, args.soak_seconds, args.qps, args.concurrency)
        stop.set()
        sampler.join(args.sample_s + 5)
        rss_end = server.rss_mb()
        alive = server.proc.poll() is None
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        exit_status = server.stop()
    peak = max([rss_end, rss_base] + [r for _, r in samples])
    growth = (rss_end - rss_base) / rss_base if rss_base else None
    result = {"server": args.server, "transport": args.transport, "backend": args.backend, "target_qps": args.qps,
              "soak_seconds": args.soak_seconds, "warmup_seconds": warmup, "concurrency": args.concurrency,
              "warmup": {k: warm[k] for k in ("requests", "errors", "qps")},
              "soak": {k: soak[k] for k in ("requests", "errors", "error_samples", "qps", "p50_ms", "p90_ms", "p99_ms",
                                            "max_ms")},
              "rss_mb": {"ready": rss_ready, "after_warmup": rss_base, "peak": peak, "end": rss_end},
              "rss_growth": round(growth, 4) if growth is not None else None, "rss_samples": samples,
              "server_alive_at_end": alive, "server_exit_status": exit_status, "load_start": load_start,
              "load_end": load_average(), "cpu_count": os.cpu_count(),
              "targets": {"max_rss_mb": MAX_RSS_MB, "max_growth": MAX_GROWTH, "errors": 0}}
    ok = soak["errors"] == 0 and warm["errors"] == 0 and alive and peak <= MAX_RSS_MB and \
        growth is not None and growth < MAX_GROWTH
    result["meets_targets"] = ok
    print(f"| server | backend | QPS (target {args.qps:g}) | p50 / p99 ms | errors | RSS ready / after warm-up / peak / "
          f"end MB | growth | load (1 min) start / end |\n|---|---|---:|---|---:|---|---:|---|\n"
          f"| serving.{args.server} {args.transport} | {args.backend} | {soak['qps']:,.0f} | {soak['p50_ms']} / "
          f"{soak['p99_ms']} | {soak['errors']} | {rss_ready:.0f} / {rss_base:.0f} / {peak:.0f} / {rss_end:.0f} | "
          f"{100 * growth:.2f}% | {load_start[0]} / {result['load_end'][0]} |")
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
