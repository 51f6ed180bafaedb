"""tools/gen_data.py and tools/convert.py as a user runs them: determinism, the planted signal's summary and
side file, slot output == convert(raw output) byte for byte and batch for batch, exact float32 round trips, and
one-line errors with exit status 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ctrkit.data import Batch, FeatureSpec, format_slot_lines, iter_batches, parse_lines
from ctrkit.metrics import auc

from conftest import REPO_ROOT

PY = sys.executable
SPEC = FeatureSpec()


def run_tool(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([PY, os.path.join(REPO_ROOT, "tools", name), *map(str, args)],
                            capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def gen(out, rows=3000, seed=1, *extra) -> dict:
    result = run_tool("gen_data.py", "--rows", rows, "--seed", seed, "--out", out, *extra)
    return json.loads(result.stdout.strip().splitlines()[-1])


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def dir_bytes(path) -> bytes:
    return b"".join(read(os.path.join(path, name)) for name in sorted(os.listdir(path)))


def all_rows(path) -> Batch:
    batches = list(iter_batches(str(path), SPEC, 1 << 20))
    return Batch(*(np.concatenate(parts) if parts[0] is not None else None for parts in zip(*batches)))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same 12,000 rows (seed 3) as slot, raw in 3 files, and raw without labels."""
    root = tmp_path_factory.mktemp("gen")
    stats = {name: gen(root / name, 12000, 3, *extra) for name, extra in [
        ("slot", ["--format", "slot"]), ("raw", ["--format", "raw", "--files", "3"]),
        ("raw_nolabel", ["--format", "raw", "--no_label", "--truth", root / "nolabel_truth.txt"])]}
    return root, stats


def test_outputs_only_data_files_and_a_truth_file_beside(generated):
    root, stats = generated
    assert os.listdir(root / "slot") == ["part-00000.txt"]
    assert sorted(os.listdir(root / "raw")) == ["part-00000.txt", "part-00001.txt", "part-00002.txt"]
    assert len(read(root / "slot.truth.txt").splitlines()) == 12000
    assert read(root / "slot.truth.txt") == read(root / "raw.truth.txt") == read(root / "nolabel_truth.txt")
    assert stats["slot"] == stats["raw"] == stats["raw_nolabel"]
    assert [len(read(root / "raw" / n).splitlines()) for n in sorted(os.listdir(root / "raw"))] == [4000] * 3


def test_summary_matches_the_files(generated):
    """positive rate ~25%, Criteo-like Bayes AUC, and the summary recomputes from the files themselves."""
    root, stats = generated
    summary = stats["slot"]
    assert summary["rows"] == 12000
    assert 0.22 < summary["positive_rate"] < 0.28
    assert 0.75 < summary["bayes_auc"] < 0.87
    probs = np.loadtxt(root / "slot.truth.txt")
    assert ((probs > 0) & (probs < 1)).all()
    labels = all_rows(root / "slot").label[:, 0]
    assert labels.mean() == pytest.approx(summary["positive_rate"], abs=1e-6)
    assert auc(labels, probs) == pytest.approx(summary["bayes_auc"], abs=1e-6)
    assert probs.mean() == pytest.approx(0.25, abs=0.02)


def test_slot_output_equals_converted_raw_output(generated, tmp_path):
    root, _ = generated
    result = run_tool("convert.py", "--input", root / "raw", "--output", tmp_path / "converted")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"files": 3, "lines": 12000, "skipped": 0}
    assert dir_bytes(tmp_path / "converted") == dir_bytes(root / "slot")  # byte for byte
    raw, slot = all_rows(root / "raw"), all_rows(root / "slot")  # and batch for batch
    for got, want in zip(raw, slot):
        np.testing.assert_array_equal(got.view(np.uint32) if got.dtype == np.float32 else got,
                                      want.view(np.uint32) if want.dtype == np.float32 else want)


def test_no_label_gives_the_same_rows(generated):
    root, _ = generated
    labeled, unlabeled = all_rows(root / "raw"), all_rows(root / "raw_nolabel")
    assert unlabeled.label is None
    np.testing.assert_array_equal(unlabeled.dense, labeled.dense)
    np.testing.assert_array_equal(unlabeled.sparse, labeled.sparse)


