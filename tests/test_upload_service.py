"""The upload service end to end: a real `python -m serving.upload` (waitress) on loopback, a real
redis-server, the real Criteo samples, and predictions checked against a local predictor built by the
same factory."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time

import numpy as np
import psutil
import pytest
import redis
import requests

from ctrkit.data import parse_lines
from ctrkit.inference import PredictorOptions, create_predictor, load_exported_model
from serving.upload.settings import parse_settings
from upload_helpers import RedisServer, UploadServer

TTL_S = 300
MAX_UPLOAD_MB = 30
ATOL = 1e-5


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def service(exported_deepfm, redis_server, upload_dir, tmp_path_factory):
    """Two worker processes; flags for some settings, environment variables for others (both must work)."""
    log_path = str(tmp_path_factory.mktemp("upload-log") / "server.log")
    server = UploadServer(exported_deepfm, log_path, "--workers", "2", "--redis_url", redis_server.url,
                          "--upload_dir", upload_dir,
                          env={"CTR_UPLOAD_REDIS_TTL": str(TTL_S), "CTR_UPLOAD_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)})
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def predict_local(exported_deepfm):
    """Reference predictions: the whole file parsed at once, the same predictor configuration as the server."""
    spec = load_exported_model(exported_deepfm).feature_spec
    predictor = create_predictor(exported_deepfm, PredictorOptions())  # the service's default: oneDNN off

    def predict(lines: list[bytes]) -> np.ndarray:
        batch = parse_lines(lines, spec).batch
        return predictor.predict(batch.dense, batch.sparse)

    return predict


def read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.readlines()


def post(service, content: bytes, filename: str = "data.txt", **params) -> requests.Response:
    response = requests.post(service.url + "/upload", params=params, files={"file": (filename, content)},
                             timeout=120)
    return checked_json(response)


def checked_json(response: requests.Response) -> requests.Response:
    """Every answer: JSON content type, a body with `code` equal to the HTTP status, no traceback."""
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    assert response.json()["code"] == response.status_code
    assert "Traceback" not in response.text
    return response


def ranking(probs: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Expected (1-based line numbers, scores) of the k best: score descending, earlier line first on ties."""
    order = np.lexsort((np.arange(len(probs)), -probs))[:k]
    return (order + 1).tolist(), probs[order]


def scores(answer: dict) -> np.ndarray:
    assert all(len(row) == 1 for row in answer["data"])
    return np.array([row[0] for row in answer["data"]])


@pytest.fixture(scope="module")
def raw_5000(tmp_path_factory, raw_sample) -> str:
    """5000 lines (the raw sample 50 times): three server batches of 2048."""
    path = tmp_path_factory.mktemp("data") / "raw_5000.txt"
    path.write_bytes(b"".join(read_lines(raw_sample)) * 50)
    return str(path)


# ------------------------------------------------------------------------------------------------- json mode

@pytest.mark.parametrize("sample", ["slot_sample", "raw_sample"])
def test_full_predictions_match_local_predictor(service, predict_local, sample, request):
    lines = read_lines(request.getfixturevalue(sample))
    answer = post(service, b"".join(lines), user_id="11", full="true").json()
    assert answer["user_id"] == "11" and answer["dtype"] == "float32" and answer["count"] == len(lines)
    assert "index" not in answer
    np.testing.assert_allclose(scores(answer), predict_local(lines), atol=ATOL)


@pytest.mark.parametrize("sample", ["slot_sample", "raw_sample"])
def test_top_k_ranking(service, predict_local, sample, request):
    lines = read_lines(request.getfixturevalue(sample))
    answer = post(service, b"".join(lines), user_id="u-1", top_k="7").json()
    expected_lines, expected_scores = ranking(predict_local(lines), 7)
    assert answer["count"] == len(lines)
    assert answer["index"] == expected_lines
    np.testing.assert_allclose(scores(answer), expected_scores, atol=ATOL)
    default = post(service, b"".join(lines), user_id="u-1").json()  # full=false, top_k=10 by default
    assert default["index"] == ranking(predict_local(lines), 10)[0]


def test_last_line_without_newline(service, slot_sample, predict_local):
    lines = read_lines(slot_sample)
    answer = post(service, b"".join(lines).rstrip(b"\n"), user_id="nl", full="true").json()
    assert answer["count"] == len(lines)
    np.testing.assert_allclose(scores(answer), predict_local(lines), atol=ATOL)


