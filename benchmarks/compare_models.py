"""Compare the model zoo on one generated benchmark set: parameters, training speed, test AUC and logloss.

    python benchmarks/compare_models.py [--rows 1000000] [--test_rows 200000] [--models fm,deepfm,...]
                                        [--epochs 1] [--work_dir output/compare_models] [-o KEY=VALUE ...]

Generates (once, cached in --work_dir) a training set and a test set with tools/gen_data.py (fixed seeds, one shared
ground truth with first-order and pairwise effects, so the test set's Bayes AUC / logloss are known), then trains
every model from its own models/rank/<name>/config.yaml for --epochs epochs through ctrkit.training.train and scores
it with ctrkit.training.evaluate, each model in a fresh process. Writes <work_dir>/results.md (a Markdown table,
with the published BARS Criteo_x1 AUCs beside it, labelled as not measured here) and <work_dir>/results.json.
-o overrides apply to every model's config (e.g. -o runner.train_batch_size=1024).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import time
import traceback

from ctrkit.cpu_env import configure_cpu_env

configure_cpu_env()  # before paddle loads in this process or its workers (MKL reads it then)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_DATA = os.path.join(REPO, "tools", "gen_data.py")
TRAIN_SEED, TEST_SEED = 101, 202

# Published test AUC / logloss on Criteo_x1 (BARS, Zhu et al. 2022, "BARS: Towards Open Benchmarking for
# Recommender Systems", https://arxiv.org/abs/2205.09626; table:
# https://github.com/reczoo/BARS/blob/main/docs/CTR/leaderboard/criteo_x1.csv). Real Criteo, tuned, many epochs:
# context only, NOT measured here and not comparable with the synthetic numbers beside them.
BARS_CRITEO_X1 = {
    "logistic_regression": ("LR", 0.7886, 0.4609),
    "fm": ("FM", 0.8022, 0.4491),
    "ffm": ("FFM", 0.8060, 0.4456),
    "dnn": ("DNN", 0.8137, 0.4382),
    "wide_deep": ("Wide&Deep", 0.8139, 0.4380),
    "deepfm": ("DeepFM", 0.8137, 0.4381),
    "dcn": ("DCN", 0.8138, 0.4381),
    "dcn_v2": ("DCN-V2", 0.8142, 0.4378),
    "xdeepfm": ("xDeepFM", 0.8139, 0.4380),
    "dlrm": ("DLRM", 0.8138, 0.4382),
}


def generate(work_dir: str, name: str, rows: int, seed: int, interaction_scale: float,
             gen_args: list[str] | None = None) -> dict:
    """tools/gen_data.py into <work_dir>/data/<name> (reused when the same request was generated before);
    `gen_args`: more tools/gen_data.py flags (e.g. ["--profile", "criteo"])."""
    out = os.path.join(work_dir, "data", name)
    meta_path = out + ".json"
    request = {"rows": rows, "seed": seed, "interaction_scale": interaction_scale, "gen_args": gen_args or []}
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("request") == request and os.path.isdir(out):
            return meta
    shutil.rmtree(out, ignore_errors=True)
    other_profile = any(a.startswith("--profile") and not a.endswith("default") for a in (gen_args or [])) and \
        "default" not in (gen_args or [])
    scale = [] if other_profile else ["--interaction_scale", str(interaction_scale)]  # the default profile's knob
    command = [sys.executable, GEN_DATA, "--rows", str(rows), "--seed", str(seed), "--format", "slot",
               "--out", out, "--truth", out + ".truth.txt", *scale, *(gen_args or [])]
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"tools/gen_data.py failed (exit status {done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    meta = {"request": request, "dir": out, "summary": summary}
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def run_model(name: str, train_dir: str, test_dir: str, save_dir: str, epochs: int, overrides: list[str],
              every_epoch: bool = False) -> dict:
    """Train and evaluate one model (called in a fresh process); `every_epoch`: score every epoch's checkpoint
    (`epoch_auc`, `epoch_logloss`: does a second epoch overfit?), else the last one."""
    os.environ["CTRKIT_NO_PROGRESS"] = "1"
    import paddle

    from ctrkit.config import load_config
    from ctrkit.training import evaluate, train
    from models.registry import default_config_path

    shutil.rmtree(save_dir, ignore_errors=True)
    config = load_config(default_config_path(name), [
        f"runner.train_data_dir={train_dir}", f"runner.test_data_dir={test_dir}", f"runner.epochs={epochs}",
        f"runner.model_save_path={save_dir}", f"runner.infer_load_path={save_dir}",
        f"runner.infer_start_epoch={0 if every_epoch else epochs - 1}", f"runner.infer_end_epoch={epochs}",
        "runner.resume=false",
        *overrides])
    start = time.perf_counter()
    trained = train(config)
    train_seconds = time.perf_counter() - start
    state = paddle.load(os.path.join(trained["checkpoint"], "rec.pdparams"))
    parameters = sum(math.prod(tensor.shape) for tensor in state.values())
    every = evaluate(config)
    scored = every[-1]
    per_epoch = {"epoch_auc": [r["auc"] for r in every], "epoch_logloss": [r["logloss"] for r in every]} \
        if every_epoch else {}
    return {**per_epoch, "model": name, "parameters": parameters, "train_samples": trained["samples"],
            "train_samples_per_s": trained["samples_per_s"], "train_seconds": train_seconds,
            "test_auc": scored["auc"], "test_logloss": scored["logloss"], "test_samples": scored["samples"],
            "hyper_parameters": {k: v for k, v in config.hyper_parameters.items() if k != "optimizer"},
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def _child(results, *args) -> None:
    try:
        results.put(("ok", run_model(*args)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def run_isolated(name: str, *args) -> dict:
    """run_model in a fresh (non-daemonic: the trainer starts DataLoader workers) process; a failure becomes
    {"model": name, "error": ...} so one broken model does not lose the others' results."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(results, name, *args))
    process.start()
    while True:
        try:
            status, payload = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                status, payload = "error", f"worker process died with exit code {process.exitcode}"
                break
    process.join()
    if status == "error":
        print(f"{name} FAILED:\n{payload}", file=sys.stderr, flush=True)
        return {"model": name, "error": payload.strip().splitlines()[-1]}
    return payload


