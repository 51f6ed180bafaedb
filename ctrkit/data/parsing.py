"""Text lines -> `Batch` for both Criteo formats; the only line parser in the toolkit.

Slot format (PaddleRec), one sample per line, tokens separated by spaces:
    [click:<0|1>] dense_feature:<float> x 13  1:<id> 2:<id> ... 26:<id>
in exactly that order; `click` is absent in unlabeled (test / serving) files. Ids are integers in
[0, sparse_feature_number); dense values are finite decimal numbers (no NaN/inf).
Raw Criteo format: tab-separated [label] I1..I13 C1..C26 (40 columns, or 39 without the label), any column but
the label may be empty. Dense: (x - dense_min) / dense_diff, empty -> 0. Categorical: hexadecimal text,
hashed by `hash_categorical` (empty -> id 0).

A malformed line raises `DataFormatError("<source>:<line>: <reason>")`; blank lines are malformed too (only the
newline ending the last line is not a line). With `skip_bad=True` bad lines are dropped and counted instead.

Speed: a block of lines is parsed with numpy on its bytes (separator positions, digit runs, hashes) and only the
lines that block-level checks cannot vouch for go through the per-line Python parser, which is the reference
(it decides what is valid and words every error). Both give bit-identical values (tests/test_data_parsing.py).
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from ctrkit.data.hashing import hash_categorical, hash_spans
from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS, FeatureSpec


class Batch(NamedTuple):
    """dense float32 [B,13], sparse int64 [B,26], label float32 [B,1] (None for unlabeled data)."""

    dense: np.ndarray
    sparse: np.ndarray
    label: np.ndarray | None


class ParseResult(NamedTuple):
    batch: Batch
    skipped: int  # malformed lines dropped (only with skip_bad=True)


class DataFormatError(ValueError):
    """A malformed input line: `str(err)` is "<source>:<line number>: <reason>".

    Also constructible from one message (what `paddle.io.DataLoader` does when it re-raises an error of a worker
    process: `DataFormatError("DataLoader worker(0) caught ... <traceback>")`): the original one-line error is
    recovered from the traceback text, so the user sees the same line as with num_workers 0."""

    def __init__(self, source: str, line_number: int | None = None, reason: str | None = None):
        if line_number is None and reason is None:
            source, line_number, reason = _recover_error(str(source))
        super().__init__(f"{source}:{line_number}: {reason}")
        self.source, self.line_number, self.reason = source, line_number, reason

    def __reduce__(self):  # picklable, so DataLoader worker processes can pass it to the trainer
        return DataFormatError, (self.source, self.line_number, self.reason)


_ERROR_LINE = re.compile(r"DataFormatError: (.*):(\d+): (.*)$")


def _recover_error(message: str) -> tuple[str, int, str]:
    """(source, line, reason) from the last "DataFormatError: <source>:<line>: <reason>" line of a traceback
    text; a message without one becomes ("<unknown>", 0, message)."""
    for line in reversed(message.strip().splitlines()):
        match = _ERROR_LINE.search(line)
        if match:
            return match.group(1), int(match.group(2)), match.group(3)
    text = message.strip().splitlines()
    return "<unknown>", 0, text[-1] if text else message


class Layout(NamedTuple):
    """What a file's lines look like: format "slot" or "raw" (Criteo) or "slot" / "csv" / "tsv" (a schema), and
    whether they carry a label. For csv/tsv: the file's column names (from its header or the schema's
    `columns`) and the number of its header line (0: none), which parse_block skips."""

    fmt: str
    labeled: bool
    columns: tuple[str, ...] | None = None
    header_line: int = 0


class _LineError(Exception):
    """Raised by the per-line parsers; the caller adds source and line number."""


# ---------------------------------------------------------------------------------------------- per-line parsers

SLOT_KEYS = [b"dense_feature"] * NUM_DENSE + [str(k).encode() for k in range(1, NUM_SLOTS + 1)]
_FLOAT_CHARS = b"0123456789.eE+-"
_HEX_CHARS = b"0123456789abcdefABCDEF"


def _show(text: bytes, limit: int = 40) -> str:
    shown = text.decode("utf-8", "replace")
    return repr(shown if len(shown) <= limit else shown[:limit] + "...")


def _parse_label(text: bytes) -> float:
    if text == b"0" or text == b"1":
        return float(text)
    raise _LineError(f"click label must be 0 or 1, got {_show(text)}")


def _parse_float(text: bytes, what: str) -> float:
    """Python's float() restricted to decimal/scientific notation (no spaces, '_', nan, inf); finite only."""
    value = None
    if text and not text.translate(None, _FLOAT_CHARS):
        try:
            value = float(text)
        except ValueError:
            pass
    if value is None:
        if text.lower().lstrip(b"+-") in (b"nan", b"inf", b"infinity"):
            raise _LineError(f"{what} is NaN or infinite: {_show(text)}")
        raise _LineError(f"{what} is not a number: {_show(text)}")
    if not math.isfinite(value):
        raise _LineError(f"{what} overflows to infinity: {_show(text)}")
    return value


