"""Criteo-like data with a planted, known click model (`tools/gen_data.py`).

The ground truth (fixed by `truth_seed`, so sets made with different `seed`s share it) is a logistic model:

    logit = bias + sum_slots w_s[value] + sum_dense beta_j * scaled_j + sum_(s,t) in PAIRS <u_s[value], u_t[value]>

- 26 categorical slots with vocabularies of VOCAB_RANGE (3 to 300) hexadecimal values, Zipf-like frequencies
  (P(rank r) ~ 1 / (r + 1)^a, a in ZIPF_RANGE) and some missing values (empty, id 0, no effect);
  first-order effects w_s (some slots strong, some weak, some pure noise) and LATENT_DIM-dimensional vectors
  u_s for the INTERACTING_PAIRS slot pairs, both shrinking with the value's frequency rank (rare values matter
  less, as in real data, and are the hardest to learn).
- 13 integer counts I1..I13 (x = round(min + diff * t), t ~ Gamma) with some missing; the model sees
  scaled_j = (x - min_j) / diff_j (PaddleRec's scaling, 0 when missing) and has a linear effect beta_j on it.
- bias is solved so that about 25% of rows are clicks.

Each row's label is Bernoulli(sigmoid(logit)); the true probabilities go to a side file, so the Bayes-optimal
AUC / logloss of any generated set is known. Rows are made in chunks of CHUNK_ROWS from numpy's PCG64 seeded
with `seed`, so the output depends only on (rows, seed, truth_seed), never on the chunking or file count, and
the first rows of a big set equal a small set of the same seed. Slot-format output is the raw rows passed
through the data layer (parse + `format_slot_lines`), so it equals `tools/convert.py` applied to the raw
output of the same seed, byte for byte.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ctrkit.data.parsing import Layout, parse_block
from ctrkit.fsutil import atomic_write
from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS, FeatureSpec
from ctrkit.data.writer import column_text, format_slot_lines
from ctrkit.metrics import auc, logloss

DEFAULT_TRUTH_SEED = 20240601
CHUNK_ROWS = 50_000
# Knobs of the ground truth, tuned so that DeepFM learns most of the signal from ~10^5 rows in an epoch
# (test AUC >= 97% of the Bayes AUC) while the Bayes AUC stays Criteo-like (~0.8).
VOCAB_RANGE = (3, 300)                   # vocabulary sizes, log-uniform
ZIPF_RANGE = (1.05, 1.3)                 # exponent a of P(rank r) ~ 1 / (r + 1)^a, per slot
SLOT_EFFECT_SD = (0.0, 0.15, 0.3, 0.5)   # first-order effect sd of a slot, drawn with SLOT_EFFECT_P
SLOT_EFFECT_P = (0.2, 0.3, 0.3, 0.2)
EFFECT_RANK_SCALE = 50.0                 # effects of the value of frequency rank r shrink by 1/sqrt(1 + r/this)
LATENT_DIM = 4
LATENT_SD = 0.3
INTERACTING_PAIRS = 8
DENSE_WEIGHT_SD = 0.6
POSITIVE_RATE = 0.25
PART_NAME = "part-{:05d}.txt"
_PART_PATTERN = re.compile(r"part-\d{5}\.(txt|csv|tsv)")


@dataclass
class GroundTruth:
    """The click model; see the module docstring. Lists are per slot (index 0 = C1)."""

    vocab: list[np.ndarray]         # hex strings, one array per slot
    cdf: list[np.ndarray]           # cumulative Zipf probabilities over the vocabulary
    slot_missing: np.ndarray        # [26] probability that a slot value is empty
    slot_weight: list[np.ndarray]   # first-order effect of each value
    slot_latent: list[np.ndarray]   # [V, LATENT_DIM] interaction vectors (zeros for non-interacting slots)
    pairs: list[tuple[int, int]]    # interacting slot pairs (0-based)
    dense_missing: np.ndarray       # [13]
    dense_shape: np.ndarray         # [13] Gamma shape of t
    dense_scale: np.ndarray         # [13] Gamma scale of t
    dense_weight: np.ndarray        # [13] effect per unit of the scaled value
    bias: float = 0.0


def make_ground_truth(truth_seed: int = DEFAULT_TRUTH_SEED, spec: FeatureSpec | None = None,
                      interaction_scale: float = 1.0) -> GroundTruth:
    """The ground truth of `truth_seed`. `interaction_scale` multiplies the interaction vectors (each pair term by
    its square): 1 gives the default, mild interactions; ~3 a set where pairwise interactions dominate."""
    if interaction_scale < 0:
        raise ValueError(f"interaction_scale must be >= 0, got {interaction_scale}")
    spec = spec or FeatureSpec()
    rng = np.random.default_rng(truth_seed)
    sizes = np.round(np.exp(rng.uniform(*np.log(VOCAB_RANGE), NUM_SLOTS))).astype(int)
    slot_missing = np.where(rng.random(NUM_SLOTS) < 0.5, 0.0, rng.uniform(0.05, 0.4, NUM_SLOTS))
    strength = rng.choice(SLOT_EFFECT_SD, size=NUM_SLOTS, p=SLOT_EFFECT_P)
    vocab, cdf, slot_weight, shrinks = [], [], [], []
    for size, sd in zip(sizes, strength):
        codes = rng.choice(2 ** 32, size=size, replace=False)
        vocab.append(np.array([f"{c:08x}" for c in codes.tolist()], dtype=object))
        p = 1.0 / np.arange(2, size + 2) ** rng.uniform(*ZIPF_RANGE)
        cdf.append(np.cumsum(p / p.sum()))
        shrink = 1.0 / np.sqrt(1.0 + np.arange(size) / EFFECT_RANK_SCALE)  # rare values matter less
        slot_weight.append(rng.normal(0.0, sd, size) * shrink)
        shrinks.append(shrink)
    candidates = [s for s in range(NUM_SLOTS) if sizes[s] >= 10]
    pairs = []
    while len(pairs) < INTERACTING_PAIRS:
        s, t = sorted(rng.choice(candidates, size=2, replace=False).tolist())
        if (s, t) not in pairs:
            pairs.append((s, t))
    interacting = {s for pair in pairs for s in pair}
    slot_latent = [rng.normal(0.0, LATENT_SD * interaction_scale, (sizes[s], LATENT_DIM)) * shrinks[s][:, None]
                   if s in interacting
                   else np.zeros((sizes[s], LATENT_DIM)) for s in range(NUM_SLOTS)]
    truth = GroundTruth(
        vocab=vocab, cdf=cdf, slot_missing=slot_missing, slot_weight=slot_weight, slot_latent=slot_latent,
        pairs=pairs, dense_missing=np.where(rng.random(NUM_DENSE) < 0.5, 0.0, rng.uniform(0.05, 0.3, NUM_DENSE)),
        dense_shape=rng.uniform(1.0, 3.0, NUM_DENSE), dense_scale=rng.uniform(0.1, 0.3, NUM_DENSE),
        dense_weight=rng.normal(0.0, DENSE_WEIGHT_SD, NUM_DENSE))
    _sample, logits = _sample_rows(truth, np.random.default_rng([truth_seed, 1]), 100_000, spec)
    truth.bias = _solve_bias(logits, POSITIVE_RATE)
    return truth


def _solve_bias(logits: np.ndarray, rate: float) -> float:
    """b with mean(sigmoid(logits + b)) == rate (bisection; the mean is increasing in b)."""
    low, high = -20.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logits + mid)))) < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


class _Rows(NamedTuple):
    """Raw rows: dense ints (with a missing mask) and slot value indices (-1 = missing)."""

    dense: np.ndarray
    dense_missing: np.ndarray
    values: np.ndarray


def _sample_rows(truth: GroundTruth, rng: np.random.Generator, n: int, spec: FeatureSpec) -> tuple[_Rows, np.ndarray]:
    """n rows and their logits without the bias."""
    dense_min, dense_diff = np.asarray(spec.dense_min), np.asarray(spec.dense_diff)
    t = rng.gamma(truth.dense_shape, truth.dense_scale, (n, NUM_DENSE))
    dense = np.round(dense_min + dense_diff * t).astype(np.int64)
    dense_missing = rng.random((n, NUM_DENSE)) < truth.dense_missing
    scaled = np.where(dense_missing, 0.0, (dense - dense_min) / dense_diff)
    logits = scaled @ truth.dense_weight
    values = np.empty((n, NUM_SLOTS), dtype=np.int64)
    latent = []
    for s in range(NUM_SLOTS):
        index = np.minimum(np.searchsorted(truth.cdf[s], rng.random(n)), len(truth.cdf[s]) - 1)
        missing = rng.random(n) < truth.slot_missing[s]
        values[:, s] = np.where(missing, -1, index)
        logits += np.where(missing, 0.0, truth.slot_weight[s][index])
        latent.append(np.where(missing[:, None], 0.0, truth.slot_latent[s][index]))
    for s, t in truth.pairs:
        logits += np.sum(latent[s] * latent[t], axis=1)
    return _Rows(dense, dense_missing, values), logits


def _raw_lines(truth: GroundTruth, rows: _Rows, labels: np.ndarray | None) -> list[str]:
    columns = [] if labels is None else [np.where(labels, "1", "0").astype(object)]
    for j in range(NUM_DENSE):
        columns.append(np.where(rows.dense_missing[:, j], "", column_text(rows.dense[:, j])))
    for s in range(NUM_SLOTS):
        columns.append(np.append(truth.vocab[s], "")[rows.values[:, s]])  # index -1 = missing -> ""
    return ["\t".join(row) for row in np.stack(columns, axis=1).tolist()]


def generate_chunks(rows: int, seed: int, truth: GroundTruth, spec: FeatureSpec, fmt: str,
                    with_labels: bool = True) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(text lines, true click probabilities, labels) chunk by chunk; `fmt` is "raw" or "slot"."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        # always a whole chunk of random draws, so the first n rows never depend on the total
        sample, logits = _sample_rows(truth, rng, CHUNK_ROWS, spec)
        uniform = rng.random(CHUNK_ROWS)
        n = min(CHUNK_ROWS, rows - start)
        sample = _Rows(*(column[:n] for column in sample))
        probs = 1.0 / (1.0 + np.exp(-(logits[:n] + truth.bias)))
        labels = uniform[:n] < probs
        lines = _raw_lines(truth, sample, labels if with_labels else None)
        if fmt == "slot":
            block = ("\n".join(lines) + "\n").encode("ascii")
            batch, _ = parse_block(block, Layout("raw", with_labels), spec, "<generated>", start + 1, False)
            lines = format_slot_lines(batch)
        yield lines, probs, labels


def prepare_output(out_dir: str, truth_path: str, overwrite: bool = True) -> list[str]:
    """Create `out_dir` for a new data set. Anything but part files in it is an error (the directory is used as a
    data dir, so a stray file would become training data). The part files and the truth file of an earlier run
    are removed with `overwrite` (returns what was removed) and otherwise refused, so runs never mix."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is a file, not a data directory")
    os.makedirs(out_dir, exist_ok=True)
    names = [n for n in os.listdir(out_dir) if not n.startswith(".")]
    strangers = [n for n in names if not _PART_PATTERN.fullmatch(n)]
    if strangers:
        raise ValueError(f"{out_dir} holds files that are not generated data ({', '.join(sorted(strangers)[:3])}); "
                         "use an empty or new directory")
    old = [os.path.join(out_dir, n) for n in sorted(names)]
    if os.path.isdir(truth_path):
        raise ValueError(f"the truth file {truth_path} is a directory")
    if os.path.exists(truth_path):
        old.append(truth_path)
    if old and not overwrite:
        parts = f"{len(names)} data file(s) in {out_dir}" if names else ""
        truth = truth_path if os.path.exists(truth_path) else ""
        raise ValueError(f"{' and '.join(x for x in (parts, truth) if x)} already exist from an earlier run; pass "
                         f"--overwrite to replace them, or choose a new --out")
    for path in old:
        os.remove(path)
    return old


