"""A client for Paddle Serving's protocol (this server or Paddle Serving's own) and a small load runner.

`ServingClient` speaks gRPC (`rpc`), HTTP + JSON (`http`) or HTTP + protobuf (`http_proto`), builds requests
from the feed variables of `serving_client_conf.prototxt`, and returns the click probabilities or raises
`ServingError` with the server's err_no. `run_load` drives many clients at once (one connection per concurrent
client, as separate Paddle Serving clients would) and measures latency; `tools/rec_client.py` is its CLI.
"""
from __future__ import annotations

import gzip
import http.client
import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.rebatch import rebatch
from ctrkit.serving_config import CLIENT_CONF, TEXT_SUFFIX, read_text

from serving.rpc import protocol as P

MODES = ("rpc", "http", "http_proto")


class ServingError(Exception):
    """A request the server refused or could not answer (err_no 0: the transport failed)."""

    def __init__(self, err_no: int, message: str, status: str = ""):
        super().__init__(f"err_no={err_no} {status}: {message}" if status else f"err_no={err_no}: {message}")
        self.err_no = err_no
        self.status = status


@dataclass(frozen=True)
class FeedVar:
    name: str
    alias: str
    width: int      # values per sample


@dataclass(frozen=True)
class FeedLayout:
    """The feeds of a client config: an FP32 dense feed (None when the model has no numeric fields) and either
    one packed INT64 sparse feed (`packed`) or one INT64 feed per feature field, in column order of
    `sparse_inputs` (PaddleRec's layout: C1..C26 for Criteo); and the fetch alias."""

    dense: FeedVar | None
    sparse: tuple[FeedVar, ...]
    fetch_alias: str
    packed: bool

    @property
    def sparse_width(self) -> int:
        return sum(v.width for v in self.sparse)

    def feeds(self, dense: np.ndarray, sparse: np.ndarray) -> list[tuple[FeedVar, int, np.ndarray]]:
        """(feed var, elem_type, [B, width] array) for one batch of packed arrays."""
        out = [(self.dense, P.FP32, dense)] if self.dense is not None else []
        start = 0
        for var in self.sparse:
            out.append((var, P.INT64, sparse[:, start:start + var.width]))
            start += var.width
        return out


def read_feed_layout(client_config: str) -> FeedLayout:
    """Parse serving_client_conf.prototxt (or the directory holding it); ValueError if it is not a CTR model's."""
    path = os.path.join(client_config, CLIENT_CONF + TEXT_SUFFIX) if os.path.isdir(client_config) else client_config
    config = read_text(path)

    def var(v) -> FeedVar:
        return FeedVar(v.name, v.alias_name or v.name, int(np.prod(list(v.shape))) if len(v.shape) else 1)

    dense = [var(v) for v in config.feed_var if v.feed_type == P.FP32]
    sparse = [var(v) for v in config.feed_var if v.feed_type == P.INT64]
    others = [v.alias_name for v in config.feed_var if v.feed_type not in (P.FP32, P.INT64)]
    if len(dense) > 1 or not sparse or others or len(config.fetch_var) != 1:
        raise ValueError(f"{path}: expected at most one float32 feed, int64 feeds (one packed, or one per field) "
                         f"and one fetch var (a ctrkit CTR model), got feeds "
                         f"{[(v.alias_name, v.feed_type, list(v.shape)) for v in config.feed_var]}")
    fetch = config.fetch_var[0]
    packed = len(sparse) == 1 and sparse[0].width > 1
    return FeedLayout(dense[0] if dense else None, tuple(sparse), fetch.alias_name or fetch.name, packed)


