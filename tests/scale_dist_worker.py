"""A training worker for tests/test_scale_distributed.py, run under `paddle.distributed.launch`.

It runs `ctrkit.training.train` (and with --evaluate, `evaluate`) on its config and appends one JSON line per
optimizer step to <records>/rank<N>.jsonl: the epoch, the step, a digest of every row this worker trained on and
a digest of all parameters after the step. --crash_at EPOCH:STEP:RANK makes that worker die right after that step,
as a crashing process would (os._exit, no clean-up).
"""
import argparse
import hashlib
import json
import os

import numpy as np

import models  # noqa: F401  (registers the model zoo in ctrkit.zoo)
from ctrkit.config import load_config
from ctrkit.training import evaluate, format_result, train


def row_digests(batch) -> list[str]:
    dense, sparse, label = (t.numpy() for t in batch)
    rows = np.concatenate([dense.view(np.uint32), sparse.view(np.uint32), label.view(np.uint32)], axis=1)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in rows]


def params_digest(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.numpy()).tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", "--config", required=True)
    parser.add_argument("-o", "--opt", action="append", default=[])
    parser.add_argument("--records", required=True)
    parser.add_argument("--crash_at", default="")
    parser.add_argument("--evaluate", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config, args.opt)
    crash = tuple(int(x) for x in args.crash_at.split(":")) if args.crash_at else None
    os.makedirs(args.records, exist_ok=True)
    out = None

    def on_step(info: dict) -> None:
        nonlocal out
        if out is None:
            out = open(os.path.join(args.records, f"rank{info['rank']}.jsonl"), "a", encoding="utf-8")
        rows = [] if info["batch"] is None else row_digests(info["batch"])
        out.write(json.dumps({"epoch": info["epoch"], "step": info["step"], "rows": rows,
                              "params": params_digest(info["model"])}) + "\n")
        out.flush()
        if crash == (info["epoch"], info["step"], info["rank"]):
            print(f"worker {info['rank']}: crashing on purpose after epoch {info['epoch']} step {info['step']}",
                  flush=True)
            os._exit(3)

    result = train(config, on_step=on_step)
    print(format_result({k: v for k, v in result.items() if k != "epochs"}), flush=True)
    if args.evaluate:
        for line in evaluate(config):
            print("EVAL " + format_result(line), flush=True)


if __name__ == "__main__":
    main()