def generate_dataset(out_dir: str, rows: int, seed: int, *, fmt: str = "slot", files: int = 1,
                     truth_path: str | None = None, truth_seed: int = DEFAULT_TRUTH_SEED, with_labels: bool = True,
                     spec: FeatureSpec | None = None, interaction_scale: float = 1.0,
                     overwrite: bool = True) -> dict:
    """Write `rows` rows into `files` files `out_dir`/part-NNNNN.txt and each row's true click probability
    (one per line, same order) to `truth_path` (default `<out_dir>.truth.txt`). Returns the summary
    {"rows", "positive_rate", "bayes_auc", "bayes_logloss"} (labels vs true probabilities; exact).
    Labels are drawn even without `with_labels` (the files then just omit them), so the rows are the same.
    An earlier run's part files and truth file are replaced only with `overwrite` (else ValueError)."""
    if not 1 <= files <= rows:
        raise ValueError(f"need 1 <= files <= rows, got rows={rows}, files={files}")
    if fmt not in ("slot", "raw"):
        raise ValueError(f"format must be slot or raw, got {fmt!r}")
    spec = spec or FeatureSpec()
    out_dir = os.path.normpath(out_dir)
    truth_path = truth_path or out_dir + ".truth.txt"
    if os.path.dirname(os.path.abspath(truth_path)) == os.path.abspath(out_dir):
        raise ValueError(f"the truth file {truth_path} must not be inside the data directory {out_dir}")
    prepare_output(out_dir, truth_path, overwrite)
    truth = make_ground_truth(truth_seed, spec, interaction_scale)
    parts = [os.path.join(out_dir, PART_NAME.format(i)) for i in range(files)]
    return write_dataset(generate_chunks(rows, seed, truth, spec, fmt, with_labels), parts, rows, truth_path)


