"""`python -m serving.oip`: the Open Inference Protocol (KServe v2) front-end over HTTP/REST and gRPC, on the
protocol-free model runtime. One process serves both transports (HTTP on aiohttp and gRPC on grpc.aio, both on one
event-loop thread, where the runtime's loop batcher merges their requests inline); readiness, metrics and model versions come from the runtime."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time

from serving.oip import protocol as P

log = logging.getLogger("serving.oip")
SERVER_NAME = "ctrkit"


def build_parser() -> argparse.ArgumentParser:
    from ctrkit.runtime.options import add_runtime_flags

    p = argparse.ArgumentParser(prog="python -m serving.oip", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an export directory (or its serving_server/), or a directory "
                   "of numbered versions of them")
    p.add_argument("--model_name", help="the name clients use in /v2/models/{name} (default: the exported "
                   "model's name, e.g. deepfm)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--http_port", type=int, default=8000, help="HTTP/REST port (0: any free port)")
    p.add_argument("--grpc_port", type=int, default=8001, help="gRPC port (0: any free port)")
    p.add_argument("--http_threads", type=int, default=4, help="threads decoding large (> 64 KiB) HTTP bodies")
    p.add_argument("--grpc_threads", "--thread", dest="grpc_threads", type=int, default=16,
                   help="sizes the gRPC concurrency limit (64 concurrent RPCs per thread, as serving.rpc)")
    p.add_argument("--max_body_mb", type=float, default=2, help="largest request body (also once decompressed) "
                   "and gRPC message")
    p.add_argument("--max_decode_mb", type=float, default=48, help="memory all HTTP requests being decoded at once "
                   "may take (JSON costs ~20x its size; binary tensors ~2x); more wait, then get 503")
    p.add_argument("--keep_alive_s", type=int, default=60, help="idle keep-alive connections close after this")
    p.add_argument("--drain_timeout_s", type=float, default=30, help="on SIGTERM, how long in-flight requests may "
                   "take")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing both ports (SO_REUSEPORT; the "
                   "kernel spreads connections over them); a worker that dies is restarted")
    p.add_argument("--reuse_port", action="store_true", help=argparse.SUPPRESS)  # set for the workers of --workers
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_runtime_flags(p)
    return p


def _runtime(args):
    """A started ctrkit.runtime.ModelRuntime for the flags (loads and checks the highest good version)."""
    from ctrkit.runtime import ModelRuntime, freeze_startup_heap, options_from_args

    options = options_from_args(args)
    runtime = ModelRuntime(args.model, options)
    runtime.start()
    freeze_startup_heap()
    return runtime, options


class OipServer:
    def __init__(self, runtime, options, args):
        from prometheus_client import Counter, Histogram

        from serving.oip.model import OipModel

        self.runtime = runtime
        self.model = OipModel(runtime, args.model_name, options.backend)
        self.max_body_bytes = int(args.max_body_mb * 2 ** 20)
        self.decoder = P.RequestDecoder(self.model.inputs, self.model.outputs, options.batching.max_request_batch)
        self.draining = False
        self._requests = Counter("ctrkit_oip_requests", "OIP inference requests by transport and HTTP-style status",
                                 ["transport", "code"], registry=self._registry())
        self._latency = Histogram("ctrkit_oip_request_latency_seconds", "OIP inference latency (decode, predict, "
                                  "encode)", ["transport"], registry=self._registry(),
                                  buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))

    def _registry(self):
        return self.runtime.metrics.registry

    # ---- state
    @property
    def ready(self) -> bool:
        return self.model.ready and not self.draining

    def model_ready(self, name: str, version: str) -> bool:
        """Whether model `name` (at `version`, when given) is ready; OipError (404) for a model not served here."""
        self.model.check_name(name)
        return self.ready and (not version or version == self.model.version)

    def server_metadata(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("ctrkit")
        except PackageNotFoundError:
            v = "dev"
        return {"name": SERVER_NAME, "version": v, "extensions": list(P.EXTENSIONS)}

    def metrics_text(self) -> tuple[bytes, str]:
        self.runtime.queued()  # refreshes the queue-depth gauge
        return self.runtime.metrics.render(), self.runtime.metrics.content_type

    def count(self, transport: str, code: int) -> None:
        self._requests.labels(transport, str(code)).inc()

    # ---- inference (called on worker threads)
    async def infer_http(self, body: bytes, header_length: int | None, executor=None) -> tuple[bytes, int | None]:
        """Decode (on `executor` when given: a large body would stall the event loop), predict through the
        runtime's loop batcher, encode."""
        start = time.perf_counter()
        if executor is None:
            request = self.decoder.decode_json(body, header_length)
        else:
            loop = asyncio.get_running_loop()
            request = await loop.run_in_executor(executor, self.decoder.decode_json, body, header_length)
        outputs, version = await self.model.infer_async(request.inputs)
        answer = P.encode_json(self.model.name, version, request, outputs)
        self._latency.labels("http").observe(time.perf_counter() - start)
        self.count("http", 200)
        return answer

    async def infer_grpc(self, request):
        start = time.perf_counter()
        if self.draining:
            raise P.OipError(P.UNAVAILABLE, "the server is shutting down")
        self.model.check(request.model_name, request.model_version)
        decoded = self.decoder.decode_grpc(request)
        outputs, version = await self.model.infer_async(decoded.inputs)
        response = P.encode_grpc(self.model.name, version, decoded, outputs)
        self._latency.labels("grpc").observe(time.perf_counter() - start)
        self.count("grpc", 200)
        return response, version


