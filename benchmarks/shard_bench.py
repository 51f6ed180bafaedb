"""Shard pipeline at scale: preparation speed and memory, shard reading speed and memory, text reading for contrast.

    python benchmarks/shard_bench.py --rows 10000000 [--work_dir output/shard_bench] [--workers 2]
    python benchmarks/shard_bench.py --input /data/criteo/train.txt --work_dir /data/shard_bench

With --rows, raw Criteo-like text is generated once (tools/gen_data.py, 8 files) in <work_dir>/raw. Then, each step
in its own process so that its peak RSS is its own:
1. tools/prepare_criteo.py (default split) -> lines/s, peak RSS of its largest process, text and shard bytes;
2. one shuffled pass over the train shards as the trainer reads them (verification included, batch 4096,
   shuffle_buffer 100000) -> samples/s, peak RSS;
3. one pass of the text reader over the same text (batch 4096, no shuffle) -> samples/s, peak RSS.
Writes <work_dir>/results.json and prints it; the load average before and after each step is recorded with it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def read_pass(kind: str, paths: list[str]) -> dict:
    """One pass over `paths` (shards: one directory, shuffled as training reads it; text: the text reader)."""
    start = time.perf_counter()
    samples = 0
    if kind == "shards":
        from ctrkit.shards import iter_shard_batches, open_shards

        batches = iter_shard_batches(open_shards(paths[0]), 4096, shuffle_buffer=100_000, seed=1)
    else:
        from ctrkit.data import FeatureSpec, iter_batches

        batches = iter_batches(paths, FeatureSpec(), 4096)
    for batch in batches:
        samples += len(batch.dense)
    seconds = time.perf_counter() - start
    return {"samples": samples, "seconds": round(seconds, 2), "samples_per_s": round(samples / seconds),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _step(name: str, args: list[str], results: dict, env: dict | None = None) -> dict:
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row.setdefault("peak_rss_mb", round(children_peak / 1024) if children_peak > before else None)
    row.update(load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2))
    results[name] = row
    print(name, json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", help="existing raw/slot text (instead of --rows)")
    parser.add_argument("--rows", type=int, help="generate this many raw rows")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work_dir", default=os.path.join(REPO, "output", "shard_bench"))
    parser.add_argument("--read", nargs="+", help=argparse.SUPPRESS)  # internal: KIND PATH...
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_pass(args.read[0], args.read[1:])))
        return 0
    if not args.input and not args.rows:
        parser.error("give --input or --rows")
    os.makedirs(args.work_dir, exist_ok=True)
    inputs = args.input or [os.path.join(args.work_dir, "raw")]
    if not args.input and not os.path.isdir(inputs[0]):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_data.py"), "--rows", str(args.rows),
                        "--seed", "3", "--format", "raw", "--files", "8", "--out", inputs[0]], check=True,
                       stdout=subprocess.DEVNULL)
    shards = os.path.join(args.work_dir, "shards")
    results: dict = {"nproc": os.cpu_count(), "text_bytes": sum(_tree_bytes(p) if os.path.isdir(p)
                                                                  else os.path.getsize(p) for p in inputs)}
    quiet = {**os.environ, "CTRKIT_NO_PROGRESS": "1"}
    if not os.path.isfile(os.path.join(shards, "prepare.json")):
        _step("prepare", [sys.executable, os.path.join(REPO, "tools", "prepare_criteo.py"), "--input", *inputs,
                          "--out", shards, "--workers", str(args.workers)], results, quiet)
    results["shard_bytes"] = _tree_bytes(shards)
    _step("read_shards", [sys.executable, __file__, "--read", "shards", os.path.join(shards, "train")], results)
    _step("read_text", [sys.executable, __file__, "--read", "text", *inputs], results)
    with open(os.path.join(args.work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
