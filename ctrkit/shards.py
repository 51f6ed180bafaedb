"""Binary shards: preprocessed rows stored as memory-mappable arrays, so an epoch costs no text parsing.

A shard directory (one per split, written by `tools/prepare_criteo.py`) holds

    manifest.json         format, rows, labels or not, id dtype, column widths, the preprocessing the rows were
                          made with (`feature_spec` for Criteo, `schema` for any other declared dataset schema),
                          and per shard its row count and each file's size and SHA-256
    part-00000.dense      float32 [rows, n_dense]       \\   little-endian, C order, no header:
    part-00000.sparse     int32 [rows, sparse_width]     }  np.memmap(path, dtype, shape)
    part-00000.label      float32 [rows, 1]             /   (no .label file for unlabeled data)

Criteo rows are 13 dense values and 26 ids; a declared schema's are its numeric fields and its sparse columns (one
per categorical field, `max_len` per multi-valued one, padded with 0), exactly the batches its text files parse to.

Ids are stored as int32 (half the bytes of int64) whenever sparse_feature_number fits, and become int64 in the
batches. `open_shards` checks every file's size against the manifest (a truncated or partial shard is refused at
once) and then its SHA-256 (a corrupted one is refused), before any row is used.

`iter_shard_batches` reads with bounded memory (plain file reads of blocks; a long-lived memory map would make
the whole data set count as the process's resident memory), shuffled by block: the epoch's order is a seeded
permutation of all blocks of `block_rows` rows over all shards; consecutive blocks are gathered into windows of
about `shuffle_buffer` rows whose rows are permuted. Distributed workers all read the same stream of global
batches and each keeps its own slice (see `ctrkit.training`), which costs a memory copy, not a parse.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ctrkit.data.parsing import Batch, criteo_spec
from ctrkit.fsutil import atomic_write, write_json_atomic
from ctrkit.data.spec import FeatureSpec
from ctrkit.schema import FeatureSchema, as_schema

log = logging.getLogger("ctrkit.shards")

MANIFEST = "manifest.json"
FORMAT = "ctrkit-shards"
VERSION = 1
DEFAULT_BLOCK_ROWS = 8192
_HASH_CHUNK = 8 << 20
# The spec fields that decide the stored values (data_format only says how the text was read).
SPEC_VALUE_FIELDS = ("sparse_feature_number", "dense_min", "dense_diff", "categorical_hash")
SHARD_NAME = "part-{:05d}"
SHARD_FILE_PATTERN = re.compile(r"part-\d{5}\.(dense|sparse|label)")


class ShardError(ValueError):
    """A shard directory is missing, partial, corrupt or does not fit the configuration."""


# The schema entries that decide the stored values (format, header, columns and strict only say how text is read).
SCHEMA_VALUE_FIELDS = ("sparse_feature_number", "categorical_hash", "label", "numeric", "categorical",
                       "multi_valued")


def spec_record(spec) -> dict:
    """What a manifest (and the preparation journal) records of the preprocessing: {"feature_spec": ...} for
    Criteo (a FeatureSpec, or a FeatureSchema that is Criteo's), {"schema": ...} for any other dataset schema."""
    criteo = criteo_spec(spec)
    return {"feature_spec": criteo.to_dict()} if criteo is not None else {"schema": spec.to_dict()}


def spec_of_record(record: dict):  # -> FeatureSpec | FeatureSchema
    """The inverse of `spec_record` (extra keys of `record` are ignored)."""
    if "schema" in record:
        return FeatureSchema.from_dict(record["schema"])
    return FeatureSpec.from_dict(record["feature_spec"])


def row_widths(spec) -> tuple[int, int]:
    """(dense values, sparse ids) per row of `spec`'s batches."""
    schema = as_schema(spec)
    return schema.n_dense, schema.sparse_width


def id_dtype_for(spec) -> np.dtype:
    """int32 when every id of the spec fits, else int64."""
    return np.dtype(np.int32 if spec.sparse_feature_number <= np.iinfo(np.int32).max + 1 else np.int64)


def column_layout(labeled: bool, id_dtype: np.dtype, widths: tuple[int, int]) -> dict[str, tuple[np.dtype, int]]:
    """Column name -> (little-endian dtype, values per row), in file-suffix order; `widths`: (dense, sparse)."""
    columns = {"dense": (np.dtype("<f4"), widths[0]), "sparse": (np.dtype(id_dtype).newbyteorder("<"), widths[1])}
    if labeled:
        columns["label"] = (np.dtype("<f4"), 1)
    return columns


def is_shard_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a directory with a shard manifest or shard files (then `open_shards` says what is
    missing, rather than a text reader choking on binary files)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, MANIFEST)) or any(
        SHARD_FILE_PATTERN.fullmatch(name) for name in os.listdir(path))


