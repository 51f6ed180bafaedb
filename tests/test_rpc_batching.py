"""Dynamic batching, deterministically: a predictor stand-in that blocks until released lets requests pile up,
so the test knows exactly which requests must be merged into which predictor call."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from ctrkit.runtime.batching import DynamicBatcher
from rpc_helpers import wait_until


class GatedPredictor:
    """Returns column 0 of `dense` (so each request can recognise its own rows); blocks while `gate` is shut."""

    def __init__(self):
        self.gate = threading.Event()
        self.calls: list[int] = []
        self.entered = 0  # calls that reached the gate
        self.fail_next = False

    def run(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        self.entered += 1
        self.gate.wait()
        self.calls.append(len(dense))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("predictor failed")
        return dense[:, 0].copy()


class OnePredictorPool:
    def __init__(self, predictor: GatedPredictor):
        self.predictor = predictor

    @contextlib.contextmanager
    def acquire(self):
        yield self.predictor


def submit(batcher: DynamicBatcher, first_value: float, rows: int, results: dict) -> threading.Thread:
    dense = (first_value + np.arange(rows, dtype=np.float32))[:, None].repeat(13, axis=1)
    sparse = np.zeros((rows, 26), dtype=np.int64)

    def run() -> None:
        try:
            results[first_value] = batcher.predict(dense, sparse)
        except Exception as e:
            results[first_value] = e

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.fixture
def setup():
    predictor = GatedPredictor()
    batcher = DynamicBatcher(OnePredictorPool(predictor), workers=1, window_s=0.0, max_samples=10)
    yield predictor, batcher
    predictor.gate.set()
    batcher.close()


def test_queued_requests_are_merged_and_split_back(setup):
    predictor, batcher = setup
    results: dict = {}
    threads = [submit(batcher, 0, 1, results)]
    wait_until(lambda: predictor.entered == 1, what="first request in the predictor")
    threads += [submit(batcher, v, rows, results) for v, rows in ((100, 2), (200, 3), (300, 4))]
    wait_until(lambda: batcher.queued() == 3, what="three requests queued behind the first")
    predictor.gate.set()
    for t in threads:
        t.join()
    assert predictor.calls == [1, 9]  # the three queued requests went through in one call
    for value, rows in ((0, 1), (100, 2), (200, 3), (300, 4)):
        np.testing.assert_array_equal(results[value], value + np.arange(rows, dtype=np.float32))


def test_each_model_call_is_reported_with_its_samples_requests_and_duration():
    predictor, reports = GatedPredictor(), []
    batcher = DynamicBatcher(OnePredictorPool(predictor), workers=1, window_s=0.0, max_samples=10,
                             on_batch=lambda *report: reports.append(report))
    results: dict = {}
    try:
        threads = [submit(batcher, 0, 1, results)]
        wait_until(lambda: predictor.entered == 1, what="first request in the predictor")
        threads += [submit(batcher, v, rows, results) for v, rows in ((100, 2), (200, 3))]
        wait_until(lambda: batcher.queued() == 2, what="two requests queued behind the first")
        predictor.gate.set()
        for t in threads:
            t.join()
    finally:
        predictor.gate.set()
        batcher.close()
    assert [(samples, requests) for samples, requests, _ in reports] == [(1, 1), (5, 2)]
    assert all(0 <= seconds < 60 for _, _, seconds in reports), reports  # the merged call's own duration


def test_merge_stops_at_max_samples_and_nothing_is_lost(setup):
    predictor, batcher = setup
    results: dict = {}
    threads = [submit(batcher, 0, 1, results)]
    wait_until(lambda: predictor.entered == 1, what="first request in the predictor")
    for i, v in enumerate((100, 200, 300, 400)):
        threads.append(submit(batcher, v, 4, results))
        wait_until(lambda: batcher.queued() == i + 1, what="requests queued in order")
    predictor.gate.set()
    for t in threads:
        t.join()
    assert predictor.calls == [1, 8, 8]  # 4+4 fit in 10, the third 4 is carried over to the next call
    assert all(np.array_equal(results[v], v + np.arange(4, dtype=np.float32)) for v in (100, 200, 300, 400))


def test_failed_call_fails_only_its_requests(setup):
    predictor, batcher = setup
    predictor.fail_next = True
    results: dict = {}
    threads = [submit(batcher, 0, 1, results)]
    wait_until(lambda: predictor.entered == 1, what="first request in the predictor")
    predictor.gate.set()
    threads[0].join()
    assert isinstance(results[0], RuntimeError)
    submit(batcher, 5, 2, results).join()  # the worker lives on
    np.testing.assert_array_equal(results[5], [5, 6])


def test_close_finishes_queued_requests(setup):
    predictor, batcher = setup
    results: dict = {}
    threads = [submit(batcher, 1, 1, results)]
    wait_until(lambda: predictor.entered == 1, what="first request in the predictor")
    threads += [submit(batcher, v, 1, results) for v in (2, 3)]
    wait_until(lambda: batcher.queued() == 2, what="requests queued")
    closer = threading.Thread(target=batcher.close)
    closer.start()
    predictor.gate.set()
    closer.join()
    for t in threads:
        t.join()
    assert sorted(results) == [1, 2, 3] and not any(isinstance(r, Exception) for r in results.values())