def test_parameters_as_form_fields(service, slot_sample, predict_local):
    lines = read_lines(slot_sample)
    response = checked_json(requests.post(
        service.url + "/upload", data={"user_id": "form_user", "full": "1", "debug": "yes"},
        files={"file": ("x.txt", b"".join(lines))}, timeout=60))
    answer = response.json()
    assert answer["user_id"] == "form_user" and len(answer["data"]) == len(lines) and "debug" in answer


def test_debug_timings(service, slot_sample):
    answer = post(service, open(slot_sample, "rb").read(), user_id="d", debug="true").json()
    timing = answer["debug"]
    assert set(timing) == {"parse_ms", "inference_ms", "store_ms", "total_ms", "model_version"}
    assert all(v >= 0 for v in timing.values()) and timing["model_version"] == 0
    # parsing runs in a background thread, overlapping inference: each stage fits in the total, not their sum
    assert timing["total_ms"] >= max(timing["parse_ms"], timing["inference_ms"]) - 0.01
    assert "debug" not in post(service, open(slot_sample, "rb").read(), user_id="d").json()


@pytest.mark.slow
def test_lines_across_batches_and_a_100k_line_file(service, raw_sample, predict_local, tmp_path):
    """100,000 lines (the raw sample 1000 times): every line's prediction in order, and the top-k picks the
    best base row's copies in file order (ties go to the earlier line)."""
    base_lines = read_lines(raw_sample)
    base = predict_local(base_lines)
    assert np.sum(base == base.max()) == 1
    content = b"".join(base_lines) * 1000
    full = post(service, content, user_id="big", full="true").json()
    assert full["count"] == 100_000
    np.testing.assert_allclose(scores(full), np.tile(base, 1000), atol=ATOL)
    top = post(service, content, user_id="big", top_k="5").json()
    best = int(np.argmax(base)) + 1
    assert top["index"] == [best + 100 * i for i in range(5)]
    np.testing.assert_allclose(scores(top), [base.max()] * 5, atol=ATOL)


def worker_processes(server: UploadServer) -> list[psutil.Process]:
    """The supervisor's live worker processes."""
    workers = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "--worker" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                workers.append(child)
        except psutil.Error:  # exited meanwhile
            pass
    return workers


def test_two_worker_processes_serve(service):
    workers = worker_processes(service)
    assert len(workers) == 2
    pids = {checked_json(requests.get(service.url + "/ready", timeout=30)).json()["pid"] for _ in range(20)}
    assert pids <= {w.pid for w in workers}


def test_eight_concurrent_uploads(service, slot_sample, raw_sample, predict_local):
    """Eight different files at once (rotations of both samples); each answer belongs to its own file."""
    files = []
    for i in range(8):
        lines = read_lines(slot_sample if i % 2 else raw_sample)
        files.append(lines[7 * i:] + lines[:7 * i])

    def upload(i: int) -> dict:
        return post(service, b"".join(files[i]), user_id=f"c{i}", full="true").json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(upload, range(8)))
    for i, answer in enumerate(answers):
        assert answer["user_id"] == f"c{i}" and answer["count"] == len(files[i])
        np.testing.assert_allclose(scores(answer), predict_local(files[i]), atol=ATOL)


# ------------------------------------------------------------------------------------------------ redis mode

def test_redis_mode_stores_ranking_and_reads_it_back(service, redis_server, raw_5000, predict_local):
    lines = read_lines(raw_5000)
    expected = predict_local(lines)
    answer = post(service, b"".join(lines), user_id="r1", re_model="redis").json()
    key = "ctr:deepfm:r1"
    assert answer == {"code": 200, "user_id": "r1", "count": 5000, "re_model": "redis", "key": key,
                      "stored": 5000, "ttl_s": TTL_S}
    client = redis.Redis(port=redis_server.port)
    stored = {int(member): score for member, score in client.zrange(key, 0, -1, withscores=True)}
    assert sorted(stored) == list(range(1, 5001))
    np.testing.assert_allclose([stored[n] for n in range(1, 5001)], expected, atol=ATOL)
    assert 0 < client.ttl(key) <= TTL_S

    result = checked_json(requests.get(service.url + "/result/r1", params={"top_k": 3}, timeout=30)).json()
    assert result["key"] == key and result["count"] == 5000 and len(result["index"]) == 3
    top_scores = np.sort(expected)[::-1][:3]
    np.testing.assert_allclose(scores(result), top_scores, atol=ATOL)
    for line, score in zip(result["index"], scores(result)):
        assert abs(expected[line - 1] - score) <= ATOL