class ServingClient:
    """One connection; not thread-safe (use one per thread)."""

    def __init__(self, layout: FeedLayout, endpoint: str, mode: str = "rpc", timeout_s: float = 20.0,
                 compress: bool = False):
        if mode not in MODES:
            raise ValueError(f"client mode must be one of {MODES}, got {mode!r}")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--connect must be host:port, got {endpoint!r}")
        self.layout, self.mode, self.timeout_s, self.compress = layout, mode, timeout_s, compress
        self._host, self._port = host, int(port)
        self._channel = self._call = self._http = None
        if mode == "rpc":
            self._channel = grpc.insecure_channel(endpoint, options=[
                ("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 512 << 20),
                ("grpc.use_local_subchannel_pool", 1)])  # a connection of its own, like a separate client
            self._call = self._channel.unary_unary(f"/{P.SERVICE}/inference", request_serializer=None,
                                                   response_deserializer=None)

    def request_bytes(self, dense: np.ndarray, sparse: np.ndarray, log_id: int = 0) -> bytes:
        """The serialised request (protobuf for rpc/http_proto, JSON with proto field names for http)."""
        feeds = self.layout.feeds(dense, sparse)
        if self.mode == "http":
            tensors = [{P.ELEM_FIELDS[elem]: array.ravel().tolist(), "elem_type": elem, "shape": list(array.shape),
                        "name": var.name, "alias_name": var.alias} for var, elem, array in feeds]
            return json.dumps({"tensor": tensors, "fetch_var_names": [self.layout.fetch_alias],
                               "log_id": log_id}).encode()
        req = P.Request(fetch_var_names=[self.layout.fetch_alias], log_id=log_id)
        for var, elem, array in feeds:
            # raw little-endian bytes: the cheapest encoding for both sides (Paddle Serving's tensor_content)
            req.tensor.add(tensor_content=np.ascontiguousarray(array, dtype=P.ELEM_DTYPES[elem]).tobytes(),
                           elem_type=elem, shape=array.shape, name=var.name, alias_name=var.alias)
        return req.SerializeToString()

    def predict(self, dense: np.ndarray, sparse: np.ndarray, log_id: int = 0) -> np.ndarray:
        """Click probabilities float32 [B]; ServingError when the server refuses or the transport fails."""
        body = self.request_bytes(dense, sparse, log_id)
        answer = self._send_rpc(body) if self.mode == "rpc" else self._send_http(body)
        prob = self._fetch(answer)
        if len(prob) != len(dense):
            raise ServingError(0, f"answer holds {len(prob)} predictions for {len(dense)} samples")
        return prob

    def _send_rpc(self, body: bytes):  # -> Response
        try:
            return P.Response.FromString(self._call(body, timeout=self.timeout_s))
        except grpc.RpcError as e:
            meta = dict(e.trailing_metadata() or ())
            raise ServingError(int(meta.get("err_no", 0)), e.details() or "", e.code().name) from None

    def _send_http(self, body: bytes):  # -> Response, or the parsed JSON answer
        headers = {"Content-Type": "application/proto" if self.mode == "http_proto" else "application/json",
                   "Accept-Encoding": "gzip"}
        if self.compress:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        status, content_type, data = self._post(body, headers)
        try:
            answer = P.Response.FromString(data) if content_type == "application/proto" else json.loads(data)
        except (DecodeError, ValueError):
            raise ServingError(0, f"unreadable answer ({len(data)} bytes of {content_type or 'no Content-Type'})",
                               f"HTTP {status}") from None
        err_no = answer.err_no if content_type == "application/proto" else answer.get("err_no", 0)
        if status != 200 or err_no:
            message = answer.err_msg if content_type == "application/proto" else answer.get("err_msg", "")
            raise ServingError(err_no, message, f"HTTP {status}")
        return answer

    def _post(self, body: bytes, headers: dict) -> tuple[int, str, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the server has since closed is re-opened once
            if self._http is None:
                self._http = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            try:
                self._http.request("POST", P.HTTP_PATHS[0], body=body, headers=headers)
                resp = self._http.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self._http.close()
                self._http = None
                if attempt == 2 or not isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                      BrokenPipeError)):
                    raise ServingError(0, f"HTTP request to {self._host}:{self._port} failed: {e}") from None
                continue
            if resp.getheader("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
            if resp.getheader("Connection", "").lower() == "close":
                self._http.close()
                self._http = None
            return resp.status, resp.getheader("Content-Type", ""), data
        raise AssertionError("unreachable")

    def _fetch(self, answer) -> np.ndarray:
        alias = self.layout.fetch_alias
        if isinstance(answer, dict):
            for output in answer.get("outputs", []):
                for t in output.get("tensor", []):
                    if t.get("alias_name") == alias:
                        return np.asarray(t["float_data"], dtype=np.float32)
        else:
            for output in answer.outputs:
                for t in output.tensor:
                    if t.alias_name == alias:
                        return np.array(t.float_data, dtype=np.float32)
        raise ServingError(0, f"answer has no '{alias}' output")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._http is not None:
            self._http.close()


def wait_ready(endpoint: str, mode: str, timeout_s: float) -> None:
    """Block until the server on `endpoint` is ready (gRPC health SERVING, or HTTP GET /ready 200);
    TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    host, _, port = endpoint.rpartition(":")
    while True:
        try:
            if mode == "rpc":
                with grpc.insecure_channel(endpoint) as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=P.SERVICE), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            else:
                conn = http.client.HTTPConnection(host, int(port), timeout=2)
                try:
                    conn.request("GET", "/ready")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
        except (grpc.RpcError, OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server at {endpoint} not ready after {timeout_s:g} s")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ load runner
@dataclass
class LoadResult:
    requests: int = 0
    samples: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)  # the first few, for the report

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        pct = {f"p{q}_ms": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)}
        return {"requests": self.requests, "samples": self.samples, "errors": self.errors,
                "seconds": round(self.seconds, 3), "qps": round(self.requests / self.seconds, 1) if self.seconds else 0,
                "samples_per_s": round(self.samples / self.seconds, 1) if self.seconds else 0, **pct,
                "mean_ms": round(float(lat.mean()), 3)}


Batch = tuple[int, np.ndarray, np.ndarray]  # (request index, dense, sparse)


def request_batches(paths: str | list[str], spec: FeatureSpec, batch_size: int, cycle: bool = False,
                    limit: int | None = None) -> Iterator[Batch]:
    """Numbered request batches parsed by the shared data layer: one pass over the data (the last batch may be
    smaller), or with `cycle` the data over and over in batches of exactly `batch_size`; at most `limit`."""
    def passes() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            empty = True
            for b in iter_batches(paths, spec, batch_size):
                empty = False
                yield b.dense, b.sparse
            if empty:
                raise ValueError(f"{paths}: no data rows")
            if not cycle:
                return

    def exact(rows: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for dense, sparse in rebatch(rows, batch_size):  # the toolkit's one re-batching helper
            yield dense, sparse

    rows = exact(passes()) if cycle else passes()
    return ((i, dense, sparse) for i, (dense, sparse) in enumerate(itertools.islice(rows, limit)))


OnAnswer = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]  # (index, dense, sparse, prob)


def run_load(make_client: Callable[[], ServingClient], batches: Iterator[Batch], concurrency: int,
             duration_s: float | None = None, warmup: int = 0, on_answer: OnAnswer | None = None) -> LoadResult:
    """Send `batches` from `concurrency` threads, each with its own connection, until the batches run out or
    `duration_s` passes. `warmup` requests per thread (the first batch, not counted) open the connections."""
    result = LoadResult()
    lock = threading.Lock()
    first = next(batches, None)
    if first is None:
        raise ValueError("no data to send")
    batches = itertools.chain([first], batches)
    clients = [make_client() for _ in range(concurrency)]
    for client in clients:
        for _ in range(warmup):
            client.predict(first[1], first[2])
    start = time.perf_counter()
    deadline = start + duration_s if duration_s else None

    def work(client: ServingClient) -> None:
        while deadline is None or time.perf_counter() < deadline:
            with lock:
                item = next(batches, None)
            if item is None:
                return
            index, dense, sparse = item
            t0 = time.perf_counter()
            try:
                prob = client.predict(dense, sparse, log_id=index)
            except Exception as e:  # counted and reported, and the other clients carry on
                with lock:
                    result.errors += 1
                    result.requests += 1
                    if len(result.error_messages) < 5:
                        result.error_messages.append(f"request {index}: {e}")
                continue
            elapsed_ms = (time.perf_counter() - t0) * 1000
            with lock:
                result.requests += 1
                result.samples += len(dense)
                result.latencies_ms.append(elapsed_ms)
                if on_answer is not None:
                    on_answer(index, dense, sparse, prob)

    threads = [threading.Thread(target=work, args=(c,), name=f"client-{i}") for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    for client in clients:
        client.close()
    return result
