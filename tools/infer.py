"""Evaluate checkpoints: `python tools/infer.py -m models/rank/deepfm/config.yaml [-o key=value ...]`.

Scores epochs [runner.infer_start_epoch, runner.infer_end_epoch) of runner.infer_load_path on
runner.test_data_dir with exact AUC and logloss; `-o runner.infer_output=preds.txt` writes every prediction
(one per line, `%.9g`: float32 exactly). The model and hyper-parameters come from the checkpoint's record
(checkpoint.json), so the training run's `-o hyper_parameters...` need not be repeated (a conflicting -o is an
error naming both values). The last lines of output are one JSON object per epoch:
{"epoch":..,"auc":..,"logloss":..,"samples":..}.
"""
import argparse
import logging

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads (MKL reads it then)

import models  # noqa: F401  (registers the model zoo in ctrkit.zoo)
from ctrkit.cli import add_config_arguments, config_from_args, run_cli, setup_logging
from ctrkit.data import DataFormatError
from ctrkit.distributed import DistributedError
from ctrkit.training import DeviceError, TrainingError, evaluate, format_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("infer")
    results = evaluate(config_from_args(args),
                       on_epoch=lambda r: log.info("epoch %d: auc %s logloss %s over %d samples",
                                                   r["epoch"], r["auc"], r["logloss"], r["samples"]))
    for result in results:
        print(format_result(result))
    return 0


if __name__ == "__main__":
    run_cli(main, (DataFormatError, DeviceError, DistributedError, TrainingError))
