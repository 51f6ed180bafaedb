"""Where a split's rows come from: text files (parsed on the fly, with `runner.num_workers` DataLoader processes
parsing ahead) or a shard directory written by `tools/prepare_criteo.py` (recognised by its manifest; read in this
process, since it costs a copy, not a parse). Distributed runs read disjoint data (see ctrkit/training/__init__.py)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import paddle

from ctrkit.config import Config, ConfigError
from ctrkit.data import Batch, iter_batches, list_data_files
from ctrkit.data.paddle_dataset import BatchDataset
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
            shards.check_spec(config.feature_spec(), f"config {config.path}")
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
    spec = config.feature_spec()
    if config.runner["num_workers"] == 0:
        return to_tensors(iter_batches(source.files, spec, batch_size, **options))
    dataset = BatchDataset(source.files, spec, batch_size, **options)
    return paddle.io.DataLoader(dataset, batch_size=None, num_workers=config.runner["num_workers"])


def eval_batches(config: Config, source: DataSource, context: Context) -> Iterator[Batch]:
    """This worker's slice of every global batch of the test data, in file order (so that rank order within a
    global batch is row order)."""
    batch_size = config.runner["infer_batch_size"] * context.world
    if source.shards is not None:
        batches = iter_shard_batches(source.shards, batch_size)
    else:
        batches = iter_batches(source.files, config.feature_spec(), batch_size,
                               skip_bad=config.runner["skip_bad_lines"])
    return rank_batches(batches, context)
