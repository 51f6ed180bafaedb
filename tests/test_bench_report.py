"""The benchmark report's throughput chart (issue 12): the best configuration per backend highlighted in its own
colour, every other one faint, machine and load average in the caption; and it renders."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import report  # noqa: E402

BATCHES = (1, 5, 32, 512, 2048)


def _results(configs: dict[str, tuple[str, float]]) -> dict:
    """configs: name -> (backend, throughput scale); samples/s grows with the batch size."""
    cells = []
    for name, (backend, scale) in configs.items():
        for b in BATCHES:
            cells.append({"config": name, "backend": backend, "device": "cpu", "batch": b, "status": "ok",
                          "samples_per_s": scale * (1 + b) ** 0.8, "p50_ms": 1.0, "p99_ms": 2.0})
    cells.append({"config": "paddle gpu", "backend": "paddle", "device": "gpu", "batch": 1, "status": "skipped",
                  "samples_per_s": None})
    return {"model": {"name": "deepfm"}, "cells": cells, "environment": {
        "date": "2026-11-29T19:00:00", "cpu_model": "Test CPU 9000", "physical_cores": 2, "logical_cpus": 2,
        "cpus_usable": 2, "memory_total_gb": 23.5, "gpus": [], "paddle": "3.3.1", "paddle_capabilities": {},
        "onnxruntime": "1.32.0", "python": "3.11.7", "load_average_start": [0.42, 0.5, 0.6],
        "load_average_end": [1.25, 0.7, 0.6]}}


@pytest.fixture
def eighteen():
    configs = {f"paddle cpu variant {i}": ("paddle", 1000 + 100 * i) for i in range(12)}
    configs.update({f"onnxruntime cpu t={i}": ("onnxruntime", 3000 + i) for i in (1, 2)})
    configs.update({f"dygraph cpu t={i}": ("dygraph", 500 * i) for i in (1, 2)})
    configs.update({f"jit_load cpu t={i}": ("jit_load", 400 * (3 - i)) for i in (1, 2)})
    return _results(configs)


def test_best_configuration_per_backend_is_highlighted_and_the_rest_faint(eighteen):
    plan = report.throughput_chart_plan(eighteen)
    best = {line["group"]: line["config"] for line in plan["highlighted"]}
    assert best == {"paddle cpu": "paddle cpu variant 11", "onnxruntime cpu": "onnxruntime cpu t=2",
                    "dygraph cpu": "dygraph cpu t=2", "jit_load cpu": "jit_load cpu t=1"}
    colours = [line["colour"] for line in plan["highlighted"]]
    assert len(set(colours)) == len(colours)  # no repeated colour among the highlighted lines
    assert len(plan["faint"]) == 18 - 4
    assert all(len(line["points"]) == len(BATCHES) for line in plan["highlighted"] + plan["faint"])
    assert "paddle gpu" not in {line["config"] for line in plan["faint"]}  # skipped cells are not drawn


def test_caption_names_the_machine_software_and_load(eighteen):
    caption = report.throughput_chart_plan(eighteen)["caption"]
    for text in ("Test CPU 9000", "2 cores", "23.5 GiB", "no GPU", "Paddle 3.3.1", "ONNX Runtime 1.32.0",
                 "start 0.42/0.5/0.6", "end 1.25/0.7/0.6"):
        assert text in caption, text


def test_chart_renders(eighteen, tmp_path):
    paths = report.write_charts(str(tmp_path), eighteen)
    assert [os.path.basename(p) for p in paths] == ["throughput.png"]
    png = (tmp_path / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_report_with_no_correct_cell_draws_no_throughput_chart(eighteen, tmp_path):
    for cell in eighteen["cells"]:
        cell["status"] = "wrong"
    assert report.write_charts(str(tmp_path), eighteen) == []