# --------------------------------------------------------------------------------------------------- writing

class ShardFileWriter:
    """Appends batches to one shard's column files (each through `fsutil.atomic_write`), hashing as it goes;
    `close()` puts them in place and returns the shard's manifest entry, `abort()` removes them."""

    def __init__(self, directory: str, name: str, columns: dict[str, tuple[np.dtype, int]]):
        self.directory, self.name, self.rows = directory, name, 0
        self.columns = columns
        self._writes = contextlib.ExitStack()
        try:
            self._files = {c: self._writes.enter_context(atomic_write(os.path.join(directory, f"{name}.{c}"), "wb"))
                          for c in columns}
        except BaseException:
            self.abort()
            raise
        self._hashes = {c: hashlib.sha256() for c in self.columns}

    def append(self, columns: dict[str, np.ndarray]) -> None:
        rows = len(columns["dense"])
        for column, (dtype, width) in self.columns.items():
            data = np.ascontiguousarray(columns[column], dtype=dtype)
            if data.shape != (rows, width):
                raise ValueError(f"{column}: expected shape ({rows}, {width}), got {data.shape}")
            if not data.size:  # a zero-width column (a schema without numeric fields): an empty file
                continue
            raw = data.data.cast("B")
            self._files[column].write(raw)
            self._hashes[column].update(raw)
        self.rows += rows

    def close(self) -> dict:
        self._writes.close()  # every column file flushed, fsync'ed and renamed into place
        files = {column: {"size": self.rows * dtype.itemsize * width, "sha256": self._hashes[column].hexdigest()}
                 for column, (dtype, width) in self.columns.items()}
        return {"name": self.name, "rows": self.rows, "files": files}

    def abort(self) -> None:
        """Remove the files written so far (atomic_write removes its file when its block ends by an error)."""
        aborted = ShardAborted(f"shard {self.name} in {self.directory} aborted")
        self._writes.__exit__(ShardAborted, aborted, None)


class ShardAborted(Exception):
    """Ends the atomic writes of a shard that is given up."""


def spec_columns(spec, labeled: bool) -> dict[str, tuple[np.dtype, int]]:
    """The column files of shards holding `spec`'s rows."""
    return column_layout(labeled, id_dtype_for(spec), row_widths(spec))


def write_manifest(directory: str, *, split: str, spec, labeled: bool, shards: list[dict], source: dict) -> dict:
    """`spec`: a FeatureSpec or FeatureSchema."""
    columns = spec_columns(spec, labeled)
    manifest = {"format": FORMAT, "version": VERSION, "split": split,
                "rows": sum(s["rows"] for s in shards), "labeled": labeled, "id_dtype": id_dtype_for(spec).name,
                **spec_record(spec),
                "columns": {c: {"dtype": d.name, "width": w} for c, (d, w) in columns.items()},
                "source": source, "shards": shards}
    write_json_atomic(os.path.join(directory, MANIFEST), manifest)
    return manifest


# --------------------------------------------------------------------------------------------------- reading

