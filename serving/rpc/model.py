"""One served model version: its Paddle Serving feed/fetch contract, request validation, the predictor pool.

The feed and fetch variables come from `serving_server_conf.prototxt`; which feed is the dense and which the
sparse input comes from model_meta.json's input order (the model's `forward` order). Every request is checked
here against that contract before it reaches a predictor, so one bad request is refused with a precise message
and never fails a merged batch that other requests share.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ctrkit.inference import GOLDEN_ATOL, PredictorOptions, PredictorPool, load_exported_model
from ctrkit.serving_config import read_server_config

from serving.rpc import protocol as P
from serving.rpc.batching import DirectRunner, DynamicBatcher
from serving.rpc.protocol import FeedTensor, InferenceRequest, Outputs, RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    window_ms: float = 0.0      # extra wait to gather more requests; 0 = merge only what is already queued
    max_samples: int = 1024     # largest merged predictor batch
    max_request_batch: int = 4096  # larger requests are refused (TOO_LARGE)


@dataclass(frozen=True)
class _FeedVar:
    name: str
    alias: str
    elem_type: int
    shape: tuple[int, ...]  # without the batch dimension


def _describe(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class ServedModel:
    """Validates and answers InferenceRequests for one model version."""

    def __init__(self, path: str, version: int, predictor_options: PredictorOptions, pool_size: int,
                 batching: BatchingOptions, on_predictor_batch=lambda n: None):
        self.version = version
        self.path = path
        self.exported = load_exported_model(path)
        self.batching = batching
        self._atol = predictor_options.golden_atol or GOLDEN_ATOL[predictor_options.precision]
        config = read_server_config(path)
        self.feeds = [_FeedVar(v.name, v.alias_name or v.name, v.feed_type, tuple(v.shape)) for v in config.feed_var]
        self.fetches = {(v.alias_name or v.name): v.name for v in config.fetch_var}  # alias -> name
        self._by_key = {f.name: f for f in self.feeds} | {f.alias: f for f in self.feeds}  # alias wins
        self._fetch_by_key = {name: alias for alias, name in self.fetches.items()} | {a: a for a in self.fetches}
        self._check_contract()
        self.id_limit = self.exported.feature_spec.sparse_feature_number
        pool = PredictorPool(self.exported, predictor_options, pool_size)  # golden-checks every predictor
        self._runner = (DynamicBatcher(pool, pool_size, batching.window_ms / 1000.0, batching.max_samples,
                                       on_predictor_batch, name=f"v{version}-batcher")
                        if batching.enabled else DirectRunner(pool, on_predictor_batch))
        try:
            self.self_check()
        except Exception:
            self._runner.close()
            raise

    def _check_contract(self) -> None:
        inputs = self.exported.input_names
        names = [f.name for f in self.feeds]
        if sorted(names) != sorted(inputs):
            raise ValueError(f"{self.path}: serving config feeds {names} differ from the model inputs {inputs}")
        if len(self.fetches) != 1:
            raise ValueError(f"{self.path}: serving config must declare exactly one fetch var, "
                             f"got {list(self.fetches)}")
        self._dense_feed, self._sparse_feed = (next(f for f in self.feeds if f.name == n) for n in inputs)
        if self._dense_feed.elem_type != P.FP32 or self._sparse_feed.elem_type != P.INT64:
            raise ValueError(f"{self.path}: expected an FP32 dense feed and an INT64 sparse feed")

    # ------------------------------------------------------------------------------------- serving
    def infer(self, request: InferenceRequest) -> Outputs:
        t0 = time.time()
        dense, sparse = self._feeds(request)
        fetch = self._fetch_names(request.fetch_var_names)
        t1 = time.time()
        prob = self._runner.predict(dense, sparse).reshape(-1, 1)
        # Paddle Serving's convention: (start, end) pairs in microseconds, here for validation and prediction
        profile = [int(t * 1e6) for t in (t0, t1, t1, time.time())] if request.profile_server else []
        return Outputs({alias: (self.fetches[alias], prob) for alias in fetch}, request.log_id, profile)

    def _fetch_names(self, names: list[str]) -> list[str]:
        if not names:
            return list(self.fetches)
        unknown = [n for n in names if n not in self._fetch_by_key]
        if unknown:
            raise RequestError(P.UNKNOWN_NAME, f"unknown fetch var '{unknown[0]}'; this model fetches "
                                               f"{list(self.fetches)}")
        return [self._fetch_by_key[n] for n in names]

    def _feeds(self, request: InferenceRequest) -> tuple[np.ndarray, np.ndarray]:
        given: dict[str, FeedTensor] = {}
        for t in request.feeds:
            var = self._by_key.get(t.key)
            if var is None:
                raise RequestError(P.UNKNOWN_NAME, f"unknown feed '{t.key}'; this model's feeds are "
                                                   f"{[f.alias for f in self.feeds]}")
            if var.alias in given:
                raise RequestError(P.UNKNOWN_NAME, f"feed '{var.alias}' is given twice")
            given[var.alias] = t
        missing = [f.alias for f in self.feeds if f.alias not in given]
        if missing:
            raise RequestError(P.MISSING_FEED, f"missing feed(s) {missing}; this model needs "
                                               f"{[f.alias for f in self.feeds]}")
        arrays = {alias: self._check_tensor(self._by_key[alias], t) for alias, t in given.items()}
        batches = {alias: len(a) for alias, a in arrays.items()}
        if len(set(batches.values())) != 1:
            raise RequestError(P.WRONG_SHAPE, f"feeds disagree on the batch size: {batches}")
        dense, sparse = arrays[self._dense_feed.alias], arrays[self._sparse_feed.alias]
        if not np.isfinite(dense).all():
            row, col = np.argwhere(~np.isfinite(dense))[0]
            raise RequestError(P.NOT_FINITE, f"feed '{self._dense_feed.alias}' [{row}, {col}] is "
                                             f"{dense[row, col]}; values must be finite")
        bad = (sparse < 0) | (sparse >= self.id_limit)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise RequestError(P.OUT_OF_RANGE, f"feed '{self._sparse_feed.alias}' [{row}, {col}] = "
                                               f"{sparse[row, col]} is outside the embedding table "
                                               f"[0, {self.id_limit})")
        return dense, sparse

    def _check_tensor(self, var: _FeedVar, t: FeedTensor) -> np.ndarray:
        if t.has_lod:
            raise RequestError(P.WRONG_SHAPE, f"feed '{var.alias}' is not a LoD tensor; drop its lod")
        if t.elem_type != var.elem_type:
            raise RequestError(P.WRONG_DTYPE, f"feed '{var.alias}' needs elem_type {var.elem_type} "
                                              f"({P.ELEM_NAMES[var.elem_type]}), got {t.elem_type} "
                                              f"({P.ELEM_NAMES.get(t.elem_type, 'unknown')})")
        if t.shape[1:] != var.shape:
            raise RequestError(P.WRONG_SHAPE, f"feed '{var.alias}' needs shape {_describe(('B',) + var.shape)} "
                                              f"(batch first), got {_describe(t.shape)}")
        batch = t.shape[0]
        if batch == 0:
            raise RequestError(P.EMPTY_BATCH, f"feed '{var.alias}' has an empty batch (shape "
                                              f"{_describe(t.shape)})")
        if batch > self.batching.max_request_batch:
            raise RequestError(P.TOO_LARGE, f"batch of {batch} exceeds this server's limit of "
                                            f"{self.batching.max_request_batch} samples per request")
        if t.values.size != P.prod(t.shape):
            raise RequestError(P.WRONG_SHAPE, f"feed '{var.alias}' has {t.values.size} values but shape "
                                              f"{_describe(t.shape)} needs {P.prod(t.shape)}")
        return t.values.reshape(t.shape)

    # --------------------------------------------------------------------------------- lifecycle
    def self_check(self) -> None:
        """Send the golden batch through the whole serving path (feeds, validation, batcher, predictor)."""
        dense, sparse, expected = self.exported.golden()
        request = InferenceRequest(
            [FeedTensor(self._dense_feed.alias, self._dense_feed.elem_type, dense.shape, dense.ravel(), False),
             FeedTensor(self._sparse_feed.alias, self._sparse_feed.elem_type, sparse.shape, sparse.ravel(), False)],
            [], 0, False)
        out = self.infer(request)
        (_, got), = out.tensors.values()
        diff = float(np.max(np.abs(got.reshape(-1).astype(np.float64) - expected)))
        if not diff <= self._atol:
            raise ValueError(f"self-check of version {self.version} failed: golden batch max abs diff {diff:.3g} "
                             f"> {self._atol:g} through the serving path")
        log.info("version %d self-check passed (%d golden rows, max abs diff %.2g)", self.version, len(expected),
                 diff)

    def queued(self) -> int:
        return self._runner.queued()

    def close(self) -> None:
        self._runner.close()
