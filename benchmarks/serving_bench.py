"""RPC serving benchmark: QPS, samples/s and latency of `python -m serving.rpc` under `tools/rec_client.py` load.

    python benchmarks/serving_bench.py --model output/deepfm/inference [--transports grpc,http_proto,http]
        [--concurrency 1,4,16] [--batch 1,512] [--duration 10] [--data FILE] [--out results.json]
        [--server_flags "--predictors 2"]

One server process (flags as given) and, for every transport x batch x concurrency, one rec_client process
(`--duration` seconds after a warm-up, each concurrent client with its own connection). Prints a Markdown table
(plus the load average and the server's CPU seconds per request) and with --out writes the runs as JSON.
`run_rpc_bench()` returns the same run records for the benchmark matrix (benchmarks/run.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

import psutil

from servers import ServerProcess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REC_CLIENT = os.path.join(REPO, "tools", "rec_client.py")
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "criteo", "slot_sample.txt"))
READY = re.compile(r"serving\.rpc ready: version \d+ grpc [\d.]+:(\d+) http [\d.]+:(\d+)")
MODES = {"grpc": "rpc", "http": "http", "http_proto": "http_proto"}  # transport -> rec_client --client_mode


class BenchError(RuntimeError):
    pass


def _serving_dirs(model: str) -> tuple[str, str]:
    """(serving_server dir, serving_client conf) of an export directory."""
    server = os.path.join(model, "serving_server")
    client = os.path.join(model, "serving_client", "serving_client_conf.prototxt")
    if not (os.path.isdir(server) and os.path.isfile(client)):
        raise BenchError(f"{model} has no serving_server/ and serving_client/: export with tools/to_static.py "
                         "--serving")
    return server, client


class _Server(ServerProcess):
    def __init__(self, server_dir: str, flags: list[str], timeout_s: float = 300):
        cmd = [sys.executable, "-m", "serving.rpc", "--model", server_dir, "--port", "0", "--log_level", "WARNING",
               *flags]
        super().__init__(cmd, READY, cwd=REPO, timeout_s=timeout_s)
        if not self.match:
            self.stop()
            raise BenchError(f"server did not start: {' '.join(cmd)}")
        self.grpc_port, self.http_port = int(self.match.group(1)), int(self.match.group(2))

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process and its workers (--workers) so far."""
        root = psutil.Process(self.proc.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def _client_run(client_conf: str, port: int, data: str, transport: str, batch: int, concurrency: int,
                duration_s: float, warmup: int) -> dict:
    cmd = [sys.executable, REC_CLIENT, "--client_config", client_conf, "--connect", f"127.0.0.1:{port}",
           "--data_dir", data, "--client_mode", MODES[transport], "--batchsize", str(batch), "--concurrency",
           str(concurrency), "--duration", str(duration_s), "--warmup", str(warmup), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=duration_s + 300)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"rec_client printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def run_rpc_bench(model: str, transports: list[str], concurrency: list[int], batches: list[int],
                  duration_s: float, data: str = DEFAULT_DATA, server_flags: list[str] | None = None,
                  warmup: int = 20, log=lambda msg: print(msg, file=sys.stderr)) -> list[dict]:
    """Run every transport x batch x concurrency against one server; returns one record per run with service,
    transport, concurrency, batch, qps, samples_per_s, p50/p90/p99_ms, errors, server_cpu_ms_per_request, load."""
    unknown = set(transports) - set(MODES)
    if unknown:
        raise BenchError(f"unknown transports {sorted(unknown)}; choose from {sorted(MODES)}")
    if not os.path.exists(data):
        raise BenchError(f"benchmark data {data} not found; pass --data FILE (slot or raw Criteo)")
    server_dir, client_conf = _serving_dirs(model)
    server = _Server(server_dir, server_flags or [])
    runs = []
    try:
        for transport in transports:
            port = server.grpc_port if transport == "grpc" else server.http_port
            for batch in batches:
                for conc in concurrency:
                    cpu_before = server.cpu_seconds()
                    summary = _client_run(client_conf, port, data, transport, batch, conc, duration_s, warmup)
                    cpu = server.cpu_seconds() - cpu_before
                    run = {"service": "rpc", "transport": transport, "concurrency": conc, "batch": batch,
                           **{k: summary[k] for k in ("requests", "errors", "qps", "samples_per_s", "p50_ms",
                                                      "p90_ms", "p99_ms", "mean_ms")},
                           # includes the warm-up requests: an upper bound
                           "server_cpu_ms_per_request": round(cpu * 1000 / max(summary["requests"], 1), 3),
                           "load_average": [round(v, 2) for v in os.getloadavg()]}
                    log(f"{transport:>10} batch {batch:>4} concurrency {conc:>3}: {run['qps']:>8.1f} QPS "
                        f"{run['samples_per_s']:>10.0f} samples/s p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f}"
                        f" ms errors {run['errors']} (load {run['load_average'][0]})")
                    runs.append(run)
    finally:
        server.stop()
    return runs


def markdown(runs: list[dict]) -> str:
    lines = ["| transport | batch | concurrency | QPS | samples/s | p50 ms | p90 ms | p99 ms | errors | server CPU "
             "ms/req | load (1 min) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r['transport']} | {r['batch']} | {r['concurrency']} | {r['qps']:,.1f} | "
                     f"{r['samples_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['errors']} | {r['server_cpu_ms_per_request']:.2f} | {r['load_average'][0]} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory with serving_server/ and serving_client/")
    p.add_argument("--transports", default="grpc,http_proto,http")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
    p.add_argument("--batch", type=_ints, default=[1, 512])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--warmup", type=int, default=20, help="uncounted requests per client connection")
    p.add_argument("--data", default=DEFAULT_DATA, help="slot or raw Criteo file the requests are made from")
    p.add_argument("--server_flags", default="", help="extra flags for python -m serving.rpc, quoted")
    p.add_argument("--out", help="write the runs (and the command) as JSON here")
    args = p.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        runs = run_rpc_bench(args.model, args.transports.split(","), args.concurrency, args.batch, args.duration,
                             args.data, shlex.split(args.server_flags), args.warmup)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(runs))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/serving_bench.py " + " ".join(map(shlex.quote, argv or
                       sys.argv[1:])), "started": started, "cpu_count": os.cpu_count(), "runs": runs}, f, indent=1)
    return 0 if all(r["errors"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
