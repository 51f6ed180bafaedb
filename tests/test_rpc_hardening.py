"""serving.rpc against hostile and unusual input (issue 12) and its other request layouts and backends:
deep JSON, huge integers, per-field feeds (PaddleRec's layout), slow-loris connections, the memory budget for
concurrent large requests, Paddle Serving's server flags, and the ONNX Runtime / constant backends."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from serving.rpc import protocol as P
from serving.rpc.client import ServingClient, read_feed_layout
from rpc_helpers import MODES, REPO_ROOT, RpcServer, grpc_call, json_request, proto_request
from rpc_helpers import local, rows  # noqa: F401 (fixtures)

URL_PATH = "/GeneralModelService/inference"


@pytest.fixture(scope="module")
def server(exported_deepfm, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("rpc-hard") / "server.log")
    srv = RpcServer(os.path.join(exported_deepfm, "serving_server"), log, "--max_body_mb", "1", "--max_decode_mb",
                    "20", "--http_idle_timeout_s", "3", "--http_read_timeout_s", "3")
    yield srv
    assert srv.stop() == 0, srv.log()
    assert "Traceback" not in srv.log()


def per_field_json(dense: np.ndarray, sparse: np.ndarray) -> dict:
    tensors = [{"alias_name": "dense_input", "elem_type": 1, "shape": list(dense.shape),
                "float_data": dense.ravel().tolist()}]
    tensors += [{"alias_name": f"C{i + 1}", "elem_type": 0, "shape": [len(sparse), 1],
                 "int64_data": sparse[:, i].tolist()} for i in range(sparse.shape[1])]
    return {"tensor": tensors, "fetch_var_names": ["prob"]}


def post(server: RpcServer, body, **headers) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url + URL_PATH, data=data, headers=headers, timeout=60)


# ------------------------------------------------------------------------------------------ bad JSON
def test_deep_and_huge_json_are_clear_errors(server, rows, local):
    cases = {
        "nested arrays": b"[" * 100_000 + b"]" * 100_000,
        "nested objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "nested in a tensor": json.dumps({"tensor": [{"alias_name": "dense_input", "elem_type": 1, "shape": [1, 13],
                                                       "float_data": []}]}).encode().replace(
            b'"float_data": []', b'"float_data": ' + b"[" * 5000 + b"]" * 5000),
        "thousand-digit id": json.dumps(json_request(rows[0][:1], rows[1][:1])).encode().replace(
            str(int(rows[1][0, 0])).encode(), b"9" * 5000, 1),
        "huge log_id": json.dumps({**json_request(rows[0][:1], rows[1][:1]), "log_id": 10 ** 30}).encode(),
    }
    for name, body in cases.items():
        r = post(server, body, **{"Content-Type": "application/json"})
        assert r.status_code == 400, (name, r.status_code, r.text[:300])
        assert r.json()["err_no"] in (P.BAD_REQUEST.err_no, P.WRONG_SHAPE.err_no, P.WRONG_DTYPE.err_no), name
    r = post(server, json_request(rows[0][:2], rows[1][:2]))
    np.testing.assert_allclose(r.json()["outputs"][0]["tensor"][0]["float_data"], local.predict(rows[0][:2],
                                                                                                rows[1][:2]),
                               atol=1e-6)


# ----------------------------------------------------------------------------------- per-field feeds
def test_per_field_feeds_equal_packed(server, exported_deepfm, rows, local, slot_sample):
    dense, sparse = rows[0][:5], rows[1][:5]
    expected = local.predict(dense, sparse)
    r = post(server, per_field_json(dense, sparse))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["tensor"][0]["float_data"], expected, atol=1e-6)
    layout = read_feed_layout(os.path.join(exported_deepfm, "serving_client"))
    assert not layout.packed and [v.alias for v in layout.sparse][:2] == ["C1", "C2"]
    for mode in MODES:  # the client sends what the client config declares: per field
        port = server.grpc_port if mode == "rpc" else server.http_port
        c = ServingClient(layout, f"127.0.0.1:{port}", mode)
        np.testing.assert_allclose(c.predict(dense, sparse), expected, atol=1e-6)
        c.close()
    # packed feeds (today's clients) keep working on the same server; rec_client.py --packed sends them
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "rec_client.py"), "--client_config",
                           os.path.join(exported_deepfm, "serving_client"), "--connect", f"127.0.0.1:{server.grpc_port}",
                           "--data_dir", slot_sample,
                           "--batchsize", "8", "--packed", "--verify", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["mismatches"] == 0, proc.stderr[-2000:]
    r = post(server, proto_request(dense, sparse).SerializeToString(), **{"Content-Type": "application/proto"})
    np.testing.assert_allclose(P.Response.FromString(r.content).outputs[0].tensor[0].float_data, expected, atol=1e-6)


def test_per_field_errors_name_the_field(server, rows):
    dense, sparse = rows[0][:3], rows[1][:3].copy()
    sparse[2, 3] = 1000001
    r = post(server, per_field_json(dense, sparse))
    assert r.status_code == 400 and r.json()["err_no"] == P.OUT_OF_RANGE.err_no
    assert "'C4' [2, 0] = 1000001" in r.json()["err_msg"], r.json()
    body = per_field_json(dense, rows[1][:3])
    del body["tensor"][5]
    r = post(server, body)
    assert r.json()["err_no"] == P.MISSING_FEED.err_no and "C5" in r.json()["err_msg"]
    body = per_field_json(dense, rows[1][:3])
    body["tensor"].append(json_request(dense, rows[1][:3])["tensor"][1])
    r = post(server, body)
    assert r.json()["err_no"] == P.UNKNOWN_NAME.err_no and "one or the other" in r.json()["err_msg"]
    body = per_field_json(dense, rows[1][:3])
    body["tensor"][1]["shape"] = [3, 2]
    r = post(server, body)
    assert r.json()["err_no"] == P.WRONG_SHAPE.err_no and "'C1' needs shape [B, 1]" in r.json()["err_msg"]


# -------------------------------------------------------------------------------------- slow loris
def test_trickling_connections_neither_block_nor_stay(server, rows, local):
    """64 connections that trickle header bytes: good requests keep being answered meanwhile, and each
    trickler is closed once its header-read time (the idle timeout, 3 s here) is spent, trickle or not."""
    socks = []
    for _ in range(64):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        s.sendall(b"POST " + URL_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    closed: list[float] = []
    start = time.monotonic()

    def trickle(s: socket.socket) -> None:
        try:
            for _ in range(60):  # one byte every 0.5 s, for up to 30 s
                s.sendall(b"X")
                time.sleep(0.5)
        except OSError:
            closed.append(time.monotonic() - start)
            return

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    dense, sparse = rows[0][:2], rows[1][:2]
    for _ in range(10):
        r = post(server, json_request(dense, sparse))
        assert r.status_code == 200
    for t in threads:
        t.join(60)
    for s in socks:
        s.close()
    assert len(closed) == 64, f"{64 - len(closed)} trickling connections were never closed"
    assert max(closed) < 29  # closed by the server's bound, not by the trickle ending


# ---------------------------------------------------------------------------------------- memory budget
def test_body_limits_and_budget(server, rows):
    r = post(server, b" " * (2 << 20), **{"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["err_no"] == P.TOO_LARGE.err_no
    # 0.9 MiB JSON bodies reserve 18 MiB of the 20 MiB decode budget: concurrent ones wait for each other
    body = json.dumps(json_request(rows[0][:1], rows[1][:1])).encode() + b" " * (900 << 10)
    answers: list[int] = []

    def send(_: int) -> None:
        answers.append(post(server, body, **{"Content-Type": "application/json"}).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(answers) <= {200, 413} and 200 in answers, answers
    assert post(server, json_request(rows[0][:1], rows[1][:1])).status_code == 200


# -------------------------------------------------------------------------------- Paddle Serving's flags
def test_paddle_serving_flags(exported_deepfm, rows, local, tmp_path):
    workdir = tmp_path / "workdir"
    srv = RpcServer(os.path.join(exported_deepfm, "serving_server"), str(tmp_path / "flags.log"), "--thread", "4",
                    "--ir_optim", "--mem_optim_off", "--workdir", str(workdir), "--gpu_ids", "0", "--precision",
                    "FP32", "--runtime_thread_num", "1", "--batch_infer_size", "32", "--device", "cpu",
                    "--enable_prometheus", "--use_mkl", "False")
    try:
        answer, code, _, _ = grpc_call(srv.channel(), proto_request(rows[0][:3], rows[1][:3]).SerializeToString())
        np.testing.assert_allclose(answer.outputs[0].tensor[0].float_data, local.predict(rows[0][:3], rows[1][:3]),
                                   atol=1e-6)
    finally:
        assert srv.stop() == 0, srv.log()


@pytest.mark.parametrize("flags,text", [
    (["--op", "GeneralReaderOp"], "--op: Paddle Serving's op pipelines"),
    (["--use_lite"], "--use_lite: Paddle Lite"),
    (["--use_xpu"], "Kunlun XPU"),
    (["--prometheus_port", "9000"], "GET /metrics"),
    (["--precision", "fp16"], "--precision fp16 needs --use_trt"),
    (["--precision", "bf16"], "precision must be one of"),
    (["--gpu_ids", "0,1"], "one GPU id per process"),
    (["--backend", "onnxruntime", "--use_mkl"], "cannot honour --enable_mkldnn"),
    (["--memory_optim", "--mem_optim_off"], "contradict"),
])
def test_refused_flags_are_one_line(exported_deepfm, flags, text):
    proc = subprocess.run([sys.executable, "-m", "serving.rpc", "--model",
                           os.path.join(exported_deepfm, "serving_server"), "--port", "0", *flags],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-1500:]


# -------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("backend", ["onnxruntime", "constant"])
def test_other_backends(exported_deepfm, rows, local, tmp_path, backend):
    # the export directory: model.onnx sits there, next to serving_server/
    srv = RpcServer(exported_deepfm, str(tmp_path / f"{backend}.log"), "--backend", backend)
    try:
        dense, sparse = rows[0][:16], rows[1][:16]
        r = post(srv, json_request(dense, sparse))
        got = np.asarray(r.json()["outputs"][0]["tensor"][0]["float_data"], dtype=np.float32)
        if backend == "constant":
            np.testing.assert_array_equal(got, np.full(16, 0.5, dtype=np.float32))
        else:
            np.testing.assert_allclose(got, local.predict(dense, sparse), atol=1e-5)
        assert requests.get(srv.url + "/ready", timeout=10).json()["backend"] == backend
        assert srv.metric("ctrkit_runtime_requests_total", f'backend="{backend}"') >= 1
        bad = sparse.copy()
        bad[0, 0] = -1
        r = post(srv, json_request(dense, bad))
        assert r.json()["err_no"] == P.OUT_OF_RANGE.err_no  # validation is the runtime's, for every backend
    finally:
        assert srv.stop() == 0, srv.log()


def test_bad_requests_while_good_ones_flow(server, exported_deepfm, rows, local):
    """Good clients on every transport keep getting right answers while bad requests arrive between them."""
    dense, sparse = rows[0][:4], rows[1][:4]
    expected = local.predict(dense, sparse)
    layout = read_feed_layout(os.path.join(exported_deepfm, "serving_client"))
    stop = threading.Event()
    good: list[int] = []
    failures: list[str] = []

    def load(i: int) -> None:
        mode = MODES[i % 3]
        c = server.client(layout, mode)
        while not stop.is_set():
            try:
                got = c.predict(dense, sparse)
                if not np.allclose(got, expected, atol=1e-6):
                    failures.append(f"{mode}: wrong answer {got}")
                good.append(1)
            except Exception as e:  # noqa: BLE001 - any failure of a good request fails the test
                failures.append(f"{mode}: {e}")
        c.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    bad = sparse.copy()
    bad[0, 0] = -5
    nan = dense.copy()
    nan[1, 1] = np.nan
    bodies = [(b"[" * 50_000, "application/json"), (b"\x0a\xff\xff garbage", "application/proto"),
              (json.dumps(json_request(dense, bad)).encode(), "application/json"),
              (proto_request(nan, sparse).SerializeToString(), "application/proto"),
              (json.dumps(per_field_json(dense, sparse)).encode()[:-40], "application/json")]
    try:
        for _ in range(5):
            for body, content_type in bodies:
                r = post(server, body, **{"Content-Type": content_type})
                assert 400 <= r.status_code < 500, r.status_code
            grpc_call(server.channel(), b"\x0a\xff\xff garbage")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [] and len(good) >= 3
