"""Where a split's rows come from: text files (parsed on the fly, with `runner.num_workers` DataLoader processes
parsing ahead) or a shard directory written by `tools/prepare_criteo.py` (recognised by its manifest; read in this
process, since it costs a copy, not a parse). Distributed runs read disjoint data (see ctrkit/training/__init__.py)."""
from __future__ import annotations

import pickle
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import paddle

from ctrkit.config import Config, ConfigError
from ctrkit.data import Batch, iter_batches, list_data_files
from ctrkit.data.paddle_dataset import BatchDataset, restore_dense
from ctrkit.distributed import Context, rank_slice
from ctrkit.shards import ShardSet, is_shard_dir, iter_shard_batches, open_shards


@dataclass
class DataSource:
    """Where a split's rows come from: text files or a shard directory."""

    files: list[str] | None = None
    shards: ShardSet | None = None


def open_source(config: Config, key: str) -> DataSource:
    path = config.runner[key]
    if not path:
        raise ConfigError(f"runner.{key} is not set")
    try:
        if is_shard_dir(path):
            shards = open_shards(path)
            shards.check_spec(config.schema(), f"config {config.path}")
            return DataSource(shards=shards)
        return DataSource(files=list_data_files(path))
    except (FileNotFoundError, ValueError) as exc:  # ShardError is a ValueError
        raise ConfigError(f"runner.{key}: {exc}") from None


def rank_batches(batches: Iterable[Batch], context: Context) -> Iterator[Batch]:
    """This worker's slice of every global batch (the batches themselves in a single process)."""
    if not context.distributed:
        yield from batches
        return
    for batch in batches:
        part = rank_slice(len(batch.dense), context)
        yield Batch(batch.dense[part], batch.sparse[part], None if batch.label is None else batch.label[part])


def to_tensors(batches: Iterable[Batch]) -> Iterator[tuple[paddle.Tensor, ...]]:
    for batch in batches:
        yield tuple(paddle.to_tensor(a) for a in batch if a is not None)


def train_batches(config: Config, source: DataSource, epoch: int,
                   context: Context) -> Iterable[tuple[paddle.Tensor, ...]]:
    """This worker's shuffled (dense, sparse, label) tensors of epoch `epoch`. The shuffle depends only on (seed,
    epoch), so a resumed run sees the same data order as an uninterrupted one."""
    seed, batch_size = config.runner["seed"] * 1000 + epoch, config.runner["train_batch_size"]
    shuffle_buffer = config.runner["shuffle_buffer"]
    if source.shards is not None:
        batches = iter_shard_batches(source.shards, batch_size * context.world, shuffle_buffer=shuffle_buffer,
                                     seed=seed)
        return to_tensors(rank_batches(batches, context))
    options = dict(shuffle_buffer=shuffle_buffer, seed=seed, skip_bad=config.runner["skip_bad_lines"],
                   shard_index=context.rank, shard_count=context.world)
    spec = config.schema()  # the dataset: block, or Criteo (the data layer takes the Criteo fast path)
    if config.runner["num_workers"] == 0:
        return to_tensors(iter_batches(source.files, spec, batch_size, **options))
    dataset = _ErrorsAsItems(BatchDataset(source.files, spec, batch_size, **options))
    return restore_dense(raise_worker_errors(paddle.io.DataLoader(dataset, batch_size=None,
                                                                  num_workers=config.runner["num_workers"])),
                         spec.n_dense)


class _ErrorsAsItems(paddle.io.IterableDataset):
    """Runs in a DataLoader worker: an exception ends the stream with one extra item, `(pickled exception,)` as a
    uint8 array, instead of crossing Paddle's worker boundary (which re-creates it as `type(message)`, fails for
    DataFormatError and leaves only "Blocking queue is killed"). `raise_worker_errors` raises it in the trainer,
    so a bad line reads exactly as with num_workers 0."""

    def __init__(self, dataset: paddle.io.IterableDataset):
        super().__init__()
        self.dataset = dataset

    def __iter__(self):
        try:
            yield from self.dataset
        except Exception as exc:  # noqa: BLE001 - re-raised in the trainer process
            text = "".join(traceback.format_exception(exc))
            try:
                payload = pickle.dumps((exc, text))
                pickle.loads(payload)
            except Exception:  # noqa: BLE001 - an exception that does not survive pickling
                payload = pickle.dumps((RuntimeError(f"DataLoader worker failed: {exc!r}"), text))
            yield (np.frombuffer(payload, dtype=np.uint8).copy(),)


def raise_worker_errors(loader: Iterable) -> Iterator[tuple]:
    """The loader's batches; a worker's exception (see `_ErrorsAsItems`) is raised here, in the trainer, as itself.
    An unexpected one (not a user error) carries the worker's traceback as a note."""
    for item in loader:
        if len(item) == 1:
            exc, text = pickle.loads(np.asarray(item[0]).tobytes())
            exc.add_note(f"(raised in a DataLoader worker process)\n{text}")
            raise exc
        yield item


def eval_batches(config: Config, source: DataSource, context: Context) -> Iterator[Batch]:
    """This worker's slice of every global batch of the test data, in file order (so that rank order within a
    global batch is row order)."""
    batch_size = config.runner["infer_batch_size"] * context.world
    if source.shards is not None:
        batches = iter_shard_batches(source.shards, batch_size)
    else:
        batches = iter_batches(source.files, config.schema(), batch_size,
                               skip_bad=config.runner["skip_bad_lines"])
    return rank_batches(batches, context)
