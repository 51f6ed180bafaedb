"""Line parsing (ctrkit.data.parsing): both formats on the real Criteo samples, every kind of malformed line
(with file and line in the message), skip counts, format detection, and the vectorised block parser agreeing
bit for bit with the per-line reference parser on valid, invalid and fuzzed lines."""
import itertools
import pickle
import random

import numpy as np
import pytest

from ctrkit.data import Batch, DataFormatError, FeatureSpec, Layout, detect_layout, hash_categorical, parse_lines
from ctrkit.data.parsing import _LineError, _parse_raw_line, _parse_slot_line
from ctrkit.data.spec import PADDLEREC_DENSE_DIFF, PADDLEREC_DENSE_MIN

SPEC = FeatureSpec()


def read_lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines()


def reference(lines: list[bytes], layout: Layout, spec: FeatureSpec = SPEC) -> list:
    """The per-line reference parser's verdict for each line: (label, dense float32, ids) or the reason."""
    parse = _parse_slot_line if layout.fmt == "slot" else _parse_raw_line
    out = []
    for line in lines:
        try:
            label, dense, ids = parse(line, layout.labeled, spec)
            out.append((label, np.array(dense, dtype=np.float32), np.array(ids, dtype=np.int64)))
        except _LineError as exc:
            out.append(str(exc))
    return out


def assert_same_as_reference(lines: list[bytes], layout: Layout, spec: FeatureSpec = SPEC) -> int:
    """parse_lines(skip_bad=True) keeps exactly the lines the reference accepts, with bit-identical values;
    returns how many were rejected."""
    expected = reference(lines, layout, spec)
    result = parse_lines(lines, spec, source="fuzz", skip_bad=True)
    kept = [e for e in expected if not isinstance(e, str)]
    assert result.skipped == len(expected) - len(kept)
    batch = result.batch
    assert len(batch.dense) == len(kept)
    if kept:
        np.testing.assert_array_equal(batch.dense.view(np.uint32), np.stack([k[1] for k in kept]).view(np.uint32))
        np.testing.assert_array_equal(batch.sparse, np.stack([k[2] for k in kept]))
        if layout.labeled:
            np.testing.assert_array_equal(batch.label[:, 0], [k[0] for k in kept])
    return result.skipped


# ------------------------------------------------------------------------------------------------ real samples

def test_slot_sample_parses(slot_sample):
    lines = read_lines(slot_sample)
    batch = parse_lines(lines, SPEC, source=slot_sample).batch
    assert batch.dense.dtype == np.float32 and batch.dense.shape == (80, 13)
    assert batch.sparse.dtype == np.int64 and batch.sparse.shape == (80, 26)
    assert batch.label.dtype == np.float32 and batch.label.shape == (80, 1)
    assert batch.label.sum() == 23  # NOTICE.md: 23 clicks
    # first line, by hand: dense_feature:0.00497512437811 ... 1:737395 ... 26:306163
    assert batch.dense[0, 1] == np.float32(0.00497512437811)
    assert batch.sparse[0, 0] == 737395 and batch.sparse[0, 25] == 306163
    assert_same_as_reference(lines, Layout("slot", True))


def test_raw_sample_parses(raw_sample):
    lines = read_lines(raw_sample)
    batch = parse_lines(lines, SPEC, source=raw_sample).batch
    assert batch.dense.shape == (100, 13) and batch.sparse.shape == (100, 26) and batch.label.shape == (100, 1)
    fields = lines[0].decode().split("\t")
    label, ints, cats = fields[0], fields[1:14], fields[14:]
    expected_dense = [0.0 if v == "" else (float(v) - lo) / d
                      for v, lo, d in zip(ints, PADDLEREC_DENSE_MIN, PADDLEREC_DENSE_DIFF)]
    np.testing.assert_array_equal(batch.dense[0], np.array(expected_dense, dtype=np.float32))
    assert batch.label[0, 0] == float(label)
    assert list(batch.sparse[0]) == [hash_categorical(k + 1, v, SPEC.sparse_feature_number)
                                     for k, v in enumerate(cats)]
    assert (batch.sparse[0] == 0).tolist() == [v == "" for v in cats]
    assert ((batch.sparse >= 0) & (batch.sparse < SPEC.sparse_feature_number)).all()
    assert_same_as_reference(lines, Layout("raw", True))


