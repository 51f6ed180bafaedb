"""Paddle Serving's wire protocol (`general_model_service.proto`, proto3) without generated code.

The messages are built at import time from a `FileDescriptorProto` written out below, in a private descriptor
pool, so there is no protoc step, no generated file that can drift from the installed protobuf, and no clash
with another copy of the same .proto loaded in the process (e.g. the real Paddle Serving client's `_pb2`).
Field numbers and types are exactly Paddle Serving 0.9.0's.

Both transports decode into one `InferenceRequest` (flat numpy arrays per tensor) and encode one `Outputs`,
so JSON and protobuf bodies, gRPC and HTTP go through the same validation and the same answer building.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PACKAGE = "baidu.paddle_serving.predictor.general_model"
SERVICE = f"{PACKAGE}.GeneralModelService"
HTTP_PATHS = ("/GeneralModelService/inference", "/GeneralModelService/debug")
ENGINE_NAME = "general_infer_0"  # what Paddle Serving's default workflow names its inference op

# elem_type codes (Paddle Serving): the proto field that carries each, and the numpy dtype it means.
INT64, FP32, INT32, FP64, STRING = 0, 1, 2, 3, 20
ELEM_FIELDS = {INT64: "int64_data", FP32: "float_data", INT32: "int_data", FP64: "float64_data", STRING: "data"}
ELEM_DTYPES = {INT64: np.dtype(np.int64), FP32: np.dtype(np.float32), INT32: np.dtype(np.int32),
               FP64: np.dtype(np.float64)}
ELEM_NAMES = {INT64: "INT64", FP32: "FP32", INT32: "INT32", FP64: "FP64", STRING: "STRING"}
DATA_FIELDS = ("int64_data", "float_data", "int_data", "float64_data", "uint32_data", "bool_data",
               "complex64_data", "complex128_data", "data")


# ---------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class ErrorKind:
    err_no: int
    grpc_code: str  # a grpc.StatusCode name (kept as text so this module does not import grpc)
    http_status: int


BAD_REQUEST = ErrorKind(4001, "INVALID_ARGUMENT", 400)       # undecodable body, bad JSON, wrong field types
UNKNOWN_NAME = ErrorKind(4002, "INVALID_ARGUMENT", 400)      # unknown feed or fetch name, duplicate feed
MISSING_FEED = ErrorKind(4003, "INVALID_ARGUMENT", 400)
WRONG_DTYPE = ErrorKind(4004, "INVALID_ARGUMENT", 400)
WRONG_SHAPE = ErrorKind(4005, "INVALID_ARGUMENT", 400)
OUT_OF_RANGE = ErrorKind(4006, "OUT_OF_RANGE", 400)          # ids outside the embedding table
NOT_FINITE = ErrorKind(4007, "INVALID_ARGUMENT", 400)        # NaN or inf in a float feed
EMPTY_BATCH = ErrorKind(4008, "INVALID_ARGUMENT", 400)
LENGTH_REQUIRED = ErrorKind(4011, "INVALID_ARGUMENT", 411)   # HTTP body without Content-Length
TOO_LARGE = ErrorKind(4013, "RESOURCE_EXHAUSTED", 413)       # batch or body over the configured limit
UNSUPPORTED_MEDIA = ErrorKind(4015, "INVALID_ARGUMENT", 415)  # Content-Type / Content-Encoding not understood
UNAVAILABLE = ErrorKind(5003, "UNAVAILABLE", 503)            # draining, or no model loaded
INTERNAL = ErrorKind(5000, "INTERNAL", 500)


class RequestError(Exception):
    """A request the server refuses; `kind` fixes err_no, the gRPC status and the HTTP status."""

    def __init__(self, kind: ErrorKind, message: str, log_id: int = 0):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.log_id = log_id  # echoed in the error answer once the request was decoded


# -------------------------------------------------------------------------------------------- messages
def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="general_model_service.proto", package=PACKAGE, syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = fdp.message_type.add(name=name)
        for field_name, number, label, ftype, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = type_name

    tensor = f".{PACKAGE}.Tensor"
    message("Tensor", [
        ("int64_data", 1, rep, F.TYPE_INT64, ""), ("float_data", 2, rep, F.TYPE_FLOAT, ""),
        ("int_data", 3, rep, F.TYPE_INT32, ""), ("float64_data", 4, rep, F.TYPE_DOUBLE, ""),
        ("uint32_data", 5, rep, F.TYPE_UINT32, ""), ("bool_data", 6, rep, F.TYPE_BOOL, ""),
        ("complex64_data", 7, rep, F.TYPE_FLOAT, ""), ("complex128_data", 8, rep, F.TYPE_DOUBLE, ""),
        ("data", 9, rep, F.TYPE_STRING, ""), ("elem_type", 10, opt, F.TYPE_INT32, ""),
        ("shape", 11, rep, F.TYPE_INT32, ""), ("lod", 12, rep, F.TYPE_INT32, ""),
        ("name", 13, opt, F.TYPE_STRING, ""), ("alias_name", 14, opt, F.TYPE_STRING, ""),
        ("tensor_content", 15, opt, F.TYPE_BYTES, ""),
    ])
    message("Request", [
        ("tensor", 1, rep, F.TYPE_MESSAGE, tensor), ("fetch_var_names", 2, rep, F.TYPE_STRING, ""),
        ("profile_server", 3, opt, F.TYPE_BOOL, ""), ("log_id", 4, opt, F.TYPE_UINT64, ""),
    ])
    message("Response", [
        ("outputs", 1, rep, F.TYPE_MESSAGE, f".{PACKAGE}.ModelOutput"), ("profile_time", 2, rep, F.TYPE_INT64, ""),
        ("profile_server", 3, opt, F.TYPE_BOOL, ""), ("log_id", 4, opt, F.TYPE_UINT64, ""),
        ("err_no", 5, opt, F.TYPE_INT32, ""), ("err_msg", 6, opt, F.TYPE_STRING, ""),
    ])
    message("ModelOutput", [("tensor", 1, rep, F.TYPE_MESSAGE, tensor), ("engine_name", 2, opt, F.TYPE_STRING, "")])
    service = fdp.service.add(name="GeneralModelService")
    for method in ("inference", "debug"):
        service.method.add(name=method, input_type=f".{PACKAGE}.Request", output_type=f".{PACKAGE}.Response")
    return fdp


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())
Tensor = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Tensor"))
Request = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Request"))
Response = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.Response"))
ModelOutput = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.ModelOutput"))


# ------------------------------------------------------------------------------------- decoded request
class FeedTensor(NamedTuple):
    """One request tensor: `key` is alias_name (or name when no alias), `values` flat numpy, `shape` with batch."""

    key: str
    elem_type: int
    shape: tuple[int, ...]
    values: np.ndarray
    has_lod: bool


@dataclass
class InferenceRequest:
    feeds: list[FeedTensor]
    fetch_var_names: list[str]
    log_id: int
    profile_server: bool


@dataclass
class Outputs:
    """A successful answer: fetch alias -> (fetch var name, float32 [B, ...])."""

    tensors: dict[str, tuple[str, np.ndarray]]
    log_id: int
    profile_time: list[int]


def _tensor_key(name: str, alias: str, index: int) -> str:
    key = alias or name
    if not key:
        raise RequestError(BAD_REQUEST, f"tensor #{index} has neither alias_name nor name")
    return key


def _check_shape(key: str, shape: list) -> tuple[int, ...]:
    if not shape:
        raise RequestError(WRONG_SHAPE, f"tensor '{key}': shape is empty (it must include the batch dimension)")
    if (len(shape) == 2 and type(shape[0]) is int and type(shape[1]) is int and shape[0] >= 0 and shape[1] >= 0):
        return tuple(shape)  # the common case, checked without a generator
    if any(type(d) is not int for d in shape) or min(shape) < 0:
        raise RequestError(WRONG_SHAPE, f"tensor '{key}': shape {list(shape)} must hold non-negative integers")
    return tuple(shape)


_NATIVE_LE = np.little_endian
_LE_DTYPES = {elem: dtype.newbyteorder("<") for elem, dtype in ELEM_DTYPES.items()}
_DATA_FIELD_NAMES = frozenset(DATA_FIELDS)


def _proto_tensor(t, index: int) -> FeedTensor:
    """One request Tensor -> FeedTensor: its one data field (the one its elem_type names, or tensor_content: raw
    little-endian) as flat numpy. Reads the set fields in one pass (ListFields): per-field requests carry dozens
    of tensors, and probing every field of each one costs more than the model call."""
    key = name = shape = content = None
    elem = 0
    lod = False
    data = None
    extra = None
    for fd, value in t.ListFields():
        number = fd.number
        if number == 14:
            key = value
        elif number == 13:
            name = value
        elif number == 10:
            elem = value
        elif number == 11:
            shape = value
        elif number == 15:
            content = value
        elif number == 12:
            lod = True
        elif data is None:
            data = (fd.name, value)
        else:
            extra = (extra or []) + [fd.name]
    key = key or name
    if not key:
        raise RequestError(BAD_REQUEST, f"tensor #{index} has neither alias_name nor name")
    if elem not in ELEM_DTYPES:
        raise RequestError(WRONG_DTYPE, f"tensor '{key}': elem_type {elem} is not supported here "
                                        f"(supported: {', '.join(f'{c} {ELEM_NAMES[c]}' for c in ELEM_DTYPES)})")
    field = ELEM_FIELDS[elem]
    if data is not None and (data[0] != field or extra):
        others = [n for n in [data[0], *(extra or [])] if n != field]
        raise RequestError(WRONG_DTYPE, f"tensor '{key}': elem_type {elem} ({ELEM_NAMES[elem]}) carries its "
                                        f"values in {field}, but the request filled {', '.join(others)}")
    shape = _check_shape(key, list(shape) if shape is not None else [])
    dtype = ELEM_DTYPES[elem]
    if content is not None:
        if data is not None:
            raise RequestError(BAD_REQUEST, f"tensor '{key}': both {field} and tensor_content are set")
        if len(content) % dtype.itemsize:
            raise RequestError(WRONG_SHAPE, f"tensor '{key}': tensor_content has {len(content)} bytes, "
                                            f"not a multiple of {dtype.itemsize} ({ELEM_NAMES[elem]})")
        values = np.frombuffer(content, dtype=dtype if _NATIVE_LE else _LE_DTYPES[elem])
        if not _NATIVE_LE:
            values = values.astype(dtype)
    elif data is not None:
        # fromiter: no intermediate list of Python numbers (a large request would briefly hold one per value)
        values = np.fromiter(data[1], dtype=dtype, count=len(data[1]))
    else:
        values = np.empty(0, dtype=dtype)
    return FeedTensor(key, elem, shape, values, lod)


def decode_proto(body: bytes) -> InferenceRequest:
    """Parse a serialised `Request`; garbage raises RequestError(BAD_REQUEST)."""
    try:
        req = Request.FromString(body)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise RequestError(BAD_REQUEST, f"body is not a serialised {PACKAGE}.Request ({e})") from None
    feeds = [_proto_tensor(t, i) for i, t in enumerate(req.tensor)]
    return InferenceRequest(feeds, list(req.fetch_var_names), req.log_id, req.profile_server)


# -------------------------------------------------------------------------------------------- JSON
def _json_field(obj: dict, name: str, kind: type | tuple, default, where: str):
    value = obj.get(name, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, list)):
        raise RequestError(BAD_REQUEST, f"{where}.{name} has the wrong JSON type ({type(value).__name__})")
    return value


def _json_values(t: dict, key: str, elem: int) -> np.ndarray:
    if elem not in ELEM_DTYPES:
        raise RequestError(WRONG_DTYPE, f"tensor '{key}': elem_type {elem} is not supported here "
                                        f"(supported: {', '.join(f'{c} {ELEM_NAMES[c]}' for c in ELEM_DTYPES)})")
    field = ELEM_FIELDS[elem]
    others = [f for f in DATA_FIELDS if f != field and t.get(f)]
    if others:
        raise RequestError(WRONG_DTYPE, f"tensor '{key}': elem_type {elem} ({ELEM_NAMES[elem]}) carries its "
                                        f"values in {field}, but the request filled {', '.join(others)}")
    raw = t.get(field, [])
    if not isinstance(raw, list):
        raise RequestError(BAD_REQUEST, f"tensor '{key}': {field} must be a JSON list")
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError, RecursionError, OverflowError):
        raise RequestError(WRONG_SHAPE, f"tensor '{key}': {field} must be a flat list of numbers") from None
    if arr.ndim != 1:
        raise RequestError(WRONG_SHAPE, f"tensor '{key}': {field} must be a flat list of numbers")
    dtype = ELEM_DTYPES[elem]
    allowed = "iu" if dtype.kind == "i" else "iuf"
    if arr.size and arr.dtype.kind not in allowed:
        wanted = "integers" if dtype.kind == "i" else "numbers"
        raise RequestError(WRONG_DTYPE, f"tensor '{key}': {field} must hold {wanted} for {ELEM_NAMES[elem]}")
    if dtype.kind == "i" and arr.size and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
        raise RequestError(OUT_OF_RANGE, f"tensor '{key}': {field} has values outside {dtype.name}")
    return arr.astype(dtype, copy=False)


def decode_json(body: bytes) -> InferenceRequest:
    """Parse a JSON `Request` written with the proto field names (as Paddle Serving's HttpClient sends it)."""
    try:
        obj = json.loads(body)
    except RecursionError:  # e.g. [[[[...]]]] thousands deep: the parser's recursion limit, not a server fault
        raise RequestError(BAD_REQUEST, "body is not a Request: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # also ints beyond Python's digit limit
        raise RequestError(BAD_REQUEST, f"body is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, "body must be a JSON object with 'tensor' and 'fetch_var_names'")
    unknown = set(obj) - {"tensor", "fetch_var_names", "profile_server", "log_id"}
    if unknown:
        raise RequestError(BAD_REQUEST, f"unknown request fields {sorted(unknown)}")
    tensors = _json_field(obj, "tensor", list, [], "request")
    fetch = _json_field(obj, "fetch_var_names", list, [], "request")
    if not all(isinstance(f, str) for f in fetch):
        raise RequestError(BAD_REQUEST, "request.fetch_var_names must be a list of strings")
    log_id = _json_field(obj, "log_id", int, 0, "request")
    if not 0 <= log_id < 2 ** 64:
        raise RequestError(BAD_REQUEST, "request.log_id must fit an unsigned 64-bit integer")
    profile = _json_field(obj, "profile_server", bool, False, "request")
    feeds = []
    for i, t in enumerate(tensors):
        where = f"request.tensor[{i}]"
        if not isinstance(t, dict):
            raise RequestError(BAD_REQUEST, f"{where} must be a JSON object")
        key = _tensor_key(_json_field(t, "name", str, "", where), _json_field(t, "alias_name", str, "", where), i)
        elem = _json_field(t, "elem_type", int, 0, where)
        shape = _check_shape(key, _json_field(t, "shape", list, [], where))
        lod = _json_field(t, "lod", list, [], where)
        if "tensor_content" in t:
            raise RequestError(BAD_REQUEST, f"tensor '{key}': tensor_content is only accepted in protobuf bodies")
        feeds.append(FeedTensor(key, elem, shape, _json_values(t, key, elem), bool(lod)))
    return InferenceRequest(feeds, fetch, log_id, profile)


# ------------------------------------------------------------------------------------------ answers
def encode_proto(out: Outputs) -> bytes:
    resp = Response(log_id=out.log_id)
    model_output = resp.outputs.add(engine_name=ENGINE_NAME)
    for alias, (name, arr) in out.tensors.items():
        model_output.tensor.add(float_data=arr.ravel().tolist(), elem_type=FP32, shape=arr.shape,
                                name=name, alias_name=alias)
    resp.profile_time.extend(out.profile_time)
    return resp.SerializeToString()


def encode_json(out: Outputs) -> bytes:
    tensors = [{"float_data": arr.ravel().tolist(), "elem_type": FP32, "shape": list(arr.shape), "name": name,
                "alias_name": alias} for alias, (name, arr) in out.tensors.items()]
    body = {"outputs": [{"tensor": tensors, "engine_name": ENGINE_NAME}], "log_id": out.log_id}
    if out.profile_time:
        body["profile_time"] = out.profile_time
    return json.dumps(body, allow_nan=False).encode()


def error_proto(kind: ErrorKind, message: str, log_id: int) -> bytes:
    return Response(err_no=kind.err_no, err_msg=message, log_id=log_id).SerializeToString()


def error_json(kind: ErrorKind, message: str, log_id: int) -> bytes:
    return json.dumps({"err_no": kind.err_no, "err_msg": message, "log_id": log_id}).encode()


def prod(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
