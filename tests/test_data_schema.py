"""Parsing against a declared schema (ctrkit.data.generic): CSV / TSV with a header or `columns:`, slot format
with any slot names, packing per Contract 1, multi-valued truncation counts, errors naming file / line / column,
skip_bad counts, the per-file format lock, ids of thousands of digits, and the vectorised paths agreeing bit for
bit with the per-line reference parser on generated and fuzzed lines."""
import math
import os
import pickle
import random
from collections import Counter

import numpy as np
import pytest

from ctrkit.data import DataFormatError, FeatureSpec, iter_batches, parse_lines
from ctrkit.data.generic import _empty, _plan, _slow_rows, find_layout, parse_block
from ctrkit.data.hashing import hash_value
from ctrkit.data.parsing import FileParser
from ctrkit.data.synthetic_schema import generate_schema_dataset
from ctrkit.schema import FeatureSchema, criteo_schema

MOVIELENS = FeatureSchema.from_dict({
    "name": "movielens", "format": "csv", "header": True,
    "label": {"name": "rating", "threshold": 4},
    "numeric": [{"name": "age", "preprocess": "log", "fill": -1}],
    "categorical": ["user_id", "movie_id", "gender", "occupation", "zip"],
    "multi_valued": [{"name": "genres", "separator": "|", "max_len": 3, "pooling": "mean"}],
}, key="dataset")
HEADER = "user_id,movie_id,rating,timestamp,title,genres,gender,age,occupation,zip"
ROWS = [
    '1,1193,5,978300760,"One Flew Over the Cuckoo\'s Nest (1975)",Drama,F,1,10,48067',
    '1,661,3,978302109,"James and the Giant Peach, The (1996)",Animation|Children\'s|Musical,F,1,10,48067',
    "2,3068,4,978299000,Verdict (1982),Drama,M,56,16,70072",
    "2,1,2,978299000,Toy Story (1995),Animation|Comedy|Action|Adventure,M,,16,70072",
]
SLOT_SCHEMA = FeatureSchema.from_dict({
    "name": "slots", "format": "slot",
    "label": {"name": "click"},
    "numeric": [{"name": "d1", "slot": "dense"}, {"name": "d2", "slot": "dense", "fill": 0.5}],
    "categorical": ["user", "item"],
    "multi_valued": [{"name": "tags", "max_len": 2}],
}, key="dataset")


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def reference(lines, schema, layout):
    """The per-line reference parser over `lines` (no header): batch of the valid lines + truncation counts."""
    truncated = Counter()
    batch, errors = _slow_rows(_empty(len(lines), schema, layout.labeled), range(len(lines)), lines.__getitem__,
                               _plan(schema, layout), schema, "ref", 1, True, truncated)
    return batch, len(errors), truncated


def assert_same_batches(a, b):
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y)


# ------------------------------------------------------------------------------------------------- CSV / TSV

def test_csv_with_header_packs_per_contract(tmp_path):
    path = write(tmp_path / "ml.csv", [HEADER, *ROWS])
    stream = iter_batches(path, MOVIELENS, 10)
    [batch] = list(stream)
    assert batch.dense.shape == (4, 1) and batch.sparse.shape == (4, MOVIELENS.sparse_width) == (4, 8)
    assert batch.label[:, 0].tolist() == [1, 0, 1, 0]  # rating >= 4
    assert batch.dense[:, 0].tolist() == pytest.approx([math.log1p(1), math.log1p(1), math.log1p(56), -1.0])
    n = MOVIELENS.sparse_feature_number
    assert batch.sparse[0, :5].tolist() == [hash_value(k, v, n) for k, v in
                                            zip(("user_id", "movie_id", "gender", "occupation", "zip"),
                                                ("1", "1193", "F", "10", "48067"))]
    genres = batch.sparse[:, 5:]
    assert genres[0].tolist() == [hash_value("genres", "Drama", n), 0, 0]
    assert genres[1].tolist() == [hash_value("genres", g, n) for g in ("Animation", "Children's", "Musical")]
    assert genres[3].tolist() == [hash_value("genres", g, n) for g in ("Animation", "Comedy", "Action")]
    assert stream.truncated == Counter({"genres": 1}) and stream.skipped == 0
    # the same lines through parse_lines (upload path) and through a TSV copy give the same batch
    assert_same_batches(parse_lines([HEADER, *ROWS], MOVIELENS).batch, batch)
    tsv = [line.replace(",", "\t") for line in [HEADER, ROWS[2], ROWS[3]]]
    tsv_batch = parse_lines(tsv, MOVIELENS.with_options(format="tsv")).batch
    assert_same_batches(tsv_batch, parse_lines([HEADER, ROWS[2], ROWS[3]], MOVIELENS).batch)


