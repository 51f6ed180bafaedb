"""Config schema: typed overrides, unknown keys rejected, relative paths resolved, the model from runner.model or
the config's folder, PaddleRec's keys accepted with one warning, values no run can use rejected."""
import logging
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
    assert config.hyper_parameters["optimizer"] == {"class": "SGD", "learning_rate": 1.0, "lazy_mode": True}
    # YAML 1.1 reads 1e-3 (no dot) as a string: a float key takes it as the number PaddleRec users mean
    assert load_config(DEEPFM, ["hyper_parameters.optimizer.learning_rate=1e-3"]).hyper_parameters[
        "optimizer"]["learning_rate"] == 0.001


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
    ("hyper_parameters.dense_input_dim=12", "dense_input_dim"),
    ("hyper_parameters.sparse_inputs_slots=5", "sparse_inputs_slots is 5"),
    # values of the right type that no run can use (one class: ranges)
    ("runner.num_workers=-1", "runner.num_workers must be >= 0"),
    ("runner.seed=-1", "runner.seed must be in [0, 2**32)"),
    ("runner.seed=4294967296", "runner.seed must be in [0, 2**32)"),
    ("runner.cpu_threads=-2", "runner.cpu_threads must be >= 0"),
    ("runner.shuffle_buffer=-1", "runner.shuffle_buffer must be >= 0"),
    ("runner.infer_start_epoch=-1", "runner.infer_start_epoch must be >= 0"),
    ("runner.infer_start_epoch=1", "runner.infer_end_epoch must be > runner.infer_start_epoch"),
    ("runner.epochs=-3", "runner.epochs must be positive"),
    ("hyper_parameters.optimizer.learning_rate=.nan", "learning_rate must be a finite number > 0, got nan"),
    ("hyper_parameters.optimizer.learning_rate=.inf", "learning_rate must be a finite number > 0, got inf"),
    ("hyper_parameters.optimizer.learning_rate=-.inf", "learning_rate must be a finite number > 0"),
    ("hyper_parameters.optimizer.learning_rate=0", "learning_rate must be a finite number > 0, got 0.0"),
    ("hyper_parameters.optimizer.learning_rate=-0.1", "learning_rate must be a finite number > 0"),
    ("hyper_parameters.optimizer.learning_rate=fast", "learning_rate: expected float"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(DEEPFM, [override])


def test_relative_paths_resolve_against_the_config_file_and_overrides_against_cwd(tmp_path, monkeypatch):
    path = write(tmp_path, "runner:\n  model: deepfm\n  train_data_dir: data/train\n  model_save_path: /abs/out\n")
    config = load_config(path)
    assert config.runner["train_data_dir"] == os.path.join(str(tmp_path), "data", "train")
    assert config.runner["model_save_path"] == "/abs/out"
    monkeypatch.chdir("/")
    assert load_config(path, ["runner.test_data_dir=x/y"]).runner["test_data_dir"] == "/x/y"


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("runner: [unclosed", "not valid YAML"),
    ("runer:\n  epochs: 1\n", "unknown top-level"),
    ("runner: 3\n", "'runner' must be a mapping"),
    ("- a\n- b\n", "top level must be a mapping"),
    (b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00", "not a text file"),
    ("DIR", "is a directory"),
    ("workspace: paddlerec.models.rank.deepfm\nmode: train_runner\nrunner:\n  - name: train_runner\n",
     "a PaddleRec 1.x config"),
])
def test_malformed_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(path))


def test_paddlerec_keys_are_accepted_with_one_warning(tmp_path, caplog):
    path = write(tmp_path, "runner:\n  model: deepfm\n  train_reader_path: criteo_reader\n  use_auc: True\n"
                           "  use_inference: False\n"
                           "hyper_parameters:\n  sparse_inputs_slots: 27\n  distributed_embedding: 0\n"
                           "  optimizer:\n    class: Adam\n    learning_rate: 0.001\n    strategy: async\n")
    with caplog.at_level(logging.WARNING, logger="ctrkit.config"):
        config = load_config(path)
    assert "sparse_inputs_slots" not in config.hyper_parameters  # 27 = Criteo's 26 slots + the label: agrees
    assert config.ignored_keys == ("runner.train_reader_path", "runner.use_auc", "runner.use_inference",
                                   "hyper_parameters.distributed_embedding", "hyper_parameters.optimizer.strategy")
    [record] = [r for r in caplog.records if r.name == "ctrkit.config" and r.levelno == logging.WARNING]
    for key in config.ignored_keys:
        assert key in record.getMessage()
    assert "sparse_inputs_slots" not in record.getMessage()  # checked against the schema, not ignored
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ctrkit.config"):
        assert load_config(DEEPFM).ignored_keys == ()
    assert not [r for r in caplog.records if r.name == "ctrkit.config"]