_FLOAT32_LIMIT = 2.0 ** 128 - 2.0 ** 103  # float64 values at or beyond this become inf as float32


def _as_float32(value: float, text: bytes, what: str) -> float:
    """`value` (parsed from `text`, maybe scaled) unless it overflows float32, the type the model sees."""
    if abs(value) >= _FLOAT32_LIMIT:
        raise _LineError(f"{what} is out of the float32 range: {_show(text)}")
    return value


def _parse_id(text: bytes, slot: int | str, sparse_feature_number: int) -> int:
    if not text.isdigit():  # bytes.isdigit: ASCII digits only, False for b""
        raise _LineError(f"slot {slot}: id {_show(text)} is not a non-negative integer")
    if len(text.lstrip(b"0")) > len(str(sparse_feature_number)):  # no int() of thousands of digits
        shown = text.decode() if len(text) <= 40 else f"{text[:20].decode()}...({len(text)} digits)"
        raise _LineError(f"slot {slot}: id {shown} is out of range [0, {sparse_feature_number})")
    value = int(text.lstrip(b"0") or b"0")
    if value >= sparse_feature_number:
        raise _LineError(f"slot {slot}: id {value} is out of range [0, {sparse_feature_number})")
    return value


def _parse_slot_line(line: bytes, labeled: bool, spec: FeatureSpec) -> tuple[float | None, list, list]:
    tokens = line.split()
    if not tokens:
        raise _LineError("blank line")
    keys = [b"click"] + SLOT_KEYS if labeled else SLOT_KEYS
    if len(tokens) != len(keys):
        what = "click, 13 dense_feature, slots 1..26" if labeled else "13 dense_feature, slots 1..26, no click"
        raise _LineError(f"expected {len(keys)} tokens ({what}), got {len(tokens)}")
    values = []
    for i, (token, key) in enumerate(zip(tokens, keys)):
        name, sep, value = token.partition(b":")
        if name != key or not sep:
            raise _LineError(f"token {i + 1}: expected {key.decode()}:<value>, got {_show(token)}")
        values.append(value)
    label = _parse_label(values.pop(0)) if labeled else None
    dense = [_as_float32(_parse_float(v, f"dense_feature {j + 1}"), v, f"dense_feature {j + 1}")
             for j, v in enumerate(values[:NUM_DENSE])]
    ids = [_parse_id(v, k + 1, spec.sparse_feature_number) for k, v in enumerate(values[NUM_DENSE:])]
    return label, dense, ids


def _categorical_id(text: bytes, column: int, sparse_feature_number: int) -> int:
    if text.translate(None, _HEX_CHARS):
        raise _LineError(f"C{column} is not a hexadecimal value: {_show(text)}")
    return hash_categorical(column, text.decode("ascii"), sparse_feature_number)


