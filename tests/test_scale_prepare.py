"""tools/prepare_criteo.py and the binary shards: they give exactly the batches the text reader gives, the split is
deterministic and covers every line once, an interrupted preparation resumes to the same shards, and a
truncated, corrupt or unfinished shard directory is refused with a clear message."""
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ctrkit.data import DataFormatError, FeatureSpec, iter_batches
from ctrkit.data.synthetic import generate_dataset
from ctrkit.prepare import PrepareError, prepare
from ctrkit.shards import ShardError, iter_shard_batches, open_shards

from conftest import REPO_ROOT

PY = sys.executable
PREPARE = os.path.join(REPO_ROOT, "tools", "prepare_criteo.py")
SPEC = FeatureSpec()
QUIET = {**os.environ, "CTRKIT_NO_PROGRESS": "1"}


def assert_same_batches(shard_batches, text_batches):
    shard_batches, text_batches = list(shard_batches), list(text_batches)
    assert len(shard_batches) == len(text_batches) > 0
    for got, want in zip(shard_batches, text_batches):
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)


def rows_of(batches) -> collections.Counter:
    """Multiset of rows (dense, ids, label) as bytes."""
    counter = collections.Counter()
    for batch in batches:
        columns = [batch.dense.view(np.uint32), batch.sparse.view(np.uint32)]
        if batch.label is not None:
            columns.append(batch.label.view(np.uint32))
        counter.update(row.tobytes() for row in np.concatenate(columns, axis=1))
    return counter


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """6000 raw-format rows in 3 files."""
    root = tmp_path_factory.mktemp("gen")
    generate_dataset(str(root / "raw"), 6000, seed=5, fmt="raw", files=3)
    return str(root / "raw")


