"""The zoo learns on the example dataset schemas (issue 13): datasets/avazu (no numeric fields), datasets/movielens
(a multi-valued field, a numeric label with a threshold) and datasets/criteo_slot (Criteo in PaddleRec's slot
format). Data: the schema generator's planted click model with a known Bayes AUC (ctrkit.data.synthetic_schema).

- DeepFM, trained and scored by the real trainer and evaluator, reaches >= 95% of the Bayes AUC on a held-out set
  (measured at 50k rows, one epoch, MLP 64-64, lr 3e-3: avazu 0.965, movielens 0.979, criteo_slot 0.987 of Bayes);
- every model trains a few steps on each schema and exports (its checkpoint alone: the model is rebuilt from the
  recorded hyper-parameters and schema), and the exported model reproduces the dygraph model;
- end to end with the command-line tools: trainer.py -> to_static.py --serving --onnx, predictions of the exported
  model (Paddle Inference and ONNX Runtime) equal infer.py's on the test file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

import models  # noqa: F401
from ctrkit.config import ConfigError, load_config
from ctrkit.data import iter_batches
from ctrkit.data.synthetic_schema import generate_schema_dataset
from ctrkit.export import export_from_config
from ctrkit.inference import META_FILE, PredictorOptions, create_onnx_predictor, create_predictor, load_exported_model
from ctrkit.predictions import read_predictions
from ctrkit.training import evaluate, train
from ctrkit.zoo import available_models, get_model_class
from models.registry import default_config_path

from conftest import REPO_ROOT

DATASETS = ("avazu", "movielens", "criteo_slot")
IDS = "hyper_parameters.sparse_feature_number=100003"  # a smaller id space than the shipped 1,000,001: less memory
TINY = {"sparse_feature_dim": 4, "fc_sizes": [16], "bottom_sizes": [8], "top_sizes": [8], "cin_sizes": [4]}


def dataset_config(name: str) -> str:
    return os.path.join(REPO_ROOT, "datasets", name, "config.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """name -> (root, test summary): generated train/test sets of each example schema, made on first use."""
    made: dict[str, tuple] = {}

    def get(name: str, rows: int):
        key = (name, rows)
        if key not in made:
            root = tmp_path_factory.mktemp(f"{name}_{rows}")
            schema = load_config(dataset_config(name), [IDS]).schema()
            test = generate_schema_dataset(str(root / "test"), schema, min(rows, 20_000), seed=2)
            generate_schema_dataset(str(root / "train"), schema, rows, seed=1)
            made[key] = (root, test)
        return made[key]

    return get


def zoo_config(name: str, model_name: str, directory) -> str:
    """The example dataset's config (runner + dataset block) with model `model_name` and that model's own
    hyper-parameters (models/rank/<model>/config.yaml): how to train any zoo model on one's own data."""
    with open(dataset_config(name), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    with open(default_config_path(model_name), encoding="utf-8") as f:
        config["hyper_parameters"] = yaml.safe_load(f)["hyper_parameters"]
    config["hyper_parameters"].pop("dense_input_dim", None)  # Criteo's 13; the dataset's schema decides
    config["runner"]["model"] = model_name
    path = os.path.join(str(directory), f"{name}-{model_name}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    return path


def run_overrides(root, save, model: str = "deepfm") -> list[str]:
    return [IDS, f"runner.model={model}", f"runner.train_data_dir={root / 'train'}",
            f"runner.test_data_dir={root / 'test'}", f"runner.model_save_path={save}", f"runner.infer_load_path={save}",
            "runner.resume=false", "runner.num_workers=0"]


@pytest.mark.parametrize("name", DATASETS)
def test_deepfm_reaches_95_percent_of_the_bayes_auc(name, data, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRKIT_NO_PROGRESS", "1")
    root, test = data(name, 50_000)
    config = load_config(dataset_config(name), run_overrides(root, tmp_path / "ckpt") + [
        "hyper_parameters.fc_sizes=[64,64]", "hyper_parameters.optimizer.learning_rate=0.003"])
    train(config)
    auc = evaluate(config)[-1]["auc"]
    assert auc >= 0.95 * test["bayes_auc"], f"{name}: DeepFM AUC {auc:.4f} < 95% of Bayes {test['bayes_auc']:.4f}"


@pytest.mark.parametrize("name", DATASETS)
def test_the_whole_zoo_trains_and_exports(name, data, tmp_path, monkeypatch):
    monkeypatch.setenv("CTRKIT_NO_PROGRESS", "1")
    root, _ = data(name, 2_000)
    for model_name in available_models():
        defaults = get_model_class(model_name).default_hyper_parameters()
        tiny = [f"hyper_parameters.{k}={json.dumps(v)}" for k, v in TINY.items() if k in defaults]
        save = tmp_path / model_name
        path = zoo_config(name, model_name, tmp_path)
        config = load_config(path, run_overrides(root, save, model_name) + tiny + ["runner.train_batch_size=256"])
        summary = train(config)
        assert summary["samples"] == 2_000
        # export from the checkpoint with the config file's hyper-parameters: the recorded ones are used
        plain = load_config(path, [IDS, f"runner.model_init_path={summary['checkpoint']}",
                                   f"runner.test_data_dir={root / 'test'}"])
        out = export_from_config(plain, str(tmp_path / f"{model_name}-export"))
        meta = json.load(open(os.path.join(out, META_FILE)))
        assert meta["schema"]["name"] == name and meta["model_name"] == model_name
        assert max(meta["export_check"].values()) <= 1e-5, (model_name, meta["export_check"])
        assert all(meta["hyper_parameters"][k] == v for k, v in TINY.items() if k in defaults)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["avazu", "movielens"])
def test_tools_end_to_end(name, data, tmp_path):
    root, _ = data(name, 2_000)
    save, out = tmp_path / "ckpt", tmp_path / "export"
    env = {**os.environ, "CTRKIT_NO_PROGRESS": "1"}
    # the trainer's default DataLoader worker (runner.num_workers 1): avazu's [B, 0] dense input crosses it
    common = ["-m", dataset_config(name), "-o", *run_overrides(root, save)[:-1], "hyper_parameters.fc_sizes=[16]",
              "hyper_parameters.sparse_feature_dim=4", f"runner.infer_output={tmp_path / 'preds.txt'}"]

    def tool(script: str, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", script), *args], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    tool("trainer.py", *common)
    # infer and export with the config file alone: the checkpoint's recorded MLP and dimension are used
    plain = ["-m", dataset_config(name), "-o", IDS, f"runner.test_data_dir={root / 'test'}",
             f"runner.infer_load_path={save}", f"runner.infer_output={tmp_path / 'preds.txt'}"]
    tool("infer.py", *plain)
    tool("to_static.py", *plain, f"runner.model_init_path={save / '0'}", "--output_dir", str(out), "--serving",
         "--onnx")
    exported = load_exported_model(str(out))
    assert exported.schema.name == name and exported.meta["hyper_parameters"]["fc_sizes"] == [16]
    expected = read_predictions(str(tmp_path / "preds.txt"))
    dense, sparse = [], []
    for batch in iter_batches(str(root / "test"), exported.schema, 4096):
        dense.append(batch.dense)
        sparse.append(batch.sparse)
    dense, sparse = np.concatenate(dense), np.concatenate(sparse)
    assert dense.shape == (len(expected), exported.schema.n_dense)
    for predictor in (create_predictor(str(out), PredictorOptions(onednn=False)), create_onnx_predictor(str(out))):
        np.testing.assert_allclose(predictor.predict(dense, sparse), expected, rtol=0, atol=2e-6)
    assert paddle.__version__  # the same process can still use paddle afterwards


@pytest.mark.parametrize("name", ["avazu", "movielens"])
def test_training_on_a_schemas_shards_equals_training_on_its_text(name, data, tmp_path, monkeypatch):
    """tools/prepare_criteo.py -m <dataset config> makes shards of the schema's files; training and evaluation
    read them through the config's runner paths and give exactly what the text gives (rows in the same order:
    no shuffling, one worker)."""
    monkeypatch.setenv("CTRKIT_NO_PROGRESS", "1")
    root, _ = data(name, 2_000)
    for split in ("train", "test"):
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "prepare_criteo.py"), "-m",
                               dataset_config(name), "-o", IDS, "--input", str(root / split), "--out",
                               str(tmp_path / f"{split}_shards"), "--split", "data=1", "--workers", "1"],
                              env={**os.environ, "CTRKIT_NO_PROGRESS": "1"}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for kind in ("text", "shards"):
        paths = ([f"runner.train_data_dir={root / 'train'}", f"runner.test_data_dir={root / 'test'}"] if kind == "text"
                 else [f"runner.train_data_dir={tmp_path / 'train_shards' / 'data'}",
                       f"runner.test_data_dir={tmp_path / 'test_shards' / 'data'}"])
        save = tmp_path / f"ckpt-{kind}"
        config = load_config(dataset_config(name), run_overrides(root, save) + paths + [
            "runner.shuffle_buffer=0", "hyper_parameters.fc_sizes=[16]", "hyper_parameters.sparse_feature_dim=4",
            f"runner.infer_output={tmp_path / kind}.txt"])
        assert train(config)["samples"] == 2_000
        results[kind] = evaluate(config)[-1]
    assert results["shards"]["auc"] == results["text"]["auc"]
    assert results["shards"]["samples"] == results["text"]["samples"] > 0
    np.testing.assert_array_equal(read_predictions(str(tmp_path / "shards.txt")),
                                  read_predictions(str(tmp_path / "text.txt")))
    # a config of another schema is refused with the names of both
    with pytest.raises(ConfigError, match=f"shards hold rows of the dataset schema '{name}'"):
        other = "movielens" if name == "avazu" else "avazu"
        train(load_config(dataset_config(other), run_overrides(root, tmp_path / "x") + [
            f"runner.train_data_dir={tmp_path / 'train_shards' / 'data'}"]))
