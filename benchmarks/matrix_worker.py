"""Runs ONE benchmark cell in this process, so its peak RSS is its own:

    python benchmarks/matrix_worker.py <job.json> <result.json>

job.json: {"model": <export dir>, "cell": Cell fields, "measure": {...}, "tolerance": float}. The input is the
model's golden batch tiled to the cell's batch size; every measured batch's output is compared with the tiled
golden outputs. The result's status is "ok", "wrong" (outputs off by more than the tolerance, or the predictor's
own golden self-check refused) or "skipped" (this build, machine or export cannot run the cell; the reason is the
exact message). Any other failure propagates: run.py records it as "error" with this process's stderr.
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from matrix_spec import Cell

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


class SkipCell(Exception):
    """This build, machine or export cannot run the cell; the message is the reason."""


def main(argv: list[str]) -> int:
    from ctrkit.cpu_env import configure_cpu_env

    configure_cpu_env()  # before paddle loads (MKL's fast path on AMD CPUs), as every entry point does
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    result = run_cell(job["model"], Cell.from_dict(job["cell"]), job["measure"], job["tolerance"])
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


def run_cell(model_dir: str, cell: Cell, measure: dict, tolerance: float) -> dict:
    import paddle  # noqa: F401  every backend imports it (capability checks): first, so base_rss_mb is comparable
    from ctrkit.inference import CapabilityError, GoldenMismatchError, load_exported_model

    exported = load_exported_model(model_dir)
    base_rss = current_rss_mb()
    try:
        start = time.perf_counter()
        predict, engine = make_predict(exported, cell, tolerance)
        create_ms = (time.perf_counter() - start) * 1e3
    except (CapabilityError, SkipCell) as e:
        return {"status": "skipped", "reason": str(e)}
    except GoldenMismatchError as e:
        return {"status": "wrong", "reason": f"the predictor's golden self-check refused it: {e}"}
    dense, sparse, expected = tiled_golden(exported, cell.batch)
    stats = measure_predict(predict, dense, sparse, expected, measure)
    stats.update(engine=engine, create_ms=round(create_ms, 1), base_rss_mb=round(base_rss, 1),
                 peak_rss_mb=round(peak_rss_mb(), 1))
    if stats["max_abs_diff"] is None or stats["max_abs_diff"] > tolerance:
        what = "not finite or of the wrong shape" if stats["max_abs_diff"] is None else \
            f"max |output - golden| = {stats['max_abs_diff']:.3g} > tolerance {tolerance:g}"
        return {"status": "wrong", "reason": f"outputs {what}", **stats}
    return {"status": "ok", "reason": "", **stats}


def tiled_golden(exported, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The golden rows repeated to `batch` rows, and the golden outputs repeated alike."""
    dense, sparse, prob = exported.golden()
    reps = math.ceil(batch / len(prob))
    return (np.ascontiguousarray(np.tile(dense, (reps, 1))[:batch]),
            np.ascontiguousarray(np.tile(sparse, (reps, 1))[:batch]),
            np.tile(prob.astype(np.float64), reps)[:batch])


def measure_predict(predict: Predict, dense: np.ndarray, sparse: np.ndarray, expected: np.ndarray,
                    measure: dict) -> dict:
    """Warm up, then time single predict calls until both min_time_s and min_iters are reached."""
    worst = 0.0
    for _ in range(int(measure["warmup_iters"])):
        worst = max(worst, max_abs_diff(predict(dense, sparse), expected))
    latencies: list[float] = []
    cpu_s = 0.0  # CPU time of this process (all threads) in predict: steadier than wall time on a busy machine
    start = time.perf_counter()
    while len(latencies) < measure["max_iters"] and (
            len(latencies) < measure["min_iters"] or time.perf_counter() - start < measure["min_time_s"]):
        c0, t0 = time.process_time(), time.perf_counter()
        out = predict(dense, sparse)
        latencies.append(time.perf_counter() - t0)
        cpu_s += time.process_time() - c0
        worst = max(worst, max_abs_diff(out, expected))  # outside the timed region
    lat_ms = np.asarray(latencies) * 1e3
    return {
        "iterations": len(latencies),
        "measured_s": round(float(lat_ms.sum()) / 1e3, 3),
        "samples_per_s": round(len(expected) * len(latencies) / float(lat_ms.sum() / 1e3), 1),
        "mean_ms": round(float(lat_ms.mean()), 4),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 4),
        "p90_ms": round(float(np.percentile(lat_ms, 90)), 4),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 4),
        "cpu_ms_per_batch": round(cpu_s * 1e3 / len(latencies), 4),
        "max_abs_diff": None if math.isinf(worst) else float(worst),
    }


