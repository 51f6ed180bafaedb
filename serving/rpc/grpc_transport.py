"""gRPC transport on grpc.aio: `GeneralModelService/inference` and `/debug` registered with a generic handler (no
codegen), plus the standard `grpc.health.v1.Health` service. It shares the HTTP transport's event loop, so
requests from both transports are merged by the runtime's loop batcher without a thread hand-off.

Handlers take and return raw bytes so that undecodable requests reach our own validation (INVALID_ARGUMENT with
err_no) instead of failing inside grpc. A refused request ends with the fitting status code; since gRPC carries
no message on a non-OK status, `err_no` and `err_msg` travel as trailing metadata and the details text is
`err_msg`. Successful answers carry the serving model version in trailing metadata `model-version`.
"""
from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ctrkit.runtime import loop_arrivals
from serving.rpc import protocol as P
from serving.rpc.protocol import RequestError
from serving.rpc.service import InferenceService


def _ascii(text: str) -> str:
    """Metadata values must be printable ASCII; a request's own (odd) names may not be."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")


class MethodTable(grpc.GenericRpcHandler):
    """The server's methods by full name. grpc calls `service()` as it starts each call, before the message is
    read: for the methods in `announce` it tells the runtime's loop batcher that a request is arriving, so a model
    call about to run waits (--batch_join_us at most) for it to join the batch; the handler says `arrived()` when
    it starts. gRPC hands calls to the loop one completion at a time, so without this they rarely merge. (A lookup
    table, not a grpc.aio interceptor: an interceptor wraps every call in extra coroutines.)"""

    def __init__(self, service: str, handlers: dict[str, grpc.RpcMethodHandler], announce: set[str]):
        self.handlers = {f"/{service}/{method}": handler for method, handler in handlers.items()}
        self.announce = {f"/{service}/{method}" for method in announce}

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method in self.announce:
            loop_arrivals().expect()
        return self.handlers.get(method)


def _handler(service: InferenceService):
    async def call(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        loop_arrivals().arrived()
        try:
            answer, version = await service.answer_async("grpc", body, P.decode_proto, P.encode_proto,
                                                         reserve=True)
        except RequestError as e:
            message = _ascii(e.message)
            context.set_trailing_metadata((("err_no", str(e.kind.err_no)), ("err_msg", message)))
            await context.abort(getattr(grpc.StatusCode, e.kind.grpc_code), message)
        context.set_trailing_metadata((("model-version", str(version)),))
        return answer
    return call


class GrpcTransport:
    """Built (and its port bound) inside `loop`: call `await GrpcTransport.create(...)` there."""

    @classmethod
    async def create(cls, service: InferenceService, host: str, port: int, max_message_bytes: int,
                     max_concurrent_rpcs: int, reuse_port: bool = False) -> "GrpcTransport":
        self = cls()
        # a port already in use must be an error, not silently shared, unless --workers shares it on purpose
        options = [("grpc.so_reuseport", int(reuse_port)),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
        handler = grpc.unary_unary_rpc_method_handler(_handler(service))
        announce = {"inference", "debug"} if service.runtime.options.batching.join_us else set()
        self.server.add_generic_rpc_handlers((MethodTable(P.SERVICE, {"inference": handler, "debug": handler},
                                                          announce),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self.set_serving(False)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:  # grpc raises when the port cannot be bound
            raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        return self

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", P.SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, let running ones finish within `grace_s`."""
        await self.server.stop(grace_s)


__all__ = ["GrpcTransport", "asyncio"]
