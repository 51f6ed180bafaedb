"""The Open Inference Protocol (KServe v2, what Triton and KServe speak): messages, tensor decoding, errors.

gRPC messages are KServe's `grpc_predict_v2.proto` (package `inference`, service `GRPCInferenceService`, the
field numbers Triton's `grpc_service.proto` shares), built at import time from a `FileDescriptorProto` written out
below in a private descriptor pool: no protoc step, no generated file to drift from the installed protobuf, and no
clash with a client's own `_pb2` (e.g. tritonclient's) loaded in the same process.

Both transports decode into one `InferRequest` (numpy arrays per input, requested outputs) and the front-ends
encode the answer: HTTP as JSON (optionally with Triton's binary tensor extension), gRPC as `ModelInferResponse`
with `raw_output_contents`. Every refused request raises `OipError`, which fixes its HTTP status and gRPC code.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
# the KServe v2 / Triton datatype names of the numpy dtypes a CTR model uses (and the ones a client may send)
DATATYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
             "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
             "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
             "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64)}
DTYPE_NAMES = {v: k for k, v in DATATYPES.items()}
# InferTensorContents field per datatype (gRPC typed contents)
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                   "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                   "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                   "FP32": "fp32_contents", "FP64": "fp64_contents"}
EXTENSIONS = ("binary_tensor_data", "statistics", "model_configuration")


# ---------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class ErrorKind:
    http_status: int
    grpc_code: str  # a grpc.StatusCode name (text, so that this module does not import grpc)


BAD_REQUEST = ErrorKind(400, "INVALID_ARGUMENT")
NOT_FOUND = ErrorKind(404, "NOT_FOUND")            # unknown model or version
TOO_LARGE = ErrorKind(413, "RESOURCE_EXHAUSTED")   # body or batch over the configured limit
UNSUPPORTED_MEDIA = ErrorKind(415, "INVALID_ARGUMENT")
UNAVAILABLE = ErrorKind(503, "UNAVAILABLE")        # not ready, or draining
INTERNAL = ErrorKind(500, "INTERNAL")


class OipError(Exception):
    """A refused request: `kind` fixes the HTTP status and the gRPC code; the message names what is wrong."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# -------------------------------------------------------------------------------------------- messages
