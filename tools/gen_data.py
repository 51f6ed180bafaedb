"""Generate data with a planted click model whose true click probabilities are known.

    python tools/gen_data.py --rows 400000 --seed 1 --format slot --out data/synthetic/train
    python tools/gen_data.py --config datasets/movielens/config.yaml --rows 100000 --seed 1 --out data/movielens/train
    python tools/gen_data.py --profile criteo_sparse --rows 200000 --seed 1 --out data/criteo_sparse/train

writes only data files (part-NNNNN.txt / .csv / .tsv) into --out, so it is directly usable as a data dir, and each
row's true click probability (one per line, same order) to --truth (default: <out>.truth.txt beside it). Without
--config the data is Criteo's (13 dense, 26 categorical; slot or raw); with --config it follows the config's
`dataset:` block (its format, header, columns, label, numeric / categorical / multi-valued fields). Sets made with
different --seed share one ground truth (fixed by --truth_seed): train on one seed, test on another. An existing
data set in --out (or truth file) is replaced only with --overwrite. The last line of output is
{"rows":..,"positive_rate":..,"bayes_auc":..,"bayes_logloss":..} (labels vs true probabilities: the best any
model can do on this set). See docs/data.md.
"""
import argparse
import os

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before anything imports paddle (see ctrkit/cpu_env.py)

from ctrkit.cli import run_cli
from ctrkit.data.spec import FeatureSpec
from ctrkit.data.synthetic import DEFAULT_TRUTH_SEED, _PART_PATTERN, generate_dataset, summary_line
from ctrkit.data.synthetic_schema import PROFILES, generate_schema_dataset
from ctrkit.schema import criteo_schema, schema_from_config_file


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def existing_outputs(out: str, truth: str) -> list[str]:
    found = []
    if os.path.isdir(out):
        found += [os.path.join(out, n) for n in sorted(os.listdir(out)) if _PART_PATTERN.fullmatch(n)]
    if os.path.isfile(truth):
        found.append(truth)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive_int, required=True, help="number of rows (samples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows (default 0)")
    parser.add_argument("-m", "--config", help="a config with a `dataset:` block: generate data of that schema")
    parser.add_argument("--profile", choices=PROFILES, default="default",
                        help="default: small vocabularies (3-300 values per field); criteo_sparse: Criteo's "
                             "published per-column cardinalities (up to ~10M) with heavy-tailed frequencies")
    parser.add_argument("--format", choices=("slot", "raw", "csv", "tsv"),
                        help="Criteo: slot (PaddleRec slot format, default) or raw (tab-separated); a schema: its "
                             "own format by default (csv/tsv with header, or slot)")
    parser.add_argument("--out", required=True, help="output data directory (created; must hold no other files)")
    parser.add_argument("--truth", help="file for the true click probabilities (default: <out>.truth.txt)")
    parser.add_argument("--truth_seed", type=int, default=DEFAULT_TRUTH_SEED,
                        help=f"seed of the ground-truth click model (default {DEFAULT_TRUTH_SEED})")
    parser.add_argument("--files", type=positive_int, default=1, help="number of data files (default 1)")
    parser.add_argument("--no_label", action="store_true",
                        help="omit the label (test/serving input); the rows are otherwise the same")
    parser.add_argument("--sparse_feature_number", type=positive_int, default=None,
                        help="size of the id space the categorical values are hashed into (default: the config's "
                             f"hyper_parameters.sparse_feature_number, else {FeatureSpec().sparse_feature_number})")
    parser.add_argument("--interaction_scale", type=float, default=1.0,
                        help="Criteo default profile: strength of the planted pairwise interactions "
                             "(default 1: mild; 3: dominant)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the data files in --out and the truth file of an earlier run (without it, "
                             "an existing data set is an error, so runs never mix)")
    args = parser.parse_args()
    truth = args.truth or args.out.rstrip("/") + ".truth.txt"
    if args.config:
        schema = schema_from_config_file(args.config, args.sparse_feature_number)
    else:
        schema = criteo_schema(args.sparse_feature_number or FeatureSpec().sparse_feature_number)
    old = existing_outputs(args.out, truth)
    if old and args.overwrite:
        print(f"--overwrite: removing {len(old)} file(s) of an earlier run: {', '.join(old[:4])}"
              + (", ..." if len(old) > 4 else ""))
    spec = schema.feature_spec()
    if spec is not None and args.profile == "default":  # Criteo: today's generator, byte for byte
        if args.format not in (None, "slot", "raw"):
            raise ValueError(f"Criteo data is written as slot or raw, not {args.format}")
        fmt = args.format or "slot"
        summary = generate_dataset(args.out, args.rows, args.seed, fmt=fmt, files=args.files, truth_path=truth,
                                   truth_seed=args.truth_seed, with_labels=not args.no_label,
                                   spec=FeatureSpec(sparse_feature_number=spec.sparse_feature_number,
                                                    dense_min=spec.dense_min, dense_diff=spec.dense_diff),
                                   interaction_scale=args.interaction_scale, overwrite=args.overwrite)
    else:
        if args.interaction_scale != 1.0:
            raise ValueError("--interaction_scale applies to the default Criteo generator only")
        from ctrkit.data.synthetic_schema import output_format

        fmt = output_format(schema, args.format)
        summary = generate_schema_dataset(args.out, schema, args.rows, args.seed, fmt=fmt, files=args.files,
                                          truth_path=truth, truth_seed=args.truth_seed,
                                          with_labels=not args.no_label, profile=args.profile,
                                          overwrite=args.overwrite)
    print(f"wrote {args.rows} rows ({schema.name} schema, {fmt} format) in {args.files} file(s) to {args.out}; "
          f"true click probabilities in {truth}")
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    run_cli(main, (ValueError, OSError))
