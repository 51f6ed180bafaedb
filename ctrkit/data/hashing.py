"""Raw Criteo categorical value -> slot id, the same in every process, language and run.

    id = 1 + FNV-1a-64(utf-8 bytes of f"{column}:{value}") mod (sparse_feature_number - 1)
    id = 0 for an empty (missing) value

`column` is the categorical column's number 1..26 (C1..C26, the same numbers as the slot-format keys), `value`
the exact text of the field (Criteo's are 8 lowercase hex digits; case matters). FNV-1a-64 is the standard
Fowler-Noll-Vo hash: h = 0xcbf29ce484222325; for each byte b: h = ((h ^ b) * 0x100000001b3) mod 2**64.
Python's `hash()` is salted per process (PaddleRec's mistake), so it is never used here.
"""
from __future__ import annotations

import numpy as np

from ctrkit.data.spec import NUM_SLOTS

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes, state: int = FNV_OFFSET) -> int:
    """FNV-1a-64 of `data`, continuing from `state` (so a common prefix is hashed once)."""
    for byte in data:
        state = ((state ^ byte) * FNV_PRIME) & _MASK64
    return state


# The hash state after the prefix f"{column}:" for columns 1..26 (index 0 unused).
_COLUMN_STATES = np.array([0] + [fnv1a64(f"{c}:".encode()) for c in range(1, NUM_SLOTS + 1)], dtype=np.uint64)


def hash_categorical(column: int, value: str, sparse_feature_number: int) -> int:
    """The slot id of raw categorical `value` in column `column` (1..26); 0 when `value` is empty."""
    if not 1 <= column <= NUM_SLOTS:
        raise ValueError(f"categorical column must be in 1..{NUM_SLOTS}, got {column}")
    if sparse_feature_number < 2:
        raise ValueError(f"sparse_feature_number must be >= 2, got {sparse_feature_number}")
    if value == "":
        return 0
    return 1 + fnv1a64(value.encode("utf-8"), int(_COLUMN_STATES[column])) % (sparse_feature_number - 1)


def key_state(key: str) -> int:
    """The FNV-1a-64 state after the prefix f"{key}:" (a schema field's hash key is its slot name)."""
    return fnv1a64(f"{key}:".encode("utf-8"))


def hash_value(key: str, value: str | bytes, sparse_feature_number: int) -> int:
    """The id of categorical `value` of the field whose hash key (slot name) is `key`; 0 for an empty value.
    `hash_value(str(k), v, n) == hash_categorical(k, v, n)` for Criteo's columns k = 1..26."""
    if sparse_feature_number < 2:
        raise ValueError(f"sparse_feature_number must be >= 2, got {sparse_feature_number}")
    data = value.encode("utf-8") if isinstance(value, str) else value
    if not data:
        return 0
    return 1 + fnv1a64(data, key_state(key)) % (sparse_feature_number - 1)


def hash_spans(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, columns: np.ndarray,
               sparse_feature_number: int) -> np.ndarray:
    """Vectorised `hash_categorical` of the byte spans buf[starts[i] : starts[i] + lengths[i]] (1-D int arrays
    of equal length; `columns` in 1..26) -> int64 ids. Empty spans give 0. Equal to the scalar version."""
    return hash_spans_from_states(buf, starts, lengths, _COLUMN_STATES[columns], sparse_feature_number)


def hash_spans_from_states(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, state: np.ndarray,
                           sparse_feature_number: int) -> np.ndarray:
    """Like `hash_spans`, each span hashed from its own prefix state (uint64, see `key_state`)."""
    state = np.asarray(state, dtype=np.uint64)
    last = buf.size - 1
    prime = np.uint64(FNV_PRIME)
    for j in range(int(lengths.max(initial=0))):
        active = lengths > j
        byte = buf[np.minimum(starts + j, last)].astype(np.uint64)
        state = np.where(active, (state ^ byte) * prime, state)  # uint64 arithmetic wraps mod 2**64
    ids = (state % np.uint64(sparse_feature_number - 1)).astype(np.int64) + 1
    return np.where(lengths > 0, ids, 0)
