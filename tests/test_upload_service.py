"""The upload service end to end: a real `python -m serving.upload` (waitress) on loopback, a real
redis-server, the real Criteo samples, and predictions checked against a local predictor built by the
same factory."""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket

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
    predictor = create_predictor(exported_deepfm, PredictorOptions(onednn=True))

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
    assert set(timing) == {"parse_ms", "inference_ms", "store_ms", "total_ms"}
    assert all(v >= 0 for v in timing.values())
    assert timing["total_ms"] >= timing["parse_ms"] + timing["inference_ms"] - 0.01
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
    return [p for p in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


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
    assert response.status_code == 400 and response.json()["msg"].startswith("line 4097: data_format is 'raw'")


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
    settings = parse_settings(["--model", "m", "--port", "9100"])
    assert (settings.port, settings.redis_ttl, settings.host, settings.use_onednn) == (9100, 60, "127.0.0.1", True)
    assert parse_settings(["--model", "m", "--device", "gpu"]).use_onednn is False
    monkeypatch.setenv("CTR_UPLOAD_WORKERS", "zero")
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m"])
    assert "--workers: expected int, got 'zero' (from CTR_UPLOAD_WORKERS)" in capsys.readouterr().err
    monkeypatch.delenv("CTR_UPLOAD_WORKERS")
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--redis_url", "http://127.0.0.1:6379"])
    assert "--redis_url must be a redis://" in capsys.readouterr().err


def test_a_dying_worker_stops_the_service(exported_deepfm, tmp_path):
    """The supervisor does not limp on with fewer workers: it stops the rest and exits non-zero."""
    server = UploadServer(exported_deepfm, str(tmp_path / "server.log"), "--workers", "2")
    try:
        victim, survivor = worker_processes(server)
        victim.kill()
        assert server.proc.wait(timeout=60) != 0
        assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
        assert f"(pid {victim.pid}) exited with status -9; stopping the service" in server.log()
    finally:
        server.stop()
