"""tools/to_static.py as a user runs it: checkpoint in, checked static model (+ serving layout) out; bad
input gives one clear error line and a non-zero exit."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ctrkit import checkpoint
from ctrkit.config import load_config
from ctrkit.export import read_golden_rows
from ctrkit.inference import META_FILE, create_predictor
from models.registry import build_model, default_config_path

from conftest import REPO_ROOT

CONFIG = default_config_path("deepfm")
SMALL = ["-o", "hyper_parameters.fc_sizes=[16]"]


def to_static(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "to_static.py"), "-m", CONFIG, *SMALL,
                           *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A DeepFM checkpoint as tools/trainer.py writes it (a few Adam steps, so weights differ from init)."""
    config = load_config(CONFIG, ["hyper_parameters.fc_sizes=[16]"])
    paddle.seed(3)
    model = build_model("deepfm", config.hyper_parameters)
    optimizer = paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters())
    rng = np.random.default_rng(3)
    for _ in range(3):
        dense = paddle.to_tensor(rng.random((64, 13), dtype=np.float32))
        sparse = paddle.to_tensor(rng.integers(1, 1_000_001, (64, 26)))
        loss = paddle.nn.functional.binary_cross_entropy(model(dense, sparse), paddle.ones([64, 1]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    save_dir = str(tmp_path_factory.mktemp("ckpt"))
    return checkpoint.save_checkpoint(save_dir, 0, model, optimizer), model


def test_exports_a_checkpoint_with_serving_layout(trained_checkpoint, tmp_path, slot_sample, raw_sample):
    ckpt, model = trained_checkpoint
    out = tmp_path / "inference"
    result = to_static("-o", f"runner.model_init_path={ckpt}", "--output_dir", str(out), "--serving",
                       "--golden_data", slot_sample, "--model_prefix", "rec")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "deepfm" and summary["output_dir"] == str(out)
    assert os.path.isfile(out / "rec.json") and os.path.isfile(out / "serving_server" / "rec.pdiparams")
    meta = json.load(open(out / META_FILE))
    assert meta["source"]["checkpoint"] == ckpt and meta["golden"]["source"] == slot_sample
    assert meta["hyper_parameters"]["fc_sizes"] == [16]
    # the exported weights are the checkpoint's, not a fresh initialisation
    model.eval()
    predictor = create_predictor(str(out))
    dense, sparse = read_golden_rows(raw_sample, predictor.model.feature_spec, rows=100)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(dense), paddle.to_tensor(sparse)).numpy().reshape(-1)
    np.testing.assert_allclose(predictor.predict(dense, sparse), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["-o", "runner.model_save_path=/nonexistent/ckpts"],
     "runner.model_init_path is not set and runner.model_save_path=/nonexistent/ckpts holds no checkpoint"),
    (["-o", "runner.model_init_path=/nonexistent/ckpt/0"], "no checkpoint parameters at /nonexistent/ckpt/0"),
])
def test_checkpoint_errors(args, message, tmp_path):
    result = to_static(*args, "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_alone_exports_with_generated_golden_rows(trained_checkpoint, tmp_path):
    ckpt, _ = trained_checkpoint
    result = to_static("-o", f"runner.model_init_path={ckpt}", "-o", "runner.test_data_dir=/nonexistent/test",
                       "-o", "runner.train_data_dir=/nonexistent/train", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "golden batch: 40 generated rows following the model's schema 'criteo'" in result.stderr
    meta = json.load(open(tmp_path / "out" / META_FILE))
    assert meta["golden"]["source"].startswith("generated") and meta["golden"]["rows"] == 40
    assert meta["schema"]["name"] == "criteo" and len(set(meta["golden"]["prob"])) > 1


def test_paddles_harmless_native_warnings_are_not_shown(trained_checkpoint, tmp_path, slot_sample):
    ckpt, _ = trained_checkpoint
    result = to_static("-o", f"runner.model_init_path={ckpt}", "--golden_data", slot_sample, "--onnx",
                       "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "not support input out tensor" not in result.stderr
    assert "CleanUnusedInitializers" not in result.stderr
    assert "golden batch: the first 40 rows of" in result.stderr


@pytest.fixture(scope="module")
def recorded_checkpoint(tmp_path_factory):
    """A checkpoint trained with -o hyper_parameters.fc_sizes=[24,8] whose checkpoint.json records its config, as
    the trainer writes it."""
    config = load_config(CONFIG, ["hyper_parameters.fc_sizes=[24,8]", "hyper_parameters.sparse_feature_number=5000"])
    paddle.seed(4)
    model = build_model("deepfm", config.hyper_parameters)
    save_dir = str(tmp_path_factory.mktemp("recorded"))
    return checkpoint.save_checkpoint(save_dir, 0, model, None, info={"model": "deepfm", "config": config.to_dict()})


def test_recorded_hyper_parameters_are_used(recorded_checkpoint, tmp_path, raw_sample):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "to_static.py"), "-m", CONFIG,
                             "-o", f"runner.model_init_path={recorded_checkpoint}", "--output_dir", str(out),
                             "--golden_data", raw_sample], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "using the hyper-parameters recorded in checkpoint" in result.stderr and "fc_sizes=[24, 8]" in result.stderr
    meta = json.load(open(out / META_FILE))
    assert meta["hyper_parameters"]["fc_sizes"] == [24, 8]
    assert meta["hyper_parameters"]["sparse_feature_number"] == meta["schema"]["sparse_feature_number"] == 5000


def test_an_override_that_contradicts_the_checkpoint_names_both_values(recorded_checkpoint, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "to_static.py"), "-m", CONFIG,
                             "-o", f"runner.model_init_path={recorded_checkpoint}", "hyper_parameters.fc_sizes=[32]",
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "hyper_parameters.fc_sizes" in result.stderr and "[32]" in result.stderr and "[24, 8]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_model_init_path_the_last_epoch_of_model_save_path_is_exported(recorded_checkpoint, tmp_path,
                                                                               raw_sample):
    save_path = os.path.dirname(recorded_checkpoint)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "to_static.py"), "-m", CONFIG,
                             "-o", f"runner.model_save_path={save_path}", "--golden_data", raw_sample,
                             "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"checkpoint: {recorded_checkpoint} (the last epoch in runner.model_save_path" in result.stderr
    assert json.load(open(tmp_path / "out" / META_FILE))["source"]["checkpoint"] == recorded_checkpoint
