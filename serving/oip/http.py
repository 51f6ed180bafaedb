"""Open Inference Protocol over HTTP/REST: a bare ASGI application served by uvicorn (httptools parser, uvloop).

Routes (KServe v2 / Triton):
    GET  /v2/health/live                 200 {"live": true}
    GET  /v2/health/ready                200 {"ready": true} once a checked version is loaded, else 503
    GET  /v2                             server metadata {"name", "version", "extensions"}
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      200 / 503 (404 for an unknown model or version)
    POST /v2/models/{name}[/versions/{v}]/infer      inference (JSON, or JSON + binary tensors)
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

from serving.oip import protocol as P
from serving.oip.protocol import OipError

log = logging.getLogger("serving.oip")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?/?$")
JSON = b"application/json"
INLINE_BODY_BYTES = 64 * 1024  # smaller requests are decoded on the event loop


class HttpApp:
    """The ASGI callable. `server` supplies model, readiness, metrics and the limits."""

    def __init__(self, server, threads: int):
        self.server = server
        self.model = server.model
        self.decoder = server.decoder
        self.max_body = server.max_body_bytes
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oip-http")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        try:
            status, headers, body = await self._route(scope, receive)
        except OipError as e:
            status, headers, body = e.kind.http_status, [], _error_body(e.message)
            self.server.count("http", e.kind.http_status)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            status, headers, body = 500, [], _error_body("internal server error; see the server log")
            self.server.count("http", 500)
        if self.server.draining:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", JSON), *headers] if not any(
                        h[0] == b"content-type" for h in headers) else headers})
        await send({"type": "http.response.body", "body": body})

    async def _route(self, scope, receive):
        path, method = scope["path"], scope["method"]
        if path == "/v2/health/live":
            _only(method, "GET")
            return 200, [], b'{"live":true}'
        if path == "/v2/health/ready":
            _only(method, "GET")
            ready = self.server.ready
            return (200 if ready else 503), [], b'{"ready":true}' if ready else b'{"ready":false}'
        if path in ("/v2", "/v2/"):
            _only(method, "GET")
            return 200, [], json.dumps(self.server.server_metadata()).encode()
        if path == "/metrics":
            _only(method, "GET")
            text, content_type = self.server.metrics_text()
            return 200, [(b"content-type", content_type.encode())], text
        match = _MODEL_PATH.match(path)
        if not match:
            raise OipError(P.NOT_FOUND, f"no route {path}")
        name, version, action = match.groups()
        if action == "/infer":
            _only(method, "POST")
            return await self._infer(scope, receive, name, version or "")
        _only(method, "GET")
        if action == "/ready":
            if name != self.model.name:
                raise OipError(P.NOT_FOUND, f"unknown model '{name}'; this server serves '{self.model.name}'")
            ready = self.server.ready and (not version or version == self.model.version)
            return (200 if ready else 503), [], b'{"ready":true}' if ready else b'{"ready":false}'
        self.model.check(name, version)
        return 200, [], json.dumps(self.model.metadata()).encode()

    async def _infer(self, scope, receive, name: str, version: str):
        if self.server.draining:
            raise OipError(P.UNAVAILABLE, "the server is shutting down")
        self.model.check(name, version)
        headers = dict(scope["headers"])
        body = await self._read_body(headers, receive)
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding not in (b"identity", b""):
            body = _decompress(body, encoding, self.max_body)
        header_length = headers.get(b"inference-header-content-length")
        if header_length is not None:
            try:
                header_length = int(header_length)
            except ValueError:
                raise OipError(P.BAD_REQUEST, "Inference-Header-Content-Length must be an integer") from None
        accept = headers.get(b"accept-encoding", b"").lower()
        if len(body) <= INLINE_BODY_BYTES:
            answer, json_size = await self.server.infer_http_async(body, header_length)
        else:  # decoding a large body would stall every other connection on the event loop
            loop = asyncio.get_running_loop()
            answer, json_size = await loop.run_in_executor(self.executor, self.server.infer_http, body,
                                                           header_length)
        out = [(b"content-type", b"application/octet-stream" if json_size is not None else JSON)]
        if json_size is not None:
            out.append((b"inference-header-content-length", str(json_size).encode()))
        if b"gzip" in accept:
            answer = gzip.compress(answer, compresslevel=1)
            out.append((b"content-encoding", b"gzip"))
        elif b"deflate" in accept:
            answer = zlib.compress(answer, 1)
            out.append((b"content-encoding", b"deflate"))
        return 200, out, answer

    async def _read_body(self, headers: dict, receive) -> bytes:
        length = headers.get(b"content-length")
        if length is None and headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            raise OipError(P.ErrorKind(411, "INVALID_ARGUMENT"), "an inference request needs a body "
                                                                 "(Content-Length)")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise OipError(P.BAD_REQUEST, "Content-Length must be an integer") from None
            if declared > self.max_body:
                raise OipError(P.TOO_LARGE, f"request body of {declared} bytes is over the limit of "
                                            f"{self.max_body} (--max_body_mb)")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise OipError(P.BAD_REQUEST, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise OipError(P.TOO_LARGE, f"request body over the limit of {self.max_body} bytes (--max_body_mb)")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _only(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise OipError(P.ErrorKind(405, "UNIMPLEMENTED"), f"method {method} not allowed here (use {allowed})")


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise OipError(P.UNSUPPORTED_MEDIA, f"Content-Encoding {encoding.decode(errors='replace')!r} is not "
                                            "supported (gzip, deflate or none)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise OipError(P.BAD_REQUEST, f"request body is not valid {encoding.decode()}: {e}") from None
    if len(out) > limit:
        raise OipError(P.TOO_LARGE, f"request body over the limit of {limit} bytes once decompressed (--max_body_mb)")
    return out
