"""Batch prediction with Paddle Inference on an exported model (PaddleRec's paddle_infer.py flags).

    python tools/paddle_infer.py --model_dir output/deepfm/inference --data_dir data/synthetic/test \\
        --batchsize 2048 --enable_mkldnn True --cpu_threads 1 --output preds.txt --save_log_path output/infer_log

Reads slot or raw Criteo files (a file or a directory) with the shared data layer, scores every line with a
golden-checked predictor from ctrkit.inference, and writes --output with one prediction per input line, in
input order. Reports samples, samples/s, per-batch latency percentiles (after warm-up), preprocess /
inference / postprocess time, and AUC / logloss when the lines carry labels. --save_log_path appends one JSON
record per run (a directory gets paddle_infer.jsonl inside). A GPU or TensorRT request this build or machine
cannot serve is an error (exit status 2), never a silent CPU run.
"""
import argparse
import json
import os

from ctrkit.cli import UserError, run_cli, setup_logging
from ctrkit.inference import (TENSORRT_PRECISIONS, InferenceError, PredictorOptions,
                              load_exported_model)

LOG_FILE_NAME = "paddle_infer.jsonl"


def str2bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {text!r}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag = {"type": str2bool, "nargs": "?", "const": True, "default": False, "metavar": "BOOL"}
    model = parser.add_argument_group("model (--model_dir, or --model_file with --params_file)")
    model.add_argument("--model_dir", help="directory written by tools/to_static.py (or its serving_server/)")
    model.add_argument("--model_file", help="<prefix>.json of an exported model (model_meta.json beside it)")
    model.add_argument("--params_file", help="<prefix>.pdiparams (default: beside --model_file)")
    parser.add_argument("--data_dir", required=True, help="slot or raw Criteo file, or a directory of them")
    parser.add_argument("--batchsize", type=int, default=2048)
    parser.add_argument("--use_gpu", **flag)
    parser.add_argument("--gpu_id", type=int, default=0)
    parser.add_argument("--enable_mkldnn", **flag, help="oneDNN on the CPU (set explicitly either way)")
    parser.add_argument("--enable_tensorRT", **flag, help="TensorRT subgraphs (needs --use_gpu)")
    parser.add_argument("--precision", choices=TENSORRT_PRECISIONS, default="fp32",
                        help="TensorRT precision; fp16/int8 need --enable_tensorRT")
    parser.add_argument("--cpu_threads", type=int, default=1, help="math threads per predictor")
    parser.add_argument("--ir_optim", type=str2bool, nargs="?", const=True, default=True, metavar="BOOL")
    parser.add_argument("--memory_optim", **flag)
    parser.add_argument("--num_workers", type=int, default=None,
                        help="worker processes that parse and predict, each with its own predictor (default: "
                             "CPU cores / cpu_threads for inputs over 32 MB, else 0 = all in this process)")
    parser.add_argument("--output", help="write one prediction per input line here")
    parser.add_argument("--benchmark", **flag, help="print the full timing breakdown")
    parser.add_argument("--save_log_path", help="append the run's JSON record to this file (or <dir>/"
                                                f"{LOG_FILE_NAME})")
    return parser.parse_args()


def predictor_options(args: argparse.Namespace) -> PredictorOptions:
    if args.precision != "fp32" and not args.enable_tensorRT:
        raise UserError(f"--precision {args.precision} needs --enable_tensorRT (Paddle Inference on the CPU runs fp32)")
    if args.enable_tensorRT and not args.use_gpu:
        raise UserError("--enable_tensorRT needs --use_gpu")
    try:
        return PredictorOptions(device="gpu" if args.use_gpu else "cpu", gpu_id=args.gpu_id,
                                onednn=args.enable_mkldnn, cpu_threads=args.cpu_threads, ir_optim=args.ir_optim,
                                memory_optim=args.memory_optim,
                                tensorrt=args.precision if args.enable_tensorRT else None)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def load_model(args: argparse.Namespace):
    if bool(args.model_dir) == bool(args.model_file):
        raise UserError("give either --model_dir or --model_file (with --params_file)")
    if args.params_file and not args.model_file:
        raise UserError("--params_file goes with --model_file")
    return load_exported_model(args.model_dir or args.model_file, args.params_file)


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
    from ctrkit.batch_predict import default_workers, predict_files
    from ctrkit.data import list_data_files

    args = parse_args()
    setup_logging()
    options = predictor_options(args)
    model = load_model(args)
    paths = list_data_files(args.data_dir)
    workers = default_workers(paths, options) if args.num_workers is None else args.num_workers
    record = predict_files(model, options, paths, args.batchsize, workers, args.output)
    print(summary(record, args.benchmark))
    if args.save_log_path:
        print(f"appended the run record to {append_record(args.save_log_path, record)}")
    return 0


if __name__ == "__main__":
    from ctrkit.data import DataFormatError
    from ctrkit.inference import InputError

    run_cli(main, (InferenceError, DataFormatError, InputError))
