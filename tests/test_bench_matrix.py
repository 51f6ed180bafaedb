"""The benchmark matrix file: schema, expansion into cells, and clear errors for bad files."""
from __future__ import annotations

import os
import sys

import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH_DIR)  # benchmarks/ holds scripts, not a package; its modules import each other by name

from matrix_spec import MatrixError, load_profile  # noqa: E402


def write_matrix(tmp_path, text: str) -> str:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_profiles_load():
    path = os.path.join(BENCH_DIR, "matrix.yaml")
    quick, full, tutorial = (load_profile(path, p, max_threads=2) for p in ("quick", "full", "tutorial"))
    assert len(quick.cells) < len(full.cells)
    assert {c.backend for c in full.cells} == {"paddle", "onnxruntime", "dygraph", "jit_load"}
    assert {c.batch for c in full.cells} == {1, 5, 32, 512, 2048}
    assert len(tutorial.cells) == 6 and all(c.label and c.batch == 2048 for c in tutorial.cells)
    assert quick.measure["min_time_s"] < full.measure["min_time_s"]


def test_expansion_is_a_cartesian_product_without_meaningless_combinations(tmp_path):
    path = write_matrix(tmp_path, """
profiles:
  p:
    groups:
      - {backend: paddle, device: [cpu, gpu], onednn: [off, on], tensorrt: [off, fp16], threads: [1, max],
         batch: [1, 32]}
""")
    cells = load_profile(path, "p", max_threads=4).cells
    # cpu: onednn 2 x threads 2 x batch 2 (no TensorRT on CPU); gpu: tensorrt 2 x threads 2 x batch 2 (no oneDNN)
    assert len(cells) == 16
    assert not [c for c in cells if c.device == "cpu" and c.tensorrt != "off"]
    assert not [c for c in cells if c.device == "gpu" and c.onednn]
    assert {c.threads for c in cells} == {1, 4}
    assert cells[0].config_name() == "paddle cpu t=1"


def test_duplicate_cells_are_run_once_and_backends_mark_axes_they_lack(tmp_path):
    path = write_matrix(tmp_path, """
profiles:
  p:
    groups:
      - {backend: [paddle, onnxruntime], threads: [1, 2], batch: 8}
      - {backend: onnxruntime, threads: 2, batch: 8, label: again}
""")
    cells = load_profile(path, "p").cells
    assert len(cells) == 4
    ort = [c for c in cells if c.backend == "onnxruntime"]
    assert all(c.onednn is None and c.ir_optim is None and c.memory_optim is None for c in ort)


@pytest.mark.parametrize("group, message", [
    ("{backend: onnxruntime, onednn: on, batch: 1}", "backend onnxruntime has no 'onednn' axis"),
    ("{backend: paddle, batch: 1, precision: fp16}", "unknown axes ['precision']"),
    ("{backend: paddle, batch: 0}", "groups[0].batch: invalid value 0"),
    ("{backend: tensorflow, batch: 1}", "groups[0].backend: invalid value 'tensorflow'"),
    ("{backend: paddle, tensorrt: fp8, batch: 1}", "invalid value 'fp8'"),
    ("{backend: paddle}", "'batch' is required"),
])
def test_bad_groups_are_rejected_with_the_place(tmp_path, group, message):
    path = write_matrix(tmp_path, f"profiles:\n  p:\n    groups:\n      - {group}\n")
    with pytest.raises(MatrixError, match="profiles.p") as info:
        load_profile(path, "p")
    assert message in str(info.value)


def test_unknown_profile_and_settings_are_rejected(tmp_path):
    path = write_matrix(tmp_path, """
profiles:
  p:
    measure: {min_time: 1}
    groups: [{backend: paddle, batch: 1}]
""")
    with pytest.raises(MatrixError, match="no profile 'q'; profiles: p"):
        load_profile(path, "q")
    with pytest.raises(MatrixError, match="unknown key 'min_time'"):
        load_profile(path, "p")


def test_tolerance_per_precision(tmp_path):
    path = write_matrix(tmp_path, """
defaults:
  tolerance: {fp32: 1.0e-4}
profiles:
  p:
    tolerance: {fp16: 0.01}
    groups: [{backend: paddle, device: gpu, tensorrt: [off, fp16, int8], batch: 1}]
""")
    profile = load_profile(path, "p")
    assert [profile.tolerance_for(c) for c in profile.cells] == [1e-4, 0.01, 5e-2]
