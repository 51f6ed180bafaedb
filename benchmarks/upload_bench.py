"""Upload service benchmark: round-trip latency of the 80-line sample and lines/s of a 100k-line upload, each
against the same work done in-process (issue 14's upload targets, ratios measured in one run).

    .venv/bin/python benchmarks/upload_bench.py [--model DIR] [--backend paddle|onnxruntime] [--requests 300]
        [--lines 100000] [--repeat 3] [--server_args "--workers 1 --cpu_threads 2"] [--out upload.json]

Starts `python -m serving.upload` (waitress) on a free loopback port with --server_args, then measures from a
client on the same machine (keep-alive connections, like a real client):
  latency     POST /upload of PaddleRec's 80-line slot sample (full=false, top 10), --requests times per client
              after 20 warm-up requests, from two clients: `requests` (a Session, what the tutorial's users run:
              it builds the multipart body per request) and a lean one (http.client on one connection, the
              multipart body built once); interleaved in blocks of 25 with one in-process parse + predict of the
              same 80 lines (ctrkit.batch_predict on a ctrkit.runtime, same backend, in this process), so a drift
              of the machine's load hits all three alike: p50 / p90 / p99 round trip, the server's own total_ms
              (debug=true) p50, and the server process's CPU time per request (less sensitive to a busy machine)
              -> round trip p50 minus in-process p50 (target <= 2 ms) for each client
  throughput  POST /upload of --lines lines (the slot sample repeated; also the 100-line raw sample repeated
              when the model accepts raw lines), full=false and full=true, best and median of --repeat
              uploads: lines/s over the whole round trip (upload, parse, predict, answer)
  in-process  the same 100k-line file through `tools/paddle_infer.py --num_workers 0` (one process, the same
              backend, batch 2048; its own rows/s record, which includes loading the model) and through the same
              path in this process after the model is loaded and warmed up (steady state) -> upload lines/s
              (full=true: every prediction returned) over each (target >= 0.90 against both)
This process keeps freed memory like paddle_infer.py and the service do (`ctrkit.cpu_env.keep_freed_memory`),
so the in-process figures are paddle_infer.py's. Without --model, a DeepFM with the default hyper-parameters (the
tutorial's model, MLP 400-400-400) is exported with seeded random weights and its ONNX twin into --work_dir (the
arithmetic is the same as for trained weights). Client and server share the machine's cores. Prints a Markdown
table and one JSON line (with the load average before and after); docs/upload.md records results.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np
import requests

from ctrkit.inference import load_exported_model
from paddle_infer_bench import ensure_model  # the seeded default DeepFM export the other benchmarks use

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO = os.path.join(REPO_ROOT, "..", "shared", "data", "criteo")
WARMUP = 20
BLOCK = 25  # latency requests per client in turn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, server_args: list[str], log_path: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving.upload", "--model", model_dir, "--port", str(port),
                                 *server_args], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the upload server exited (status {proc.returncode}); see {log_path}")
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.terminate()
    sys.exit(f"the upload server was not ready within 300 s; see {log_path}")


def upload(session: requests.Session, url: str, content: bytes, **params) -> dict:
    response = session.post(url + "/upload", params={"user_id": "bench", **params},
                            files={"file": ("data.txt", content)}, timeout=600)
    if response.status_code != 200:
        sys.exit(f"upload failed: HTTP {response.status_code} {response.text[:300]}")
    return response.json()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def requests_client(url: str, content: bytes):
    """One upload with `requests` (a keep-alive Session): what a user of the tutorial runs."""
    session = requests.Session()

    def once() -> dict:
        return upload(session, url, content, debug="true")
    return once


def lean_client(url: str, content: bytes):
    """One upload over one kept-alive http.client connection, the multipart body built once: the client's own
    cost kept small."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="data.txt"\r\n'
            f'Content-Type: text/plain\r\n\r\n').encode() + content + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)

    def once() -> dict:
        conn.request("POST", "/upload?user_id=bench&debug=true", body, headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            sys.exit(f"upload failed: HTTP {response.status} {answer[:300]!r}")
        return json.loads(answer)
    return once


def in_process_sample(model_dir: str, backend: str, content: bytes):
    """(parse + predict the 80 lines in this process through the path the upload service uses, predict only,
    close): the runtime is loaded once, in this process."""
    from ctrkit.batch_predict import (Chunk, FormatLock, batch_predictor, model_schema, open_runtime, parse_chunk,
                                      score_stream)
    from ctrkit.runtime import RuntimeOptions

    runtime = open_runtime(model_dir, RuntimeOptions(backend=backend))
    schema = model_schema(runtime.current.exported)
    predict = batch_predictor(runtime)
    batch = parse_chunk(schema, FormatLock(schema)(Chunk("sample", 1, content, content.count(b"\n"))))

    def once() -> dict:
        rows = sum(len(s.probs) for s in score_stream(io.BytesIO(content), "sample", schema, predict, 2048,
                                                      pipeline=False))
        return {"rows": rows}
    return once, lambda: predict(batch), runtime.close


def measure_latency(clients: dict, server_pid: int, count: int) -> dict:
    """Every client (name -> once()) in turn, BLOCK calls at a time, until each made `count`; the server's CPU
    time is counted over each client's blocks."""
    for once in clients.values():
        for _ in range(WARMUP):
            once()
    times = {name: [] for name in clients}
    server_ms = {name: [] for name in clients}
    cpu = dict.fromkeys(clients, 0.0)
    while any(len(t) < count for t in times.values()):
        for name, once in clients.items():
            before = process_cpu_s(server_pid)
            for _ in range(min(BLOCK, count - len(times[name]))):
                start = time.perf_counter()
                answer = once()
                times[name].append((time.perf_counter() - start) * 1e3)
                if "debug" in answer:
                    server_ms[name].append(answer["debug"]["total_ms"])
            after = process_cpu_s(server_pid)
            cpu[name] = None if before is None or after is None or cpu[name] is None else cpu[name] + after - before
    result = {}
    for name, t in times.items():
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        result[name] = {"requests": len(t), "p50_ms": round(p50, 3), "p90_ms": round(p90, 3), "p99_ms": round(p99, 3)}
        if server_ms[name]:
            result[name]["server_total_p50_ms"] = round(statistics.median(server_ms[name]), 3)
            result[name]["server_cpu_ms_per_request"] = round(cpu[name] * 1e3 / len(t), 3) \
                if cpu[name] is not None else None
    return result


def measure_throughput(session: requests.Session, url: str, content: bytes, repeat: int, full: bool) -> dict:
    lines = content.count(b"\n")
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        answer = upload(session, url, content, full=str(full).lower(), debug="true")
        runs.append((time.perf_counter() - start, answer["debug"]))
        assert answer["count"] == lines
    best_s, best_debug = min(runs, key=lambda run: run[0])
    median_s = statistics.median(s for s, _ in runs)
    return {"lines": lines, "bytes": len(content), "full": full, "best_s": round(best_s, 3),
            "best_lines_per_s": round(lines / best_s), "median_lines_per_s": round(lines / median_s),
            "server_ms_of_best": best_debug}


def in_process_rows_per_s(model_dir: str, backend: str, content: bytes, work_dir: str, repeat: int) -> dict:
    """What paddle_infer.py does per file (ctrkit.batch_predict: chunks of 2048 lines, parsing pipelined with
    prediction, every prediction written), in this process, timed after the model is loaded and warmed up: the
    steady-state rows/s, best of `repeat`."""
    from ctrkit.batch_predict import (FormatLock, batch_predictor, iter_file_chunks, model_schema, open_runtime,
                                      score_chunks, warm_up)
    from ctrkit.predictions import PredictionWriter
    from ctrkit.runtime import RuntimeOptions

    data = os.path.join(work_dir, "upload_bench_lines.txt")
    with open(data, "wb") as f:
        f.write(content)
    runtime = open_runtime(model_dir, RuntimeOptions(backend=backend))
    try:
        model = runtime.current.exported
        schema = model_schema(model)
        predict = batch_predictor(runtime)
        warm_up(predict, model, 2048)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            rows = 0
            with PredictionWriter(os.path.join(work_dir, "upload_bench_in_process.txt")) as writer:
                for scored in score_chunks(map(FormatLock(schema), iter_file_chunks([data], 2048)), schema, predict):
                    writer.write(scored.probs)
                    rows += len(scored.probs)
            times.append(time.perf_counter() - start)
    finally:
        runtime.close()
    return {"rows": rows, "best_s": round(min(times), 3), "rows_per_s": round(rows / min(times))}


def paddle_infer_rows_per_s(model_dir: str, backend: str, content: bytes, work_dir: str) -> dict:
    """tools/paddle_infer.py on the same lines, one process (--num_workers 0), the same backend, batch 2048."""
    data = os.path.join(work_dir, "upload_bench_lines.txt")
    with open(data, "wb") as f:
        f.write(content)
    log_path = os.path.join(work_dir, "upload_bench_paddle_infer.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), "--model_dir", model_dir,
               "--data_dir", data, "--batchsize", "2048", "--num_workers", "0", "--backend", backend,
               "--output", os.path.join(work_dir, "upload_bench_predictions.txt"), "--save_log_path", log_path]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "command": command}
    with open(log_path, encoding="utf-8") as f:
        record = json.loads(f.read().splitlines()[-1])
    return {"samples": record["samples"], "samples_per_s": record["samples_per_s"], "wall_s": record["wall_s"],
            "command": " ".join(command)}


