"""HTTP/1.1 transport (stdlib `ThreadingHTTPServer`, keep-alive, one thread per connection, bounded).

POST /GeneralModelService/inference (and /debug): a JSON `Request` with the proto field names, or a serialised
one with `Content-Type: application/proto`; either may be gzip-compressed (`Content-Encoding: gzip`). The answer
comes in kind: `Content-Type: application/proto` exactly (Paddle Serving's client tests that string) or
`application/json`, gzip-compressed when the client accepts it and the body is big enough to gain.
Refused requests get the fitting HTTP status with a Response carrying err_no / err_msg, in the request's kind.

GET /health (liveness), /ready (a model is loaded and the server is not draining), /metrics (Prometheus),
/versions (served, available and refused model versions).
"""
from __future__ import annotations

import gzip
import json
import logging
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.rpc import protocol as P
from serving.rpc.metrics import ServerMetrics
from serving.rpc.protocol import RequestError
from serving.rpc.service import InferenceService

log = logging.getLogger(__name__)

PROTO_TYPES = {"application/proto", "application/x-protobuf", "application/octet-stream"}
JSON_TYPES = {"", "application/json"}
GZIP_MIN_BYTES = 1024      # smaller answers are sent as they are: compressing them costs more than it saves
IDLE_TIMEOUT_S = 60        # a connection silent this long is closed (slow or vanished clients)


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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ctrkit-serving"
    sys_version = ""
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)
    timeout = IDLE_TIMEOUT_S
    server: "_Server"

    # -------------------------------------------------------------------------------- inference
    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] not in P.HTTP_PATHS:
            self._send_json(404, {"error": f"no such endpoint: POST {self.path}; use {P.HTTP_PATHS[0]}"})
            return
        media = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        proto = media in PROTO_TYPES
        transport = "http_proto" if proto else "http_json"
        try:
            body = self._read_body()
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding == "gzip":
                body = gunzip(body, self.server.max_body_bytes)
            elif encoding != "identity":
                raise RequestError(P.UNSUPPORTED_MEDIA, f"Content-Encoding '{encoding}' is not supported "
                                                        "(use gzip or none)")
            if not proto and media not in JSON_TYPES:
                raise RequestError(P.UNSUPPORTED_MEDIA, f"Content-Type '{media}' is not supported; send "
                                                        "application/json or application/proto")
        except RequestError as e:
            self.server.metrics.requests.labels(transport, str(e.kind.err_no)).inc()
            self._send_error(e, proto)
            return
        decode, encode = (P.decode_proto, P.encode_proto) if proto else (P.decode_json, P.encode_json)
        try:
            answer, version = self.server.service.answer(transport, body, decode, encode)
        except RequestError as e:
            self._send_error(e, proto)
            return
        self._send(200, answer, "application/proto" if proto else "application/json",
                   {"X-Model-Version": str(version)})

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower() \
                or self.headers.get("Content-Length") is None:
            self.close_connection = True
            raise RequestError(P.LENGTH_REQUIRED, "send the body with a Content-Length header")
        try:
            length = int(self.headers["Content-Length"])
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(P.BAD_REQUEST, f"bad Content-Length '{self.headers['Content-Length']}'")
        if length > self.server.max_body_bytes:
            self.close_connection = True  # the unread body would be taken for the next request
            raise RequestError(P.TOO_LARGE, f"body of {length} bytes exceeds the limit of "
                                            f"{self.server.max_body_bytes} bytes")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise RequestError(P.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
        return body

    def _send_error(self, e: RequestError, proto: bool) -> None:
        if e.kind is P.UNAVAILABLE:
            self.close_connection = True  # draining: send the client elsewhere
        if proto:
            self._send(e.kind.http_status, P.error_proto(e.kind, e.message, e.log_id), "application/proto")
        else:
            self._send(e.kind.http_status, P.error_json(e.kind, e.message, e.log_id), "application/json")

    # ----------------------------------------------------------------------------------- status
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        server = self.server
        if path == "/health":
            self._send_json(200, {"status": "alive"})
        elif path == "/ready":
            ready = not server.service.draining and server.service.versions.version is not None
            self._send_json(200 if ready else 503, {"ready": ready, "version": server.service.versions.version,
                                                    "draining": server.service.draining})
        elif path == "/metrics":
            self._send(200, server.metrics.render(), server.metrics.content_type)
        elif path == "/versions":
            self._send_json(200, server.service.versions.status())
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {self.path}"})

    # ------------------------------------------------------------------------------------ output
    def _send_json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        if len(body) >= GZIP_MIN_BYTES and _accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=1)
            extra = {**(extra or {}), "Content-Encoding": "gzip"}
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True       # idle keep-alive connections must not hold up exit; drain waits on requests
    request_queue_size = 1024   # listen backlog: bursts of new connections must not be refused

    def __init__(self, address, service: InferenceService, metrics: ServerMetrics, max_body_bytes: int,
                 max_connections: int, reuse_port: bool):
        self.allow_reuse_port = reuse_port  # --workers: several processes listen on one port
        self.service = service
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            finally:
                self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class HttpTransport:
    def __init__(self, service: InferenceService, metrics: ServerMetrics, host: str, port: int,
                 max_body_bytes: int, max_connections: int, reuse_port: bool = False):
        self.server = _Server((host, port), service, metrics, max_body_bytes, max_connections, reuse_port)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop_accepting(self) -> None:
        """Stop the accept loop and close the listening socket; open connections finish their request."""
        self.server.shutdown()
        self.server.socket.close()
