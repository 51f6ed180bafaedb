"""Parsing against a declared `FeatureSchema` (ctrkit/schema.py): delimited text (CSV / TSV, header line or the
schema's `columns`) and PaddleRec's slot format with any slot names. The Criteo schema never comes here: it keeps
its dedicated fast path (ctrkit/data/parsing.py); `parse_block` / `find_layout` there dispatch on the schema.

Packing (Contract 1): dense float32 [B, n_dense] (numeric fields in declared order, model-space values),
sparse int64 [B, sparse_width] (single-valued ids, then each multi-valued field's max_len ids, 0-padded),
label float32 [B, 1] or None. Longer multi-valued lists are truncated and counted in `stats` (not an error).

Delimited text: CSV follows RFC 4180 (quoted fields may hold the delimiter; lines with a quote take the
per-line path); TSV fields are taken as they are. Undeclared columns are ignored. Numeric: empty -> `fill`, else
preprocess(x). Categorical: the exact text (case and spaces kept) hashed with the field's slot name as key;
empty -> 0. Multi-valued: items split at the separator, empty items dropped.
Slot format: `slot:value` tokens separated by whitespace, in any order; a numeric slot shared by several numeric
fields fills them in order; a single-valued slot may appear once; a multi-valued slot repeats. Values are ids
(non-negative integers < sparse_feature_number) or model-ready numbers. Missing slots -> id 0 / `fill`. With
`strict: true` (the default) a slot the schema does not declare is an error; with `strict: false` it is ignored.

Speed: a CSV/TSV block is parsed with numpy on its bytes (the Criteo parser's building blocks: separator
offsets, digit runs, vectorised FNV hashing, multi-valued items scattered by rank); rows the block check cannot
vouch for go to the per-line reference parser, which decides validity and words every error.
"""
from __future__ import annotations

import csv
import math
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ctrkit.data.hashing import FNV_OFFSET, FNV_PRIME, fnv1a64, hash_spans_from_states, hash_value, key_state
from ctrkit.data.parsing import (_FLOAT32_LIMIT, _PAD, _POINT, Batch, DataFormatError, Layout, _as_float32,
                                 _field_starts, _LineError, _parse_decimals, _parse_float, _parse_id, _parse_ids,
                                 _show, reparse_rows)

if TYPE_CHECKING:  # ctrkit.schema imports ctrkit.data.spec, so no import at run time
    from ctrkit.schema import FeatureSchema

_DELIMITERS = {"csv": ",", "tsv": "\t"}
_FORMAT_NAMES = {"csv": "CSV (comma-separated)", "tsv": "TSV (tab-separated)", "slot": "slot format (slot:value)"}
_MAX_HASHED_BYTES = 64   # longer categorical values are hashed one by one (vectorised loops run per byte)


# -------------------------------------------------------------------------------------------------- the plan

class _Plan(NamedTuple):
    """Where each schema field sits in one file layout (precomputed once per (schema, layout))."""

    fmt: str
    labeled: bool
    columns: tuple[str, ...]                 # csv/tsv: the file's columns
    label_col: int                           # -1 when unlabeled
    numeric_cols: tuple[int, ...]
    single_cols: tuple[int, ...]
    multi_cols: tuple[int, ...]
    single_states: np.ndarray                # uint64 FNV state of f"{slot}:" per single-valued field
    multi_states: tuple[int, ...]
    multi_starts: tuple[int, ...]            # column of sparse where each multi-valued field starts
    # slot format: slot name -> (kind, field indices)
    slots: dict


@lru_cache(maxsize=64)
def _plan(schema: FeatureSchema, layout: Layout) -> _Plan:
    columns = tuple(layout.columns or ())
    index = {name: i for i, name in enumerate(columns)}
    if layout.fmt in _DELIMITERS:
        numeric_cols = tuple(index[f.name] for f in schema.numeric)
        single_cols = tuple(index[f.name] for f in schema.categorical)
        multi_cols = tuple(index[f.name] for f in schema.multi_valued)
        label_col = index[schema.label.name] if layout.labeled else -1
    else:
        numeric_cols = single_cols = multi_cols = ()
        label_col = -1
    starts, start = [], schema.n_single
    for f in schema.multi_valued:
        starts.append(start)
        start += f.max_len
    slots: dict[str, tuple[str, tuple[int, ...]]] = {schema.label.slot: ("label", (0,))}
    for j, f in enumerate(schema.numeric):
        kind, fields = slots.get(f.slot, ("numeric", ()))
        slots[f.slot] = ("numeric", fields + (j,))
    for k, f in enumerate(schema.categorical):
        slots[f.slot] = ("single", (k,))
    for m, f in enumerate(schema.multi_valued):
        slots[f.slot] = ("multi", (m,))
    return _Plan(layout.fmt, layout.labeled, columns, label_col, numeric_cols, single_cols, multi_cols,
                 np.array([key_state(f.slot) for f in schema.categorical], dtype=np.uint64),
                 tuple(key_state(f.slot) for f in schema.multi_valued), tuple(starts), slots)