def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="ctrkit_grpc_predict_v2.proto", package=PACKAGE, syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    T = {"bool": F.TYPE_BOOL, "int32": F.TYPE_INT32, "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32,
         "uint64": F.TYPE_UINT64, "float": F.TYPE_FLOAT, "double": F.TYPE_DOUBLE, "string": F.TYPE_STRING,
         "bytes": F.TYPE_BYTES}

    def fields(msg, spec: list[tuple], oneof: str | None = None) -> None:
        """spec: (name, number, type or '.inference.Message' or 'enum .inference.Enum', repeated?)"""
        if oneof:
            msg.oneof_decl.add(name=oneof)
        for name, number, ftype, repeated in spec:
            f = msg.field.add(name=name, number=number,
                              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if ftype in T:
                f.type = T[ftype]
            elif ftype.startswith("enum "):
                f.type, f.type_name = F.TYPE_ENUM, ftype[len("enum "):]
            else:
                f.type, f.type_name = F.TYPE_MESSAGE, ftype
            if oneof:
                f.oneof_index = 0

    def message(name: str, spec: list[tuple], parent=None, oneof: str | None = None):
        msg = (parent.nested_type if parent is not None else fdp.message_type).add(name=name)
        fields(msg, spec, oneof)
        return msg

    def parameters_map(msg, full_name: str, number: int, value: str = ".inference.InferParameter") -> None:
        entry = msg.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        fields(entry, [("key", 1, "string", False), ("value", 2, value, False)])
        fields(msg, [("parameters", number, f"{full_name}.ParametersEntry", True)])

    for name, spec in [("ServerLiveRequest", []), ("ServerLiveResponse", [("live", 1, "bool", False)]),
                       ("ServerReadyRequest", []), ("ServerReadyResponse", [("ready", 1, "bool", False)]),
                       ("ModelReadyRequest", [("name", 1, "string", False), ("version", 2, "string", False)]),
                       ("ModelReadyResponse", [("ready", 1, "bool", False)]),
                       ("ServerMetadataRequest", []),
                       ("ServerMetadataResponse", [("name", 1, "string", False), ("version", 2, "string", False),
                                                   ("extensions", 3, "string", True)]),
                       ("ModelMetadataRequest", [("name", 1, "string", False), ("version", 2, "string", False)])]:
        message(name, spec)
    meta = message("ModelMetadataResponse", [
        ("name", 1, "string", False), ("versions", 2, "string", True), ("platform", 3, "string", False),
        ("inputs", 4, ".inference.ModelMetadataResponse.TensorMetadata", True),
        ("outputs", 5, ".inference.ModelMetadataResponse.TensorMetadata", True)])
    message("TensorMetadata", [("name", 1, "string", False), ("datatype", 2, "string", False),
                               ("shape", 3, "int64", True)], parent=meta)
    message("InferParameter", [("bool_param", 1, "bool", False), ("int64_param", 2, "int64", False),
                               ("string_param", 3, "string", False), ("double_param", 4, "double", False),
                               ("uint64_param", 5, "uint64", False)], oneof="parameter_choice")
    message("InferTensorContents", [
        ("bool_contents", 1, "bool", True), ("int_contents", 2, "int32", True), ("int64_contents", 3, "int64", True),
        ("uint_contents", 4, "uint32", True), ("uint64_contents", 5, "uint64", True),
        ("fp32_contents", 6, "float", True), ("fp64_contents", 7, "double", True),
        ("bytes_contents", 8, "bytes", True)])
    req = message("ModelInferRequest", [("model_name", 1, "string", False), ("model_version", 2, "string", False),
                                        ("id", 3, "string", False)])
    parameters_map(req, ".inference.ModelInferRequest", 4)
    fields(req, [("inputs", 5, ".inference.ModelInferRequest.InferInputTensor", True),
                 ("outputs", 6, ".inference.ModelInferRequest.InferRequestedOutputTensor", True),
                 ("raw_input_contents", 7, "bytes", True)])
    tin = message("InferInputTensor", [("name", 1, "string", False), ("datatype", 2, "string", False),
                                       ("shape", 3, "int64", True)], parent=req)
    parameters_map(tin, ".inference.ModelInferRequest.InferInputTensor", 4)
    fields(tin, [("contents", 5, ".inference.InferTensorContents", False)])
    tout = message("InferRequestedOutputTensor", [("name", 1, "string", False)], parent=req)
    parameters_map(tout, ".inference.ModelInferRequest.InferRequestedOutputTensor", 2)
    resp = message("ModelInferResponse", [("model_name", 1, "string", False), ("model_version", 2, "string", False),
                                          ("id", 3, "string", False)])
    parameters_map(resp, ".inference.ModelInferResponse", 4)
    fields(resp, [("outputs", 5, ".inference.ModelInferResponse.InferOutputTensor", True),
                  ("raw_output_contents", 6, "bytes", True)])
    tres = message("InferOutputTensor", [("name", 1, "string", False), ("datatype", 2, "string", False),
                                         ("shape", 3, "int64", True)], parent=resp)
    parameters_map(tres, ".inference.ModelInferResponse.InferOutputTensor", 4)
    fields(tres, [("contents", 5, ".inference.InferTensorContents", False)])

    _statistics_messages(message)
    _repository_messages(message, parameters_map)
    _config_messages(message, fields, fdp)

    service = fdp.service.add(name="GRPCInferenceService")
    for method, request in METHODS.items():
        service.method.add(name=method, input_type=f".inference.{request}",
                           output_type=f".inference.{request.replace('Request', 'Response')}")
    return fdp


def _statistics_messages(message) -> None:
    """Triton's statistics extension (grpc_service.proto): ModelStatistics and what it holds."""
    duration = ".inference.StatisticDuration"
    message("StatisticDuration", [("count", 1, "uint64", False), ("ns", 2, "uint64", False)])
    message("InferStatistics", [(name, number, duration, False) for number, name in enumerate(
        ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"),
        start=1)])
    message("InferResponseStatistics", [(name, number, duration, False) for number, name in enumerate(
        ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"), start=1)])
    message("InferBatchStatistics", [("batch_size", 1, "uint64", False), ("compute_input", 2, duration, False),
                                     ("compute_infer", 3, duration, False), ("compute_output", 4, duration, False)])
    message("MemoryUsage", [("type", 1, "string", False), ("id", 2, "int64", False),
                            ("byte_size", 3, "uint64", False)])
    stats = message("ModelStatistics", [
        ("name", 1, "string", False), ("version", 2, "string", False), ("last_inference", 3, "uint64", False),
        ("inference_count", 4, "uint64", False), ("execution_count", 5, "uint64", False),
        ("inference_stats", 6, ".inference.InferStatistics", False),
        ("batch_stats", 7, ".inference.InferBatchStatistics", True),
        ("memory_usage", 8, ".inference.MemoryUsage", True),
        ("response_stats", 9, ".inference.ModelStatistics.ResponseStatsEntry", True)])
    entry = message("ResponseStatsEntry", [("key", 1, "string", False),
                                           ("value", 2, ".inference.InferResponseStatistics", False)], parent=stats)
    entry.options.map_entry = True
    message("ModelStatisticsRequest", [("name", 1, "string", False), ("version", 2, "string", False)])
    message("ModelStatisticsResponse", [("model_stats", 1, ".inference.ModelStatistics", True)])


def _repository_messages(message, parameters_map) -> None:
    """Triton's model repository extension: the index, load and unload."""
    message("RepositoryIndexRequest", [("repository_name", 1, "string", False), ("ready", 2, "bool", False)])
    index = message("RepositoryIndexResponse", [
        ("models", 1, ".inference.RepositoryIndexResponse.ModelIndex", True)])
    message("ModelIndex", [("name", 1, "string", False), ("version", 2, "string", False),
                           ("state", 3, "string", False), ("reason", 4, "string", False)], parent=index)
    message("ModelRepositoryParameter", [("bool_param", 1, "bool", False), ("int64_param", 2, "int64", False),
                                         ("string_param", 3, "string", False), ("bytes_param", 4, "bytes", False)],
            oneof="parameter_choice")
    for action in ("Load", "Unload"):
        request = message(f"RepositoryModel{action}Request", [("repository_name", 1, "string", False),
                                                              ("model_name", 2, "string", False)])
        parameters_map(request, f".inference.RepositoryModel{action}Request", 3, ".inference.ModelRepositoryParameter")
        message(f"RepositoryModel{action}Response", [])


def _config_messages(message, fields, fdp) -> None:
    """Triton's model configuration extension: the fields of `ModelConfig` (model_config.proto) this server fills,
    with Triton's numbers and types, so tritonclient reads them; the others are absent (unset on the wire)."""
    data_type = fdp.enum_type.add(name="DataType")
    for number, name in enumerate(("INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                   "INT32", "INT64", "FP16", "FP32", "FP64", "STRING", "BF16")):
        data_type.value.add(name=f"TYPE_{name}", number=number)
    message("ModelConfigRequest", [("name", 1, "string", False), ("version", 2, "string", False)])
    message("ModelConfigResponse", [("config", 1, ".inference.ModelConfig", False)])
    message("ModelInput", [("name", 1, "string", False), ("data_type", 2, "enum .inference.DataType", False),
                           ("dims", 4, "int64", True)])
    message("ModelOutput", [("name", 1, "string", False), ("data_type", 2, "enum .inference.DataType", False),
                            ("dims", 3, "int64", True)])
    policy = message("ModelVersionPolicy", [("latest", 1, ".inference.ModelVersionPolicy.Latest", False)],
                     oneof="policy_choice")
    message("Latest", [("num_versions", 1, "uint32", False)], parent=policy)
    message("ModelDynamicBatching", [("preferred_batch_size", 1, "int32", True),
                                     ("max_queue_delay_microseconds", 2, "uint64", False)])
    group = message("ModelInstanceGroup", [("name", 1, "string", False), ("count", 2, "int32", False),
                                           ("gpus", 3, "int32", True),
                                           ("kind", 4, "enum .inference.ModelInstanceGroup.Kind", False)])
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")):
        kind.value.add(name=name, number=number)
    config = message("ModelConfig", [
        ("name", 1, "string", False), ("platform", 2, "string", False),
        ("version_policy", 3, ".inference.ModelVersionPolicy", False), ("max_batch_size", 4, "int32", False),
        ("input", 5, ".inference.ModelInput", True), ("output", 6, ".inference.ModelOutput", True),
        ("instance_group", 7, ".inference.ModelInstanceGroup", True), ("backend", 17, "string", False)])
    fields(config, [("dynamic_batching", 11, ".inference.ModelDynamicBatching", False)], oneof="scheduling_choice")


# gRPC method -> request message (the answer is the same name with Response)
METHODS = {"ServerLive": "ServerLiveRequest", "ServerReady": "ServerReadyRequest", "ModelReady": "ModelReadyRequest",
           "ServerMetadata": "ServerMetadataRequest", "ModelMetadata": "ModelMetadataRequest",
           "ModelInfer": "ModelInferRequest", "ModelConfig": "ModelConfigRequest",
           "ModelStatistics": "ModelStatisticsRequest", "RepositoryIndex": "RepositoryIndexRequest",
           "RepositoryModelLoad": "RepositoryModelLoadRequest", "RepositoryModelUnload": "RepositoryModelUnloadRequest"}
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
# messages defined exactly as in Triton's grpc_service.proto (every field)
MESSAGES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in ("ServerLiveRequest", "ServerLiveResponse", "ServerReadyRequest", "ServerReadyResponse",
                         "ModelReadyRequest", "ModelReadyResponse", "ServerMetadataRequest", "ServerMetadataResponse",
                         "ModelMetadataRequest", "ModelMetadataResponse", "InferParameter", "InferTensorContents",
                         "ModelInferRequest", "ModelInferResponse", "ModelStatisticsRequest",
                         "ModelStatisticsResponse", "ModelStatistics", "InferStatistics", "InferResponseStatistics",
                         "InferBatchStatistics", "StatisticDuration", "MemoryUsage", "RepositoryIndexRequest",
                         "RepositoryIndexResponse", "ModelConfigRequest", "ModelConfigResponse",
                         "ModelRepositoryParameter", "RepositoryModelLoadRequest", "RepositoryModelLoadResponse",
                         "RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse")}
# ModelConfig (model_config.proto) and the messages it holds: only the fields this server fills
CONFIG_MESSAGES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
                   for name in ("ModelConfig", "ModelInput", "ModelOutput",
                                "ModelVersionPolicy", "ModelDynamicBatching", "ModelInstanceGroup")}


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The protocol's FileDescriptorProto (tests compare it with tritonclient's generated code)."""
    return _file_descriptor()


# ------------------------------------------------------------------------------------ decoded requests
@dataclass
class TensorSpec:
    """One input or output of the served model's contract."""
    name: str
    datatype: str
    shape: list[int]  # -1 = any (the batch dimension)

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class InferRequest:
    id: str
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    binary_output: bool = False  # request-level `binary_data_output`

    @property
    def batch_size(self) -> int:
        return next(iter(self.inputs.values())).shape[0] if self.inputs else 0


class RequestDecoder:
    """Decodes and validates requests against the served model's inputs (names, datatypes, shapes, batch limit).
    Values (finite floats, ids inside the embedding table) are checked by the runtime."""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int):
        self.inputs = {t.name: t for t in inputs}
        self.outputs = {t.name: t for t in outputs}
        self.max_batch_size = max_batch_size

    # ---- shared checks
    def _check_tensor(self, name: str, datatype: str, shape: list[int]) -> TensorSpec:
        spec = self.inputs.get(name)
        if spec is None:
            raise OipError(BAD_REQUEST, f"unknown input '{name}'; the model's inputs are {sorted(self.inputs)}")
        if datatype != spec.datatype:
            raise OipError(BAD_REQUEST, f"input '{name}' has datatype {datatype!r}, the model expects "
                                        f"{spec.datatype}")
        if len(shape) != len(spec.shape) or any(s != -1 and s != d for s, d in zip(spec.shape, shape)) \
                or any(d < 0 for d in shape):
            want = "[" + ", ".join("B" if s == -1 else str(s) for s in spec.shape) + "]"
            raise OipError(BAD_REQUEST, f"input '{name}' needs shape {want} (batch first), got {list(shape)}")
        return spec

    def _finish(self, request_id: str, inputs: dict[str, np.ndarray], outputs: list[RequestedOutput],
                binary_output: bool) -> InferRequest:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise OipError(BAD_REQUEST, f"missing input(s) {missing}; the model's inputs are {sorted(self.inputs)}")
        batches = {n: a.shape[0] for n, a in inputs.items()}
        if len(set(batches.values())) > 1:
            raise OipError(BAD_REQUEST, f"inputs have different batch sizes: {batches}")
        batch = next(iter(batches.values()))
        if batch == 0:
            raise OipError(BAD_REQUEST, "empty batch (batch dimension 0)")
        if batch > self.max_batch_size:
            raise OipError(TOO_LARGE, f"batch of {batch} rows is over the server's limit of {self.max_batch_size} "
                                      "(--max_batch_size)")
        seen = set()
        for out in outputs:
            if out.name not in self.outputs:
                raise OipError(BAD_REQUEST, f"unknown output '{out.name}'; the model's outputs are "
                                            f"{sorted(self.outputs)}")
            if out.name in seen:
                raise OipError(BAD_REQUEST, f"output '{out.name}' requested twice")
            seen.add(out.name)
        return InferRequest(request_id, inputs, outputs, binary_output)

    # ---- HTTP/REST (JSON, with or without Triton's binary tensor extension)
    def decode_json(self, body: bytes, header_length: int | None) -> InferRequest:
        if header_length is not None:
            if not 0 <= header_length <= len(body):
                raise OipError(BAD_REQUEST, f"Inference-Header-Content-Length {header_length} is outside the body "
                                            f"of {len(body)} bytes")
            head, binary = body[:header_length], memoryview(body)[header_length:]
        else:
            head, binary = body, memoryview(b"")
        try:
            doc = json.loads(head)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise OipError(BAD_REQUEST, f"request body is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(doc, dict):
            raise OipError(BAD_REQUEST, "request body must be a JSON object with an 'inputs' list")
        request_id = doc.get("id", "")
        if not isinstance(request_id, str):
            raise OipError(BAD_REQUEST, "'id' must be a string")
        params = _json_parameters(doc.get("parameters"), "request")
        raw_inputs = doc.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise OipError(BAD_REQUEST, "'inputs' must be a non-empty list of tensors")
        inputs: dict[str, np.ndarray] = {}
        offset = 0
        for i, t in enumerate(raw_inputs):
            if not isinstance(t, dict):
                raise OipError(BAD_REQUEST, f"inputs[{i}] must be an object with name, shape, datatype, data")
            name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
            if not isinstance(name, str) or not isinstance(datatype, str):
                raise OipError(BAD_REQUEST, f"inputs[{i}] needs a string 'name' and 'datatype'")
            if not isinstance(shape, list) or not all(type(d) is int for d in shape):
                raise OipError(BAD_REQUEST, f"input '{name}': 'shape' must be a list of integers")
            if name in inputs:
                raise OipError(BAD_REQUEST, f"input '{name}' given twice")
            spec = self._check_tensor(name, datatype, shape)
            dtype = DATATYPES[spec.datatype]
            count = math.prod(shape)
            tparams = _json_parameters(t.get("parameters"), f"input '{name}'")
            size = tparams.get("binary_data_size")
            if size is not None:
                if type(size) is not int or size < 0:
                    raise OipError(BAD_REQUEST, f"input '{name}': binary_data_size must be a non-negative integer")
                if "data" in t:
                    raise OipError(BAD_REQUEST, f"input '{name}' has both binary_data_size and 'data'")
                if offset + size > len(binary):
                    raise OipError(BAD_REQUEST, f"input '{name}': binary_data_size {size} runs past the end of the "
                                                f"body ({len(binary) - offset} binary bytes left)")
                if size != count * dtype.itemsize:
                    raise OipError(BAD_REQUEST, f"input '{name}': {size} bytes of binary data for shape {shape} of "
                                                f"{datatype} (needs {count * dtype.itemsize})")
                array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
                offset += size
            else:
                if "data" not in t:
                    raise OipError(BAD_REQUEST, f"input '{name}' has no 'data' (nor binary_data_size)")
                array = _json_array(name, t["data"], dtype, shape, count)
            inputs[name] = array
        if offset != len(binary):
            raise OipError(BAD_REQUEST, f"{len(binary) - offset} bytes of binary data after the JSON header belong "
                                        "to no input (binary_data_size missing?)")
        outputs = []
        raw_outputs = doc.get("outputs", [])
        if not isinstance(raw_outputs, list):
            raise OipError(BAD_REQUEST, "'outputs' must be a list")
        for i, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise OipError(BAD_REQUEST, f"outputs[{i}] must be an object with a string 'name'")
            oparams = _json_parameters(o.get("parameters"), f"output '{o['name']}'")
            outputs.append(RequestedOutput(o["name"], bool(oparams.get("binary_data", False))))
        return self._finish(request_id, inputs, outputs, bool(params.get("binary_data_output", False)))

    # ---- gRPC
    def decode_grpc(self, request) -> InferRequest:
        inputs: dict[str, np.ndarray] = {}
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise OipError(BAD_REQUEST, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs (one each, "
                                        "in order)")
        for i, t in enumerate(request.inputs):
            shape = list(t.shape)
            if t.name in inputs:
                raise OipError(BAD_REQUEST, f"input '{t.name}' given twice")
            spec = self._check_tensor(t.name, t.datatype, shape)
            dtype = DATATYPES[spec.datatype]
            count = math.prod(shape)
            if raw:
                if t.HasField("contents"):
                    raise OipError(BAD_REQUEST, f"input '{t.name}' has both contents and raw_input_contents")
                if len(raw[i]) != count * dtype.itemsize:
                    raise OipError(BAD_REQUEST, f"input '{t.name}': {len(raw[i])} bytes of raw contents for shape "
                                                f"{shape} of {t.datatype} (needs {count * dtype.itemsize})")
                array = np.frombuffer(raw[i], dtype=dtype.newbyteorder("<")).reshape(shape)
            else:
                which = CONTENTS_FIELDS[spec.datatype]
                values = getattr(t.contents, which)
                others = [f.name for f, _ in t.contents.ListFields() if f.name != which]
                if others:
                    raise OipError(BAD_REQUEST, f"input '{t.name}' ({t.datatype}) carries {others[0]}; its values "
                                                f"belong in {which}")
                if len(values) != count:
                    raise OipError(BAD_REQUEST, f"input '{t.name}': {len(values)} values for shape {shape}")
                array = np.asarray(values, dtype=dtype).reshape(shape)
            inputs[t.name] = array
        outputs = [RequestedOutput(o.name, True) for o in request.outputs]
        return self._finish(request.id, inputs, outputs, True)


def _json_parameters(params, where: str) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise OipError(BAD_REQUEST, f"{where} 'parameters' must be an object")
    return params


def _json_array(name: str, data, dtype: np.dtype, shape: list[int], count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise OipError(BAD_REQUEST, f"input '{name}': 'data' must be a list (flat or nested row-major)")
    flat = data
    if data and isinstance(data[0], list):  # nested: flatten one level per dimension
        try:
            flat = np.asarray(data, dtype=object).reshape(-1).tolist()
        except ValueError:
            raise OipError(BAD_REQUEST, f"input '{name}': nested 'data' is ragged") from None
    if len(flat) != count:
        raise OipError(BAD_REQUEST, f"input '{name}': {len(flat)} values for shape {shape} ({count} needed)")
    if dtype.kind == "f":
        if not all(type(v) in (int, float) for v in flat):
            raise OipError(BAD_REQUEST, f"input '{name}': 'data' must hold numbers")
    elif dtype.kind in "iu":
        if not all(type(v) is int for v in flat):
            raise OipError(BAD_REQUEST, f"input '{name}': 'data' must hold integers for {DTYPE_NAMES[dtype]}")
    try:
        return np.asarray(flat, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise OipError(BAD_REQUEST, f"input '{name}': {str(e)[:200]}") from None


# ------------------------------------------------------------------------------------------- answers
def encode_json(model_name: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]
                ) -> tuple[bytes, int | None]:
    """(body, Inference-Header-Content-Length or None when the answer is plain JSON)."""
    wanted = request.outputs or [RequestedOutput(n, request.binary_output) for n in outputs]
    doc_outputs, blobs = [], []
    for out in wanted:
        array = outputs[out.name]
        entry = {"name": out.name, "datatype": DTYPE_NAMES[array.dtype], "shape": list(array.shape)}
        if out.binary or request.binary_output:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        doc_outputs.append(entry)
    doc = {"model_name": model_name, "model_version": version, "outputs": doc_outputs}
    if request.id:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_grpc(model_name: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]):
    response = MESSAGES["ModelInferResponse"](model_name=model_name, model_version=version, id=request.id)
    names = [o.name for o in request.outputs] or list(outputs)
    for name in names:
        array = outputs[name]
        response.outputs.add(name=name, datatype=DTYPE_NAMES[array.dtype], shape=array.shape)
        response.raw_output_contents.append(
            np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return response


def decode_grpc_message(name: str, body: bytes):
    """Parse a gRPC request body (bytes) into its message; DecodeError becomes OipError."""
    message = MESSAGES[name]()
    try:
        message.ParseFromString(body)
    except DecodeError as e:
        raise OipError(BAD_REQUEST, f"request is not a {name}: {e}") from None
    return message
