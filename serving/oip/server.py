"""`python -m serving.oip`: the Open Inference Protocol (KServe v2) front-end over HTTP/REST and gRPC, on the
protocol-free model runtime. One process serves both transports (HTTP on aiohttp in its event-loop thread, gRPC on its
own thread pool); readiness, metrics and model versions come from the runtime."""
from __future__ import annotations

import argparse
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
    p.add_argument("--http_threads", type=int, default=16, help="threads decoding and predicting HTTP requests")
    p.add_argument("--grpc_threads", "--thread", dest="grpc_threads", type=int, default=16,
                   help="gRPC request threads")
    p.add_argument("--max_body_mb", type=float, default=8, help="largest request body (also once decompressed) "
                   "and gRPC message")
    p.add_argument("--keep_alive_s", type=int, default=60, help="idle keep-alive connections close after this")
    p.add_argument("--drain_timeout_s", type=float, default=30, help="on SIGTERM, how long in-flight requests may "
                   "take")
    p.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_runtime_flags(p)
    return p


def _runtime(args):
    """A started ctrkit.runtime.ModelRuntime for the flags (loads and checks the highest good version)."""
    from ctrkit.runtime import ModelRuntime, options_from_args

    options = options_from_args(args)
    runtime = ModelRuntime(args.model, options)
    runtime.start()
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

    def server_metadata(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("ctrkit")
        except PackageNotFoundError:
            v = "dev"
        return {"name": SERVER_NAME, "version": v, "extensions": list(P.EXTENSIONS)}

    def metrics_text(self) -> tuple[bytes, str]:
        return self.runtime.metrics.render(), self.runtime.metrics.content_type

    def count(self, transport: str, code: int) -> None:
        self._requests.labels(transport, str(code)).inc()

    # ---- inference (called on worker threads)
    def infer_http(self, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        """Decode, predict, encode on a worker thread (large bodies)."""
        start = time.perf_counter()
        request = self.decoder.decode_json(body, header_length)
        outputs, version = self.model.infer(request.inputs)
        return self._http_answer(start, request, outputs, version)

    async def infer_http_async(self, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        """The same on the event loop (small bodies: cheaper than a hop to a thread)."""
        start = time.perf_counter()
        request = self.decoder.decode_json(body, header_length)
        outputs, version = await self.model.infer_async(request.inputs)
        return self._http_answer(start, request, outputs, version)

    def _http_answer(self, start: float, request, outputs, version) -> tuple[bytes, int | None]:
        answer = P.encode_json(self.model.name, version, request, outputs)
        self._latency.labels("http").observe(time.perf_counter() - start)
        self.count("http", 200)
        return answer

    def infer_grpc(self, request):
        start = time.perf_counter()
        if self.draining:
            raise P.OipError(P.UNAVAILABLE, "the server is shutting down")
        self.model.check(request.model_name, request.model_version)
        decoded = self.decoder.decode_grpc(request)
        outputs, version = self.model.infer(decoded.inputs)
        response = P.encode_grpc(self.model.name, version, decoded, outputs)
        self._latency.labels("grpc").observe(time.perf_counter() - start)
        self.count("grpc", 200)
        return response, version


def serve(args, ready_callback=None) -> int:
    from serving.oip.grpc_service import GrpcFrontEnd
    from serving.oip.http import HttpApp
    from serving.rpc.http_app import HttpTransport  # the shared aiohttp transport (same library as serving.rpc)

    runtime, options = _runtime(args)
    server = OipServer(runtime, options, args)
    reuse = bool(getattr(args, "reuse_port", False))
    try:
        http = HttpTransport(HttpApp(server, args.http_threads), args.host, args.http_port, reuse_port=reuse,
                             idle_timeout_s=args.keep_alive_s)
        grpc_front = GrpcFrontEnd(server, args.host, args.grpc_port, args.grpc_threads, server.max_body_bytes,
                                  reuse)
    except OSError:
        runtime.close()
        raise
    stop = threading.Event()

    def on_signal(signum, _frame):
        if signum == signal.SIGHUP:
            runtime.reload()
        else:
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    http.start()
    grpc_front.start()
    grpc_front.set_serving(True)
    line = (f"serving.oip ready: model {server.model.name} version {server.model.version} "
            f"http {args.host}:{http.port} grpc {args.host}:{grpc_front.port}")
    print(line, flush=True)
    if ready_callback:
        ready_callback(line)
    while not stop.wait(1.0):
        pass
    # drain: report not ready, refuse new requests (503 / UNAVAILABLE), let those in flight finish
    log.info("draining (up to %.0f s)", args.drain_timeout_s)
    server.draining = True
    runtime.drain()
    grpc_front.set_serving(False)
    http.stop_accepting()
    grpc_done = grpc_front.stop(args.drain_timeout_s)
    ok = runtime.wait_idle(args.drain_timeout_s)
    ok = grpc_done.wait(args.drain_timeout_s + 1) and ok
    http.close()
    runtime.close()
    log.info("stopped%s", "" if ok else " (drain timed out)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    from ctrkit.cpu_env import configure_cpu_env
    configure_cpu_env()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
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
