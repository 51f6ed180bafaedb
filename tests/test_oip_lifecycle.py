"""serving.oip's life cycle on real processes: hot swap of a model version under tritonclient load with no failed
request, Triton's repository load, --workers with a killed worker restarted by the shared supervisor, a repository
load reaching every worker, and SIGTERM draining every worker."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import requests
from tritonclient.utils import InferenceServerException

from rpc_helpers import publish_version
from test_oip_server import OipServer, _inputs, tritongrpc, tritonhttp


def _golden(model_dir: str):
    from ctrkit.inference import load_exported_model
    dense, sparse, _ = load_exported_model(model_dir).golden()
    return dense, sparse


def _wait(predicate, timeout_s: float = 120, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def test_hot_swap_under_load_fails_no_request(exported_deepfm, tmp_path):
    versions = tmp_path / "deepfm"
    versions.mkdir()
    shutil.copytree(exported_deepfm, versions / "1")
    dense, sparse = _golden(exported_deepfm)
    srv = OipServer(str(versions), str(tmp_path / "swap.log"), "--version_poll_s", "0.3", "--log_level", "INFO")
    stop, failures, seen = threading.Event(), [], set()

    def load(kind: str) -> None:
        module = tritonhttp if kind == "http" else tritongrpc
        client = srv.http_client() if kind == "http" else srv.grpc_client()
        while not stop.is_set():
            try:
                result = client.infer("deepfm", _inputs(module, dense[:2], sparse[:2]))
                seen.add(result.get_response()["model_version"] if kind == "http"
                         else result.get_response().model_version)
                assert result.as_numpy("prob").shape == (2, 1)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{kind}: {e}")

    threads = [threading.Thread(target=load, args=(k,)) for k in ("http", "grpc", "http", "grpc")]
    try:
        for t in threads:
            t.start()
        assert _wait(lambda: "1" in seen, 60)
        # publish version 2 atomically (copy aside, then rename), as docs/rpc.md says
        shutil.copytree(exported_deepfm, versions / ".staging-2")
        os.rename(versions / ".staging-2", versions / "2")
        assert _wait(lambda: "2" in seen, 120), srv.log()[-3000:]
        assert _wait(lambda: srv.http_client().get_model_metadata("deepfm")["versions"] == ["2"], 30)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert not failures, failures[:5]
        assert {"1", "2"} <= seen
        _check_repository_after_swaps(srv, exported_deepfm, str(versions))
    finally:
        assert srv.stop() == 0


def _check_repository_after_swaps(srv, model_dir: str, versions: str) -> None:
    """Triton's repository index and statistics see the swap: version 1 answered requests and is no longer served,
    2 is READY, and a version 3 that fails its golden check is UNAVAILABLE with the reason (2 keeps serving)."""
    http = srv.http_client()
    stats = {m["version"]: m for m in http.get_inference_statistics("deepfm")["model_stats"]}
    assert set(stats) == {"1", "2"}
    assert all(m["inference_stats"]["success"]["count"] > 0 for m in stats.values())
    publish_version(model_dir, versions, 3, break_golden=True)
    assert _wait(lambda: "golden batch" in str(http.get_model_repository_index()), 120), srv.log()[-3000:]
    index = {m["version"]: m for m in http.get_model_repository_index()}
    assert index["2"]["state"] == "READY"
    assert index["1"]["state"] == index["3"]["state"] == "UNAVAILABLE"
    assert "not served" in index["1"]["reason"] and "golden batch" in index["3"]["reason"], index
    ready = srv.grpc_client().get_model_repository_index(as_json=True)["models"]
    assert [(m["version"], m["state"]) for m in ready] == [("1", "UNAVAILABLE"), ("2", "READY"), ("3", "UNAVAILABLE")]
    ready_only = requests.post(srv.url + "/v2/repository/index", json={"ready": True}, timeout=10).json()
    assert [m["version"] for m in ready_only] == ["2"]


def test_repository_load_serves_a_new_version_at_once_or_says_why_not(exported_deepfm, tmp_path):
    """Triton's repository load: with version polling off, a load answers once the newest version on disk is
    served, or fails with the reason it was refused while the old one keeps serving; unload is refused."""
    versions = tmp_path / "deepfm"
    versions.mkdir()
    shutil.copytree(exported_deepfm, versions / "1")
    dense, sparse = _golden(exported_deepfm)
    srv = OipServer(str(versions), str(tmp_path / "load.log"), "--version_poll_s", "0", "--log_level", "INFO")
    try:
        http, grpc = srv.http_client(), srv.grpc_client()
        publish_version(exported_deepfm, str(versions), 2)
        assert http.get_model_metadata("deepfm")["versions"] == ["1"]  # no polling: nothing moves by itself
        http.load_model("deepfm")
        assert http.get_model_metadata("deepfm")["versions"] == ["2"]
        publish_version(exported_deepfm, str(versions), 3, break_golden=True)
        for client in (grpc, http):
            with pytest.raises(InferenceServerException, match="version 3: .*golden batch.*version 2 keeps serving"):
                client.load_model("deepfm")
        result = grpc.infer("deepfm", _inputs(tritongrpc, dense[:2], sparse[:2]))
        assert result.get_response().model_version == "2"
        for client in (grpc, http):
            with pytest.raises(InferenceServerException, match="unloading is not offered"):
                client.unload_model("deepfm")
            with pytest.raises(InferenceServerException, match="unknown model 'other'"):
                client.load_model("other")
            with pytest.raises(InferenceServerException, match=r"load parameters \(config\) are not supported"):
                client.load_model("deepfm", config='{"max_batch_size": 8}')
        url = srv.url + "/v2/repository/models/deepfm/load"
        bad = requests.post(url, data=b"[1]", timeout=10)
        assert bad.status_code == 400 and "must be a JSON object" in bad.json()["error"]
        assert requests.get(url, timeout=10).status_code == 405
        assert http.is_model_ready("deepfm")
    finally:
        assert srv.stop() == 0


def test_workers_restart_a_killed_worker_and_drain_on_sigterm(exported_deepfm, tmp_path):
    dense, sparse = _golden(exported_deepfm)
    versions = tmp_path / "deepfm"
    versions.mkdir()
    shutil.copytree(exported_deepfm, versions / "1")
    srv = OipServer(str(versions), str(tmp_path / "workers.log"), "--workers", "2", "--backend", "onnxruntime",
                    "--version_poll_s", "0", "--log_level", "INFO")
    try:
        parent = psutil.Process(srv.proc.pid)
        workers = [p for p in parent.children() if "serving.oip" in " ".join(p.cmdline())]
        assert len(workers) == 2
        for module, client in ((tritonhttp, srv.http_client()), (tritongrpc, srv.grpc_client())):
            assert client.infer("deepfm", _inputs(module, dense[:3], sparse[:3])).as_numpy("prob").shape == (3, 1)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)

        def replaced() -> bool:
            alive = [p for p in parent.children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                     and "serving.oip" in " ".join(p.cmdline())]
            return len(alive) == 2 and victim.pid not in {p.pid for p in alive}
        assert _wait(replaced, 180), srv.log()[-3000:]
        # the restarted worker is ready when it answers: every new connection (either worker) gets answers
        assert _wait(lambda: srv.http_client().is_server_ready(), 60)
        for _ in range(6):
            client = srv.grpc_client()
            assert client.infer("deepfm", _inputs(tritongrpc, dense[:1], sparse[:1])).as_numpy("prob").shape == (1, 1)
            client.close()
        assert "restarting it" in srv.log()
        # statistics sum every worker, the killed one included: 8 requests, plus each of the 3 workers' golden
        # self-check (one request of 40 rows) when it loaded the model (the restarted one's may still be running)
        def stats() -> dict:
            return srv.http_client().get_inference_statistics("deepfm")["model_stats"][0]
        assert _wait(lambda: stats()["inference_stats"]["success"]["count"] == 8 + 3, 120), stats()
        assert stats()["inference_count"] == 2 * 3 + 6 + 3 * len(dense)
        # a repository load reaches one worker; it has the supervisor tell the other, which loads version 2 too
        publish_version(exported_deepfm, str(versions), 2)
        srv.http_client().load_model("deepfm")
        assert _wait(lambda: srv.log().count("serving model version 2 from") == 2, 120), srv.log()[-3000:]
    finally:
        status = srv.stop()
    assert status == 0, srv.log()[-3000:]