def test_columns_without_header_and_unlabeled_files(tmp_path):
    columns = tuple(HEADER.split(","))
    schema = MOVIELENS.with_options(header=False, columns=columns)
    labeled = parse_lines(ROWS, schema).batch
    assert_same_batches(labeled, parse_lines([HEADER, *ROWS], MOVIELENS).batch)
    unlabeled_rows = [",".join(v for i, v in enumerate(next(__import__("csv").reader([r]))) if i != 2)
                      for r in ROWS[2:]]
    unlabeled = parse_lines(unlabeled_rows, schema).batch
    assert unlabeled.label is None and np.array_equal(unlabeled.sparse, labeled.sparse[2:])
    # an unlabeled file with a header (serving / test input)
    header = HEADER.replace(",rating", "")
    assert parse_lines([header, *unlabeled_rows], MOVIELENS).batch.label is None


def test_undeclared_columns_and_label_forms():
    schema = FeatureSchema.from_dict({"format": "csv", "header": True, "label": "click",
                                      "categorical": ["a"]}, key="dataset")
    batch = parse_lines(["junk,a,click,more", "x,1,1,y", "z,,0,"], schema).batch
    assert batch.sparse[:, 0].tolist() == [hash_value("a", "1", schema.sparse_feature_number), 0]
    assert batch.label[:, 0].tolist() == [1, 0]


def test_minmax_and_none_preprocess():
    schema = FeatureSchema.from_dict({"format": "csv", "columns": ["y", "p", "q", "c"], "label": "y",
                                      "numeric": [{"name": "p", "preprocess": "minmax", "min": 10, "diff": 4},
                                                  {"name": "q", "fill": 7.5}],
                                      "categorical": ["c"]}, key="dataset")
    batch = parse_lines(["1,12,-3.25,x", "0,,1e3,", "1,10.5,,y"], schema).batch
    assert batch.dense.tolist() == [[0.5, -3.25], [0.0, 1000.0], [0.125, 7.5]]


# ------------------------------------------------------------------------------------------------ slot format

def test_slot_format_with_any_names_repeats_and_missing():
    lines = ["click:1 dense:0.25 dense:2 user:5 item:7 tags:1 tags:2 tags:3",
             "item:9 click:0 tags:4",  # any order; missing dense -> fill, missing user -> 0
             "click:1 dense:1.5 user:3 tags:0 tags:8"]  # id 0 in a multi-valued slot is padding
    result = parse_lines(lines, SLOT_SCHEMA, stats=(truncated := Counter()))
    batch = result.batch
    assert batch.label[:, 0].tolist() == [1, 0, 1]
    assert batch.dense.tolist() == [[0.25, 2.0], [0.0, 0.5], [1.5, 0.5]]
    assert batch.sparse.tolist() == [[5, 7, 1, 2], [0, 9, 4, 0], [3, 0, 8, 0]]
    assert truncated == Counter({"tags": 1})


def test_strict_and_lenient_slot_names():
    line = "click:1 dense:1 user:5 item:7 extra:3"
    with pytest.raises(DataFormatError, match=r"^f:1: token 5: unknown slot 'extra' \(the schema is strict"):
        parse_lines([line], SLOT_SCHEMA, source="f")
    lenient = SLOT_SCHEMA.with_options(strict=False)
    assert parse_lines([line], lenient).batch.sparse.tolist() == [[5, 7, 0, 0]]


