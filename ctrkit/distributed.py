"""Data-parallel training and evaluation on paddle.distributed (`runner.use_fleet: true`).

Start every worker with Paddle's launcher; each runs the same command:

    python -m paddle.distributed.launch --nproc_per_node 2 tools/trainer.py -m config.yaml -o runner.use_fleet=true
    python -m paddle.distributed.launch --ips 10.0.0.1,10.0.0.2 --nproc_per_node 2 tools/trainer.py ...  # 2 machines

The model is wrapped in `paddle.DataParallel` (gloo on CPU, NCCL on GPU): gradients, sparse embedding gradients
included, are averaged over the workers in every backward pass, so the parameters stay identical everywhere.
Workers read disjoint parts of the data (see `ctrkit.training`); `Context` holds the few collectives the loops
need: sums of counts and losses, gathering predictions for an exact AUC, and agreement checks.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

log = logging.getLogger("ctrkit.distributed")


class DistributedError(RuntimeError):
    """The workers of a distributed job disagree (e.g. they see different checkpoints)."""


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank `rank` of `world` workers, `local_world` of them on this machine."""

    rank: int = 0
    world: int = 1
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def wrap(self, model: paddle.nn.Layer) -> paddle.nn.Layer:
        """`paddle.DataParallel(model)` in a job of several workers (it broadcasts rank 0's parameters), else
        `model` itself."""
        return paddle.DataParallel(model) if self.distributed else model

    def sum(self, values: list[float]) -> np.ndarray:
        """Element-wise sum over the workers (float64)."""
        array = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return array
        tensor = paddle.to_tensor(array)
        with self._collective("all_reduce"):
            paddle.distributed.all_reduce(tensor)
        return tensor.numpy()

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every worker, in rank order (pickled; for predictions and small records)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = []
        with self._collective("all_gather"):
            paddle.distributed.all_gather_object(out, obj)
        return out

    def agree(self, value: Any, what: str) -> None:
        """Raise DistributedError unless every worker passes an equal `value`."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise DistributedError(f"workers disagree on {what}: " +
                                   ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values)))

    def barrier(self) -> None:
        if self.distributed:
            with self._collective("barrier"):
                paddle.distributed.barrier()

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """A failed collective almost always means another worker died: say so (its log has the cause)."""
        try:
            yield
        except RuntimeError as exc:
            raise DistributedError(f"worker {self.rank}: {what} with the other workers failed, so one of them has "
                                   f"stopped (crashed or killed; its log, e.g. log/workerlog.N of "
                                   f"paddle.distributed.launch, has the cause). Stopping; re-run the same command to "
                                   f"resume from the last checkpoint. ({exc})") from None


def launched() -> bool:
    """True in a process started by `paddle.distributed.launch` (it sets PADDLE_TRAINERS_NUM)."""
    return "PADDLE_TRAINERS_NUM" in os.environ


_joined: Context | None = None  # the process group is set up once per process (train, then evaluate)


def setup(use_fleet: bool) -> Context:
    """The job context; with `use_fleet` under the launcher this initialises the process group."""
    global _joined
    if not use_fleet:
        return Context()
    if not launched():
        log.warning("runner.use_fleet is true but this process was not started by paddle.distributed.launch; "
                    "running as the only worker")
        return Context()
    if _joined is None:
        paddle.distributed.init_parallel_env()
        _joined = Context(paddle.distributed.get_rank(), paddle.distributed.get_world_size(),
                          int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))
        log.info("worker %d of %d (%d on this machine), backend %s", _joined.rank, _joined.world,
                 _joined.local_world, os.environ.get("PADDLE_DISTRI_BACKEND", "?"))
    return _joined


def rank_slice(rows: int, context: Context) -> slice:
    """This worker's part of a global batch of `rows` rows: contiguous, sizes differing by at most one."""
    return slice(context.rank * rows // context.world, (context.rank + 1) * rows // context.world)