def repeated(path: str, lines: int) -> bytes:
    with open(path, "rb") as f:
        sample = f.readlines()
    return b"".join((sample * (lines // len(sample) + 1))[:lines])


def main() -> None:
    from ctrkit.cpu_env import configure_cpu_env

    configure_cpu_env()  # before paddle loads (MKL's fast path on AMD CPUs), as every entry point does
    from ctrkit.cpu_env import keep_freed_memory

    keep_freed_memory()  # as paddle_infer.py and the service do
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="exported model directory (default: a seeded default DeepFM in --work_dir)")
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "output", "upload_bench"))
    parser.add_argument("--requests", type=int, default=300, help="latency requests (after 20 warm-up)")
    parser.add_argument("--lines", type=int, default=100_000, help="lines in the throughput upload")
    parser.add_argument("--repeat", type=int, default=3, help="throughput uploads per case")
    parser.add_argument("--server_args", default="", help='extra serving.upload flags, e.g. "--cpu_threads 2"')
    parser.add_argument("--backend", default="paddle", choices=("paddle", "onnxruntime"),
                        help="model backend of the server and of the in-process comparisons")
    parser.add_argument("--out", help="write the result JSON here too")
    args = parser.parse_args()

    slot_sample, raw_sample = (os.path.join(CRITEO, name) for name in ("slot_sample.txt", "raw_sample.txt"))
    for path in (slot_sample, raw_sample):
        if not os.path.isfile(path):
            sys.exit(f"{path} is missing (the shared Criteo samples sit beside the checkout)")
    os.makedirs(args.work_dir, exist_ok=True)
    model_dir = args.model or ensure_model(args.work_dir, slot_sample, onnx=True)
    server_args = ["--backend", args.backend, *shlex.split(args.server_args)]
    load_before = os.getloadavg()
    sample = open(slot_sample, "rb").read()
    in_process_once, predict_only, close_in_process = in_process_sample(model_dir, args.backend, sample)
    proc, url = start_server(model_dir, server_args, os.path.join(args.work_dir, "server.log"))
    try:
        rounds = measure_latency({"in-process": in_process_once, "requests": requests_client(url, sample),
                                  "lean": lean_client(url, sample)}, proc.pid, args.requests)
        with requests.Session() as session:
            slot = repeated(slot_sample, args.lines)
            throughput = {"slot top10": measure_throughput(session, url, slot, args.repeat, False),
                          "slot full": measure_throughput(session, url, slot, args.repeat, True)}
            if load_exported_model(model_dir).feature_spec.data_format in ("auto", "raw"):
                raw = repeated(raw_sample, args.lines)
                throughput["raw top10"] = measure_throughput(session, url, raw, args.repeat, False)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            print(f"warning: the upload server did not stop within 60 s of SIGTERM; killed (see {args.work_dir}/"
                  "server.log)", file=sys.stderr)
            proc.kill()
            proc.wait()
    predict_times = []
    for _ in range(args.requests):
        start = time.perf_counter()
        predict_only()
        predict_times.append((time.perf_counter() - start) * 1e3)
    close_in_process()
    lines = sample.count(b"\n")
    latency = {"lines": lines, **rounds["requests"], "lean": rounds["lean"]}  # top level: the requests client
    in_process = {"lines": lines, "parse_predict_p50_ms": rounds["in-process"]["p50_ms"],
                  "predict_only_p50_ms": round(statistics.median(predict_times), 3)}
    reference = paddle_infer_rows_per_s(model_dir, args.backend, slot, args.work_dir)
    steady = in_process_rows_per_s(model_dir, args.backend, slot, args.work_dir, args.repeat)
    upload_rate = throughput["slot full"]["best_lines_per_s"]
    targets = {"upload_vs_paddle_infer": round(upload_rate / reference["samples_per_s"], 3)
               if reference.get("samples_per_s") else None,
               "upload_vs_in_process": round(upload_rate / steady["rows_per_s"], 3),
               "sample_round_trip_minus_in_process_ms": round(latency["p50_ms"] - in_process["parse_predict_p50_ms"],
                                                              3),
               "sample_round_trip_minus_in_process_lean_ms": round(
                   latency["lean"]["p50_ms"] - in_process["parse_predict_p50_ms"], 3)}
    targets["meets_upload_target"] = bool(targets["upload_vs_in_process"] >= 0.9 and
                                          (targets["upload_vs_paddle_infer"] or 0) >= 0.9)
    targets["meets_sample_target"] = bool(targets["sample_round_trip_minus_in_process_ms"] <= 2.0)  # requests
    targets["meets_sample_target_lean"] = bool(targets["sample_round_trip_minus_in_process_lean_ms"] <= 2.0)
    result = {"benchmark": "upload", "model_dir": model_dir, "backend": args.backend, "server_args": server_args,
              "latency": latency, "throughput": throughput, "in_process_sample": in_process,
              "paddle_infer": reference, "in_process_file": steady, "targets": targets, "cpus": os.cpu_count(), "machine": platform.machine(),
              "python": platform.python_version(), "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    print("| case | lines | result |\n|---|---|---|")
    for client, figures in (("requests", latency), ("lean http.client", latency["lean"])):
        print(f"| 80-line sample, round trip, {client} | {lines} | p50 {figures['p50_ms']} ms, p90 "
              f"{figures['p90_ms']} ms, p99 {figures['p99_ms']} ms (server: total_ms {figures['server_total_p50_ms']}"
              f" ms, CPU {figures['server_cpu_ms_per_request']} ms per request) |")
    for name, t in throughput.items():
        d = t["server_ms_of_best"]
        print(f"| {name} upload | {t['lines']} | {t['best_lines_per_s']} lines/s best, "
              f"{t['median_lines_per_s']} median ({t['bytes'] / 2**20:.1f} MiB; server: parse {d['parse_ms']:.0f} "
              f"ms, inference {d['inference_ms']:.0f} ms, total {d['total_ms']:.0f} ms) |")
    print(f"| 80 lines in-process (parse + predict, same path) | {in_process['lines']} | p50 "
          f"{in_process['parse_predict_p50_ms']} ms (predict only {in_process['predict_only_p50_ms']} ms) |")
    if "samples_per_s" in reference:
        print(f"| paddle_infer.py, same {args.lines} lines, --num_workers 0, {args.backend} | {reference['samples']} "
              f"| {reference['samples_per_s']:,.0f} rows/s |")
    else:
        print(f"| paddle_infer.py | | failed: {reference['error']} |")
    print(f"| the same lines in-process after load + warm-up (paddle_infer.py's path, steady state) | {steady['rows']} "
          f"| {steady['rows_per_s']:,} rows/s |")
    print(f"\nupload (slot full) / paddle_infer.py rows/s: {targets['upload_vs_paddle_infer']}, / steady in-process: "
          f"{targets['upload_vs_in_process']} (target >= 0.90); 80-line round trip "
          f"- in-process: {targets['sample_round_trip_minus_in_process_ms']} ms with requests, "
          f"{targets['sample_round_trip_minus_in_process_lean_ms']} ms with the lean client (target <= 2 ms); load "
          f"{result['load_before'][0]} -> {result['load_after'][0]}")
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
