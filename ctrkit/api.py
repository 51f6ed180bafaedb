"""Prediction from an exported model in one call.

    from ctrkit import api

    probs = api.predict("output/deepfm/inference", lines)         # text lines, as in the training data
    probs = api.predict("output/deepfm/inference", "data/synthetic/test")   # a file or a directory of files
    probs = api.predict("output/deepfm/inference", {"dense_input": dense, "sparse_inputs": sparse})
    probs = api.predict("output/deepfm/inference", (dense, sparse))         # the same two arrays

`probs` is a float32 numpy array with one click probability per line / row, in input order. Lines (str or bytes)
are parsed by the data layer with the exported model's own feature schema: any format it reads (PaddleRec slot
format, raw Criteo TSV, with or without the click label); the format is detected from the first line and must
stay the same. A malformed line raises `ctrkit.data.DataFormatError` naming the line. Arrays are checked against
the model's inputs (`ctrkit.runtime.RuntimeInputError` names the input).

`predict` loads the model each time (a golden-batch self-check included, about a second); to predict many times,
load once:

    with api.load("output/deepfm/inference", cpu_threads=2) as model:
        for lines in chunks:
            probs = model.predict(lines)

Both run on the serving runtime (`ctrkit.runtime`), as the servers do: `backend="paddle"` (Paddle Inference,
default) or `"onnxruntime"` (the export's `model.onnx`), `cpu_threads`, `enable_mkldnn`; the model directory is what
`tools/to_static.py` wrote (or its `serving_server/`, or a folder of numbered versions: the highest good one).
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable

import numpy as np

__all__ = ["CTRPredictor", "load", "predict"]

DEFAULT_BATCH_SIZE = 2048


class CTRPredictor:
    """An exported model loaded once; `predict(data)` as `ctrkit.api.predict` without the loading."""

    def __init__(self, model_dir: str | os.PathLike, *, backend: str = "paddle", cpu_threads: int = 1,
                 enable_mkldnn: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, check_golden: bool = True):
        import sys

        if "paddle" not in sys.modules:  # MKL's fast path on AMD CPUs, as the tools do (before paddle loads)
            from ctrkit.cpu_env import configure_cpu_env

            configure_cpu_env()
        from ctrkit.inference import PredictorOptions
        from ctrkit.runtime import BatchingOptions, ModelRuntime, RuntimeOptions

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"{model_dir}: no such model directory (the output of tools/to_static.py)")
        self.batch_size = batch_size
        options = RuntimeOptions(
            backend=backend, instances=1, version_poll_s=0,
            predictor=PredictorOptions(cpu_threads=cpu_threads, onednn=enable_mkldnn, check_golden=check_golden),
            batching=BatchingOptions(enabled=False, max_request_batch=max(batch_size, BatchingOptions().max_request_batch)))
        self._runtime = ModelRuntime(model_dir, options)
        self._runtime.start(watch=False)

    # -------------------------------------------------------------------------------------------- info
    @property
    def version(self) -> int | None:
        return self._runtime.version

    @property
    def contract(self):
        """The served model's inputs (names, dtypes, widths) as `ctrkit.runtime.ModelContract`."""
        return self._runtime.contract

    # --------------------------------------------------------------------------------------- predicting
    def predict(self, data) -> np.ndarray:
        """float32 [N]: one probability per line / row of `data` (see the module's docstring for the forms)."""
        if isinstance(data, dict):
            return self._predict_arrays(data)
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data):
            return self._predict_arrays({"dense_input": data[0], "sparse_inputs": data[1]})
        if isinstance(data, (str, os.PathLike)):
            return self._predict_files(os.fspath(data))
        if isinstance(data, (bytes, np.ndarray)):
            raise TypeError("data must be lines (a list of str/bytes), a path, a dict of input arrays or a "
                            f"(dense, sparse) tuple of arrays, not {type(data).__name__}")
        if isinstance(data, Iterable):
            return self._predict_lines(data)
        raise TypeError(f"data must be lines, a path, or input arrays, not {type(data).__name__}")

    def _predict_arrays(self, inputs: dict) -> np.ndarray:
        rows = {len(v) for v in inputs.values() if hasattr(v, "__len__")}
        n = rows.pop() if len(rows) == 1 else None
        if n is None or n <= self.batch_size:  # one call (the runtime reports bad shapes by input name)
            return self._runtime.predict(inputs).probs.astype(np.float32, copy=False)
        parts = [self._runtime.predict({k: v[i:i + self.batch_size] for k, v in inputs.items()}).probs
                 for i in range(0, n, self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _score_chunks(self, chunks) -> np.ndarray:
        """The lines -> predictions path of paddle_infer.py and the upload service (ctrkit.batch_predict)."""
        from ctrkit.batch_predict import FormatLock, batch_predictor, model_schema, score_chunks

        with self._runtime.session() as model:
            schema = model_schema(model.exported)
        lock = FormatLock(schema)
        parts = [scored.probs for scored in score_chunks(map(lock, chunks), schema, batch_predictor(self._runtime),
                                                         pipeline=False)]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.empty(0, np.float32)

    def _predict_lines(self, lines: Iterable) -> np.ndarray:
        from ctrkit.batch_predict import iter_chunks

        encoded = []
        for i, line in enumerate(lines, start=1):
            if isinstance(line, str):
                line = line.encode("utf-8")
            elif not isinstance(line, bytes):
                raise TypeError(f"line {i}: expected str or bytes, got {type(line).__name__}")
            encoded.append(line.rstrip(b"\r\n") + b"\n")
        if not encoded:
            return np.empty(0, np.float32)
        return self._score_chunks(iter_chunks(io.BytesIO(b"".join(encoded)), "<lines>", self.batch_size))

    def _predict_files(self, path: str) -> np.ndarray:
        from ctrkit.batch_predict import iter_file_chunks
        from ctrkit.data import list_data_files

        return self._score_chunks(iter_file_chunks(list_data_files(path), self.batch_size))

    # --------------------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._runtime.close()

    def __enter__(self) -> "CTRPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(model_dir: str | os.PathLike, **options) -> CTRPredictor:
    """Load an exported model once for many `predict` calls. Options: backend ("paddle" | "onnxruntime"),
    cpu_threads, enable_mkldnn, batch_size (rows per model call, default 2048), check_golden."""
    return CTRPredictor(model_dir, **options)


def predict(model_dir: str | os.PathLike, data, **options) -> np.ndarray:
    """One probability (float32) per line / row of `data`, predicted by the exported model in `model_dir`.
    `data`: text lines (list of str/bytes), a path (file or directory of files), `{"dense_input": float32 [B, n],
    "sparse_inputs": int64 [B, w]}` or a `(dense, sparse)` tuple. Options as `load`."""
    with CTRPredictor(model_dir, **options) as model:
        return model.predict(data)
