"""`python -m serving.rpc --model <dir>/serving_server --port 9393 [--http_port 9394]`: the server's command line
and lifecycle (load and self-check through ctrkit.runtime, serve gRPC + HTTP, watch for versions, drain on
SIGTERM).

Flags follow `paddle_serving_server.serve` with the same meaning (`--model --port --thread --gpu_ids --use_mkl
--ir_optim --mem_optim_off --precision --use_trt --workdir --max_body_size --device --runtime_thread_num
--batch_infer_size --min_subgraph_size --enable_prometheus`); its flags this server cannot honour (`--op`,
`--use_lite`, `--use_xpu`, ...) are refused with one line that says why. Runtime flags (backend, devices,
batching, versions) come from `ctrkit.runtime.add_runtime_flags`, shared with every other server and tool.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
import sys
import time

from ctrkit.inference import CapabilityError, InferenceError, check_capabilities
from ctrkit.runtime import (ModelRuntime, RuntimeMetrics, add_runtime_flags, freeze_startup_heap, options_from_args,
                            str2bool)

from serving.rpc.grpc_transport import GrpcTransport
from serving.rpc.http_app import HttpApp, HttpTransport
from serving.rpc.limits import JSON_EXPANSION, PROTO_EXPANSION, ByteBudget
from serving.rpc.service import FrontendMetrics, InferenceService

log = logging.getLogger("serving.rpc")

READY_LINE = "serving.rpc ready: version {version} grpc {host}:{grpc_port} http {host}:{http_port}"

# paddle_serving_server.serve flags this server cannot honour: flag -> why
REFUSED_FLAGS = {
    "op": "Paddle Serving's op pipelines (--op) are not reproduced; one model per server",
    "use_lite": "Paddle Lite (ARM) is not supported; this server runs Paddle Inference or ONNX Runtime",
    "use_xpu": "Kunlun XPU is not supported (CPU or CUDA GPU only)",
    "use_ascend_cl": "Ascend NPU is not supported (CPU or CUDA GPU only)",
    "use_encryption_model": "encrypted models are not supported",
    "use_calib": "TensorRT int8 calibration tables are not supported (use --precision int8 without --use_calib)",
    "gpu_multi_stream": "multi-stream GPU execution is not supported",
    "request_cache_size": "there is no response cache",
    "product_name": "authentication (--product_name / --container_id) is not supported; put a proxy in front",
    "container_id": "authentication (--product_name / --container_id) is not supported; put a proxy in front",
    "prometheus_port": "metrics are served at GET /metrics on --http_port (always on)",
    "name": "Paddle Serving's WebService (--name) is not reproduced; HTTP is served at "
            "POST /GeneralModelService/inference on --http_port",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.rpc", description="Serve an exported CTR model over "
                                "Paddle Serving's protocol: gRPC on --port, HTTP (JSON / protobuf) on --http_port.")
    p.add_argument("--model", required=True, nargs="+", help="a serving_server directory (or export directory), or "
                   "a directory of numbered versions 1/, 2/, ... of them (the highest good one is served)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=9393, help="gRPC port (0: any free port)")
    p.add_argument("--http_port", type=int, default=None, help="HTTP port (default: --port + 1, or any free "
                   "port when --port is 0)")
    p.add_argument("--thread", type=int, default=16, help="gRPC request threads (Paddle Serving: server threads)")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing the ports (SO_REUSEPORT, the "
                   "kernel spreads connections over them); a dead worker is restarted")
    p.add_argument("--workdir", default=None, help="where the server writes its working files (with --workers: "
                   "the shared metrics directory); default: a temporary directory")
    p.add_argument("--reuse_port", action="store_true", help=argparse.SUPPRESS)  # set for the workers of --workers
    p.add_argument("--device", choices=("cpu", "gpu"), default=None, help="Paddle Serving's device flag: gpu is "
                   "--use_gpu")
    add_runtime_flags(p, serving=True)
    g = p.add_argument_group("Paddle Serving names for runtime settings")
    g.add_argument("--runtime_thread_num", type=int, default=None, help="= --predictors (model instances that "
                   "batch requests)")
    g.add_argument("--batch_infer_size", type=int, default=None, help="= --batch_max_samples")
    g.add_argument("--min_subgraph_size", type=int, default=3, help="TensorRT: smallest subgraph to convert")
    g.add_argument("--enable_prometheus", type=str2bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="metrics are always served at GET /metrics on --http_port")
    b = p.add_argument_group("limits")
    b.add_argument("--max_body_mb", type=float, default=2, help="largest request body (HTTP, also once "
                   "decompressed) and gRPC message, MiB")
    b.add_argument("--max_body_size", type=int, default=None, help="Paddle Serving's spelling of the body limit, "
                   "in bytes")
    b.add_argument("--max_decode_mb", type=float, default=48, help="memory all requests being decoded at once may "
                   "hold (body x expansion: JSON 20x, protobuf 8x); more wait, then get err_no 4013")
    b.add_argument("--http_idle_timeout_s", type=float, default=60, help="a connection without a complete request "
                   "(headers) this long after it opened or after its last answer is closed")
    b.add_argument("--http_read_timeout_s", type=float, default=30, help="a request body must arrive within this")
    b.add_argument("--max_connections", type=int, default=None, help=argparse.SUPPRESS)  # before aiohttp; unused
    v = p.add_argument_group("lifecycle")
    v.add_argument("--drain_timeout_s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests "
                   "may take to finish")
    v.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    for flag in REFUSED_FLAGS:
        p.add_argument(f"--{flag}", default=None, nargs="?", const="true", help=argparse.SUPPRESS)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Apply Paddle Serving's spellings and refuse what cannot be honoured (ValueError, one line)."""
    for flag, why in REFUSED_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and str(value).strip().lower() not in ("false", "0", "no", "off", ""):
            raise ValueError(f"--{flag}: {why}")
    if len(args.model) > 1:
        raise ValueError(f"--model takes one model directory here (got {len(args.model)}): Paddle Serving's "
                         "multi-model workflows are not reproduced; run one server per model")
    args.model = args.model[0]
    if args.device == "gpu":
        args.use_gpu = True
    elif args.device == "cpu" and args.use_gpu:
        raise ValueError("--device cpu contradicts --use_gpu")
    if args.runtime_thread_num is not None:
        args.predictors = args.runtime_thread_num
    if args.batch_infer_size is not None:
        args.batch_max_samples = args.batch_infer_size
    if args.max_body_size is not None:
        args.max_body_mb = args.max_body_size / (1 << 20)
    if args.enable_prometheus is False:
        log.warning("--enable_prometheus False: metrics stay available at GET /metrics (they cost nothing unread)")
    if args.max_connections is not None:
        log.warning("--max_connections is no longer used: HTTP connections take no thread each; memory is bounded "
                    "by --max_decode_mb")
    for name in ("thread", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if args.max_body_mb <= 0 or args.max_decode_mb <= 0 or args.drain_timeout_s < 0:
        raise ValueError("--max_body_mb and --max_decode_mb must be > 0, --drain_timeout_s >= 0")
    if args.max_decode_mb < args.max_body_mb * PROTO_EXPANSION:
        raise ValueError(f"--max_decode_mb {args.max_decode_mb:g} cannot hold one protobuf body of --max_body_mb "
                         f"{args.max_body_mb:g} (needs >= {PROTO_EXPANSION}x)")
    if args.max_decode_mb < args.max_body_mb * JSON_EXPANSION:
        log.warning("--max_decode_mb %g holds no JSON body of --max_body_mb %g (needs %dx): JSON bodies over %.1f "
                    "MiB are refused", args.max_decode_mb, args.max_body_mb, JSON_EXPANSION,
                    args.max_decode_mb / JSON_EXPANSION)
    if args.http_idle_timeout_s <= 0 or args.http_read_timeout_s <= 0:
        raise ValueError("--http_idle_timeout_s and --http_read_timeout_s must be > 0")
    return args


def runtime_options(args: argparse.Namespace):
    options = options_from_args(args)
    if args.min_subgraph_size != 3:
        options = options.with_predictor(trt_min_subgraph_size=args.min_subgraph_size)
    return options


def http_port(args: argparse.Namespace) -> int:
    return args.http_port if args.http_port is not None else (args.port + 1 if args.port else 0)


class Server:
    """One server process: both transports on one event loop thread (the runtime's loop batcher merges their
    requests inline); the main thread waits for signals."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runtime = ModelRuntime(args.model, runtime_options(args), RuntimeMetrics())
        self.metrics = FrontendMetrics(self.runtime.metrics.registry)
        self.max_bytes = int(args.max_body_mb * 1024 * 1024)
        self.budget = ByteBudget(int(args.max_decode_mb * 1024 * 1024))
        self.service = InferenceService(self.runtime, self.metrics, self.budget, budget_wait_s=5.0)
        self.loop = asyncio.new_event_loop()
        # Set by signal handlers, read by the main loop. Handlers only assign flags: taking a lock (Event.set)
        # inside a handler deadlocks when the signal lands while the main thread holds that same lock.
        self._stop_requested = False
        self._reload_requested = False

    def _call(self, coro, timeout: float | None = None):
        """Run a coroutine on the serving loop (from the main thread) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self) -> int:
        args = self.args

        async def bind():
            grpc_t = await GrpcTransport.create(self.service, args.host, args.port, self.max_bytes,
                                                args.thread * 64, args.reuse_port)
            http_t = await HttpTransport.create(HttpApp(self.service, self.max_bytes, self.budget,
                                                        args.http_read_timeout_s),
                                                args.host, http_port(args), args.reuse_port,
                                                args.http_idle_timeout_s)
            return grpc_t, http_t

        # bind both ports first: a port in use fails in a second, not after loading the model
        try:
            grpc_t, http_t = self.loop.run_until_complete(bind())
        except BaseException:
            self.loop.close()
            raise
        thread = threading.Thread(target=self.loop.run_forever, name="serving-loop", daemon=True)
        thread.start()
        version = self.runtime.start()
        freeze_startup_heap()
        self._call(grpc_t.start())
        self._call(grpc_t.set_serving(True))
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        print(READY_LINE.format(version=version, host=args.host, grpc_port=grpc_t.port, http_port=http_t.port),
              flush=True)
        while not self._stop_requested:
            time.sleep(0.2)
            self.runtime.queued()
            if self._reload_requested:
                self._reload_requested = False
                self.runtime.reload()
        return self._drain(grpc_t, http_t)

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _request_reload(self, signum, frame) -> None:
        self._reload_requested = True

    def _drain(self, grpc_t: GrpcTransport, http_t: HttpTransport) -> int:
        """Refuse new work, let in-flight requests finish, release the model."""
        timeout = self.args.drain_timeout_s
        log.info("stop signal: draining (up to %.0f s for in-flight requests)", timeout)
        start = time.monotonic()
        self.runtime.drain()
        self._call(grpc_t.set_serving(False))
        self._call(http_t.stop_accepting())
        grpc_stop = asyncio.run_coroutine_threadsafe(grpc_t.stop(timeout), self.loop)
        idle = self.service.wait_idle(timeout)
        try:
            grpc_stop.result(max(1.0, timeout - (time.monotonic() - start)))
        except Exception:
            log.debug("gRPC stop", exc_info=True)
        try:
            self._call(http_t.close(), 10)
        except Exception:
            log.debug("HTTP close", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.runtime.close()
        if not idle:
            log.warning("drain timed out after %.0f s with requests still in flight", timeout)
            return 1
        log.info("drained in %.2f s; stopped", time.monotonic() - start)
        return 0


def main(argv: list[str] | None = None) -> int:
    from ctrkit.cpu_env import configure_cpu_env

    configure_cpu_env()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        resolve_args(args)
        options = runtime_options(args)  # impossible flag mixes fail before anything starts
        if options.backend == "paddle":
            check_capabilities(options.predictor)
        if args.workers > 1:
            from serving.rpc.workers import run_workers
            return run_workers(args, sys.argv[1:] if argv is None else argv)
        return Server(args).run()
    except (ValueError, CapabilityError, InferenceError, RuntimeError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
