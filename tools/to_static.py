"""Export a trained checkpoint as a static inference model (PaddleRec's to_static.py, plus a contract).

    python tools/to_static.py -m models/rank/deepfm/config.yaml \\
        -o runner.model_init_path=output/deepfm/checkpoints/0 --output_dir output/deepfm/inference --serving --onnx

The checkpoint is runner.model_init_path, else the last epoch in runner.model_save_path (where tools/trainer.py
wrote it). Writes <output_dir>/tostatic.json + tostatic.pdiparams + model_meta.json (model, inputs, output, feature
schema, golden batch with the dygraph outputs); --serving adds serving_server/ and serving_client/
(Paddle Serving layout and GeneralModelConfig prototxt); --onnx adds model.onnx. The static model (and the
ONNX model) must reproduce the dygraph outputs on the golden batch within 1e-5, or nothing is written and the
exit status is non-zero. Golden rows come from --golden_data, else runner.test_data_dir, else runner.train_data_dir,
else (a checkpoint alone, as with PaddleRec) generated rows that follow the model's feature schema; a log line
says which. The model is built with the hyper-parameters and feature schema recorded in the checkpoint, so
overrides given at training time (e.g. -o hyper_parameters.fc_sizes=[256,128]) need no repeating; an -o that
contradicts the checkpoint is an error naming both values.
"""
import argparse
import json
import logging

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads (MKL reads it then)

import models  # noqa: E402,F401  (registers the model zoo in ctrkit.zoo)
from ctrkit.cli import add_config_arguments, config_from_args, run_cli, setup_logging
from ctrkit.config import parse_override
from ctrkit.export import DEFAULT_PREFIX, ExportError, export_from_config
from ctrkit.inference import META_FILE, InferenceError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--output_dir", required=True, help="directory to write the exported model into")
    parser.add_argument("--model_prefix", default=DEFAULT_PREFIX, help="file name stem of the model files")
    parser.add_argument("--serving", action="store_true", help="also write Paddle Serving's layout")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (paddle2onnx), checked on ORT")
    parser.add_argument("--golden_data", help="data file (in the model's schema) whose first rows form the golden "
                                              "batch; default: the configured data, else generated rows")
    args = parser.parse_args()
    setup_logging()
    config = config_from_args(args)
    explicit = [parse_override(text)[0] for text in args.opt or [] if "=" in text]  # keys given with -o
    output_dir = export_from_config(config, args.output_dir, model_prefix=args.model_prefix, serving=args.serving,
                                    onnx=args.onnx, golden_data=args.golden_data, explicit_overrides=explicit)
    with open(f"{output_dir}/{META_FILE}", encoding="utf-8") as f:
        meta = json.load(f)
    checks = {**meta["export_check"], **({"onnxruntime": meta["onnx"]["max_abs_diff"]} if "onnx" in meta else {})}
    for configuration, diff in checks.items():
        logging.getLogger("to_static").info("golden check [%s]: max abs diff %.3g", configuration, diff)
    print(json.dumps({"output_dir": output_dir, "model": meta["model_name"], "golden_rows": meta["golden"]["rows"],
                      "max_abs_diff": checks}))
    return 0


if __name__ == "__main__":
    run_cli(main, (ExportError, InferenceError))
