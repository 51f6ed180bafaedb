"""Parsing throughput of the data layer in one process (one core): lines/s for slot and raw Criteo format.

    .venv/bin/python benchmarks/parse_bench.py [--rows 200000] [--repeat 3]

Generates --rows rows of synthetic Criteo-like data (ctrkit.data.synthetic, seed 1) in both formats in a
temporary directory (plus PaddleRec's real slot sample repeated to --rows lines when ../shared/data/criteo is
there: longer dense texts, some with exponents), then times, best of --repeat:
  parse    read the file in blocks and parse every line (what every reader pays)
  stream   iter_batches with batch 512 and a 100,000-row shuffle buffer (what the trainer sees)
  python   the per-line reference parser alone on 20,000 lines (the pure-Python baseline)
Rates are given per wall-clock second and per CPU second of this process (the latter is steadier on a busy
machine). Prints one JSON line; docs/data.md records results.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.data.parsing import _LINE_PARSERS
from ctrkit.data.reader import iter_parsed_blocks
from ctrkit.data.synthetic import generate_dataset

SHARED_SLOT_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                                  "criteo", "slot_sample.txt")


def timed(work, repeat: int) -> tuple[float, float, int]:
    """(best wall seconds, best CPU seconds, lines) of `work()` (which returns its line count)."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        lines = work()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, lines


def measure(path: str, fmt: str, spec: FeatureSpec, repeat: int) -> dict:
    def parse():
        return sum(len(p.batch.dense) for p in iter_parsed_blocks([path], spec))

    def stream():
        return sum(len(b.dense) for b in iter_batches(path, spec, 512, shuffle_buffer=100_000, seed=0))

    with open(path, "rb") as f:
        sample = [f.readline().rstrip(b"\n") for _ in range(20_000)]
    parse_line = _LINE_PARSERS[fmt]

    def python():
        for line in sample:
            parse_line(line, True, spec)
        return len(sample)

    result = {}
    for name, work in (("parse", parse), ("stream", stream), ("python", python)):
        wall, cpu, lines = timed(work, repeat)
        result[f"{name}_lines_per_s"] = round(lines / wall)
        result[f"{name}_lines_per_cpu_s"] = round(lines / cpu)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = FeatureSpec()
    report = {"rows": args.rows, "python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("slot", "raw"):
            generate_dataset(os.path.join(tmp, fmt), args.rows, 1, fmt=fmt, spec=spec)
            path = os.path.join(tmp, fmt, "part-00000.txt")
            report[fmt] = {"mb": round(os.path.getsize(path) / 1e6, 1), **measure(path, fmt, spec, args.repeat)}
        if os.path.isfile(SHARED_SLOT_SAMPLE):
            with open(SHARED_SLOT_SAMPLE, "rb") as f:
                lines = f.read().splitlines(keepends=True)
            path = os.path.join(tmp, "paddlerec_sample.txt")
            with open(path, "wb") as f:
                f.write(b"".join(lines[i % len(lines)] for i in range(args.rows)))
            report["slot_paddlerec_sample"] = {"mb": round(os.path.getsize(path) / 1e6, 1),
                                               **measure(path, "slot", spec, args.repeat)}
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
