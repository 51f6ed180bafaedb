"""Send Criteo data to a Paddle Serving protocol server (PaddleRec's rec_client.py flags) and measure it.

    python tools/rec_client.py --client_config output/deepfm/inference/serving_client/serving_client_conf.prototxt \\
        --connect 127.0.0.1:9393 --data_dir data/synthetic/test --batchsize 5 --client_mode rpc

--client_mode rpc talks gRPC (the server's --port), http sends JSON and http_proto protobuf (both to the
server's --http_port). Lines are parsed by the shared data layer (slot or raw Criteo). By default every line is
sent once; --requests N or --duration S cycle through the data. Each answer is printed as Paddle Serving's
client prints its fetch map (--quiet: not), --output writes one prediction per line in input order, --verify
compares every answer with a local predictor of the same model. The last line of output is a JSON summary:
{"qps", "samples_per_s", "p50_ms", "p90_ms", "p99_ms", "errors", ...}. Exit status 1 when a request failed
or a prediction differs from the local one.

PaddleRec's rec_client flags are accepted: --model_file/--params_file (the exported <prefix>.json and
.pdiparams: they name the model used for the schema and --verify; a .pdmodel path says what Paddle 3 writes
instead), --use_gpu False|True, --client_mode web (Paddle Serving's web client: sent as HTTP + JSON), and
--reader_file / --model_name, which have no meaning here (one warning line each says why). Lines are parsed
with the feature schema of the exported model (model_meta.json: the serving_server/ beside the client config,
or --model / --model_file); requests carry the feeds the client config declares (per field, as PaddleRec's
configs do, or packed).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from ctrkit.cli import UserError, run_cli
from ctrkit.inference import META_FILE, InferenceError, PredictorOptions, create_predictor, load_exported_model
from ctrkit.predictions import PredictionWriter
from ctrkit.runtime.options import str2bool
from serving.rpc.client import (MODES, ServingClient, ServingError, read_feed_layout, request_batches, run_load,
                                wait_ready)

log = logging.getLogger("rec_client")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client_config", required=True, help="serving_client/serving_client_conf.prototxt (or its "
                   "directory)")
    p.add_argument("--connect", default="127.0.0.1:9393", help="server host:port (gRPC port for rpc, HTTP port "
                   "for http / http_proto)")
    p.add_argument("--data_dir", required=True, help="slot or raw Criteo file, or a directory of them")
    p.add_argument("--batchsize", type=int, default=1, help="samples per request")
    p.add_argument("--client_mode", choices=MODES + ("web",), default="rpc", help="rpc (gRPC), http (JSON), "
                   "http_proto (protobuf); web: PaddleRec's name for the HTTP client, sent as http")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent clients, one connection each")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--requests", type=int, help="send this many requests (cycling through the data)")
    run.add_argument("--duration", type=float, help="send requests for this many seconds (cycling)")
    p.add_argument("--warmup", type=int, default=0, help="uncounted requests per client before measuring")
    p.add_argument("--gzip", action="store_true", help="gzip request bodies (http modes)")
    p.add_argument("--timeout_ms", type=int, default=20000)
    p.add_argument("--wait_ready", type=float, default=0, metavar="SECONDS", help="first wait up to this long "
                   "for the server to be ready (gRPC health / HTTP /ready), e.g. right after starting it")
    p.add_argument("--output", help="write one prediction per line here, in input order")
    p.add_argument("--verify", action="store_true", help="compare every answer with a local predictor")
    p.add_argument("--verify_atol", type=float, default=1e-5)
    p.add_argument("--model", help="exported model for --verify and the feature spec (default: the "
                   "serving_server directory beside the client config)")
    p.add_argument("--quiet", action="store_true", help="do not print each answer")
    p.add_argument("--packed", action="store_true", help="send the model's packed inputs (dense_input, "
                   "sparse_inputs) instead of the client config's per-field feeds (this toolkit's server accepts "
                   "both; packed costs the server less to decode)")
    r = p.add_argument_group("PaddleRec's rec_client flags")
    r.add_argument("--model_file", help="the exported <prefix>.json (its directory holds model_meta.json): the "
                   "model for the schema and --verify (like --model)")
    r.add_argument("--params_file", help="<prefix>.pdiparams beside --model_file")
    r.add_argument("--use_gpu", type=str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="accepted; the client runs no model on a device (see the warning)")
    r.add_argument("--reader_file", help="accepted and ignored (see the warning)")
    r.add_argument("--model_name", help="accepted and ignored (see the warning)")
    args = p.parse_args()
    for name in ("batchsize", "concurrency", "requests", "duration", "timeout_ms"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
    if args.warmup < 0 or args.wait_ready < 0:
        raise UserError("--warmup and --wait_ready must be >= 0")
    paddlerec_flags(args)
    return args


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def paddlerec_flags(args: argparse.Namespace) -> None:
    """PaddleRec's flags: same meaning where there is one, else one warning line that says why not."""
    if args.client_mode == "web":
        warn("--client_mode web: Paddle Serving's web service is not served here; sending HTTP + JSON "
             "GeneralModelService requests to --connect (the server's --http_port) instead (--client_mode http)")
        args.client_mode = "http"
    if args.reader_file:
        warn(f"--reader_file {args.reader_file} is ignored: lines are parsed by the toolkit's data layer with the "
             "exported model's feature schema (model_meta.json), not by a reader module")
    if args.model_name:
        warn(f"--model_name {args.model_name} is ignored: the server serves one model; its name comes from the "
             "export's model_meta.json")
    if args.use_gpu:
        warn("--use_gpu True is ignored: this client only sends requests (the server's --use_gpu picks its device); "
             "--verify's local model runs on the CPU")
    for flag, path in (("--model_file", args.model_file), ("--params_file", args.params_file)):
        if path and path.endswith(".pdmodel"):
            prefix = path[:-len(".pdmodel")]
            raise UserError(f"{flag} {path}: Paddle 3 exports write <prefix>.json (the new IR), not .pdmodel; pass "
                            f"--model_file {prefix}.json --params_file {prefix}.pdiparams (tools/to_static.py writes "
                            "tostatic.json), or --model <export dir>")
    if args.params_file and not args.model_file:
        raise UserError("--params_file goes with --model_file")
    if args.model_file:
        if args.model:
            raise UserError("give --model or --model_file, not both")
        model = load_exported_model(args.model_file, args.params_file)  # checks the files and model_meta.json
        args.model = model.directory


