"""Dygraph model -> static inference model that carries its own contract.

`export_model` writes `<prefix>.json` + `<prefix>.pdiparams` (`paddle.jit.save`, InputSpec from the model's
own `input_specs()`), and `model_meta.json` beside them: model name and hyper-parameters, inputs and output,
the feature schema (`schema`: which fields, how text lines become inputs; `feature_spec` too for Criteo-shaped
models, for older readers), the Paddle version and a golden batch (input rows following the schema and the
dygraph outputs). Before anything is published the static model is run through the predictor factory
(oneDNN off and, where built in, on) and must match dygraph within 1e-5. Optionally it adds Paddle
Serving's layout (`serving_server/`, `serving_client/`) and an ONNX model, checked the same way.

The export is assembled in a temporary sibling directory and renamed into place, so a failed export never
leaves a half-written model where a server might load it.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import paddle

from ctrkit import inference, serving_config
from ctrkit.checkpoint import load_model_state
from ctrkit.config import Config
from ctrkit.data.spec import FeatureSpec
from ctrkit.schema import FeatureSchema, as_schema
from ctrkit.fsutil import staged_directory
from ctrkit.inference import META_FILE, META_FORMAT_VERSION, ONNX_FILE, PredictorOptions
from ctrkit.zoo import ModelMismatchError, build_model_for_checkpoint, schema_signature

log = logging.getLogger("ctrkit.export")

DEFAULT_PREFIX = "tostatic"
GOLDEN_ROWS = 40
EXPORT_ATOL = 1e-5
OUTPUT_ALIAS = "prob"
ONNX_OPSET = 11  # the minimum asked of paddle2onnx; it raises it where an operator needs more


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported model does not reproduce the dygraph outputs."""


# Lines that native code prints to stderr during a SUCCESSFUL export and that look like errors but are not; every
# export is checked against the dygraph model on its golden batch, so a real problem fails that check instead.
HARMLESS_NATIVE_WARNINGS = (
    # Paddle 3.3.1 logs this (glog WARNING, eager_utils.cc) once for every elementwise add/subtract traced into a
    # PIR program; the saved program is correct.
    "not support input out tensor for now",
    # ONNX Runtime notes constants that paddle2onnx left unused (shape helpers of the converted graph).
    "CleanUnusedInitializersAndNodeArgs",
)


@contextlib.contextmanager
def quiet_paddle_warnings():
    """Hide the native (C++) stderr lines in HARMLESS_NATIVE_WARNINGS while the block runs; every other line
    written to stderr meanwhile is passed on unchanged afterwards, and the count of hidden ones is logged at DEBUG."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            hidden = 0
            for line in captured.read().decode("utf-8", errors="replace").splitlines():
                if any(pattern in line for pattern in HARMLESS_NATIVE_WARNINGS):
                    hidden += 1
                else:
                    sys.stderr.write(line + "\n")
            sys.stderr.flush()
            if hidden:
                log.debug("hid %d harmless native warning line(s) (see HARMLESS_NATIVE_WARNINGS)", hidden)


def read_golden_rows(path: str, spec: FeatureSpec | FeatureSchema,
                     rows: int = GOLDEN_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` input rows of a data file or directory, parsed by the shared data layer."""
    from ctrkit.data import iter_batches

    try:
        batch = next(iter(iter_batches(path, spec, rows)), None)
    except (OSError, ValueError) as exc:  # includes DataFormatError "<file>:<line>: <reason>"
        raise ExportError(f"cannot read golden rows from {path}: {exc}") from None
    if batch is None:
        raise ExportError(f"{path} holds no data rows for the golden batch")
    return batch.dense, batch.sparse