def test_unlabeled_lines_give_no_label(slot_sample, raw_sample):
    slot = read_lines(slot_sample)
    labeled = parse_lines(slot, SPEC).batch
    unlabeled = parse_lines([line.split(b" ", 1)[1] for line in slot], SPEC).batch
    assert unlabeled.label is None
    np.testing.assert_array_equal(unlabeled.dense, labeled.dense)
    np.testing.assert_array_equal(unlabeled.sparse, labeled.sparse)
    raw = read_lines(raw_sample)
    labeled = parse_lines(raw, SPEC).batch
    unlabeled = parse_lines([line.split(b"\t", 1)[1] for line in raw], SPEC).batch
    assert unlabeled.label is None
    np.testing.assert_array_equal(unlabeled.sparse, labeled.sparse)


def test_str_bytes_newlines_and_crlf_parse_alike(slot_sample, raw_sample):
    for path in (slot_sample, raw_sample):
        lines = read_lines(path)
        expected = parse_lines(lines, SPEC).batch
        variants = [[line.decode() for line in lines], [line + b"\n" for line in lines],
                    [line + b"\r\n" for line in lines], [line.decode() + "\n" for line in lines]]
        for variant in variants:
            batch = parse_lines(variant, SPEC).batch
            for got, want in zip(batch, expected):
                np.testing.assert_array_equal(got, want)


def test_empty_input():
    batch, skipped = parse_lines([], SPEC)
    assert batch.dense.shape == (0, 13) and batch.sparse.shape == (0, 26) and batch.label is None
    assert skipped == 0


# ----------------------------------------------------------------------------------------------- bad lines

def _slot_variant(tokens: list[str], index: int, token: str | None) -> str:
    tokens = list(tokens)
    if token is None:
        del tokens[index]
    else:
        tokens[index] = token
    return " ".join(tokens)


SLOT_BAD = [  # (how to damage the first sample line: token index -> new token (None: delete), reason)
    ({39: None}, "expected 40 tokens (click, 13 dense_feature, slots 1..26), got 39"),
    ({0: None}, "expected 40 tokens"),
    ({4: "dense_featur:0.1"}, "token 5: expected dense_feature:<value>, got 'dense_featur:0.1'"),
    ({4: "dense_feature0.1"}, "token 5: expected dense_feature:<value>"),
    ({16: "4:1", 17: "3:1"}, "token 17: expected 3:<value>, got '4:1'"),
    ({20: "color:blue"}, "token 21: expected 7:<value>"),
    ({3: "dense_feature:abc"}, "dense_feature 3 is not a number: 'abc'"),
    ({3: "dense_feature:"}, "dense_feature 3 is not a number: ''"),
    ({3: "dense_feature:1,5"}, "dense_feature 3 is not a number"),
    ({3: "dense_feature:1_0"}, "dense_feature 3 is not a number"),
    ({5: "dense_feature:nan"}, "dense_feature 5 is NaN or infinite: 'nan'"),
    ({5: "dense_feature:-inf"}, "dense_feature 5 is NaN or infinite"),
    ({5: "dense_feature:1e999"}, "dense_feature 5 overflows to infinity"),
    ({5: "dense_feature:-1e39"}, "dense_feature 5 is out of the float32 range: '-1e39'"),
    ({18: "5:1000001"}, "slot 5: id 1000001 is out of range [0, 1000001)"),
    ({18: "5:99999999999999999999999"}, "slot 5: id 99999999999999999999999 is out of range"),
    ({18: "5:-1"}, "slot 5: id '-1' is not a non-negative integer"),
    ({18: "5:1.5"}, "slot 5: id '1.5' is not a non-negative integer"),
    ({18: "5:"}, "slot 5: id '' is not a non-negative integer"),
    ({18: "5:1:2"}, "slot 5: id '1:2' is not a non-negative integer"),
    ({0: "click:2"}, "click label must be 0 or 1, got '2'"),
    ({0: "click:"}, "click label must be 0 or 1, got ''"),
    ({0: "click:0.0"}, "click label must be 0 or 1, got '0.0'"),
]


@pytest.mark.parametrize("edits,reason", SLOT_BAD)
def test_bad_slot_line_is_named(slot_sample, edits, reason):
    lines = [line.decode() for line in read_lines(slot_sample)]
    tokens = lines[0].split(" ")
    bad = tokens
    for index in sorted(edits, reverse=True):
        bad = _slot_variant(bad, index, edits[index]).split(" ")
    check_bad_line(lines, " ".join(bad), reason)