def model_dir(args: argparse.Namespace) -> str | None:
    """--model, else the serving_server directory next to the client config's directory, if it holds a model."""
    if args.model:
        return args.model
    config_dir = args.client_config if os.path.isdir(args.client_config) else os.path.dirname(args.client_config)
    sibling = os.path.join(os.path.dirname(os.path.abspath(config_dir)), "serving_server")
    return sibling if os.path.isfile(os.path.join(sibling, META_FILE)) else None


def packed_layout(layout, model: str):
    """The client config's layout with the sparse feeds replaced by the model's one packed sparse input."""
    from dataclasses import replace

    from serving.rpc.client import FeedVar

    meta_dir = model if os.path.isfile(os.path.join(model, META_FILE)) else os.path.join(model, "serving_server")
    sparse = [v for v in load_exported_model(meta_dir).meta["inputs"] if "int" in v["dtype"]]
    if len(sparse) != 1:
        raise UserError(f"{meta_dir}: expected one integer model input to pack the sparse feeds into")
    name = sparse[0]["name"]
    return replace(layout, sparse=(FeedVar(name, name, layout.sparse_width),), packed=True)


def feature_schema(model: str | None):
    """The exported model's feature schema (Criteo's, with a warning, when no model_meta.json is found)."""
    if model is None:
        from ctrkit.schema import criteo_schema

        log.warning("no model_meta.json found (pass --model): parsing the data with the default Criteo schema")
        return criteo_schema()
    meta_dir = model if os.path.isfile(os.path.join(model, META_FILE)) else os.path.join(model, "serving_server")
    return load_exported_model(meta_dir).schema


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args()
    try:
        layout = read_feed_layout(args.client_config)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = model_dir(args)
    if args.packed:
        if model is None:
            raise UserError("--packed needs the model's input names: pass --model <export dir or serving_server dir>")
        layout = packed_layout(layout, model)
    if args.verify and model is None:
        raise UserError("--verify needs the model: pass --model <export dir or serving_server dir>")
    local = create_predictor(model, PredictorOptions()) if args.verify else None
    spec = feature_schema(model)
    if args.wait_ready:
        wait_ready(args.connect, args.client_mode, args.wait_ready)
    cycle = args.requests is not None or args.duration is not None
    batches = request_batches(args.data_dir, spec, args.batchsize, cycle=cycle, limit=args.requests)
    answers: dict[int, np.ndarray] = {}
    mismatches: list[str] = []  # the first few, for the log
    mismatch_count = 0
    max_diff = 0.0

    def on_answer(index: int, dense: np.ndarray, sparse: np.ndarray, prob: np.ndarray) -> None:
        nonlocal max_diff, mismatch_count
        if not args.quiet:
            print({layout.fetch_alias: prob.reshape(-1, 1)}, flush=False)
        if args.output:
            answers[index] = prob
        if local is not None:
            diff = float(np.max(np.abs(local.predict(dense, sparse) - prob)))
            max_diff = max(max_diff, diff)
            if diff > args.verify_atol:
                mismatch_count += 1
                if len(mismatches) < 5:
                    mismatches.append(f"request {index}: max abs diff {diff:.3g} from the local predictor")

    def make_client() -> ServingClient:
        return ServingClient(layout, args.connect, args.client_mode, args.timeout_ms / 1000, args.gzip)

    result = run_load(make_client, batches, args.concurrency, args.duration, args.warmup, on_answer)
    if args.output:
        with PredictionWriter(args.output) as out:  # the toolkit's one prediction format (ctrkit.predictions)
            for index in sorted(answers):
                out.write(answers[index])
    for message in result.error_messages + mismatches:
        log.error("%s", message)
    summary = {"mode": args.client_mode, "batch_size": args.batchsize, "concurrency": args.concurrency,
               **result.summary()}
    if local is not None:
        summary.update(verified=result.requests - result.errors, max_abs_diff=max_diff, mismatches=mismatch_count)
    print(json.dumps(summary), flush=True)
    return 1 if result.errors or mismatch_count else 0


if __name__ == "__main__":
    run_cli(main, (InferenceError, ValueError, ServingError, TimeoutError))
