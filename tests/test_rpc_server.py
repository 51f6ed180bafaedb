"""serving.rpc as a real server process on loopback: predictions over every transport, concurrency, every kind
of bad request, health / readiness / metrics, rec_client.py, and the SIGTERM drain."""
from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.rpc import protocol as P
from serving.rpc.client import ServingClient, ServingError, read_feed_layout
from rpc_helpers import (REPO_ROOT, RpcServer, grpc_call, json_request, proto_request, run_in_threads,
                         wait_until)
from rpc_helpers import local, rows  # noqa: F401 (fixtures)

MAX_BATCH = 64  # the server's --max_batch_size in this module
PROTO = {"Content-Type": "application/proto"}


@pytest.fixture(scope="module")
def server(exported_deepfm, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("rpc") / "server.log")
    srv = RpcServer(os.path.join(exported_deepfm, "serving_server"), log, "--max_batch_size", str(MAX_BATCH),
                    "--max_body_mb", "1", "--thread", "8")
    yield srv
    assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log()  # no request, good or bad, may end in an unexpected exception


def client(server: RpcServer, exported_deepfm: str, mode: str, compress: bool = False) -> ServingClient:
    layout = read_feed_layout(os.path.join(exported_deepfm, "serving_client"))
    port = server.grpc_port if mode == "rpc" else server.http_port
    return ServingClient(layout, f"127.0.0.1:{port}", mode, compress=compress)


# ------------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("mode,compress", [("rpc", False), ("http", False), ("http", True), ("http_proto", False),
                                           ("http_proto", True)])
def test_predictions_equal_local_predictor(server, exported_deepfm, rows, local, mode, compress):
    dense, sparse = rows
    c = client(server, exported_deepfm, mode, compress)
    got = np.concatenate([c.predict(dense[i:i + 16], sparse[i:i + 16]) for i in range(0, len(dense), 16)])
    c.close()
    np.testing.assert_allclose(got, local.predict(dense, sparse), rtol=0, atol=1e-6)


