"""Streaming files and directories into batches with bounded memory: blocks, sharding, shuffle buffer.

Files are read in blocks of about `block_bytes` (cut at a newline, so the cut depends only on the file's
bytes). Blocks are numbered across all files and shard `i` of `n` parses the blocks whose number is `i` modulo
`n`, so n shards (DataLoader workers, distributed ranks, or both) see disjoint data that together cover every
line exactly once. Every shard still reads every block (reading is cheap next to parsing), which keeps line
numbers in error messages right.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ctrkit.data.parsing import Batch, DataFormatError, Layout, blank_layout, find_layout, parse_block
from ctrkit.data.spec import FeatureSpec
from ctrkit.rebatch import rebatch

if TYPE_CHECKING:  # ctrkit.schema imports ctrkit.data.spec, so no import at run time
    from ctrkit.schema import FeatureSchema

log = logging.getLogger("ctrkit.data")

DEFAULT_BLOCK_BYTES = 1 << 20


def list_data_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Data files of a file, a directory (its non-hidden files, sorted by name) or a list of either.
    Raises FileNotFoundError for a missing path, ValueError for a sub-directory or when no file is found."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if name.startswith("."):
                    continue
                if os.path.isdir(path):
                    raise ValueError(f"{path}: a data directory holds data files only, not sub-directories")
                files.append(path)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"data path not found: {item}")
    if not files:
        raise ValueError(f"no data files in {', '.join(map(os.fspath, items)) or 'an empty path list'}")
    return files


def iter_blocks(path: str, block_bytes: int = DEFAULT_BLOCK_BYTES, start: int = 0,
                first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(number of the block's first line, block of whole lines each ending with b"\\n") for one file, from byte
    offset `start` (the start of line number `first_line`) on."""
    line_number = first_line
    pending = b""
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            chunk = f.read(block_bytes)
            if not chunk:
                if pending:  # last line without a newline
                    yield line_number, pending + b"\n"
                return
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut == 0:  # a line longer than block_bytes: keep reading
                continue
            block, pending = pending[:cut], pending[cut:]
            yield line_number, block
            line_number += block.count(b"\n")


class ParsedBlock(NamedTuple):
    """One parsed block of a file: its batch and the errors of the lines skipped in it."""

    path: str
    batch: Batch
    errors: list[DataFormatError]


def iter_parsed_blocks(files: Sequence[str], spec: FeatureSpec | FeatureSchema, *, skip_bad: bool = False,
                       shard_index: int = 0, shard_count: int = 1, block_bytes: int = DEFAULT_BLOCK_BYTES,
                       stats: Counter | None = None) -> Iterator[ParsedBlock]:
    """This shard's blocks of `files`, parsed, in file order. All files must agree on having labels. Each file's
    format is detected once, from its first data line (or header), and locked for the whole file. `stats`
    (a Counter) receives truncated multi-valued lists per field name."""
    block_number = 0
    labeled_by: tuple[str, bool] | None = None  # (first file with lines, whether it has labels)
    for path in files:
        layout: Layout | None = None
        for first_line, block in iter_blocks(path, block_bytes):
            if layout is None:
                layout = find_layout(block, spec, path, first_line)
                if layout is not None:
                    labeled_by = labeled_by or (path, layout.labeled)
                    _check_labels_agree(labeled_by, path, first_line, layout)
            mine = block_number % shard_count == shard_index
            block_number += 1
            if mine:
                # a block of blank lines only, before any data line, is parsed as such: every line is an error
                batch, errors = parse_block(block, layout or blank_layout(spec), spec, path, first_line, skip_bad,
                                            stats)
                yield ParsedBlock(path, batch, errors)


def _check_labels_agree(labeled_by: tuple[str, bool], path: str, line: int, layout: Layout) -> None:
    first_path, labeled = labeled_by
    if layout.labeled != labeled:
        has, lacks = (first_path, path) if labeled else (path, first_path)
        raise DataFormatError(path, line, f"files disagree on click labels: {has} has them, {lacks} has none")