def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_shard_files(directory: str, entry: dict, columns: dict, *, checksums: bool) -> None:
    """Raise ShardError unless every column file of manifest entry `entry` has the recorded size (and, with
    `checksums`, SHA-256)."""
    for column, (dtype, width) in columns.items():
        path = os.path.join(directory, f"{entry['name']}.{column}")
        recorded = entry["files"].get(column)
        if recorded is None or recorded["size"] != entry["rows"] * dtype.itemsize * width:
            raise ShardError(f"{directory}/{MANIFEST}: shard {entry['name']} has an inconsistent entry for "
                             f"{column!r}")
        if not os.path.isfile(path):
            raise ShardError(f"{path}: missing (the manifest lists it); re-run tools/prepare_criteo.py")
        size = os.path.getsize(path)
        if size != recorded["size"]:
            raise ShardError(f"{path}: {size} bytes, the manifest says {recorded['size']} (a truncated or partial "
                             f"shard); re-run tools/prepare_criteo.py")
        if checksums and file_sha256(path) != recorded["sha256"]:
            raise ShardError(f"{path}: SHA-256 differs from the manifest (the file is corrupt); "
                             f"re-run tools/prepare_criteo.py")


@dataclass
class ShardSet:
    """An opened, verified shard directory. Rows are read with plain file reads (not kept memory-mapped), so the
    reader's resident memory stays at its window of rows, whatever the size of the data."""

    directory: str
    manifest: dict

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    @property
    def columns(self) -> dict[str, tuple[np.dtype, int]]:
        return _manifest_columns(self.manifest)

    @property
    def shard_rows(self) -> list[int]:
        return [entry["rows"] for entry in self.manifest["shards"]]

    def read(self, shard: int, start: int, stop: int) -> list[np.ndarray]:
        """Rows [start, stop) of shard number `shard` as columns [dense, sparse(, label)]."""
        name = self.manifest["shards"][shard]["name"]
        return [np.fromfile(os.path.join(self.directory, f"{name}.{column}"), dtype=dtype,
                            count=(stop - start) * width, offset=start * width * dtype.itemsize
                            ).reshape(stop - start, width)
                for column, (dtype, width) in self.columns.items()]

    @property
    def labeled(self) -> bool:
        return self.manifest["labeled"]

    @property
    def spec(self):  # -> FeatureSpec | FeatureSchema
        return spec_of_record(self.manifest)

    def check_spec(self, spec, what: str = "the configuration") -> None:
        """Raise ShardError when the rows were made with other preprocessing than `spec`'s (a FeatureSpec or a
        FeatureSchema): another dataset schema, or other values of the entries that decide the stored rows."""
        record = spec_record(spec)
        (mine_kind, mine), (their_kind, theirs) = _value_entries(self.manifest), _value_entries(record)
        differ = [k for k in mine if mine[k] != theirs.get(k)]
        if mine_kind != their_kind or (differ and _describe(self.manifest) != _describe(record)):
            raise ShardError(f"{self.directory}: shards hold rows of {_describe(self.manifest)}, {what} declares "
                             f"{_describe(record)}; prepare shards with that config (tools/prepare_criteo.py -m)")
        if differ:
            details = "; ".join(f"{k}: shards {_short(mine[k])}, {what} {_short(theirs.get(k))}" for k in differ)
            raise ShardError(f"{self.directory}: shards were prepared with a different "
                             f"{'feature spec' if mine_kind == 'feature_spec' else 'dataset schema'} ({details})")


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _value_entries(record: dict) -> tuple[str, dict]:
    """("feature_spec" | "schema", the entries of it that decide the stored values)."""
    if "schema" in record:
        return "schema", {k: record["schema"].get(k) for k in SCHEMA_VALUE_FIELDS}
    return "feature_spec", {k: record["feature_spec"][k] for k in SPEC_VALUE_FIELDS}


def _describe(record: dict) -> str:
    if "schema" in record:
        return f"the dataset schema {record['schema'].get('name')!r}"
    return "Criteo (13 dense features, 26 slots)"


def _manifest_columns(manifest: dict) -> dict[str, tuple[np.dtype, int]]:
    """The column files a manifest declares."""
    widths = (manifest["columns"]["dense"]["width"], manifest["columns"]["sparse"]["width"])
    return column_layout(manifest["labeled"], np.dtype(manifest["id_dtype"]), widths)