def test_http_answers_in_kind(server, rows, local):
    dense, sparse = rows[0][:3], rows[1][:3]
    expected = local.predict(dense, sparse)
    r = requests.post(f"{server.url}/GeneralModelService/inference", json=json_request(dense, sparse, log_id=42))
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    tensor = body["outputs"][0]["tensor"][0]
    assert body["log_id"] == 42 and tensor["alias_name"] == "prob" and tensor["elem_type"] == 1
    assert tensor["shape"] == [3, 1] and r.headers["X-Model-Version"] == "0"
    np.testing.assert_allclose(tensor["float_data"], expected, atol=1e-6)

    payload = gzip.compress(proto_request(dense, sparse, log_id=7).SerializeToString())
    r = requests.post(f"{server.url}/GeneralModelService/inference", data=payload,
                      headers={**PROTO, "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/proto"  # exactly: the client checks
    answer = P.Response.FromString(r.content)
    assert answer.log_id == 7 and answer.err_no == 0 and list(answer.outputs[0].tensor[0].shape) == [3, 1]
    np.testing.assert_allclose(answer.outputs[0].tensor[0].float_data, expected, atol=1e-6)

    profiled = proto_request(dense, sparse)
    profiled.profile_server = True
    profiled.fetch_var_names[:] = [tensor["name"]]  # a fetch var may be named by its name or its alias
    r = requests.post(f"{server.url}/GeneralModelService/inference", data=profiled.SerializeToString(),
                      headers=PROTO)
    answer = P.Response.FromString(r.content)
    assert r.status_code == 200 and answer.outputs[0].tensor[0].alias_name == "prob"
    assert len(answer.profile_time) == 4 and list(answer.profile_time) == sorted(answer.profile_time)


def test_large_answer_is_gzipped_when_accepted(server, rows):
    dense, sparse = (np.repeat(a, 10, axis=0)[:MAX_BATCH] for a in rows)
    r = requests.post(f"{server.url}/GeneralModelService/inference", json=json_request(dense, sparse),
                      headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers.get("Content-Encoding") == "gzip"
    assert len(r.json()["outputs"][0]["tensor"][0]["float_data"]) == MAX_BATCH


def test_concurrent_clients_get_their_own_answers(server, exported_deepfm, rows, local):
    dense, sparse = rows
    expected = local.predict(dense, sparse)
    failures: list[str] = []

    def work(worker: int) -> None:
        c = client(server, exported_deepfm, ("rpc", "http", "http_proto")[worker % 3])
        rng = np.random.default_rng(worker)
        for _ in range(15):
            idx = rng.choice(len(dense), size=int(rng.integers(1, 8)), replace=False)
            try:
                got = c.predict(dense[idx], sparse[idx])
            except ServingError as e:
                failures.append(str(e))
                continue
            if not np.allclose(got, expected[idx], atol=1e-6):
                failures.append(f"worker {worker}: rows {idx.tolist()} got {got} expected {expected[idx]}")
        c.close()

    run_in_threads(work, 16)
    assert failures == []


# ------------------------------------------------------------------------------------------- bad requests
def _bad_proto_cases(dense: np.ndarray, sparse: np.ndarray) -> dict[str, tuple[bytes, P.ErrorKind, str]]:
    """name -> (serialised Request, expected error kind, text the message must contain)."""
    def req(**overrides) -> P.Request:
        return proto_request(dense, sparse, **overrides)

    unknown = req()
    unknown.tensor[0].alias_name = unknown.tensor[0].name = "dense"
    missing = req()
    del missing.tensor[1]
    twice = req()
    twice.tensor.append(twice.tensor[0])
    out_of_range, negative = sparse.copy(), sparse.copy()
    out_of_range[1, 3], negative[0, 0] = 1000001, -1
    nan, inf = dense.copy(), dense.copy()
    nan[0, 2], inf[1, 0] = np.nan, np.inf
    lod = req()
    lod.tensor[0].lod.extend([0, 1, 2])
    too_big = tuple(np.repeat(a, MAX_BATCH, axis=0)[:MAX_BATCH + 1] for a in (dense, sparse))
    unknown_fetch = req()
    unknown_fetch.fetch_var_names[:] = ["score"]
    return {
        "unknown feed": (unknown.SerializeToString(), P.UNKNOWN_NAME, "unknown feed 'dense'"),
        "missing feed": (missing.SerializeToString(), P.MISSING_FEED, "sparse_inputs"),
        "feed twice": (twice.SerializeToString(), P.UNKNOWN_NAME, "given twice"),
        "wrong dtype": (req(elem_type=P.INT64, float_data=[], int64_data=[1] * dense.size).SerializeToString(),
                        P.WRONG_DTYPE, "needs elem_type 1 (FP32)"),
        "wrong data field": (req(elem_type=P.FP32, float_data=[], float64_data=dense.ravel().tolist())
                             .SerializeToString(), P.WRONG_DTYPE, "float64_data"),
        "wrong shape": (req(shape=[len(dense), 12]).SerializeToString(), P.WRONG_SHAPE, "[B, 13]"),
        "too few values": (req(float_data=dense.ravel()[:-1].tolist()).SerializeToString(), P.WRONG_SHAPE,
                           "needs"),
        "no shape": (req(shape=[]).SerializeToString(), P.WRONG_SHAPE, "shape is empty"),
        "batch sizes differ": (proto_request(dense[:1], sparse).SerializeToString(), P.WRONG_SHAPE, "disagree"),
        "id too large": (proto_request(dense, out_of_range).SerializeToString(), P.OUT_OF_RANGE, "1000001"),
        "negative id": (proto_request(dense, negative).SerializeToString(), P.OUT_OF_RANGE, "-1"),
        "nan": (proto_request(nan, sparse).SerializeToString(), P.NOT_FINITE, "nan"),
        "inf": (proto_request(inf, sparse).SerializeToString(), P.NOT_FINITE, "inf"),
        "empty batch": (proto_request(dense[:0], sparse[:0]).SerializeToString(), P.EMPTY_BATCH, "empty batch"),
        "oversized batch": (proto_request(*too_big).SerializeToString(), P.TOO_LARGE, f"limit of {MAX_BATCH}"),
        "lod": (lod.SerializeToString(), P.WRONG_SHAPE, "LoD"),
        "unknown fetch": (unknown_fetch.SerializeToString(), P.UNKNOWN_NAME, "unknown fetch var 'score'"),
        "garbage bytes": (b"\x0a\xff\xff\xff\xff\x0f garbage", P.BAD_REQUEST, "not a serialised"),
    }


def test_bad_requests_over_grpc(server, rows):
    dense, sparse = rows[0][:4], rows[1][:4]
    channel = server.channel()
    for name, (body, kind, text) in _bad_proto_cases(dense, sparse).items():
        answer, code, meta, details = grpc_call(channel, body)
        assert answer is None and code == getattr(grpc.StatusCode, kind.grpc_code), name
        assert meta["err_no"] == str(kind.err_no) and text in details and "Traceback" not in details, name
    answer, code, _, _ = grpc_call(channel, proto_request(dense, sparse).SerializeToString())
    assert code == grpc.StatusCode.OK and len(answer.outputs[0].tensor[0].float_data) == 4  # still serving


def test_bad_requests_over_http_proto(server, rows):
    dense, sparse = rows[0][:4], rows[1][:4]
    for name, (body, kind, text) in _bad_proto_cases(dense, sparse).items():
        r = requests.post(f"{server.url}/GeneralModelService/inference", data=body, headers=PROTO)
        assert r.status_code == kind.http_status and r.headers["Content-Type"] == "application/proto", name
        answer = P.Response.FromString(r.content)
        assert answer.err_no == kind.err_no and text in answer.err_msg, name


def test_bad_requests_over_http_json(server, rows):
    dense, sparse = rows[0][:2], rows[1][:2]
    good = json_request(dense, sparse, log_id=9)

    def edit(fn) -> bytes:
        body = json.loads(json.dumps(good))
        fn(body)
        return json.dumps(body).encode()

    cases = {
        "not json": (b"{not json", P.BAD_REQUEST, "not valid JSON"),
        "not an object": (b"[1, 2]", P.BAD_REQUEST, "JSON object"),
        "unknown field": (edit(lambda b: b.update(tensors=[])), P.BAD_REQUEST, "unknown request fields"),
        "tensor not a list": (edit(lambda b: b.update(tensor={})), P.BAD_REQUEST, "request.tensor"),
        "strings as floats": (edit(lambda b: b["tensor"][0].update(float_data=["a"] * 26)), P.WRONG_DTYPE,
                              "numbers"),
        "floats as ids": (edit(lambda b: b["tensor"][1].update(int64_data=[0.5] * 52)), P.WRONG_DTYPE, "integers"),
        "nested values": (edit(lambda b: b["tensor"][0].update(float_data=[[0.1] * 13] * 2)), P.WRONG_SHAPE,
                          "flat list"),
        "NaN literal": (edit(lambda b: b["tensor"][0]["float_data"].__setitem__(0, float("nan"))), P.NOT_FINITE,
                        "finite"),
        "huge id": (edit(lambda b: b["tensor"][1]["int64_data"].__setitem__(0, 2 ** 70)), P.WRONG_DTYPE, "integers"),
        "bad log_id": (edit(lambda b: b.update(log_id="x")), P.BAD_REQUEST, "log_id"),
        "missing feed": (edit(lambda b: b["tensor"].pop()), P.MISSING_FEED, "sparse_inputs"),
    }
    for name, (body, kind, text) in cases.items():
        r = requests.post(f"{server.url}/GeneralModelService/inference", data=body,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == kind.http_status and r.headers["Content-Type"] == "application/json", name
        answer = r.json()
        assert answer["err_no"] == kind.err_no and text in answer["err_msg"], (name, answer)
    r = requests.post(f"{server.url}/GeneralModelService/inference", data=cases["missing feed"][0])
    assert r.json()["log_id"] == 9  # a decoded request's log_id is echoed with its error


def test_bad_http_envelopes(server, rows):
    url = f"{server.url}/GeneralModelService/inference"
    body = json.dumps(json_request(rows[0][:1], rows[1][:1])).encode()
    r = requests.post(url, data=body, headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json()["err_no"] == P.UNSUPPORTED_MEDIA.err_no
    r = requests.post(url, data=body, headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding" in r.json()["err_msg"]
    r = requests.post(url, data=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "decompress" in r.json()["err_msg"]
    r = requests.post(url, data=gzip.compress(body)[:-12], headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "truncated" in r.json()["err_msg"]
    bomb = gzip.compress(b" " * (2 << 20))  # 2 MiB once decompressed, over --max_body_mb 1
    r = requests.post(url, data=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json()["err_no"] == P.TOO_LARGE.err_no
    r = requests.post(url, data=b" " * (2 << 20))
    assert r.status_code == 413
    r = requests.post(url, data=iter([body]))  # chunked: no Content-Length; the HTTP library reads it
    assert r.status_code == 200
    assert requests.post(f"{server.url}/nowhere", data=body).status_code == 404
    assert requests.post(url, data=body).status_code == 200  # and the server carries on


# -------------------------------------------------------------------------------------- health, metrics
def test_health_readiness_metrics_versions(server, rows):
    grpc_call(server.channel(), proto_request(rows[0][:1], rows[1][:1]).SerializeToString())
    stub = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", P.SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert requests.get(f"{server.url}/health").json() == {"status": "alive"}
    ready = requests.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["version"] == 0
    versions = requests.get(f"{server.url}/versions").json()
    assert versions["serving"] == 0 and versions["available"] == [0] and versions["refused"] == {}
    assert server.metric("ctrkit_rpc_requests_total", 'err_no="0"') > 0
    assert server.metric("ctrkit_rpc_request_latency_seconds_count", 'transport="grpc"') > 0
    assert server.metric("ctrkit_runtime_model_batch_size_count", 'backend="paddle"') > 0
    assert server.metric("ctrkit_runtime_requests_total", 'result="ok"') > 0
    assert server.metric("ctrkit_runtime_ready") == 1 and server.metric("ctrkit_runtime_model_version") == 0


# ------------------------------------------------------------------------------------------- rec_client
def _rec_client(exported_deepfm: str, port: int, data: str, *flags: str) -> tuple[int, list[str], dict]:
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "rec_client.py"), "--client_config",
                           os.path.join(exported_deepfm, "serving_client", "serving_client_conf.prototxt"),
                           "--connect", f"127.0.0.1:{port}", "--data_dir", data, *flags],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, lines, json.loads(lines[-1]) if lines else {}


def test_rec_client_prints_answers_and_verifies(server, exported_deepfm, slot_sample, local, rows, tmp_path):
    output = tmp_path / "preds.txt"
    code, lines, summary = _rec_client(exported_deepfm, server.grpc_port, slot_sample, "--batchsize", "5",
                                       "--client_mode", "rpc", "--verify", "--output", str(output),
                                       "--wait_ready", "30")
    assert code == 0, lines
    assert summary["errors"] == 0 and summary["requests"] == 16 and summary["samples"] == 80
    assert summary["mismatches"] == 0 and summary["verified"] == 16
    assert {"qps", "samples_per_s", "p50_ms", "p90_ms", "p99_ms"} <= set(summary)
    assert sum(line.startswith("{'prob': array(") for line in lines) == 16  # as Paddle Serving's client prints
    written = np.loadtxt(output, dtype=np.float32)
    np.testing.assert_allclose(written, local.predict(*rows), atol=1e-6)


def test_rec_client_load_over_http(server, exported_deepfm, raw_sample):
    code, lines, summary = _rec_client(exported_deepfm, server.http_port, raw_sample, "--batchsize", "3",
                                       "--client_mode", "http_proto", "--concurrency", "4", "--requests", "50",
                                       "--gzip", "--quiet", "--verify")
    assert code == 0 and len(lines) == 1, lines
    assert summary["requests"] == 50 and summary["samples"] == 150 and summary["errors"] == 0
    assert summary["mismatches"] == 0


def test_rec_client_reports_refused_requests(server, exported_deepfm, slot_sample):
    code, _, summary = _rec_client(exported_deepfm, server.http_port, slot_sample, "--batchsize", str(MAX_BATCH + 1),
                                   "--client_mode", "http", "--quiet")
    assert code == 1 and summary["errors"] == 1 and summary["requests"] == 2  # 80 rows: 65 (refused) + 15


# ------------------------------------------------------------------------------------------------ drain
def test_sigterm_drains_in_flight_requests(exported_deepfm, rows, local, tmp_path):
    # a long batching window keeps requests in flight long enough to send SIGTERM while they wait
    srv = RpcServer(os.path.join(exported_deepfm, "serving_server"), str(tmp_path / "drain.log"),
                    "--batch_window_ms", "1500")
    dense, sparse = rows
    results: dict[int, object] = {}

    def send(i: int) -> None:
        c = ServingClient(read_feed_layout(os.path.join(exported_deepfm, "serving_client")),
                          f"127.0.0.1:{srv.grpc_port if i % 2 else srv.http_port}", "rpc" if i % 2 else "http_proto")
        try:
            results[i] = c.predict(dense[i:i + 2], sparse[i:i + 2])
        except ServingError as e:
            results[i] = e
        c.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: srv.metric("ctrkit_rpc_inflight_requests") == 6, what="6 requests in flight")
    srv.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert srv.stop() == 0, srv.log()
    for i in range(6):
        assert not isinstance(results[i], Exception), results[i]
        np.testing.assert_allclose(results[i], local.predict(dense[i:i + 2], sparse[i:i + 2]), atol=1e-6)
    log = srv.log()
    assert "draining" in log and "drained in" in log
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{srv.url}/health", timeout=5)


# ---------------------------------------------------------------------------------------- start-up errors
def test_startup_errors_are_one_clear_line(exported_deepfm):
    from ctrkit.inference import capabilities

    model = os.path.join(exported_deepfm, "serving_server")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    cases = [(["--model", "/nonexistent/model"], "does not exist"),
             (["--model", model, "--use_trt"], "--use_trt needs --use_gpu"),
             (["--model", model, "--port", str(busy.getsockname()[1])], "cannot bind")]
    if not capabilities()["cuda"]:
        cases.append((["--model", model, "--use_gpu"], "CPU-only build"))
    try:
        for flags, text in cases:
            proc = subprocess.run([sys.executable, "-m", "serving.rpc", *flags], capture_output=True, text=True,
                                  timeout=120, cwd=REPO_ROOT)
            assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, \
                (flags, proc.stderr[-2000:])
    finally:
        busy.close()


def test_rec_client_takes_paddlerec_flags(server, exported_deepfm, slot_sample, local, rows, tmp_path):
    output = tmp_path / "web.txt"
    server_dir = os.path.join(exported_deepfm, "serving_server")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "rec_client.py"), "--client_config",
                           os.path.join(exported_deepfm, "serving_client"), "--connect",
                           f"127.0.0.1:{server.http_port}", "--data_dir", slot_sample, "--batchsize", "16",
                           "--client_mode", "web", "--reader_file", "criteo_reader.py", "--model_name", "deepfm",
                           "--use_gpu", "False", "--model_file", os.path.join(server_dir, "tostatic.json"),
                           "--params_file", os.path.join(server_dir, "tostatic.pdiparams"), "--verify", "--quiet",
                           "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3 and any("--client_mode web" in w for w in warnings), proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "http" and summary["samples"] == 80 and summary["mismatches"] == 0
    np.testing.assert_allclose(np.loadtxt(output, dtype=np.float32), local.predict(*rows), atol=1e-6)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "rec_client.py"), "--client_config",
                           os.path.join(exported_deepfm, "serving_client"), "--data_dir", slot_sample,
                           "--model_file", os.path.join(server_dir, "tostatic.pdmodel")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Paddle 3 exports write <prefix>.json" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