def _describe_columns(columns: tuple[str, ...], limit: int = 6) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (", ..." if len(columns) > limit else "")


# --------------------------------------------------------------------------------------------- format lock

def _split_delimited(text: str, fmt: str) -> list[str]:
    if fmt == "csv" and '"' in text:
        try:
            return next(csv.reader([text], delimiter=",", strict=True))
        except (csv.Error, StopIteration) as exc:
            raise _LineError(f"malformed CSV quoting: {exc}") from None
    return text.split(_DELIMITERS[fmt])


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _LineError(f"not valid UTF-8 text (byte {exc.start + 1}): {_show(line)}") from None


def guess_format(line: bytes, schema: FeatureSchema) -> str | None:
    """The format one non-blank line of a file suggests for `schema` (None: none of them)."""
    if schema.format in ("slot", "csv", "tsv"):
        return schema.format
    if b"\t" in line:
        return "tsv"
    first = line.split(None, 1)[0] if line.strip() else b""
    key, sep, _ = first.partition(b":")
    if sep and key.decode("utf-8", "replace") in _plan(schema, Layout("slot", False)).slots:
        return "slot"
    if b"," in line:
        return "csv"
    if (schema.header or schema.columns) and line.strip():
        return "csv"  # a one-column file
    return None


def find_layout(block: bytes, schema: FeatureSchema, source: str, first_line_number: int) -> Layout | None:
    """The layout of a file from its first block (which starts at line `first_line_number`, 1 for a file):
    format, whether it has labels, its columns and header line. None when the block holds only blank lines."""
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    nonblank = next((i for i, line in enumerate(lines) if line.strip(b" \r")), None)
    if nonblank is None:
        return None
    line = lines[nonblank].rstrip(b"\r")
    number = first_line_number + nonblank
    fmt = guess_format(line, schema)
    if fmt is None:
        raise DataFormatError(source, number, f"cannot tell the data format for schema {schema.name!r}: the line "
                                              f"is neither slot format ({_slot_names(schema)}) nor CSV / TSV")
    if fmt == "slot":
        keys = {token.partition(b":")[0] for token in line.split()}
        return Layout("slot", schema.label.slot.encode() in keys)
    if schema.header:
        if nonblank != 0 or first_line_number != 1:
            raise DataFormatError(source, first_line_number, "expected the header line (header: true) as the "
                                                             "first line of the file, got a blank line")
        return _header_layout(line, fmt, schema, source, number)
    if schema.columns is None:
        raise DataFormatError(source, number, f"a {fmt} file needs header: true or columns: [...] in the schema")
    try:
        fields = _split_delimited(_decode(line), fmt)
    except _LineError as exc:
        raise DataFormatError(source, number, str(exc)) from None
    columns = schema.columns
    if len(fields) == len(columns):
        return Layout(fmt, True, columns)
    unlabeled = tuple(c for c in columns if c != schema.label.name)
    if len(fields) == len(unlabeled):
        return Layout(fmt, False, unlabeled)
    raise DataFormatError(source, number, f"expected {len(columns)} {_sep_name(fmt)} columns "
                                          f"({_describe_columns(columns)}), or {len(unlabeled)} without the label "
                                          f"{schema.label.name!r}, got {len(fields)}")


def _sep_name(fmt: str) -> str:
    return {"csv": "comma-separated", "tsv": "tab-separated"}[fmt]


def _slot_names(schema: FeatureSchema) -> str:
    names = list(_plan(schema, Layout("slot", False)).slots)
    return "slots " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _header_layout(line: bytes, fmt: str, schema: FeatureSchema, source: str, number: int) -> Layout:
    try:
        text = _decode(line)
        if text.startswith("\ufeff"):  # a UTF-8 byte-order mark (spreadsheet exports)
            text = text[1:]
        names = tuple(name.strip() for name in _split_delimited(text, fmt))
    except _LineError as exc:
        raise DataFormatError(source, number, f"header: {exc}") from None
    if schema.columns is not None:
        unlabeled = tuple(c for c in schema.columns if c != schema.label.name)
        if names not in (schema.columns, unlabeled):
            raise DataFormatError(source, number, f"header does not match the schema's columns: expected "
                                                  f"{_describe_columns(schema.columns)}, got "
                                                  f"{_describe_columns(names)}")
    duplicated = sorted({n for n in names if names.count(n) > 1 and n in (*schema.feature_names, schema.label.name)})
    if duplicated:
        raise DataFormatError(source, number, f"header names column(s) {', '.join(map(repr, duplicated))} twice")
    missing = [n for n in schema.feature_names if n not in names]
    if missing:
        raise DataFormatError(source, number, f"header does not match the schema: missing column(s) "
                                              f"{', '.join(map(repr, missing))} (the header has "
                                              f"{_describe_columns(names)})")
    return Layout(fmt, schema.label.name in names, names, number)


