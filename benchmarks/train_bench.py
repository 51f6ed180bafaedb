"""DeepFM (MLP 400-400-400) training throughput on CPU, before and after the speed-ups in ctrkit.training.

    python benchmarks/train_bench.py [--rows 300000] [--batch_sizes 512,2048,4096] [--cells compute,text,shards]
                                     [--variants before,after] [--work_dir output/train_bench]
    # DeepFM at batch 4096 on each example dataset schema, next to Criteo (issue 13):
    python benchmarks/train_bench.py --cells text,avazu,movielens,criteo_slot --batch_sizes 4096 --variants after

Cells, each in a fresh process (its environment, threads and peak RSS are its own):
- compute: training steps (forward, backward, Adam, loss/prediction read-back) on batches already in memory as
  tensors: what the model itself costs.
- text: `ctrkit.training.train`, one epoch over the text files (parsed by one DataLoader worker), end to end.
- shards: the same over binary shards of the same rows (`tools/prepare_criteo.py`), end to end.
- avazu, movielens, criteo_slot (any folder of datasets/ with a config.yaml): `ctrkit.training.train` of
  datasets/<name>/config.yaml's DeepFM, one epoch over --rows rows generated for that schema
  (`tools/gen_data.py -m datasets/<name>/config.yaml`), end to end like `text`.
Variants: "before" is how the trainer ran before (MKL's default kernels, one math thread, each id occurrence looked
up separately); "after" is the default now (MKL_DEBUG_CPU_TYPE=5 on AMD, set by ctrkit; all cores; unique id lookups).
The data (generated with tools/gen_data.py, seed 7) and its shards are made once in --work_dir. Every row records
the load average before and after it: numbers taken on a busy machine are not comparable; --repeat N runs each cell
N times and reports the best (other processes only ever slow a run down) next to all runs. Writes
<work_dir>/results.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads in this process or its workers (MKL reads it then)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_OVERRIDES = ["runner.cpu_threads=1", "runner.unique_id_lookups=false"]


def _config(train_dir: str, save_dir: str, batch: int, variant: str, path: str | None = None):
    from ctrkit.config import load_config
    from models.registry import default_config_path

    overrides = [f"runner.train_data_dir={train_dir}", f"runner.model_save_path={save_dir}",
                 f"runner.train_batch_size={batch}", "runner.epochs=1", "runner.resume=false",
                 "runner.print_interval=1000000", "runner.num_workers=1"]
    return load_config(path or default_config_path("deepfm"),
                       overrides + (BEFORE_OVERRIDES if variant == "before" else []))


def _compute_cell(shard_dir: str, batch: int, variant: str, samples: int) -> float:
    """Samples/s of training steps on in-memory batches (the step of ctrkit.training.train_one_epoch)."""
    import paddle
    import paddle.nn.functional as F

    from ctrkit.shards import iter_shard_batches, open_shards
    from ctrkit.training import UniqueIdLookups, build_optimizer, seed_everything, start_run
    from models.registry import build_model

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(shard_dir, tmp, batch, variant)
    start_run(config)
    seed_everything(0)
    model = build_model("deepfm", config.hyper_parameters)
    optimizer = build_optimizer(model, config.hyper_parameters["optimizer"])
    if config.runner["unique_id_lookups"]:
        UniqueIdLookups(model)
    batches = []
    for b in iter_shard_batches(open_shards(shard_dir), batch, shuffle_buffer=100_000, seed=1, drop_last=True):
        batches.append(tuple(paddle.to_tensor(a) for a in b))
        if len(batches) * batch >= 200_000:
            break
    steps = max(10, samples // batch)

    def step(i: int) -> None:
        dense, sparse, label = batches[i % len(batches)]
        prob = model(dense, sparse)
        loss_sum = F.binary_cross_entropy(prob, label, reduction="sum")
        (loss_sum * (1.0 / batch)).backward()
        optimizer.step()
        optimizer.clear_grad(set_to_zero=False)
        float(loss_sum), prob.numpy()

    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - start)


def _train_cell(data_dir: str, batch: int, variant: str, config_path: str | None = None) -> float:
    from ctrkit.training import train

    with tempfile.TemporaryDirectory() as tmp:
        return train(_config(data_dir, tmp, batch, variant, config_path))["samples_per_s"]


def dataset_config(name: str) -> str:
    return os.path.join(REPO, "datasets", name, "config.yaml")


def prepare_schema_data(work_dir: str, name: str, rows: int) -> str:
    """--rows rows of datasets/<name>'s schema (generated once into <work_dir>/<name>)."""
    out = os.path.join(work_dir, name)
    if not os.path.isdir(out):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_data.py"), "-m", dataset_config(name),
                        "--rows", str(rows), "--seed", "7", "--out", out], check=True, stdout=subprocess.DEVNULL)
    return out


