"""Open Inference Protocol over HTTP/REST: a handler on aiohttp's low-level server, the same HTTP library and
transport (`serving.rpc.http_app.HttpTransport`: keep-alive, header and body limits, its own event loop thread)
as the Paddle Serving front-end.

Routes (KServe v2 / Triton):
    GET  /v2/health/live                 200 {"live": true}
    GET  /v2/health/ready                200 {"ready": true} once a checked version is loaded, else 503
    GET  /v2                             server metadata {"name", "version", "extensions"}
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      200 / 503 (404 for an unknown model or version)
    POST /v2/models/{name}[/versions/{v}]/infer      inference (JSON, or JSON + binary tensors)
    GET  /v2/models[/{name}[/versions/{v}]]/stats    Triton's statistics extension
    GET  /v2/models/{name}[/versions/{v}]/config     Triton's model configuration extension
    POST /v2/repository/index            Triton's repository index: versions on disk, READY or UNAVAILABLE + why
    POST /v2/repository/models/{name}/load     look for a newer version now; 400 with why if the newest is refused
    POST /v2/repository/models/{name}/unload   400: not offered (one model per server)
    GET  /metrics                        Prometheus text (the runtime's registry)
Errors are `{"error": "<message>"}` with 400 (bad request), 404 (unknown model/version/path), 405, 411, 413,
415 or 503 (not ready, draining). Request bodies may be gzip/deflate (`Content-Encoding`); answers are compressed
when the client sends `Accept-Encoding: gzip` or `deflate` (tritonclient's `response_compression_algorithm`).
"""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.web_request import BaseRequest

from serving.oip import protocol as P
from serving.oip.protocol import OipError
from serving.rpc.limits import JSON_EXPANSION, ByteBudget

log = logging.getLogger("serving.oip")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer|/stats|/config)?/?$")
_REPOSITORY_PATH = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)/?$")
JSON = "application/json"
INLINE_BODY_BYTES = 64 * 1024  # smaller requests are decoded on the event loop; larger ones on a worker thread
BUDGET_WAIT_S = 5.0            # how long a large request may wait for decoding memory before a 503
METHOD_NOT_ALLOWED = P.ErrorKind(405, "UNIMPLEMENTED")
LENGTH_REQUIRED = P.ErrorKind(411, "INVALID_ARGUMENT")


