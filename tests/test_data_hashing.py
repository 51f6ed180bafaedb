"""The categorical hash: standard FNV-1a-64, documented example ids, vectorised == scalar, and the same ids in
separate processes with different PYTHONHASHSEEDs (PaddleRec's hash() gave different ids per process)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ctrkit.data import FeatureSpec, hash_categorical, parse_lines
from ctrkit.data.hashing import fnv1a64, hash_spans


def test_fnv1a64_standard_vectors():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_documented_examples():
    """The examples in docs/data.md, for implementers in other languages."""
    assert hash_categorical(1, "05db9164", 1000001) == 1 + fnv1a64(b"1:05db9164") % 1000000 == 230748
    assert hash_categorical(26, "c38250b6", 1000001) == 1 + fnv1a64(b"26:c38250b6") % 1000000
    assert hash_categorical(3, "", 1000001) == 0


def test_range_and_arguments():
    ids = [hash_categorical(c, f"{v:08x}", 1000) for c in range(1, 27) for v in range(200)]
    assert min(ids) >= 1 and max(ids) < 1000
    assert len(set(ids)) > 900  # spreads over the id space
    assert hash_categorical(1, "abc", 2) == 1
    assert hash_categorical(1, "abc", 1000) != hash_categorical(2, "abc", 1000)  # the column is part of the key
    with pytest.raises(ValueError):
        hash_categorical(0, "abc", 1000)
    with pytest.raises(ValueError):
        hash_categorical(27, "abc", 1000)


def test_vectorised_equals_scalar():
    rng = np.random.default_rng(1)
    values = [bytes(rng.choice(list(b"0123456789abcdefXYZ:-"), size=rng.integers(0, 20)).tolist())
              for _ in range(2000)]
    buf = np.frombuffer(b"".join(values) + bytes(32), dtype=np.uint8)
    lengths = np.array([len(v) for v in values])
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    columns = rng.integers(1, 27, size=len(values))
    for n in (2, 1000, 1000001, 2 ** 40):
        got = hash_spans(buf, starts, lengths, columns, n)
        want = [hash_categorical(int(c), v.decode(), n) for c, v in zip(columns, values)]
        assert got.tolist() == want


PRINT_IDS = """
import json, sys
from ctrkit.data import FeatureSpec, parse_lines
with open(sys.argv[1]) as f:
    print(json.dumps(parse_lines(f.read().splitlines(), FeatureSpec()).batch.sparse.tolist()))
"""


def test_ids_are_the_same_in_other_processes(raw_sample):
    with open(raw_sample) as f:
        here = parse_lines(f.read().splitlines(), FeatureSpec()).batch.sparse.tolist()
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", PRINT_IDS, raw_sample], env=env, capture_output=True,
                             text=True, check=True).stdout
        assert json.loads(out) == here
