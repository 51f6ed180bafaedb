"""tools/paddle_infer.py as a user runs it on the real Criteo samples: one prediction per input line in input
order, the same numbers as the predictor (both backends), metrics from the labels, an appended JSON log;
PaddleRec's flags; requests this build cannot serve, bad flags and bad input fail with one clear `error:` line
and a non-zero exit."""
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
from ctrkit.predictions import read_predictions

from conftest import REPO_ROOT

CUDA_BUILD = capabilities()["cuda"]


def paddle_infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), *args],
                          capture_output=True, text=True, timeout=300)


def predictions(path) -> np.ndarray:
    with open(path) as f:
        lines = f.read().splitlines()
    assert all(line and np.float32(line) == np.float32(float(line)) for line in lines)
    return read_predictions(path)  # "%.9g": float32 values round-trip exactly


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
        assert record["configuration"] == "paddle " + PredictorOptions().describe()
        assert record["backend"] == "paddle"


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
    (["--enable_tensorRT"], "--use_trt needs --use_gpu"),
    (["--precision", "int8"], "--precision int8 needs --use_trt"),
    (["--backend", "onnxruntime", "--enable_mkldnn"], "--backend onnxruntime cannot honour --enable_mkldnn"),
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


def test_onnxruntime_backend_gives_the_same_predictions(exported_deepfm, raw_sample, tmp_path):
    expected, _ = expected_for(exported_deepfm, raw_sample)
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_dir", exported_deepfm, "--data_dir", raw_sample, "--batchsize", "32",
                          "--backend", "onnxruntime", "--output", str(out), "--num_workers", "0", "--benchmark")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(predictions(out), expected, rtol=0, atol=1e-6)
    assert "configuration: onnxruntime" in result.stdout


def test_paddlerec_flags(exported_deepfm, slot_sample, tmp_path):
    """PaddleRec's spelling works: --model_file/--params_file, --use_gpu False, --enable_mkldnn True; its flags
    without meaning here (--reader_file, --model_name) are accepted with one warning line each that says why."""
    expected, _ = expected_for(exported_deepfm, slot_sample, onednn=True)
    model = load_exported_model(exported_deepfm)
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_file", model.model_file, "--params_file", model.params_file, "--use_gpu", "False",
                          "--enable_mkldnn", "True", "--reader_file", "criteo_reader.py", "--model_name", "DeepFM",
                          "--data_dir", slot_sample, "--batchsize", "20", "--output", str(out))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(predictions(out), expected, rtol=0, atol=2e-7)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "--reader_file criteo_reader.py is ignored: lines are parsed" in warnings[0]
    assert "--model_name DeepFM is ignored: the model and its name come from" in warnings[1]


def test_pdmodel_path_says_what_to_pass(exported_deepfm, slot_sample):
    prefix = os.path.join(exported_deepfm, "tostatic")
    result = paddle_infer("--model_file", prefix + ".pdmodel", "--params_file", prefix + ".pdiparams",
                          "--data_dir", slot_sample)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Paddle 3 exports write <prefix>.json" in result.stderr
    assert f"--model_file {prefix}.json --params_file {prefix}.pdiparams" in result.stderr


@pytest.mark.parametrize("flags,message", [
    (["--batchsize", "0"], "error: --batchsize must be >= 1, got 0"),
    (["--batchsize", "-5"], "error: --batchsize must be >= 1, got -5"),
    (["--num_workers", "-1"], "error: --num_workers must be >= 0"),
    (["--cpu_threads", "0"], "error: --cpu_threads must be >= 1"),
    (["--data_dir", ""], "error: --data_dir is empty"),
    (["--data_dir", "EMPTY_DIR"], "error: --data_dir: no data files in"),
    (["--data_dir", "DIR_WITH_SUBDIR"], "a data directory holds data files only, not sub-directories"),
    (["--data_dir", "MISSING"], "error: data path not found"),
])
def test_bad_flags_give_one_error_line(exported_deepfm, slot_sample, tmp_path, flags, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "with_sub" / "sub").mkdir(parents=True)
    (tmp_path / "with_sub" / "part-0.txt").write_text(open(slot_sample).read())
    places = {"EMPTY_DIR": str(tmp_path / "empty"), "DIR_WITH_SUBDIR": str(tmp_path / "with_sub"),
              "MISSING": str(tmp_path / "missing")}
    flags = [places.get(flag, flag) for flag in flags]
    data = [] if "--data_dir" in flags else ["--data_dir", slot_sample]
    result = paddle_infer("--model_dir", exported_deepfm, *data, *flags)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("raw_lines", [100, 5])  # the change at a batch boundary, and inside a batch
def test_a_file_whose_format_changes_is_an_error(exported_deepfm, raw_sample, slot_sample, tmp_path, raw_lines):
    """The format is detected once per file and locked (as every reader of the toolkit does)."""
    data = tmp_path / "mixed.txt"
    data.write_text("".join(open(raw_sample).readlines()[:raw_lines]) + open(slot_sample).read())
    out = tmp_path / "preds.txt"
    result = paddle_infer("--model_dir", exported_deepfm, "--data_dir", str(data), "--batchsize", "20",
                          "--output", str(out), "--num_workers", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data}:{raw_lines + 1}: this line is slot format" in result.stderr
    assert "but the file is raw Criteo (tab-separated) (from its first data line); a file must keep one format" \
        in result.stderr
    assert not out.exists()