# ------------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("schema, lines, message", [
    (MOVIELENS, [HEADER, "1,2,5,3"], "data.csv:2: expected 10 comma-separated columns (user_id, movie_id, rating, "
                                     "timestamp, title, genres, ...), got 4"),
    (MOVIELENS, [HEADER, "1,2,5,3,t,Drama,F,old,1,2"], "data.csv:2: column 'age' is not a number: 'old'"),
    (MOVIELENS, [HEADER, "1,2,5,3,t,Drama,F,nan,1,2"], "data.csv:2: column 'age' is NaN or infinite: 'nan'"),
    (MOVIELENS, [HEADER, "1,2,five,3,t,Drama,F,1,1,2"], "data.csv:2: column 'rating': label is not a number"),
    (MOVIELENS, [HEADER, "1,2,,3,t,Drama,F,1,1,2"], "data.csv:2: column 'rating': label is empty"),
    (MOVIELENS, ["user_id,movie_id,rating,timestamp,title,gender,age,occupation,zip", ROWS[0]],
     "data.csv:1: header does not match the schema: missing column(s) 'genres'"),
    (MOVIELENS.with_options(columns=tuple(HEADER.split(","))), ["user_id,movie_id,rating", ROWS[0]],
     "data.csv:1: header does not match the schema's columns"),
    (MOVIELENS, [HEADER, '1,2,5,3,"unterminated,Drama,F,1,1,2'], "data.csv:2: malformed CSV quoting"),
    (MOVIELENS, [HEADER, ROWS[0], ""], "data.csv:3: blank line"),
    (MOVIELENS, [HEADER, "1,2,5,3,t,Drama,F," + "9" * 5000 + ",1,2"], "data.csv:2: column 'age' overflows to infinity"),
    (SLOT_SCHEMA, ["click:1 user:5", "click:2 user:5"], "data.csv:2: slot 'click': label must be 0 or 1, got '2'"),
    (SLOT_SCHEMA, ["click:1 user:5", "user:5"], "data.csv:2: label slot 'click' missing"),
    (SLOT_SCHEMA, ["click:1 user:5 user:6"], "data.csv:1: token 3: slot 'user' is single-valued but appears twice"),
    (SLOT_SCHEMA, ["click:1 dense:1 dense:2 dense:3"], "data.csv:1: token 4: numeric slot 'dense' appears more "
                                                        "than 2 time(s)"),
    (SLOT_SCHEMA, ["click:1 user:" + "7" * 5000], "data.csv:1: slot 'user': id 77777777777777777777...(5000 "
                                                   "digits) is out of range [0, 1000001)"),
    (SLOT_SCHEMA, ["click:1 user:-4"], "data.csv:1: slot 'user': id '-4' is not a non-negative integer"),
    (SLOT_SCHEMA, ["click:1 user"], "data.csv:1: token 2: expected <slot>:<value>, got 'user'"),
    (SLOT_SCHEMA, ["click:1 dense:abc"], "data.csv:1: slot 'dense' is not a number: 'abc'"),
])
def test_bad_lines_name_file_line_column_and_reason(tmp_path, schema, lines, message):
    path = write(tmp_path / "data.csv", lines)
    with pytest.raises(DataFormatError) as err:
        list(iter_batches(path, schema, 100))
    assert str(err.value).startswith(message.replace("data.csv", path)), str(err.value)
    assert "\n" not in str(err.value)
    # the same error from a one-line worker re-raise (Paddle's DataLoader) and through pickle
    again = DataFormatError(f"DataLoader worker(0) caught DataFormatError with message:\nTraceback ...\n"
                            f"ctrkit.data.parsing.DataFormatError: {err.value}\n")
    assert str(again) == str(err.value) and again.line_number == err.value.line_number
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


