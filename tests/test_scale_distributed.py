"""runner.use_fleet: two local CPU workers (gloo) under paddle.distributed.launch, as a user starts them.

Each worker runs tests/scale_dist_worker.py, i.e. ctrkit.training.train with a callback that records, after every
step, a digest of each row the worker trained on and of all parameters. Checked: the workers see disjoint data
covering the whole set, their parameters are identical after every step, a crashed worker stops the job and a
re-run resumes from the last checkpoint, and the result matches one process with the combined batch size.

Tolerance (documented in docs/scale.md): on shards two workers with batch B compute what one process computes with
batch 2B, up to float summation order (the gradient all-reduce adds in another order): parameters agree to
atol 1e-4 (measured: ~1e-5 after two epochs), AUC to 1e-5.
"""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ctrkit.config import load_config
from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.data.synthetic import generate_dataset
from ctrkit.prepare import prepare
from ctrkit.shards import iter_shard_batches, open_shards
from ctrkit.training import evaluate, train
from models.registry import default_config_path

from conftest import REPO_ROOT

PY = sys.executable
WORKER = os.path.join(REPO_ROOT, "tests", "scale_dist_worker.py")
IDS = 100_001
SMALL = ["hyper_parameters.fc_sizes=[16]", f"hyper_parameters.sparse_feature_number={IDS}",
         "runner.print_interval=5"]
ENV = {**os.environ, "CTRKIT_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    spec = FeatureSpec(sparse_feature_number=IDS)
    generate_dataset(str(root / "text"), 8000, seed=21, spec=spec)
    prepare(str(root / "text"), str(root / "shards"), spec, splits={"train": 0.8, "test": 0.2}, progress=False)
    # ~2.5 blocks of the text reader: worker 0 reads two, worker 1 one, so worker 1 runs out first
    generate_dataset(str(root / "uneven"), 5200, seed=22, spec=spec)
    return root


def launch(tmp_path, name, overrides, *worker_args):
    args = [PY, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / f"log_{name}"),
            WORKER, "-m", default_config_path("deepfm"), "--records", str(tmp_path / f"records_{name}"),
            *worker_args]
    for override in ["runner.use_fleet=true", *SMALL, *overrides]:
        args += ["-o", override]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, cwd=str(tmp_path), timeout=420)


def worker_log(tmp_path, name, rank):
    return (tmp_path / f"log_{name}" / f"workerlog.{rank}").read_text()


def records(tmp_path, name):
    return [[json.loads(line) for line in open(tmp_path / f"records_{name}" / f"rank{r}.jsonl")] for r in (0, 1)]


def assert_lockstep(per_rank):
    """Both workers took the same steps and had identical parameters after every one of them."""
    assert [(r["epoch"], r["step"]) for r in per_rank[0]] == [(r["epoch"], r["step"]) for r in per_rank[1]]
    for a, b in zip(*per_rank):
        assert a["params"] == b["params"], f"parameters differ after epoch {a['epoch']} step {a['step']}"


def assert_disjoint_and_complete(per_rank, epoch, expected: collections.Counter):
    seen = [collections.Counter(h for r in rank if r["epoch"] == epoch for h in r["rows"]) for rank in per_rank]
    assert not set(seen[0]) & set(seen[1]), "a row was trained on by both workers"
    assert seen[0] + seen[1] == expected


def row_digests(batches) -> collections.Counter:
    from scale_dist_worker import row_digests as digest
    return collections.Counter(h for b in batches for h in digest(tuple(paddle.to_tensor(a) for a in b)))


def config(overrides):
    return load_config(default_config_path("deepfm"), [*SMALL, *overrides])


