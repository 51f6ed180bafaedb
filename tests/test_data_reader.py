"""Streaming (ctrkit.data.reader): file listing, batching, sharding (every line exactly once across shards),
seeded shuffling, skip counts and line numbers across blocks."""
import logging
import os

import numpy as np
import pytest

from ctrkit.data import DataFormatError, FeatureSpec, iter_batches, list_data_files

SPEC = FeatureSpec()


def slot_line(i: int, labeled: bool = True) -> str:
    """A valid slot line whose slot-1 id is `i` (a row identity)."""
    tokens = [f"click:{i % 2}"] if labeled else []
    tokens += [f"dense_feature:{(i * (j + 3)) % 97 / 7:.6g}" for j in range(13)]
    tokens += [f"1:{i}"] + [f"{k}:{(i * k) % 1000}" for k in range(2, 27)]
    return " ".join(tokens)


def write(path, lines: list[str], end: str = "\n") -> str:
    with open(path, "w") as f:
        f.write("\n".join(lines) + (end if lines else ""))
    return str(path)


@pytest.fixture
def three_files(tmp_path):
    """Row ids 0..3509 over three files of different sizes in one directory."""
    data = tmp_path / "data"
    data.mkdir()
    write(data / "a.txt", [slot_line(i) for i in range(0, 1000)])
    write(data / "b.txt", [slot_line(i) for i in range(1000, 1010)])
    write(data / "c.txt", [slot_line(i) for i in range(1010, 3510)], end="")  # no final newline
    return str(data)


def ids(batches) -> list[int]:
    return [int(i) for b in batches for i in b.sparse[:, 0]]


