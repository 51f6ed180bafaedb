"""End-to-end benchmark of tools/paddle_infer.py: read a slot-format file, predict, write every prediction.

    python benchmarks/paddle_infer_bench.py [--rows 1840615] [--model_dir DIR] [--work_dir output/paddle_infer_bench]

The default size is the Criteo test set the original PaddleRec tutorial timed (4 min 32 s with batch 2048
and one CPU thread; 4 min 14 s on a V100). The data is generated once (ctrkit.data.synthetic, cached in
--work_dir); without --model_dir a DeepFM with the default hyper-parameters (the tutorial's model) is
exported with seeded random weights (the arithmetic is the same as for trained weights). Each
configuration runs paddle_infer.py as a user would, in its own process; the wall time is the whole
command, start-up included. Results: <work_dir>/results.json and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL_ROWS = 1_840_615

# (name, paddle_infer.py flags); batch 2048 everywhere, as in the tutorial
CONFIGURATIONS = [
    ("tutorial setting: oneDNN off, 1 thread, 1 process", ["--enable_mkldnn", "False", "--cpu_threads", "1",
                                                           "--num_workers", "0"]),
    ("oneDNN on, 1 thread, 1 process", ["--enable_mkldnn", "True", "--cpu_threads", "1", "--num_workers", "0"]),
    ("oneDNN on, 2 threads, 1 process", ["--enable_mkldnn", "True", "--cpu_threads", "2", "--num_workers", "0"]),
    ("oneDNN off, 1 thread, 2 workers", ["--enable_mkldnn", "False", "--cpu_threads", "1", "--num_workers", "2"]),
    ("oneDNN on, 1 thread, 2 workers", ["--enable_mkldnn", "True", "--cpu_threads", "1", "--num_workers", "2"]),
]


def ensure_data(work_dir: str, rows: int) -> str:
    from ctrkit.data.synthetic import generate_dataset

    data_dir = os.path.join(work_dir, f"slot-{rows}")
    stamp = data_dir + ".done"
    if not os.path.isfile(stamp):
        print(f"generating {rows} slot-format rows in {data_dir} ...", flush=True)
        generate_dataset(data_dir, rows, seed=20240, fmt="slot")
        open(stamp, "w").close()
    return data_dir


def ensure_model(work_dir: str, data_dir: str, onnx: bool = False) -> str:
    """The seeded default DeepFM (seed 2024, default hyper-parameters: the tutorial's model) exported into
    `work_dir` once, golden rows from `data_dir`; `onnx`: with its ONNX twin, so one export serves both backends."""
    import paddle

    from ctrkit.data.spec import FeatureSpec
    from ctrkit.export import export_model, read_golden_rows
    from ctrkit.inference import META_FILE
    from models.registry import build_model, get_model_class

    model_dir = os.path.join(work_dir, "deepfm-default-onnx" if onnx else "deepfm-default")
    if not os.path.isfile(os.path.join(model_dir, META_FILE)):
        paddle.seed(2024)
        model = build_model("deepfm", get_model_class("deepfm").default_hyper_parameters())
        spec = FeatureSpec(sparse_feature_number=model.hp["sparse_feature_number"], data_format="slot")
        dense, sparse = read_golden_rows(data_dir, spec)
        export_model(model, model_dir, feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                     golden_source=data_dir, onnx=onnx)
    return model_dir


def run_configuration(model_dir: str, data_dir: str, rows: int, work_dir: str, name: str, flags: list[str]) -> dict:
    log_path = os.path.join(work_dir, "paddle_infer.jsonl")
    output = os.path.join(work_dir, "predictions.txt")
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "paddle_infer.py"), "--model_dir", model_dir,
               "--data_dir", data_dir, "--batchsize", "2048", "--output", output, "--save_log_path", log_path, *flags]
    load_before = os.getloadavg()[0]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command and its worker processes: less sensitive than wall time to a busy machine
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    if result.returncode != 0:
        return {"name": name, "flags": flags, "error": result.stderr.strip().splitlines()[-1:]}
    with open(log_path, encoding="utf-8") as f:
        record = json.loads(f.read().splitlines()[-1])
    with open(output, "rb") as f:
        lines = sum(1 for _ in f)
    if lines != rows or record["samples"] != rows:
        raise RuntimeError(f"{name}: expected {rows} predictions, got {lines} lines / {record['samples']} samples")
    os.remove(output)
    return {"name": name, "flags": flags, "command_wall_s": round(wall, 2), "command_cpu_s": round(cpu, 1),
            "end_to_end_samples_per_s": round(rows / wall, 1), "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2), "record": record}


def markdown(results: list[dict], rows: int) -> str:
    lines = [f"| configuration (batch 2048, {rows:,} lines) | wall s | samples/s | CPU s | batch p50 / p99 ms | "
             "parse s | infer s | load before/after |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | | | |")
            continue
        rec = r["record"]
        lines.append(f"| {r['name']} | {r['command_wall_s']} | {r['end_to_end_samples_per_s']:,.0f} | "
                     f"{r['command_cpu_s']} | "
                     f"{rec['latency_ms']['p50']} / {rec['latency_ms']['p99']} | {rec['preprocess_s']} | "
                     f"{rec['inference_s']} | {r['load_avg_1m_before']} / {r['load_avg_1m_after']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=TUTORIAL_ROWS)
    parser.add_argument("--model_dir", help="an export directory (default: export a default-size DeepFM)")
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "output", "paddle_infer_bench"))
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only configurations whose name contains TEXT (repeatable)")
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    data_dir = ensure_data(args.work_dir, args.rows)
    model_dir = args.model_dir or ensure_model(args.work_dir, data_dir)
    selected = [(n, f) for n, f in CONFIGURATIONS if not args.only or any(t in n for t in args.only)]
    results = []
    for name, flags in selected:
        print(f"running: {name} ...", flush=True)
        results.append(run_configuration(model_dir, data_dir, args.rows, args.work_dir, name, flags))
    summary = {"rows": args.rows, "model_dir": model_dir, "machine": {
        "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version()}, "results": results}
    with open(os.path.join(args.work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(markdown(results, args.rows))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
