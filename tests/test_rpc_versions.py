"""Numbered model versions: hot swap under load with zero failed requests, bad versions refused while the
old one keeps serving, a refused version retried once its files change (SIGHUP)."""
from __future__ import annotations

import os
import shutil
import signal
import threading

import numpy as np
import pytest
import requests

from ctrkit.inference import PredictorOptions, create_predictor
from serving.rpc.client import ServingClient, ServingError, read_feed_layout
from rpc_helpers import MODES, RpcServer, publish_version, slot_rows, wait_until


@pytest.fixture(scope="module")
def models(exported_deepfm, export_model_dir):
    """Two exports of the same contract with different weights: version A and version B."""
    return exported_deepfm, export_model_dir("deepfm", fc_sizes=[32])


@pytest.fixture(scope="module")
def rows(slot_sample):
    return slot_rows(slot_sample, 8)


def publish(export_dir: str, root: str, version: int, break_golden: bool = False) -> None:
    """Publish an export's serving_server/ as version `version` (see rpc_helpers.publish_version)."""
    publish_version(os.path.join(export_dir, "serving_server"), root, version, break_golden)


def versions(server: RpcServer) -> dict:
    return requests.get(f"{server.url}/versions", timeout=10).json()


def test_hot_swap_under_load_fails_no_request(models, rows, tmp_path):
    export_a, export_b = models
    dense, sparse = rows
    expected = {name: create_predictor(d, PredictorOptions()).predict(dense, sparse)
                for name, d in (("A", export_a), ("B", export_b))}
    assert not np.allclose(expected["A"], expected["B"], atol=1e-4)
    root = tmp_path / "models"
    root.mkdir()
    publish(export_a, str(root), 1)
    server = RpcServer(str(root), str(tmp_path / "server.log"), "--version_poll_s", "0.1")
    assert server.version == 1
    layout = read_feed_layout(os.path.join(export_a, "serving_client"))
    stop = threading.Event()
    seen: list[str] = []
    failures: list[str] = []

    def load(worker: int) -> None:
        mode = MODES[worker % 3]
        c = server.client(layout, mode)
        while not stop.is_set():
            try:
                got = c.predict(dense, sparse)
            except ServingError as e:
                failures.append(str(e))
                continue
            match = [name for name, want in expected.items() if np.allclose(got, want, atol=1e-6)]
            seen.append(match[0] if match else f"neither A nor B: {got}")
        c.close()

    threads = [threading.Thread(target=load, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(seen) >= 50, what="answers from version 1")
        publish(export_b, str(root), 2)
        wait_until(lambda: versions(server)["serving"] == 2, what="version 2 swapped in")
        swapped_at = len(seen)
        wait_until(lambda: len(seen) >= swapped_at + 50, what="answers after the swap")
        publish(export_b, str(root), 3, break_golden=True)
        wait_until(lambda: "3" in versions(server)["refused"], what="version 3 refused")
        refused_at = len(seen)
        wait_until(lambda: len(seen) >= refused_at + 50, what="answers after the refusal")
    finally:
        stop.set()
        for t in threads:
            t.join()
    status = versions(server)
    assert failures == []
    assert set(seen) == {"A", "B"}, sorted(set(seen))
    assert set(seen[swapped_at + 6:]) == {"B"}  # once swapped (and the last old in-flight answers are in), only B
    assert status["serving"] == 2 and "golden" in status["refused"]["3"]
    assert server.metric("ctrkit_runtime_version_loads_total", 'result="loaded"') == 2
    assert server.metric("ctrkit_runtime_version_loads_total", 'result="refused"') == 1
    assert server.metric("ctrkit_rpc_requests_total", 'err_no="0"') == len(seen)
    assert server.stop() == 0
    log = server.log()
    assert "closed model version 1" in log and "model version 3" in log and "refused" in log


def test_bad_latest_version_at_start_and_retry_after_fix(models, rows, tmp_path):
    export_a, export_b = models
    dense, sparse = rows
    root = tmp_path / "models"
    root.mkdir()
    publish(export_a, str(root), 1)
    publish(export_b, str(root), 2, break_golden=True)
    server = RpcServer(str(root), str(tmp_path / "server.log"), "--version_poll_s", "0")
    assert server.version == 1 and "2" in versions(server)["refused"]
    shutil.rmtree(root / "2")
    publish(export_b, str(root), 2)  # fixed files: the refusal no longer applies
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: versions(server)["serving"] == 2, what="fixed version 2 loaded after SIGHUP")
    c = ServingClient(read_feed_layout(os.path.join(export_b, "serving_client")),
                      f"127.0.0.1:{server.grpc_port}", "rpc")
    np.testing.assert_allclose(c.predict(dense, sparse),
                               create_predictor(export_b, PredictorOptions()).predict(dense, sparse), atol=1e-6)
    c.close()
    assert versions(server)["refused"] == {}
    assert server.stop() == 0
