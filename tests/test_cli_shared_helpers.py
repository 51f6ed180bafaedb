"""The one-per-idea helpers every layer uses: atomic file writes (ctrkit.fsutil), the prediction-file format and
writer (ctrkit.predictions), re-batching (ctrkit.rebatch) and the CPU environment of entry points (ctrkit.cpu_env)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ctrkit.cpu_env import configure_cpu_env
from ctrkit.fsutil import atomic_write, write_bytes_atomic, write_json_atomic, write_text_atomic
from ctrkit.predictions import PREDICTION_FORMAT, PredictionWriter, format_predictions, read_predictions, \
    write_predictions
from ctrkit.rebatch import rebatch


# ------------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_publishes_complete_files_only(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "one\n")
    assert target.read_text() == "one\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(KeyError):
        with atomic_write(target) as f:
            f.write("half")
            raise KeyError("crash while writing")
    assert target.read_text() == "one\n"  # the old file is untouched
    assert os.listdir(target.parent) == ["out.txt"]  # no temporary left behind
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(target, "a"):
            pass


# ------------------------------------------------------------------------------------------ predictions

@pytest.mark.parametrize("values", [
    [0.5, 0.25, 1.0, 0.0],
    [3.1e-8, 4.9e-8, 1e-30, 1.4e-45],            # tiny CTRs keep their digits (never 0.0000000)
    [0.123456789, 0.999999940395, 0.1 + 1e-9],   # float32 neighbours stay distinct
])
def test_prediction_files_round_trip_float32_exactly(tmp_path, values):
    probs = np.asarray(values, dtype=np.float32)
    path = tmp_path / "preds.txt"
    write_predictions(path, probs)
    np.testing.assert_array_equal(read_predictions(path), probs)
    assert all(line != "0" or p == 0 for line, p in zip(path.read_text().split(), probs))
    assert PREDICTION_FORMAT == "%.9g"


def test_random_float32_predictions_round_trip(tmp_path):
    probs = np.random.default_rng(0).random(20_000, dtype=np.float32) ** 8
    write_predictions(tmp_path / "p.txt", probs)
    np.testing.assert_array_equal(read_predictions(tmp_path / "p.txt"), probs)


def test_prediction_writer_streams_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "p.txt"
    with PredictionWriter(path) as out:
        out.write(np.array([0.5], np.float32))
        out.write(np.zeros(0, np.float32))
        out.write(np.array([[0.25], [0.125]], np.float32))
    assert path.read_text() == "0.5\n0.25\n0.125\n" and out.count == 3
    with pytest.raises(RuntimeError):
        with PredictionWriter(tmp_path / "q.txt") as out:
            out.write(np.array([0.5], np.float32))
            raise RuntimeError("scoring failed")
    writer = PredictionWriter(tmp_path / "r.txt")
    writer.write(np.array([0.5], np.float32))
    writer.close(complete=False)
    assert sorted(os.listdir(tmp_path)) == ["p.txt"]
    PredictionWriter(None).write(np.array([0.5], np.float32))  # no path: writes nothing
    assert format_predictions([]) == ""


# ------------------------------------------------------------------------------------------- re-batching

@pytest.mark.parametrize("sizes, batch_size", [
    ([3, 0, 5, 7, 1], 4), ([10], 5), ([1] * 9, 4), ([2, 2], 10), ([], 3), ([4, 4, 4], 4), ([13], 1),
])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rebatch_gives_exact_batches_in_row_order(sizes, batch_size, drop_last):
    start, blocks = 0, []
    for n in sizes:
        blocks.append([np.arange(start, start + n), np.arange(start, start + n)[:, None] * 2.0])
        start += n
    batches = list(rebatch(blocks, batch_size, drop_last=drop_last))
    total = sum(sizes)
    expected_full = total // batch_size
    assert [len(b[0]) for b in batches] == [batch_size] * expected_full + (
        [total % batch_size] if total % batch_size and not drop_last else [])
    rows = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0)
    np.testing.assert_array_equal(rows, np.arange(len(rows)))
    for b in batches:
        np.testing.assert_array_equal(b[1][:, 0], b[0] * 2.0)


def test_rebatch_rejects_a_non_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size must be positive"):
        list(rebatch([[np.zeros(1)]], 0))


# -------------------------------------------------------------------------------------------- CPU env

def test_configure_cpu_env_sets_only_what_the_user_did_not(monkeypatch):
    import ctrkit.cpu_env as cpu_env

    monkeypatch.setattr(cpu_env, "is_amd_cpu", lambda cpuinfo="/proc/cpuinfo": True)
    env: dict = {}
    assert configure_cpu_env(env) == {"MKL_DEBUG_CPU_TYPE": "5"} and env == {"MKL_DEBUG_CPU_TYPE": "5"}
    env = {"MKL_DEBUG_CPU_TYPE": ""}  # the user's own value (empty: turned off) wins
    assert configure_cpu_env(env) == {} and env == {"MKL_DEBUG_CPU_TYPE": ""}
    monkeypatch.setattr(cpu_env, "is_amd_cpu", lambda cpuinfo="/proc/cpuinfo": False)
    env = {}
    assert configure_cpu_env(env) == {} and env == {}


def test_cpu_env_is_applied_by_the_trainer_entry_point():
    """The trainer sets it before paddle loads (on AMD CPUs); a user's value is left alone."""
    code = ("import runpy, sys, os; sys.argv = ['trainer.py', '--help']\n"
            "try:\n    runpy.run_path('tools/trainer.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('MKL=' + repr(os.environ.get('MKL_DEBUG_CPU_TYPE')))")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=env).stdout
    from ctrkit.cpu_env import is_amd_cpu

    assert ("MKL='5'" if is_amd_cpu() else "MKL=None") in out, out
    env["MKL_DEBUG_CPU_TYPE"] = "4"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=env).stdout
    assert "MKL='4'" in out, out
