"""Convert raw Criteo files (tab-separated: label, I1..I13, C1..C26), or the files of any declared schema (CSV / TSV,
`-m config.yaml` with a `dataset:` block), to PaddleRec slot format.

    python tools/convert.py --input day_0.txt --output day_0.slot.txt
    python tools/convert.py --input raw_dir/ --output slot_dir/ [--skip_bad_lines]
    python tools/convert.py -m datasets/movielens/config.yaml --input data/movielens/train --output data/ml_slot/train

With -m, the output uses the schema's slot names: the label as 0/1 (a threshold is applied), every numeric field
(model-space values), every single-valued field (0 when missing) and a token per id of each multi-valued field;
the last output line then also gives "dataset", the `dataset:` block that reads the converted files.

Dense values are scaled with PaddleRec's (x - min) / diff and written so that they read back as the same
float32; categorical values become ids with the documented FNV-1a hash (docs/data.md). A directory converts to a
directory of same-named files. A malformed line stops the conversion (naming file and line) unless
--skip_bad_lines, which drops such lines and reports how many. The last line of output is
{"files":..,"lines":..,"skipped":..}.
"""
import argparse
import json
import sys

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before anything imports paddle (see ctrkit/cpu_env.py)

from ctrkit.cli import run_cli
from ctrkit.data import FeatureSpec, convert_to_slot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="raw Criteo file or directory")
    parser.add_argument("--output", required=True, help="output file (for a file input) or directory")
    parser.add_argument("--skip_bad_lines", action="store_true", help="drop malformed lines and count them")
    parser.add_argument("--sparse_feature_number", type=int, default=FeatureSpec().sparse_feature_number,
                        help="size of the slot id space (default %(default)s); must match the model's")
    parser.add_argument("-m", "--config", help="a config whose `dataset:` block describes the input files")
    args = parser.parse_args()
    spec = FeatureSpec(sparse_feature_number=args.sparse_feature_number, data_format="raw")
    summary_extra = {}
    if args.config:
        from ctrkit.data.writer import slot_schema
        from ctrkit.schema import schema_from_config_file

        flagged = "--sparse_feature_number" in sys.argv
        spec = schema_from_config_file(args.config, args.sparse_feature_number if flagged else None)
        if spec.is_criteo:
            spec = spec.feature_spec()
        else:
            dataset = slot_schema(spec).to_dict()
            summary_extra["dataset"] = {k: v for k, v in dataset.items() if k not in ("version", "columns")}
    result = convert_to_slot(args.input, args.output, spec, skip_bad=args.skip_bad_lines)
    if result["skipped"]:
        print(f"warning: skipped {result['skipped']} malformed line(s); first: {result['first_skipped']}",
              file=sys.stderr)
    print(json.dumps({**{k: result[k] for k in ("files", "lines", "skipped")}, **summary_extra}))
    return 0


if __name__ == "__main__":
    run_cli(main, (ValueError, OSError))
