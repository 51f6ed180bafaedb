"""benchmarks/run.py and compare.py end to end: real exported model, real cell processes, real reports."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "benchmarks", "run.py")
COMPARE = os.path.join(REPO, "benchmarks", "compare.py")
CELL_FIELDS = ("backend", "device", "onednn", "tensorrt", "threads", "batch", "status", "reason", "samples_per_s",
               "p50_ms", "p99_ms", "max_abs_diff", "peak_rss_mb")


def run_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True, timeout=timeout)


def write_matrix(path, groups: str, measure: str = "{warmup_iters: 1, min_time_s: 0.05, min_iters: 3}") -> str:
    path.write_text(f"profiles:\n  t:\n    measure: {measure}\n    groups:\n{groups}")
    return str(path)


@pytest.fixture(scope="module")
def quick_run(exported_deepfm, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-quick")
    proc = run_bench("--model", exported_deepfm, "--profile", "quick", "--out", str(out), "--no-serving")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.json", encoding="utf-8") as f:
        return out, json.load(f)


def test_quick_profile_writes_json_markdown_and_charts(quick_run):
    out, results = quick_run
    env = results["environment"]
    for key in ("cpu_model", "physical_cores", "memory_total_gb", "os", "python", "paddle", "paddle_capabilities",
                "gpus", "gpu_note", "load_average_start", "load_average_end"):
        assert key in env, key
    cells = results["cells"]
    for cell in cells:
        assert all(field in cell for field in CELL_FIELDS), cell
        assert cell["status"] in ("ok", "skipped"), cell
    ok = [c for c in cells if c["status"] == "ok"]
    assert {c["backend"] for c in ok} >= {"paddle", "onnxruntime", "jit_load"}
    for c in ok:
        assert c["samples_per_s"] > 0 and 0 < c["p50_ms"] <= c["p99_ms"] and c["peak_rss_mb"] > 0
        assert c["max_abs_diff"] <= 1e-5
    assert {(c["onednn"], c["batch"]) for c in ok if c["backend"] == "paddle"} == {
        (False, 1), (False, 2048), (True, 1), (True, 2048)}

    report = (out / "report.md").read_text()
    for heading in ("## Environment", "## Best correct configuration per batch size", "## Throughput",
                    "## Skipped cells", "![throughput.png](throughput.png)"):
        assert heading in report
    assert "**" in report.split("## Throughput")[1].split("##")[0]  # the best cell per batch size is bold
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cells_this_build_cannot_run_are_skipped_with_the_reason(quick_run):
    from ctrkit.inference import capabilities

    _, results = quick_run
    skipped = [c for c in results["cells"] if c["status"] == "skipped"]
    assert all(c["reason"] and c["samples_per_s"] is None for c in skipped)
    reasons = {(c["backend"], c["device"], c["memory_optim"]): c["reason"] for c in skipped}
    assert "new-IR" in reasons[("paddle", "cpu", True)]  # memory_optim on a .json model
    assert "no training checkpoint" in reasons[("dygraph", "cpu", None)]
    if not capabilities()["cuda"]:
        gpu = [c for c in results["cells"] if c["device"] == "gpu"]
        assert gpu and all(c["status"] == "skipped" and "CPU-only build" in c["reason"] for c in gpu)


def test_outputs_that_do_not_match_the_golden_batch_are_reported_wrong(exported_deepfm, tmp_path):
    model = tmp_path / "tampered"
    shutil.copytree(exported_deepfm, model)
    meta = json.loads((model / "model_meta.json").read_text())
    meta["golden"]["prob"] = [p + 0.25 for p in meta["golden"]["prob"]]
    (model / "model_meta.json").write_text(json.dumps(meta))
    matrix = write_matrix(tmp_path / "m.yaml", "      - {backend: [paddle, onnxruntime, jit_load], batch: 5}\n")
    out = tmp_path / "out"
    proc = run_bench("--model", str(model), "--matrix", matrix, "--profile", "t", "--out", str(out))
    assert proc.returncode == 1, proc.stderr[-3000:]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["wrong"] * 3
    assert all("golden" in c["reason"] for c in cells)
    jit = cells[2]  # measured by the benchmark itself, not refused by a predictor's self-check
    assert jit["samples_per_s"] > 0 and jit["max_abs_diff"] == pytest.approx(0.25, abs=1e-3)
    report = (out / "report.md").read_text()
    assert "## Wrong cells" in report and "WRONG" in report and "No cell produced correct outputs" in report


def test_a_cell_that_hangs_is_an_error_not_a_skip(exported_deepfm, tmp_path):
    matrix = write_matrix(tmp_path / "m.yaml", "      - {backend: paddle, batch: 1}\n",
                          measure="{cell_timeout_s: 0.5}")
    out = tmp_path / "out"
    proc = run_bench("--model", exported_deepfm, "--matrix", matrix, "--profile", "t", "--out", str(out))
    assert proc.returncode == 1
    (cell,) = json.loads((out / "results.json").read_text())["cells"]
    assert cell["status"] == "error" and "timed out after 0.5 s" in cell["reason"]


def test_bad_matrix_or_model_exits_2_with_the_place(exported_deepfm, tmp_path):
    matrix = write_matrix(tmp_path / "m.yaml", "      - {backend: paddle, batch: [1, -4]}\n")
    proc = run_bench("--model", exported_deepfm, "--matrix", matrix, "--profile", "t", "--out", str(tmp_path))
    assert proc.returncode == 2 and "profiles.t.groups[0].batch: invalid value -4" in proc.stderr
    proc = run_bench("--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and f"no model_meta.json at {tmp_path}" in proc.stderr


def test_compare_flags_a_planted_regression(quick_run, tmp_path):
    out, results = quick_run
    same = subprocess.run([sys.executable, COMPARE, str(out), str(out)], capture_output=True, text=True)
    assert same.returncode == 0 and "no regression" in same.stdout
    slower = json.loads(json.dumps(results))
    victim = next(c for c in slower["cells"] if c["status"] == "ok" and c["backend"] == "onnxruntime")
    victim["samples_per_s"] *= 0.8
    broken = next(c for c in slower["cells"] if c["status"] == "ok" and c["backend"] == "paddle")
    broken.update(status="wrong", reason="planted")
    (tmp_path / "results.json").write_text(json.dumps(slower))
    proc = subprocess.run([sys.executable, COMPARE, str(out / "results.json"), str(tmp_path), "--threshold", "0.1"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout
    assert "2 regression(s)" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "0.800" in l)
    assert victim["config"] in line and "REGRESSION" in line
    # the same 20% drop is within a 25% threshold; the wrong cell still is a regression
    lenient = subprocess.run([sys.executable, COMPARE, str(out), str(tmp_path), "--threshold", "0.25"],
                             capture_output=True, text=True)
    assert lenient.returncode == 1 and "1 regression(s)" in lenient.stdout


def test_serving_section_measures_both_servers_and_compare_flags_errors(exported_deepfm, tmp_path):
    (tmp_path / "m.yaml").write_text("""