RAW_BAD = [  # (column index -> new value (None: delete the column), reason)
    ({39: None}, "expected 40 tab-separated columns (label, I1..I13, C1..C26), got 39"),
    ({40: "x"}, "expected 40 tab-separated columns"),
    ({3: "abc"}, "I3 is not a number: 'abc'"),
    ({3: " 7"}, "I3 is not a number: ' 7'"),
    ({3: "nan"}, "I3 is NaN or infinite"),
    ({3: "1e400"}, "I3 overflows to infinity"),
    ({5: "1" + "0" * 45}, "I5 (scaled) is out of the float32 range"),
    ({0: "2"}, "click label must be 0 or 1, got '2'"),
    ({0: ""}, "click label must be 0 or 1, got ''"),
    ({18: "zz12ab34"}, "C5 is not a hexadecimal value: 'zz12ab34'"),
    ({18: "05db 164"}, "C5 is not a hexadecimal value"),
    ({18: "05db:164"}, "C5 is not a hexadecimal value"),
]


@pytest.mark.parametrize("edits,reason", RAW_BAD)
def test_bad_raw_line_is_named(raw_sample, edits, reason):
    lines = [line.decode() for line in read_lines(raw_sample)]
    fields = lines[0].split("\t")
    for index in sorted(edits, reverse=True):
        if edits[index] is None:
            del fields[index]
        elif index == len(fields):
            fields.append(edits[index])
        else:
            fields[index] = edits[index]
    check_bad_line(lines, "\t".join(fields), reason)


@pytest.mark.parametrize("bad", ["", "   ", "\t"])
def test_blank_lines_are_errors(slot_sample, raw_sample, bad):
    for path in (slot_sample, raw_sample):
        lines = [line.decode() for line in read_lines(path)]
        reason = "blank line" if bad != "\t" or path == slot_sample else "expected 40 tab-separated columns"
        check_bad_line(lines, bad, reason)


def check_bad_line(good_lines: list[str], bad: str, reason: str, at: int = 30) -> None:
    """The bad line among good ones: raises naming source and line; with skip_bad it is dropped and counted."""
    lines = good_lines[:at] + [bad] + good_lines[at:50]
    with pytest.raises(DataFormatError) as info:
        parse_lines(lines, SPEC, source="data.txt", first_line_number=101)
    error = info.value
    assert (error.source, error.line_number) == ("data.txt", 101 + at)
    assert str(error).startswith(f"data.txt:{101 + at}: ") and reason in error.reason, str(error)
    batch, skipped = parse_lines(lines, SPEC, skip_bad=True)
    assert skipped == 1
    expected = parse_lines(good_lines[:50], SPEC).batch
    for got, want in zip(batch, expected):
        np.testing.assert_array_equal(got, want)


def test_first_bad_line_is_reported_and_all_are_counted(slot_sample):
    lines = [line.decode() for line in read_lines(slot_sample)]
    lines[7] = lines[7].replace("click:0", "click:7").replace("click:1", "click:7")
    lines[3] = "garbage"
    lines[60] = ""
    with pytest.raises(DataFormatError, match=r"^f:4: expected 40 tokens"):
        parse_lines(lines, SPEC, source="f")
    assert parse_lines(lines, SPEC, skip_bad=True).skipped == 3


def test_id_range_follows_the_spec(slot_sample):
    lines = read_lines(slot_sample)
    with pytest.raises(DataFormatError, match=r"slot \d+: id \d+ is out of range \[0, 1000\)"):
        parse_lines(lines, FeatureSpec(sparse_feature_number=1000))
    raw_ids = parse_lines([b"\t".join([b"1"] + [b""] * 13 + [b"ab"] * 26)], FeatureSpec(sparse_feature_number=2))
    assert (raw_ids.batch.sparse == 1).all()


def test_error_is_picklable():
    error = DataFormatError("a.txt", 3, "blank line")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.source, clone.line_number, clone.reason, str(clone)) == ("a.txt", 3, "blank line", str(error))


# ------------------------------------------------------------------------------------------------ detection