class HttpApp:
    """The aiohttp handler. `server` (serving.oip.server.OipServer) supplies model, readiness, metrics, limits."""

    def __init__(self, server, threads: int, read_timeout_s: float = 30.0, decode_budget_bytes: int = 48 << 20):
        self.server = server
        self.model = server.model
        self.max_body_bytes = server.max_body_bytes  # HttpTransport sizes aiohttp's client_max_size from it
        self.budget = ByteBudget(decode_budget_bytes)  # shared by the requests being decoded at once
        self.read_timeout_s = read_timeout_s
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oip-http")

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        try:
            status, headers, body = await self._route(request)
        except asyncio.CancelledError:
            raise
        except OipError as e:
            status, headers, body = e.kind.http_status, {}, _error_body(e.message)
            if request.path.endswith("/infer"):
                self.server.count("http", e.kind.http_status)
            if e.kind in (P.TOO_LARGE, P.UNAVAILABLE) or e.kind.http_status == 411:
                headers["Connection"] = "close"
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unexpected error answering %s %s", request.method, request.path)
            status, headers, body = 500, {}, _error_body("internal server error; see the server log")
            self.server.count("http", 500)
        headers.setdefault("Content-Type", JSON)
        if self.server.draining:
            headers["Connection"] = "close"
        return web.Response(status=status, body=body, headers=headers)

    async def _route(self, request: BaseRequest):
        path, method = request.path, request.method
        if path == "/v2/health/live":
            _only(method, "GET")
            return 200, {}, b'{"live":true}'
        if path == "/v2/health/ready":
            _only(method, "GET")
            ready = self.server.ready
            return (200 if ready else 503), {}, b'{"ready":true}' if ready else b'{"ready":false}'
        if path in ("/v2", "/v2/"):
            _only(method, "GET")
            return 200, {}, json.dumps(self.server.server_metadata()).encode()
        if path == "/metrics":
            _only(method, "GET")
            text, content_type = self.server.metrics_text()
            return 200, {"Content-Type": content_type}, text
        if path in ("/v2/models/stats", "/v2/models/stats/"):
            _only(method, "GET")
            return 200, {}, json.dumps(self.model.statistics()).encode()
        if path == "/v2/repository/index":
            _only(method, "POST")
            ready_only = _json_object(await self._read(request), "repository index request").get("ready", False)
            return 200, {}, json.dumps(self.model.repository_index(ready_only is True)).encode()
        match = _REPOSITORY_PATH.match(path)
        if match:
            _only(method, "POST")
            return await self._load_or_unload(request, *match.groups())
        match = _MODEL_PATH.match(path)
        if not match:
            raise OipError(P.NOT_FOUND, f"no route {method} {path}")
        name, version, action = match.groups()
        if action == "/infer":
            _only(method, "POST")
            return await self._infer(request, name, version or "")
        _only(method, "GET")
        if action == "/stats":
            return 200, {}, json.dumps(self.model.statistics(name, version or "")).encode()
        if action == "/config":
            return 200, {}, json.dumps(self.model.config(name, version or "")).encode()
        if action == "/ready":
            ready = self.server.model_ready(name, version or "")
            return (200 if ready else 503), {}, b'{"ready":true}' if ready else b'{"ready":false}'
        self.model.check(name, version)
        return 200, {}, json.dumps(self.model.metadata()).encode()

    async def _load_or_unload(self, request: BaseRequest, name: str, action: str):
        parameters = _json_object(await self._read(request), f"repository {action} request").get("parameters", {})
        if not isinstance(parameters, dict):
            raise OipError(P.BAD_REQUEST, f"repository {action} request: 'parameters' must be a JSON object")
        if action == "unload":
            self.model.unload(name)
        # loading a version takes seconds: off the event loop, which keeps serving the current one meanwhile
        await asyncio.get_running_loop().run_in_executor(self.executor, self.model.load, name, parameters)
        return 200, {}, b""

    async def _infer(self, request: BaseRequest, name: str, version: str):
        if self.server.draining:
            raise OipError(P.UNAVAILABLE, "the server is shutting down")
        self.model.check(name, version)
        headers = request.headers
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise OipError(P.UNSUPPORTED_MEDIA, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or "
                                                "none)")
        length = request.content_length
        if length is None and not request.body_exists:
            raise OipError(LENGTH_REQUIRED, "an inference request needs a body")
        if length is not None and length > self.max_body_bytes:
            raise OipError(P.TOO_LARGE, f"request body of {length} bytes is over the limit of "
                                        f"{self.max_body_bytes} (--max_body_mb)")
        header_length = headers.get("Inference-Header-Content-Length")
        if header_length is not None:
            try:
                header_length = int(header_length)
            except ValueError:
                raise OipError(P.BAD_REQUEST, "Inference-Header-Content-Length must be an integer") from None
        cost = self._decode_cost(length, header_length, encoding)
        await self._reserve(cost)
        try:
            body = await self._read(request)
            if encoding != "identity":
                body = _decompress(body, encoding, self.max_body_bytes)
            # decoding a large body on the event loop would stall every other connection: a worker thread does it
            answer, json_size = await self.server.infer_http(
                body, header_length, None if len(body) <= INLINE_BODY_BYTES else self.executor)
            del body
        finally:
            self.budget.release(cost)
        out = {"Content-Type": "application/octet-stream" if json_size is not None else JSON}
        if json_size is not None:
            out["Inference-Header-Content-Length"] = str(json_size)
        accept = (headers.get("Accept-Encoding") or "").lower()
        if "gzip" in accept:
            answer = gzip.compress(answer, compresslevel=1)
            out["Content-Encoding"] = "gzip"
        elif "deflate" in accept:
            answer = zlib.compress(answer, 1)
            out["Content-Encoding"] = "deflate"
        return 200, out, answer

    def _decode_cost(self, length: int | None, header_length: int | None, encoding: str) -> int:
        """Memory a request may take while decoded: JSON numbers become Python objects first (~20x the text),
        binary tensors are viewed in place. Compressed or unsized bodies count at the body limit."""
        size = self.max_body_bytes if length is None or encoding != "identity" else length
        if header_length is not None and 0 <= header_length <= size:
            return max(1, header_length) * JSON_EXPANSION + (size - header_length) * 2
        return max(1, size) * JSON_EXPANSION

    async def _reserve(self, cost: int) -> None:
        if cost > self.budget.limit:
            raise OipError(P.TOO_LARGE, f"a request this large ({cost >> 20} MiB once decoded) does not fit the "
                                        f"memory this server gives to decoding ({self.budget.limit >> 20} MiB, "
                                        "--max_decode_mb); send binary tensors (tritonclient's default) or smaller "
                                        "batches")
        if not self.budget.try_acquire(cost):
            loop = asyncio.get_running_loop()
            if not await loop.run_in_executor(self.executor, self.budget.acquire, cost, BUDGET_WAIT_S):
                raise OipError(P.UNAVAILABLE, "the server is decoding as many large requests as its memory allows "
                                              "(--max_decode_mb); retry later")

    async def _read(self, request: BaseRequest) -> bytes:
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise OipError(P.TOO_LARGE, f"request body over the limit of {self.max_body_bytes} bytes "
                                        "(--max_body_mb)") from None
        except TimeoutError:
            raise OipError(P.BAD_REQUEST, f"request body did not arrive within {self.read_timeout_s:g} s") from None


def _only(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise OipError(METHOD_NOT_ALLOWED, f"method {method} not allowed here (use {allowed})")


def _json_object(body: bytes, what: str) -> dict:
    """A small JSON object body (empty: {}); OipError when it is anything else."""
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise OipError(P.BAD_REQUEST, f"{what} body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise OipError(P.BAD_REQUEST, f"{what} body must be a JSON object")
    return doc


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise OipError(P.BAD_REQUEST, f"request body is not valid {encoding}: {e}") from None
    if len(out) > limit:
        raise OipError(P.TOO_LARGE, f"request body over the limit of {limit} bytes once decompressed (--max_body_mb)")
    if not d.eof:
        raise OipError(P.BAD_REQUEST, f"request body is not valid {encoding}: truncated stream")
    return out