def test_redis_upload_is_atomic(service, redis_server, raw_5000, slot_sample):
    """A file that turns out malformed in its third batch stores nothing: the previous ranking stays whole."""
    client = redis.Redis(port=redis_server.port)
    assert post(service, open(slot_sample, "rb").read(), user_id="atomic", re_model="redis").status_code == 200
    lines = read_lines(raw_5000)
    lines[4320] = b"not a criteo line\n"
    response = post(service, b"".join(lines), user_id="atomic", re_model="redis")
    assert response.status_code == 400 and response.json()["msg"].startswith("line 4321:")
    assert client.zcard("ctr:deepfm:atomic") == 80
    assert client.keys("*partial*") == []


def test_result_errors(service):
    missing = checked_json(requests.get(service.url + "/result/nobody", timeout=30))
    assert missing.status_code == 404 and "ctr:deepfm:nobody" in missing.json()["msg"]
    for url, params in [("/result/bad.id", {}), ("/result/x", {"top_k": "ten"}), ("/result/x", {"k": "1"})]:
        assert checked_json(requests.get(service.url + url, params=params, timeout=30)).status_code == 400


def test_redis_unreachable_is_503_and_json_mode_keeps_working(service, redis_server, slot_sample):
    content = open(slot_sample, "rb").read()
    redis_server.stop()
    try:
        response = post(service, content, user_id="down", re_model="redis")
        assert response.status_code == 503 and "unreachable" in response.json()["msg"]
        assert checked_json(requests.get(service.url + "/result/down", timeout=30)).status_code == 503
        assert post(service, content, user_id="down").status_code == 200
        assert checked_json(requests.get(service.url + "/ready", timeout=30)).json()["redis"] == "unreachable"
    finally:
        redis_server.start()
    assert post(service, content, user_id="down", re_model="redis").status_code == 200  # reconnects


# ------------------------------------------------------------------------------------------------------ save

