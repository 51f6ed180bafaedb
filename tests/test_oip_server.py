"""`python -m serving.oip` as a real process on loopback, driven by Triton's own clients (tritonclient HTTP and gRPC,
from PyPI) and by raw HTTP/gRPC for what those clients cannot send: both backends give the in-process predictions,
bad requests get clear errors while good ones keep flowing, health/metadata/metrics, SIGTERM drains."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from serving.supervisor import ServerProcess

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY = re.compile(r"serving\.oip ready: model (\S+) version (\S+) http [\d.]+:(\d+) grpc [\d.]+:(\d+)")


class OipServer(ServerProcess):
    def __init__(self, model: str, log_path: str, *flags: str, timeout_s: float = 180):
        super().__init__([sys.executable, "-m", "serving.oip", "--model", model, "--http_port", "0", "--grpc_port",
                          "0", *flags], READY, log_path=log_path, cwd=REPO_ROOT, timeout_s=timeout_s)
        if not self.match:
            self.stop()
            raise RuntimeError(f"serving.oip did not get ready (stdout {self.ready_line!r}); log:\n{self.log()}")
        self.name, self.version = self.match.group(1), self.match.group(2)
        self.http_port, self.grpc_port = int(self.match.group(3)), int(self.match.group(4))
        self.url = f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def http_client(self, **kw):
        return tritonhttp.InferenceServerClient(f"127.0.0.1:{self.http_port}", **kw)

    def grpc_client(self):
        return tritongrpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")


def _inputs(module, dense: np.ndarray, sparse: np.ndarray, binary: bool = True):
    a = module.InferInput("dense_input", list(dense.shape), "FP32")
    b = module.InferInput("sparse_inputs", list(sparse.shape), "INT64")
    if module is tritonhttp:
        a.set_data_from_numpy(dense, binary_data=binary)
        b.set_data_from_numpy(sparse, binary_data=binary)
    else:
        a.set_data_from_numpy(dense)
        b.set_data_from_numpy(sparse)
    return [a, b]


@pytest.fixture(scope="module")
def golden(exported_deepfm):
    with open(os.path.join(exported_deepfm, "model_meta.json")) as f:
        g = json.load(f)["golden"]
    return np.asarray(g["dense"], np.float32), np.asarray(g["sparse"], np.int64)


@pytest.fixture(scope="module", params=["paddle", "onnxruntime"])
def server(request, exported_deepfm, tmp_path_factory):
    log = tmp_path_factory.mktemp("oip") / f"{request.param}.log"
    srv = OipServer(exported_deepfm, str(log), "--backend", request.param, "--max_body_mb", "1",
                    "--log_level", "WARNING")
    srv.backend = request.param
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(server, exported_deepfm):
    """The same backend in this process (what the served answers must equal)."""
    from ctrkit.inference import create_onnx_predictor, create_predictor
    return create_predictor(exported_deepfm) if server.backend == "paddle" else create_onnx_predictor(exported_deepfm)


def test_health_and_metadata(server):
    for client in (server.http_client(), server.grpc_client()):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("deepfm") and client.is_model_ready("deepfm", "0")
        assert not client.is_model_ready("deepfm", "7")
    meta = server.http_client().get_model_metadata("deepfm")
    assert meta["platform"] == {"paddle": "paddle_inference", "onnxruntime": "onnxruntime_onnx"}[server.backend]
    assert meta["inputs"] == [{"name": "dense_input", "datatype": "FP32", "shape": [-1, 13]},
                              {"name": "sparse_inputs", "datatype": "INT64", "shape": [-1, 26]}]
    assert meta["outputs"] == [{"name": "prob", "datatype": "FP32", "shape": [-1, 1]}]
    gmeta = server.grpc_client().get_model_metadata("deepfm", as_json=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in gmeta["inputs"]] == \
        [("dense_input", "FP32", [-1, 13]), ("sparse_inputs", "INT64", [-1, 26])]
    assert server.http_client().get_server_metadata()["extensions"] == ["binary_tensor_data", "statistics",
                                                                         "model_configuration"]
    assert server.grpc_client().get_server_metadata().name == "ctrkit"
    assert requests.get(server.url + "/v2/health/ready", timeout=10).json() == {"ready": True}


def _stats(server, transport: str) -> dict:
    """The served version's statistics through tritonclient, as plain ints (gRPC's JSON writes uint64 as text
    and leaves zeros out)."""
    if transport == "http":
        (entry,) = server.http_client().get_inference_statistics("deepfm")["model_stats"]
    else:
        (entry,) = server.grpc_client().get_inference_statistics("deepfm", as_json=True)["model_stats"]
    stats = {k: int(entry.get(k, 0)) for k in ("inference_count", "execution_count", "last_inference")}
    for k, v in entry["inference_stats"].items():
        stats[k] = (int(v.get("count", 0)), int(v.get("ns", 0)))
    stats["batches"] = {int(b["batch_size"]): tuple((int(b[k].get("count", 0)), int(b[k].get("ns", 0)))
                                                    for k in ("compute_input", "compute_infer", "compute_output"))
                        for b in entry.get("batch_stats", [])}
    return stats


def test_statistics_extension_counts_requests_samples_and_model_calls(server, golden):
    dense, sparse = golden
    before = _stats(server, "http")
    assert before == _stats(server, "grpc")
    http, grpc_client = server.http_client(), server.grpc_client()
    for i in range(6):
        client, module = (http, tritonhttp) if i % 2 else (grpc_client, tritongrpc)
        client.infer("deepfm", _inputs(module, dense[:3], sparse[:3]))
    bad = sparse[:1].copy()
    bad[0, 0] = -1  # outside the embedding table: refused by the runtime, counted as failed
    with pytest.raises(InferenceServerException):
        http.infer("deepfm", _inputs(tritonhttp, dense[:1], bad))
    after = _stats(server, "http")
    assert after == _stats(server, "grpc")
    assert after["success"][0] - before["success"][0] == 6
    assert after["fail"][0] - before["fail"][0] == 1
    assert after["inference_count"] - before["inference_count"] == 18
    assert 1 <= after["execution_count"] - before["execution_count"] <= 6
    assert after["compute_infer"][0] == after["success"][0] and after["compute_infer"][1] > before["compute_infer"][1]
    # every request's time in the runtime is its queue time plus its batch's model call
    assert after["success"][1] >= after["compute_infer"][1] and after["queue"][1] >= 0
    assert after["success"][1] == pytest.approx(after["queue"][1] + after["compute_infer"][1], abs=10)
    assert abs(after["last_inference"] / 1000 - time.time()) < 60
    # batch_stats: every model call under its exact batch size (the golden self-check's 40 rows among them)
    calls = {size: infer[0] for size, (_, infer, _) in after["batches"].items()}
    assert sum(calls.values()) == after["execution_count"]
    assert sum(size * n for size, n in calls.items()) == after["inference_count"]
    new = {size: n - before["batches"].get(size, ((0, 0),) * 3)[1][0] for size, n in calls.items()}
    assert sum(new.values()) == after["execution_count"] - before["execution_count"]
    assert all(size % 3 == 0 for size, n in new.items() if n)  # merged requests of 3 rows each
    assert all(infer[1] > 0 and inp == (infer[0], 0) == out for inp, infer, out in after["batches"].values())
    everything = requests.get(server.url + "/v2/models/stats", timeout=10).json()["model_stats"]
    assert [(m["name"], m["version"]) for m in everything] == [("deepfm", "0")]
    for call in (lambda: http.get_inference_statistics("deepfm", "7"), lambda: http.get_inference_statistics("x"),
                 lambda: grpc_client.get_inference_statistics("deepfm", "7")):
        with pytest.raises(InferenceServerException, match="not served|unknown model"):
            call()


def test_model_configuration_and_repository_index(server):
    http, grpc_client = server.http_client(), server.grpc_client()
    config = http.get_model_config("deepfm")
    assert config["platform"] == {"paddle": "paddle_inference", "onnxruntime": "onnxruntime_onnx"}[server.backend]
    assert config["backend"] == server.backend and config["max_batch_size"] == 4096
    assert config["input"] == [{"name": "dense_input", "data_type": "TYPE_FP32", "dims": [13]},
                               {"name": "sparse_inputs", "data_type": "TYPE_INT64", "dims": [26]}]
    assert config["output"] == [{"name": "prob", "data_type": "TYPE_FP32", "dims": [1]}]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 1000}
    proto = grpc_client.get_model_config("deepfm").config  # tritonclient's own ModelConfig message
    assert (proto.name, proto.max_batch_size, proto.backend) == ("deepfm", 4096, server.backend)
    assert [(t.name, t.data_type, list(t.dims)) for t in proto.input] == [("dense_input", 11, [13]),
                                                                         ("sparse_inputs", 9, [26])]
    assert proto.dynamic_batching.max_queue_delay_microseconds == 1000
    with pytest.raises(InferenceServerException, match="version '3' is not served"):
        grpc_client.get_model_config("deepfm", "3")
    ready = [{"name": "deepfm", "version": "0", "state": "READY", "reason": ""}]
    assert http.get_model_repository_index() == ready
    assert [(m.name, m.version, m.state) for m in grpc_client.get_model_repository_index().models] == \
        [("deepfm", "0", "READY")]
    answer = requests.post(server.url + "/v2/repository/index", data=b"[1, 2]", timeout=10)
    assert answer.status_code == 400 and "must be a JSON object" in answer.json()["error"]


def test_predictions_equal_in_process(server, reference, golden):
    dense, sparse = golden
    expected = reference.predict(dense, sparse)
    http, grpc_client = server.http_client(), server.grpc_client()
    answers = {
        "http binary": http.infer("deepfm", _inputs(tritonhttp, dense, sparse)).as_numpy("prob"),
        "http json": http.infer("deepfm", _inputs(tritonhttp, dense, sparse, binary=False),
                                outputs=[tritonhttp.InferRequestedOutput("prob", binary_data=False)]
                                ).as_numpy("prob"),
        "http gzip": http.infer("deepfm", _inputs(tritonhttp, dense, sparse), request_compression_algorithm="gzip",
                                response_compression_algorithm="gzip").as_numpy("prob"),
        "http deflate": http.infer("deepfm", _inputs(tritonhttp, dense, sparse),
                                   request_compression_algorithm="deflate",
                                   response_compression_algorithm="deflate").as_numpy("prob"),
        "http version path": http.infer("deepfm", _inputs(tritonhttp, dense, sparse), model_version="0"
                                        ).as_numpy("prob"),
        "grpc": grpc_client.infer("deepfm", _inputs(tritongrpc, dense, sparse)).as_numpy("prob"),
        "grpc version": grpc_client.infer("deepfm", _inputs(tritongrpc, dense, sparse), model_version="0"
                                          ).as_numpy("prob"),
    }
    for name, got in answers.items():
        assert got.shape == (len(dense), 1), name
        np.testing.assert_allclose(got.reshape(-1), expected, rtol=0, atol=1e-6, err_msg=name)
    # one row at a time, as a batch-1 client sends them
    for i in range(3):
        one = grpc_client.infer("deepfm", _inputs(tritongrpc, dense[i:i + 1], sparse[i:i + 1])).as_numpy("prob")
        np.testing.assert_allclose(one.reshape(-1), expected[i:i + 1], rtol=0, atol=1e-6)
    result = http.infer("deepfm", _inputs(tritonhttp, dense[:2], sparse[:2]), request_id="req-7")
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_version"] == "0"


def _raw_json(dense, sparse, dense_type="FP32", sparse_type="INT64", names=("dense_input", "sparse_inputs")):
    return json.dumps({"inputs": [
        {"name": names[0], "datatype": dense_type, "shape": list(np.shape(dense)), "data": np.asarray(dense).tolist()},
        {"name": names[1], "datatype": sparse_type, "shape": list(np.shape(sparse)),
         "data": np.asarray(sparse).tolist()}]})


def test_bad_requests_get_clear_errors_while_good_ones_flow(server, reference, golden):
    dense, sparse = golden
    expected = reference.predict(dense[:4], sparse[:4])
    url = f"{server.url}/v2/models/deepfm/infer"
    stop, failures, good = threading.Event(), [], [0]

    def good_traffic(kind: str) -> None:
        client = server.http_client() if kind == "http" else server.grpc_client()
        module = tritonhttp if kind == "http" else tritongrpc
        while not stop.is_set():
            try:
                got = client.infer("deepfm", _inputs(module, dense[:4], sparse[:4])).as_numpy("prob").reshape(-1)
                if not np.allclose(got, expected, rtol=0, atol=1e-6):
                    failures.append(f"{kind}: wrong answer {got}")
                good[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(f"{kind}: {e}")

    threads = [threading.Thread(target=good_traffic, args=(k,)) for k in ("http", "grpc")]
    for t in threads:
        t.start()
    try:
        bad_dense = dense[:2].copy()
        bad_dense[1, 3] = np.nan
        bad_ids = sparse[:2].copy()
        bad_ids[0, 5] = 10 ** 9
        http_cases = [
            (b"{\"inputs\": [", {}, 400, "not valid JSON"),
            (b"\xff\xfe garbage", {}, 400, "not valid JSON"),
            (_raw_json(dense[:2, :12], sparse[:2]), {}, 400, "needs shape [B, 13]"),
            (_raw_json(dense[:2], sparse[:2, :25]), {}, 400, "needs shape [B, 26]"),
            (_raw_json(dense[:2], sparse[:2], dense_type="FP64"), {}, 400, "datatype 'FP64'"),
            (_raw_json(dense[:2], sparse[:2], sparse_type="INT32"), {}, 400, "datatype 'INT32'"),
            (_raw_json(dense[:2], sparse[:2], names=("dense", "sparse_inputs")), {}, 400, "unknown input 'dense'"),
            (_raw_json(bad_dense, sparse[:2]), {}, 400, "finite"),
            (_raw_json(dense[:2], bad_ids), {}, 400, "embedding table"),
            (_raw_json(dense[:2], sparse[:2]), {"Inference-Header-Content-Length": "999999"}, 400,
             "Inference-Header-Content-Length"),
            (_raw_json(dense[:2], sparse[:2]), {"Content-Encoding": "br"}, 415, "Content-Encoding"),
            (_raw_json(dense[:2], sparse[:2]), {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
            (b"{" + b" " * (2 * 2 ** 20) + b"}", {}, 413, "limit"),
        ]
        for body, headers, status, message in http_cases:
            r = requests.post(url, data=body, headers=headers, timeout=30)
            assert r.status_code == status, (body[:80], r.text)
            assert message in r.json()["error"], r.json()
        r = requests.post(f"{server.url}/v2/models/nope/infer", data=_raw_json(dense[:1], sparse[:1]), timeout=30)
        assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
        r = requests.post(f"{server.url}/v2/models/deepfm/versions/9/infer", data=_raw_json(dense[:1], sparse[:1]),
                          timeout=30)
        assert r.status_code == 404 and "version '9'" in r.json()["error"]
        assert requests.get(url, timeout=30).status_code == 405
        assert requests.get(f"{server.url}/v3/whatever", timeout=30).status_code == 404

        # the real clients show the server's message
        http, gclient = server.http_client(), server.grpc_client()
        for module, client in ((tritonhttp, http), (tritongrpc, gclient)):
            with pytest.raises(InferenceServerException, match=r"needs shape \[B, 13\]"):
                client.infer("deepfm", _inputs(module, dense[:2, :12], sparse[:2]))
            wrong = module.InferInput("dense_input", [2, 13], "FP64")
            wrong.set_data_from_numpy(dense[:2].astype(np.float64))
            with pytest.raises(InferenceServerException, match="datatype 'FP64'"):
                client.infer("deepfm", [wrong, _inputs(module, dense[:2], sparse[:2])[1]])
            with pytest.raises(InferenceServerException, match="embedding table"):
                client.infer("deepfm", _inputs(module, dense[:2], bad_ids))
            with pytest.raises(InferenceServerException, match="missing input"):
                client.infer("deepfm", _inputs(module, dense[:2], sparse[:2])[:1])
            with pytest.raises(InferenceServerException, match="unknown model"):
                client.infer("other", _inputs(module, dense[:2], sparse[:2]))
        # undecodable gRPC bytes reach our validation
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            with pytest.raises(grpc.RpcError) as info:
                call(b"\xff\xff\xff\xff", timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a ModelInferRequest" in info.value.details()
        time.sleep(0.2)  # let the good traffic run a little after the last bad request
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert good[0] > 0
    metrics = requests.get(f"{server.url}/metrics", timeout=30).text
    assert re.search(r'ctrkit_oip_requests_total\{code="400",transport="http"\} [1-9]', metrics), metrics[-2000:]
    assert 'ctrkit_runtime_requests_total' in metrics


def test_sigterm_drains_in_flight_requests_and_exits_0(exported_deepfm, golden, tmp_path):
    dense, sparse = golden
    srv = OipServer(exported_deepfm, str(tmp_path / "drain.log"), "--backend", "onnxruntime", "--batch_window_ms",
                    "8000", "--log_level", "INFO")
    results, errors = [], []

    def one(i: int) -> None:
        try:
            client = srv.http_client() if i % 2 else srv.grpc_client()
            module = tritonhttp if i % 2 else tritongrpc
            results.append(client.infer("deepfm", _inputs(module, dense[:1], sparse[:1])).as_numpy("prob"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()

    def queued() -> float:
        text = requests.get(f"{srv.url}/metrics", timeout=10).text
        return float(re.search(r"^ctrkit_runtime_queue_depth (\S+)$", text, re.M).group(1))
    deadline = time.monotonic() + 60
    while queued() < 4 and time.monotonic() < deadline:  # all four wait in the 8 s batching window
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert srv.stop() == 0, srv.log()
    # every request that reached the server before SIGTERM finished with its answer
    assert not errors and len(results) == 4 and all(r.shape == (1, 1) for r in results), errors


def test_decoding_memory_is_budgeted(exported_deepfm, golden, tmp_path):
    """A JSON body costs ~20x its size while decoded: past --max_decode_mb it is refused with a clear 413, while
    the same rows as binary tensors (tritonclient's default) still pass."""
    dense, sparse = golden
    srv = OipServer(exported_deepfm, str(tmp_path / "budget.log"), "--backend", "constant", "--max_decode_mb",
                    "0.5", "--log_level", "WARNING")
    try:
        big = np.tile(dense, (20, 1)), np.tile(sparse, (20, 1))  # 800 rows: ~110 KB of JSON
        r = requests.post(f"{srv.url}/v2/models/deepfm/infer", data=_raw_json(*big), timeout=30)
        assert r.status_code == 413 and "--max_decode_mb" in r.json()["error"]
        got = srv.http_client().infer("deepfm", _inputs(tritonhttp, *big)).as_numpy("prob")
        assert got.shape == (800, 1)
        small = requests.post(f"{srv.url}/v2/models/deepfm/infer", data=_raw_json(dense[:2], sparse[:2]), timeout=30)
        assert small.status_code == 200
    finally:
        assert srv.stop() == 0
