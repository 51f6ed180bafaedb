"""The Open Inference Protocol messages and request decoding, without a server: our KServe v2 descriptor against
the generated code tritonclient ships, and the decoder's answers to good and bad requests."""
from __future__ import annotations

import json

import numpy as np
import pytest

from serving.oip import protocol as P

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402  (Triton's protos, generated)


def _fields(descriptor) -> dict:
    return {f.name: (f.number, f.type, f.is_repeated,
                     f.message_type.full_name if f.message_type else None,
                     f.containing_oneof.name if f.containing_oneof else None) for f in descriptor.fields}


def _walk(descriptor, prefix=""):
    yield prefix + descriptor.name, descriptor
    for nested in descriptor.nested_types:
        yield from _walk(nested, prefix + descriptor.name + ".")


@pytest.mark.parametrize("name", sorted(P.MESSAGES))
def test_messages_match_tritons_generated_code(name):
    ours = dict(_walk(P.MESSAGES[name].DESCRIPTOR))
    theirs = dict(_walk(getattr(service_pb2, name).DESCRIPTOR))
    assert set(ours) == set(theirs)
    for key in ours:
        assert _fields(ours[key]) == _fields(theirs[key]), key


@pytest.mark.parametrize("name", sorted(P.CONFIG_MESSAGES))
def test_model_config_fields_are_tritons(name):
    """ModelConfig carries only the fields this server fills, each with Triton's number, type and oneof."""
    ours = dict(_walk(P.CONFIG_MESSAGES[name].DESCRIPTOR))
    theirs = dict(_walk(getattr(model_config_pb2, name).DESCRIPTOR))
    assert set(ours) <= set(theirs)
    for key, descriptor in ours.items():
        mine, triton = _fields(descriptor), _fields(theirs[key])
        assert {field: triton[field] for field in mine} == mine, key
        for enum in descriptor.enum_types:
            other = theirs[key].enum_types_by_name[enum.name]
            assert [(v.name, v.number) for v in enum.values] == [(v.name, v.number) for v in other.values]
    data_type = P._POOL.FindEnumTypeByName("inference.DataType")
    assert [(v.name, v.number) for v in data_type.values] == \
        [(v.name, v.number) for v in model_config_pb2.DataType.DESCRIPTOR.values]


def test_service_methods_match_triton():
    ours = P._POOL.FindServiceByName(P.SERVICE)
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)


def _decoder(n_dense=3, width=4, max_batch=8):
    return P.RequestDecoder([P.TensorSpec("dense_input", "FP32", [-1, n_dense]),
                             P.TensorSpec("sparse_inputs", "INT64", [-1, width])],
                            [P.TensorSpec("prob", "FP32", [-1, 1])], max_batch)


def _json_request(dense, sparse, **extra):
    return json.dumps({"inputs": [
        {"name": "dense_input", "datatype": "FP32", "shape": list(np.shape(dense)), "data": dense},
        {"name": "sparse_inputs", "datatype": "INT64", "shape": list(np.shape(sparse)), "data": sparse}],
        **extra}).encode()