def test_skip_bad_lines_counts_and_keeps_the_rest(tmp_path):
    path = write(tmp_path / "d.csv", [HEADER, ROWS[0], "1,2,5", ROWS[1], "1,2,5,3,t,Drama,F,old,1,2", ROWS[2]])
    stream = iter_batches(path, MOVIELENS, 100, skip_bad=True)
    [batch] = list(stream)
    assert stream.skipped == 2 and len(batch.sparse) == 3
    assert_same_batches(batch, parse_lines([HEADER, ROWS[0], ROWS[1], ROWS[2]], MOVIELENS).batch)


def test_criteo_slot_id_of_thousands_of_digits_is_a_data_format_error(slot_sample):
    with open(slot_sample, "rb") as f:
        line = f.readline().rstrip(b"\n")
    tokens = line.split(b" ")
    tokens[20] = tokens[20].split(b":")[0] + b":" + b"9" * 5000
    with pytest.raises(DataFormatError, match=r"id 99999999999999999999\.\.\.\(5000 digits\) is out of range"):
        parse_lines([b" ".join(tokens)], FeatureSpec(), source="x")
    tokens[20] = tokens[20].split(b":")[0] + b":" + b"0" * 5000 + b"7"
    assert parse_lines([b" ".join(tokens)], FeatureSpec()).batch.sparse[0, 20 - 14] == 7


# ------------------------------------------------------------------------------------------- the format lock

def test_a_file_keeps_its_format(tmp_path):
    path = write(tmp_path / "mixed.csv", [HEADER, ROWS[0], "user_id:1 movie_id:2 rating:5"])
    with pytest.raises(DataFormatError, match=r"mixed.csv:3: expected 10 comma-separated columns"):
        list(iter_batches(path, MOVIELENS.with_options(format="auto"), 10))
    # chunk by chunk (batch prediction, uploads): the format found in the first chunk is locked for the file
    parser = FileParser(MOVIELENS.with_options(format="auto"), source="up.csv")
    assert len(parser.parse([HEADER, ROWS[0]], 1).sparse) == 1
    assert len(parser.parse([ROWS[1]], 3).sparse) == 1  # no header in later chunks
    with pytest.raises(DataFormatError, match=r"^up.csv:4: this line is slot format \(slot:value\) but the file "
                                              r"is CSV"):
        parser.parse(["user_id:1 movie_id:2 rating:5"], 4)
    criteo = FileParser(FeatureSpec(), source="c.txt")
    criteo.parse(["\t".join(["1"] + ["1"] * 13 + ["ab"] * 26)], 1)
    with pytest.raises(DataFormatError, match=r"^c.txt:2: this line is slot format .* but the file is raw Criteo"):
        criteo.parse(["click:1 " + " ".join(["dense_feature:1"] * 13 + [f"{k}:1" for k in range(1, 27)])], 2)


# ---------------------------------------------------------------------------- vectorised == reference parser

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemas")
    slot = SLOT_SCHEMA
    out = {}
    for name, schema in (("csv", MOVIELENS), ("tsv", MOVIELENS.with_options(format="tsv")), ("slot", slot)):
        directory = root / name
        generate_schema_dataset(str(directory), schema, 3000, 5)
        [file] = os.listdir(directory)
        out[name] = (schema, str(directory / file))
    return out