def test_list_data_files(tmp_path):
    write(tmp_path / "b.txt", ["x"])
    write(tmp_path / "a.txt", ["x"])
    write(tmp_path / ".hidden", ["x"])
    assert list_data_files(str(tmp_path)) == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert list_data_files([str(tmp_path / "b.txt"), str(tmp_path)])[0] == str(tmp_path / "b.txt")
    with pytest.raises(FileNotFoundError, match="data path not found"):
        list_data_files(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no data files"):
        list_data_files(str(tmp_path / "empty"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="not sub-directories"):
        list_data_files(str(tmp_path))


def test_batches_in_order(three_files):
    batches = list(iter_batches(three_files, SPEC, 512, block_bytes=4096))
    assert [len(b.dense) for b in batches] == [512] * 6 + [3510 - 6 * 512]
    assert ids(batches) == list(range(3510))
    assert all(b.label.shape == (len(b.dense), 1) for b in batches)
    assert [len(b.dense) for b in iter_batches(three_files, SPEC, 512, drop_last=True)] == [512] * 6


def test_stream_counts_samples(three_files):
    stream = iter_batches(three_files, SPEC, 1000)
    assert sum(len(b.dense) for b in stream) == 3510
    assert (stream.samples, stream.skipped) == (3510, 0)


@pytest.mark.parametrize("shard_count", [2, 3, 7])
def test_shards_cover_every_line_exactly_once(three_files, shard_count):
    seen = []
    for shard in range(shard_count):
        shard_ids = ids(iter_batches(three_files, SPEC, 100, shard_index=shard, shard_count=shard_count,
                                     block_bytes=8192))
        assert shard_ids, f"shard {shard} got nothing"
        seen += shard_ids
    assert sorted(seen) == list(range(3510))


def test_shards_with_shuffle_also_partition(three_files):
    seen = []
    for shard in range(3):
        seen += ids(iter_batches(three_files, SPEC, 64, shard_index=shard, shard_count=3, shuffle_buffer=300,
                                 seed=5, block_bytes=8192))
    assert sorted(seen) == list(range(3510))


def test_bad_shard_arguments(three_files):
    with pytest.raises(ValueError, match="shard_index"):
        iter_batches(three_files, SPEC, 10, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        iter_batches(three_files, SPEC, 0)


@pytest.mark.parametrize("buffer", [50, 1000, 100_000])
def test_shuffle_is_seeded_and_complete(three_files, buffer):
    def order(seed):
        return ids(iter_batches(three_files, SPEC, 256, shuffle_buffer=buffer, seed=seed, block_bytes=4096))

    first = order(1)
    assert first == order(1)
    assert first != order(2)
    assert sorted(first) == list(range(3510)) and first != sorted(first)
    # rows really travel, about as far as the buffer allows (a uniform window of w rows has sd w / 3.5)
    assert np.std(first[:256]) > 0.15 * min(buffer, 3510)


def test_unlabeled_files(tmp_path):
    path = write(tmp_path / "u.txt", [slot_line(i, labeled=False) for i in range(10)])
    [batch] = iter_batches(path, SPEC, 100)
    assert batch.label is None and len(batch.dense) == 10


def test_files_must_agree_on_labels(tmp_path):
    write(tmp_path / "a.txt", [slot_line(i) for i in range(5)])
    write(tmp_path / "b.txt", [slot_line(i, labeled=False) for i in range(5)])
    with pytest.raises(DataFormatError, match=r"b\.txt:1: files disagree on click labels"):
        list(iter_batches(str(tmp_path), SPEC, 4))


def test_mixed_formats_in_one_directory(tmp_path, slot_sample, raw_sample):
    for sample in (slot_sample, raw_sample):
        with open(sample, "rb") as src, open(tmp_path / os.path.basename(sample), "wb") as dst:
            dst.write(src.read())
    batches = list(iter_batches(str(tmp_path), SPEC, 1000))
    assert sum(len(b.dense) for b in batches) == 180


def test_error_names_file_and_line_across_blocks(tmp_path):
    lines = [slot_line(i) for i in range(3000)]
    lines[2345] = lines[2345].replace("dense_feature:", "dense_feature:x", 1)
    path = write(tmp_path / "bad.txt", lines)
    with pytest.raises(DataFormatError) as info:
        list(iter_batches(path, SPEC, 100, block_bytes=4096))
    assert (info.value.source, info.value.line_number) == (path, 2346)
    assert str(info.value).startswith(f"{path}:2346: dense_feature 1 is not a number")


def test_skip_bad_counts_and_logs(tmp_path, caplog):
    lines = [slot_line(i) for i in range(2000)]
    for i in (10, 999, 1500):
        lines[i] = lines[i].replace(" 1:", " 1:-", 1)
    lines[1700] = ""
    path = write(tmp_path / "bad.txt", lines)
    with caplog.at_level(logging.WARNING, logger="ctrkit.data"):
        stream = iter_batches(path, SPEC, 128, skip_bad=True, block_bytes=4096)
        got = ids(stream)
    assert stream.skipped == 4 and stream.samples == 1996
    assert got == [i for i in range(2000) if i not in (10, 999, 1500, 1700)]
    assert f"{path}: skipped 4 malformed line(s)" in caplog.text and f"{path}:11: slot 1" in caplog.text


def test_blank_and_empty_files(tmp_path):
    empty = write(tmp_path / "empty.txt", [])
    assert list(iter_batches(empty, SPEC, 10)) == []
    blank = write(tmp_path / "blank.txt", ["", "  "])
    with pytest.raises(DataFormatError, match=r"blank\.txt:1: blank line"):
        list(iter_batches(blank, SPEC, 10))
    stream = iter_batches(blank, SPEC, 10, skip_bad=True)
    assert list(stream) == [] and stream.skipped == 2


def test_long_lines_across_small_blocks(tmp_path):
    """Blocks smaller than a line still cut only at newlines."""
    path = write(tmp_path / "a.txt", [slot_line(i) for i in range(50)])
    assert ids(iter_batches(path, SPEC, 7, block_bytes=64)) == list(range(50))
