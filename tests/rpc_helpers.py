"""Helpers for the RPC serving tests: real `python -m serving.rpc` processes on loopback (ports chosen by the
server itself, read from its ready line), raw gRPC / HTTP calls, and local reference predictions."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.inference import META_FILE, PredictorOptions, create_predictor
from serving.rpc import protocol as P
from serving.rpc.client import ServingClient
from serving.supervisor import ServerProcess

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = re.compile(r"serving\.rpc ready: version (\d+) grpc [\d.]+:(\d+) http [\d.]+:(\d+)")
MODES = ("rpc", "http_proto", "http")  # ServingClient's transports: gRPC, HTTP protobuf, HTTP JSON


class RpcServer(ServerProcess):
    """A running server process; `log()` is its stderr so far."""

    def __init__(self, model: str, log_path: str, *flags: str, timeout_s: float = 180):
        super().__init__([sys.executable, "-m", "serving.rpc", "--model", model, "--port", "0", *flags], READY,
                         log_path=log_path, cwd=REPO_ROOT, timeout_s=timeout_s)
        if not self.match:
            self.stop()
            raise RuntimeError(f"server did not get ready (stdout {self.ready_line!r}); log:\n{self.log()}")
        self.version, self.grpc_port, self.http_port = (int(g) for g in self.match.groups())
        self.url = f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def client(self, layout, mode: str) -> ServingClient:
        """A ServingClient with its own connection, over `mode` (one of MODES)."""
        return ServingClient(layout, f"127.0.0.1:{self.grpc_port if mode == 'rpc' else self.http_port}", mode)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)])

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a Prometheus sample (`name{labels...}`) over the label sets that contain `labels`."""
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def slot_rows(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(dense, sparse) of the first `n` rows of a Criteo slot file."""
    batch = next(iter(iter_batches(path, FeatureSpec(), n)))
    return batch.dense, batch.sparse


@pytest.fixture(scope="module")
def rows(slot_sample):
    """Fixture: (dense, sparse) of the first 1000 rows of the Criteo slot sample (import it into a test module)."""
    return slot_rows(slot_sample, 1000)


@pytest.fixture(scope="module")
def local(exported_deepfm):
    """Fixture: the in-process reference predictor of the exported DeepFM (import it into a test module)."""
    return create_predictor(exported_deepfm, PredictorOptions())


def publish_version(model_dir: str, root: str, version: int, break_golden: bool = False) -> None:
    """Copy a model directory in as `root/<version>` the way a deployment should: a hidden staging copy renamed
    into place. `break_golden` makes a version whose self-check must fail (every model_meta.json in the copy:
    its top level and serving_server/)."""
    staging = os.path.join(root, f".staging-{version}")
    shutil.copytree(model_dir, staging)
    if break_golden:
        for meta_path in (os.path.join(staging, META_FILE), os.path.join(staging, "serving_server", META_FILE)):
            if not os.path.isfile(meta_path):
                continue
            with open(meta_path) as f:
                meta = json.load(f)
            meta["golden"]["prob"] = [p + 0.1 for p in meta["golden"]["prob"]]
            with open(meta_path, "w") as f:
                json.dump(meta, f)
    os.rename(staging, os.path.join(root, str(version)))


def proto_request(dense: np.ndarray, sparse: np.ndarray, log_id: int = 0, **dense_overrides) -> "P.Request":
    req = P.Request(fetch_var_names=["prob"], log_id=log_id)
    dense_tensor = dict(name="dense_input", alias_name="dense_input", elem_type=P.FP32, shape=list(dense.shape),
                        float_data=dense.ravel().tolist())
    dense_tensor.update(dense_overrides)
    req.tensor.add(**dense_tensor)
    req.tensor.add(name="sparse_inputs", alias_name="sparse_inputs", elem_type=P.INT64, shape=list(sparse.shape),
                   int64_data=sparse.ravel().tolist())
    return req


def json_request(dense: np.ndarray, sparse: np.ndarray, log_id: int = 0) -> dict:
    return {"tensor": [
        {"name": "dense_input", "alias_name": "dense_input", "elem_type": 1, "shape": list(dense.shape),
         "float_data": dense.ravel().tolist()},
        {"name": "sparse_inputs", "alias_name": "sparse_inputs", "elem_type": 0, "shape": list(sparse.shape),
         "int64_data": sparse.ravel().tolist()}], "fetch_var_names": ["prob"], "log_id": log_id}


def grpc_call(channel: grpc.Channel, body: bytes, timeout_s: float = 30):
    """(Response or None, grpc.StatusCode, trailing metadata dict, details)."""
    call = channel.unary_unary(f"/{P.SERVICE}/inference", request_serializer=None, response_deserializer=None)
    try:
        answer, rpc = call.with_call(body, timeout=timeout_s)
        return P.Response.FromString(answer), rpc.code(), dict(rpc.trailing_metadata() or ()), ""
    except grpc.RpcError as e:
        return None, e.code(), dict(e.trailing_metadata() or ()), e.details()


def wait_until(predicate, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run_in_threads(target, count: int) -> None:
    """Run target(0) .. target(count - 1) at once, each in its own thread, and wait for all of them."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
