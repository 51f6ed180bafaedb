"""tools/gen_data.py for declared schemas (datasets/*/config.yaml), the criteo_sparse profile, --overwrite, and the
trainer's one-line error for bad lines read in a DataLoader worker process (runner.num_workers: 1)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ctrkit.data import iter_batches
from ctrkit.metrics import auc
from ctrkit.schema import FeatureSchema, criteo_schema

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
DATASETS = ("avazu", "movielens", "criteo_slot")


def run_tool(name, *args, check=True):
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", name), *map(str, args)], capture_output=True,
                            text=True, cwd=REPO_ROOT)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def gen(*args) -> dict:
    return json.loads(run_tool("gen_data.py", *args).stdout.strip().splitlines()[-1])


def schema_of(name: str) -> FeatureSchema:
    with open(os.path.join(REPO_ROOT, "datasets", name, "config.yaml"), encoding="utf-8") as f:
        return FeatureSchema.from_config(yaml.safe_load(f))


def rows(path, schema):
    stream = iter_batches(str(path), schema, 1 << 20)
    batches = list(stream)
    return [np.concatenate(parts) for parts in zip(*batches) if parts[0] is not None], stream


def log_odds_auc(train, test, schema) -> float:
    """A quick logistic-style check that the planted signal is in the parsed ids: per-(field, id) smoothed log
    odds counted on train (a multi-valued field's ids as one bag, averaged), summed on test."""
    _, sparse, label = train
    y = label[:, 0]
    prior = y.mean()
    score = np.zeros(len(test[1]))
    for field in schema.field_layout():
        block = sparse[:, field.start:field.start + field.width]
        rows_of = np.repeat(np.arange(len(block)), field.width)
        ids, inverse = np.unique(block.ravel(), return_inverse=True)
        clicks = np.bincount(inverse, weights=y[rows_of])
        counts = np.bincount(inverse)
        odds = np.log((clicks + 10 * prior) / (counts - clicks + 10 * (1 - prior)))
        table = dict(zip(ids.tolist(), odds.tolist()))
        test_block = test[1][:, field.start:field.start + field.width]
        values = np.array([[table.get(i, 0.0) if i else 0.0 for i in row] for row in test_block.tolist()])
        score += values.sum(axis=1) / np.maximum((test_block != 0).sum(axis=1), 1)
    return auc(test[2][:, 0], score)


@pytest.mark.parametrize("name", DATASETS)
def test_gen_data_for_each_example_schema(tmp_path, name):
    config = os.path.join(REPO_ROOT, "datasets", name, "config.yaml")
    schema = schema_of(name)
    train = gen("-m", config, "--rows", 6000, "--seed", 1, "--out", tmp_path / "train")
    test = gen("-m", config, "--rows", 3000, "--seed", 2, "--out", tmp_path / "test", "--files", 2)
    unlabeled = gen("-m", config, "--rows", 3000, "--seed", 2, "--out", tmp_path / "nolabel", "--no_label",
                    "--truth", tmp_path / "nolabel.truth")
    assert test == unlabeled
    for summary in (train, test):
        assert 0.18 < summary["positive_rate"] < 0.33 and 0.68 < summary["bayes_auc"] < 0.95
    train_rows, _ = rows(tmp_path / "train", schema)
    test_rows, stream = rows(tmp_path / "test", schema)
    assert len(test_rows[0]) == 3000 and test_rows[0].shape[1] == schema.n_dense
    assert test_rows[1].shape[1] == schema.sparse_width
    truth = np.loadtxt(tmp_path / "test.truth.txt")
    assert auc(test_rows[2][:, 0], truth) == pytest.approx(test["bayes_auc"])
    nolabel_rows, _ = rows(tmp_path / "nolabel", schema)
    assert len(nolabel_rows) == 2 and np.array_equal(nolabel_rows[1], test_rows[1])
    first_file = sorted(os.listdir(tmp_path / "train"))[0]
    with open(tmp_path / "train" / first_file, encoding="utf-8") as f:
        first_line = f.readline().rstrip("\n")
    if schema.header:  # the schema's own layout: a header CSV with every column, unused ones included
        assert first_line.split(",") == list(schema.columns)
    if schema.multi_valued:
        assert stream.truncated["genres"] > 0  # some lists exceed max_len: cut and counted
        assert (test_rows[1][:, schema.n_single:] != 0).sum(axis=1).max() == schema.multi_valued[0].max_len
    # the planted truth is in the parsed ids: a simple count model beats chance clearly, not the Bayes AUC
    learned = log_odds_auc(train_rows, test_rows, schema)
    assert 0.58 < learned < test["bayes_auc"] + 0.02


def test_criteo_default_output_is_unchanged(tmp_path):
    """The default Criteo generator is byte for byte what it was (the quickstart and tests depend on it)."""
    gen("--rows", 2000, "--seed", 1, "--out", tmp_path / "d")
    digest = lambda p: hashlib.md5(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "d" / "part-00000.txt") == "14853b5daae01b552dff97985cb27839"
    assert digest(tmp_path / "d.truth.txt") == "1749b82eef650b3d882561ba6717d1af"
    gen("-m", os.path.join(REPO_ROOT, "datasets", "criteo_slot", "config.yaml"), "--rows", 2000, "--seed", 1,
        "--out", tmp_path / "c")
    assert digest(tmp_path / "c" / "part-00000.txt") == "14853b5daae01b552dff97985cb27839"


def test_gen_data_refuses_to_replace_without_overwrite(tmp_path):
    gen("--rows", 100, "--out", tmp_path / "d")
    result = run_tool("gen_data.py", "--rows", 50, "--out", tmp_path / "d", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: 1 data file(s) in {tmp_path / 'd'} and {tmp_path / 'd.truth.txt'} "
                                     f"already exist from an earlier run; pass --overwrite to replace them, or "
                                     f"choose a new --out")
    assert len(open(tmp_path / "d.truth.txt").read().splitlines()) == 100  # untouched
    result = run_tool("gen_data.py", "--rows", 50, "--out", tmp_path / "d", "--overwrite")
    assert result.stdout.startswith("--overwrite: removing 2 file(s) of an earlier run: ")
    assert len(open(tmp_path / "d.truth.txt").read().splitlines()) == 50
    # a truth file alone (data dir removed) is refused too
    os.remove(tmp_path / "d" / "part-00000.txt")
    result = run_tool("gen_data.py", "--rows", 50, "--out", tmp_path / "d", check=False)
    assert result.returncode == 2 and "d.truth.txt already exist" in result.stderr


def test_criteo_sparse_profile_is_heavy_tailed(tmp_path):
    summary = gen("--profile", "criteo_sparse", "--rows", 20000, "--seed", 1, "--format", "raw", "--out", tmp_path)
    assert 0.7 < summary["bayes_auc"] < 0.95
    (dense, sparse, label), _ = rows(tmp_path, criteo_schema())
    distinct = [len(np.unique(sparse[:, k][sparse[:, k] != 0])) for k in range(26)]
    assert sum(distinct) > 35_000  # (200k rows: ~283k distinct values, as Criteo has ~300k)
    assert max(distinct) > 5000 and min(distinct) <= 4  # C9 (3 values), C20 (4) stay tiny
    with open(tmp_path / "part-00000.txt") as f:
        assert len(f.readline().split("\t")) == 40


@pytest.mark.parametrize("bad_line, reason", [
    ("1,2,5,3,t,Drama,F,1,1", "expected 10 comma-separated columns"),
    ("1,2,high,3,t,Drama,F,1,1,2", "column 'rating': label is not a number: 'high'"),
    ("1,2,5,3,t,Drama,F,1,1,2,extra", "expected 10 comma-separated columns"),
])
def test_trainer_reports_worker_errors_as_one_line(tmp_path, bad_line, reason):
    config = os.path.join(REPO_ROOT, "datasets", "movielens", "config.yaml")
    gen("-m", config, "--rows", 300, "--seed", 1, "--out", tmp_path / "train")
    path = tmp_path / "train" / "part-00000.csv"
    lines = path.read_text().splitlines()
    lines.insert(200, bad_line)
    path.write_text("\n".join(lines) + "\n")
    assert_training_stops_with_one_error(config, tmp_path, f"error: {path}:201: {reason}")


@pytest.mark.parametrize("fmt, corrupt, reason", [
    ("slot", lambda line: line.replace(" 5:", " 5:x", 1), "slot 5: id 'x"),
    ("slot", lambda line: line.replace(" 5:", " 5:" + "9" * 5000, 1), "slot 5: id 99999999999999999999...("),
    ("raw", lambda line: "\t".join(line.split("\t")[:30]), "expected 40 tab-separated columns"),
    ("raw", lambda line: "2" + line[1:], "click label must be 0 or 1, got '2'"),
])
def test_trainer_reports_criteo_worker_errors_as_one_line(tmp_path, fmt, corrupt, reason):
    gen("--rows", 300, "--seed", 1, "--format", fmt, "--out", tmp_path / "train")
    path = tmp_path / "train" / "part-00000.txt"
    lines = path.read_text().splitlines()
    lines[150] = corrupt(lines[150])
    path.write_text("\n".join(lines) + "\n")
    config = os.path.join(REPO_ROOT, "models", "rank", "deepfm", "config.yaml")
    assert_training_stops_with_one_error(config, tmp_path, f"error: {path}:151: {reason}")


def assert_training_stops_with_one_error(config: str, tmp_path, error: str) -> None:
    """tools/trainer.py (one loader worker) on `tmp_path`/train exits 2 with exactly one `error:` line, which
    starts with `error`, and no traceback."""
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", "trainer.py"), "-m", config, "-o",
                             f"runner.train_data_dir={tmp_path / 'train'}", "runner.num_workers=1",
                             f"runner.model_save_path={tmp_path / 'ckpt'}", "hyper_parameters.fc_sizes=[8]"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(error), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Blocking queue" not in result.stderr