class _ShuffleBuffer:
    """A shuffle buffer of `capacity` rows working a block at a time: once full, each incoming row takes the
    place of a uniformly chosen resident, which is emitted."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.columns: list[np.ndarray] | None = None
        self.size = 0

    def push(self, columns: list[np.ndarray]) -> list[np.ndarray] | None:
        if self.columns is None:
            self.columns = [np.empty((self.capacity,) + c.shape[1:], dtype=c.dtype) for c in columns]
        take = min(self.capacity - self.size, len(columns[0]))
        for buffered, column in zip(self.columns, columns):
            buffered[self.size:self.size + take] = column[:take]
        self.size += take
        rest = [c[take:] for c in columns]
        if len(rest[0]) == 0:
            return None
        emitted = []
        for start in range(0, len(rest[0]), self.capacity):
            part = [c[start:start + self.capacity] for c in rest]
            slots = self.rng.choice(self.capacity, size=len(part[0]), replace=False)
            emitted.append([buffered[slots] for buffered in self.columns])
            for buffered, column in zip(self.columns, part):
                buffered[slots] = column
        return [np.concatenate(parts) for parts in zip(*emitted)]

    def drain(self) -> list[np.ndarray] | None:
        if not self.size:
            return None
        order = self.rng.permutation(self.size)
        columns = [buffered[order] for buffered in self.columns]
        self.size = 0
        return columns


class BatchStream:
    """Iterator of `Batch`es (see `iter_batches`). After iteration, `samples` is the number of rows yielded and
    `skipped` the number of malformed lines dropped (with skip_bad=True; each file's count is also logged);
    `truncated` (a Counter) the multi-valued lists longer than their field's max_len, per field (cut, logged)."""

    def __init__(self, files: list[str], spec: FeatureSpec | FeatureSchema, batch_size: int, *, shuffle_buffer: int, seed: int,
                 skip_bad: bool, shard_index: int, shard_count: int, drop_last: bool, block_bytes: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
        self.files, self.spec, self.batch_size = files, spec, batch_size
        self.shuffle_buffer, self.seed, self.skip_bad = shuffle_buffer, seed, skip_bad
        self.shard_index, self.shard_count = shard_index, shard_count
        self.drop_last, self.block_bytes = drop_last, block_bytes
        self.samples = 0
        self.skipped = 0
        self.truncated: Counter = Counter()
        self._batches = self._generate()

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self.samples += len(batch.dense)
        return batch

    def _row_blocks(self) -> Iterator[list[np.ndarray]]:
        """Parsed rows as column lists [dense, sparse(, label)], block by block, in file order."""
        files = list(self.files)
        if self.shuffle_buffer:  # same file order in every shard (seeded by `seed` alone)
            np.random.default_rng(self.seed).shuffle(files)
        skipped_in: dict[str, tuple[int, DataFormatError]] = {}  # path -> (count, first error)
        for parsed in iter_parsed_blocks(files, self.spec, skip_bad=self.skip_bad, shard_index=self.shard_index,
                                         shard_count=self.shard_count, block_bytes=self.block_bytes,
                                         stats=self.truncated):
            if parsed.errors:
                self.skipped += len(parsed.errors)
                count, first = skipped_in.get(parsed.path, (0, parsed.errors[0]))
                skipped_in[parsed.path] = (count + len(parsed.errors), first)
            batch = parsed.batch
            if len(batch.dense):
                yield [batch.dense, batch.sparse] + ([batch.label] if batch.label is not None else [])
        for path, (count, first) in skipped_in.items():
            log.warning("%s: skipped %d malformed line(s) (skip_bad); first: %s", path, count, first)
        if self.truncated:
            log.info("multi-valued lists truncated to max_len: %s",
                     ", ".join(f"{name} {count}" for name, count in sorted(self.truncated.items())))

    def _generate(self) -> Iterator[Batch]:
        blocks = self._row_blocks()
        if self.shuffle_buffer:
            blocks = self._shuffled(blocks)
        for columns in rebatch(blocks, self.batch_size, drop_last=self.drop_last):
            yield _batch(columns)

    def _shuffled(self, blocks: Iterator[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
        buffer = _ShuffleBuffer(self.shuffle_buffer, np.random.default_rng([self.seed, self.shard_index]))
        for columns in blocks:
            emitted = buffer.push(columns)
            if emitted is not None:
                yield emitted
        rest = buffer.drain()
        if rest is not None:
            yield rest


def _batch(columns: list[np.ndarray]) -> Batch:
    return Batch(columns[0], columns[1], columns[2] if len(columns) > 2 else None)


def iter_batches(paths: str | os.PathLike | Sequence[str | os.PathLike], spec: FeatureSpec | FeatureSchema,
                 batch_size: int, *,
                 shuffle_buffer: int = 0, seed: int = 0, skip_bad: bool = False, shard_index: int = 0,
                 shard_count: int = 1, drop_last: bool = False,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> BatchStream:
    """Stream `Batch`es of `batch_size` rows (the last one smaller unless `drop_last`) from files/directories.

    Memory is bounded by one block plus the shuffle buffer. `shuffle_buffer` > 0 shuffles rows through a
    buffer of that many rows (and the file order), seeded by `seed`: the same seed gives the same order.
    `shard_index`/`shard_count` select this shard's blocks (see the module docstring). Malformed lines raise
    DataFormatError unless `skip_bad` (then they are counted in `.skipped` and logged per file)."""
    return BatchStream(list_data_files(paths), spec, batch_size, shuffle_buffer=shuffle_buffer, seed=seed,
                       skip_bad=skip_bad, shard_index=shard_index, shard_count=shard_count, drop_last=drop_last,
                       block_bytes=block_bytes)
