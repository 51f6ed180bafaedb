"""Compatibility with the real Paddle Serving client: the pure-Python HttpClient of paddle-serving-client 0.9.0
(fetched at set-up time by scripts/fetch_serving_client.sh) gets correct predictions from serving.rpc over
HTTP + JSON, HTTP + protobuf and gRPC, and its own generated .proto matches ours field for field.

The client runs in a subprocess: it needs the pure-Python protobuf runtime (its `_pb2` modules predate
protobuf 4) and `collections.Iterable`, removed in Python 3.10.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ctrkit import serving_config
from ctrkit.data import FeatureSpec, iter_batches
from ctrkit.inference import PredictorOptions, create_predictor, load_exported_model
from serving.rpc import protocol as P
from rpc_helpers import REPO_ROOT, RpcServer

CLIENT_ROOT = os.path.join(REPO_ROOT, ".venv", "paddle_serving_client-0.9.0")

# Runs inside the subprocess: argv = client root, client config, endpoints JSON, inputs .npz; prints JSON.
DRIVER = r"""
import collections, collections.abc, json, sys
collections.Iterable = collections.abc.Iterable  # removed in Python 3.10; the 0.9.0 client still imports it
client_root, client_config, endpoints, inputs = sys.argv[1:]
sys.path.insert(0, client_root)
import numpy as np
from paddle_serving_client import HttpClient

data = np.load(inputs)
dense, sparse = data["dense"], data["sparse"]
endpoints = json.loads(endpoints)
results = {}
for mode in ("http_json", "http_proto", "grpc"):
    for compress in (False, True):
        client = HttpClient()
        client.load_client_config(client_config)
        client.set_use_grpc_client(mode == "grpc")
        client.set_http_proto(mode == "http_proto")
        if compress:
            client.set_request_compress(True)
            client.set_response_compress(True)
        client.connect([endpoints[mode]])
        predictions = []
        for start in range(0, len(dense), 20):
            feed, column = {}, 0  # one feed per variable of the client config: dense_input, C1..C26 (per field)
            for name in client.feed_names_:
                width = int(np.prod(client.feed_shapes_[name]))
                if client.feed_types_[name] == 1:
                    feed[name] = dense[start:start + 20]
                else:
                    feed[name] = sparse[start:start + 20, column:column + width]
                    column += width
            answer = client.predict(feed=feed, fetch=["prob"], batch=True, log_id=start + 1)
            if answer is None:
                raise SystemExit(f"{mode}: the client got no answer")
            if isinstance(answer, dict):  # HTTP + JSON answers come back as the parsed JSON
                assert answer["log_id"] == start + 1, answer
                tensor = answer["outputs"][0]["tensor"][0]
                values, alias, shape = tensor["float_data"], tensor["alias_name"], tensor["shape"]
            else:  # a general_model_service_pb2.Response
                assert answer.log_id == start + 1 and answer.err_no == 0, answer
                tensor = answer.outputs[0].tensor[0]
                values, alias, shape = list(tensor.float_data), tensor.alias_name, list(tensor.shape)
            assert alias == "prob" and shape == [len(dense[start:start + 20]), 1], (alias, shape)
            predictions += values
        results[f"{mode}{'+gzip' if compress else ''}"] = [type(answer).__name__, predictions]
print(json.dumps(results))
"""

DESCRIPTOR = r"""
import sys
sys.path.insert(0, sys.argv[1] + "/paddle_serving_client/proto")
import general_model_service_pb2
from google.protobuf import descriptor_pb2
fdp = descriptor_pb2.FileDescriptorProto()
general_model_service_pb2.DESCRIPTOR.CopyToProto(fdp)
sys.stdout.buffer.write(fdp.SerializeToString())
"""


@pytest.fixture(scope="module")
def client_root() -> str:
    if not os.path.isfile(os.path.join(CLIENT_ROOT, ".complete")):
        message = f"{CLIENT_ROOT} is missing: run scripts/fetch_serving_client.sh (scripts/setup.sh does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return CLIENT_ROOT


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, env=env, timeout=300,
                          cwd=REPO_ROOT)


def _packed_client_config(model_dir: str, directory: str) -> str:
    """The client config of earlier exports: the model's own two inputs, `dense_input` and `sparse_inputs`."""
    meta = load_exported_model(model_dir).meta
    config = serving_config.build_config(meta["inputs"], [meta["output"]])
    text_path, _ = serving_config.write_config(config, directory, "serving_client_conf")
    return text_path


@pytest.mark.parametrize("feeds", ["per_field", "packed"])
def test_real_client_in_all_three_modes(client_root, exported_deepfm, slot_sample, tmp_path, feeds):
    if feeds == "per_field":  # the export's own client config: dense_input + C1..C26, as PaddleRec's
        client_config = os.path.join(exported_deepfm, "serving_client", "serving_client_conf.prototxt")
    else:  # today's clients of earlier exports keep working
        client_config = _packed_client_config(exported_deepfm, str(tmp_path / "packed_client"))
    batch = next(iter(iter_batches(slot_sample, FeatureSpec(), 1000)))
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, dense=batch.dense, sparse=batch.sparse)
    expected = create_predictor(exported_deepfm, PredictorOptions()).predict(batch.dense, batch.sparse)
    server = RpcServer(os.path.join(exported_deepfm, "serving_server"), str(tmp_path / "server.log"))
    try:
        endpoints = {"grpc": f"127.0.0.1:{server.grpc_port}", "http_json": f"127.0.0.1:{server.http_port}",
                     "http_proto": f"127.0.0.1:{server.http_port}"}
        proc = _run(DRIVER, client_root, client_config, json.dumps(endpoints), str(inputs))
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        results = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        answered = server.metric("ctrkit_rpc_requests_total", 'err_no="0"')
    finally:
        assert server.stop() == 0
    assert sorted(results) == sorted(f"{m}{g}" for m in ("grpc", "http_json", "http_proto") for g in ("", "+gzip"))
    for mode, (answer_type, predictions) in results.items():
        assert answer_type == ("dict" if mode.startswith("http_json") else "Response"), mode
        np.testing.assert_allclose(predictions, expected, rtol=0, atol=1e-6, err_msg=mode)
    assert answered == 6 * 4  # 6 client set-ups x 4 requests of 20 rows, all answered


def test_our_messages_match_paddle_servings_generated_code(client_root):
    from google.protobuf import descriptor_pb2

    proc = _run(DESCRIPTOR, client_root)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    theirs = descriptor_pb2.FileDescriptorProto.FromString(proc.stdout)
    ours = descriptor_pb2.FileDescriptorProto()
    P.Request.DESCRIPTOR.file.CopyToProto(ours)
    assert ours.package == theirs.package and ours.syntax == theirs.syntax
    assert [m.name for m in ours.message_type] == [m.name for m in theirs.message_type]
    for mine, real in zip(ours.message_type, theirs.message_type):
        assert [(f.name, f.number, f.label, f.type, f.type_name) for f in mine.field] == \
               [(f.name, f.number, f.label, f.type, f.type_name) for f in real.field], mine.name
    assert [(m.name, m.input_type, m.output_type) for m in ours.service[0].method] == \
           [(m.name, m.input_type, m.output_type) for m in theirs.service[0].method]
