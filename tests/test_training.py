"""Training end to end on generated data: it learns the planted signal, checkpoints are atomic, and a run
killed mid-way resumes to exactly where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from ctrkit import checkpoint
from ctrkit.config import load_config
from ctrkit.training import DeviceError, evaluate, select_device, train
from models.registry import default_config_path

from conftest import REPO_ROOT

PY = sys.executable
SMALL_MODEL = ["hyper_parameters.fc_sizes=[64,32]", "runner.print_interval=20"]


def gen_data(out_dir, rows: int, seed: int) -> dict:
    """tools/gen_data.py as a user runs it; returns its last-line JSON summary."""
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", "gen_data.py"), "--rows", str(rows),
                             "--seed", str(seed), "--format", "slot", "--out", str(out_dir)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    train_stats = gen_data(root / "train", 160_000, seed=11)
    test_stats = gen_data(root / "test", 40_000, seed=12)
    return {"train": str(root / "train"), "test": str(root / "test"), "train_stats": train_stats,
            "test_stats": test_stats}


def config_for(dataset, save_path, *extra):
    return load_config(default_config_path("deepfm"), [
        f"runner.train_data_dir={dataset['train']}", f"runner.test_data_dir={dataset['test']}",
        f"runner.model_save_path={save_path}", f"runner.infer_load_path={save_path}", *extra])


def test_deepfm_learns_the_planted_signal(dataset, tmp_path):
    """Test AUC reaches at least 97% of the Bayes AUC of the test set (labels drawn from known probabilities)."""
    config = config_for(dataset, tmp_path / "ckpt", "runner.epochs=1")
    summary = train(config)
    assert summary["samples"] == dataset["train_stats"]["rows"]
    [result] = evaluate(config)
    assert result["samples"] == dataset["test_stats"]["rows"]
    bayes_auc = dataset["test_stats"]["bayes_auc"]
    assert result["auc"] >= 0.97 * bayes_auc, (result, dataset["test_stats"])
    assert result["logloss"] < 0.6


def run_trainer(args, **kwargs):
    return subprocess.Popen([PY, os.path.join(REPO_ROOT, "tools", "trainer.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_killed_run_resumes_to_the_uninterrupted_result(dataset, tmp_path):
    common = ["-m", default_config_path("deepfm"), "-o", f"runner.train_data_dir={dataset['train']}",
              "-o", "runner.epochs=2", "-o", "runner.train_batch_size=1024", "-o", "hyper_parameters.fc_sizes=[32]",
              "-o", "runner.print_interval=1000000"]
    straight = tmp_path / "straight"
    assert run_trainer([*common, "-o", f"runner.model_save_path={straight}"]).wait() == 0

    crashed = tmp_path / "crashed"
    proc = run_trainer([*common, "-o", f"runner.model_save_path={crashed}"])
    deadline = time.time() + 300
    while not (crashed / "0" / "rec.pdparams").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a hard crash during epoch 1 (or right after it, on a fast machine)
    proc.wait()
    # a half-written epoch (a leftover ".1.tmp-*" directory) never counts as a checkpoint
    assert checkpoint.completed_epochs(str(crashed)) in ([0], [0, 1])

    resumed = run_trainer([*common, "-o", f"runner.model_save_path={crashed}"])
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output
    a = paddle.load(str(straight / "1" / "rec.pdparams"))
    b = paddle.load(str(crashed / "1" / "rec.pdparams"))
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_gpu_request_on_a_cpu_build_is_an_error():
    if paddle.is_compiled_with_cuda():
        pytest.skip("this paddle build has CUDA")
    with pytest.raises(DeviceError, match="no CUDA support"):
        select_device(True)
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", "trainer.py"), "-m",
                             default_config_path("deepfm"), "-o", "runner.use_gpu=true"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no CUDA support" in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_config_errors_without_traceback():
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", "trainer.py"), "-m",
                             default_config_path("deepfm"), "-o", "runner.epochz=1"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown config key(s): runner.epochz" in result.stderr and "Traceback" not in result.stderr


def test_embedding_l2_penalises_the_rows_a_batch_looks_up(dataset, tmp_path):
    """hyper_parameters.embedding_l2: the loss term is embedding_l2 * sum of the squared rows of the batch's distinct
    ids over every id table (numpy reference); training with it keeps the trained rows smaller than without, and a
    negative value is refused."""
    from models.registry import build_model, get_model_class

    hp = {**get_model_class("fm").default_hyper_parameters(), "sparse_feature_number": 1000, "embedding_l2": 0.25}
    paddle.seed(3)
    model = build_model("fm", hp)
    ids = np.array([[1, 5, 5, 0], [7, 1, 999, 5]], dtype=np.int64)
    tables = [layer.weight.numpy() for layer in model.sublayers() if isinstance(layer, paddle.nn.Embedding)]
    assert len(tables) == 2  # FM: first-order weights and the D-vectors
    expected = 0.25 * sum(float(np.sum(w[np.unique(ids)] ** 2)) for w in tables)
    assert float(model.embedding_l2_loss(paddle.to_tensor(ids))) == pytest.approx(expected, rel=1e-6)
    assert build_model("fm", {**hp, "embedding_l2": 0.0}).embedding_l2_loss(paddle.to_tensor(ids)) is None

    trained = {}
    for l2 in (0.0, 0.01):
        save = tmp_path / f"l2-{l2}"
        config = config_for(dataset, save, "runner.epochs=1", "hyper_parameters.fc_sizes=[16]",
                            "runner.num_workers=0", f"hyper_parameters.embedding_l2={l2}")
        train(config)
        trained[l2] = paddle.load(str(save / "0" / "rec.pdparams"))["fm.embedding.weight"].numpy()
    touched = np.any(trained[0.0] != trained[0.01], axis=1)  # same seeded start: untouched rows are equal
    norms = {l2: float(np.sum(w[touched] ** 2)) for l2, w in trained.items()}
    assert touched.sum() > 100 and norms[0.01] < 0.5 * norms[0.0], norms
    with pytest.raises(ValueError, match="embedding_l2 must be a finite number >= 0"):
        build_model("fm", {**hp, "embedding_l2": -1.0})
