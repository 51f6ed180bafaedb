"""gRPC transport: `GeneralModelService/inference` and `/debug` registered with a generic handler (no codegen),
plus the standard `grpc.health.v1.Health` service.

Handlers take and return raw bytes so that undecodable requests reach our own validation (INVALID_ARGUMENT with
err_no) instead of failing inside grpc. A refused request ends with the fitting status code; since gRPC carries
no message on a non-OK status, `err_no` and `err_msg` travel as trailing metadata and the details text is
`err_msg`. Successful answers carry the serving model version in trailing metadata `model-version`.
"""
from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.rpc import protocol as P
from serving.rpc.protocol import RequestError
from serving.rpc.service import InferenceService


def _handler(service: InferenceService, transport: str):
    def call(body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            answer, version = service.answer(transport, body, P.decode_proto, P.encode_proto)
        except RequestError as e:
            context.set_trailing_metadata((("err_no", str(e.kind.err_no)), ("err_msg", e.message)))
            context.abort(getattr(grpc.StatusCode, e.kind.grpc_code), e.message)
        context.set_trailing_metadata((("model-version", str(version)),))
        return answer
    return call


class GrpcTransport:
    def __init__(self, service: InferenceService, host: str, port: int, threads: int, max_message_bytes: int,
                 max_concurrent_rpcs: int, reuse_port: bool = False):
        # a port already in use must be an error, not silently shared, unless --workers shares it on purpose
        options = [("grpc.so_reuseport", int(reuse_port)),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
                                  options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
        methods = {name: grpc.unary_unary_rpc_method_handler(_handler(service, "grpc"))
                   for name in ("inference", "debug")}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(P.SERVICE, methods),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.set_serving(False)
        try:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:  # grpc raises when the port cannot be bound
            raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None

    def start(self) -> None:
        self.server.start()

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", P.SERVICE):
            self.health.set(name, status)

    def stop(self, grace_s: float):
        """Refuse new RPCs, let running ones finish within `grace_s`; returns an Event set when stopped."""
        return self.server.stop(grace_s)
