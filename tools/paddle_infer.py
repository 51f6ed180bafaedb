"""Batch prediction on an exported model, with PaddleRec's paddle_infer.py flags.

    python tools/paddle_infer.py --model_dir output/deepfm/inference --data_dir data/synthetic/test \\
        --batchsize 2048 --enable_mkldnn True --cpu_threads 1 --output preds.txt --save_log_path output/infer_log
    python tools/paddle_infer.py --model_file output/deepfm/inference/tostatic.json \\
        --params_file output/deepfm/inference/tostatic.pdiparams --data_dir data/synthetic/test --use_gpu False
    python tools/paddle_infer.py --model_dir output/deepfm/inference --data_dir data/test --backend onnxruntime

Reads the data files (a file or a directory of them) with the shared lines path (`ctrkit.batch_predict`: the data
layer parses them with the exported model's feature schema; each file's format is detected once and locked; with
--backend onnxruntime the next batch is parsed while the current one is predicted), scores every line with a
golden-checked model from the serving runtime's backends (`--backend paddle`, the default, or `onnxruntime` on the
export's model.onnx), and writes --output with one prediction per input line, in input order (`%.9g`,
ctrkit.predictions). Reports samples, samples/s, per-batch latency percentiles (after warm-up), preprocess /
inference / postprocess time, and AUC / logloss when the lines carry labels. --save_log_path appends one JSON
record per run (a directory gets paddle_infer.jsonl inside). A GPU or TensorRT request this build or machine cannot
serve is an error (exit status 2), never a silent CPU run.

PaddleRec flags with no meaning here are accepted with a one-line warning saying why: --reader_file (lines are
parsed by the data layer from the model's own schema, not by a reader module), --model_name (the name comes from
the export's model_meta.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ctrkit.cli import UserError, run_cli, setup_logging

LOG_FILE_NAME = "paddle_infer.jsonl"
BACKENDS = ("paddle", "onnxruntime")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from ctrkit.runtime.options import add_runtime_flags

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model (--model_dir, or --model_file with --params_file)")
    model.add_argument("--model_dir", help="directory written by tools/to_static.py (or its serving_server/)")
    model.add_argument("--model_file", help="<prefix>.json of an exported model (model_meta.json beside it)")
    model.add_argument("--params_file", help="<prefix>.pdiparams (default: beside --model_file)")
    parser.add_argument("--data_dir", required=True, help="data file, or a directory of data files (no "
                        "sub-directories); formats: those of the model's feature schema (slot / raw Criteo, ...)")
    parser.add_argument("--batchsize", "--batch_size", dest="batchsize", type=int, default=2048,
                        help="lines parsed and predicted per batch (>= 1)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="worker processes that parse and predict, each with its own model (default: CPU cores "
                             "/ cpu_threads for inputs over 32 MB, else 0 = in this process)")
    parser.add_argument("--output", help="write one prediction per input line here")
    parser.add_argument("--benchmark", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                        help="print the full timing breakdown")
    parser.add_argument("--save_log_path", help="append the run's JSON record to this file (or <dir>/"
                                                f"{LOG_FILE_NAME})")
    parser.add_argument("--reader_file", help="PaddleRec's reader module: accepted and ignored (see below)")
    parser.add_argument("--model_name", help="PaddleRec's model label: accepted and ignored (see below)")
    add_runtime_flags(parser, serving=False, backends=BACKENDS)
    return parser


def _bool(text: str) -> bool:
    from ctrkit.runtime.options import str2bool

    return str2bool(text)


def check_args(args: argparse.Namespace) -> None:
    """Flag values that cannot work: one `error:` line (UserError)."""
    if args.batchsize < 1:
        raise UserError(f"--batchsize must be >= 1, got {args.batchsize}")
    if args.num_workers is not None and args.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0 (0: predict in this process), got {args.num_workers}")
    if not args.data_dir:
        raise UserError("--data_dir is empty; give a data file or a directory of data files")
    if args.reader_file:
        warn(f"--reader_file {args.reader_file} is ignored: lines are parsed by the toolkit's data layer with the "
             "exported model's feature schema (model_meta.json), not by a reader module")
    if args.model_name:
        warn(f"--model_name {args.model_name} is ignored: the model and its name come from the export's "
             "model_meta.json")


def runtime_options(args: argparse.Namespace):
    from ctrkit.runtime.options import options_from_args

    try:
        return options_from_args(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_model(args: argparse.Namespace):
    from ctrkit.inference import load_exported_model

    if bool(args.model_dir) == bool(args.model_file):
        raise UserError("give either --model_dir or --model_file (with --params_file)")
    if args.params_file and not args.model_file:
        raise UserError("--params_file goes with --model_file")
    for flag, path in (("--model_file", args.model_file), ("--params_file", args.params_file)):
        if path and path.endswith(".pdmodel"):
            prefix = path[:-len(".pdmodel")]
            raise UserError(f"{flag} {path}: Paddle 3 exports write <prefix>.json (the new IR), not .pdmodel; "
                            f"pass --model_file {prefix}.json --params_file {prefix}.pdiparams, or --model_dir "
                            f"{os.path.dirname(path) or '.'} (tools/to_static.py writes tostatic.json)")
    model = load_exported_model(args.model_dir or args.model_file, args.params_file)
    if args.model_file:  # the runtime serves an export directory: the files must be that directory's own
        own = load_exported_model(model.directory)
        if (own.model_file, own.params_file) != (model.model_file, model.params_file):
            raise UserError(f"--model_file/--params_file must be the files model_meta.json in {model.directory} "
                            f"names ({own.model_file}, {own.params_file}); or pass --model_dir")
    return model


def data_files(data_dir: str) -> list[str]:
    from ctrkit.data import list_data_files

    try:
        return list_data_files(data_dir)
    except ValueError as exc:  # a sub-directory, or no file at all
        raise UserError(f"--data_dir: {exc}") from None


def log_path(path: str) -> str:
    if os.path.isdir(path) or path.endswith(os.sep):
        return os.path.join(path, LOG_FILE_NAME)
    return path


def append_record(path: str, record: dict) -> str:
    path = log_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
    return path


def summary(record: dict, detailed: bool) -> str:
    lines = [f"samples {record['samples']}  samples/s {record['samples_per_s']}  wall {record['wall_s']} s  "
             f"auc {record['auc']}  logloss {record['logloss']}"]
    if detailed:
        lat = record["latency_ms"]
        lines += [f"configuration: {record['configuration']}  batch {record['batch_size']}  "
                  f"workers {record['workers']}",
                  f"per-batch inference latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
                  f"mean {lat['mean']}",
                  f"time (s, summed over batches): preprocess {record['preprocess_s']}  "
                  f"inference {record['inference_s']}  postprocess {record['postprocess_s']}  "
                  f"first result after {record['startup_s']}"]
    return "\n".join(lines)


def main() -> int:
    from ctrkit.cpu_env import configure_cpu_env, keep_freed_memory

    configure_cpu_env()
    args = build_parser().parse_args()
    check_args(args)
    setup_logging()
    options = runtime_options(args)
    paths = data_files(args.data_dir)
    model = load_model(args)
    from ctrkit.batch_predict import default_workers, predict_files

    keep_freed_memory()  # (the upload service does the same: one lines -> predictions path, one allocator setting)
    workers = default_workers(paths, options.predictor) if args.num_workers is None else args.num_workers
    record = predict_files(model.directory, options, paths, args.batchsize, workers, args.output)
    print(summary(record, args.benchmark))
    if args.save_log_path:
        print(f"appended the run record to {append_record(args.save_log_path, record)}")
    return 0


if __name__ == "__main__":
    from ctrkit.data import DataFormatError
    from ctrkit.inference import InferenceError, InputError

    run_cli(main, (InferenceError, DataFormatError, InputError))