@pytest.mark.parametrize("name", ["csv", "tsv", "slot"])
def test_vectorised_equals_reference_on_generated_and_fuzzed_lines(generated, name):
    schema, path = generated[name]
    with open(path, "rb") as f:
        block = f.read()
    layout = find_layout(block, schema, path, 1)
    lines = block.split(b"\n")[:-1]
    body = lines[1:] if layout.header_line else lines
    fast, fast_skipped = parse_block(block, layout, schema, path, 1, True, fast_truncated := Counter())
    slow, slow_skipped, slow_truncated = reference(body, schema, layout)
    assert not fast_skipped and not slow_skipped
    assert_same_batches(fast, slow)
    assert fast_truncated == slow_truncated
    rng = random.Random(7)
    alphabet = [b"", b"0", b"1", b"9", b".", b"-", b"e", b",", b"\t", b" ", b":", b"|", b'"', b"x", b"\xff",
                b"user:", b"tags:", b"dense:", b"click:", b"00", b"1e400"]
    fuzzed = []
    for line in body[:1500]:
        line = bytearray(line)
        for _ in range(rng.randint(0, 3)):
            at = rng.randint(0, len(line))
            cut = rng.randint(0, 3)
            line[at:at + cut] = rng.choice(alphabet)
        fuzzed.append(bytes(line).replace(b"\n", b""))
    block = (b"\n".join(lines[:1] if layout.header_line else []) + b"\n" if layout.header_line else b"") + \
        b"".join(line + b"\n" for line in fuzzed)
    fast, errors = parse_block(block, layout, schema, path, 1, True, fast_truncated := Counter())
    slow, rejected, slow_truncated = reference(fuzzed, schema, layout)
    assert len(errors) == rejected > 100
    assert_same_batches(fast, slow)
    assert fast_truncated == slow_truncated


def test_criteo_schema_takes_the_criteo_path(slot_sample, raw_sample):
    for path in (slot_sample, raw_sample):
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        assert_same_batches(parse_lines(lines, criteo_schema()).batch, parse_lines(lines, FeatureSpec()).batch)
        assert_same_batches(next(iter(iter_batches(path, criteo_schema(), 1000))),
                            next(iter(iter_batches(path, FeatureSpec(), 1000))))


def test_fixed_order_slot_files_take_the_fixed_path_and_agree(tmp_path):
    """Slot files whose every line has the same slots in the same order (PaddleRec's writers; missing ids written
    as 0) are parsed column-wise; bad values in them (same token layout) are flagged for the reference parser."""
    schema = FeatureSchema.from_dict({"name": "fixed", "format": "slot", "label": {"name": "click"},
                                      "numeric": [{"name": "d1", "slot": "dense"}, {"name": "d2", "slot": "dense"}],
                                      "categorical": ["user", "item"],
                                      "multi_valued": [{"name": "tags", "max_len": 2}]}, key="dataset")
    rng = random.Random(3)
    lines = [f"click:{rng.randint(0, 1)} dense:{rng.random():.4f} dense:{rng.randint(0, 99)} user:{rng.randint(1, 9)}"
             f" item:{rng.randint(0, 500)} tags:{rng.randint(1, 50)} tags:{rng.randint(1, 50)} tags:{rng.randint(1, 5)}"
             .encode() for _ in range(2000)]
    layout = find_layout(lines[0] + b"\n", schema, "f", 1)
    fast, errors, truncated = parse_block(b"".join(line + b"\n" for line in lines), layout, schema, "f", 1, True,
                                          truncated := Counter()) + (truncated,)
    slow, rejected, slow_truncated = reference(lines, schema, layout)
    assert not errors and not rejected and truncated == slow_truncated == Counter({"tags": 2000})
    assert_same_batches(fast, slow)
    values = [b"x", b"-1", b"2", b"1e5", b"nan", b"", b"0", b"99999999999999999999", b"1.5", b"+3"]
    fuzzed = []
    for line in lines:
        tokens = line.split(b" ")
        if rng.random() < 0.3:
            i = rng.randrange(len(tokens))
            tokens[i] = tokens[i].split(b":")[0] + b":" + rng.choice(values)
        fuzzed.append(b" ".join(tokens))
    fast, errors = parse_block(b"".join(line + b"\n" for line in fuzzed), layout, schema, "f", 1, True,
                               truncated := Counter())
    slow, rejected, slow_truncated = reference(fuzzed, schema, layout)
    assert len(errors) == rejected > 100 and truncated == slow_truncated
    assert_same_batches(fast, slow)