def _parse_raw_line(line: bytes, labeled: bool, spec: FeatureSpec) -> tuple[float | None, list, list]:
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip(b" "):
        raise _LineError("blank line")
    fields = line.split(b"\t")
    expected = NUM_DENSE + NUM_SLOTS + int(labeled)
    if len(fields) != expected:
        what = "label, I1..I13, C1..C26" if labeled else "I1..I13, C1..C26, no label"
        raise _LineError(f"expected {expected} tab-separated columns ({what}), got {len(fields)}")
    label = _parse_label(fields.pop(0)) if labeled else None
    dense = [_as_float32((_parse_float(f, f"I{j + 1}") - spec.dense_min[j]) / spec.dense_diff[j], f,
                         f"I{j + 1} (scaled)") if f else 0.0
             for j, f in enumerate(fields[:NUM_DENSE])]
    ids = [_categorical_id(f, k + 1, spec.sparse_feature_number) for k, f in enumerate(fields[NUM_DENSE:])]
    return label, dense, ids


_LINE_PARSERS = {"slot": _parse_slot_line, "raw": _parse_raw_line}


# ------------------------------------------------------------------------------------------- vectorised parsing

_SPACE, _TAB, _NEWLINE, _COLON, _POINT, _MINUS = b" \t\n:.-"
_PAD = bytes(32)           # lets digit loops read a little past the block end without bounds checks
_MAX_NUMBER_CHARS = 32     # longer dense values / ids go through the Python parser
_MAX_DIGITS = 18           # int64 holds any 18-digit integer
_EXACT_MANTISSA = 2 ** 53  # m / 10**k is correctly rounded for m <= 2**53 and k <= 22 (Clinger's fast path)
_POW10 = 10.0 ** np.arange(23)
_HEX_TABLE = np.zeros(256, dtype=bool)
_HEX_TABLE[list(_HEX_CHARS)] = True
# Every byte except the separators that structure a line; deleting them leaves a line's separator skeleton.
_KEEP = {"slot": b" :\t\r\n", "raw": b"\t\r\n"}
_DELETE = {fmt: bytes(sorted(set(range(256)) - set(keep))) for fmt, keep in _KEEP.items()}


def _skeleton(layout: Layout) -> bytes:
    """The separators of one well-formed line (without its newline), e.g. ": : ... :" for the slot format."""
    fields = NUM_DENSE + NUM_SLOTS + int(layout.labeled)
    return b": " * (fields - 1) + b":" if layout.fmt == "slot" else b"\t" * (fields - 1)


class _Fast(NamedTuple):
    label: np.ndarray | None  # float32 [B]
    dense: np.ndarray         # float64 [B,13] (scaled for raw)
    sparse: np.ndarray        # int64 [B,26]
    flagged: np.ndarray       # bool [B]: rows the Python parser must decide
    line_ends: np.ndarray     # int [B]: offset of each line's newline


def _field_starts(separators: np.ndarray) -> np.ndarray:
    """Start offsets of the fields whose ends (separator offsets) are `separators` [rows, F]."""
    starts = np.empty_like(separators)
    starts[:, 1:] = separators[:, :-1] + 1
    starts[1:, 0] = separators[:-1, -1] + 1
    starts[0, 0] = 0
    return starts


