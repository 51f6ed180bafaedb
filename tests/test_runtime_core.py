"""ctrkit.runtime in-process: backends agree, validation kinds, readiness, hot swap under load with no failed
request, a bad version refused while the old one serves, draining, the flags -> options mapping."""
from __future__ import annotations

import argparse
import asyncio
import threading
import time

import numpy as np
import pytest

from ctrkit.inference import InferenceError, PredictorOptions, create_predictor
from ctrkit.runtime import (ModelLoadError, ModelRuntime, NotReadyError, RuntimeInputError, RuntimeOptions, add_runtime_flags,
                            options_from_args)
from ctrkit.runtime.options import BatchingOptions
from rpc_helpers import publish_version, slot_rows


@pytest.fixture(scope="module")
def rows(slot_sample):
    dense, sparse = slot_rows(slot_sample, 1000)
    return {"dense_input": dense, "sparse_inputs": sparse}


def test_backends_agree_and_are_checked(exported_deepfm, rows):
    expected = create_predictor(exported_deepfm, PredictorOptions()).predict(rows["dense_input"],
                                                                             rows["sparse_inputs"])
    got = {}
    for backend in ("paddle", "onnxruntime", "constant"):
        runtime = ModelRuntime(exported_deepfm, RuntimeOptions(backend=backend, instances=2))
        assert not runtime.ready
        assert runtime.start(watch=False) == 0 and runtime.ready
        out = runtime.predict(rows)
        assert out.version == 0 and out.probs.dtype == np.float32 and out.probs.shape == (len(expected),)
        got[backend] = out.probs
        assert runtime.contract.dense_width == 13 and runtime.contract.sparse_width == 26
        assert [f.name for f in runtime.contract.fields][:2] == ["C1", "C2"]
        text = runtime.metrics.render().decode()
        assert f'ctrkit_runtime_requests_total{{backend="{backend}",result="ok",version="0"}}' in text
        runtime.close()
        assert not runtime.ready
    np.testing.assert_allclose(got["paddle"], expected, atol=1e-6)
    np.testing.assert_allclose(got["onnxruntime"], expected, atol=1e-5)
    np.testing.assert_array_equal(got["constant"], 0.5)


def test_async_predict(exported_deepfm, rows):
    runtime = ModelRuntime(exported_deepfm, RuntimeOptions(backend="onnxruntime"))
    runtime.start(watch=False)

    async def many():
        return await asyncio.gather(*(runtime.predict_async({k: v[i:i + 3] for k, v in rows.items()})
                                      for i in range(0, 30, 3)))

    answers = asyncio.run(many())
    sync = runtime.predict({k: v[:30] for k, v in rows.items()}).probs
    np.testing.assert_allclose(np.concatenate([a.probs for a in answers]), sync, atol=1e-6)
    runtime.close()


def test_validation_kinds(exported_deepfm, rows):
    runtime = ModelRuntime(exported_deepfm, RuntimeOptions(batching=BatchingOptions(max_request_batch=50)))
    runtime.start(watch=False)
    dense, sparse = rows["dense_input"][:4], rows["sparse_inputs"][:4]
    nan, big = dense.copy(), sparse.copy()
    nan[1, 2], big[3, 7] = np.nan, 1000001
    cases = {
        "missing_input": {"dense_input": dense},
        "unknown_input": {"dense_input": dense, "sparse_inputs": sparse, "extra": dense},
        "wrong_dtype": {"dense_input": dense, "sparse_inputs": sparse.astype(np.float32)},
        "wrong_shape": {"dense_input": dense[:, :12], "sparse_inputs": sparse},
        "not_finite": {"dense_input": nan, "sparse_inputs": sparse},
        "out_of_range": {"dense_input": dense, "sparse_inputs": big},
        "empty_batch": {"dense_input": dense[:0], "sparse_inputs": sparse[:0]},
        "too_large": {k: v[:51] for k, v in rows.items()},
    }
    for kind, inputs in cases.items():
        with pytest.raises(RuntimeInputError) as info:
            runtime.predict(inputs)
        assert info.value.kind == kind, (kind, info.value)
    with pytest.raises(RuntimeInputError, match=r"'sparse_inputs' \[3, 7\] = 1000001 is outside"):
        runtime.predict(cases["out_of_range"])
    assert runtime.predict({"dense_input": dense, "sparse_inputs": sparse.astype(np.int32)}).probs.shape == (4,)
    text = runtime.metrics.render().decode()
    assert 'result="out_of_range"' in text and 'result="too_large"' in text
    runtime.drain()
    assert not runtime.ready
    with pytest.raises(NotReadyError):
        runtime.predict({"dense_input": dense, "sparse_inputs": sparse})
    assert runtime.wait_idle(5)
    runtime.close()