def generated_golden_rows(schema: FeatureSchema, rows: int = GOLDEN_ROWS,
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`rows` input rows that follow `schema`, for a golden batch when there is no data: numeric values in [0, 1)
    (Criteo's scaled range), ids spread over the whole id space with a few missing (0), multi-valued fields with
    0..max_len ids (0-padded). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    dense = rng.random((rows, schema.n_dense), dtype=np.float32)
    sparse = rng.integers(1, schema.sparse_feature_number, (rows, schema.sparse_width), dtype=np.int64)
    sparse[rng.random(sparse.shape) < 0.05] = 0
    for f in schema.field_layout():
        if f.kind == "multi":
            lengths = rng.integers(0, f.width + 1, rows)
            sparse[:, f.start:f.start + f.width][np.arange(f.width)[None, :] >= lengths[:, None]] = 0
    return dense, sparse


def export_model(model: paddle.nn.Layer, output_dir: str, *, golden_dense: np.ndarray, golden_sparse: np.ndarray,
                 golden_source: str, feature_spec: FeatureSpec | FeatureSchema | None = None,
                 model_prefix: str = DEFAULT_PREFIX, serving: bool = False, onnx: bool = False,
                 source: dict | None = None) -> str:
    """Export `model` (a zoo CTRModel) to `output_dir`; returns the directory. Raises ExportError.
    The schema written is the model's (`model.schema`); `feature_spec` (a Criteo FeatureSpec or a schema), when
    given, replaces it and must fit the model (e.g. a spec with the data format and dense scaling of the run)."""
    _check_prefix(model_prefix)
    output_dir = os.path.abspath(output_dir)
    _check_replaceable(output_dir)
    schema = _export_schema(model, feature_spec)
    golden_dense = np.ascontiguousarray(golden_dense, dtype=np.float32)
    golden_sparse = np.ascontiguousarray(golden_sparse, dtype=np.int64)
    rows = len(golden_sparse)
    for what, array, width in (("dense", golden_dense, schema.n_dense), ("sparse", golden_sparse, schema.sparse_width)):
        if array.shape != (rows, width):
            raise ExportError(f"golden batch: {what} rows have shape {list(array.shape)}, the schema "
                              f"{schema.name!r} needs [{rows}, {width}]")
    model.eval()
    with paddle.no_grad():
        prob = model(paddle.to_tensor(golden_dense), paddle.to_tensor(golden_sparse)).numpy().reshape(-1)
    if np.ptp(prob) < 1e-6:
        log.warning("all %d golden outputs are %.6g: a self-check on them detects few errors; pick golden rows "
                    "the model scores differently", len(prob), prob[0])
    with staged_directory(output_dir) as staging:
        try:
            with quiet_paddle_warnings():
                paddle.jit.save(model, os.path.join(staging, model_prefix), input_spec=model.input_specs())
        except Exception as exc:  # to_static rejects what it cannot trace (e.g. an unused input)
            raise ExportError(f"paddle.jit.save cannot export model {model.model_name}: {exc}") from exc
        meta = _metadata(model, staging, model_prefix, schema, golden_dense, golden_sparse, prob,
                         golden_source, source)
        _write_meta(staging, meta)
        meta["export_check"] = _check_paddle(staging)
        if onnx:
            meta["onnx"] = _export_onnx(staging, model_prefix)
        _write_meta(staging, meta)
        if serving:
            _write_serving(staging, meta)
    log.info("exported %s to %s", meta["model_name"], output_dir)
    return output_dir


def export_from_config(config: Config, output_dir: str, *, model_prefix: str = DEFAULT_PREFIX,
                       serving: bool = False, onnx: bool = False, golden_data: str | None = None,
                       explicit_overrides: list[str] | None = None) -> str:
    """Build the model of checkpoint `runner.model_init_path` (default: the last epoch in runner.model_save_path;
    its recorded hyper-parameters and schema, see
    `ctrkit.zoo.build_model_for_checkpoint`), load it, and export it. Golden rows: `golden_data`, else the
    config's test_data_dir, else its train_data_dir, else generated rows that follow the model's schema (a
    checkpoint alone exports, as with PaddleRec); one log line says which. `explicit_overrides`: the dotted keys
    the user gave with -o (a recorded hyper-parameter they contradict is an error naming both values)."""
    checkpoint_dir = config.runner["model_init_path"] or _latest_checkpoint(config)
    try:
        model = build_model_for_checkpoint(config, checkpoint_dir, schema_from_checkpoint=True,
                                           explicit=explicit_overrides, logger=log)
    except ModelMismatchError as exc:
        raise ExportError(str(exc)) from None
    load_model_state(model, checkpoint_dir)
    schema = model.schema
    golden_path = _golden_path(config, golden_data)
    if golden_path is None:
        dense, sparse = generated_golden_rows(schema)
        golden_source = f"generated ({len(dense)} rows following schema {schema.name!r})"
        log.info("golden batch: %d generated rows following the model's schema %r (no data at "
                 "runner.test_data_dir / runner.train_data_dir; pass --golden_data FILE to use real rows)",
                 len(dense), schema.name)
    else:
        dense, sparse = read_golden_rows(golden_path, schema)
        golden_source = golden_path
        log.info("golden batch: the first %d rows of %s", len(dense), golden_path)
    return export_model(model, output_dir, golden_dense=dense, golden_sparse=sparse,
                        golden_source=golden_source, model_prefix=model_prefix, serving=serving, onnx=onnx,
                        source={"config": config.path, "checkpoint": os.path.abspath(checkpoint_dir)})


def _latest_checkpoint(config: Config) -> str:
    """Without runner.model_init_path: the last complete epoch under runner.model_save_path (where the trainer
    just wrote it), as PaddleRec's to_static finds its model from the config alone."""
    from ctrkit.checkpoint import checkpoint_dirs

    save_path = config.runner["model_save_path"]
    found = checkpoint_dirs(save_path) if save_path else []
    if not found:
        raise ExportError(f"runner.model_init_path is not set and runner.model_save_path={save_path or '(unset)'} "
                          "holds no checkpoint: pass -o runner.model_init_path=<checkpoint dir>, "
                          "e.g. output/deepfm/checkpoints/0")
    log.info("checkpoint: %s (the last epoch in runner.model_save_path; -o runner.model_init_path=DIR picks another)",
             found[-1])
    return found[-1]


def _golden_path(config: Config, golden_data: str | None) -> str | None:
    """--golden_data (must exist), else the configured test or train data when it exists, else None."""
    if golden_data:
        if not os.path.exists(golden_data):
            raise ExportError(f"--golden_data {golden_data} does not exist")
        return golden_data
    for key in ("test_data_dir", "train_data_dir"):
        path = config.runner[key]
        if path and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            return path
    return None


def _export_schema(model, feature_spec: FeatureSpec | FeatureSchema | None) -> FeatureSchema:
    schema = getattr(model, "schema", None)
    if feature_spec is None:
        if schema is None:
            raise ExportError("the model has no feature schema (not a ctrkit.zoo.CTRModel): pass feature_spec=")
        return schema
    given = as_schema(feature_spec)
    if schema is not None and (schema_signature(given) != schema_signature(schema)
                               or given.sparse_feature_number != schema.sparse_feature_number):
        raise ExportError(f"feature spec/schema {given.name!r} ({given.n_dense} numeric, {given.sparse_width} id "
                          f"columns, {given.sparse_feature_number} ids) does not fit the model's schema "
                          f"{schema.name!r} ({schema.n_dense}, {schema.sparse_width}, {schema.sparse_feature_number})")
    return given


def _check_prefix(prefix: str) -> None:
    if not prefix or os.sep in prefix or prefix.startswith("."):
        raise ExportError(f"model prefix {prefix!r} must be a plain file name stem")


def _check_replaceable(output_dir: str) -> None:
    """Only an earlier export (or an empty directory) may be replaced: never delete a user's other files."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"output {output_dir} exists and is not a directory")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and \
            not os.path.isfile(os.path.join(output_dir, META_FILE)):
        raise ExportError(f"refusing to overwrite {output_dir}: it is not empty and holds no {META_FILE} "
                          "(not an earlier export); choose another --output_dir")


def _metadata(model, staging: str, prefix: str, schema: FeatureSchema, dense: np.ndarray, sparse: np.ndarray,
              prob: np.ndarray, golden_source: str, source: dict | None) -> dict:
    spec = schema.feature_spec()  # the Criteo FeatureSpec, None for any other schema
    inputs = [{"name": s.name, "dtype": _dtype_name(s.dtype), "shape": [-1 if d is None else int(d) for d in s.shape]}
              for s in model.input_specs()]
    return {
        "format_version": META_FORMAT_VERSION,
        "model_name": model.model_name,
        "hyper_parameters": model.hp,
        "model_prefix": prefix,
        "model_file": prefix + ".json",
        "params_file": prefix + ".pdiparams",
        "inputs": inputs,
        "output": {"name": _output_name(staging, prefix), "alias": OUTPUT_ALIAS, "dtype": "float32",
                   "shape": [-1, 1]},
        "schema": schema.to_dict(),
        "feature_spec": spec.to_dict() if spec is not None else None,
        "serving_feeds": [{k: f[k] for k in ("name", "dtype", "shape")} for f in serving_config.field_feeds(schema)],
        "paddle_version": paddle.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source or {},
        # float32 -> float64 -> JSON round-trips exactly, so the golden inputs are bit-identical when read back
        "golden": {"source": golden_source, "rows": int(len(prob)), "dense": dense.astype(np.float64).tolist(),
                   "sparse": sparse.astype(np.int64).tolist(), "prob": prob.astype(np.float64).tolist()},
    }


def _dtype_name(dtype) -> str:
    return str(dtype).replace("paddle.", "")


def _output_name(staging: str, prefix: str) -> str:
    """The static program's output variable (Paddle 3 names it `fetch_name_0`), read from the saved model."""
    config = paddle.inference.Config(os.path.join(staging, prefix + ".json"),
                                     os.path.join(staging, prefix + ".pdiparams"))
    config.disable_glog_info()
    config.disable_onednn()
    names = paddle.inference.create_predictor(config).get_output_names()
    if len(names) != 1:
        raise ExportError(f"the static model has {len(names)} outputs {names}; CTR models have exactly one")
    return names[0]


def _write_meta(directory: str, meta: dict) -> None:
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def _check_paddle(staging: str) -> dict:
    """Static vs dygraph on the golden batch, with oneDNN off and (when built in) on."""
    configurations = [PredictorOptions(onednn=False, check_golden=False)]
    if inference.capabilities()["onednn"]:
        configurations.append(PredictorOptions(onednn=True, check_golden=False))
    diffs = {}
    for options in configurations:
        predictor = inference.create_predictor(staging, options)
        try:
            diffs[options.describe()] = inference.verify_golden(predictor, options.describe(), EXPORT_ATOL)
        except inference.GoldenMismatchError as exc:
            raise ExportError(f"static model does not reproduce the dygraph model: {exc}") from None
    return diffs


def _export_onnx(staging: str, prefix: str) -> dict:
    """paddle2onnx in a child process: on an operator it cannot convert it aborts the whole process (SIGABRT)."""
    import onnx
    import paddle2onnx

    onnx_path = os.path.join(staging, ONNX_FILE)
    command = [sys.executable, "-m", "paddle2onnx.command", "--model_dir", staging,
               "--model_filename", prefix + ".json", "--params_filename", prefix + ".pdiparams",
               "--save_file", onnx_path, "--opset_version", str(ONNX_OPSET), "--enable_onnx_checker", "True",
               # the default optimiser (polygraphy) pip-installs packages at run time; never do that
               "--optimize_tool", "None"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(onnx_path) or os.path.getsize(onnx_path) == 0:
        errors = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                  if "ERROR" in line or "Error" in line or "rror:" in line]
        raise ExportError(f"paddle2onnx {paddle2onnx.__version__} could not convert the {prefix}.json of this model "
                          f"(exit status {result.returncode}): {' | '.join(errors[-3:]) or 'no error message'}; "
                          "export without --onnx")
    with quiet_paddle_warnings():
        predictor = inference.create_onnx_predictor(staging, check_golden=False)
    try:
        diff = inference.verify_golden(predictor, "onnxruntime", EXPORT_ATOL)
    except inference.GoldenMismatchError as exc:
        raise ExportError(f"the ONNX model does not reproduce the dygraph model: {exc}") from None
    opset = max(o.version for o in onnx.load(onnx_path).opset_import if o.domain in ("", "ai.onnx"))
    return {"file": ONNX_FILE, "opset": opset, "paddle2onnx_version": paddle2onnx.__version__, "max_abs_diff": diff}


def _write_serving(staging: str, meta: dict) -> None:
    """Paddle Serving's layout: the server directory holds the model and its config, the client directory
    only the config (same message, as clients read it). Feeds: one per field, as PaddleRec's export declares
    them (`serving_config.field_feeds`); the servers also accept the packed `dense_input` / `sparse_inputs`."""
    config = serving_config.build_schema_config(FeatureSchema.from_dict(meta["schema"]), [meta["output"]])
    server_dir = os.path.join(staging, serving_config.SERVER_DIR)
    os.makedirs(server_dir)
    for name in (meta["model_file"], meta["params_file"], META_FILE):
        shutil.copy2(os.path.join(staging, name), os.path.join(server_dir, name))
    serving_config.write_config(config, server_dir, serving_config.SERVER_CONF)
    serving_config.write_config(config, os.path.join(staging, serving_config.CLIENT_DIR), serving_config.CLIENT_CONF)