def check_line_format(line: bytes, layout: Layout, schema: FeatureSchema) -> str | None:
    """Why `line` is not in the file's locked format (None when it may be): a per-file format lock for callers
    that read a file chunk by chunk (batch prediction)."""
    if not line.strip():
        return None
    fmt = guess_format(line, schema.with_options(format="auto") if schema.format != "auto" else schema)
    if fmt is not None and fmt != layout.fmt:
        return (f"this line is {_FORMAT_NAMES[fmt]} but the file is {_FORMAT_NAMES[layout.fmt]}; a file must "
                f"keep the format of its first line")
    return None


# ------------------------------------------------------------------------------------------ per-line parsers

def _label_value(text: str, schema: FeatureSchema, what: str) -> float:
    if schema.label.threshold is None:
        if text in ("0", "1"):
            return float(text)
        raise _LineError(f"{what}: label must be 0 or 1, got {_show(text.encode())}")
    if text == "":
        raise _LineError(f"{what}: label is empty")
    value = _parse_float(text.encode("utf-8"), f"{what}: label")
    return 1.0 if value >= schema.label.threshold else 0.0


def _numeric(text: str, field, what: str) -> float:
    if text == "":
        return field.fill
    raw = text.encode("utf-8")
    value = preprocess_value(_parse_float(raw, what), field)
    return _as_float32(value, raw, what if field.preprocess == "none" else f"{what} ({field.preprocess})")


def preprocess_value(x: float, field) -> float:
    if field.preprocess == "minmax":
        return (x - field.min) / field.diff
    if field.preprocess == "log":
        return math.copysign(math.log1p(abs(x)), x)
    return x


def _multi_ids(items: list[str], key: str, field, n: int, truncated: Counter | None) -> list[int]:
    ids = [hash_value(key, item, n) for item in items if item != ""]
    if len(ids) > field.max_len:
        if truncated is not None:
            truncated[field.name] += 1
        ids = ids[:field.max_len]
    return ids + [0] * (field.max_len - len(ids))


def _parse_delimited_line(line: bytes, plan: _Plan, schema: FeatureSchema, truncated: Counter | None):
    fields = _split_delimited(_decode(line), plan.fmt)
    if len(fields) != len(plan.columns):
        if len(fields) == 1 and not fields[0].strip():
            raise _LineError("blank line")
        raise _LineError(f"expected {len(plan.columns)} {_sep_name(plan.fmt)} columns "
                         f"({_describe_columns(plan.columns)}), got {len(fields)}")

    def what(col: int) -> str:
        return f"column {plan.columns[col]!r}"

    label = _label_value(fields[plan.label_col], schema, what(plan.label_col)) if plan.labeled else None
    dense = [_numeric(fields[c], f, what(c)) for c, f in zip(plan.numeric_cols, schema.numeric)]
    n = schema.sparse_feature_number
    ids = [hash_value(f.slot, fields[c], n) for c, f in zip(plan.single_cols, schema.categorical)]
    for c, f in zip(plan.multi_cols, schema.multi_valued):
        ids += _multi_ids(fields[c].split(f.separator), f.slot, f, n, truncated)
    return label, dense, ids


def _parse_slot_line(line: bytes, plan: _Plan, schema: FeatureSchema, truncated: Counter | None):
    tokens = line.split()
    if not tokens:
        raise _LineError("blank line")
    label = None
    dense_seen: dict[str, int] = {}
    dense = [f.fill for f in schema.numeric]
    singles: list[int | None] = [None] * schema.n_single
    multis: list[list[int]] = [[] for _ in schema.multi_valued]
    n = schema.sparse_feature_number
    for t, token in enumerate(tokens, 1):
        key_bytes, sep, value = token.partition(b":")
        key = key_bytes.decode("utf-8", "replace")
        if not sep:
            raise _LineError(f"token {t}: expected <slot>:<value>, got {_show(token)}")
        kind, fields = plan.slots.get(key, (None, ()))
        if kind is None:
            if schema.strict:
                raise _LineError(f"token {t}: unknown slot {key!r} (the schema is strict; declared "
                                 f"{_slot_names(schema)})")
            continue
        if kind == "label":
            if not plan.labeled:
                raise _LineError(f"token {t}: label slot {key!r} in a file whose first line has no label")
            if label is not None:
                raise _LineError(f"token {t}: label slot {key!r} appears twice")
            label = _label_value(value.decode("utf-8", "replace"), schema, f"slot {key!r}")
        elif kind == "numeric":
            seen = dense_seen.get(key, 0)
            if seen >= len(fields):
                raise _LineError(f"token {t}: numeric slot {key!r} appears more than {len(fields)} time(s)")
            dense_seen[key] = seen + 1
            j = fields[seen]
            dense[j] = _as_float32(_parse_float(value, f"slot {key!r}"), value, f"slot {key!r}")
        elif kind == "single":
            k = fields[0]
            if singles[k] is not None:
                raise _LineError(f"token {t}: slot {key!r} is single-valued but appears twice "
                                 f"(declare it under multi_valued)")
            singles[k] = _parse_id(value, repr(key), n)
        else:
            multis[fields[0]].append(_parse_id(value, repr(key), n))
    if plan.labeled and label is None:
        raise _LineError(f"label slot {schema.label.slot!r} missing (the file's first line has it)")
    ids = [0 if v is None else v for v in singles]
    for f, values in zip(schema.multi_valued, multis):
        values = [v for v in values if v != 0]
        if len(values) > f.max_len:
            if truncated is not None:
                truncated[f.name] += 1
            values = values[:f.max_len]
        ids += values + [0] * (f.max_len - len(values))
    return label, dense, ids