def test_hot_swap_under_load_fails_nothing(exported_deepfm, export_model_dir, rows, tmp_path):
    export_b = export_model_dir("deepfm", fc_sizes=[32])
    small = {k: v[:8] for k, v in rows.items()}
    want = {name: create_predictor(d, PredictorOptions()).predict(small["dense_input"], small["sparse_inputs"])
            for name, d in (("A", exported_deepfm), ("B", export_b))}
    root = tmp_path / "models"
    root.mkdir()
    publish_version(exported_deepfm, root, 1)
    runtime = ModelRuntime(str(root), RuntimeOptions(backend="onnxruntime", version_poll_s=0))
    assert runtime.start(watch=True) == 1
    stop = threading.Event()
    seen: list[str] = []
    failures: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                got = runtime.predict(small)
            except Exception as e:  # any failure fails the test
                failures.append(repr(e))
                continue
            match = [n for n, w in want.items() if np.allclose(got.probs, w, atol=1e-5)]
            seen.append(f"{match[0] if match else '?'}{got.version}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        publish_version(export_b, root, 2)
        runtime.check_now()
        assert runtime.version == 2
        publish_version(export_b, root, 3, break_golden=True)
        runtime.check_now()
        n = len(seen)
        deadline = time.monotonic() + 60
        while len(seen) < n + 20 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert set(seen) <= {"A1", "B2"} and "B2" in seen, sorted(set(seen))
    status = runtime.status()
    assert status["serving"] == 2 and "golden" in status["refused"]["3"] and status["backend"] == "onnxruntime"
    runtime.close()


def test_no_good_version_is_a_clear_error(exported_deepfm, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    publish_version(exported_deepfm, root, 1, break_golden=True)
    runtime = ModelRuntime(str(root))
    with pytest.raises(ModelLoadError, match="1: GoldenMismatchError"):
        runtime.start()
    assert not runtime.ready
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="neither an exported model"):
        ModelRuntime(str(empty)).start()
    assert issubclass(ModelLoadError, InferenceError)  # what every entry point reports as one line


def parse(*argv: str):
    p = argparse.ArgumentParser()
    add_runtime_flags(p)
    return options_from_args(p.parse_args(list(argv)))


def test_flags_map_to_options():
    o = parse()
    assert o.backend == "paddle" and o.predictor == PredictorOptions() and o.instances == 1
    assert parse("--backend", "onnxruntime").instances == 2
    o = parse("--use_mkl", "--cpu_threads", "2", "--ir_optim", "False", "--predictors", "3", "--batch_window_ms", "2",
              "--max_batch_size", "64", "--version_poll_s", "0")
    assert o.predictor.onednn and o.predictor.cpu_threads == 2 and not o.predictor.ir_optim
    assert o.instances == 3 and o.batching.window_ms == 2 and o.batching.max_request_batch == 64
    assert parse("--enable_mkldnn", "True").predictor.onednn and not parse("--use_mkldnn", "0").predictor.onednn
    assert parse("--use_gpu", "False").predictor.device == "cpu"
    o = parse("--use_gpu", "--gpu_id", "1", "--enable_tensorRT", "--precision", "FP16")
    assert o.predictor.device == "gpu" and o.predictor.gpu_id == 1 and o.predictor.tensorrt == "fp16"
    assert parse("--backend", "onnxruntime", "--ir_optim", "0").backend == "onnxruntime"
    for argv, text in ((("--use_trt",), "--use_trt needs --use_gpu"),
                       (("--precision", "int8"), "needs --use_trt"),
                       (("--use_gpu", "--use_mkl"), "CPU engine"),
                       (("--backend", "onnxruntime", "--use_gpu"), "CPU execution provider"),
                       (("--backend", "onnxruntime", "--memory_optim"), "cannot honour"),
                       (("--gpu_ids", "0,1"), "one GPU id"),
                       (("--predictors", "-1"), "--predictors must be >= 1")):
        with pytest.raises(ValueError, match=text):
            parse(*argv)