def test_deterministic_by_seed_and_shared_truth(generated, tmp_path):
    root, stats = generated
    assert gen(tmp_path / "again", 12000, 3, "--format", "slot") == stats["slot"]
    assert read(tmp_path / "again" / "part-00000.txt") == read(root / "slot" / "part-00000.txt")
    gen(tmp_path / "other", 12000, 4, "--format", "slot")
    assert read(tmp_path / "other" / "part-00000.txt") != read(root / "slot" / "part-00000.txt")
    # a prefix of the rows does not depend on how many rows are made
    gen(tmp_path / "short", 100, 3, "--format", "slot")
    assert read(root / "slot" / "part-00000.txt").startswith(read(tmp_path / "short" / "part-00000.txt"))
    # another truth seed: another click model
    gen(tmp_path / "truth2", 100, 3, "--format", "slot", "--truth_seed", 5)
    assert read(tmp_path / "truth2.truth.txt") != read(tmp_path / "short.truth.txt")


def test_vocabularies_are_zipf_like(generated):
    root, _ = generated
    sparse = all_rows(root / "slot").sparse
    sizes = [len(np.unique(sparse[:, k][sparse[:, k] > 0])) for k in range(26)]
    assert min(sizes) <= 10 and max(sizes) >= 200  # varied vocabularies (3 to 300 values)
    counts = np.sort(np.unique(sparse[:, int(np.argmax(sizes))], return_counts=True)[1])[::-1]
    assert counts[0] > 20 * counts[len(counts) // 2]  # heavy head, long tail
    assert (sparse == 0).any()  # missing values


def test_float32_round_trip_is_exact():
    rng = np.random.default_rng(0)
    dense = np.concatenate([rng.standard_normal((300, 13)), rng.random((300, 13)) * 1e-30,
                            rng.random((300, 13)) * 1e30, np.full((1, 13), -0.0)]).astype(np.float32)
    batch = Batch(dense, rng.integers(0, 1000001, (len(dense), 26)), rng.integers(0, 2, (len(dense), 1)).astype(
        np.float32))
    back = parse_lines(format_slot_lines(batch), SPEC).batch
    np.testing.assert_array_equal(back.dense.view(np.uint32), dense.view(np.uint32))
    np.testing.assert_array_equal(back.sparse, batch.sparse)
    np.testing.assert_array_equal(back.label, batch.label)


def test_convert_real_sample_round_trips(raw_sample, tmp_path):
    out = tmp_path / "sample.slot.txt"
    run_tool("convert.py", "--input", raw_sample, "--output", out)
    assert sorted(os.listdir(tmp_path)) == ["sample.slot.txt"]
    converted, original = all_rows(out), all_rows(raw_sample)
    np.testing.assert_array_equal(converted.dense.view(np.uint32), original.dense.view(np.uint32))
    np.testing.assert_array_equal(converted.sparse, original.sparse)
    np.testing.assert_array_equal(converted.label, original.label)


def test_convert_bad_line_is_one_line_error(raw_sample, tmp_path):
    lines = read(raw_sample).splitlines(keepends=True)
    lines[41] = lines[41].replace(b"\t", b"\t\t", 1)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"".join(lines))
    result = run_tool("convert.py", "--input", bad, "--output", tmp_path / "out.txt", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {bad}:42: expected 40 tab-separated columns " \
                                    "(label, I1..I13, C1..C26), got 41"
    assert not os.path.exists(tmp_path / "out.txt") and os.listdir(tmp_path) == ["bad.txt"]
    result = run_tool("convert.py", "--input", bad, "--output", tmp_path / "out.txt", "--skip_bad_lines")
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"files": 1, "lines": 99, "skipped": 1}
    assert f"{bad}:42:" in result.stderr


def test_convert_refuses_slot_input(slot_sample, tmp_path):
    result = run_tool("convert.py", "--input", slot_sample, "--output", tmp_path / "x.txt", check=False)
    assert result.returncode == 2 and "data_format is 'raw' but this line is slot format" in result.stderr
    assert "Traceback" not in result.stderr


def test_gen_data_user_errors(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    result = run_tool("gen_data.py", "--rows", 10, "--out", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "notes.md" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_tool("gen_data.py", "--rows", 10, "--out", tmp_path / "d", "--truth", tmp_path / "d" / "t.txt",
                      check=False)
    assert result.returncode == 2 and "must not be inside the data directory" in result.stderr
    result = run_tool("gen_data.py", "--rows", -5, "--out", tmp_path / "d", check=False)
    assert result.returncode == 2 and "--rows" in result.stderr