def test_save_keeps_upload_under_a_server_chosen_name(service, upload_dir, slot_sample):
    content = open(slot_sample, "rb").read()
    before = set(os.listdir(upload_dir))
    assert post(service, content, filename="../../evil.txt", user_id="s").status_code == 200
    assert set(os.listdir(upload_dir)) == before  # save=false keeps nothing
    answer = post(service, content, filename="../../evil.txt", user_id="s", save="true").json()
    name = answer["saved_as"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{32}\.txt", name)
    assert set(os.listdir(upload_dir)) == before | {name}
    with open(os.path.join(upload_dir, name), "rb") as f:
        assert f.read() == content
    assert not os.path.exists(os.path.join(os.path.dirname(upload_dir), "evil.txt"))
    bad = post(service, content + b"oops\n", user_id="s", save="true")
    assert bad.status_code == 400
    assert set(os.listdir(upload_dir)) == before | {name}  # a rejected upload is not kept


def test_server_side_failure_is_json_500_without_traceback(service, upload_dir, slot_sample):
    """An unusable upload directory (a file stands in its way) is the server's problem: 500, details only
    in the server log."""
    hidden = upload_dir + ".hidden"
    os.rename(upload_dir, hidden)
    try:
        open(upload_dir, "w").close()
        response = post(service, open(slot_sample, "rb").read(), user_id="s", save="true")
    finally:
        os.unlink(upload_dir)
        os.rename(hidden, upload_dir)
    assert response.status_code == 500
    assert response.json()["msg"] == "internal server error (details are in the server log)"
    assert "Traceback" in service.log() and "FileExistsError" in service.log()


# ---------------------------------------------------------------------------------------------- bad requests

@pytest.mark.parametrize("params, reason", [
    ({}, "missing parameter 'user_id'"),
    ({"user_id": "a b"}, "user_id must be"),
    ({"user_id": "x" * 65}, "user_id must be"),
    ({"user_id": "a", "full": "maybe"}, "parameter 'full'"),
    ({"user_id": "a", "save": "2"}, "parameter 'save'"),
    ({"user_id": "a", "re_model": "xml"}, "re_model must be"),
    ({"user_id": "a", "top_k": "0"}, "top_k must be"),
    ({"user_id": "a", "top_k": "10001"}, "top_k must be"),
    ({"user_id": "a", "top_k": "-3"}, "top_k must be"),
    ({"user_id": "a", "ful": "true"}, "unknown parameter(s) ['ful']"),
])
def test_bad_parameters(service, slot_sample, params, reason):
    response = post(service, open(slot_sample, "rb").read(), **params)
    assert response.status_code == 400 and reason in response.json()["msg"]


def test_missing_or_extra_file(service, slot_sample):
    url = service.url + "/upload"
    content = open(slot_sample, "rb").read()
    cases = [
        requests.post(url, params={"user_id": "a"}, timeout=30),
        requests.post(url, params={"user_id": "a"}, data={"file": "not a file part"}, timeout=30),
        requests.post(url, params={"user_id": "a"}, files=[("file", ("a", content)), ("file", ("b", content))],
                      timeout=30),
        requests.post(url, params={"user_id": "a"}, files={"upload": ("a", content)}, timeout=30),
    ]
    for response in cases:
        assert checked_json(response).status_code == 400
    assert "missing file" in cases[0].json()["msg"]
    assert "exactly one file" in cases[2].json()["msg"]


@pytest.mark.parametrize("line_number, replacement, reason", [
    (1, b"hello world\n", ""),
    (37, b"\n", "blank line"),
    (4321, b"1\t2\t3\n", ""),
    (5000, b"\xff\xfe\x00garbage\n", ""),
])
def test_malformed_line_names_its_number(service, raw_5000, line_number, replacement, reason):
    lines = read_lines(raw_5000)
    lines[line_number - 1] = replacement
    response = post(service, b"".join(lines), user_id="m")
    assert response.status_code == 400
    assert response.json()["msg"].startswith(f"line {line_number}: {reason}")


def test_format_must_not_change_within_a_file(service, raw_5000, slot_sample):
    """The first batch fixes the format: a later batch of slot lines after 4096 raw lines is an error."""
    content = b"".join(read_lines(raw_5000)[:4096]) + open(slot_sample, "rb").read()
    response = post(service, content, user_id="m")
    assert response.status_code == 400
    assert response.json()["msg"].startswith("line 4097: this line is slot format")
    assert "a file must keep one format" in response.json()["msg"]


def test_empty_file(service):
    response = post(service, b"", user_id="e")
    assert response.status_code == 400 and "empty" in response.json()["msg"]


def test_upload_over_the_size_limit_is_json_413(service):
    content = b"x" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    response = post(service, content, user_id="big")
    assert response.status_code == 413 and f"{MAX_UPLOAD_MB} MiB" in response.json()["msg"]

    def chunks():  # no Content-Length: waitress counts the bytes as they come
        for _ in range(MAX_UPLOAD_MB + 1):
            yield b"y" * (1024 * 1024)

    chunked = requests.post(service.url + "/upload?user_id=big", data=chunks(),
                            headers={"Content-Type": "multipart/form-data; boundary=zzz"}, timeout=60)
    assert checked_json(chunked).status_code == 413


def test_other_routes_and_methods_are_json(service):
    assert checked_json(requests.get(service.url + "/health", timeout=10)).json()["status"] == "ok"
    ready = checked_json(requests.get(service.url + "/ready", timeout=10)).json()
    assert ready["model"] == "deepfm" and ready["redis"] == "ok"
    assert checked_json(requests.get(service.url + "/nothing", timeout=10)).status_code == 404
    assert checked_json(requests.get(service.url + "/upload", timeout=10)).status_code == 405
    assert checked_json(requests.post(service.url + "/upload", json={"user_id": "a"}, timeout=10)).status_code == 400


def test_malformed_http_is_answered_in_json(service):
    """Requests waitress itself rejects, before the app, still get a JSON answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"code": 400, "msg": "Bad Request: Content-Length is invalid"}


# ------------------------------------------------------------------------------------------------- settings

def test_settings_from_flags_and_environment(monkeypatch, capsys):
    monkeypatch.setenv("CTR_UPLOAD_PORT", "9000")
    monkeypatch.setenv("CTR_UPLOAD_REDIS_TTL", "60")
    monkeypatch.setenv("CTR_UPLOAD_BACKEND", "onnxruntime")
    monkeypatch.setenv("CTR_UPLOAD_CPU_THREADS", "2")
    settings = parse_settings(["--model", "m", "--port", "9100"])
    assert (settings.port, settings.redis_ttl, settings.host) == (9100, 60, "127.0.0.1")
    assert (settings.runtime.backend, settings.runtime.predictor.cpu_threads) == ("onnxruntime", 2)
    monkeypatch.delenv("CTR_UPLOAD_BACKEND")
    monkeypatch.delenv("CTR_UPLOAD_CPU_THREADS")
    # the runtime's flags, shared by every server and tool (and this service's old spellings)
    settings = parse_settings(["--model", "m", "--enable_mkldnn", "--cpu_threads", "2", "--batch_size", "8192"])
    assert settings.runtime.predictor.onednn and settings.runtime.predictor.cpu_threads == 2
    assert settings.runtime.batching.max_request_batch >= 8192  # the service's chunks fit the runtime's limit
    assert parse_settings(["--model", "m", "--onednn", "true"]).runtime.predictor.onednn
    assert parse_settings(["--model", "m", "--device", "gpu"]).runtime.predictor.device == "gpu"
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--backend", "onnxruntime", "--enable_mkldnn"])
    assert "--backend onnxruntime cannot honour --enable_mkldnn" in capsys.readouterr().err
    monkeypatch.setenv("CTR_UPLOAD_WORKERS", "zero")
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m"])
    assert "--workers: expected int, got 'zero' (from CTR_UPLOAD_WORKERS)" in capsys.readouterr().err
    monkeypatch.delenv("CTR_UPLOAD_WORKERS")
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--redis_url", "http://127.0.0.1:6379"])
    assert "--redis_url must be a redis://" in capsys.readouterr().err


def test_a_dying_worker_is_restarted(exported_deepfm, slot_sample, tmp_path):
    """The shared supervisor restarts a worker that dies; the service keeps answering meanwhile."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"), "--workers", "2")
    try:
        victim, survivor = worker_processes(server)
        victim.kill()
        # reaped: its last thread is gone, and with it its listening socket (connections it held are lost)
        wait_for(lambda: f"worker pid {victim.pid} exited" in server.log())
        content = open(slot_sample, "rb").read()
        assert post(server, content, user_id="alive").status_code == 200  # the survivor (or the new one) answers
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = worker_processes(server)
            if len(workers) == 2 and victim.pid not in {w.pid for w in workers} and "worker restarted" in server.log():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the dead worker was not replaced; log:\n{server.log()}")
        assert survivor.is_running() and server.proc.poll() is None
        assert all(post(server, content, user_id="again").status_code == 200 for _ in range(4))
    finally:
        status = server.stop()
    assert status == 0, server.log()


