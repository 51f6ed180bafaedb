"""Generate Criteo-like data with a planted click model whose true click probabilities are known.

    python tools/gen_data.py --rows 400000 --seed 1 --format slot --out data/synthetic/train

writes only data files (part-NNNNN.txt) into --out, so it is directly usable as a data dir, and each row's true
click probability (one per line, same order) to --truth (default: <out>.truth.txt beside it). Sets made with
different --seed share one ground truth (fixed by --truth_seed): train on one seed, test on another. The last
line of output is {"rows":..,"positive_rate":..,"bayes_auc":..,"bayes_logloss":..} (labels vs true
probabilities: the best any model can do on this set). See docs/data.md.
"""
import argparse

from ctrkit.cli import run_cli
from ctrkit.data.spec import FeatureSpec
from ctrkit.data.synthetic import DEFAULT_TRUTH_SEED, generate_dataset, summary_line


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=positive_int, required=True, help="number of rows (samples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows (default 0)")
    parser.add_argument("--format", choices=("slot", "raw"), default="slot",
                        help="slot: PaddleRec slot format (default); raw: tab-separated raw Criteo")
    parser.add_argument("--out", required=True, help="output data directory (created; must hold no other files)")
    parser.add_argument("--truth", help="file for the true click probabilities (default: <out>.truth.txt)")
    parser.add_argument("--truth_seed", type=int, default=DEFAULT_TRUTH_SEED,
                        help=f"seed of the ground-truth click model (default {DEFAULT_TRUTH_SEED})")
    parser.add_argument("--files", type=positive_int, default=1, help="number of data files (default 1)")
    parser.add_argument("--no_label", action="store_true",
                        help="omit the click label (test/serving input); the rows are otherwise the same")
    parser.add_argument("--sparse_feature_number", type=positive_int, default=FeatureSpec().sparse_feature_number,
                        help="size of the slot id space the categorical values are hashed into (default %(default)s)")
    parser.add_argument("--interaction_scale", type=float, default=1.0,
                        help="strength of the planted pairwise interactions (default 1: mild; 3: dominant)")
    args = parser.parse_args()
    spec = FeatureSpec(sparse_feature_number=args.sparse_feature_number)
    truth = args.truth or args.out.rstrip("/") + ".truth.txt"
    summary = generate_dataset(args.out, args.rows, args.seed, fmt=args.format, files=args.files, truth_path=truth,
                               truth_seed=args.truth_seed, with_labels=not args.no_label, spec=spec,
                               interaction_scale=args.interaction_scale)
    print(f"wrote {args.rows} rows ({args.format} format) in {args.files} file(s) to {args.out}; "
          f"true click probabilities in {truth}")
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    run_cli(main, (ValueError, OSError))
