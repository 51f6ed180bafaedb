"""Preprocess text once into binary shards for training and evaluation (see docs/scale.md).

    python tools/prepare_criteo.py --input train.txt --out data/criteo_shards
    python tools/trainer.py -m models/rank/deepfm/config.yaml \\
        -o runner.train_data_dir=data/criteo_shards/train -o runner.test_data_dir=data/criteo_shards/test
    python tools/prepare_criteo.py -m datasets/avazu/config.yaml --input avazu.csv --out data/avazu_shards

--input takes raw Criteo (train.txt, tab-separated) or slot-format files, or directories of them; with -m, the
files of the config's dataset schema (any declared schema: slot format, CSV / TSV). Lines are split
deterministically by --split ratios (a fixed pseudo-random function of --seed and the line's position) into
<out>/<split>/ shard directories. An interrupted run continues where it stopped when re-run with the same
arguments. The last line of output is a JSON summary: rows per split, lines read, skipped lines, lines/s.
The preprocessing (id space, dense scaling) is the defaults' or, with -m, exactly a training config's.
--verify re-checks every shard's size and SHA-256 against its manifest instead.
"""
import argparse
import json
import os

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads (MKL reads it then)

import models  # noqa: F401  (registers the model zoo: the config names a model)
from ctrkit.cli import (UserError, add_override_argument, join_overrides, progress_enabled, run_cli,
                        setup_logging)
from ctrkit.config import load_config
from ctrkit.data import DataFormatError, list_data_files
from ctrkit.data.spec import DATA_FORMATS, FeatureSpec
from ctrkit.prepare import (DEFAULT_BLOCK_BYTES, DEFAULT_LINES_PER_SHARD, DEFAULT_SPLITS, JOURNAL, PrepareError,
                            parse_splits, prepare)
from ctrkit.shards import ShardError, open_shards


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def split_ratios(text: str) -> dict[str, float]:
    try:
        return parse_splits(text)
    except PrepareError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def verify(out_dir: str) -> dict:
    journal_path = os.path.join(out_dir, JOURNAL)
    if not os.path.isfile(journal_path):
        raise PrepareError(f"{out_dir}: no {JOURNAL}; not a prepared directory")
    with open(journal_path, encoding="utf-8") as f:
        journal = json.load(f)
    if not journal["complete"]:
        raise PrepareError(f"{out_dir}: preparation did not finish; re-run tools/prepare_criteo.py to resume it")
    return {split: open_shards(os.path.join(out_dir, split)).rows for split in journal["options"]["splits"]}


def feature_spec(args: argparse.Namespace):  # -> FeatureSpec | FeatureSchema
    flags = {k: v for k, v in (("sparse_feature_number", args.sparse_feature_number),
                                ("data_format", args.data_format)) if v is not None}
    if not args.config:
        if args.opt:
            raise UserError("-o needs -m (a config to override)")
        return FeatureSpec(**flags)
    if flags:
        raise UserError(f"with -m the preprocessing comes from the config; drop --{', --'.join(flags)} "
                        f"(or set them with -o)")
    return load_config(args.config, join_overrides(args.opt)).schema()


def check_paths(inputs: list[str], out_dir: str) -> None:
    """Inputs that hold data files (not empty, no sub-directories) and an output path that can be a directory."""
    try:
        files = list_data_files(inputs)
    except (FileNotFoundError, ValueError) as exc:  # list_data_files' answers about the user's paths
        raise UserError(f"--input: {exc}") from None
    if not any(os.path.getsize(f) for f in files):
        raise UserError(f"--input: every input file is empty ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a directory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help="raw Criteo or slot-format files or directories (with -m: the "
                        "dataset schema's files)")
    parser.add_argument("--out", required=True, help="output directory (new, or an interrupted run's to resume)")
    default_splits = ",".join(f"{k}={v}" for k, v in DEFAULT_SPLITS.items())
    parser.add_argument("--split", type=split_ratios, default=DEFAULT_SPLITS,
                        help=f"split names and ratios summing to 1 (default {default_splits}; train=1 for no split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("-m", "--config", help="take the preprocessing (and the dataset schema, if it declares one) "
                        "from this training config (with -o overrides)")
    add_override_argument(parser)
    parser.add_argument("--data_format", choices=DATA_FORMATS, help="input format (default auto)")
    parser.add_argument("--sparse_feature_number", type=positive_int,
                        help="id space raw values are hashed into; must match the model's "
                             f"(default {FeatureSpec().sparse_feature_number})")
    parser.add_argument("--lines_per_shard", type=positive_int, default=DEFAULT_LINES_PER_SHARD,
                        help="input lines per shard (default %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="parsing processes (default: the number of cores, %(default)s)")
    parser.add_argument("--block_bytes", type=positive_int, default=DEFAULT_BLOCK_BYTES,
                        help="bytes of text per parsing task (default %(default)s)")
    parser.add_argument("--skip_bad_lines", action="store_true",
                        help="drop malformed lines (counted and logged) instead of stopping at the first")
    parser.add_argument("--verify", action="store_true", help="only verify the shards of --out")
    args = parser.parse_args()
    setup_logging()
    if args.verify:
        print(json.dumps({"verified": True, "rows": verify(args.out)}))
        return 0
    if not args.input:
        parser.error("--input is required (unless --verify)")
    spec = feature_spec(args)
    check_paths(args.input, args.out)
    summary = prepare(args.input, args.out, spec, splits=args.split, seed=args.seed,
                      lines_per_shard=args.lines_per_shard, workers=args.workers, skip_bad=args.skip_bad_lines,
                      block_bytes=args.block_bytes, progress=progress_enabled())
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_cli(main, (DataFormatError, PrepareError, ShardError))