# ------------------------------------------------------------------------------------------- runtime features

def test_metrics_and_versions(service, slot_sample):
    post(service, open(slot_sample, "rb").read(), user_id="m1")
    response = requests.get(service.url + "/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    assert re.search(r'ctrkit_upload_http_requests_total\{code="200",route="/upload"\} [1-9]', text)
    assert re.search(r"ctrkit_upload_lines_total [1-9]", text)
    assert re.search(r'ctrkit_runtime_requests_total\{backend="paddle",result="ok",version="0"\} [1-9]', text)
    versions = checked_json(requests.get(service.url + "/versions", timeout=30)).json()
    assert versions["serving"] == 0 and versions["backend"] == "paddle"


def test_sigterm_drains_an_upload_in_flight(exported_deepfm, raw_5000, predict_local, tmp_path):
    """SIGTERM while an upload's body is still arriving: /ready turns 503, the upload is answered in full, the
    process exits 0."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"))
    lines = read_lines(raw_5000)
    half = len(lines) // 2
    resume = threading.Event()
    boundary = "drainboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\n").encode()

    sent = threading.Event()

    def body():
        yield head + b"".join(lines[:half])
        sent.set()  # (runs when the client asks for the next part: the first one is sent)
        resume.wait(60)
        yield b"".join(lines[half:]) + f"\r\n--{boundary}--\r\n".encode()

    session = requests.Session()
    assert session.get(server.url + "/ready", timeout=30).status_code == 200  # a kept-alive connection
    result = {}
    uploader = threading.Thread(target=lambda: result.update(response=requests.post(
        server.url + "/upload", params={"user_id": "drain", "full": "true"}, data=body(), timeout=120,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})))
    uploader.start()
    try:
        assert sent.wait(60)
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in server.log())
        ready = session.get(server.url + "/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
    finally:
        resume.set()
        uploader.join(120)
    response = checked_json(result["response"])
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(scores(response.json()), predict_local(lines), atol=ATOL)
    assert server.proc.wait(60) == 0, server.log()


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def second_model(export_model_dir) -> str:
    """Another DeepFM (different weights): what a hot swap brings in."""
    return export_model_dir("deepfm", fc_sizes=[32, 16])


def local_predictions(model_dir: str, lines: list[bytes]) -> np.ndarray:
    batch = parse_lines(lines, load_exported_model(model_dir).feature_spec).batch
    return create_predictor(model_dir, PredictorOptions()).predict(batch.dense, batch.sparse)


def test_hot_swap_under_load_on_onnxruntime(exported_deepfm, second_model, slot_sample, tmp_path):
    """--backend onnxruntime gives the same predictions as Paddle; a new version dropped into the model directory
    is swapped in while uploads keep coming: no request fails, each answer is wholly one version's (the
    X-Model-Version header); a broken version is refused and the served one stays."""
    root = tmp_path / "versions"
    root.mkdir()
    shutil.copytree(exported_deepfm, root / "1")
    lines = read_lines(slot_sample)
    expected = {1: local_predictions(exported_deepfm, lines), 2: local_predictions(second_model, lines)}
    assert np.abs(expected[1] - expected[2]).max() > 1e-3
    server = UploadServer(str(root), str(tmp_path / "server.log"), "--backend", "onnxruntime",
                          "--version_poll_s", "0.2", "--threads", "4")
    stop, failures, seen, per_client = threading.Event(), [], [], [[] for _ in range(3)]

    def load(i: int):
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(server.url + "/upload", params={"user_id": "swap", "full": "true"},
                                        files={"file": ("d.txt", b"".join(lines))}, timeout=60)
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                version = int(response.headers["X-Model-Version"])
                seen.append(version)
                per_client[i].append(version)
                if np.abs(scores(response.json()) - expected[version]).max() > ATOL:
                    failures.append(f"version {version}: predictions differ")

    clients = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    try:
        for client in clients:
            client.start()
        wait_for(lambda: len(seen) >= 3)
        shutil.copytree(second_model, tmp_path / "staging")
        os.rename(tmp_path / "staging", root / "2")  # appears whole
        wait_for(lambda: seen and seen[-1] == 2, timeout_s=120)
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 3)
        broken = tmp_path / "broken"
        shutil.copytree(second_model, broken)
        meta = json.loads((broken / "model_meta.json").read_text())
        meta["golden"]["prob"][0] += 0.5
        (broken / "model_meta.json").write_text(json.dumps(meta))
        os.rename(broken, root / "3")
        wait_for(lambda: "3" in requests.get(server.url + "/versions", timeout=30).json()["refused"],
                 timeout_s=120)
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 3)
    finally:
        stop.set()
        for client in clients:
            client.join(120)
        status = server.stop()
    assert failures == [] and status == 0
    assert seen[0] == 1 and seen[-1] == 2 and 3 not in seen
    assert all(versions == sorted(versions) for versions in per_client)  # once swapped, never back


# ---------------------------------------------------------------------------------------------- hardening

def test_unicode_digit_top_k_and_huge_ids_are_400(service, slot_sample):
    content = open(slot_sample, "rb").read()
    for top_k in ("²", "٣", "１０", "1" * 50):
        response = post(service, content, user_id="u", top_k=top_k)
        assert response.status_code == 400 and "top_k must be" in response.json()["msg"]
    assert checked_json(requests.get(service.url + "/result/x", params={"top_k": "²"}, timeout=30)).status_code == 400
    lines = read_lines(slot_sample)
    lines[9] = re.sub(rb" 5:\d+ ", b" 5:" + b"9" * 5000 + b" ", lines[9])
    response = post(service, b"".join(lines), user_id="u")
    assert response.status_code == 400 and response.json()["msg"].startswith("line 10: ")
    raw = "\t".join(["1"] + ["9" * 5000] * 13 + ["a"] * 26) + "\n"
    response = post(service, raw.encode(), user_id="u")
    assert response.status_code == 400 and response.json()["msg"].startswith("line 1: ")


def test_bad_requests_get_4xx_while_good_ones_keep_flowing(service, slot_sample, predict_local):
    lines = read_lines(slot_sample)
    good, expected = b"".join(lines), predict_local(lines)
    bad_cases = [({"user_id": "a b"}, good), ({"user_id": "u", "top_k": "²"}, good),
                 ({"user_id": "u"}, good + b"garbage\n"), ({"user_id": "u"}, b""),
                 ({"user_id": "u", "full": "perhaps"}, good)]

    def good_upload(_):
        response = post(service, good, user_id="good", full="true")
        return response.status_code == 200 and np.abs(scores(response.json()) - expected).max() <= ATOL

    def bad_upload(i):
        params, content = bad_cases[i % len(bad_cases)]
        return post(service, content, **params).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        goods = pool.map(good_upload, range(12))
        bads = pool.map(bad_upload, range(15))
        assert all(goods)
        assert all(400 <= code < 500 for code in bads)


def _trickler(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(b"POST /upload?user_id=slow HTTP/1.1\r\nHost: x\r\n")
    return conn


@contextlib.contextmanager
def trickling(conns: list[socket.socket], every_s: float = 0.5):
    """One more byte on every connection every `every_s` (a 'byte every 20 s' attacker, sped up) until the block
    ends; then the connections are closed."""
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(every_s):
            for conn in conns:
                try:
                    conn.sendall(b"X")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        yield conns
    finally:
        stop.set()
        thread.join()
        for conn in conns:
            conn.close()


def good_upload(url: str, sample: str, timeout: float = 30) -> None:
    response = requests.post(url + "/upload", params={"user_id": "good"},
                             files={"file": ("d.txt", open(sample, "rb").read())}, timeout=timeout)
    assert response.status_code == 200


def test_slow_header_clients_do_not_deny_good_ones(service, slot_sample):
    """101 connections trickling their headers (more than waitress's default connection limit of 100) while
    good clients upload: every good upload is answered."""
    with trickling([_trickler(service.port) for _ in range(101)]):
        for _ in range(3):
            good_upload(service.url, slot_sample)


def test_header_timeout_closes_tricklers_and_frees_the_connection_limit(exported_deepfm, slot_sample, tmp_path):
    """With a connection limit of 8, 12 trickling connections fill it; each is closed once its headers are
    --header_timeout_s late however often it sends a byte, and a good client then gets through."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"), "--max_connections", "8",
                          "--header_timeout_s", "1")
    try:
        with trickling([_trickler(server.port) for _ in range(12)]) as conns:
            good_upload(server.url, slot_sample, timeout=60)
            for conn in conns[:8]:  # the accepted ones are disconnected (recv: b"" or a reset), not served
                try:
                    assert conn.recv(1024) == b""
                except ConnectionResetError:
                    pass
            assert "request headers not complete within 1 s" in server.log()
    finally:
        assert server.stop() == 0


