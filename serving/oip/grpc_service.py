"""Open Inference Protocol over gRPC (grpc.aio, on the same event loop as the HTTP front-end, so the runtime's loop
batcher merges requests of both transports without a thread hand-off): `inference.GRPCInferenceService`
(ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and Triton's ModelStatistics,
ModelConfig, RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload) registered with a generic handler
on raw bytes, so an undecodable request reaches our own validation (INVALID_ARGUMENT with a message) instead of
failing inside grpc. Plus the standard `grpc.health.v1.Health` service. Refusals end with the fitting status code
and the message as details (what tritonclient shows in its InferenceServerException)."""
from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ctrkit.runtime import loop_arrivals
from serving.oip import protocol as P
from serving.oip.protocol import OipError
from serving.rpc.grpc_transport import MethodTable

log = logging.getLogger("serving.oip")


def _handlers(server) -> dict:
    M = P.MESSAGES
    model = server.model

    def server_live(req, ctx):
        return M["ServerLiveResponse"](live=True)

    def server_ready(req, ctx):
        return M["ServerReadyResponse"](ready=server.ready)

    def model_ready(req, ctx):
        return M["ModelReadyResponse"](ready=server.model_ready(req.name, req.version))

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

    def model_statistics(req, ctx):
        return json_format.ParseDict(model.statistics(req.name, req.version), M["ModelStatisticsResponse"]())

    def model_config(req, ctx):
        return json_format.ParseDict({"config": model.config(req.name, req.version)}, M["ModelConfigResponse"]())

    def repository_index(req, ctx):
        return json_format.ParseDict({"models": model.repository_index(req.ready)}, M["RepositoryIndexResponse"]())

    async def repository_model_load(req, ctx):
        parameters = {key: req.parameters[key].WhichOneof("parameter_choice") for key in req.parameters}
        # loading a version takes seconds: off the event loop, which keeps serving the current one meanwhile
        await asyncio.get_running_loop().run_in_executor(None, model.load, req.model_name, parameters)
        return M["RepositoryModelLoadResponse"]()

    def repository_model_unload(req, ctx):
        model.unload(req.model_name)  # refuses (OipError): one model per server

    async def model_infer(req, ctx):
        response, version = await server.infer_grpc(req)
        return response

    return {"ServerLive": server_live, "ServerReady": server_ready, "ModelReady": model_ready,
            "ServerMetadata": server_metadata, "ModelMetadata": model_metadata, "ModelInfer": model_infer,
            "ModelStatistics": model_statistics, "ModelConfig": model_config, "RepositoryIndex": repository_index,
            "RepositoryModelLoad": repository_model_load, "RepositoryModelUnload": repository_model_unload}


def _ascii(text: str) -> str:
    """gRPC details must be printable ASCII; a request's own (odd) names may not be."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")


def _wrap(server, method: str, fn):
    request_type = P.METHODS[method]
    is_infer = method == "ModelInfer"
    is_async = asyncio.iscoroutinefunction(fn)

    async def call(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if is_infer:
            loop_arrivals().arrived()  # announced by MethodTable: decoded and queued in this step
        try:
            request = P.decode_grpc_message(request_type, body)
            answer = await fn(request, context) if is_async else fn(request, context)
            return answer.SerializeToString()
        except OipError as e:
            if is_infer:
                server.count("grpc", e.kind.http_status)
            error = (getattr(grpc.StatusCode, e.kind.grpc_code), _ascii(e.message))
        except Exception:  # noqa: BLE001 - logged, never sent to the client
            log.exception("unexpected error in %s", method)
            if is_infer:
                server.count("grpc", 500)
            error = (grpc.StatusCode.INTERNAL, "internal server error; see the server log")
        await context.abort(*error)
    return call


class GrpcFrontEnd:
    """Built (and its port bound) inside the serving loop: `await GrpcFrontEnd.create(...)` there."""

    @classmethod
    async def create(cls, server, host: str, port: int, max_message_bytes: int, max_concurrent_rpcs: int,
                     reuse_port: bool = False) -> "GrpcFrontEnd":
        self = cls()
        options = [("grpc.so_reuseport", int(reuse_port)),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        # ModelInfer calls are announced to the runtime's loop batcher as they start (--batch_join_us)
        join = server.model.runtime.options.batching.join_us
        self.grpc = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
        methods = {name: grpc.unary_unary_rpc_method_handler(_wrap(server, name, fn))
                   for name, fn in _handlers(server).items()}
        self.grpc.add_generic_rpc_handlers((MethodTable(P.SERVICE, methods, {"ModelInfer"} if join else set()),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        await self.set_serving(False)
        try:
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC to {host}:{port}: {e}") from None
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{port}")
        return self

    async def start(self) -> None:
        await self.grpc.start()

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", P.SERVICE):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.grpc.stop(grace_s)