def test_json_nested_and_flat_data_decode_to_the_same_arrays():
    d = _decoder()
    nested = d.decode_json(_json_request([[0.5, 1, 2]], [[1, 2, 3, 4]], id="x"), None)
    flat_body = json.dumps({"inputs": [
        {"name": "dense_input", "datatype": "FP32", "shape": [1, 3], "data": [0.5, 1, 2]},
        {"name": "sparse_inputs", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()
    flat = d.decode_json(flat_body, None)
    assert nested.id == "x" and nested.batch_size == 1
    for name in ("dense_input", "sparse_inputs"):
        np.testing.assert_array_equal(nested.inputs[name], flat.inputs[name])
    assert nested.inputs["dense_input"].dtype == np.float32 and nested.inputs["sparse_inputs"].dtype == np.int64


def test_binary_extension_decodes_and_encodes():
    d = _decoder()
    dense = np.arange(6, dtype=np.float32).reshape(2, 3)
    sparse = np.arange(8, dtype=np.int64).reshape(2, 4)
    head = json.dumps({"inputs": [
        {"name": "dense_input", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        {"name": "sparse_inputs", "datatype": "INT64", "shape": [2, 4], "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "prob", "parameters": {"binary_data": True}}]}).encode()
    request = d.decode_json(head + dense.tobytes() + sparse.tobytes(), len(head))
    np.testing.assert_array_equal(request.inputs["dense_input"], dense)
    np.testing.assert_array_equal(request.inputs["sparse_inputs"], sparse)
    probs = np.array([[0.25], [0.75]], dtype=np.float32)
    body, json_size = P.encode_json("m", "1", request, {"prob": probs})
    doc = json.loads(body[:json_size])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[json_size:], np.float32), probs.reshape(-1))
    # JSON answer when binary output is not asked for
    plain = d.decode_json(_json_request([[0.5, 1, 2]], [[1, 2, 3, 4]]), None)
    body, json_size = P.encode_json("m", "1", plain, {"prob": probs[:1]})
    assert json_size is None and json.loads(body)["outputs"][0]["data"] == [0.25]


@pytest.mark.parametrize("body, header_length, message", [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty list"),
    (_json_request([[0.5, 1]], [[1, 2, 3, 4]]), None, "needs shape [B, 3]"),
    (_json_request([[0.5, 1, 2]], [[1, 2, 3]]), None, "needs shape [B, 4]"),
    (_json_request([0.5, 1, 2], [[1, 2, 3, 4]]), None, "needs shape [B, 3]"),
    (_json_request([[0.5, 1, 2]], [[1.5, 2, 3, 4]]), None, "integers"),
    (_json_request([[0.5, "a", 2]], [[1, 2, 3, 4]]), None, "numbers"),
    (_json_request([[0.5, 1, 2], [1, 2, 3]], [[1, 2, 3, 4]]), None, "different batch sizes"),
    (json.dumps({"inputs": [{"name": "dense_input", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]})
     .encode(), None, "datatype 'FP64'"),
    (json.dumps({"inputs": [{"name": "dense", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}).encode(),
     None, "unknown input 'dense'"),
    (json.dumps({"inputs": [{"name": "dense_input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
     .encode(), None, "missing input(s) ['sparse_inputs']"),
    (json.dumps({"inputs": [{"name": "dense_input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2]}]})
     .encode(), None, "2 values for shape [1, 3]"),
    (_json_request([[0.5, 1, 2]], [[1, 2, 3, 4]], outputs=[{"name": "score"}]), None, "unknown output 'score'"),
    (_json_request([[0.5, 1, 2]], [[1, 2, 3, 4]]), 10_000, "Inference-Header-Content-Length"),
    (_json_request([[0.5, 1, 2]], [[1, 2, 3, 4]]) + b"xx", None, "not valid JSON"),
    (json.dumps({"inputs": [{"name": "dense_input", "datatype": "FP32", "shape": [1, 3],
                             "parameters": {"binary_data_size": 12}}]}).encode(), 0, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, None, "JSON"),
    ("{\"inputs\": [{\"name\": \"dense_input\", \"datatype\": \"FP32\", \"shape\": [1, 3], \"data\": [1, 2, 3]}, "
     "{\"name\": \"sparse_inputs\", \"datatype\": \"INT64\", \"shape\": [1, 4], \"data\": [1, 2, 3, "
     + "9" * 5000 + "]}]}", None, "digits"),
    (_json_request([[0.5, 1, 2]], [[1, 2, 3, 2 ** 70]]), None, "input 'sparse_inputs'"),
])
def test_bad_json_requests_are_clear_400s(body, header_length, message):
    if isinstance(body, str):
        body = body.encode()
    with pytest.raises(P.OipError) as info:
        _decoder().decode_json(body, header_length)
    assert info.value.kind.http_status == 400
    assert message in info.value.message


def test_binary_size_mismatch_and_trailing_bytes_are_refused():
    d = _decoder()
    head = json.dumps({"inputs": [
        {"name": "dense_input", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}},
        {"name": "sparse_inputs", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}).encode()
    with pytest.raises(P.OipError, match="needs 12"):
        d.decode_json(head + b"\0" * 8, len(head))
    ok_head = head.replace(b'"binary_data_size": 8', b'"binary_data_size": 12')
    with pytest.raises(P.OipError, match="belong to no input"):
        d.decode_json(ok_head + b"\0" * 16, len(ok_head))
    with pytest.raises(P.OipError, match="runs past the end"):
        d.decode_json(ok_head + b"\0" * 4, len(ok_head))


def test_batch_limit_is_413():
    with pytest.raises(P.OipError) as info:
        _decoder(max_batch=1).decode_json(_json_request([[0.5, 1, 2]] * 2, [[1, 2, 3, 4]] * 2), None)
    assert info.value.kind.http_status == 413


def test_grpc_typed_contents_and_raw_contents():
    d = _decoder()
    req = P.MESSAGES["ModelInferRequest"](model_name="m")
    t = req.inputs.add(name="dense_input", datatype="FP32", shape=[1, 3])
    t.contents.fp32_contents.extend([1, 2, 3])
    t = req.inputs.add(name="sparse_inputs", datatype="INT64", shape=[1, 4])
    t.contents.int64_contents.extend([1, 2, 3, 4])
    decoded = d.decode_grpc(P.decode_grpc_message("ModelInferRequest", req.SerializeToString()))
    np.testing.assert_array_equal(decoded.inputs["sparse_inputs"], [[1, 2, 3, 4]])
    t.contents.Clear()
    t.contents.fp32_contents.extend([1, 2, 3, 4])
    with pytest.raises(P.OipError, match="belong in int64_contents"):
        d.decode_grpc(req)
    raw = P.MESSAGES["ModelInferRequest"](model_name="m")
    raw.inputs.add(name="dense_input", datatype="FP32", shape=[1, 3])
    raw.inputs.add(name="sparse_inputs", datatype="INT64", shape=[1, 4])
    raw.raw_input_contents.extend([np.ones(3, np.float32).tobytes(), np.ones(3, np.int64).tobytes()])
    with pytest.raises(P.OipError, match="needs 32"):
        d.decode_grpc(raw)
    with pytest.raises(P.OipError, match="not a ModelInferRequest"):
        P.decode_grpc_message("ModelInferRequest", b"\xff\xff\xff")