def _read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ShardError(f"{directory}: no {MANIFEST}; not a shard directory (or its preparation did not "
                         f"finish; re-run tools/prepare_criteo.py)") from None
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path}: manifest version {manifest.get('version')!r}, this reader knows {VERSION}")
    try:
        _manifest_columns(manifest)
        spec_of_record(manifest)
        if not isinstance(manifest["rows"], int) or not isinstance(manifest["shards"], list):
            raise TypeError("rows / shards")
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: incomplete or malformed manifest ({type(exc).__name__}: {exc})") from None
    return manifest


def open_shards(directory: str | os.PathLike, *, checksums: bool = True) -> ShardSet:
    """Open and verify a shard directory (sizes always, SHA-256 with `checksums`)."""
    directory = os.fspath(directory)
    manifest = _read_manifest(directory)
    columns = _manifest_columns(manifest)
    start = time.perf_counter()
    for entry in manifest["shards"]:
        check_shard_files(directory, entry, columns, checksums=False)
    if checksums:
        for entry in manifest["shards"]:
            check_shard_files(directory, entry, columns, checksums=True)
        log.info("%s: verified %d shard(s), %d rows, in %.1f s", directory, len(manifest["shards"]),
                 manifest["rows"], time.perf_counter() - start)
    return ShardSet(directory, manifest)


def _blocks(shards: ShardSet, block_rows: int) -> list[tuple[int, int, int]]:
    """(shard, start, stop) of every block, in storage order."""
    return [(i, start, min(start + block_rows, rows))
            for i, rows in enumerate(shards.shard_rows) for start in range(0, rows, block_rows)]


def _windows(shards: ShardSet, block_rows: int, shuffle_buffer: int,
             rng: np.random.Generator | None) -> Iterator[list[np.ndarray]]:
    """The epoch's rows as column lists [dense, sparse(, label)], one window of blocks at a time."""
    blocks = _blocks(shards, block_rows)
    if rng is not None:
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    window: list[tuple[int, int, int]] = []
    window_rows = 0
    for number, block in enumerate(blocks, 1):
        window.append(block)
        window_rows += block[2] - block[1]
        if window_rows >= shuffle_buffer or number == len(blocks):
            columns = [np.concatenate(parts) for parts in zip(*(shards.read(s, a, b) for s, a, b in window))]
            if rng is not None:
                order = rng.permutation(window_rows)
                columns = [c[order] for c in columns]
            yield columns
            window, window_rows = [], 0


def iter_shard_batches(shards: ShardSet, batch_size: int, *, shuffle_buffer: int = 0, seed: int = 0,
                       drop_last: bool = False, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[Batch]:
    """`Batch`es of `batch_size` rows (the last one shorter unless `drop_last`), ids as int64.

    Without `shuffle_buffer` rows come in storage order. With it, the block order and the rows within windows of
    about `shuffle_buffer` rows are permuted, seeded by `seed` alone."""
    if batch_size <= 0 or block_rows <= 0 or shuffle_buffer < 0:
        raise ValueError("batch_size and block_rows must be positive and shuffle_buffer >= 0")
    rng = np.random.default_rng(seed) if shuffle_buffer else None
    pending: list[list[np.ndarray]] = []
    count = 0
    for columns in _windows(shards, block_rows, shuffle_buffer, rng):
        pending.append(columns)
        count += len(columns[0])
        if count < batch_size:
            continue
        merged = [np.concatenate(parts) for parts in zip(*pending)] if len(pending) > 1 else pending[0]
        full = count - count % batch_size
        for start in range(0, full, batch_size):
            yield _batch([c[start:start + batch_size] for c in merged])
        pending = [[c[full:] for c in merged]] if full < count else []
        count -= full
    if count and not drop_last:
        yield _batch([np.concatenate(parts) for parts in zip(*pending)])


def _batch(columns: list[np.ndarray]) -> Batch:
    dense = np.ascontiguousarray(columns[0])
    sparse = columns[1].astype(np.int64)
    label = np.ascontiguousarray(columns[2]) if len(columns) > 2 else None
    return Batch(dense, sparse, label)