profiles:
  t:
    measure: {warmup_iters: 1, min_time_s: 0.05, min_iters: 3}
    groups: [{backend: paddle, batch: 1}]
    serving:
      rpc: {transports: [http], concurrency: [2], batch: [1], duration_s: 0.5}
      upload: {requests: 5, lines: 200, repeat: 1}
""")
    out = tmp_path / "out"
    proc = run_bench("--model", exported_deepfm, "--matrix", str(tmp_path / "m.yaml"), "--profile", "t",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rpc, upload = results["serving"]["rpc"], results["serving"]["upload"]
    assert rpc["status"] == "ok" and upload["status"] == "ok", results["serving"]
    (run,) = rpc["runs"]
    assert (run["transport"], run["concurrency"], run["batch"], run["errors"]) == ("http", 2, 1, 0)
    assert run["qps"] > 0 and run["p50_ms"] <= run["p99_ms"]
    assert upload["result"]["latency"]["lines"] == 80 and upload["result"]["throughput"]["slot top10"]["lines"] == 200
    report = (out / "report.md").read_text()
    assert "### RPC server" in report and "### Upload endpoint" in report
    assert (out / "serving_latency.png").read_bytes()[:4] == b"\x89PNG"

    run["errors"] = 3
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = subprocess.run([sys.executable, COMPARE, str(out), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "REGRESSION: errors 0 -> 3" in proc.stdout


def test_no_serving_records_why_serving_was_not_measured(quick_run):
    out, results = quick_run
    assert {part: body["status"] for part, body in results["serving"].items()} == {"rpc": "not_run",
                                                                                   "upload": "not_run"}
    assert "Not measured (not_run): --no-serving was given" in (out / "report.md").read_text()