def test_two_workers_on_shards_match_one_process_and_resume_after_a_crash(data, tmp_path):
    common = [f"runner.train_data_dir={data / 'shards' / 'train'}", f"runner.model_save_path={tmp_path / 'dp'}",
              "runner.train_batch_size=256", "runner.epochs=2"]
    crashed = launch(tmp_path, "crash", common, "--crash_at", "1:3:1")
    assert crashed.returncode != 0  # the job stops (a hang would hit launch()'s timeout)
    assert "crashing on purpose" in worker_log(tmp_path, "crash", 1)
    # the launcher shows the log of the first worker it saw fail: the crash itself, or the survivor's explanation
    shown = crashed.stdout + crashed.stderr
    assert "crashing on purpose" in shown or "one of them has stopped" in shown, shown[-3000:]
    assert os.path.isdir(tmp_path / "dp" / "0") and not os.path.exists(tmp_path / "dp" / "1")
    first = records(tmp_path, "crash")
    assert_lockstep([[r for r in rank if r["epoch"] == 0] for rank in first])
    train_rows = row_digests(iter_shard_batches(open_shards(data / "shards" / "train"), 1000))
    assert_disjoint_and_complete(first, 0, train_rows)

    preds = tmp_path / "preds_dp.txt"
    infer = [f"runner.test_data_dir={data / 'shards' / 'test'}", f"runner.infer_load_path={tmp_path / 'dp'}",
             "runner.infer_start_epoch=1",
             "runner.infer_end_epoch=2", f"runner.infer_output={preds}"]
    resumed = launch(tmp_path, "resume", common + infer, "--evaluate")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming after epoch 0" in worker_log(tmp_path, "resume", 1)
    second = records(tmp_path, "resume")
    assert {r["epoch"] for rank in second for r in rank} == {1}
    assert_lockstep(second)
    assert_disjoint_and_complete(second, 1, train_rows)
    dp_eval = [json.loads(line[5:]) for line in worker_log(tmp_path, "resume", 0).splitlines()
               if line.startswith("EVAL ")]

    single = config([f"runner.train_data_dir={data / 'shards' / 'train'}", f"runner.model_save_path={tmp_path / 'one'}",
                     "runner.train_batch_size=512", "runner.epochs=2",
                     f"runner.test_data_dir={data / 'shards' / 'test'}", f"runner.infer_load_path={tmp_path / 'one'}",
                     "runner.infer_start_epoch=1", "runner.infer_end_epoch=2",
                     f"runner.infer_output={tmp_path / 'preds_one.txt'}"])
    train(single)
    ours, theirs = paddle.load(str(tmp_path / "one" / "1" / "rec.pdparams")), paddle.load(
        str(tmp_path / "dp" / "1" / "rec.pdparams"))
    for name in ours:
        np.testing.assert_allclose(theirs[name].numpy(), ours[name].numpy(), rtol=0, atol=1e-4, err_msg=name)
    [one_eval] = evaluate(single)
    assert dp_eval and dp_eval[0]["samples"] == one_eval["samples"] == open_shards(data / "shards" / "test").rows
    assert abs(dp_eval[0]["auc"] - one_eval["auc"]) < 1e-5
    np.testing.assert_allclose(np.loadtxt(preds), np.loadtxt(tmp_path / "preds_one.txt"), atol=1e-4)


def test_two_workers_on_text_take_disjoint_blocks_and_step_together(data, tmp_path):
    result = launch(tmp_path, "text", [f"runner.train_data_dir={data / 'uneven'}", "runner.train_batch_size=256",
                                          f"runner.model_save_path={tmp_path / 'ckpt'}", "runner.num_workers=1"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    per_rank = records(tmp_path, "text")
    assert_lockstep(per_rank)
    text_rows = row_digests(iter_batches(str(data / "uneven"), FeatureSpec(sparse_feature_number=IDS), 1000))
    assert_disjoint_and_complete(per_rank, 0, text_rows)
    assert any(not r["rows"] for r in per_rank[1]), "worker 1 should have run out first (padding steps)"
    summary = json.loads(worker_log(tmp_path, "text", 0).strip().splitlines()[-1])
    assert summary["samples"] == sum(text_rows.values()) and summary["workers"] == 2