def _body_trickler(port: int, content_length: int) -> socket.socket:
    """A request whose headers arrive at once and whose body then trickles."""
    boundary = "trickle"
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(f"POST /upload?user_id=slow HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n"
                 f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n--{boundary}\r\n".encode())
    return conn


def _read_answer(conn: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of the answer on `conn`, read until the server closes the connection."""
    reply = b""
    try:
        while chunk := conn.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_body_timeout_answers_408_without_holding_a_thread(exported_deepfm, slot_sample, tmp_path):
    """Bodies trickling a byte every 0.3 s on 6 connections to a server with ONE request thread: good uploads go
    through meanwhile (no thread waits for a slow body), and each trickler is answered 408 (JSON) and disconnected
    once its request is later than --body_timeout_s plus a second per --body_min_rate_kib KiB received."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"), "--threads", "1", "--body_timeout_s", "2",
                          "--body_min_rate_kib", "1")
    try:
        with trickling([_body_trickler(server.port, 100_000) for _ in range(6)], every_s=0.3) as conns:
            for _ in range(3):
                good_upload(server.url, slot_sample)
            for conn in conns:
                head, body = _read_answer(conn)
                assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head, head
                answer = json.loads(body)
                assert answer["code"] == 408 and "request body not received in time" in answer["msg"]
            assert "answering 408" in server.log()
            good_upload(server.url, slot_sample)
    finally:
        assert server.stop() == 0


