"""A lean closed-loop load generator for the transport benchmark (one process, N threads, one connection each).

    python benchmarks/load_client.py --target oip_grpc --address 127.0.0.1:8001 --concurrency 8 --duration 10 \
        --model_dir output/deepfm/inference [--batch 1] [--warmup 50] [--qps 0]

Every thread sends the same pre-built request (real rows from the model's golden batch) over its own connection,
waits for the answer, checks it (status, and that the answer parses), and records the round trip; building the
request is not timed and costs nothing per request, so the client spends its CPU on the transport alone, the same
way for every target. `--qps N` paces the whole client to N requests/s (the soak mode); 0 = as fast as it can.
Prints one JSON line: requests, errors (with the first few messages), qps, p50/p90/p99/max ms, client CPU s.

Targets: `rpc_grpc`, `rpc_http_proto` (Paddle Serving's GeneralModelService over gRPC / HTTP+protobuf, serving.rpc),
`oip_grpc`, `oip_http` (KServe v2 ModelInfer over gRPC / HTTP with binary tensors, serving.oip), `echo_grpc`,
`echo_grpc_aio`, `echo_http` (benchmarks/echo_server.py: the bare libraries, answering the request bytes back).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
TARGETS = ("rpc_grpc", "rpc_http_proto", "oip_grpc", "oip_http", "echo_grpc", "echo_grpc_aio", "echo_http")


def golden_rows(model_dir: str, batch: int) -> tuple[np.ndarray, np.ndarray, str]:
    path = model_dir
    for candidate in (model_dir, os.path.join(model_dir, "serving_server")):
        if os.path.isfile(os.path.join(candidate, "model_meta.json")):
            path = candidate
            break
    with open(os.path.join(path, "model_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    g = meta["golden"]
    reps = -(-batch // len(g["dense"]))
    dense = np.tile(np.asarray(g["dense"], np.float32), (reps, 1))[:batch]
    sparse = np.tile(np.asarray(g["sparse"], np.int64), (reps, 1))[:batch]
    return np.ascontiguousarray(dense), np.ascontiguousarray(sparse), meta["model_name"]


def build_request(target: str, dense: np.ndarray, sparse: np.ndarray, model_name: str) -> bytes:
    if target.startswith("rpc"):
        from serving.rpc import protocol as RP
        req = RP.Request(fetch_var_names=["prob"], log_id=1)
        t = req.tensor.add(name="dense_input", alias_name="dense_input", elem_type=1, shape=list(dense.shape))
        t.float_data.extend(dense.reshape(-1).tolist())
        t = req.tensor.add(name="sparse_inputs", alias_name="sparse_inputs", elem_type=0, shape=list(sparse.shape))
        t.int64_data.extend(sparse.reshape(-1).tolist())
        return req.SerializeToString()
    if target == "oip_grpc" or target.startswith("echo"):
        from serving.oip import protocol as OP
        req = OP.MESSAGES["ModelInferRequest"](model_name=model_name)
        req.inputs.add(name="dense_input", datatype="FP32", shape=list(dense.shape))
        req.inputs.add(name="sparse_inputs", datatype="INT64", shape=list(sparse.shape))
        req.raw_input_contents.extend([dense.tobytes(), sparse.tobytes()])
        return req.SerializeToString()
    head = json.dumps({"inputs": [
        {"name": "dense_input", "datatype": "FP32", "shape": list(dense.shape),
         "parameters": {"binary_data_size": dense.nbytes}},
        {"name": "sparse_inputs", "datatype": "INT64", "shape": list(sparse.shape),
         "parameters": {"binary_data_size": sparse.nbytes}}],
        "outputs": [{"name": "prob", "parameters": {"binary_data": True}}]}).encode()
    return head + dense.tobytes() + sparse.tobytes(), len(head)


class _Caller:
    """One connection of one thread: call() -> None or raises with a short message."""

    def __init__(self, target: str, address: str, body, model_name: str):
        self.target = target
        host, port = address.rsplit(":", 1)
        self.header_length = None
        if isinstance(body, tuple):
            body, self.header_length = body
        self.body = body
        if "grpc" in target:
            import grpc
            self.channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            method = {"rpc_grpc": "/baidu.paddle_serving.predictor.general_model.GeneralModelService/inference",
                      "oip_grpc": "/inference.GRPCInferenceService/ModelInfer",
                      "echo_grpc": "/echo.Echo/Echo", "echo_grpc_aio": "/echo.Echo/Echo"}[target]
            self.stub = self.channel.unary_unary(method)
        else:
            self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
            if target == "rpc_http_proto":
                self.path, self.headers = "/GeneralModelService/inference", {"Content-Type": "application/proto"}
            elif target == "oip_http":
                self.path = f"/v2/models/{model_name}/infer"
                self.headers = {"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(self.header_length)}
            else:
                self.path, self.headers = "/echo", {"Content-Type": "application/octet-stream"}

    def call(self) -> None:
        if "grpc" in self.target:
            answer = self.stub(self.body, timeout=60)
            if not answer:
                raise RuntimeError("empty answer")
            return
        self.conn.request("POST", self.path, self.body, self.headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")

    def close(self) -> None:
        if "grpc" in self.target:
            self.channel.close()
        else:
            self.conn.close()


def run(target: str, address: str, concurrency: int, duration_s: float, body, model_name: str, warmup: int,
        qps: float = 0.0) -> dict:
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    error_count = [0]
    lock = threading.Lock()
    stop_at = [0.0]
    clock = {}

    def begin() -> None:  # runs once, before any thread passes the gate: every thread sees the same stop time
        clock["usage"] = resource.getrusage(resource.RUSAGE_SELF)
        clock["start"] = time.perf_counter()
        stop_at[0] = clock["start"] + duration_s

    start_gate = threading.Barrier(concurrency + 1, action=begin)
    interval = concurrency / qps if qps > 0 else 0.0  # each thread's share of the paced rate

    def worker(i: int) -> None:
        caller = _Caller(target, address, body, model_name)
        try:
            for _ in range(warmup):
                try:
                    caller.call()
                except Exception:  # noqa: BLE001 - warm-up errors count below if they persist
                    pass
            start_gate.wait()
            mine = latencies[i]
            next_at = time.perf_counter() + (i / max(qps, 1e-9) if qps > 0 else 0.0)
            while True:
                now = time.perf_counter()
                if now >= stop_at[0]:
                    break
                if interval:
                    if now < next_at:
                        time.sleep(next_at - now)
                    next_at += interval
                t0 = time.perf_counter()
                try:
                    caller.call()
                    mine.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        error_count[0] += 1
                        if len(errors) < 5:
                            errors.append(str(e)[:300])
                    if "grpc" not in target:  # a broken HTTP connection: open a new one
                        caller.close()
                        caller = _Caller(target, address, body, model_name)
        finally:
            caller.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start_gate.wait()
    usage0, t_start = clock["usage"], clock["start"]
    for t in threads:
        t.join(duration_s + 120)
    elapsed = time.perf_counter() - t_start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    all_lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000 if any(latencies) else np.zeros(0)
    ok = len(all_lat)
    pct = np.percentile(all_lat, [50, 90, 99]) if ok else [float("nan")] * 3
    return {"target": target, "concurrency": concurrency, "requests": ok + error_count[0], "ok": ok,
            "errors": error_count[0], "error_samples": errors, "seconds": round(elapsed, 3),
            "qps": round(ok / elapsed, 1), "p50_ms": round(float(pct[0]), 3), "p90_ms": round(float(pct[1]), 3),
            "p99_ms": round(float(pct[2]), 3), "max_ms": round(float(all_lat.max()), 3) if ok else None,
            "client_cpu_s": round((usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGETS, required=True)
    p.add_argument("--address", required=True, help="host:port")
    p.add_argument("--model_dir", required=True, help="export directory (the golden rows make the request)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=50, help="uncounted requests per thread first")
    p.add_argument("--qps", type=float, default=0.0, help="pace to this many requests/s in total (0: closed loop)")
    args = p.parse_args(argv)
    dense, sparse, name = golden_rows(args.model_dir, args.batch)
    body = build_request(args.target, dense, sparse, name)
    result = run(args.target, args.address, args.concurrency, args.duration, body, name, args.warmup, args.qps)
    result["batch"] = args.batch
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
