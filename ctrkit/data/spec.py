"""The feature contract every part of the toolkit shares: 13 dense features, 26 categorical slots.

A `FeatureSpec` says how text lines become model inputs (format, dense scaling of raw Criteo, the hash of
raw categorical values, the size of the id space). It is written into every exported model, so a server
preprocesses exactly as training did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

NUM_DENSE = 13
NUM_SLOTS = 26

# PaddleRec's Criteo preprocessing: dense value x becomes (x - min) / diff; an empty value becomes 0.
PADDLEREC_DENSE_MIN = (0, -3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
PADDLEREC_DENSE_DIFF = (20, 603, 100, 50, 64000, 500, 100, 50, 500, 10, 10, 10, 50)

DATA_FORMATS = ("auto", "slot", "raw")
# How raw Criteo categorical values become slot ids (see ctrkit/data/hashing.py and docs/data.md):
# id = 1 + FNV-1a-64(utf-8 bytes of f"{column}:{value}") mod (sparse_feature_number - 1), 0 for an empty value.
CATEGORICAL_HASHES = ("fnv1a64",)


@dataclass(frozen=True)
class FeatureSpec:
    """How lines are turned into (dense float32 [B,13], sparse int64 [B,26], label float32 [B,1])."""

    sparse_feature_number: int = 1000001
    data_format: str = "auto"
    dense_min: tuple[float, ...] = field(default=PADDLEREC_DENSE_MIN)
    dense_diff: tuple[float, ...] = field(default=PADDLEREC_DENSE_DIFF)
    categorical_hash: str = "fnv1a64"

    def __post_init__(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {self.data_format!r}")
        if self.sparse_feature_number < 2:
            raise ValueError(f"sparse_feature_number must be >= 2, got {self.sparse_feature_number}")
        if len(self.dense_min) != NUM_DENSE or len(self.dense_diff) != NUM_DENSE:
            raise ValueError(f"dense_min and dense_diff need {NUM_DENSE} values each")
        if any(d == 0 for d in self.dense_diff):
            raise ValueError("dense_diff values must be non-zero")
        if self.categorical_hash not in CATEGORICAL_HASHES:
            raise ValueError(f"categorical_hash must be one of {CATEGORICAL_HASHES}, got {self.categorical_hash!r}")
        object.__setattr__(self, "dense_min", tuple(float(v) for v in self.dense_min))
        object.__setattr__(self, "dense_diff", tuple(float(v) for v in self.dense_diff))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dense_min"] = list(self.dense_min)
        d["dense_diff"] = list(self.dense_diff)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        known = {"sparse_feature_number", "data_format", "dense_min", "dense_diff", "categorical_hash"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown feature spec keys: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