def write_dataset(chunks, part_paths: list[str], rows: int, truth_path: str, header: str | None = None) -> dict:
    """Write generated `chunks` ((lines, probs, labels) each) as `rows` rows split evenly over `part_paths`
    (each begins with `header` when given) and the true probabilities to `truth_path`; returns the summary
    {"rows", "positive_rate", "bayes_auc", "bayes_logloss"}. Shared by every synthetic generator."""
    files = len(part_paths)
    sizes = [rows * (i + 1) // files - rows * i // files for i in range(files)]
    parts = iter(part_paths)
    all_probs, all_labels = [], []
    part, room = None, 0
    with atomic_write(truth_path, "w", encoding="ascii") as truth_file:
        for lines, probs, labels in chunks:
            truth_file.write("".join(f"{p!r}\n" for p in probs.tolist()))
            all_probs.append(probs)
            all_labels.append(labels)
            while lines:
                if room == 0:
                    _finish_part(part)
                    part, room = _open_part(next(parts)), sizes.pop(0)
                    if header:
                        part[0].write(header)
                taken = lines[:room]
                part[0].write("".join(line + "\n" for line in taken))
                lines, room = lines[len(taken):], room - len(taken)
        _finish_part(part)
    probs, labels = np.concatenate(all_probs), np.concatenate(all_labels)
    return {"rows": rows, "positive_rate": float(labels.mean()), "bayes_auc": auc(labels, probs),
            "bayes_logloss": logloss(labels, probs)}


def _open_part(path: str) -> tuple:
    """(file, its ExitStack): a data file written under a hidden name (ignored by readers) until it is complete
    (ctrkit.fsutil.atomic_write)."""
    stack = ExitStack()
    return stack.enter_context(atomic_write(path, "w", encoding="ascii", newline="\n")), stack


def _finish_part(part: tuple | None) -> None:
    if part is not None:
        part[1].close()  # publishes the file


def summary_line(summary: dict) -> str:
    return json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()})