def test_the_model_comes_from_runner_model_else_the_config_folder_else_an_error(tmp_path):
    folder = tmp_path / "rank" / "fm"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("runner:\n  epochs: 1\n")
    assert load_config(str(folder / "config.yaml")).model_name == "fm"
    assert load_config(str(folder / "config.yaml"), ["runner.model=dnn"]).model_name == "dnn"
    path = write(tmp_path, "runner:\n  epochs: 1\n")  # folder name is pytest's, not a model
    with pytest.raises(ConfigError, match=r"runner.model is not set .* set runner.model .* deepfm"):
        load_config(path)
    assert load_config(path, ["runner.model=deepfm"]).model_name == "deepfm"


PADDLEREC_DEEPFM = """\
runner:
  train_data_dir: "data/sample_data/train"
  train_reader_path: "criteo_reader" # importlib format
  use_gpu: False
  use_xpu: False   # Enable this option only if you have an xpu device
  use_auc: True
  train_batch_size: 2
  epochs: 3
  print_interval: 2
  model_save_path: "output_model_deepfm"
  test_data_dir: "data/sample_data/train"
  infer_reader_path: "criteo_reader" # importlib format
  infer_batch_size: 5
  infer_load_path: "output_model_deepfm"
  infer_start_epoch: 0
  infer_end_epoch: 3
  use_inference: False
  save_inference_feed_varnames: ["C1","C2","dense_input"]
  save_inference_fetch_varnames: ["sigmoid_0.tmp_0"]
  use_fleet: False
  num_workers: 0
hyper_parameters:
  optimizer:
    class: Adam
    learning_rate: 0.001
    strategy: async
  sparse_inputs_slots: 27
  sparse_feature_number: 1000001
  sparse_feature_dim: 9
  dense_input_dim: 13
  fc_sizes: [512, 256, 128, 32]
  distributed_embedding: 0
"""


def test_paddlerecs_own_deepfm_config_loads_as_is(tmp_path):
    """PaddleRec 2.x's models/rank/deepfm/config.yaml, unchanged: the model from its folder, paths against it."""
    folder = tmp_path / "models" / "rank" / "deepfm"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(PADDLEREC_DEEPFM)
    config = load_config(str(folder / "config.yaml"), ["runner.epochs=1", "runner.train_batch_size=512"])
    assert config.model_name == "deepfm" and config.runner["epochs"] == 1
    assert config.runner["train_data_dir"] == str(folder / "data" / "sample_data" / "train")
    assert config.hyper_parameters["fc_sizes"] == [512, 256, 128, 32]
    assert "runner.use_xpu" in config.ignored_keys and "hyper_parameters.optimizer.strategy" in config.ignored_keys


@pytest.mark.parametrize("words, joined", [
    (["runner.epochs=2", "runner.train_batch_size=64"], ["runner.epochs=2", "runner.train_batch_size=64"]),
    (["hyper_parameters.fc_sizes=[512,", "256]", "runner.epochs=2"],
     ["hyper_parameters.fc_sizes=[512, 256]", "runner.epochs=2"]),
    (["dataset.label={name:", "rating,", "threshold:", "4}"], ["dataset.label={name: rating, threshold: 4}"]),
    (["runner.epochs", "runner.seed=1"], ["runner.epochs", "runner.seed=1"]),  # still an error: no '='
])
def test_override_words_split_by_the_shell_are_joined_back(words, joined):
    from ctrkit.cli import join_overrides

    assert join_overrides(words) == joined


def test_o_takes_paddlerecs_form_and_repeated_flags():
    import argparse

    from ctrkit.cli import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["-m", "c.yaml", "-o", "runner.epochs=2", "runner.seed=3", "-o", "runner.use_gpu=false"])
    assert args.opt == ["runner.epochs=2", "runner.seed=3", "runner.use_gpu=false"]
    assert parser.parse_args(["-m", "c.yaml"]).opt == []