# --------------------------------------------------------------------------------------- vectorised CSV/TSV

class _Fast(NamedTuple):
    label: np.ndarray | None
    dense: np.ndarray        # float64 [rows, n_dense]
    sparse: np.ndarray       # int64 [rows, width]
    flagged: np.ndarray      # bool [rows]
    truncated: np.ndarray    # bool [rows, n_multi]


def _delimited_fast(block: bytes, rows: int, plan: _Plan, schema: FeatureSchema) -> _Fast:
    """Vectorised parse of a block of `rows` lines, each with exactly len(columns) - 1 delimiters, no quotes."""
    buf = np.frombuffer(block + _PAD, dtype=np.uint8)
    text = buf[:len(block)]
    ncols = len(plan.columns)
    delim = ord(_DELIMITERS[plan.fmt])
    ends = np.flatnonzero((text == delim) | (text == 10)).reshape(rows, ncols)
    starts = _field_starts(ends)
    lengths = ends - starts
    flagged = np.zeros(rows, dtype=bool)
    points = None
    label = None
    if plan.labeled:
        ls, ll = starts[:, plan.label_col], lengths[:, plan.label_col]
        if schema.label.threshold is None:
            digit = buf[ls] - np.uint8(48)
            flagged |= (ll != 1) | (digit > 1)
            label = digit.astype(np.float32)
        else:
            points = np.flatnonzero(text == _POINT)
            values, ok = _parse_decimals(buf, points, ls, ll)
            flagged |= ~ok  # exponents, empty, text: the per-line parser decides
            label = (values >= schema.label.threshold).astype(np.float32)
    dense = np.zeros((rows, schema.n_dense))
    if schema.n_dense:
        if points is None:
            points = np.flatnonzero(text == _POINT)
        cols = list(plan.numeric_cols)
        # one pass over all numeric spans in text order (row-major), as _parse_decimals needs ascending starts
        order = np.argsort(cols, kind="stable")
        sorted_cols = [cols[i] for i in order]
        d_starts, d_lengths = starts[:, sorted_cols].ravel(), lengths[:, sorted_cols].ravel()
        values, ok = _parse_decimals(buf, points, d_starts, d_lengths)
        present = d_lengths > 0
        bad = ~ok & present
        if bad.any():  # exponents, '+', long mantissas: Python's float(); anything else flags its row
            for i in np.flatnonzero(bad).tolist():
                try:
                    values[i] = _parse_float(block[d_starts[i]:d_starts[i] + d_lengths[i]], "value")
                except _LineError:
                    flagged[i // len(cols)] = True
        values = values.reshape(rows, len(cols))
        present = present.reshape(rows, len(cols))
        for position, j in enumerate(order.tolist()):
            f = schema.numeric[j]
            x = values[:, position]
            if f.preprocess == "minmax":
                x = (x - f.min) / f.diff
            elif f.preprocess == "log":
                with np.errstate(invalid="ignore"):
                    x = np.copysign(np.log1p(np.abs(x)), x)
            dense[:, j] = np.where(present[:, position], x, f.fill)
        flagged |= ~(np.abs(dense) < _FLOAT32_LIMIT).all(axis=1)
    sparse = np.zeros((rows, schema.sparse_width), dtype=np.int64)
    n = schema.sparse_feature_number
    if schema.n_single:
        s_starts, s_lengths = starts[:, plan.single_cols], lengths[:, plan.single_cols]
        states = np.broadcast_to(plan.single_states, s_starts.shape)
        sparse[:, :schema.n_single] = _hash_spans(block, buf, s_starts.ravel(), s_lengths.ravel(), states.ravel(),
                                                  n).reshape(rows, schema.n_single)
    truncated = np.zeros((rows, len(schema.multi_valued)), dtype=bool)
    for m, (c, f) in enumerate(zip(plan.multi_cols, schema.multi_valued)):
        ids, truncated[:, m] = _multi_fast(block, buf, text, starts[:, c], lengths[:, c], f, plan.multi_states[m], n)
        sparse[:, plan.multi_starts[m]:plan.multi_starts[m] + f.max_len] = ids
    return _Fast(label, dense, sparse, flagged, truncated)


def _hash_spans(block: bytes, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, states: np.ndarray,
                n: int) -> np.ndarray:
    """Vectorised hashing; spans longer than _MAX_HASHED_BYTES are hashed one by one (same result)."""
    long = lengths > _MAX_HASHED_BYTES
    ids = hash_spans_from_states(buf, starts, np.where(long, 0, lengths), states, n)
    for i in np.flatnonzero(long).tolist():
        from ctrkit.data.hashing import fnv1a64

        ids[i] = 1 + fnv1a64(block[starts[i]:starts[i] + lengths[i]], int(states[i])) % (n - 1)
    return ids


def _multi_fast(block: bytes, buf: np.ndarray, text: np.ndarray, starts: np.ndarray, lengths: np.ndarray, field,
                state: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One multi-valued column: spans -> ([rows, max_len] ids, [rows] truncated)."""
    rows = starts.size
    ends = starts + lengths
    seps = np.flatnonzero(text == ord(field.separator))
    owner = np.searchsorted(starts, seps, side="right") - 1
    inside = (owner >= 0) & (seps < ends[np.maximum(owner, 0)])
    seps, owner = seps[inside], owner[inside]
    # items: starts = span start and each separator + 1; ends = each separator and the span end; both sorted
    item_starts = np.concatenate((starts, seps + 1))
    item_ends = np.concatenate((seps, ends))
    item_owner = np.concatenate((np.arange(rows), owner))
    order = np.argsort(item_starts, kind="stable")
    item_starts, item_owner = item_starts[order], item_owner[order]
    item_ends = np.sort(item_ends, kind="stable")
    item_lengths = item_ends - item_starts
    keep = item_lengths > 0
    item_starts, item_lengths, item_owner = item_starts[keep], item_lengths[keep], item_owner[keep]
    counts = np.bincount(item_owner, minlength=rows)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(item_owner.size) - first[item_owner]
    kept = rank < field.max_len
    ids = _hash_spans(block, buf, item_starts[kept], item_lengths[kept],
                      np.full(int(kept.sum()), state, dtype=np.uint64), n)
    out = np.zeros((rows, field.max_len), dtype=np.int64)
    out[item_owner[kept], rank[kept]] = ids
    return out, counts > field.max_len


# ------------------------------------------------------------------------------------- vectorised slot format

def _fnv_states(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """FNV-1a-64 of each span (uint64), to recognise slot names."""
    state = np.full(starts.shape, FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    last = buf.size - 1
    for j in range(int(lengths.max(initial=0))):
        active = lengths > j
        byte = buf[np.minimum(starts + j, last)].astype(np.uint64)
        state = np.where(active, (state ^ byte) * prime, state)
    return state


@lru_cache(maxsize=64)
def _slot_table(schema: FeatureSchema, layout: Layout):
    """Sorted FNV hashes of the slot names, and per name: kind code (0 label, 1 numeric, 2 single, 3 multi) and
    slot number."""
    plan = _plan(schema, layout)
    names = list(plan.slots)
    hashes = np.array([fnv1a64(name.encode("utf-8")) for name in names], dtype=np.uint64)
    order = np.argsort(hashes)
    kinds = {"label": 0, "numeric": 1, "single": 2, "multi": 3}
    return hashes[order], np.array([kinds[plan.slots[names[i]][0]] for i in order]), [names[i] for i in order]


def _ranks(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each item (in text order) of `groups` (int keys): its 0-based occurrence number within its group,
    and the order that sorts items by group (stable)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    run = np.zeros(groups.size, dtype=np.int64)
    if groups.size:
        lengths = np.diff(np.r_[starts, groups.size])
        run_sorted = np.arange(groups.size) - np.repeat(starts, lengths)
        run[order] = run_sorted
    return run, order


def _slot_fixed(block: bytes, buf: np.ndarray, text: np.ndarray, newlines: np.ndarray, ends: np.ndarray, rows: int,
                plan: _Plan, schema: FeatureSchema) -> _Fast | None:
    """The common case of slot files: every line has the same slots in the same order (PaddleRec's writers).
    Checked byte for byte against the first line; None when the block is not like that."""
    if ends.size % rows:
        return None
    k = ends.size // rows
    if not np.array_equal(ends[k - 1::k], newlines):
        return None
    ends = ends.reshape(rows, k)
    starts = _field_starts(ends)
    first_line = block[:int(newlines[0])]
    tokens = first_line.split(b" ")
    if len(tokens) != k or any(b":" not in t for t in tokens):
        return None
    keys = [t.partition(b":")[0] for t in tokens]
    key_lengths = np.array([len(key) for key in keys])
    if (key_lengths == 0).any():
        return None
    # every line: the same key bytes, then ':' (so the first colon is where the first line has it)
    for j in range(int(key_lengths.max()) + 1):
        column = np.array([key[j] if j < len(key) else 58 for key in keys], dtype=np.uint8)
        active = key_lengths >= j
        if not (buf[starts[:, active] + j] == column[active]).all():
            return None
    kinds = [plan.slots.get(key.decode("utf-8", "replace"), (None, ()))[0] for key in keys]
    if schema.strict and None in kinds:
        return None
    names = [key.decode("utf-8", "replace") for key in keys]
    v_starts = starts + key_lengths + 1
    v_lengths = ends - v_starts
    if (v_lengths < 0).any():
        return None
    flagged = np.zeros(rows, dtype=bool)
    label = None
    label_cols = [c for c, kind in enumerate(kinds) if kind == "label"]
    if len(label_cols) != (1 if plan.labeled else 0):
        return None
    if plan.labeled:
        ls, ll = v_starts[:, label_cols[0]], v_lengths[:, label_cols[0]]
        if schema.label.threshold is None:
            digit = buf[ls] - np.uint8(48)
            flagged |= (ll != 1) | (digit > 1)
            label = digit.astype(np.float32)
        else:
            values, ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), ls, ll)
            flagged |= ~ok
            label = (values >= schema.label.threshold).astype(np.float32)
    dense = np.tile(np.array([f.fill for f in schema.numeric], dtype=np.float64), (rows, 1))
    num_cols, num_fields, seen = [], [], Counter()
    single_cols, single_fields, multi = [], [], {}
    for c, (name, kind) in enumerate(zip(names, kinds)):
        if kind == "numeric":
            fields = plan.slots[name][1]
            if seen[name] >= len(fields):
                return None
            num_cols.append(c)
            num_fields.append(fields[seen[name]])
            seen[name] += 1
        elif kind == "single":
            if name in seen:
                return None
            seen[name] += 1
            single_cols.append(c)
            single_fields.append(plan.slots[name][1][0])
        elif kind == "multi":
            multi.setdefault(plan.slots[name][1][0], []).append(c)
    if num_cols:
        ns, nl = v_starts[:, num_cols].ravel(), v_lengths[:, num_cols].ravel()
        values, ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), ns, nl)
        for i in np.flatnonzero(~ok).tolist():
            try:
                values[i] = _parse_float(block[ns[i]:ns[i] + nl[i]], "value")
            except _LineError:
                flagged[i // len(num_cols)] = True
        dense[:, num_fields] = values.reshape(rows, len(num_cols))
        flagged |= ~(np.abs(dense) < _FLOAT32_LIMIT).all(axis=1)
    sparse = np.zeros((rows, schema.sparse_width), dtype=np.int64)
    n = schema.sparse_feature_number
    if single_cols:
        ids, ok = _parse_ids(buf, v_starts[:, single_cols], v_lengths[:, single_cols], n)
        flagged |= ~ok.all(axis=1)
        sparse[:, single_fields] = ids
    truncated = np.zeros((rows, len(schema.multi_valued)), dtype=bool)
    for m, cols in multi.items():
        ids, ok = _parse_ids(buf, v_starts[:, cols], v_lengths[:, cols], n)
        flagged |= ~ok.all(axis=1) | (ids == 0).any(axis=1)  # id 0 (padding) is dropped: the general path
        width = schema.multi_valued[m].max_len
        kept = min(width, len(cols))
        sparse[:, plan.multi_starts[m]:plan.multi_starts[m] + kept] = ids[:, :kept]
        truncated[:, m] = len(cols) > width
    return _Fast(label, dense, sparse, flagged, truncated)


def _slot_fast(block: bytes, rows: int, plan: _Plan, schema: FeatureSchema, layout: Layout) -> _Fast:
    """Vectorised parse of slot-format lines; rows it cannot vouch for are flagged for the per-line parser."""
    buf = np.frombuffer(block + _PAD, dtype=np.uint8)
    text = buf[:len(block)]
    newlines = np.flatnonzero(text == 10)
    ends = np.flatnonzero((text == 32) | (text == 10))
    if not ((text == 9) | (text == 13) | (text == 11) | (text == 12)).any():
        fixed = _slot_fixed(block, buf, text, newlines, ends, rows, plan, schema)
        if fixed is not None:
            return fixed
    starts = np.empty_like(ends)
    starts[0:1] = 0
    starts[1:] = ends[:-1] + 1
    row = np.zeros(ends.size, dtype=np.int64)  # the line each token belongs to
    if ends.size > 1:
        np.cumsum(text[ends[:-1]] == 10, out=row[1:])
    flagged = np.zeros(rows, dtype=bool)
    flagged[row[ends - starts == 0]] = True  # empty tokens: blank lines, double or edge spaces
    odd = np.flatnonzero((text == 9) | (text == 13) | (text == 11) | (text == 12))
    if odd.size:
        flagged[np.searchsorted(newlines, odd)] = True
    colons = np.flatnonzero(text == 58)
    owner = np.searchsorted(ends, colons)
    first_colon = np.full(ends.size, -1, dtype=np.int64)
    leading = np.ones(owner.size, dtype=bool)  # colons ascend, so owners do: a token's first colon leads its run
    leading[1:] = owner[1:] != owner[:-1]
    first_colon[owner[leading]] = colons[leading]
    has_colon = first_colon >= 0
    flagged[row[~has_colon & (ends > starts)]] = True
    key_lengths = np.where(has_colon, first_colon - starts, 0)
    hashes = _fnv_states(buf, starts, key_lengths)
    table, kinds, _names = _slot_table(schema, layout)
    slot = np.minimum(np.searchsorted(table, hashes), max(table.size - 1, 0))
    known = has_colon & (table[slot] == hashes)
    if schema.strict:
        flagged[row[has_colon & ~known]] = True
    kind = np.where(known, kinds[slot], -1)
    v_starts = first_colon + 1
    v_lengths = ends - v_starts
    n = schema.sparse_feature_number
    label = None
    if plan.labeled:
        is_label = kind == 0
        per_row = np.bincount(row[is_label], minlength=rows)
        flagged |= per_row != 1
        label = np.zeros(rows, dtype=np.float32)
        ls, ll, lr = v_starts[is_label], v_lengths[is_label], row[is_label]
        if schema.label.threshold is None:
            digit = buf[ls] - np.uint8(48)
            flagged[lr[(ll != 1) | (digit > 1)]] = True
            label[lr] = digit
        else:
            values, ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), ls, ll)
            flagged[lr[~ok]] = True
            label[lr] = values >= schema.label.threshold
    else:
        flagged[row[kind == 0]] = True
    dense = np.tile(np.array([f.fill for f in schema.numeric], dtype=np.float64), (rows, 1))
    is_num = kind == 1
    if is_num.any():
        ns, nl, nr, nslot = v_starts[is_num], v_lengths[is_num], row[is_num], slot[is_num]
        values, ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), ns, nl)
        for i in np.flatnonzero(~ok).tolist():
            try:
                values[i] = _parse_float(block[ns[i]:ns[i] + nl[i]], "value")
            except _LineError:
                flagged[nr[i]] = True
        rank, _ = _ranks(nr * table.size + nslot)
        field_of = np.full((table.size, max(len(v[1]) for v in plan.slots.values()) + 1), -1, dtype=np.int64)
        for position, name in enumerate(_names):
            k, fields = plan.slots[name]
            if k == "numeric":
                field_of[position, :len(fields)] = fields
        field = field_of[nslot, np.minimum(rank, field_of.shape[1] - 1)]
        flagged[nr[field < 0]] = True
        good = field >= 0
        dense[nr[good], field[good]] = values[good]
        flagged |= ~(np.abs(dense) < _FLOAT32_LIMIT).all(axis=1)
    sparse = np.zeros((rows, schema.sparse_width), dtype=np.int64)
    truncated = np.zeros((rows, len(schema.multi_valued)), dtype=bool)
    is_id = (kind == 2) | (kind == 3)
    if is_id.any():
        ids, ok = _parse_ids(buf, v_starts[is_id], v_lengths[is_id], n)
        ir, islot, ikind = row[is_id], slot[is_id], kind[is_id]
        flagged[ir[~ok]] = True
        field_index = np.array([plan.slots[name][1][0] if plan.slots[name][0] in ("single", "multi") else -1
                                for name in _names], dtype=np.int64)[islot]
        single = ikind == 2
        if single.any():
            sr, sf = ir[single], field_index[single]
            counts = np.bincount(sr * schema.n_single + sf, minlength=rows * schema.n_single)
            flagged |= (counts.reshape(rows, schema.n_single) > 1).any(axis=1)
            sparse[sr, sf] = ids[single]
        multi = (ikind == 3) & (ids != 0)
        if multi.any():
            mr, mf, mids = ir[multi], field_index[multi], ids[multi]
            n_multi = len(schema.multi_valued)
            rank, _ = _ranks(mr * n_multi + mf)
            max_len = np.array([f.max_len for f in schema.multi_valued])
            offset = np.array(plan.multi_starts)
            keep = rank < max_len[mf]
            sparse[mr[keep], offset[mf[keep]] + rank[keep]] = mids[keep]
            counts = np.bincount(mr * n_multi + mf, minlength=rows * n_multi).reshape(rows, n_multi)
            truncated = counts > max_len[None, :]
    return _Fast(label, dense, sparse, flagged, truncated)


# -------------------------------------------------------------------------------------------- block parsing

def _empty(rows: int, schema: FeatureSchema, labeled: bool) -> Batch:
    return Batch(np.zeros((rows, schema.n_dense), dtype=np.float32),
                 np.zeros((rows, schema.sparse_width), dtype=np.int64),
                 np.zeros((rows, 1), dtype=np.float32) if labeled else None)


def empty_batch(schema: FeatureSchema, rows: int = 0, labeled: bool = False) -> Batch:
    return _empty(rows, schema, labeled)


def parse_block(block: bytes, layout: Layout, schema: FeatureSchema, source: str, first_line_number: int,
                skip_bad: bool, stats: Counter | None = None) -> tuple[Batch, list[DataFormatError]]:
    """Parse `block` (whole lines, each ending with b"\\n") by `schema` -> (batch, errors of skipped lines).
    A header line inside the block (layout.header_line) is skipped. `stats` (a Counter) gets the number of
    truncated multi-valued lists per field name."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    if layout.header_line and first_line_number <= layout.header_line:
        lines = block.split(b"\n")
        skip = layout.header_line - first_line_number + 1
        if skip < len(lines):
            block = b"\n".join(lines[skip:])
            first_line_number += skip
    rows = block.count(b"\n")
    plan = _plan(schema, layout)
    truncated = Counter()
    not_utf8 = _not_utf8_rows(block)  # the per-line parser words those errors
    if plan.fmt == "slot":
        fast = _slot_fast(block, rows, plan, schema, layout) if rows else None
        out = _empty(rows, schema, layout.labeled)
        slow = np.arange(rows)
        if fast is not None:
            if not_utf8 is not None:
                fast.flagged[not_utf8] = True
            _take_fast(out, fast, np.arange(rows), layout, schema, truncated)
            slow = np.flatnonzero(fast.flagged)
        line_ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
        line_starts = np.concatenate(([0], line_ends[:-1] + 1))
        batch, errors = _slow_rows(out, slow.tolist(), lambda i: block[line_starts[i]:line_ends[i]], plan, schema,
                                   source, first_line_number, skip_bad, truncated)
    else:
        delim = _DELIMITERS[plan.fmt].encode()
        skeleton = delim * (len(plan.columns) - 1)
        fast = None
        quote = b'"' if plan.fmt == "csv" else b"\n"  # CSV lines with quotes take the per-line path (TSV: none)
        if quote not in block[:-1] and block.translate(None, _delete(delim)) == (skeleton + b"\n") * rows:
            good = np.arange(rows)
            fast = _delimited_fast(block, rows, plan, schema) if rows else None
            lines = None
        else:
            lines = block.split(b"\n")[:-1]
            good = np.array([i for i, line in enumerate(lines)
                             if quote not in line and line.translate(None, _delete(delim)) == skeleton],
                            dtype=np.int64)
            if good.size:
                fast = _delimited_fast(b"\n".join([lines[i] for i in good]) + b"\n", good.size, plan, schema)
        out = _empty(rows, schema, layout.labeled)
        slow = np.arange(rows)
        if fast is not None:
            if not_utf8 is not None:
                fast.flagged[np.isin(good, not_utf8)] = True
            _take_fast(out, fast, good, layout, schema, truncated)
            slow = np.setdiff1d(slow, good[~fast.flagged], assume_unique=True)
        if lines is None:
            line_ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            line_starts = np.concatenate(([0], line_ends[:-1] + 1))

            def line_of(i: int) -> bytes:
                return block[line_starts[i]:line_ends[i]]
        else:
            line_of = lines.__getitem__
        batch, errors = _slow_rows(out, slow.tolist(), line_of, plan, schema, source, first_line_number, skip_bad,
                                   truncated)
    if stats is not None:
        stats.update(truncated)
    return batch, errors


def _not_utf8_rows(block: bytes) -> np.ndarray | None:
    """Rows (0-based) holding bytes that are not valid UTF-8, or None when the whole block is valid."""
    try:
        block.decode("utf-8")
        return None
    except UnicodeDecodeError:
        pass
    bad = []
    for i, line in enumerate(block.split(b"\n")):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return np.array(bad, dtype=np.int64)


def _take_fast(out: Batch, fast: _Fast, rows: np.ndarray, layout: Layout, schema: FeatureSchema,
               truncated: Counter) -> None:
    with np.errstate(over="ignore"):
        out.dense[rows] = fast.dense
    out.sparse[rows] = fast.sparse
    if layout.labeled:
        out.label[rows, 0] = fast.label
    ok = ~fast.flagged
    for m, f in enumerate(schema.multi_valued):
        count = int(fast.truncated[ok, m].sum())
        if count:
            truncated[f.name] += count


@lru_cache(maxsize=8)
def _delete(delim: bytes) -> bytes:
    keep = set(delim + b"\n")
    return bytes(b for b in range(256) if b not in keep)


def _slow_rows(out: Batch, slow, line_of, plan: _Plan, schema: FeatureSchema, source: str, first_line_number: int,
               skip_bad: bool, truncated: Counter) -> tuple[Batch, list[DataFormatError]]:
    parse_line = _parse_slot_line if plan.fmt == "slot" else _parse_delimited_line

    def parse(line: bytes):
        line_truncated = Counter()
        parsed = parse_line(line, plan, schema, line_truncated)
        truncated.update(line_truncated)  # only lines that parse count
        return parsed

    return reparse_rows(out, slow, line_of, parse, plan.labeled, source, first_line_number, skip_bad)
