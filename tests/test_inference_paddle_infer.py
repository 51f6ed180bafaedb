"""tools/paddle_infer.py as a user runs it on the real Criteo samples: one prediction per input line in input
order, the same numbers as the predictor, metrics from the labels, an appended JSON log; requests this build
cannot serve and bad input fail with a clear message and a non-zero exit."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ctrkit.data import iter_batches
from ctrkit.inference import PredictorOptions, capabilities, create_predictor, load_exported_model
from ctrkit.metrics import auc

from conftest import REPO_ROOT

CUDA_BUILD = capabilities()["cuda"]


def paddle_infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), *args],
                          capture_output=True, text=True, timeout=300)


def predictions(path) -> np.ndarray:
    with open(path) as f:
        lines = f.read().splitlines()
    assert all(line and "e" not in line.lower() for line in lines)  # plain decimals
    return np.array([float(line) for line in lines])


def expected_for(model_dir, data_path, onednn=False):
    predictor = create_predictor(model_dir, PredictorOptions(onednn=onednn))
    batch = next(iter(iter_batches(data_path, predictor.model.feature_spec, 10_000)))
    return predictor.predict(batch.dense, batch.sparse), batch.label.reshape(-1)


def test_predicts_every_line_in_order_and_logs(exported_deepfm, slot_sample, tmp_path):
    expected, labels = expected_for(exported_deepfm, slot_sample)
    out, log = tmp_path / "preds.txt", tmp_path / "logs" / "run.jsonl"
    for workers in ("0", "2"):
        result = paddle_infer("--model_dir", exported_deepfm, "--data_dir", slot_sample, "--batchsize", "16",
                              "--output", str(out), "--save_log_path", str(log), "--num_workers", workers,
                              "--benchmark")
        assert result.returncode == 0, result.stderr
        got = predictions(out)
        assert got.shape == (80,)  # the sample has 80 lines; batches of 16 ... every prediction written
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-7)
        assert "p50" in result.stdout and "preprocess" in result.stdout
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2  # appended, never overwritten
    for record, workers in zip(records, (0, 2)):
        assert record["samples"] == 80 and record["batches"] == 5 and record["workers"] == workers
        assert record["auc"] == pytest.approx(auc(labels, expected), abs=1e-6)
        assert record["logloss"] > 0 and record["samples_per_s"] > 0
        assert set(record["latency_ms"]) == {"p50", "p90", "p99", "mean"}
        assert record["configuration"] == PredictorOptions().describe()


def test_model_file_flags_and_raw_input_with_onednn(exported_deepfm, raw_sample, tmp_path):
    expected, _ = expected_for(exported_deepfm, raw_sample, onednn=True)
    model = load_exported_model(exported_deepfm)
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_file", model.model_file, "--params_file", model.params_file,
                          "--data_dir", raw_sample, "--batchsize", "64", "--enable_mkldnn", "True",
                          "--cpu_threads", "2", "--output", str(out), "--num_workers", "0")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(predictions(out), expected, rtol=0, atol=2e-7)
    # without --save_log_path nothing is logged; the summary line carries the metrics
    assert "samples 100" in result.stdout and "auc" in result.stdout


@pytest.mark.skipif(CUDA_BUILD, reason="checks the errors of a CPU-only build")
@pytest.mark.parametrize("flags,message", [
    (["--use_gpu", "True"], "CPU-only build"),
    (["--use_gpu", "--enable_tensorRT", "--precision", "fp16"], "CPU-only build"),
    (["--enable_tensorRT"], "--enable_tensorRT needs --use_gpu"),
    (["--precision", "int8"], "--precision int8 needs --enable_tensorRT"),
    (["--memory_optim"], "memory_optim cannot be used"),
])
def test_unavailable_requests_fail_clearly(exported_deepfm, slot_sample, tmp_path, flags, message):
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_dir", exported_deepfm, "--data_dir", slot_sample, "--output", str(out), *flags)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_line_names_file_and_line_and_writes_nothing(exported_deepfm, slot_sample, tmp_path):
    data = tmp_path / "data.txt"
    lines = open(slot_sample).read().splitlines()
    lines[41] = lines[41].replace("dense_feature:", "dense_feature=", 1)
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_dir", exported_deepfm, "--data_dir", str(data), "--batchsize", "16",
                          "--output", str(out), "--num_workers", "1")
    assert result.returncode != 0
    assert f"{data}:42:" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not os.path.exists(str(out) + ".tmp")


def test_refuses_a_model_that_fails_its_golden_check(exported_deepfm, slot_sample, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported_deepfm, copy, ignore=shutil.ignore_patterns("serving_*", "model.onnx"))
    meta = json.loads((copy / "model_meta.json").read_text())
    meta["golden"]["prob"][0] += 0.5
    (copy / "model_meta.json").write_text(json.dumps(meta))
    result = paddle_infer("--model_dir", str(copy), "--data_dir", slot_sample, "--num_workers", "0")
    assert result.returncode != 0 and "disagrees with the golden batch" in result.stderr