def serve(args, ready_callback=None) -> int:
    """Both transports on one event-loop thread (the runtime's loop batcher merges their requests inline); the
    main thread waits for signals, then drains."""
    from serving.oip.grpc_service import GrpcFrontEnd
    from serving.oip.http import HttpApp
    from serving.rpc.http_app import HttpTransport  # the shared aiohttp transport (same library as serving.rpc)

    runtime, options = _runtime(args)
    server = OipServer(runtime, options, args)
    reuse = bool(getattr(args, "reuse_port", False))
    loop = asyncio.new_event_loop()

    async def bind():
        app = HttpApp(server, args.http_threads, decode_budget_bytes=int(args.max_decode_mb * 2 ** 20))
        http = await HttpTransport.create(app, args.host, args.http_port, reuse_port=reuse,
                                          idle_timeout_s=args.keep_alive_s)
        try:
            grpc_front = await GrpcFrontEnd.create(server, args.host, args.grpc_port, server.max_body_bytes,
                                                   args.grpc_threads * 64, reuse)
        except BaseException:
            await http.close()
            raise
        await grpc_front.start()
        await grpc_front.set_serving(True)
        return http, grpc_front

    try:
        http, grpc_front = loop.run_until_complete(bind())
    except BaseException:
        loop.close()
        runtime.close()
        raise
    thread = threading.Thread(target=loop.run_forever, name="oip-loop", daemon=True)
    thread.start()
    call = lambda coro, timeout=None: asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)  # noqa: E731
    flags = {"stop": False, "reload": False}  # signal handlers only assign flags (no locks in a handler)

    def on_signal(signum, _frame):
        flags["reload" if signum == signal.SIGHUP else "stop"] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    line = (f"serving.oip ready: model {server.model.name} version {server.model.version} "
            f"http {args.host}:{http.port} grpc {args.host}:{grpc_front.port}")
    print(line, flush=True)
    if ready_callback:
        ready_callback(line)
    while not flags["stop"]:
        time.sleep(0.2)
        if flags["reload"]:
            flags["reload"] = False
            runtime.reload()
    # drain: report not ready, refuse new requests (503 / UNAVAILABLE), let those in flight finish
    timeout = args.drain_timeout_s
    log.info("draining (up to %.0f s)", timeout)
    server.draining = True
    runtime.drain()
    call(grpc_front.set_serving(False))
    call(http.stop_accepting())
    grpc_stop = asyncio.run_coroutine_threadsafe(grpc_front.stop(timeout), loop)
    ok = runtime.wait_idle(timeout)
    try:
        grpc_stop.result(timeout + 1)
    except Exception:  # noqa: BLE001
        log.debug("gRPC stop", exc_info=True)
    try:
        call(http.close(), 10)
    except Exception:  # noqa: BLE001
        log.debug("HTTP close", exc_info=True)
    loop.call_soon_threadsafe(loop.stop)
    runtime.close()
    log.info("stopped%s", "" if ok else " (drain timed out)")
    return 0 if ok else 1


READY_PREFIX = "serving.oip ready"


def run_workers(args, argv: list[str]) -> int:
    """`--workers N`: N complete servers on the same two ports under the shared supervisor (serving.supervisor):
    one ready line once all are ready, a dead worker restarted, SIGTERM drains all, SIGHUP reaches each; /metrics
    sums every worker (Prometheus multi-process mode)."""
    from serving.rpc.workers import reserve_port
    from serving.supervisor import run_worker_group

    sockets = [reserve_port(args.host, args.http_port), reserve_port(args.host, args.grpc_port)]
    http_port, grpc_port = (sock.getsockname()[1] for sock in sockets)
    # later flags win in argparse: the workers get the resolved ports and run one process each
    cmd = [sys.executable, "-m", "serving.oip", *argv, "--workers", "1", "--http_port", str(http_port),
           "--grpc_port", str(grpc_port), "--reuse_port"]

    def announce(lines: list[str]) -> str:
        name = lines[0].split()[3]
        version = max((line.split()[5] for line in lines), key=lambda v: int(v) if v.isdigit() else -1)
        return (f"{READY_PREFIX}: model {name} version {version} http {args.host}:{http_port} "
                f"grpc {args.host}:{grpc_port} workers {args.workers}")

    return run_worker_group(cmd, args.workers, ready_prefix=READY_PREFIX, announce=announce,
                            drain_timeout_s=args.drain_timeout_s, sockets=sockets,
                            metrics_prefix="ctrkit-oip-metrics-")


def main(argv: list[str] | None = None) -> int:
    from ctrkit.cpu_env import configure_cpu_env
    configure_cpu_env()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if args.workers < 1:
        print("serving.oip: error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.workers > 1:
            return run_workers(args, sys.argv[1:] if argv is None else list(argv))
        return serve(args)
    except (OSError, ValueError) as e:
        print(f"serving.oip: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - start-up failures (missing model, golden mismatch) are one line
        if type(e).__module__.startswith(("ctrkit", "serving")):
            print(f"serving.oip: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
