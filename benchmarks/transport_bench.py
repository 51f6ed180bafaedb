"""Serving at the machine's limit (issue 14's transport targets), every figure a ratio measured in one run.

    python benchmarks/transport_bench.py --model output/deepfm/inference [--duration 10] [--repeats 3]
        [--concurrency 8] [--batch 1] [--protocols rpc,oip] [--backends paddle,onnxruntime] [--out transport.json]
        [--rpc_flags "..."] [--oip_flags "..."]

Servers, all started once and kept up for the whole run (so every repeat measures them under the same conditions):
  echo           benchmarks/echo_server.py: bare grpcio (thread pool, the issue's reference; and grpc.aio, what
                 both front-ends run on) and aiohttp answering the request bytes
  rpc constant   python -m serving.rpc --backend constant  (the full front-end + runtime, a model that returns 0.5)
  rpc deepfm-paddle       python -m serving.rpc --backend paddle       (and deepfm-onnxruntime: --backend onnxruntime)
  oip constant   python -m serving.oip --backend constant
  oip deepfm-paddle       python -m serving.oip --backend paddle       (and deepfm-onnxruntime)
The client is the same for all (benchmarks/load_client.py, its own process, --concurrency threads with one
connection each, a pre-built batch-1 request of real rows): gRPC and HTTP+protobuf for serving.rpc, gRPC and
HTTP (binary tensors) for serving.oip, gRPC and HTTP for the echo server. Each repeat runs every (server,
transport) for --duration seconds in turn, so slow drifts of the machine's load hit all of them alike; the table
gives the median of the repeats, the load average next to each figure, and the server's CPU per request.

Ratios (the targets): DeepFM QPS / constant QPS of the same front-end and transport, per backend (>= 0.80, with
DeepFM's p99 <= 5 ms), and the constant model's QPS / the echo server's over the same transport (>= 0.75 for gRPC).
Also the serving worker's RSS after the run (<= 450 MB). Exit status 0 when every run had 0 errors.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import REPO, BenchError, Server, client_run, load_average  # noqa: E402

TRANSPORTS = {"rpc": ("rpc_grpc", "rpc_http_proto"), "oip": ("oip_grpc", "oip_http")}
ECHO_OF = {"rpc_grpc": "echo_grpc", "oip_grpc": "echo_grpc", "rpc_http_proto": "echo_http", "oip_http": "echo_http"}
MODEL_BACKENDS = ("paddle", "onnxruntime")
TARGETS = {"model_vs_ceiling": 0.80, "p99_ms": 5.0, "ceiling_vs_echo_grpc": 0.75, "worker_rss_mb": 450}


def measure(server: Server, target: str, model: str, args) -> dict:
    load_before = load_average()
    cpu_before = server.cpu_seconds()
    r = client_run(target, server.address(target), model, args.concurrency, args.duration, args.batch, args.warmup)
    cpu = server.cpu_seconds() - cpu_before
    r.update(load_before=load_before, load_after=load_average(),
             # includes the client's warm-up requests: a slight over-estimate
             server_cpu_ms_per_request=round(cpu * 1000 / max(r["requests"] + args.warmup * args.concurrency, 1),
                                             3))
    return r


def summarise(runs: list[dict]) -> dict:
    """Median over the repeats of one (server, transport)."""
    med = lambda key: round(statistics.median(r[key] for r in runs), 3)  # noqa: E731
    return {"qps": med("qps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"), "errors": sum(r["errors"] for r in runs),
            "server_cpu_ms_per_request": med("server_cpu_ms_per_request"),
            "client_cpu_ms_per_request": round(statistics.median(r["client_cpu_s"] * 1000 / max(r["requests"], 1)
                                                                 for r in runs), 3),
            "load_1m": [r["load_before"][0] for r in runs], "repeats": len(runs),
            "qps_runs": [r["qps"] for r in runs]}


def paired_ratio(a: dict, b: dict) -> tuple[float | None, list[float]]:
    """Median over the repeats of a's QPS / b's QPS in the same repeat, and the (min, max) of those ratios."""
    pairs = [x / y for x, y in zip(a["qps_runs"], b["qps_runs"]) if y]
    if not pairs:
        return None, []
    return round(statistics.median(pairs), 3), [round(min(pairs), 3), round(max(pairs), 3)]


def cpu_ratio(faster: dict, slower: dict) -> float | None:
    """faster's server CPU per request / slower's: the QPS ratio a saturated server would show, steadier than QPS
    on a busy machine."""
    spent = slower["server_cpu_ms_per_request"]
    return round(faster["server_cpu_ms_per_request"] / spent, 3) if spent else None


def ratios(summary: dict[str, dict], protocols: list[str], backends: list[str]) -> list[dict]:
    out = []
    for proto in protocols:
        for transport in TRANSPORTS[proto]:
            ceiling, echo = summary.get(f"{proto} constant {transport}"), summary.get(f"echo {ECHO_OF[transport]}")
            for backend in backends:
                out.append(ratio_row(proto, transport, backend, summary.get(f"{proto} deepfm-{backend} {transport}"),
                                     ceiling, echo, summary))
    return out


def ratio_row(proto: str, transport: str, backend: str, model: dict | None, ceiling: dict | None,
              echo: dict | None, summary: dict[str, dict]) -> dict:
    row = {"front_end": f"serving.{proto}", "transport": transport, "backend": backend}
    if model and ceiling:
        # paired per repeat (the two ran seconds apart), then the median: the machine's speed drifts
        # over minutes, which a ratio of two medians taken at different times would carry
        row["model_vs_ceiling"], row["model_vs_ceiling_range"] = paired_ratio(model, ceiling)
        row["model_p99_ms"] = model["p99_ms"]
        # the same ratio from the server's CPU per request: steadier than QPS on a busy machine
        row["model_vs_ceiling_cpu"] = cpu_ratio(ceiling, model)
        row["meets_model_target"] = bool(row["model_vs_ceiling"] and
                                         row["model_vs_ceiling"] >= TARGETS["model_vs_ceiling"] and
                                         model["p99_ms"] <= TARGETS["p99_ms"])
    if echo:
        row["echo_p99_ms"] = echo["p99_ms"]  # the tail the transport and client alone have
    if ceiling and echo:
        row["ceiling_vs_echo"], row["ceiling_vs_echo_range"] = paired_ratio(ceiling, echo)
        row["ceiling_vs_echo_cpu"] = cpu_ratio(echo, ceiling)
        aio = summary.get("echo echo_grpc_aio") if transport.endswith("grpc") else None
        if aio:
            row["ceiling_vs_echo_aio"] = paired_ratio(ceiling, aio)[0]
        if transport.endswith("grpc"):
            row["meets_ceiling_target"] = bool(row["ceiling_vs_echo"] and
                                               row["ceiling_vs_echo"] >= TARGETS["ceiling_vs_echo_grpc"])
    return row


def markdown(summary: dict[str, dict], ratio_rows: list[dict], rss: dict[str, float], args) -> str:
    lines = [f"Batch {args.batch}, concurrency {args.concurrency}, {args.duration:g} s per run, median of "
             f"{args.repeats} interleaved repeats; client: benchmarks/load_client.py (its own process).", "",
             "| server | transport | QPS | p50 ms | p99 ms | errors | server CPU ms/req | client CPU ms/req | "
             "load (1 min) per repeat |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, s in summary.items():
        server, transport = name.rsplit(" ", 1)
        lines.append(f"| {server} | {transport} | {s['qps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                     f"{s['errors']} | {s['server_cpu_ms_per_request']:.2f} | {s['client_cpu_ms_per_request']:.2f} | "
                     f"{', '.join(f'{v:g}' for v in s['load_1m'])} |")
    lines += ["", "| front-end | transport | DeepFM backend | DeepFM / constant QPS, median of repeats (range) "
              "(target >= 0.80) | DeepFM p99 ms (target <= 5; echo's) | constant / echo QPS (target >= 0.75 for "
              "gRPC) | constant / grpc.aio echo QPS | DeepFM / constant and constant / echo from server CPU per request |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in ratio_rows:
        mark = lambda ok: "" if ok is None else (" ✓" if ok else " ✗")  # noqa: E731
        spread = lambda key: f" ({'-'.join(map(str, r[key]))})" if r.get(key) else ""  # noqa: E731
        lines.append(f"| {r['front_end']} | {r['transport']} | {r['backend']} | {r.get('model_vs_ceiling', 'n/a')}"
                     f"{spread('model_vs_ceiling_range')}{mark(r.get('meets_model_target'))} | "
                     f"{r.get('model_p99_ms', 'n/a')} ({r.get('echo_p99_ms', 'n/a')}) | "
                     f"{r.get('ceiling_vs_echo', 'n/a')}{spread('ceiling_vs_echo_range')}"
                     f"{mark(r.get('meets_ceiling_target'))} | "
                     f"{r.get('ceiling_vs_echo_aio', 'n/a')} | {r.get('model_vs_ceiling_cpu', 'n/a')} / "
                     f"{r.get('ceiling_vs_echo_cpu', 'n/a')} |")
    if rss:
        lines += ["", "Worker RSS after the run (target <= 450 MB): " +
                  ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory (with serving_server/ for serving.rpc)")
    p.add_argument("--protocols", default="rpc,oip", help="front-ends to measure: rpc, oip (comma-separated)")
    p.add_argument("--backends", default="paddle,onnxruntime",
                   help="backends serving DeepFM: paddle, onnxruntime (comma-separated; the ceiling is the constant)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (the median is reported)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50, help="uncounted requests per client thread")
    p.add_argument("--no_echo", action="store_true", help="skip the bare echo server")
    p.add_argument("--rpc_flags", default="", help="extra flags for python -m serving.rpc (both backends), quoted")
    p.add_argument("--oip_flags", default="", help="extra flags for python -m serving.oip (both backends), quoted")
    p.add_argument("--log_dir", default=os.path.join(REPO, "output", "transport_bench"))
    p.add_argument("--out", help="write everything as JSON here")
    args = p.parse_args(argv)
    protocols = [x for x in args.protocols.split(",") if x]
    if set(protocols) - set(TRANSPORTS):
        p.error(f"--protocols: choose from {sorted(TRANSPORTS)}")
    backends = [x for x in args.backends.split(",") if x]
    if not backends or set(backends) - set(MODEL_BACKENDS):
        p.error(f"--backends: choose from {', '.join(MODEL_BACKENDS)}")
    os.makedirs(args.log_dir, exist_ok=True)
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S"), load_average()
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict]] = {}
    rss: dict[str, float] = {}
    try:
        if not args.no_echo:
            servers["echo"] = Server("echo", log_path=os.path.join(args.log_dir, "echo.log"))
        for proto in protocols:
            flags = shlex.split(args.rpc_flags if proto == "rpc" else args.oip_flags)
            for backend, label in [("constant", "constant")] + [(b, f"deepfm-{b}") for b in backends]:
                servers[f"{proto} {label}"] = Server(proto, args.model, backend, flags,
                                                     os.path.join(args.log_dir, f"{proto}-{label}.log"))
        plan = [(name, t) for name in servers if name != "echo" for t in TRANSPORTS[name.split()[0]]]
        if "echo" in servers:
            wanted = {ECHO_OF[t] for proto in protocols for t in TRANSPORTS[proto]}
            wanted |= {"echo_grpc_aio"} if "echo_grpc" in wanted else set()
            plan = [("echo", t) for t in ("echo_grpc", "echo_grpc_aio", "echo_http") if t in wanted] + plan
        for repeat in range(args.repeats):
            for name, transport in plan:
                r = measure(servers[name], transport, args.model, args)
                runs.setdefault(f"{name} {transport}", []).append(r)
                print(f"[{repeat + 1}/{args.repeats}] {name:>22} {transport:>15}: {r['qps']:>8,.0f} QPS  p50 "
                      f"{r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}  server CPU "
                      f"{r['server_cpu_ms_per_request']:.2f} ms/req  load {r['load_before'][0]}", file=sys.stderr)
        rss = {name: servers[name].rss_mb() for name in servers if name != "echo"}
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for server in servers.values():
            server.stop()
    summary = {name: summarise(rs) for name, rs in runs.items()}
    ratio_rows = ratios(summary, protocols, backends)
    print(markdown(summary, ratio_rows, rss, args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/transport_bench.py " + " ".join(map(shlex.quote, argv or
                       sys.argv[1:])), "started": started, "cpu_count": os.cpu_count(), "load_start": load_start,
                       "load_end": load_average(), "targets": TARGETS, "summary": summary, "ratios": ratio_rows,
                       "worker_rss_mb": rss, "runs": runs}, f, indent=1)
    return 0 if all(s["errors"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