def test_a_body_arriving_at_the_minimum_rate_is_not_cut_off(exported_deepfm, slot_sample, tmp_path):
    """--body_timeout_s 1 with --body_min_rate_kib 1: an upload whose body arrives over ~3 s, far above 1 KiB/s,
    is answered 200 (each KiB received extends the bound by a second)."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"), "--body_timeout_s", "1",
                          "--body_min_rate_kib", "1")
    lines = read_lines(slot_sample)
    boundary = "steady"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.txt\"\r\n\r\n".encode()
            + b"".join(lines) + f"\r\n--{boundary}--\r\n".encode())
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
            conn.sendall(f"POST /upload?user_id=steady HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                         f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n"
                         .encode())
            pieces = 6
            step = -(-len(body) // pieces)
            for i in range(pieces):
                conn.sendall(body[i * step:(i + 1) * step])
                time.sleep(0.5)
            head, answer = _read_answer(conn)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert json.loads(answer)["count"] == len(lines)
        assert "answering 408" not in server.log()
    finally:
        assert server.stop() == 0


def test_predictions_equal_paddle_infer(service, exported_deepfm, raw_5000, tmp_path):
    """The upload service and tools/paddle_infer.py share one lines -> predictions path: the same numbers."""
    import subprocess
    import sys

    from ctrkit.predictions import read_predictions
    from upload_helpers import REPO_ROOT

    out = tmp_path / "preds.txt"
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), "--model_dir",
                             exported_deepfm, "--data_dir", raw_5000, "--output", str(out), "--num_workers", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = post(service, open(raw_5000, "rb").read(), user_id="same", full="true").json()
    np.testing.assert_allclose(np.float32(scores(answer)), read_predictions(out), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> tuple[str, str]:
    """A DeepFM exported for the MovieLens-shaped schema of datasets/movielens/config.yaml (header CSV, no numeric
    field, a multi-valued `genres`), and 300 generated rows of it: (model dir, data file)."""
    import subprocess
    import sys

    import paddle

    import models  # noqa: F401  (registers the zoo)
    from ctrkit.config import load_config
    from ctrkit.export import export_model
    from ctrkit.zoo import build_model
    from upload_helpers import REPO_ROOT

    root = tmp_path_factory.mktemp("movielens")
    config_path = os.path.join(REPO_ROOT, "datasets", "movielens", "config.yaml")
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "gen_data.py"), "-m", config_path, "--rows",
                    "300", "--seed", "1", "--out", str(root / "data")], check=True, capture_output=True, timeout=300)
    data = sorted(str(p) for p in (root / "data").iterdir())[0]
    config = load_config(config_path, ["hyper_parameters.fc_sizes=[16,8]"])
    schema = config.schema()
    paddle.seed(7)
    model = build_model("deepfm", config.hyper_parameters, schema)
    batch = parse_lines(read_lines(data)[:41], schema).batch
    return export_model(model, str(root / "model"), golden_dense=batch.dense, golden_sparse=batch.sparse,
                        golden_source=data, feature_spec=schema), data


def test_a_schema_model_scores_its_own_format(movielens, tmp_path):
    """The parser follows the exported model's schema (model_meta `schema`), never Criteo's 13/26: a header CSV
    with a multi-valued field, scored in chunks smaller than the file; line numbers count the header line; the
    same numbers as tools/paddle_infer.py."""
    import subprocess
    import sys

    from ctrkit.batch_predict import model_schema
    from ctrkit.predictions import read_predictions
    from upload_helpers import REPO_ROOT

    model_dir, data = movielens
    lines = read_lines(data)
    exported = load_exported_model(model_dir)
    batch = parse_lines(lines, model_schema(exported)).batch
    assert batch.dense.shape == (len(lines) - 1, 0)
    expected = create_predictor(model_dir, PredictorOptions()).predict(batch.dense, batch.sparse)
    server = UploadServer(model_dir, str(tmp_path / "server.log"), "--batch_size", "64")
    try:
        full = post(server, b"".join(lines), user_id="ml", full="true").json()
        top = post(server, b"".join(lines), user_id="ml", top_k="3").json()
        bad = post(server, b"".join(lines[:50]) + b"1,2\n", user_id="ml")
    finally:
        server.stop()
    assert full["count"] == len(lines) - 1
    np.testing.assert_allclose(scores(full), expected, atol=ATOL)
    best, best_scores = ranking(expected, 3)
    assert top["index"] == [n + 1 for n in best]  # file line numbers: the header is line 1
    np.testing.assert_allclose(scores(top), best_scores, atol=ATOL)
    assert bad.status_code == 400 and bad.json()["msg"].startswith("line 51: ")
    out = tmp_path / "preds.txt"
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), "--model_dir",
                             model_dir, "--data_dir", data, "--batchsize", "64", "--output", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(read_predictions(out), np.float32(scores(full)), rtol=0, atol=1e-6)
