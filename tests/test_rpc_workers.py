"""--workers: several server processes on the same ports, one ready line, metrics summed over the workers,
SIGTERM stops them all."""
from __future__ import annotations

import os
import re
import time

import numpy as np
import psutil
import requests

from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.inference import PredictorOptions, create_predictor
from serving.rpc.client import ServingError, read_feed_layout
from rpc_helpers import MODES, RpcServer, run_in_threads


def test_workers_share_the_ports_and_stop_together(exported_deepfm, slot_sample, tmp_path):
    batch = next(iter(iter_batches(slot_sample, FeatureSpec(), 1000)))
    expected = create_predictor(exported_deepfm, PredictorOptions()).predict(batch.dense, batch.sparse)
    server = RpcServer(os.path.join(exported_deepfm, "serving_server"), str(tmp_path / "server.log"),
                       "--workers", "2")
    layout = read_feed_layout(os.path.join(exported_deepfm, "serving_client"))
    failures: list[str] = []

    def work(i: int) -> None:  # every client its own connection, so the kernel can spread them
        mode = MODES[i % 3]
        c = server.client(layout, mode)
        for start in range(0, 80, 8):
            try:
                got = c.predict(batch.dense[start:start + 8], batch.sparse[start:start + 8])
            except ServingError as e:
                failures.append(str(e))
                continue
            if not np.allclose(got, expected[start:start + 8], atol=1e-6):
                failures.append(f"client {i} rows {start}: {got}")
        c.close()

    run_in_threads(work, 12)
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    pids = [int(p) for p in re.findall(r'ctrkit_runtime_model_version\{pid="(\d+)"\}', metrics)]
    assert failures == []
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    assert server.metric("ctrkit_rpc_requests_total", 'err_no="0"') == 12 * 10  # summed over both workers
    assert server.stop() == 0, server.log()
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert server.log().count("drained in") == 2


def test_a_dead_worker_is_restarted_and_clients_carry_on(exported_deepfm, slot_sample, tmp_path):
    batch = next(iter(iter_batches(slot_sample, FeatureSpec(), 8)))
    expected = create_predictor(exported_deepfm, PredictorOptions()).predict(batch.dense, batch.sparse)
    server = RpcServer(os.path.join(exported_deepfm, "serving_server"), str(tmp_path / "server.log"),
                       "--workers", "2", "--backend", "onnxruntime")
    layout = read_feed_layout(os.path.join(exported_deepfm, "serving_client"))
    try:
        supervisor = psutil.Process(server.proc.pid)
        before = sorted(c.pid for c in supervisor.children())
        assert len(before) == 2
        psutil.Process(before[0]).kill()  # SIGKILL: no drain, the worker just dies
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "worker restarted" not in server.log():
            time.sleep(0.2)
        after = sorted(c.pid for c in supervisor.children())
        assert "worker restarted" in server.log() and len(after) == 2 and before[0] not in after, server.log()
        for mode in MODES:  # fresh connections reach either worker
            for _ in range(4):
                c = server.client(layout, mode)
                np.testing.assert_allclose(c.predict(batch.dense, batch.sparse), expected, atol=1e-5)
                c.close()
    finally:
        assert server.stop() == 0, server.log()
