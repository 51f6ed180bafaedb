"""`paddle.io.IterableDataset` over `iter_batches`, so a DataLoader worker parses while the trainer trains.

    dataset = BatchDataset(files, spec, batch_size=512, shuffle_buffer=100_000, seed=epoch_seed)
    loader = paddle.io.DataLoader(dataset, batch_size=None, num_workers=1)
    for dense, sparse, label in loader: ...        # paddle Tensors; (dense, sparse) for unlabeled data

A schema without numeric fields has dense [B, 0], which the DataLoader cannot carry: the dataset sends a [B, 1]
placeholder and `restore_dense(loader, n_dense)` gives [B, 0] back.

The dataset yields ready batches (hence batch_size=None: no re-batching). With several DataLoader workers each
worker reads its own shard (`paddle.io.get_worker_info()`), combined with this dataset's own
`shard_index`/`shard_count` (e.g. the distributed rank), so no sample is read twice; batches of different
workers then arrive interleaved, so use num_workers <= 1 where row order matters (predictions files).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import paddle

from ctrkit.data.reader import DEFAULT_BLOCK_BYTES, iter_batches, list_data_files
from ctrkit.data.spec import FeatureSpec


class BatchDataset(paddle.io.IterableDataset):
    """Batches of `iter_batches` as tuples (dense, sparse[, label]) of numpy arrays."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], spec: FeatureSpec, batch_size: int,
                 *, shuffle_buffer: int = 0, seed: int = 0, skip_bad: bool = False, shard_index: int = 0,
                 shard_count: int = 1, drop_last: bool = False, block_bytes: int = DEFAULT_BLOCK_BYTES):
        super().__init__()
        self.files = list_data_files(paths)
        self.spec, self.batch_size = spec, batch_size
        self.options = dict(shuffle_buffer=shuffle_buffer, seed=seed, skip_bad=skip_bad, drop_last=drop_last,
                            block_bytes=block_bytes)
        self.shard_index, self.shard_count = shard_index, shard_count

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        index, count = self.shard_index, self.shard_count
        worker = paddle.io.get_worker_info()
        if worker is not None:
            index, count = index * worker.num_workers + worker.id, count * worker.num_workers
        for batch in iter_batches(self.files, self.spec, self.batch_size, shard_index=index, shard_count=count,
                                  **self.options):
            dense = batch.dense
            if dense.shape[1] == 0:  # a zero-size tensor cannot cross the DataLoader's queue ("holds no memory")
                dense = np.zeros((len(dense), 1), dtype=np.float32)
            yield (dense, batch.sparse) if batch.label is None else (dense, batch.sparse, batch.label)


def restore_dense(items, n_dense: int):
    """The loader's items with `dense` back to [B, n_dense] (BatchDataset sends a [B, 1] placeholder for a schema
    without numeric fields, as the DataLoader cannot carry zero-size tensors). Iterate the loader through this
    whenever n_dense may be 0:  `for dense, sparse, label in restore_dense(loader, schema.n_dense)`."""
    for item in items:
        if n_dense == 0 and len(item) > 1:
            item = (item[0][:, :0], *item[1:])
        yield item
