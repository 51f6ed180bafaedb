"""Where Paddle Inference loses to ONNX Runtime on the same exported model, measured side by side.

    python benchmarks/engine_gap.py --model output/deepfm/inference [--batches 1,2048] [--threads 1]
        [--rounds 3] [--min_time_s 1] [--variants paddle,onnxruntime,...] [--out engine_gap.json]

Variants (each measured in its own fresh process, since engines built in one process share global state; rounds
repeat every variant in turn so that a busy machine slows all alike; every one is checked against the export's
golden batch):
  paddle             the predictor factory's configuration (ctrkit.inference: oneDNN off, IR passes on,
                     intermediates kept between runs: PredictorOptions.keep_intermediates)
  paddle stock       the same with Paddle's default eager deletion of intermediates (the factory before)
  paddle+fc          the factory's plus PIR's `matmul_add_act_fuse_pass` (matmul + bias + relu -> one `fc` op)
  paddle ir off      the factory's configuration with IR passes off
  paddle onednn      the factory's with oneDNN on (it deletes `inplace_pass`, which corrupts DeepFM)
  onnxruntime        model.onnx, CPU provider (ctrkit.inference.create_onnx_predictor)
For each: the process's CPU microseconds per call (CPU time, which a busy machine barely moves; it includes the
engine's helper threads), the calling thread's alone, and wall p50, at each batch size; and for the factory's
Paddle predictor the split of one call (calling thread): input validation, copy in (reshape + copy_from_cpu),
`run()`, copy out; plus the ops the optimised program runs per call (Paddle's profiler, in a child
process) against the ONNX graph's nodes. docs/benchmark.md explains the findings.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def tile(model, batch: int):
    import numpy as np
    dense, sparse, prob = model.golden()
    reps = -(-batch // len(dense))
    return (np.ascontiguousarray(np.tile(dense, (reps, 1))[:batch]),
            np.ascontiguousarray(np.tile(sparse, (reps, 1))[:batch]), np.tile(prob, reps)[:batch])


def paddle_variant(model, threads: int, onednn=False, ir_optim=True, keep=True, fc=False):
    """A Paddle predictor with ctrkit.inference's factory configuration; `keep=False` is Paddle's default eager
    deletion of intermediates (what the factory did before), `fc` adds PIR's `matmul_add_act_fuse_pass`."""
    import paddle
    from paddle import inference

    from ctrkit.inference import Predictor, PredictorOptions, _paddle_config
    options = PredictorOptions(cpu_threads=threads, onednn=onednn, ir_optim=ir_optim, check_golden=False,
                               keep_intermediates=keep)
    config = _paddle_config(model, options)
    if fc:
        config.enable_custom_passes(["matmul_add_act_fuse_pass"], False)
    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": -1.0 if keep else 0.0})  # as create_predictor does
    return Predictor(model, options, inference.create_predictor(config))


def measure(fn, min_time_s: float, min_iters: int) -> tuple[float, float, float]:
    """(CPU µs per call of the calling thread, wall p50 µs, CPU µs per call of the whole process: the calling
    thread's plus the engine's helper threads')."""
    walls = []
    cpu0, proc0, start = time.thread_time(), time.process_time(), time.perf_counter()
    while len(walls) < min_iters or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    n = len(walls)
    return ((time.thread_time() - cpu0) / n * 1e6, statistics.median(walls) * 1e6,
            (time.process_time() - proc0) / n * 1e6)


def breakdown(pred, dense, sparse, min_time_s: float) -> dict:
    """One factory predict() split into its parts (CPU µs per call)."""
    handles, out, native = pred._inputs, pred._output, pred._native

    def copy_in():
        for h, a in zip(handles, (dense, sparse)):
            h.reshape(a.shape)
            h.copy_from_cpu(a)
    copy_in()
    native.run()
    parts = {"validate": lambda: pred._check(dense, sparse), "copy_in": copy_in, "run": native.run,
             "copy_out": out.copy_to_cpu, "whole predict()": lambda: pred.predict(dense, sparse)}
    return {name: round(measure(fn, min_time_s, 20)[0], 1) for name, fn in parts.items()}


def op_counts(model_dir: str, batch: int, runs: int = 200) -> dict:
    """Ops per call of the factory's optimised program (Paddle's profiler, in a child process)."""
    code = f"""
import sys; sys.path.insert(0, {REPO!r})
from ctrkit.cpu_env import configure_cpu_env; configure_cpu_env()
from paddle import inference
from ctrkit.inference import load_exported_model, PredictorOptions, _paddle_config, Predictor
import paddle
sys.path.insert(0, {os.path.join(REPO, 'benchmarks')!r})
from engine_gap import tile
m = load_exported_model({model_dir!r})
config = _paddle_config(m, PredictorOptions())
config.enable_profile()
paddle.set_flags({{"FLAGS_eager_delete_tensor_gb": -1.0 if PredictorOptions().keep_intermediates else 0.0}})
p = Predictor(m, PredictorOptions(), inference.create_predictor(config))
d, s, _ = tile(m, {batch})
for _ in range({runs}):
    p.predict(d, s)
del p
"""
    with tempfile.TemporaryDirectory() as scratch:  # Paddle's profiler writes profile.log into the working directory
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=scratch)
    counts = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        match = re.match(r"^(pd_op\.\w+)\s+(\d+)\s", line)
        if match and match[1] not in counts:
            calls = int(match[2])
            if calls >= runs:  # per-call ops (not the one-off constants built at load)
                counts[match[1]] = round(calls / (runs + 1))
    return counts


