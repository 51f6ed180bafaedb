"""Train a CTR model: `python tools/trainer.py -m models/rank/deepfm/config.yaml [-o key=value ...]`.

Overrides as in PaddleRec: `-o runner.epochs=2 hyper_parameters.fc_sizes=[512,256]` (several after one -o) or
repeated `-o`. The model is `runner.model`, else the config's folder name (models/rank/<name>/config.yaml).
Writes `<runner.model_save_path>/<epoch>/rec.pdparams` (+ rec.pdopt, checkpoint.json) after every epoch and resumes
from the last complete epoch when re-run with the same settings (runner.resume; a checkpoint of another run is
refused); `-o runner.resume=false` removes an earlier run's checkpoints first and says so. An empty training set or
a diverging loss (NaN) stops with an error and no checkpoint for that epoch. Bad input: one `error:` line, exit 2.
The last line of output is a JSON summary.
"""
import argparse

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads (MKL reads it then)

import models  # noqa: F401  (registers the model zoo in ctrkit.zoo)
from ctrkit.cli import add_config_arguments, config_from_args, run_cli, setup_logging
from ctrkit.data import DataFormatError
from ctrkit.distributed import DistributedError
from ctrkit.training import DeviceError, TrainingError, format_result, train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    result = train(config_from_args(args))
    last = result["epochs"][-1] if result["epochs"] else {}
    print(format_result({"model": result["model"], "device": result["device"],
                         "epochs_trained": len(result["epochs"]), "samples": result["samples"],
                         "samples_per_s": round(result["samples_per_s"], 1), "loss": last.get("loss"),
                         "checkpoint": result["checkpoint"]}))
    return 0


if __name__ == "__main__":
    run_cli(main, (DataFormatError, DeviceError, DistributedError, TrainingError))
