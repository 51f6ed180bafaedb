"""Batches -> slot-format text, and raw Criteo -> slot-format conversion (`tools/convert.py`).

Dense values are written as the shortest decimal that reads back as the same float32 (numpy's Dragon4,
positional notation: no exponent, so the vectorised parser takes them), so parsing a converted file gives
bit-identical batches to parsing the raw file.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ctrkit.fsutil import atomic_write

from ctrkit.data.parsing import Batch, SLOT_KEYS
from ctrkit.data.reader import DEFAULT_BLOCK_BYTES, iter_parsed_blocks, list_data_files
from ctrkit.data.spec import NUM_DENSE, FeatureSpec

_CLICK_TOKENS = np.array(["click:0", "click:1"], dtype=object)


def _float32_text(bits: int) -> str:
    return np.format_float_positional(np.uint32(bits).view(np.float32), unique=True, trim="-")


def column_text(values: np.ndarray, prefix: str = "", text=str) -> np.ndarray:
    """f"{prefix}{text(v)}" for each value, formatting each distinct value once."""
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.array([prefix + text(v) for v in distinct.tolist()], dtype=object)[inverse.ravel()]


def format_slot_lines(batch: Batch) -> list[str]:
    """The slot-format lines (without newlines) of a batch; `click:` only when it has labels."""
    columns = []
    if batch.label is not None:
        columns.append(_CLICK_TOKENS[batch.label[:, 0].astype(np.int64)])
    bits = np.ascontiguousarray(batch.dense, dtype=np.float32).view(np.uint32)  # bits keep -0.0 apart from 0.0
    columns += [column_text(bits[:, j], "dense_feature:", _float32_text) for j in range(NUM_DENSE)]
    columns += [column_text(batch.sparse[:, k], key.decode() + ":", str)
                for k, key in enumerate(SLOT_KEYS[NUM_DENSE:])]
    return [" ".join(row) for row in np.stack(columns, axis=1).tolist()] if len(batch.dense) else []


def slot_schema(schema):
    """The schema that reads what `format_schema_slot_lines` writes for `schema`: slot format, the same fields and
    slot names, a 0/1 label (a threshold has been applied), no header / columns."""
    from ctrkit.schema import LabelSpec

    label = LabelSpec(schema.label.name, None, slot=schema.label.slot)
    return schema.with_options(format="slot", header=False, columns=None, label=label)


def format_schema_slot_lines(batch: Batch, schema) -> list[str]:
    """PaddleRec slot-format lines of a batch parsed by `schema`, with its slot names: the label (0/1), every
    numeric field (model-space values, shortest float32 text), every single-valued field (0 when missing), the
    non-zero ids of each multi-valued field as repeated tokens. `slot_schema(schema)` reads them back bit for bit."""
    if not len(batch.sparse):
        return []
    columns = []
    if batch.label is not None:
        columns.append(np.array([f"{schema.label.slot}:0", f"{schema.label.slot}:1"],
                                dtype=object)[batch.label[:, 0].astype(np.int64)])
    bits = np.ascontiguousarray(batch.dense, dtype=np.float32).view(np.uint32)
    columns += [column_text(bits[:, j], f"{f.slot}:", _float32_text) for j, f in enumerate(schema.numeric)]
    columns += [column_text(batch.sparse[:, k], f"{f.slot}:", str) for k, f in enumerate(schema.categorical)]
    for field in schema.field_layout()[schema.n_single:]:
        slot = next(f.slot for f in schema.multi_valued if f.name == field.name)
        ids = batch.sparse[:, field.start:field.start + field.width].tolist()
        columns.append(np.array([" ".join(f"{slot}:{i}" for i in row if i) for row in ids], dtype=object))
    return [" ".join(t for t in row if t) for row in np.stack(columns, axis=1).tolist()]


def convert_to_slot(input_path: str, output_path: str, spec, *, skip_bad: bool = False,
                    block_bytes: int = DEFAULT_BLOCK_BYTES) -> dict:
    """Convert raw Criteo file(s) to slot format. A directory converts to a directory of same-named files,
    a file to a file. Each output appears only when complete (written to a temporary name, then renamed).
    Returns {"files", "lines", "skipped", "first_skipped"} (the first skipped line's error, or None).
    Raises DataFormatError (naming file and line) on a bad line unless `skip_bad`, and for an input that is
    already in slot format."""
    from ctrkit.data.parsing import criteo_spec

    criteo = criteo_spec(spec)
    if criteo is not None:  # raw Criteo -> PaddleRec's Criteo slot format
        spec = dataclasses.replace(criteo, data_format="raw")
        write_lines = format_slot_lines
    else:  # any schema's files (CSV, TSV, slot) -> slot format with the schema's slot names
        if spec.format == "slot":
            raise ValueError(f"the schema {spec.name!r} already reads slot format (dataset.format: slot)")

        def write_lines(batch):
            return format_schema_slot_lines(batch, spec)
    files = list_data_files(input_path)
    if os.path.isdir(input_path):
        os.makedirs(output_path, exist_ok=True)
        targets = [os.path.join(output_path, os.path.basename(f)) for f in files]
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
        targets = [output_path]
    lines = skipped = 0
    first_skipped = None
    for source, target in zip(files, targets):
        if os.path.abspath(source) == os.path.abspath(target):
            raise ValueError(f"{target}: output would overwrite the input")
        # hidden while incomplete (ctrkit.fsutil.atomic_write), so a reader of the output never takes it for data
        with atomic_write(target, "w", encoding="ascii", newline="\n") as out:
            for parsed in iter_parsed_blocks([source], spec, skip_bad=skip_bad, block_bytes=block_bytes):
                text = write_lines(parsed.batch)
                out.write("".join(line + "\n" for line in text))
                lines += len(text)
                skipped += len(parsed.errors)
                if parsed.errors and first_skipped is None:
                    first_skipped = str(parsed.errors[0])
    return {"files": len(files), "lines": lines, "skipped": skipped, "first_skipped": first_skipped}