def run_cell(cell: dict) -> dict:
    os.environ["CTRKIT_NO_PROGRESS"] = "1"
    if cell["kind"] == "compute":
        rate = _compute_cell(cell["shards"], cell["batch"], cell["variant"], cell["samples"])
    elif cell["kind"] not in ("text", "shards"):
        rate = _train_cell(cell["data"], cell["batch"], cell["variant"], dataset_config(cell["kind"]))
    else:
        rate = _train_cell(cell["shards"] if cell["kind"] == "shards" else cell["text"], cell["batch"],
                           cell["variant"])
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples_per_s": round(rate), "peak_rss_mb": round(peak_rss_mb)}


def prepare_data(work_dir: str, rows: int) -> tuple[str, str]:
    text, shards = os.path.join(work_dir, "text"), os.path.join(work_dir, "shards")
    if not os.path.isdir(text):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_data.py"), "--rows", str(rows), "--seed",
                        "7", "--format", "slot", "--out", text], check=True, stdout=subprocess.DEVNULL)
    if not os.path.isfile(os.path.join(shards, "train", "manifest.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_criteo.py"), "--input", text, "--out",
                        shards, "--split", "train=1"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "CTRKIT_NO_PROGRESS": "1"})
    return text, os.path.join(shards, "train")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the generated training set")
    parser.add_argument("--batch_sizes", default="512,2048,4096")
    parser.add_argument("--cells", default="compute,text,shards")
    parser.add_argument("--variants", default="before,after")
    parser.add_argument("--compute_samples", type=int, default=150_000, help="samples per compute cell")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is reported")
    parser.add_argument("--work_dir", default=os.path.join(REPO, "output", "train_bench"))
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell (JSON) and print its result
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return 0
    unknown = [k for k in args.cells.split(",") if k not in ("compute", "text", "shards")
               and not os.path.isfile(dataset_config(k))]
    if unknown:
        parser.error(f"unknown cell(s) {unknown}: compute, text, shards or a folder of datasets/ with a config.yaml")
    os.makedirs(args.work_dir, exist_ok=True)
    text, shards = prepare_data(args.work_dir, args.rows)
    results = []
    print("| cell | variant | batch | samples/s (best) | all runs | peak RSS MB | load before -> after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.cells.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            for variant in args.variants.split(","):
                cell = {"kind": kind, "variant": variant, "batch": batch, "text": text, "shards": shards,
                        "samples": args.compute_samples}
                if kind not in ("compute", "text", "shards"):
                    cell["data"] = prepare_schema_data(args.work_dir, kind, args.rows)
                env = dict(os.environ)
                if variant == "before":
                    env["MKL_DEBUG_CPU_TYPE"] = ""  # set but empty: MKL's own choice (ctrkit keeps a set value)
                load_before = os.getloadavg()[0]
                runs = [json.loads(subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], env=env,
                                                  check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                        for _ in range(args.repeat)]
                best = max(runs, key=lambda r: r["samples_per_s"])
                row = {**cell, **best, "runs": [r["samples_per_s"] for r in runs],
                       "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
                results.append(row)
                print(f"| {kind} | {variant} | {batch} | {row['samples_per_s']} | {row['runs']} | "
                      f"{row['peak_rss_mb']} | {row['load_before']} -> {row['load_after']} |", flush=True)
    with open(os.path.join(args.work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"nproc": os.cpu_count(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
