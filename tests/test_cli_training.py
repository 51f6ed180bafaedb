"""The training-side CLIs (tools/trainer.py, tools/infer.py, tools/prepare_criteo.py) as a user runs them, one test
per class of bad input (parametrised over examples): one `error:` line on stderr, no traceback, a non-zero exit
status, and nothing lost (no checkpoint of a failed run, the earlier run's checkpoints kept). Also PaddleRec's
`-o k=v k=v` form, the model from the config's folder, progress output when stderr is not a terminal, and VisualDL
run directories. Data: a few hundred generated rows."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ctrkit.data.spec import FeatureSpec
from ctrkit.data.synthetic import generate_dataset
from models.registry import default_config_path

from conftest import REPO_ROOT

PY = sys.executable
DEEPFM = default_config_path("deepfm")
TINY = ["hyper_parameters.fc_sizes=[8]", "hyper_parameters.sparse_feature_number=1000",
        "runner.train_batch_size=64", "runner.infer_batch_size=64", "runner.print_interval=2"]


def tool(name: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, os.path.join(REPO_ROOT, "tools", name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, no traceback, exactly one line starting with `error:` that holds every fragment."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert result.returncode == 2, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = FeatureSpec(sparse_feature_number=1000)
    generate_dataset(str(root / "train"), 300, seed=1, spec=spec)
    generate_dataset(str(root / "test"), 100, seed=2, spec=spec)
    lines = (root / "train" / "part-00000.txt").read_text().splitlines(keepends=True)
    (root / "bad").mkdir()
    (root / "bad" / "part-00000.txt").write_text("".join(lines[:150] + ["click:1 garbage\n"] + lines[150:]))
    (root / "empty").mkdir()
    (root / "empty" / "part-00000.txt").write_text("")
    (root / "nofiles").mkdir()
    (root / "nested" / "inner").mkdir(parents=True)
    return root


def trainer_args(data, save_path, *overrides):
    return ["-m", DEEPFM, "-o", f"runner.train_data_dir={data / 'train'}", f"runner.model_save_path={save_path}",
            f"runner.infer_load_path={save_path}", f"runner.test_data_dir={data / 'test'}", *TINY, *overrides]


# ------------------------------------------------------------------------------------------ bad config files

@pytest.mark.parametrize("cli, kind", [("trainer.py", k) for k in ("binary", "directory", "missing", "not yaml",
                                                                   "not a mapping")]
                         + [("infer.py", "binary"), ("prepare_criteo.py", "directory")])
def test_a_bad_config_file_is_one_error_line(tmp_path, cli, kind):
    path = tmp_path / "config.yaml"
    if kind == "binary":
        path.write_bytes(open(sys.executable, "rb").read(4096))
    elif kind == "directory":
        path.mkdir()
    elif kind == "not yaml":
        path.write_text("runner: [unclosed\n")
    elif kind == "not a mapping":
        path.write_text("- runner\n")
    expected = {"binary": "not a text file", "directory": "is a directory", "missing": "not found",
                "not yaml": "not valid YAML", "not a mapping": "must be a mapping"}[kind]
    extra = ["--input", tmp_path, "--out", tmp_path / "out"] if cli == "prepare_criteo.py" else []
    assert_one_error_line(tool(cli, *extra, "-m", path), expected)


# ------------------------------------------------------------------------------------ bad keys and values

@pytest.mark.parametrize("cli, override, expected", [
    ("trainer.py", "runner.num_workers=-1", "runner.num_workers must be >= 0"),
    ("trainer.py", "runner.seed=-1", "runner.seed must be in"),
    ("trainer.py", "hyper_parameters.optimizer.learning_rate=.nan", "learning_rate must be a finite number > 0"),
    ("trainer.py", "hyper_parameters.optimizer.learning_rate=0", "learning_rate must be a finite number > 0"),
    ("trainer.py", "runner.epochz=1", "unknown config key(s): runner.epochz"),
    ("trainer.py", "runner.epochs=two", "runner.epochs: expected int"),
    ("trainer.py", "runner.epochs", "not of the form key=value"),
    ("infer.py", "runner.infer_batch_size=0", "runner.infer_batch_size must be positive"),
    ("infer.py", "runner.infer_start_epoch=-1", "runner.infer_start_epoch must be >= 0"),
    ("prepare_criteo.py", "runner.shuffle_buffer=-5", "runner.shuffle_buffer must be >= 0"),
    ("infer.py", "runner.infer_output={data}", "is a directory; give a file path"),
    ("trainer.py", "runner.visual_log_path={data}/train.truth.txt", "exists and is not a directory"),
])
def test_a_bad_config_value_is_one_error_line_and_writes_nothing(data, tmp_path, cli, override, expected):
    override = override.format(data=data)
    save = tmp_path / "ckpt"
    extra = ["--input", data / "train", "--out", tmp_path / "shards"] if cli == "prepare_criteo.py" else []
    result = tool(cli, *extra, *trainer_args(data, save, override))
    assert_one_error_line(result, expected)
    assert not save.exists() and not (tmp_path / "shards").exists()


# ------------------------------------------------------------------------------------------- bad data paths

@pytest.mark.parametrize("split, expected", [
    ("empty", "no training rows"),
    ("nofiles", "no data files"),
    ("nested", "not sub-directories"),
    ("missing", "runner.train_data_dir"),
])
def test_unusable_training_data_is_an_error_and_leaves_no_checkpoint(data, tmp_path, split, expected):
    save = tmp_path / "ckpt"
    result = tool("trainer.py", *trainer_args(data, save, f"runner.train_data_dir={data / split}"))
    assert_one_error_line(result, expected)
    assert not (save / "0").exists()


def _bad_line(good: str, kind: str) -> str:
    tokens = good.split()
    if kind == "tokens":
        return "click:1 garbage"
    if kind == "float":
        tokens[1] = "dense_feature:abc"
    elif kind == "label":
        tokens[0] = "click:7"
    elif kind == "id range":
        tokens[14] = "1:99999999"
    elif kind == "id digits":
        tokens[14] = "1:" + "9" * 5000  # beyond Python's int-digit limit
    elif kind == "key":
        tokens[14] = "99:5"
    elif kind == "binary":
        return "\x00\x01\x02 \xff"
    return " ".join(tokens)


@pytest.mark.parametrize("kind", ["tokens", "float", "label", "id range", "id digits", "key", "binary"])
def test_a_malformed_line_reads_the_same_with_and_without_dataloader_workers(data, tmp_path, kind):
    """Every kind of bad line: one `error:` line naming file and line, identical with num_workers 0 and 2
    (DataLoader worker processes), no checkpoint."""
    lines = (data / "train" / "part-00000.txt").read_text().splitlines()
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "part-00000.txt").write_text("\n".join(lines[:150] + [_bad_line(lines[150], kind)] + lines[151:]) + "\n")
    errors = []
    for workers in (0, 2):
        result = tool("trainer.py", *trainer_args(data, tmp_path / "ckpt", f"runner.train_data_dir={bad_dir}",
                                                  f"runner.num_workers={workers}", "runner.shuffle_buffer=0"))
        errors.append(assert_one_error_line(result, f"{bad_dir / 'part-00000.txt'}:151: "))
        assert not (tmp_path / "ckpt" / "0").exists()
    assert errors[0] == errors[1]


# ---------------------------------------------------------------------- runs that must never mix or be lost

def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save)).returncode == 0
    good = (save / "0" / "rec.pdparams").read_bytes()
    result = tool("trainer.py", *trainer_args(data, save, "runner.epochs=3",
                                              "hyper_parameters.optimizer.learning_rate=1e30"))
    assert_one_error_line(result, "diverged", "Stopped without saving epoch 1", f"last good checkpoint is {save / '0'}")
    assert sorted(os.listdir(save)) == ["0"] and (save / "0" / "rec.pdparams").read_bytes() == good


def test_checkpoints_of_another_run_are_never_resumed_nor_silently_mixed(data, tmp_path):
    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save, "runner.epochs=2")).returncode == 0
    before = (save / "1" / "rec.pdparams").read_bytes()
    # resuming with other hyper-parameters: refused, naming both values; nothing removed
    result = tool("trainer.py", *trainer_args(data, save, "runner.epochs=3", "hyper_parameters.fc_sizes=[16]"))
    assert_one_error_line(result, "cannot resume", "hyper_parameters.fc_sizes: [8] in the checkpoint, [16] now",
                          "runner.resume=false")
    assert (save / "1" / "rec.pdparams").read_bytes() == before
    # resume=false: the earlier run's epochs are removed (and the log says so) before the new run writes its own
    result = tool("trainer.py", *trainer_args(data, save, "runner.resume=false", "hyper_parameters.fc_sizes=[16]"))
    assert result.returncode == 0, result.stderr
    assert "runner.resume=false: removing 2 checkpoint(s) of an earlier run" in result.stderr
    assert sorted(os.listdir(save)) == ["0"]


def test_model_init_path_inside_a_cleared_save_path_is_refused(data, tmp_path):
    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save)).returncode == 0
    result = tool("trainer.py", *trainer_args(data, save, "runner.resume=false",
                                              f"runner.model_init_path={save / '0'}"))
    assert_one_error_line(result, "is inside runner.model_save_path")
    assert (save / "0" / "rec.pdparams").exists()


# ------------------------------------------------------------------------------------- PaddleRec's habits

def test_paddlerec_override_forms_and_the_model_from_the_config_folder(data, tmp_path):
    """`-o k=v k=v` (PaddleRec's nargs='*'), repeated -o, an unquoted list with a space, a config without
    runner.model in models/rank/<name>/, and PaddleRec keys listed in one warning line."""
    folder = tmp_path / "rank" / "fm"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "runner:\n  train_reader_path: criteo_reader\n  use_inference: False\n  epochs: 1\n"
        "hyper_parameters:\n  sparse_feature_number: 1000\n  optimizer:\n    class: Adam\n"
        "    learning_rate: 1e-3\n    strategy: async\n")
    save = tmp_path / "ckpt"
    result = tool("trainer.py", "-m", folder / "config.yaml",
                  "-o", f"runner.train_data_dir={data / 'train'}", f"runner.model_save_path={save}",
                  "-o", "runner.train_batch_size=64", "runner.print_interval=2",
                  "-o", "hyper_parameters.sparse_feature_dim=4")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert '"model": "fm"' in summary and '"epochs_trained": 1' in summary
    warnings = [line for line in result.stderr.splitlines() if "ignoring PaddleRec config key(s)" in line]
    assert len(warnings) == 1
    for key in ("runner.train_reader_path", "runner.use_inference", "hyper_parameters.optimizer.strategy"):
        assert key in warnings[0]
    # an unquoted list split by the shell: `-o hyper_parameters.fc_sizes=[16, 8]`
    result = tool("trainer.py", *trainer_args(data, tmp_path / "ckpt2"), "hyper_parameters.fc_sizes=[16,", "8]")
    assert result.returncode == 0, result.stderr


def test_a_config_without_model_outside_the_zoo_is_an_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("runner:\n  epochs: 1\n")
    assert_one_error_line(tool("trainer.py", "-m", path), "runner.model is not set", "deepfm")


# ---------------------------------------------------------------------------------- progress and VisualDL

def test_progress_is_plain_log_lines_off_a_terminal_with_eta_once_the_size_is_known(data, tmp_path):
    result = tool("trainer.py", *trainer_args(data, tmp_path / "ckpt", "runner.epochs=2"))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no progress bar into a log file
    epoch1 = [line for line in result.stderr.splitlines() if "epoch 1 step" in line]
    assert epoch1 and all("of 300 samples, eta" in line for line in epoch1)
    result = tool("prepare_criteo.py", "--input", data / "train", "--out", tmp_path / "shards", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "B/s" not in result.stderr


def test_visualdl_gets_a_directory_per_run_and_evaluation_scalars(data, tmp_path):
    pytest.importorskip("visualdl")
    logs, save = tmp_path / "vdl", tmp_path / "ckpt"
    common = trainer_args(data, save, "runner.use_visual=true", f"runner.visual_log_path={logs}")
    assert tool("trainer.py", *common).returncode == 0
    assert tool("trainer.py", *common, "runner.resume=false").returncode == 0
    result = tool("infer.py", *common)
    assert result.returncode == 0, result.stderr
    runs = sorted(os.listdir(logs))
    assert len([r for r in runs if r.startswith("deepfm-train-")]) == 2, runs
    [eval_run] = [r for r in runs if r.startswith("deepfm-eval-")]
    records = b"".join(p.read_bytes() for p in (logs / eval_run).iterdir())
    assert b"eval/auc" in records and b"eval/logloss" in records


def test_an_unwritable_prediction_file_is_one_error_line(data, tmp_path):
    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save)).returncode == 0
    result = tool("infer.py", *trainer_args(data, save, f"runner.infer_output={data}/train.truth.txt/preds.txt"))
    assert_one_error_line(result, "runner.infer_output: cannot write")
    assert (data / "train.truth.txt").is_file()


@pytest.mark.parametrize("overrides, expected", [
    (["runner.infer_load_path={tmp}/none"], "holds no checkpoints (train first"),
    (["runner.infer_load_path={tmp}/ckpt", "runner.infer_end_epoch=3"], "no checkpoint for epoch(s) 1, 2"),
])
def test_infer_names_the_epochs_it_lacks(data, tmp_path, overrides, expected):
    (tmp_path / "ckpt" / "0").mkdir(parents=True)
    (tmp_path / "ckpt" / "0" / "rec.pdparams").write_bytes(b"")
    result = tool("infer.py", *trainer_args(data, tmp_path / "ckpt"), *(o.format(tmp=tmp_path) for o in overrides))
    assert_one_error_line(result, expected)


def test_infer_uses_the_hyper_parameters_the_checkpoint_was_trained_with(data, tmp_path):
    """Trained with -o hyper_parameters.fc_sizes=[16,4]: infer.py needs no repeat; a conflicting -o names both."""
    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save, "hyper_parameters.fc_sizes=[16,4]")).returncode == 0
    result = tool("infer.py", "-m", DEEPFM, "-o", f"runner.infer_load_path={save}",
                  f"runner.test_data_dir={data / 'test'}", "hyper_parameters.sparse_feature_number=1000")
    assert result.returncode == 0, result.stderr
    assert '"samples": 100' in result.stdout.strip().splitlines()[-1]
    result = tool("infer.py", *trainer_args(data, save, "hyper_parameters.fc_sizes=[32]"))
    assert_one_error_line(result, "hyper_parameters.fc_sizes: -o gives [32]", "trained with [16, 4]")


@pytest.mark.parametrize("inputs, out, expected", [
    ("nested", "out", "not sub-directories"),
    ("nofiles", "out", "no data files"),
    ("empty", "out", "every input file is empty"),
    ("missing", "out", "not found"),
    ("train", "train.truth.txt", "exists and is not a directory"),
])
def test_prepare_criteo_refuses_unusable_paths_in_one_line(data, tmp_path, inputs, out, expected):
    out_path = data / out if out.endswith(".txt") else tmp_path / out
    assert_one_error_line(tool("prepare_criteo.py", "--input", data / inputs, "--out", out_path, "--workers", "1"),
                          expected)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_checkpoint_path_is_one_error_line(data, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    result = tool("trainer.py", *trainer_args(data, blocked / "ckpt"))
    assert_one_error_line(result, "cannot write checkpoint", str(blocked / "ckpt" / "0"))
    assert blocked.read_text() == "not a directory"


def test_infer_refuses_to_score_a_diverged_checkpoint(data, tmp_path):
    import numpy as np
    import paddle

    save = tmp_path / "ckpt"
    assert tool("trainer.py", *trainer_args(data, save)).returncode == 0
    params = save / "0" / "rec.pdparams"
    state = paddle.load(str(params))
    name = next(k for k, v in state.items() if len(v.shape) == 2 and v.shape[0] < 100)  # an MLP weight
    state[name] = paddle.to_tensor(np.full(state[name].shape, np.nan, np.float32))
    paddle.save(state, str(params))
    result = tool("infer.py", *trainer_args(data, save, f"runner.infer_output={tmp_path / 'preds.txt'}"))
    assert_one_error_line(result, "predicts NaN or infinity", "a diverged model")
    assert not (tmp_path / "preds.txt").exists()
