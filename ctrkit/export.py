"""Dygraph model -> static inference model that carries its own contract.

`export_model` writes `<prefix>.json` + `<prefix>.pdiparams` (`paddle.jit.save`, InputSpec from the model's
own `input_specs()`), and `model_meta.json` beside them: model name and hyper-parameters, inputs and output,
the feature spec (how text lines become inputs), the Paddle version and a golden batch (real input rows and
the dygraph outputs). Before anything is published the static model is run through the predictor factory
(oneDNN off and, where built in, on) and must match dygraph within 1e-5. Optionally it adds Paddle
Serving's layout (`serving_server/`, `serving_client/`) and an ONNX model, checked the same way.

The export is assembled in a temporary sibling directory and renamed into place, so a failed export never
leaves a half-written model where a server might load it.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle

from ctrkit import inference, serving_config
from ctrkit.checkpoint import load_model_state
from ctrkit.config import Config
from ctrkit.data.spec import FeatureSpec
from ctrkit.fsutil import staged_directory
from ctrkit.inference import META_FILE, META_FORMAT_VERSION, ONNX_FILE, PredictorOptions
from ctrkit.zoo import build_model

log = logging.getLogger("ctrkit.export")

DEFAULT_PREFIX = "tostatic"
GOLDEN_ROWS = 40
EXPORT_ATOL = 1e-5
OUTPUT_ALIAS = "prob"
ONNX_OPSET = 11  # the minimum asked of paddle2onnx; it raises it where an operator needs more


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported model does not reproduce the dygraph outputs."""


def read_golden_rows(path: str, spec: FeatureSpec, rows: int = GOLDEN_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The first `rows` input rows of a data file or directory, parsed by the shared data layer."""
    from ctrkit.data import iter_batches

    try:
        batch = next(iter(iter_batches(path, spec, rows)), None)
    except (OSError, ValueError) as exc:  # includes DataFormatError "<file>:<line>: <reason>"
        raise ExportError(f"cannot read golden rows from {path}: {exc}") from None
    if batch is None:
        raise ExportError(f"{path} holds no data rows for the golden batch")
    return batch.dense, batch.sparse


def export_model(model: paddle.nn.Layer, output_dir: str, *, feature_spec: FeatureSpec, golden_dense: np.ndarray,
                 golden_sparse: np.ndarray, golden_source: str, model_prefix: str = DEFAULT_PREFIX,
                 serving: bool = False, onnx: bool = False, source: dict | None = None) -> str:
    """Export `model` (a zoo CTRModel) to `output_dir`; returns the directory. Raises ExportError."""
    _check_prefix(model_prefix)
    output_dir = os.path.abspath(output_dir)
    _check_replaceable(output_dir)
    model.eval()
    with paddle.no_grad():
        prob = model(paddle.to_tensor(golden_dense), paddle.to_tensor(golden_sparse)).numpy().reshape(-1)
    if np.ptp(prob) < 1e-6:
        log.warning("all %d golden outputs are %.6g: a self-check on them detects few errors; pick golden rows "
                    "the model scores differently", len(prob), prob[0])
    with staged_directory(output_dir) as staging:
        try:
            paddle.jit.save(model, os.path.join(staging, model_prefix), input_spec=model.input_specs())
        except Exception as exc:  # to_static rejects what it cannot trace (e.g. an unused input)
            raise ExportError(f"paddle.jit.save cannot export model {model.model_name}: {exc}") from exc
        meta = _metadata(model, staging, model_prefix, feature_spec, golden_dense, golden_sparse, prob,
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
                       serving: bool = False, onnx: bool = False, golden_data: str | None = None) -> str:
    """Build the configured model, load `runner.model_init_path`, and export it (golden rows from
    `golden_data`, else the config's test_data_dir, else its train_data_dir)."""
    checkpoint_dir = config.runner["model_init_path"]
    if not checkpoint_dir:
        raise ExportError("runner.model_init_path is not set: pass -o runner.model_init_path=<checkpoint dir>, "
                          "e.g. output/deepfm/checkpoints/0")
    model = build_model(config.model_name, config.hyper_parameters)
    load_model_state(model, checkpoint_dir)
    golden_path = _golden_path(config, golden_data)
    spec = config.feature_spec()
    dense, sparse = read_golden_rows(golden_path, spec)
    return export_model(model, output_dir, feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                        golden_source=golden_path, model_prefix=model_prefix, serving=serving, onnx=onnx,
                        source={"config": config.path, "checkpoint": os.path.abspath(checkpoint_dir)})


def _golden_path(config: Config, golden_data: str | None) -> str:
    if golden_data:
        if not os.path.exists(golden_data):
            raise ExportError(f"--golden_data {golden_data} does not exist")
        return golden_data
    tried = []
    for key in ("test_data_dir", "train_data_dir"):
        path = config.runner[key]
        if path and os.path.exists(path):
            return path
        tried.append(f"runner.{key}={path or '(unset)'}")
    raise ExportError(f"no data for the golden batch: {', '.join(tried)} not found; generate the data "
                      "or pass --golden_data FILE (a slot or raw Criteo file)")


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


def _metadata(model, staging: str, prefix: str, spec: FeatureSpec, dense: np.ndarray, sparse: np.ndarray,
              prob: np.ndarray, golden_source: str, source: dict | None) -> dict:
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
        "feature_spec": spec.to_dict(),
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
    predictor = inference.create_onnx_predictor(staging, check_golden=False)
    try:
        diff = inference.verify_golden(predictor, "onnxruntime", EXPORT_ATOL)
    except inference.GoldenMismatchError as exc:
        raise ExportError(f"the ONNX model does not reproduce the dygraph model: {exc}") from None
    opset = max(o.version for o in onnx.load(onnx_path).opset_import if o.domain in ("", "ai.onnx"))
    return {"file": ONNX_FILE, "opset": opset, "paddle2onnx_version": paddle2onnx.__version__, "max_abs_diff": diff}


def _write_serving(staging: str, meta: dict) -> None:
    """Paddle Serving's layout: the server directory holds the model and its config, the client directory
    only the config (same message, as clients read it)."""
    config = serving_config.build_config(meta["inputs"], [meta["output"]])
    server_dir = os.path.join(staging, serving_config.SERVER_DIR)
    os.makedirs(server_dir)
    for name in (meta["model_file"], meta["params_file"], META_FILE):
        shutil.copy2(os.path.join(staging, name), os.path.join(server_dir, name))
    serving_config.write_config(config, server_dir, serving_config.SERVER_CONF)
    serving_config.write_config(config, os.path.join(staging, serving_config.CLIENT_DIR), serving_config.CLIENT_CONF)