def markdown(results: list[dict], train_meta: dict, test_meta: dict, info: dict) -> str:
    test = test_meta["summary"]
    lines = [
        "## Model comparison on one generated set",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['machine']}; Python {info['python']}, paddlepaddle {info['paddle']}; "
        f"load average before / after: {info['load_before']} / {info['load_after']}.  ",
        f"Data: tools/gen_data.py, {train_meta['summary']['rows']:,} training rows (seed {TRAIN_SEED}), "
        f"{test['rows']:,} test rows (seed {TEST_SEED}), "
        + (f"flags `{' '.join(train_meta['request']['gen_args'])}`, " if train_meta['request'].get('gen_args')
           else f"interaction scale {train_meta['request']['interaction_scale']}, ")
        + f"positive rate {test['positive_rate']:.3f}; "
        f"{info['epochs']} epoch(s), each model with its own config.yaml.  ",
        f"Bayes (true click probabilities) on the test set: AUC **{test['bayes_auc']:.4f}**, "
        f"logloss **{test['bayes_logloss']:.4f}**.",
        "",
        "| model | parameters | train samples/s | test AUC | test logloss | AUC / Bayes AUC "
        "| BARS Criteo_x1 AUC (not measured here) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        bars = BARS_CRITEO_X1.get(r["model"])
        bars_text = f"{bars[1]:.4f} ({bars[0]})" if bars else "not in BARS"
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | {bars_text} |")
            continue
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['train_samples_per_s']:,.0f} | {r['test_auc']:.4f} "
                     f"| {r['test_logloss']:.4f} | {r['test_auc'] / test['bayes_auc']:.3f} | {bars_text} |")
    lines += [
        f"| Bayes (true CTR) | | | {test['bayes_auc']:.4f} | {test['bayes_logloss']:.4f} | 1.000 | |",
        "",
        "Training samples/s include reading and parsing the data files (the trainer's real loop). The BARS column is",
        "the published Criteo_x1 test AUC (real Criteo, tuned, early-stopped over many epochs; Zhu et al. 2022,",
        "https://arxiv.org/abs/2205.09626, https://github.com/reczoo/BARS/blob/main/docs/CTR/leaderboard/criteo_x1.csv):",
        "context for how the models rank on real data, not a number measured here.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from models.registry import available_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (default 1,000,000)")
    parser.add_argument("--test_rows", type=int, default=200_000, help="test rows (default 200,000)")
    parser.add_argument("--models", default=",".join(available_models()), help="comma-separated model names")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval_every_epoch", action="store_true",
                        help="score every epoch's checkpoint (epoch_auc / epoch_logloss in the JSON lines)")
    parser.add_argument("--interaction_scale", type=float, default=3.0,
                        help="strength of the planted pairwise interactions (default 3: interactions matter, so the "
                             "comparison separates interaction models from logistic regression)")
    parser.add_argument("--gen_args", default="", help="more tools/gen_data.py flags for both sets, e.g. "
                                                       "\"--profile criteo\" (Criteo's cardinalities)")
    parser.add_argument("--work_dir", default=os.path.join(REPO, "output", "compare_models"))
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep every model's checkpoints")
    from ctrkit.cli import add_override_argument, join_overrides

    add_override_argument(parser)  # -o k=v k=v (PaddleRec) or repeated -o: applied to every model
    args = parser.parse_args(argv)
    args.opt = join_overrides(args.opt or [])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(available_models()))
    if unknown or not models or args.rows < 1 or args.test_rows < 1 or args.epochs < 1:
        parser.error(f"unknown model(s) {unknown}; available: {', '.join(available_models())}" if unknown
                     else "--models, --rows, --test_rows and --epochs must be non-empty / positive")

    import paddle

    work_dir = os.path.abspath(args.work_dir)
    info = {"command": "python benchmarks/compare_models.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.system()}",
            "python": platform.python_version(), "paddle": paddle.__version__, "epochs": args.epochs,
            "load_before": [round(v, 2) for v in os.getloadavg()]}
    gen_args = shlex.split(args.gen_args)
    train_meta = generate(work_dir, "train", args.rows, TRAIN_SEED, args.interaction_scale, gen_args)
    test_meta = generate(work_dir, "test", args.test_rows, TEST_SEED, args.interaction_scale, gen_args)
    results = []
    for name in models:
        save_dir = os.path.join(work_dir, "checkpoints", name)
        result = run_isolated(name, train_meta["dir"], test_meta["dir"], save_dir, args.epochs, args.opt,
                              args.eval_every_epoch)
        if not args.keep_checkpoints:
            shutil.rmtree(save_dir, ignore_errors=True)
        print(json.dumps({k: v for k, v in result.items() if k != "hyper_parameters"}), flush=True)
        results.append(result)
    info["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report = markdown(results, train_meta, test_meta, info)
    with open(os.path.join(work_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(report)
    with open(os.path.join(work_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"info": info, "train_set": train_meta, "test_set": test_meta, "results": results}, f, indent=1)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
