"""`python -m serving.rpc --model <dir>/serving_server --port 9393 [--http_port 9394]`: the server's command line
and lifecycle (load and self-check, serve gRPC + HTTP, watch for versions, drain on SIGTERM).

Flags follow `paddle_serving_server.serve` where one exists (`--model --port --thread --cpu_threads
--enable_mkldnn --use_gpu --gpu_ids --use_trt --precision`); the rest configure batching, limits and versions.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from ctrkit.inference import CapabilityError, PredictorOptions, check_capabilities

from serving.rpc.grpc_transport import GrpcTransport
from serving.rpc.http_transport import HttpTransport
from serving.rpc.metrics import ServerMetrics
from serving.rpc.model import BatchingOptions, ServedModel
from serving.rpc.service import InferenceService
from serving.rpc.versions import VersionManager

log = logging.getLogger("serving.rpc")

READY_LINE = "serving.rpc ready: version {version} grpc {host}:{grpc_port} http {host}:{http_port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.rpc", description="Serve an exported CTR model over "
                                "Paddle Serving's protocol: gRPC on --port, HTTP (JSON / protobuf) on --http_port.")
    p.add_argument("--model", required=True, help="a serving_server directory (or export directory), or a "
                   "directory of numbered versions 1/, 2/, ... of them (the highest good one is served)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=9393, help="gRPC port (0: any free port)")
    p.add_argument("--http_port", type=int, default=None, help="HTTP port (default: --port + 1, or any free "
                   "port when --port is 0)")
    p.add_argument("--thread", type=int, default=16, help="gRPC request threads")
    p.add_argument("--max_connections", type=int, default=64, help="concurrent HTTP connections (one thread each)")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing the ports (SO_REUSEPORT, the "
                   "kernel spreads connections over them); one process uses about one core")
    p.add_argument("--reuse_port", action="store_true", help=argparse.SUPPRESS)  # set for the workers of --workers
    g = p.add_argument_group("predictors (ctrkit.inference)")
    g.add_argument("--predictors", type=int, default=2, help="predictors in the pool (parallel model calls)")
    g.add_argument("--cpu_threads", type=int, default=1, help="math threads per predictor")
    g.add_argument("--enable_mkldnn", action="store_true", help="run on oneDNN (CPU)")
    g.add_argument("--use_gpu", action="store_true", help="run on a GPU (needs a CUDA build of paddlepaddle)")
    g.add_argument("--gpu_ids", default="0", help="GPU to use (one per server process)")
    g.add_argument("--use_trt", action="store_true", help="TensorRT subgraphs (needs --use_gpu)")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="TensorRT precision")
    b = p.add_argument_group("dynamic batching and limits")
    b.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="merge concurrent requests into one predictor call")
    b.add_argument("--batch_window_ms", type=float, default=0.0, help="extra time to wait for requests to merge "
                   "(0: merge only requests already queued, adding no latency)")
    b.add_argument("--batch_max_samples", type=int, default=1024, help="largest merged predictor batch")
    b.add_argument("--max_batch_size", type=int, default=4096, help="largest batch one request may carry")
    b.add_argument("--max_body_mb", type=float, default=64, help="largest request body (HTTP, decompressed) and "
                   "gRPC message")
    v = p.add_argument_group("versions and lifecycle")
    v.add_argument("--version_poll_s", type=float, default=5.0, help="how often to look for a new model version "
                   "(0: only on SIGHUP)")
    v.add_argument("--drain_timeout_s", type=float, default=30.0, help="on SIGTERM, how long in-flight requests "
                   "may take to finish")
    v.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def predictor_options(args: argparse.Namespace) -> PredictorOptions:
    """Map the Paddle Serving style flags onto ctrkit.inference options; ValueError for impossible mixes."""
    if args.use_trt and not args.use_gpu:
        raise ValueError("--use_trt needs --use_gpu")
    if args.precision != "fp32" and not args.use_trt:
        raise ValueError(f"--precision {args.precision} needs --use_trt")
    if args.use_gpu and args.enable_mkldnn:
        raise ValueError("--enable_mkldnn is a CPU engine; drop it with --use_gpu")
    try:
        gpu_id = int(args.gpu_ids)
    except ValueError:
        raise ValueError(f"--gpu_ids takes one GPU id per server process, got '{args.gpu_ids}'") from None
    return PredictorOptions(device="gpu" if args.use_gpu else "cpu", gpu_id=gpu_id, onednn=args.enable_mkldnn,
                            cpu_threads=args.cpu_threads, tensorrt=args.precision if args.use_trt else None)


def http_port(args: argparse.Namespace) -> int:
    return args.http_port if args.http_port is not None else (args.port + 1 if args.port else 0)


def _check_limits(args: argparse.Namespace) -> None:
    for name in ("thread", "max_connections", "workers", "predictors", "batch_max_samples", "max_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1")
    if args.batch_window_ms < 0 or args.max_body_mb <= 0 or args.version_poll_s < 0 or args.drain_timeout_s < 0:
        raise ValueError("--batch_window_ms, --version_poll_s and --drain_timeout_s must be >= 0, "
                         "--max_body_mb > 0")


class Server:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.metrics = ServerMetrics()
        options = predictor_options(args)
        check_capabilities(options)
        batching = BatchingOptions(args.batching, args.batch_window_ms, args.batch_max_samples, args.max_batch_size)

        def load(path: str, version: int) -> ServedModel:
            return ServedModel(path, version, options, args.predictors, batching,
                               self.metrics.predictor_samples.observe)

        self.versions = VersionManager(args.model, load, self._version_changed)
        self.service = InferenceService(self.versions, self.metrics)
        # Set by signal handlers, read by the main loop. Handlers only assign flags: taking a lock (Event.set)
        # inside a handler deadlocks when the signal lands while the main thread holds that same lock.
        self._stop_requested = False
        self._reload_requested = False

    def _queue_depth(self) -> int:
        model = self.versions.current
        return model.queued() if model is not None else 0

    def _version_changed(self, result: str, version: int) -> None:
        self.metrics.version_loads.labels(result).inc()
        if result == "loaded":
            self.metrics.model_version.set(version)

    def run(self) -> int:
        args = self.args
        max_bytes = int(args.max_body_mb * 1024 * 1024)
        # bind both ports first: a port in use fails in a second, not after loading the model
        grpc_t = GrpcTransport(self.service, args.host, args.port, args.thread, max_bytes, args.thread * 64,
                               args.reuse_port)
        http_t = HttpTransport(self.service, self.metrics, args.host, http_port(args), max_bytes,
                               args.max_connections, args.reuse_port)
        version = self.versions.load_initial()
        grpc_t.start()
        http_t.start()
        grpc_t.set_serving(True)
        self.metrics.ready.set(1)
        self.versions.start_watcher(args.version_poll_s)
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        print(READY_LINE.format(version=version, host=args.host, grpc_port=grpc_t.port, http_port=http_t.port),
              flush=True)
        while not self._stop_requested:
            time.sleep(0.2)
            self.metrics.queue_depth.set(self._queue_depth())
            if self._reload_requested:
                self._reload_requested = False
                self.versions.wake()
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
        self.service.start_draining()
        grpc_t.set_serving(False)
        http_t.stop_accepting()
        grpc_stopped = grpc_t.stop(timeout)
        idle = self.service.wait_idle(timeout)
        grpc_stopped.wait(max(0.0, timeout - (time.monotonic() - start)))
        self.versions.shutdown()
        if not idle:
            log.warning("drain timed out after %.0f s with requests still in flight", timeout)
            return 1
        log.info("drained in %.2f s; stopped", time.monotonic() - start)
        return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _check_limits(args)
        if args.workers > 1:
            from serving.rpc.workers import Supervisor
            return Supervisor(args, sys.argv[1:] if argv is None else argv).run()
        return Server(args).run()
    except (ValueError, CapabilityError, RuntimeError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