@pytest.mark.parametrize("name", ["csv", "slot"])
def test_binary_shards_hold_a_schemas_rows_exactly(name, tmp_path):
    """tools/prepare_criteo.py's engine on a declared schema (CSV with a header in every file, a zero-width dense
    column or slot format, multi-valued fields): across 2 files, shard and block boundaries and 2 worker processes,
    every split holds exactly the rows the text reader gives for its lines, in order; truncations are counted."""
    from ctrkit.prepare import DEFAULT_SPLITS, prepare, split_uniform
    from ctrkit.shards import iter_shard_batches, open_shards

    schema = MOVIELENS.with_options(numeric=()) if name == "csv" else SLOT_SCHEMA
    generate_schema_dataset(str(tmp_path / "text"), schema, 2500, seed=7, files=2)
    files = sorted(str(p) for p in (tmp_path / "text").iterdir())
    summary = prepare(files, str(tmp_path / "shards"), schema, lines_per_shard=700, block_bytes=8192, workers=2,
                      progress=False)
    stream = iter_batches(files, schema, batch_size=100_000)
    want = [np.concatenate(column) for column in zip(*stream)]
    header = 1 if schema.header else 0
    first = sum(len(b.dense) for b in iter_batches(files[0], schema, batch_size=100_000))
    # every line of the stream counts for the split, the header line of each file too
    stream_index = np.concatenate([header + np.arange(first), 2 * header + first + np.arange(len(want[0]) - first)])
    which = np.searchsorted(np.cumsum(list(DEFAULT_SPLITS.values())), split_uniform(stream_index, 0), side="right")
    assert summary["truncated"] == dict(stream.truncated) and summary["skipped_lines"] == 0
    for number, split in enumerate(DEFAULT_SPLITS):
        shards = open_shards(tmp_path / "shards" / split)
        shards.check_spec(schema)
        got = [np.concatenate(column) for column in zip(*iter_shard_batches(shards, 100_000))]
        assert shards.rows == int((which == number).sum()) > 0
        for have, expected in zip(got, want):
            np.testing.assert_array_equal(have, expected[which == number])
        assert got[0].shape[1] == schema.n_dense and got[1].shape[1] == schema.sparse_width


def test_shards_of_another_schema_are_refused_by_name(tmp_path):
    from ctrkit.prepare import prepare
    from ctrkit.shards import ShardError, open_shards

    path = write(tmp_path / "ml.csv", [HEADER, *ROWS])
    prepare(path, str(tmp_path / "shards"), MOVIELENS, splits={"all": 1.0}, progress=False)
    shards = open_shards(tmp_path / "shards" / "all")
    assert shards.spec == MOVIELENS and shards.rows == 4
    with pytest.raises(ShardError, match=r"shards hold rows of the dataset schema 'movielens', cfg declares "
                                         r"Criteo \(13 dense features, 26 slots\); prepare shards with that config"):
        shards.check_spec(criteo_schema(), "cfg")
    other = MOVIELENS.with_options(multi_valued=(), name="movielens")
    with pytest.raises(ShardError, match=r"different dataset schema \(multi_valued: shards \[\{'name': 'genres'"):
        shards.check_spec(other, "cfg")
    shards.check_spec(MOVIELENS.with_options(name="renamed", strict=False), "cfg")  # same rows: accepted


def test_convert_a_schema_to_paddlerec_slot_format(generated, tmp_path):
    """tools/convert.py -m: a schema's CSV becomes slot format with its slot names; the printed dataset block
    reads it back bit for bit (the threshold label becomes 0/1)."""
    import json
    import subprocess
    import sys

    import yaml

    schema, path = generated["csv"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"runner": {"model": "deepfm"}, "dataset": schema.to_dict()}))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(repo, "tools", "convert.py"), "-m", str(config),
                             "--input", path, "--output", str(tmp_path / "out.txt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["lines"] == 3000 and summary["skipped"] == 0
    converted = FeatureSchema.from_dict(summary["dataset"])
    assert converted.format == "slot" and converted.label.threshold is None
    original = next(iter(iter_batches(path, schema, 10_000)))
    again = next(iter(iter_batches(str(tmp_path / "out.txt"), converted, 10_000)))
    assert_same_batches(again, original)
