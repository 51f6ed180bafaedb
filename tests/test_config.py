"""Config schema: typed overrides, unknown keys rejected, relative paths resolved."""
import os
import re

import pytest

from ctrkit.config import ConfigError, load_config, parse_override
from models.registry import default_config_path

DEEPFM = default_config_path("deepfm")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_overrides_are_typed():
    assert parse_override("hyper_parameters.fc_sizes=[512,256,128,32]") == ("hyper_parameters.fc_sizes", [512, 256, 128, 32])
    assert parse_override("runner.use_gpu=false") == ("runner.use_gpu", False)
    assert parse_override("hyper_parameters.optimizer.learning_rate=0.01")[1] == 0.01
    config = load_config(DEEPFM, ["runner.train_batch_size=64", "hyper_parameters.fc_sizes=[32,16]",
                                  "hyper_parameters.optimizer.class=SGD", "hyper_parameters.optimizer.learning_rate=1"])
    assert config.get("runner.train_batch_size") == 64
    assert config.hyper_parameters["fc_sizes"] == [32, 16]
    assert config.hyper_parameters["optimizer"] == {"class": "SGD", "learning_rate": 1.0, "lazy_mode": True,
                                                    "strategy": "async"}


@pytest.mark.parametrize("override, message", [
    ("runner.train_batchsize=64", "unknown config key(s): runner.train_batchsize"),
    ("hyper_parameters.fc_size=[1]", "hyper_parameters.fc_size"),
    ("runner.train_batch_size=abc", "runner.train_batch_size: expected int"),
    ("runner.epochs=1.5", "runner.epochs: expected int"),
    ("runner.use_gpu=3", "runner.use_gpu: expected bool"),
    ("hyper_parameters.fc_sizes=[512,-1]", "fc_sizes must be a list of positive ints"),
    ("hyper_parameters.optimizer.class=Lion", "optimizer.class"),
    ("runner.model=no_such_model", "unknown model 'no_such_model'"),
    ("runner.data_format=csv", "runner.data_format"),
    ("runner.train_batch_size=0", "runner.train_batch_size must be positive"),
    ("train_batch_size=1", "must start with 'runner.' or 'hyper_parameters.'"),
    ("runner.epochs", "key=value"),
    ("hyper_parameters.dense_input_dim=12", "dense_input_dim must be 13"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(DEEPFM, [override])


def test_relative_paths_resolve_against_the_config_file_and_overrides_against_cwd(tmp_path, monkeypatch):
    path = write(tmp_path, "runner:\n  train_data_dir: data/train\n  model_save_path: /abs/out\n")
    config = load_config(path)
    assert config.runner["train_data_dir"] == os.path.join(str(tmp_path), "data", "train")
    assert config.runner["model_save_path"] == "/abs/out"
    monkeypatch.chdir("/")
    assert load_config(path, ["runner.test_data_dir=x/y"]).runner["test_data_dir"] == "/x/y"


def test_malformed_files_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "runner: [unclosed"))
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_config(write(tmp_path, "runer:\n  epochs: 1\n"))
    with pytest.raises(ConfigError, match="'runner' must be a mapping"):
        load_config(write(tmp_path, "runner: 3\n"))


def test_paddlerec_runner_keys_are_accepted(tmp_path):
    path = write(tmp_path, "runner:\n  train_reader_path: criteo_reader\n  use_auc: True\n"
                           "hyper_parameters:\n  sparse_inputs_slots: 27\n  distributed_embedding: 0\n")
    config = load_config(path)
    assert "sparse_inputs_slots" not in config.hyper_parameters