def onnx_nodes(model_dir: str) -> dict:
    try:
        import onnx
    except ImportError:
        return {}
    graph = onnx.load(os.path.join(model_dir, "model.onnx"), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


VARIANTS = ("paddle", "paddle stock", "paddle+fc", "paddle ir off", "paddle onednn", "onnxruntime")


def build_variant(name: str, model, threads: int):
    from ctrkit.inference import create_onnx_predictor
    if name == "onnxruntime":
        return create_onnx_predictor(model, threads)
    return paddle_variant(model, threads, onednn=name == "paddle onednn", ir_optim=name != "paddle ir off",
                          keep=name != "paddle stock", fc=name == "paddle+fc")


def child(args) -> dict:
    """Measure one variant in this (fresh) process: engines built in one process share global state (oneDNN's
    settings, OpenMP threads), so each variant gets its own."""
    import numpy as np

    from ctrkit.inference import load_exported_model
    model = load_exported_model(args.model)
    pred = build_variant(args.variant, model, args.threads)
    out = {"variant": args.variant, "batches": {}}
    for b in args.batch_list:
        dense, sparse, expected = tile(model, b)
        diff = float(np.max(np.abs(pred.predict(dense, sparse) - expected)))
        cpu, wall, proc = measure(lambda: pred.predict(dense, sparse), args.min_time_s, 20 if b == 1 else 3)
        row = {"cpu_us": round(cpu, 1), "wall_p50_us": round(wall, 1), "process_cpu_us": round(proc, 1),
               "max_abs_diff": diff}
        if args.variant == "paddle":
            row["split_cpu_us"] = breakdown(pred, dense, sparse, args.min_time_s)
        if args.variant == "onnxruntime":
            feed = dict(zip(model.input_names, (dense, sparse)))
            row["session_run_cpu_us"] = round(measure(lambda: pred._session.run(pred._output_names, feed),
                                                      args.min_time_s, 20)[0], 1)
        out["batches"][str(b)] = row
    return out


def run_child(args, variant: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--batches", args.batches, "--threads",
           str(args.threads), "--min_time_s", str(args.min_time_s), "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant}: exit {proc.returncode}: {proc.stderr[-1500:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="export directory with model.onnx (tools/to_static.py --onnx)")
    p.add_argument("--batches", default="1,2048")
    p.add_argument("--threads", type=int, default=1, help="math threads (Paddle) / intra-op threads (ONNX Runtime)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each variant once per round, in its own "
                   "process); the median is reported")
    p.add_argument("--min_time_s", type=float, default=1.0, help="per variant, batch and round")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--variant", help=argparse.SUPPRESS)  # child mode: measure this one variant
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",") if b]
    from ctrkit.cpu_env import configure_cpu_env
    configure_cpu_env()
    if args.variant:
        print(json.dumps(child(args)))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    results: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for name in variants:
            results.setdefault(name, []).append(run_child(args, name))
        print(f"round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    med = lambda name, b, key: round(statistics.median(x["batches"][str(b)][key] for x in results[name]), 1)  # noqa
    table = {name: {b: {k: med(name, b, k) for k in ("cpu_us", "wall_p50_us", "process_cpu_us")} for b in
                    args.batch_list} for name in variants}
    diffs = {name: max(x["batches"][str(b)]["max_abs_diff"] for x in results[name] for b in args.batch_list)
             for name in variants}
    from ctrkit.inference import load_exported_model
    model = load_exported_model(args.model)
    ops = op_counts(model.directory, 1)  # the factory's program
    nodes = onnx_nodes(model.directory)
    lines = [f"Model {model.name} ({model.directory}); {args.threads} thread(s); median of {args.rounds} rounds, "
             f"each variant in its own process; load average {os.getloadavg()[0]:.2f}", "",
             "| variant | " + " | ".join(f"b={b} CPU µs/call (calling thread) | b={b} wall p50 µs"
                                         for b in args.batch_list) +
             " | max abs diff |", "| --- |" + " ---: | ---: |" * len(args.batch_list) + " ---: |"]
    for name in variants:
        cells = " | ".join(f"{table[name][b]['process_cpu_us']:,.1f} ({table[name][b]['cpu_us']:,.1f}) | "
                           f"{table[name][b]['wall_p50_us']:,.1f}" for b in args.batch_list)
        lines.append(f"| {name} | {cells} | {diffs[name]:.2g} |")
    for b in args.batch_list:
        if "paddle" in table and "onnxruntime" in table:
            ratio = table["paddle"][b]["process_cpu_us"] / table["onnxruntime"][b]["process_cpu_us"]
            split = results["paddle"][-1]["batches"][str(b)]["split_cpu_us"]
            ort_run = results["onnxruntime"][-1]["batches"][str(b)]["session_run_cpu_us"]
            lines.append(f"\nb={b}: Paddle (factory) / ONNX Runtime CPU per call = {ratio:.2f}x; one Paddle predict() "
                         "split (calling thread's CPU µs): " + ", ".join(f"{k} {v}" for k, v in split.items()) +
                         f"; ONNX Runtime session.run alone {ort_run} µs")
    lines.append(f"\nPaddle ops per call ({sum(ops.values())}): " + ", ".join(
        f"{k.split('.')[-1]} {v}" for k, v in sorted(ops.items())))
    lines.append(f"ONNX nodes ({sum(nodes.values())}): " + ", ".join(f"{k} {v}" for k, v in sorted(nodes.items())))
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": model.directory, "threads": args.threads, "table": {
                k: {str(b): v for b, v in t.items()} for k, t in table.items()}, "max_abs_diff": diffs,
                "rounds": results, "paddle_ops_per_call": ops, "onnx_nodes": nodes, "load_end": os.getloadavg()},
                f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
