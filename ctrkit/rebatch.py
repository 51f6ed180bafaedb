"""The one re-batching helper: blocks of rows of any size -> batches of exactly `batch_size` rows.

A block is a list (or tuple) of column arrays that share their first dimension (e.g. [dense, sparse, label]).
Used by the text reader, the shard reader and the RPC load client. numpy only.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


def rebatch(blocks: Iterable[Sequence[np.ndarray]], batch_size: int, *,
            drop_last: bool = False) -> Iterator[list[np.ndarray]]:
    """Yield column lists of exactly `batch_size` rows, in row order, from `blocks` of any sizes (empty blocks are
    fine); the last batch holds the rest (fewer rows) unless `drop_last`. A block that is already one batch is
    passed through as views, without a copy."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pending: list[Sequence[np.ndarray]] = []
    count = 0
    for columns in blocks:
        rows = len(columns[0])
        if not rows:
            continue
        pending.append(columns)
        count += rows
        if count < batch_size:
            continue
        merged = [np.concatenate(parts) for parts in zip(*pending)] if len(pending) > 1 else list(pending[0])
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield [c[start:start + batch_size] for c in merged]
        pending = [[c[full:] for c in merged]] if full < count else []
        count -= full
    if count and not drop_last:
        yield [np.concatenate(parts) for parts in zip(*pending)] if len(pending) > 1 else list(pending[0])
