"""Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer) registered with a generic handler on raw bytes, so an undecodable request
reaches our own validation (INVALID_ARGUMENT with a message) instead of failing inside grpc. Plus the standard
`grpc.health.v1.Health` service. Refusals end with the fitting status code and the message as details (what
tritonclient shows in its InferenceServerException)."""
from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.oip import protocol as P
from serving.oip.protocol import OipError

log = logging.getLogger("serving.oip")


def _handlers(server) -> dict:
    M = P.MESSAGES
    model = server.model

    def server_live(req, ctx):
        return M["ServerLiveResponse"](live=True)

    def server_ready(req, ctx):
        return M["ServerReadyResponse"](ready=server.ready)

    def model_ready(req, ctx):
        if req.name != model.name:
            raise OipError(P.NOT_FOUND, f"unknown model '{req.name}'; this server serves '{model.name}'")
        return M["ModelReadyResponse"](ready=server.ready and (not req.version or req.version == model.version))

    def server_metadata(req, ctx):
        return M["ServerMetadataResponse"](**server.server_metadata())

    def model_metadata(req, ctx):
        model.check(req.name, req.version)
        meta = model.metadata()
        response = M["ModelMetadataResponse"](name=meta["name"], versions=meta["versions"],
                                              platform=meta["platform"])
        for t in model.inputs:
            response.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for t in model.outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        return response

    def model_infer(req, ctx):
        response, version = server.infer_grpc(req)
        return response

    return {"ServerLive": server_live, "ServerReady": server_ready, "ModelReady": model_ready,
            "ServerMetadata": server_metadata, "ModelMetadata": model_metadata, "ModelInfer": model_infer}


def _wrap(server, method: str, fn):
    request_type = P.METHODS[method]

    def call(body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = P.decode_grpc_message(request_type, body)
            return fn(request, context).SerializeToString()
        except OipError as e:
            if method == "ModelInfer":
                server.count("grpc", e.kind.http_status)
            context.abort(getattr(grpc.StatusCode, e.kind.grpc_code), e.message)
        except Exception:  # noqa: BLE001 - logged, never sent to the client
            log.exception("unexpected error in %s", method)
            if method == "ModelInfer":
                server.count("grpc", 500)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
    return call


class GrpcFrontEnd:
    def __init__(self, server, host: str, port: int, threads: int, max_message_bytes: int,
                 reuse_port: bool = False):
        options = [("grpc.so_reuseport", int(reuse_port)),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oip-grpc"),
                                options=options)
        methods = {name: grpc.unary_unary_rpc_method_handler(_wrap(server, name, fn))
                   for name, fn in _handlers(server).items()}
        self.grpc.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(P.SERVICE, methods),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.set_serving(False)
        try:
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None

    def start(self) -> None:
        self.grpc.start()

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", P.SERVICE):
            self.health.set(name, status)

    def stop(self, grace_s: float):
        return self.grpc.stop(grace_s)