def test_format_detection(slot_sample, raw_sample):
    assert detect_layout(read_lines(slot_sample)[0]) == Layout("slot", True)
    assert detect_layout(read_lines(slot_sample)[0].split(b" ", 1)[1]) == Layout("slot", False)
    assert detect_layout(read_lines(raw_sample)[0]) == Layout("raw", True)
    assert detect_layout(read_lines(raw_sample)[0].split(b"\t", 1)[1]) == Layout("raw", False)
    assert detect_layout(b"hello world") is None
    with pytest.raises(DataFormatError, match=r"^x:1: cannot tell the data format"):
        parse_lines(["hello", "world"], SPEC, source="x")
    # the first line that looks like a format decides; a garbage line before it is reported as malformed
    with pytest.raises(DataFormatError, match=r"^x:1: expected 40 tokens"):
        parse_lines(["hello"] + read_lines(slot_sample)[:3], SPEC, source="x")


def test_forced_format_mismatch_is_an_error(slot_sample):
    with pytest.raises(DataFormatError, match=r"data_format is 'raw' but this line is slot format"):
        parse_lines(read_lines(slot_sample), FeatureSpec(data_format="raw"))
    assert len(parse_lines(read_lines(slot_sample), FeatureSpec(data_format="slot")).batch.dense) == 80


# ------------------------------------------------------------------------------- vectorised == reference

def test_dense_values_agree_exhaustively(slot_sample, raw_sample):
    """Every string of up to 4 chars over digits, '.', '-', '+', 'e' as a dense value: accepted or rejected
    and valued exactly as Python's float() (restricted) does, in both formats."""
    values = ["".join(chars) for n in range(5) for chars in itertools.product("07.-+e", repeat=n)]  # 7e77 > float32
    values += ["123456789012345678", "1234567890123456789", "0.000000000000000000000001",
                                    "9007199254740993", "9007199254740992.5", "-0", "-.5", "5.", ".5", "1e-5",
                                    "3.14159265358979323846", "0.1", "12345678.87654321", "00000000000000000012"]
    slot_tokens = read_lines(slot_sample)[0].split(b" ")
    slot_lines = [b" ".join(slot_tokens[:2] + [b"dense_feature:" + v.encode()] + slot_tokens[3:]) for v in values]
    assert 0 < assert_same_as_reference(slot_lines, Layout("slot", True)) < len(values)
    raw_fields = read_lines(raw_sample)[0].split(b"\t")
    raw_lines = [b"\t".join(raw_fields[:1] + [v.encode()] + raw_fields[2:]) for v in values]
    assert 0 < assert_same_as_reference(raw_lines, Layout("raw", True)) < len(values)


def test_random_decimals_are_correctly_rounded():
    rng = random.Random(7)
    values = []
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19)))
        point = rng.randint(0, len(digits))
        values.append(("-" if rng.random() < 0.3 else "") + digits[:point] + "." + digits[point:])
    lines = [" ".join(["dense_feature:" + v] * 13 + [f"{k}:1" for k in range(1, 27)]) for v in values]
    assert assert_same_as_reference([line.encode() for line in lines], Layout("slot", False)) == 0


MUTATIONS = "0123456789.-+e: \tax\r"


@pytest.mark.parametrize("fmt", ["slot", "raw"])
def test_fuzzed_lines_agree_with_the_reference(slot_sample, raw_sample, fmt):
    """Random single-character damage to real lines: the block parser keeps and rejects exactly what the
    per-line reference parser does, with identical values."""
    rng = random.Random(11 if fmt == "slot" else 12)
    good = read_lines(slot_sample if fmt == "slot" else raw_sample)
    lines = []
    for _ in range(1500):
        line = bytearray(rng.choice(good))
        for _ in range(rng.choice([0, 1, 1, 2])):
            i = rng.randrange(len(line))
            op = rng.random()
            if op < 0.6:
                line[i] = ord(rng.choice(MUTATIONS))
            elif op < 0.8:
                del line[i]
            else:
                line.insert(i, ord(rng.choice(MUTATIONS)))
        lines.append(bytes(line).replace(b"\n", b""))
    rejected = assert_same_as_reference(lines, Layout(fmt, True))
    assert 100 < rejected < 1400  # the fuzz exercises both outcomes


def test_batch_is_a_named_tuple():
    batch = Batch(np.zeros((1, 13), np.float32), np.zeros((1, 26), np.int64), None)
    dense, sparse, label = batch
    assert label is None and batch.dense is dense