def max_abs_diff(out: np.ndarray, expected: np.ndarray) -> float:
    """inf when the output has the wrong size or is not finite, so it can never pass."""
    out = np.asarray(out, np.float64).reshape(-1)
    if out.shape != expected.shape or not np.all(np.isfinite(out)):
        return math.inf
    return float(np.abs(out - expected).max())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def current_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def make_predict(exported, cell: Cell, tolerance: float) -> tuple[Predict, str]:
    """The cell's predict function and a description of the engine that runs it. Paddle Inference and ONNX
    Runtime predictors come from ctrkit.inference (with its golden self-check at `tolerance`)."""
    return {"paddle": _paddle, "onnxruntime": _onnxruntime, "dygraph": _dygraph,
            "jit_load": _jit_load}[cell.backend](exported, cell, tolerance)


def _paddle(exported, cell: Cell, tolerance: float) -> tuple[Predict, str]:
    import paddle
    from ctrkit.inference import PredictorOptions, create_predictor

    options = PredictorOptions(device=cell.device, onednn=cell.onednn, cpu_threads=cell.threads,
                               ir_optim=cell.ir_optim, memory_optim=cell.memory_optim,
                               tensorrt=None if cell.tensorrt == "off" else cell.tensorrt,
                               trt_max_batch=max(cell.batch, PredictorOptions.trt_max_batch),
                               golden_atol=tolerance)
    return create_predictor(exported, options).predict, f"Paddle Inference {paddle.__version__}"


def _onnxruntime(exported, cell: Cell, tolerance: float) -> tuple[Predict, str]:
    import onnxruntime
    from ctrkit.inference import ExportedModelError, create_onnx_predictor

    if cell.device != "cpu":
        raise SkipCell("ctrkit.inference runs ONNX Runtime with the CPU execution provider only")
    try:
        predictor = create_onnx_predictor(exported, cpu_threads=cell.threads)
    except ExportedModelError as e:  # no model.onnx in this export
        raise SkipCell(str(e)) from None
    return predictor.predict, f"ONNX Runtime {onnxruntime.__version__} CPUExecutionProvider"


def _dygraph(exported, cell: Cell, tolerance: float) -> tuple[Predict, str]:
    from ctrkit.checkpoint import load_model_state
    from models.registry import build_model

    checkpoint = exported.meta.get("source", {}).get("checkpoint")
    if not checkpoint:
        raise SkipCell(f"{exported.directory}/model_meta.json records no training checkpoint (source.checkpoint), "
                       "so there are no dygraph weights to load; the jit_load backend runs the exported weights")
    if not os.path.exists(checkpoint):
        raise SkipCell(f"the training checkpoint recorded in the export, {checkpoint}, does not exist here")
    paddle = _eager_paddle(cell)
    model = build_model(exported.name, exported.meta["hyper_parameters"], exported.schema)
    load_model_state(model, checkpoint)
    model.eval()
    return _eager_predict(paddle, model), f"dygraph (Paddle {paddle.__version__}, weights from {checkpoint})"


def _jit_load(exported, cell: Cell, tolerance: float) -> tuple[Predict, str]:
    paddle = _eager_paddle(cell)
    layer = paddle.jit.load(os.path.splitext(exported.model_file)[0])
    layer.eval()
    return _eager_predict(paddle, layer), f"jit.load (dygraph TranslatedLayer, Paddle {paddle.__version__})"


def _eager_paddle(cell: Cell):
    """paddle, set to the cell's device and thread count (the math-library call Paddle Inference also makes)."""
    import paddle
    from ctrkit.inference import CapabilityError, capabilities

    if cell.device == "gpu":
        caps = capabilities()
        if not caps["gpu_count"]:
            raise CapabilityError(f"device=gpu requested, but paddlepaddle {caps['paddle_version']} sees no GPU "
                                  f"(compiled with CUDA: {caps['cuda']})")
        paddle.set_device("gpu")
    else:
        paddle.set_device("cpu")
    paddle.base.core.set_num_threads(cell.threads)
    return paddle


def _eager_predict(paddle, layer) -> Predict:
    def predict(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return layer(paddle.to_tensor(dense), paddle.to_tensor(sparse)).numpy().reshape(-1)
    return predict


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
