"""LoopBatcher's join window: a model call waits for requests announced as arriving (no wall-clock speed
assumptions: the waits tested either end on an event or on a window far longer than any step)."""
import argparse
import asyncio
import contextlib
import time

import numpy as np

from ctrkit.runtime import Arrivals, BatchingOptions, LoopBatcher, add_runtime_flags, loop_arrivals, options_from_args


class _Recorder:
    def __init__(self):
        self.calls = []

    def run(self, *arrays):
        self.calls.append(len(arrays[0]))
        return arrays[0][:, 0].astype(np.float32)


class _Pool:
    def __init__(self):
        self.instance = _Recorder()

    @contextlib.contextmanager
    def acquire(self):
        yield self.instance


def _job(value: float):
    return (np.full((1, 2), value, np.float32),)


def test_announced_arrival_joins_the_batch():
    async def go():
        loop = asyncio.get_running_loop()
        pool = _Pool()
        batcher = LoopBatcher(pool, loop, 0.0, 64, join_s=60.0)   # a window no test run reaches
        arrivals = loop_arrivals(loop)
        arrivals.expect()
        first = batcher.submit(_job(1))
        for _ in range(200):                                      # many loop turns: still waiting for the arrival
            await asyncio.sleep(0)
        assert not first.done() and pool.instance.calls == []
        arrivals.arrived()                                        # the announced request is decoded ...
        second = batcher.submit(_job(2))                          # ... and queued in the same step
        assert (await first)[0] == 1 and (await second)[0] == 2
        assert pool.instance.calls == [2]                         # one model call for both
        assert arrivals.pending == 0 and arrivals.waiter is None
    asyncio.run(go())


def test_nothing_announced_never_waits():
    async def go():
        loop = asyncio.get_running_loop()
        pool = _Pool()
        batcher = LoopBatcher(pool, loop, 0.0, 64, join_s=60.0)
        assert (await batcher.submit(_job(3)))[0] == 3
        assert pool.instance.calls == [1]
    asyncio.run(go())


def test_lost_announcement_is_forgotten_after_the_window():
    async def go():
        loop = asyncio.get_running_loop()
        pool = _Pool()
        batcher = LoopBatcher(pool, loop, 0.0, 64, join_s=0.01)
        arrivals = loop_arrivals(loop)
        arrivals.expect()                                         # a call that fails before its handler runs
        assert (await batcher.submit(_job(4)))[0] == 4           # answered once the window passed
        assert arrivals.pending == 0
        assert (await batcher.submit(_job(5)))[0] == 5           # and the next request does not wait
        assert pool.instance.calls == [1, 1]
    asyncio.run(go())


def test_full_batch_does_not_wait_and_join_off():
    async def go():
        loop = asyncio.get_running_loop()
        pool = _Pool()
        arrivals = loop_arrivals(loop)
        arrivals.expect()
        full = LoopBatcher(pool, loop, 0.0, 1, join_s=60.0)       # max_samples 1: a batch is full at once
        assert (await full.submit(_job(6)))[0] == 6
        off = LoopBatcher(pool, loop, 0.0, 64, join_s=0.0)       # join window off: never waits
        assert (await off.submit(_job(7)))[0] == 7
        assert pool.instance.calls == [1, 1]
    asyncio.run(go())


def test_arrivals_per_loop_and_options():
    a = Arrivals()
    a.arrived()                                                   # never below zero
    assert a.pending == 0
    parser = argparse.ArgumentParser()
    add_runtime_flags(parser)
    assert options_from_args(parser.parse_args([])).batching.join_us == BatchingOptions().join_us > 0  # one default
    try:
        BatchingOptions(join_us=-1)
    except ValueError:
        pass
    else:
        raise AssertionError("negative join_us accepted")


class _SlowRecorder(_Recorder):
    def run(self, *arrays):
        time.sleep(0.3)  # far longer than the 200 loop turns below take
        return super().run(*arrays)


def test_join_wait_is_bounded_by_the_model_calls_duration():
    """Waiting longer for an arrival than a model call takes costs more than the call it saves: a cheap model's
    batcher stops waiting, a slow model's keeps waiting for announced requests."""
    async def go(pool, expect_wait: bool):
        loop = asyncio.get_running_loop()
        batcher = LoopBatcher(pool, loop, 0.0, 64, join_s=60.0)
        assert batcher.join_window() == 60.0                      # nothing measured yet: the whole window
        assert (await batcher.submit(_job(1)))[0] == 1            # one call measured
        assert batcher.join_window() < 60.0
        arrivals = loop_arrivals(loop)
        arrivals.expect()
        first = batcher.submit(_job(2))
        for _ in range(200):
            await asyncio.sleep(0)
        assert first.done() is not expect_wait
        if expect_wait:
            arrivals.arrived()
            second = batcher.submit(_job(3))
            await first, second
            assert pool.instance.calls == [1, 2]
        else:
            assert pool.instance.calls == [1, 1] and arrivals.pending == 0
    fast, slow = _Pool(), _Pool()
    slow.instance = _SlowRecorder()
    asyncio.run(go(fast, expect_wait=False))
    asyncio.run(go(slow, expect_wait=True))
