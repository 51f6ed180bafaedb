"""Data for any `FeatureSchema` with a planted, known click model (`tools/gen_data.py --config ...`), and the
`criteo_sparse` profile (Criteo's published per-column cardinalities, heavy-tailed values).

Ground truth (fixed by `truth_seed`; sets of different `seed` share it), a logistic model on what the model sees:

    logit = bias + sum_single w_f[value] + sum_multi mean_{items kept} w_f[item] + sum_numeric beta_j * z_j
                 + sum_(f,g) in PAIRS <u_f, u_g>                      (u of a multi-valued field: mean of its items)

- categorical values: vocabulary sizes log-uniform in VOCAB_RANGE (or the profile's cardinalities), Zipf-like
  frequencies P(rank r) ~ (r + 1)^-a drawn analytically (any vocabulary size, O(1) memory), some missing;
  effects shrink with the value's frequency rank; per-value effects come from a counter-based hash, so a
  10-million-value vocabulary costs no memory.
- multi-valued fields: 1 + Poisson(max_len / 2) items per row (so some lists exceed max_len and are truncated;
  only kept items carry effects), drawn without order from the field's vocabulary.
- numeric fields: model-space values z (what preprocess gives) with a linear effect; the text holds the raw
  value that preprocess maps to z (minmax: min + diff * t; log: expm1(z); none: z).
- the label: Bernoulli(sigmoid(logit)); a numeric label with a threshold is written as an integer at or above
  the threshold for clicks, below it otherwise (e.g. ratings 4-5 vs 1-3 for `rating >= 4`).
- columns the schema does not use (header / columns) get filler text, so files look like the real ones.
Bias is solved for ~25% clicks. Output: the schema's own format (CSV/TSV with a header line when header: true,
slot format with its slot names; Criteo: raw or slot as `ctrkit.data.synthetic`).
Deterministic: the rows depend only on (schema, rows, seed, truth_seed, profile), not on the file count.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ctrkit.data.hashing import hash_value
from ctrkit.data.spec import NUM_SLOTS
from ctrkit.data.synthetic import (CHUNK_ROWS, DEFAULT_TRUTH_SEED, POSITIVE_RATE, _solve_bias, prepare_output,
                                   write_dataset)
from ctrkit.data.writer import column_text
from ctrkit.schema import FeatureSchema

VOCAB_RANGE = (3, 300)
ZIPF_RANGE = (1.05, 1.3)
FIELD_EFFECT_SD = (0.0, 0.15, 0.3, 0.5)
FIELD_EFFECT_P = (0.2, 0.3, 0.3, 0.2)
EFFECT_RANK_SCALE = 50.0
LATENT_DIM = 4
LATENT_SD = 0.3
MAX_PAIRS = 8
NUMERIC_WEIGHT_SD = 0.6
MULTI_EFFECT_SD = 0.6

# Criteo Kaggle (display advertising challenge) distinct values per categorical column C1..C26, as published
# with Facebook's DLRM (its `counts` for the Kaggle set).
CRITEO_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
PROFILES = ("default", "criteo_sparse")
# criteo_sparse: Zipf exponents are lower for the big columns (a long tail of values seen once), chosen so that
# 200,000 rows hold ~300k distinct values, as the real data does.
SPARSE_ZIPF_RANGE = (1.05, 1.2)

_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 arrays: a counter-based hash (wrapping arithmetic)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _normals(keys: np.ndarray, salt: int) -> np.ndarray:
    """Standard normal values, one per uint64 key, the same for the same (key, salt)."""
    with np.errstate(over="ignore"):
        a = _mix(keys.astype(np.uint64) * np.uint64(2) + np.uint64(salt & _MASK))
        b = _mix(a ^ np.uint64(0x5851F42D4C957F2D))
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53
    u2 = (b >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@dataclass
class _Field:
    """A categorical (single or multi-valued) field of the truth."""

    name: str
    key: str             # hash key (slot)
    vocab: int
    zipf: float
    missing: float
    effect_sd: float
    salt: int
    latent: bool = False
    multi_len: int = 0   # max_len for multi-valued fields, 0 for single-valued
    hex_values: bool = False

    def ranks(self, rng: np.random.Generator, shape) -> np.ndarray:
        """Zipf-like ranks 0..vocab-1: inverse CDF of the continuous density ~ (r + 1)^-a on [0, vocab)."""
        u = rng.random(shape)
        a, v = self.zipf, self.vocab
        if abs(a - 1.0) < 1e-9:
            r = np.exp(u * np.log(v + 1.0)) - 1.0
        else:
            top = (v + 1.0) ** (1.0 - a)
            r = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a)) - 1.0
        return np.minimum(np.floor(r), v - 1).astype(np.int64)

    def weights(self, ranks: np.ndarray) -> np.ndarray:
        shrink = 1.0 / np.sqrt(1.0 + ranks / EFFECT_RANK_SCALE)
        return self.effect_sd * shrink * _normals(ranks, self.salt)

    def vectors(self, ranks: np.ndarray) -> np.ndarray:
        shrink = 1.0 / np.sqrt(1.0 + ranks / EFFECT_RANK_SCALE)
        out = np.stack([_normals(ranks, self.salt + 1000 + d) for d in range(LATENT_DIM)], axis=-1)
        return LATENT_SD * out * shrink[..., None]

    def text(self, ranks: np.ndarray) -> np.ndarray:
        """The value text of each rank (a code that does not reveal the rank)."""
        codes = _mix(ranks.astype(np.uint64) ^ np.uint64(self.salt & _MASK))
        if self.hex_values:
            return column_text(codes & np.uint64(0xFFFFFFFF), "", lambda c: f"{c:08x}")
        return column_text(codes % np.uint64(10 ** 9), "", str)


@dataclass
class SchemaTruth:
    schema: FeatureSchema
    singles: list[_Field]
    multis: list[_Field]
    pairs: list[tuple[int, int]]     # indices into singles + multis
    numeric_weight: np.ndarray
    numeric_missing: np.ndarray
    numeric_scale: np.ndarray        # z ~ Gamma(2, scale)
    bias: float = 0.0


def make_schema_truth(schema: FeatureSchema, truth_seed: int = DEFAULT_TRUTH_SEED,
                      profile: str = "default") -> SchemaTruth:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    rng = np.random.default_rng([truth_seed, 7, zlib.crc32(schema.name.encode("utf-8"))])
    sparse = profile == "criteo_sparse"
    # fewer fields -> stronger effects each, so every schema's Bayes AUC is Criteo-like (~0.75-0.85)
    boost = min(2.0, math.sqrt(NUM_SLOTS / max(schema.n_fields, 1)))
    if sparse and schema.n_single != NUM_SLOTS:
        raise ValueError(f"the criteo_sparse profile needs 26 single-valued categorical fields (Criteo's "
                         f"cardinalities), the schema {schema.name!r} has {schema.n_single}")
    hex_values = schema.is_criteo
    fields = []
    for i, f in enumerate((*schema.categorical, *schema.multi_valued)):
        multi = i >= schema.n_single
        if sparse and not multi:
            vocab = CRITEO_CARDINALITIES[i]
            zipf = float(rng.uniform(*SPARSE_ZIPF_RANGE)) if vocab > 10_000 else float(rng.uniform(*ZIPF_RANGE))
        else:
            vocab = int(round(math.exp(rng.uniform(*np.log(VOCAB_RANGE)))))
            zipf = float(rng.uniform(*ZIPF_RANGE))
            if multi:
                vocab = max(vocab, 2 * f.max_len)
        fields.append(_Field(
            name=f.name, key=f.slot, vocab=vocab, zipf=zipf,
            missing=0.0 if rng.random() < 0.5 else float(rng.uniform(0.05, 0.4)),
            effect_sd=boost * (MULTI_EFFECT_SD if multi else float(rng.choice(FIELD_EFFECT_SD, p=FIELD_EFFECT_P))),
            salt=int(rng.integers(1, 2 ** 62)), multi_len=f.max_len if multi else 0, hex_values=hex_values))
    candidates = [i for i, f in enumerate(fields) if f.vocab >= 10]
    possible = len(candidates) * (len(candidates) - 1) // 2
    pairs: list[tuple[int, int]] = []
    while len(pairs) < min(MAX_PAIRS, possible):
        s, t = sorted(rng.choice(candidates, size=2, replace=False).tolist())
        if (s, t) not in pairs:
            pairs.append((s, t))
    for s, t in pairs:
        fields[s].latent = fields[t].latent = True
    n = schema.n_dense
    truth = SchemaTruth(schema, fields[:schema.n_single], fields[schema.n_single:], pairs,
                        numeric_weight=rng.normal(0.0, NUMERIC_WEIGHT_SD, n),
                        numeric_missing=np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.05, 0.3, n)),
                        numeric_scale=rng.uniform(0.1, 0.3, n))
    _rows, logits = _sample(truth, np.random.default_rng([truth_seed, 8]), 50_000)
    truth.bias = _solve_bias(logits, POSITIVE_RATE)
    return truth


class _Rows:
    """Sampled rows: numeric raw values, missing masks, single ranks (-1 missing), multi rank lists."""

    def __init__(self, numeric, numeric_missing, singles, multis, multi_counts):
        self.numeric, self.numeric_missing = numeric, numeric_missing
        self.singles, self.multis, self.multi_counts = singles, multis, multi_counts

    def head(self, n: int) -> "_Rows":
        return _Rows(self.numeric[:n], self.numeric_missing[:n], self.singles[:n],
                     [m[:n] for m in self.multis], [c[:n] for c in self.multi_counts])


def _raw_numeric(field, z: np.ndarray) -> np.ndarray:
    """The text-side value whose preprocessing gives z (rounded to 4 decimals; minmax keeps integers)."""
    if field.preprocess == "minmax":
        return np.round(field.min + field.diff * z)
    if field.preprocess == "log":
        return np.round(np.expm1(z * 3.0))
    return np.round(z, 4)


def _model_numeric(field, raw: np.ndarray) -> np.ndarray:
    if field.preprocess == "minmax":
        return (raw - field.min) / field.diff
    if field.preprocess == "log":
        return np.copysign(np.log1p(np.abs(raw)), raw)
    return raw


def _sample(truth: SchemaTruth, rng: np.random.Generator, n: int) -> tuple[_Rows, np.ndarray]:
    schema = truth.schema
    k = schema.n_dense
    z = rng.gamma(2.0, truth.numeric_scale, (n, k)) if k else np.zeros((n, 0))
    raw = np.stack([_raw_numeric(f, z[:, j]) for j, f in enumerate(schema.numeric)], axis=1) if k else z
    missing = rng.random((n, k)) < truth.numeric_missing
    model = np.stack([_model_numeric(f, raw[:, j]) for j, f in enumerate(schema.numeric)], axis=1) if k else z
    # standardise the effect so every numeric field matters on the same scale, whatever its preprocessing
    scale = np.array([max(float(np.std(model[:, j])), 1e-6) for j in range(k)]) if k else np.ones(0)
    logits = np.where(missing, 0.0, model / scale) @ truth.numeric_weight if k else np.zeros(n)
    latent = []
    singles = np.empty((n, len(truth.singles)), dtype=np.int64)
    for i, f in enumerate(truth.singles):
        ranks = f.ranks(rng, n)
        absent = rng.random(n) < f.missing
        singles[:, i] = np.where(absent, -1, ranks)
        logits += np.where(absent, 0.0, f.weights(ranks))
        latent.append(np.where(absent[:, None], 0.0, f.vectors(ranks)) if f.latent else None)
    multis, counts = [], []
    for f in truth.multis:
        count = np.minimum(1 + rng.poisson(f.multi_len / 2.0, n), 4 * f.multi_len)
        count = np.where(rng.random(n) < f.missing, 0, count)
        width = int(count.max(initial=1))
        ranks = f.ranks(rng, (n, width))
        # distinct items per row: repeated ranks are dropped (they would hash to the same id)
        order = np.sort(ranks, axis=1)
        dup = np.zeros_like(ranks, dtype=bool)
        dup[:, 1:] = order[:, 1:] == order[:, :-1]
        ranks = np.where(dup, -1, order)
        live = (np.arange(width)[None, :] < count[:, None]) & (ranks >= 0)
        ranks = np.where(live, ranks, -1)
        # keep the live items first, in a row-specific random order
        keys = np.where(live, rng.random((n, width)), 2.0)
        ranks = np.take_along_axis(ranks, np.argsort(keys, axis=1), axis=1)
        count = live.sum(axis=1)
        kept = (np.arange(width)[None, :] < np.minimum(count, f.multi_len)[:, None])
        safe = np.maximum(ranks, 0)
        denom = np.maximum(kept.sum(axis=1), 1)
        logits += np.where(kept, f.weights(safe), 0.0).sum(axis=1) / denom
        if f.latent:
            latent.append(np.where(kept[..., None], f.vectors(safe), 0.0).sum(axis=1) / denom[:, None])
        else:
            latent.append(None)
        multis.append(ranks)
        counts.append(count)
    for s, t in truth.pairs:
        logits += np.sum(latent[s] * latent[t], axis=1)
    return _Rows(raw, missing, singles, multis, counts), logits


# ------------------------------------------------------------------------------------------------- writing

def _numeric_text(values: np.ndarray) -> np.ndarray:
    return column_text(values, "", lambda v: (f"{int(v)}" if float(v).is_integer() else f"{v:.4f}".rstrip("0")))


def _label_text(schema: FeatureSchema, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    threshold = schema.label.threshold
    if threshold is None:
        return np.where(labels, "1", "0").astype(object)
    base = math.ceil(threshold)
    values = np.where(labels, base + rng.integers(0, 2, labels.size), base - 1 - rng.integers(0, 3, labels.size))
    return column_text(values, "", str)


def _columns(schema: FeatureSchema, fmt: str) -> tuple[str, ...]:
    if schema.columns is not None:
        return schema.columns
    return (schema.label.name, *schema.feature_names)


def _lines(truth: SchemaTruth, rows: _Rows, labels: np.ndarray, with_labels: bool, fmt: str, start: int,
           rng: np.random.Generator) -> list[str]:
    schema = truth.schema
    n = len(labels)
    label_text = _label_text(schema, labels, rng)
    numeric = [np.where(rows.numeric_missing[:, j], "", _numeric_text(rows.numeric[:, j]))
               for j in range(schema.n_dense)]
    singles = [np.where(rows.singles[:, i] < 0, "", f.text(np.maximum(rows.singles[:, i], 0)))
               for i, f in enumerate(truth.singles)]
    if fmt == "slot":
        return _slot_lines(truth, rows, label_text if with_labels else None, numeric, singles)
    multis = []
    for f, ranks in zip(truth.multis, rows.multis):
        texts = f.text(np.maximum(ranks, 0)).reshape(ranks.shape)
        texts = np.where(ranks >= 0, texts, None)
        sep = next(m.separator for m in schema.multi_valued if m.name == f.name)
        multis.append(np.array([sep.join(t for t in row if t is not None) for row in texts.tolist()], dtype=object))
    by_name = {schema.label.name: label_text}
    by_name.update({f.name: c for f, c in zip(schema.numeric, numeric)})
    by_name.update({f.name: c for f, c in zip(schema.categorical, singles)})
    by_name.update({f.name: c for f, c in zip(schema.multi_valued, multis)})
    columns = [c for c in _columns(schema, fmt) if with_labels or c != schema.label.name]
    row_numbers = np.arange(start, start + n)
    out = [by_name[c] if c in by_name else _filler(c, row_numbers) for c in columns]
    delimiter = "," if fmt == "csv" else "\t"
    return [delimiter.join(row) for row in np.stack(out, axis=1).tolist()]


def _filler(column: str, row_numbers: np.ndarray) -> np.ndarray:
    """Text for a column the schema does not use (ids, timestamps, titles): distinct, harmless."""
    return column_text(row_numbers, f"{column}-", str)


def _slot_lines(truth: SchemaTruth, rows: _Rows, label_text, numeric, singles) -> list[str]:
    schema = truth.schema
    n_total = schema.sparse_feature_number
    columns = []
    if label_text is not None:
        columns.append(column_text(np.asarray(label_text, dtype=object), f"{schema.label.slot}:", str))
    for f, text in zip(schema.numeric, numeric):
        model = np.array([_model_numeric(f, np.array([float(t)]))[0] if t != "" else f.fill for t in text.tolist()])
        columns.append(column_text(np.float32(model), f"{f.slot}:", lambda v: np.format_float_positional(
            np.float32(v), unique=True, trim="-")))
    for f, text in zip(schema.categorical, singles):
        ids = np.array([hash_value(f.slot, t, n_total) for t in text.tolist()], dtype=np.int64)
        columns.append(column_text(ids, f"{f.slot}:", str))  # missing: id 0, written as PaddleRec's writers do
    for f, t, ranks in zip(schema.multi_valued, truth.multis, rows.multis):
        texts = t.text(np.maximum(ranks, 0)).reshape(ranks.shape)
        tokens = [" ".join(f"{f.slot}:{hash_value(f.slot, x, n_total)}" for x, r in zip(row, rank_row) if r >= 0)
                  for row, rank_row in zip(texts.tolist(), ranks.tolist())]
        columns.append(np.array(tokens, dtype=object))
    return [" ".join(t for t in row if t) for row in np.stack(columns, axis=1).tolist()]


def output_format(schema: FeatureSchema, fmt: str | None) -> str:
    if schema.is_criteo:
        fmt = fmt if fmt not in (None, "auto") else (schema.format if schema.format != "auto" else "slot")
        if fmt not in ("slot", "raw"):
            raise ValueError(f"Criteo data is written as slot or raw, got {fmt!r}")
        return fmt
    if fmt is None or fmt == "auto":
        fmt = schema.format if schema.format != "auto" else ("csv" if schema.header or schema.columns else "slot")
    if fmt not in ("slot", "csv", "tsv"):
        raise ValueError(f"format for schema {schema.name!r} must be slot, csv or tsv, got {fmt!r}")
    if fmt in ("csv", "tsv") and schema.format in ("slot",):
        raise ValueError(f"the schema {schema.name!r} reads slot format (dataset.format: slot); cannot write {fmt}")
    if fmt == "slot" and schema.format in ("csv", "tsv"):
        raise ValueError(f"the schema {schema.name!r} reads {schema.format} (dataset.format); cannot write slot")
    return fmt


def generate_schema_chunks(schema: FeatureSchema, rows: int, seed: int, truth: SchemaTruth, fmt: str,
                           with_labels: bool = True):
    """(text lines, true probabilities, labels) per chunk of CHUNK_ROWS."""
    rng = np.random.default_rng([seed, 11])
    for start in range(0, rows, CHUNK_ROWS):
        sample, logits = _sample(truth, rng, CHUNK_ROWS)
        uniform = rng.random(CHUNK_ROWS)
        text_rng = np.random.default_rng([seed, 12, start])
        n = min(CHUNK_ROWS, rows - start)
        sample = sample.head(n)
        probs = 1.0 / (1.0 + np.exp(-(logits[:n] + truth.bias)))
        labels = uniform[:n] < probs
        if schema.is_criteo:  # raw Criteo lines; slot = what the data layer makes of them (as synthetic.py)
            lines = _lines(truth, sample, labels, with_labels, "raw", start, text_rng)
            if fmt == "slot":
                from ctrkit.data.parsing import Layout, parse_block
                from ctrkit.data.writer import format_slot_lines

                block = ("\n".join(lines) + "\n").encode("ascii")
                batch, _ = parse_block(block, Layout("raw", with_labels), schema, "<generated>", start + 1, False)
                lines = format_slot_lines(batch)
            yield lines, probs, labels
            continue
        yield _lines(truth, sample, labels, with_labels, fmt, start, text_rng), probs, labels


def generate_schema_dataset(out_dir: str, schema: FeatureSchema, rows: int, seed: int, *, fmt: str | None = None,
                            files: int = 1, truth_path: str | None = None, truth_seed: int = DEFAULT_TRUTH_SEED,
                            with_labels: bool = True, profile: str = "default", overwrite: bool = True) -> dict:
    """Like `ctrkit.data.synthetic.generate_dataset` for any non-Criteo schema: part files in the schema's
    format (a header line in each CSV/TSV file when header: true) and the true probabilities beside."""
    if not 1 <= files <= rows:
        raise ValueError(f"need 1 <= files <= rows, got rows={rows}, files={files}")
    fmt = output_format(schema, fmt)
    out_dir = os.path.normpath(out_dir)
    truth_path = truth_path or out_dir + ".truth.txt"
    prepare_output(out_dir, truth_path, overwrite)
    truth = make_schema_truth(schema, truth_seed, profile)
    suffix = {"slot": "txt", "raw": "txt", "csv": "csv", "tsv": "tsv"}[fmt]
    parts = [os.path.join(out_dir, f"part-{i:05d}.{suffix}") for i in range(files)]
    header = None
    if fmt in ("csv", "tsv") and schema.header:
        names = [c for c in _columns(schema, fmt) if with_labels or c != schema.label.name]
        header = ("," if fmt == "csv" else "\t").join(names) + "\n"
    return write_dataset(generate_schema_chunks(schema, rows, seed, truth, fmt, with_labels), parts, rows,
                         truth_path, header)
