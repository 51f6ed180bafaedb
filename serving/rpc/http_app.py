"""HTTP transport on aiohttp's low-level server (HTTP/1.1 parsing, keep-alive, limits and response gzip come from
the library; one event loop thread, so slow or idle connections cost no thread).

POST /GeneralModelService/inference (and /debug): a JSON `Request` with the proto field names, or a serialised
one with `Content-Type: application/proto`; either may be gzip-compressed (`Content-Encoding: gzip`, decompressed
here with a bound on the output). The answer comes in kind: `Content-Type: application/proto` exactly (Paddle
Serving's client tests that string) or `application/json`, gzip-compressed when the client accepts it and the
body is big enough to gain. Refused requests get the fitting HTTP status with a Response carrying err_no /
err_msg, in the request's kind.

GET /health (liveness), /ready (a checked model is loaded and the server is not draining), /metrics
(Prometheus), /versions (served, available and refused model versions).

Connections: the keep-alive timer starts when a connection opens and restarts after each answer, and a
connection that has not sent complete request headers when it fires is closed, so a client trickling header
bytes holds a connection at most `idle_timeout_s`; a body must arrive within `read_timeout_s`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import zlib

from aiohttp import web
from aiohttp.web_request import BaseRequest

from serving.rpc import protocol as P
from serving.rpc.limits import ByteBudget
from serving.rpc.protocol import RequestError
from serving.rpc.service import InferenceService

log = logging.getLogger(__name__)

PROTO_TYPES = {"application/proto", "application/x-protobuf", "application/octet-stream"}
JSON_TYPES = {"", "application/json"}
GZIP_MIN_BYTES = 1024      # smaller answers are sent as they are: compressing them costs more than it saves


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing more than `limit` bytes of output (a zip bomb) or a truncated stream."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise RequestError(P.BAD_REQUEST, f"Content-Encoding is gzip but the body does not decompress ({e})") \
            from None
    if len(out) > limit:
        raise RequestError(P.TOO_LARGE, f"decompressed body exceeds the limit of {limit} bytes")
    if not d.eof:
        raise RequestError(P.BAD_REQUEST, "gzip body is truncated")
    return out


def _accepts_gzip(header: str | None) -> bool:
    for item in (header or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class HttpApp:
    def __init__(self, service: InferenceService, max_body_bytes: int, budget: ByteBudget,
                 read_timeout_s: float = 30.0):
        self.service = service
        self.runtime = service.runtime
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.read_timeout_s = read_timeout_s

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        try:
            if request.method == "POST":
                return await self._post(request)
            if request.method in ("GET", "HEAD"):
                return self._get(request)
            return _json(405, {"error": f"method {request.method} not allowed"})
        except asyncio.CancelledError:
            raise
        except Exception:  # never a traceback to the client
            log.exception("internal error in the HTTP front-end")
            return _json(500, {"err_no": P.INTERNAL.err_no, "err_msg": "internal server error; see the server log"})

    # -------------------------------------------------------------------------------- inference
    async def _post(self, request: BaseRequest) -> web.StreamResponse:
        path = request.path
        if path not in P.HTTP_PATHS:
            return _json(404, {"error": f"no such endpoint: POST {path}; use {P.HTTP_PATHS[0]}"})
        headers = request.headers
        media = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        proto = media in PROTO_TYPES
        transport = "http_proto" if proto else "http_json"
        accept_gzip = _accepts_gzip(headers.get("Accept-Encoding"))
        length = request.content_length
        cost = self.budget.cost(self.max_body_bytes if length is None else min(length, self.max_body_bytes),
                                not proto)
        reserved = False
        try:
            encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding not in ("gzip", "identity"):
                raise RequestError(P.UNSUPPORTED_MEDIA, f"Content-Encoding '{encoding}' is not supported "
                                                        "(use gzip or none)")
            if not proto and media not in JSON_TYPES:
                raise RequestError(P.UNSUPPORTED_MEDIA, f"Content-Type '{media}' is not supported; send "
                                                        "application/json or application/proto")
            if length is not None and length > self.max_body_bytes:
                raise RequestError(P.TOO_LARGE, f"body of {length} bytes exceeds the limit of "
                                                f"{self.max_body_bytes} bytes")
            reserved = self.budget.try_acquire(cost) or await asyncio.get_running_loop().run_in_executor(
                None, self.budget.acquire, cost, self.service.budget_wait_s)
            if not reserved:
                raise RequestError(P.TOO_LARGE, f"request of {length} bytes does not fit the memory this server "
                                                f"gives to requests being decoded ({self.budget.limit >> 20} MiB, "
                                                "shared by concurrent requests); retry later")
            body = await self._read(request)
            if encoding == "gzip":
                body = gunzip(body, self.max_body_bytes)
        except RequestError as e:
            self.service.metrics.count(transport, e.kind.err_no)
            if reserved:
                self.budget.release(cost)
            return self._error(e, proto, accept_gzip, close=e.kind in (P.TOO_LARGE, P.BAD_REQUEST))
        try:
            decode, encode = (P.decode_proto, P.encode_proto) if proto else (P.decode_json, P.encode_json)
            try:
                answer, version = await self.service.answer_async(transport, body, decode, encode)
            except RequestError as e:
                return self._error(e, proto, accept_gzip)
            del body
            return _respond(200, answer, "application/proto" if proto else "application/json", accept_gzip,
                            {"X-Model-Version": str(version)})
        finally:
            if reserved:
                self.budget.release(cost)

    async def _read(self, request: BaseRequest) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(P.TOO_LARGE, f"body exceeds the limit of {self.max_body_bytes} bytes") from None
        except TimeoutError:
            raise RequestError(P.BAD_REQUEST, f"body did not arrive within {self.read_timeout_s:g} s") from None

    def _error(self, e: RequestError, proto: bool, accept_gzip: bool, close: bool = False) -> web.Response:
        body = P.error_proto(e.kind, e.message, e.log_id) if proto else P.error_json(e.kind, e.message, e.log_id)
        headers = {"Connection": "close"} if close or e.kind is P.UNAVAILABLE else None
        return _respond(e.kind.http_status, body, "application/proto" if proto else "application/json",
                        accept_gzip, headers)

    # ----------------------------------------------------------------------------------- status
    def _get(self, request: BaseRequest) -> web.Response:
        path = request.path
        runtime = self.runtime
        if path == "/health":
            return _json(200, {"status": "alive"})
        if path == "/ready":
            ready = runtime.ready
            return _json(200 if ready else 503, {"ready": ready, "version": runtime.version,
                                                 "draining": runtime.draining, "backend": runtime.options.backend})
        if path == "/metrics":
            runtime.queued()
            return web.Response(status=200, body=runtime.metrics.render(),
                                headers={"Content-Type": runtime.metrics.content_type})
        if path == "/versions":
            return _json(200, runtime.status())
        return _json(404, {"error": f"no such endpoint: GET {path}"})


def _json(status: int, obj: dict) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj).encode(), content_type="application/json")


def _respond(status: int, body: bytes, content_type: str, accept_gzip: bool, headers: dict | None = None):
    response = web.Response(status=status, body=body, headers=headers)
    response.content_type = content_type
    if accept_gzip and len(body) >= GZIP_MIN_BYTES:
        response.enable_compression(web.ContentCoding.gzip)
    return response


class HttpTransport:
    """The aiohttp server; built (and bound) inside the serving event loop: `await HttpTransport.create(...)`."""

    @classmethod
    async def create(cls, app: HttpApp, host: str, port: int, reuse_port: bool = False,
                     idle_timeout_s: float = 60.0, max_line_size: int = 8190,
                     max_field_size: int = 8190) -> "HttpTransport":
        self = cls()
        loop = asyncio.get_running_loop()
        max_body = app.max_body_bytes

        def request_factory(message, payload, protocol, writer, task):
            return BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=max_body)

        server = web.Server(app, request_factory=request_factory, keepalive_timeout=idle_timeout_s,
                            auto_decompress=False, access_log=None, max_line_size=max_line_size,
                            max_field_size=max_field_size)
        self.runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, backlog=1024, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            raise OSError(f"cannot bind HTTP to {host}:{port}: {e.strerror or e}") from None
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop_accepting(self) -> None:
        """Close the listening socket; open connections finish their requests (new ones on them get 5003)."""
        for site in list(self.runner.sites):
            if site._server is not None:
                site._server.close()

    async def close(self) -> None:
        await self.runner.cleanup()
