"""Model backends: a pool of instances that each run validated arrays -> float32 [B].

- `paddle`: Paddle Inference predictors from `ctrkit.inference` (each golden-checked; not thread-safe, one per
  instance; Paddle's CPU run() holds the GIL).
- `onnxruntime`: the export's `model.onnx` in one ONNX Runtime session (thread-safe, releases the GIL while it
  runs), golden-checked; every instance slot shares it.
- `constant`: answers `constant_value` for every row without touching a model: the benchmark's transport
  ceiling (same front-end, same runtime path, no model cost). Its answers are not predictions; it is never the
  default.
"""
from __future__ import annotations

import contextlib
import queue
from typing import Iterator

import numpy as np

from ctrkit.inference import (ExportedModel, PredictorPool, check_capabilities, create_onnx_predictor)
from ctrkit.runtime.options import RuntimeOptions


class ConstantModel:
    def __init__(self, value: float):
        self.value = np.float32(value)

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        return np.full(len(arrays[0]), self.value, dtype=np.float32)


class InstancePool:
    """`size` model instances handed out one per thread (`with pool.acquire() as instance: instance.run(...)`)."""

    def __init__(self, instances: list):
        self.size = len(instances)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for i in instances:
            self._free.put(i)

    @contextlib.contextmanager
    def acquire(self) -> Iterator:
        instance = self._free.get()
        try:
            yield instance
        finally:
            self._free.put(instance)


def load_backend(model: ExportedModel, options: RuntimeOptions) -> InstancePool:
    """Build the instances of `options.backend` for `model` (golden-checked unless the backend is constant)."""
    if options.backend == "paddle":
        check_capabilities(options.predictor)
        pool = PredictorPool(model, options.predictor, options.instances)
        return InstancePool([pool._free.get() for _ in range(options.instances)])
    if options.backend == "onnxruntime":
        session = create_onnx_predictor(model, options.predictor.cpu_threads, options.predictor.check_golden,
                                        graph_optimization=options.predictor.ir_optim)
        return InstancePool([session] * options.instances)
    return InstancePool([ConstantModel(options.constant_value) for _ in range(options.instances)])