@pytest.mark.parametrize("sample", ["raw_sample", "slot_sample"])
def test_real_samples_round_trip_to_the_text_batches(sample, request, tmp_path):
    path = request.getfixturevalue(sample)
    summary = prepare(path, str(tmp_path / "out"), SPEC, splits={"train": 1.0}, lines_per_shard=30,
                      block_bytes=2000, workers=2, progress=False)
    shards = open_shards(tmp_path / "out" / "train")
    assert summary["rows"]["train"] == shards.rows == sum(1 for _ in open(path))
    assert len(shards.manifest["shards"]) == -(-shards.rows // 30)
    assert shards.manifest["id_dtype"] == "int32" and shards.manifest["feature_spec"] == SPEC.to_dict()
    assert_same_batches(iter_shard_batches(shards, 16), iter_batches(path, SPEC, 16))


def test_generated_files_round_trip_across_shard_file_and_block_boundaries(generated, tmp_path):
    prepare(generated, str(tmp_path / "out"), SPEC, splits={"train": 1.0}, lines_per_shard=1000,
            block_bytes=50_000, workers=2, progress=False)
    shards = open_shards(tmp_path / "out" / "train")
    assert [s["rows"] for s in shards.manifest["shards"]] == [1000] * 6
    assert_same_batches(iter_shard_batches(shards, 512), iter_batches(generated, SPEC, 512))


def test_split_is_deterministic_disjoint_and_covers_every_line(generated, tmp_path):
    splits = {"train": 0.8, "valid": 0.1, "test": 0.1}
    manifests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(generated, str(out), SPEC, splits=splits, lines_per_shard=2500, workers=workers, progress=False)
        manifests.append({s: open_shards(out / s).manifest["shards"] for s in splits})
    assert manifests[0] == manifests[1]  # same rows, same bytes (SHA-256), whatever the parallelism
    parts = {s: rows_of(iter_shard_batches(open_shards(tmp_path / "w1" / s), 1000)) for s in splits}
    assert sum(parts.values(), collections.Counter()) == rows_of(iter_batches(generated, SPEC, 1000))
    for name, ratio in splits.items():
        assert abs(sum(parts[name].values()) / 6000 - ratio) < 0.03, (name, sum(parts[name].values()))


def test_shuffled_epochs_see_every_row_once_in_a_seeded_order(generated, tmp_path):
    prepare(generated, str(tmp_path / "out"), SPEC, splits={"train": 1.0}, lines_per_shard=1000, progress=False)
    shards = open_shards(tmp_path / "out" / "train")
    everything = rows_of(iter_shard_batches(shards, 700))

    def order(seed):
        batches = list(iter_shard_batches(shards, 700, shuffle_buffer=1500, seed=seed, block_rows=256))
        assert rows_of(batches) == everything
        return np.concatenate([b.sparse for b in batches])

    assert np.array_equal(order(1), order(1))
    assert not np.array_equal(order(1), order(2))


def run_prepare(*args, **kwargs):
    return subprocess.run([PY, PREPARE, *args], capture_output=True, text=True, env=QUIET, **kwargs)


def test_interrupted_preparation_resumes_to_the_same_shards(tmp_path):
    generate_dataset(str(tmp_path / "raw"), 40_000, seed=9, fmt="raw", files=2)
    common = ["--input", str(tmp_path / "raw"), "--lines_per_shard", "800", "--block_bytes", "40000"]
    straight = run_prepare(*common, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([PY, PREPARE, *common, "--out", str(out)], env=QUIET, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal, deadline = {}, time.time() + 120
    while journal.get("shards_done", 0) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
        if (out / "prepare.json").exists():
            journal = json.loads((out / "prepare.json").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journal = json.loads((out / "prepare.json").read_text())
    assert 2 <= journal["shards_done"] < 50 and not journal["complete"], "not interrupted mid-way"

    resumed = run_prepare(*common, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stderr  # continued from the journal, did not start over
    for split in ("train", "valid", "test"):
        assert open_shards(out / split).manifest["shards"] == open_shards(tmp_path / "straight" / split).manifest[
            "shards"]
        assert not [n for n in os.listdir(out / split) if n.startswith(".")]  # no temporaries left
    again = run_prepare(*common, "--out", str(out))
    assert again.returncode == 0 and "already complete" in again.stderr


def test_resume_with_other_input_or_options_and_foreign_directories_are_refused(generated, tmp_path):
    out = str(tmp_path / "out")
    prepare(generated, out, SPEC, splits={"train": 1.0}, lines_per_shard=1000, progress=False)
    with pytest.raises(PrepareError, match="other options"):
        prepare(generated, out, SPEC, splits={"train": 1.0}, lines_per_shard=500, progress=False)
    with pytest.raises(PrepareError, match="other input"):
        prepare(os.path.join(generated, "part-00000.txt"), out, SPEC, splits={"train": 1.0}, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty"):
        prepare(generated, str(tmp_path / "foreign"), SPEC, progress=False)
    bad = run_prepare("--input", generated, "--out", str(tmp_path / "x"), "--split", "train=0.9,test=0.2")
    assert bad.returncode == 2 and "sum to 1" in bad.stderr


def test_truncated_corrupt_or_unfinished_shards_are_refused(generated, tmp_path):
    src = tmp_path / "good"
    prepare(generated, str(src), SPEC, splits={"train": 1.0}, lines_per_shard=2000, progress=False)

    def broken(name):
        target = tmp_path / name
        shutil.copytree(src / "train", target)
        return target

    truncated = broken("truncated")
    with open(truncated / "part-00001.sparse", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ShardError, match=r"part-00001\.sparse: 1000 bytes, the manifest says .* truncated or partial"):
        open_shards(truncated)

    corrupt = broken("corrupt")
    with open(corrupt / "part-00002.dense", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ShardError, match=r"part-00002\.dense: SHA-256 differs"):
        open_shards(corrupt)

    unfinished = broken("unfinished")
    os.remove(unfinished / "manifest.json")
    with pytest.raises(ShardError, match="no manifest.json"):
        open_shards(unfinished)

    # the trainer says the same in one line, no traceback, before training anything
    for directory, message in ((truncated, "truncated or partial"), (unfinished, "no manifest.json")):
        result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", "trainer.py"), "-m",
                                 os.path.join(REPO_ROOT, "models", "rank", "deepfm", "config.yaml"),
                                 "-o", f"runner.train_data_dir={directory}",
                                 "-o", f"runner.model_save_path={tmp_path / 'ckpt'}"],
                                capture_output=True, text=True, env=QUIET)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, \
            result.stderr[-2000:]


def test_shards_of_another_feature_spec_are_refused(generated, tmp_path):
    prepare(generated, str(tmp_path / "out"), SPEC, splits={"train": 1.0}, progress=False)
    shards = open_shards(tmp_path / "out" / "train")
    with pytest.raises(ShardError, match="sparse_feature_number: shards 1000001, the model 5000"):
        shards.check_spec(FeatureSpec(sparse_feature_number=5000), "the model")
    shards.check_spec(FeatureSpec(data_format="raw"))  # how the text was read does not matter


def test_bad_lines_stop_with_their_line_number_or_are_skipped_and_counted(slot_sample, tmp_path):
    lines = open(slot_sample).read().splitlines(keepends=True)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines[:41] + ["click:1 this is not a slot line\n"] + lines[41:]))
    with pytest.raises(DataFormatError, match=rf"{bad}:42:"):
        prepare(str(bad), str(tmp_path / "strict"), SPEC, splits={"train": 1.0}, workers=1, progress=False)
    summary = prepare(str(bad), str(tmp_path / "lenient"), SPEC, splits={"train": 1.0}, skip_bad=True,
                      progress=False)
    assert summary["skipped_lines"] == 1 and summary["rows"]["train"] == len(lines)
    assert_same_batches(iter_shard_batches(open_shards(tmp_path / "lenient" / "train"), 32),
                        iter_batches(slot_sample, SPEC, 32))


def test_a_split_that_gets_no_lines_is_an_empty_shard_directory(slot_sample, tmp_path):
    summary = prepare(slot_sample, str(tmp_path / "out"), SPEC, splits={"train": 0.9999, "test": 0.0001},
                      progress=False)
    assert summary["rows"] == {"train": 80, "test": 0}
    empty = open_shards(tmp_path / "out" / "test")
    assert empty.rows == 0 and list(iter_shard_batches(empty, 16)) == []