def _digit_runs(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each span: (the integer formed by its ASCII digits, read left to right skipping other bytes,
    the number of digits). Spans must be at most _MAX_NUMBER_CHARS long."""
    value = np.zeros(starts.shape, dtype=np.int64)
    digits = np.zeros(starts.shape, dtype=np.uint8)  # small counters: half the memory traffic of int64
    for j in range(int(lengths.max(initial=0))):
        d = buf[starts + j] - np.uint8(48)  # uint8 arithmetic: non-digits wrap to >= 10
        is_digit = (d < 10) & (lengths > j)
        value = np.where(is_digit, value * 10 + d, value)
        digits += is_digit
    return value, digits


def _parse_ids(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
               sparse_feature_number: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned decimal ids in [0, n) -> (int64 values, ok)."""
    ok = (lengths > 0) & (lengths <= _MAX_DIGITS)
    value, digits = _digit_runs(buf, starts, np.where(ok, lengths, 0))
    return value, ok & (digits == lengths) & (value < sparse_feature_number)


def _parse_decimals(buf: np.ndarray, points: np.ndarray, starts: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spans of the form [-]digits[.digits] -> (float64 values equal to Python's float(), ok). Other forms
    (exponents, '+', too many digits) are not ok and left to `_parse_float`. `points`: offsets of every '.' in
    the buffer, ascending; `starts` must be ascending too."""
    negative = buf[starts] == _MINUS
    starts, lengths = starts + negative, lengths - negative
    ok = (lengths > 0) & (lengths <= _MAX_NUMBER_CHARS)
    # the decimal point of each span, found among all points of the block
    owner = np.searchsorted(starts, points, side="right") - 1
    inside = (owner >= 0) & (points < starts[owner] + lengths[owner])
    owner, position = owner[inside], points[inside] - starts[owner[inside]]
    point_count = np.bincount(owner, minlength=starts.size)
    point_at = np.zeros(starts.size, dtype=np.int64)
    point_at[owner] = position
    mantissa, digits = _digit_runs(buf, starts, np.where(ok, lengths, 0))
    fraction = np.where(point_count == 1, lengths - 1 - point_at, 0)
    ok &= ((digits + point_count == lengths) & (point_count <= 1) & (digits >= 1) & (digits <= _MAX_DIGITS)
           & (fraction < _POW10.size) & (mantissa <= _EXACT_MANTISSA))
    value = mantissa / _POW10[np.where(ok, fraction, 0)]
    return np.where(negative, -value, value), ok


def _fill_floats(block: bytes, values: np.ndarray, ok: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 flagged_rows: np.ndarray, per_row: int) -> None:
    """Parse the values the vectorised path left (exponents, '+', ...) with `_parse_float`; a value that is no
    number flags its row (the row parser then words the error)."""
    for i in np.flatnonzero(~ok):
        try:
            values[i] = _parse_float(block[starts[i]:starts[i] + lengths[i]], "value")
        except _LineError:
            flagged_rows[i // per_row] = True


def _labels(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Click labels of the label fields at `starts`; rows whose label is not exactly "0" or "1" are flagged
    (in place) for the per-line parser, which words the error."""
    digit = buf[starts] - np.uint8(48)
    flagged |= (lengths != 1) | (digit > 1)
    return digit.astype(np.float32)


def _slot_fast(block: bytes, buf: np.ndarray, rows: int, labeled: bool, spec: FeatureSpec) -> _Fast | None:
    """Vectorised slot-format parse of a block whose separator skeleton is right; None when a key is wrong."""
    fields = NUM_DENSE + NUM_SLOTS + int(labeled)
    text = buf[:len(block)]
    seps = np.flatnonzero((text == _COLON) | (text == _SPACE) | (text == _NEWLINE)).reshape(rows, 2 * fields)
    colons, ends = seps[:, 0::2], seps[:, 1::2]
    starts = _field_starts(ends)
    # keys: right lengths everywhere, "dense_feature:"/"click:" counted (a count can only match when every
    # key of that length is that word), and the slot numbers 1..26 byte by byte
    if not (colons - starts == _KEY_LENGTHS[labeled]).all():
        return None
    if block.count(b"dense_feature:") != NUM_DENSE * rows or (labeled and block.count(b"click:") != rows):
        return None
    slot_starts = starts[:, fields - NUM_SLOTS:]
    if not ((buf[slot_starts] == _SLOT_KEY_FIRST).all() and (buf[slot_starts + 1] == _SLOT_KEY_SECOND).all()):
        return None
    value_starts, value_lengths = colons + 1, ends - colons - 1
    flagged = np.zeros(rows, dtype=bool)
    label = _labels(buf, value_starts[:, 0], value_lengths[:, 0], flagged) if labeled else None
    o = int(labeled)
    d_starts, d_lengths = value_starts[:, o:o + NUM_DENSE].ravel(), value_lengths[:, o:o + NUM_DENSE].ravel()
    dense, dense_ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), d_starts, d_lengths)
    _fill_floats(block, dense, dense_ok, d_starts, d_lengths, flagged, NUM_DENSE)
    dense = dense.reshape(rows, NUM_DENSE)
    flagged |= (np.abs(dense) >= _FLOAT32_LIMIT).any(axis=1)
    sparse, ids_ok = _parse_ids(buf, value_starts[:, o + NUM_DENSE:], value_lengths[:, o + NUM_DENSE:],
                                spec.sparse_feature_number)
    flagged |= ~ids_ok.all(axis=1)
    return _Fast(label, dense, sparse, flagged, ends[:, -1])


def _raw_fast(block: bytes, buf: np.ndarray, rows: int, labeled: bool, spec: FeatureSpec) -> _Fast:
    """Vectorised raw-Criteo parse of a block whose separator skeleton is right."""
    fields = NUM_DENSE + NUM_SLOTS + int(labeled)
    text = buf[:len(block)]
    ends = np.flatnonzero((text == _TAB) | (text == _NEWLINE)).reshape(rows, fields)
    starts = _field_starts(ends)
    lengths = ends - starts
    flagged = np.zeros(rows, dtype=bool)
    label = _labels(buf, starts[:, 0], lengths[:, 0], flagged) if labeled else None
    o = int(labeled)
    d_starts, d_lengths = starts[:, o:o + NUM_DENSE].ravel(), lengths[:, o:o + NUM_DENSE].ravel()
    present = d_lengths > 0
    values, values_ok = _parse_decimals(buf, np.flatnonzero(text == _POINT), d_starts, d_lengths)
    values_ok |= ~present
    _fill_floats(block, values, values_ok, d_starts, d_lengths, flagged, NUM_DENSE)
    values = values.reshape(rows, NUM_DENSE)
    dense = np.where(present.reshape(rows, NUM_DENSE),
                     (values - np.asarray(spec.dense_min)) / np.asarray(spec.dense_diff), 0.0)
    flagged |= (np.abs(dense) >= _FLOAT32_LIMIT).any(axis=1)
    c_starts, c_lengths = starts[:, o + NUM_DENSE:], lengths[:, o + NUM_DENSE:]
    too_long = c_lengths > _MAX_NUMBER_CHARS
    c_lengths = np.where(too_long, 0, c_lengths)
    hex_digits = np.zeros(c_starts.shape, dtype=np.uint8)
    for j in range(int(c_lengths.max(initial=0))):
        hex_digits += _HEX_TABLE[buf[c_starts + j]] & (c_lengths > j)
    flagged |= (too_long | (hex_digits != c_lengths)).any(axis=1)
    columns = np.broadcast_to(np.arange(1, NUM_SLOTS + 1), c_starts.shape)
    sparse = hash_spans(buf, c_starts.ravel(), c_lengths.ravel(), columns.ravel(), spec.sparse_feature_number)
    return _Fast(label, dense, sparse.reshape(rows, NUM_SLOTS), flagged, ends[:, -1])


_KEY_LENGTHS = {labeled: np.array(([5] if labeled else []) + [len(k) for k in SLOT_KEYS])
                for labeled in (True, False)}
_SLOT_KEY_FIRST = np.frombuffer(b"".join(k[:1] for k in SLOT_KEYS[NUM_DENSE:]), dtype=np.uint8)
_SLOT_KEY_SECOND = np.frombuffer(b"".join((k + b":")[1:2] for k in SLOT_KEYS[NUM_DENSE:]), dtype=np.uint8)
_FAST_PARSERS = {"slot": _slot_fast, "raw": _raw_fast}


def _vectorised(block: bytes, layout: Layout, spec: FeatureSpec) -> _Fast | None:
    rows = block.count(b"\n")
    buf = np.frombuffer(block + _PAD, dtype=np.uint8)
    return _FAST_PARSERS[layout.fmt](block, buf, rows, layout.labeled, spec)


# ----------------------------------------------------------------------------------------------- block parsing

def _empty_batch(rows: int, labeled: bool) -> Batch:
    return Batch(np.zeros((rows, NUM_DENSE), dtype=np.float32), np.zeros((rows, NUM_SLOTS), dtype=np.int64),
                 np.zeros((rows, 1), dtype=np.float32) if labeled else None)


def criteo_spec(spec) -> FeatureSpec | None:
    """The Criteo FeatureSpec behind `spec` (a FeatureSpec, or a FeatureSchema that is Criteo's), else None: the
    schema is parsed by ctrkit.data.generic."""
    if isinstance(spec, FeatureSpec):
        return spec
    return _schema_spec(spec)


@functools.lru_cache(maxsize=64)
def _schema_spec(schema) -> FeatureSpec | None:
    return schema.feature_spec()


def parse_block(block: bytes, layout: Layout, spec, source: str, first_line_number: int,
                skip_bad: bool, stats=None) -> tuple[Batch, list[DataFormatError]]:
    """Parse `block` (whole lines, each ending with b"\\n") -> (batch, errors of the skipped lines).
    Without `skip_bad` the first malformed line raises DataFormatError. `spec`: a FeatureSpec or a
    FeatureSchema (non-Criteo schemas go to ctrkit.data.generic; `stats`, a Counter, then receives the
    truncated multi-valued lists per field)."""
    criteo = criteo_spec(spec)
    if criteo is None:
        from ctrkit.data import generic

        return generic.parse_block(block, layout, spec, source, first_line_number, skip_bad, stats)
    spec = criteo
    if b"\r" in block:  # Windows line endings: same lines, and the vectorised path applies
        block = block.replace(b"\r\n", b"\n")
    rows = block.count(b"\n")
    skeleton = _skeleton(layout)
    fast = None
    if block.translate(None, _DELETE[layout.fmt]) == (skeleton + b"\n") * rows:
        fast = _vectorised(block, layout, spec)
    if fast is not None:  # the common case: every line has the right shape
        with np.errstate(over="ignore"):  # float32 overflow only in flagged rows, which are re-parsed
            dense = fast.dense.astype(np.float32)
        out = Batch(dense, fast.sparse, fast.label[:, None] if layout.labeled else None)
        line_starts = np.concatenate(([0], fast.line_ends[:-1] + 1))
        return _parse_slow_rows(out, np.flatnonzero(fast.flagged),
                                lambda i: block[line_starts[i]:fast.line_ends[i]],
                                layout, spec, source, first_line_number, skip_bad)
    # some line's skeleton (or a key) is off: vectorise the lines that look right, the rest go one by one
    lines = block.split(b"\n")[:-1]
    good = np.array([i for i, line in enumerate(lines) if line.translate(None, _DELETE[layout.fmt]) == skeleton],
                    dtype=np.int64)
    fast = _vectorised(b"\n".join([lines[i] for i in good]) + b"\n", layout, spec) if good.size else None
    out = _empty_batch(rows, layout.labeled)
    slow = np.arange(rows)
    if fast is not None:
        with np.errstate(over="ignore"):
            out.dense[good] = fast.dense
        out.sparse[good] = fast.sparse
        if layout.labeled:
            out.label[good, 0] = fast.label
        slow = np.setdiff1d(slow, good[~fast.flagged], assume_unique=True)
    return _parse_slow_rows(out, slow, lines.__getitem__, layout, spec, source, first_line_number, skip_bad)


def _parse_slow_rows(out: Batch, slow: np.ndarray, line_of, layout: Layout, spec: FeatureSpec, source: str,
                     first_line_number: int, skip_bad: bool) -> tuple[Batch, list[DataFormatError]]:
    """Run the reference per-line parser on rows `slow` (ascending) of `out`, in place; drop bad rows."""
    parse_line = _LINE_PARSERS[layout.fmt]
    return reparse_rows(out, slow.tolist(), line_of, lambda line: parse_line(line, layout.labeled, spec),
                        layout.labeled, source, first_line_number, skip_bad)


def reparse_rows(out: Batch, rows, line_of, parse_line, labeled: bool, source: str, first_line_number: int,
                 skip_bad: bool) -> tuple[Batch, list[DataFormatError]]:
    """Fill rows `rows` (ascending ints) of `out` in place from `parse_line(line_of(i))` -> (label, dense, ids),
    the per-line parser of any format; a _LineError raises DataFormatError, or with `skip_bad` drops the row
    and is returned in the error list. Shared by the Criteo and the generic (schema) parsers."""
    errors, bad_rows = [], []
    for i in rows:
        try:
            label, dense, ids = parse_line(line_of(i))
        except _LineError as exc:
            error = DataFormatError(source, first_line_number + i, str(exc))
            if not skip_bad:
                raise error from None
            errors.append(error)
            bad_rows.append(i)
            continue
        out.dense[i] = dense
        out.sparse[i] = ids
        if labeled:
            out.label[i, 0] = label
    if bad_rows:
        keep = np.ones(len(out.dense), dtype=bool)
        keep[bad_rows] = False
        out = Batch(out.dense[keep], out.sparse[keep], out.label[keep] if out.label is not None else None)
    return out, errors


# ----------------------------------------------------------------------------------------- format detection

def detect_layout(line: bytes | str) -> Layout | None:
    """The layout a single line suggests, or None when it looks like neither format."""
    if isinstance(line, str):
        line = line.encode("utf-8")
    first = line.split(None, 1)[0] if line.strip() else b""
    if first.startswith(b"click:"):
        return Layout("slot", True)
    if first.startswith(b"dense_feature:"):
        return Layout("slot", False)
    tabs = line.count(b"\t")
    if tabs in (NUM_DENSE + NUM_SLOTS - 1, NUM_DENSE + NUM_SLOTS):
        return Layout("raw", tabs == NUM_DENSE + NUM_SLOTS)
    return None


_FORMAT_NAMES = {"slot": "slot format (click:/dense_feature: tokens)", "raw": "raw Criteo (tab-separated)"}


def find_layout(block: bytes, spec, source: str, first_line_number: int) -> Layout | None:
    """The layout of a file from its first lines: the first line that looks like either format decides (a
    malformed line before it is reported when parsed). None when the block holds only blank lines.
    `spec`: FeatureSpec or FeatureSchema (a header line of a CSV/TSV schema must be the block's first line)."""
    criteo = criteo_spec(spec)
    if criteo is None:
        from ctrkit.data import generic

        return generic.find_layout(block, spec, source, first_line_number)
    spec = criteo
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        layout = detect_layout(line)
        if layout is None:
            continue
        if spec.data_format not in ("auto", layout.fmt):
            raise DataFormatError(source, first_line_number + i,
                                  f"data_format is {spec.data_format!r} but this line is {_FORMAT_NAMES[layout.fmt]}")
        return layout
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if not nonblank:
        return None
    raise DataFormatError(source, first_line_number + nonblank[0],
                          f"cannot tell the data format: no line looks like {_FORMAT_NAMES['slot']} or "
                          f"{_FORMAT_NAMES['raw']} with 40 or 39 columns")


def parse_lines(lines: Iterable[str | bytes], spec, source: str = "<input>",
                first_line_number: int = 1, skip_bad: bool = False, stats=None) -> ParseResult:
    """Parse text lines (str or bytes, one line each, with or without the newline) into one Batch.
    The format (and whether there are labels) comes from the lines themselves unless spec.data_format says.
    `spec`: FeatureSpec or FeatureSchema; a CSV/TSV schema with `header: true` expects the header as the first
    line when first_line_number is 1 (to parse later chunks of a file, use `FileParser`)."""
    stripped = [(line.encode("utf-8") if isinstance(line, str) else line) for line in lines]
    if not stripped:
        return ParseResult(_empty_for(spec, 0, False), 0)
    block = b"\n".join(line[:-1] if line.endswith(b"\n") else line for line in stripped) + b"\n"
    layout = find_layout(block, spec, source, first_line_number) or blank_layout(spec)
    batch, errors = parse_block(block, layout, spec, source, first_line_number, skip_bad, stats)
    return ParseResult(batch, len(errors))


def blank_layout(spec) -> Layout:
    """The layout a block of blank lines only is parsed with (every line is then an error)."""
    if criteo_spec(spec) is not None:
        return Layout("slot", False)
    return Layout("slot", False) if spec.format in ("auto", "slot") else Layout(
        spec.format, False, tuple(c for c in spec.columns or spec.feature_names if c != spec.label.name))


def _empty_for(spec, rows: int, labeled: bool) -> Batch:
    if criteo_spec(spec) is not None:
        return _empty_batch(rows, labeled)
    from ctrkit.data.generic import empty_batch

    return empty_batch(spec, rows, labeled)


class FileParser:
    """Parses one file (or upload) given chunk by chunk, with its format detected at its first data line and
    locked for the rest (a line in another format is an error that says so), for a FeatureSpec or a
    FeatureSchema (a header line is read from the first chunk). `truncated` counts truncated multi-valued
    lists per field; `skipped` the lines dropped with skip_bad."""

    def __init__(self, spec, source: str = "<input>", skip_bad: bool = False):
        from collections import Counter

        self.spec, self.source, self.skip_bad = spec, source, skip_bad
        self.layout: Layout | None = None
        self.detected_at = 0
        self.skipped = 0
        self.truncated = Counter()

    def parse(self, lines: Iterable[str | bytes], first_line_number: int) -> Batch:
        stripped = [(line.encode("utf-8") if isinstance(line, str) else line) for line in lines]
        if not stripped:
            return _empty_for(self.spec, 0, bool(self.layout and self.layout.labeled))
        block = b"\n".join(line[:-1] if line.endswith(b"\n") else line for line in stripped) + b"\n"
        return self.parse_block(block, first_line_number)

    def parse_block(self, block: bytes, first_line_number: int) -> Batch:
        """`block`: whole lines each ending with b"\\n", the first being line `first_line_number`."""
        if self.layout is None:
            self.layout = find_layout(block, self.spec, self.source, first_line_number)
            self.detected_at = first_line_number
        layout = self.layout or blank_layout(self.spec)
        try:
            batch, errors = parse_block(block, layout, self.spec, self.source, first_line_number, self.skip_bad,
                                        self.truncated)
        except DataFormatError as exc:
            raise self._reworded(exc, block, first_line_number) from None
        self.skipped += len(errors)
        return batch

    def _reworded(self, exc: DataFormatError, block: bytes, first_line_number: int) -> DataFormatError:
        if self.layout is None:
            return exc
        lines = block.split(b"\n")
        index = exc.line_number - first_line_number
        line = lines[index] if 0 <= index < len(lines) else b""
        criteo = criteo_spec(self.spec)
        if criteo is not None:
            shown = detect_layout(line)
            if shown is None or shown == self.layout:
                return exc
            reason = (f"this line is {_FORMAT_NAMES[shown.fmt]} but the file is {_FORMAT_NAMES[self.layout.fmt]} "
                      f"(from its first data line); a file must keep one format")
        else:
            from ctrkit.data.generic import check_line_format

            reason = check_line_format(line, self.layout, self.spec)
            if reason is None:
                return exc
        return DataFormatError(exc.source, exc.line_number, reason)
