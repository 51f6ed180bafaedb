"""Paddle Serving's model description: `baidu.paddle_serving.configure.GeneralModelConfig` (proto2).

Paddle Serving reads `serving_server_conf.prototxt` (protobuf text format) and its binary twin
`serving_server_conf.stream.prototxt` to learn a model's feed and fetch variables; its clients read the
`serving_client_conf` pair. The message is defined here in Python from a FileDescriptorProto (the same
fields, numbers and defaults as Paddle Serving's `general_model_config.proto`), in a private descriptor
pool, so there is no generated module to drift and no clash with Paddle Serving's own `_pb2` modules if
both are imported in one process.
"""
from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

PACKAGE = "baidu.paddle_serving.configure"

# Paddle Serving's type codes for feed_type / fetch_type.
TYPE_CODES = {"int64": 0, "float32": 1, "int32": 2, "float64": 3}
DTYPES = {code: dtype for dtype, code in TYPE_CODES.items()}

SERVER_DIR = "serving_server"
CLIENT_DIR = "serving_client"
SERVER_CONF = "serving_server_conf"
CLIENT_CONF = "serving_client_conf"
TEXT_SUFFIX = ".prototxt"
STREAM_SUFFIX = ".stream.prototxt"


class ServingConfigError(ValueError):
    """A serving config file is missing or does not parse as GeneralModelConfig."""


def _var_message(name: str, type_field: str) -> descriptor_pb2.DescriptorProto:
    f = descriptor_pb2.FieldDescriptorProto
    msg = descriptor_pb2.DescriptorProto(name=name)
    msg.field.add(name="name", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    msg.field.add(name="alias_name", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    msg.field.add(name="is_lod_tensor", number=3, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL, default_value="false")
    msg.field.add(name=type_field, number=4, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL, default_value="0")
    msg.field.add(name="shape", number=5, type=f.TYPE_INT32, label=f.LABEL_REPEATED)
    return msg


def _build_classes():
    f = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="ctrkit/general_model_config.proto", package=PACKAGE, syntax="proto2")
    file_proto.message_type.append(_var_message("FeedVar", "feed_type"))
    file_proto.message_type.append(_var_message("FetchVar", "fetch_type"))
    config = descriptor_pb2.DescriptorProto(name="GeneralModelConfig")
    config.field.add(name="feed_var", number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                     type_name=f".{PACKAGE}.FeedVar")
    config.field.add(name="fetch_var", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                     type_name=f".{PACKAGE}.FetchVar")
    file_proto.message_type.append(config)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{n}"))
                 for n in ("FeedVar", "FetchVar", "GeneralModelConfig"))


FeedVar, FetchVar, GeneralModelConfig = _build_classes()


def build_config(inputs: list[dict], outputs: list[dict]):
    """GeneralModelConfig from model_meta.json-style entries.

    inputs: [{"name", "dtype", "shape"}] (shape includes the batch dimension, -1, which Paddle Serving omits);
    outputs: [{"name", "alias", "dtype", "shape"}]. Feed aliases are the input names.
    """
    config = GeneralModelConfig()
    for var in inputs:
        config.feed_var.add(name=var["name"], alias_name=var["name"], is_lod_tensor=False,
                            feed_type=_type_code(var), shape=var["shape"][1:])
    for var in outputs:
        config.fetch_var.add(name=var["name"], alias_name=var["alias"], is_lod_tensor=False,
                             fetch_type=_type_code(var), shape=var["shape"][1:])
    return config


def field_feeds(schema) -> list[dict]:
    """Paddle Serving feeds of a feature schema, one per field as PaddleRec declares them: `dense_input`
    (float32 [n_dense], only when the schema has numeric fields), then one int64 feed per categorical field named
    after it, shape [1] for a single-valued field and [max_len] for a multi-valued one, in the schema's column
    order (for Criteo: `dense_input`, `C1`..`C26`). `start`/`width`: the field's columns in `sparse_inputs`
    (what a server packs a per-field request into). Shapes include the batch dimension (-1), as model_meta's."""
    feeds = []
    if schema.n_dense:
        feeds.append({"name": "dense_input", "dtype": "float32", "shape": [-1, schema.n_dense], "kind": "dense",
                      "start": 0, "width": schema.n_dense})
    for f in schema.field_layout():
        if f.name in ("dense_input", "sparse_inputs"):
            raise ServingConfigError(f"field {f.name!r} has the name of a model input; rename it in the schema")
        feeds.append({"name": f.name, "dtype": "int64", "shape": [-1, f.width], "kind": f.kind,
                      "start": f.start, "width": f.width})
    return feeds


def build_schema_config(schema, outputs: list[dict]):
    """GeneralModelConfig with one feed per field (`field_feeds`), as PaddleRec's own serving export writes it;
    the server packs them into the model's `dense_input` / `sparse_inputs` (and also accepts those two packed)."""
    return build_config(field_feeds(schema), outputs)


def _type_code(var: dict) -> int:
    if var["dtype"] not in TYPE_CODES:
        raise ServingConfigError(f"variable {var['name']}: dtype {var['dtype']!r} has no Paddle Serving type code "
                                 f"(supported: {', '.join(TYPE_CODES)})")
    return TYPE_CODES[var["dtype"]]


def write_config(config, directory: str, stem: str) -> tuple[str, str]:
    """Write `<stem>.prototxt` (text format) and `<stem>.stream.prototxt` (binary); returns both paths."""
    os.makedirs(directory, exist_ok=True)
    text_path = os.path.join(directory, stem + TEXT_SUFFIX)
    stream_path = os.path.join(directory, stem + STREAM_SUFFIX)
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    with open(stream_path, "wb") as f:
        f.write(config.SerializeToString())
    return text_path, stream_path


def read_text(path: str):
    """Parse a text-format GeneralModelConfig (e.g. serving_server_conf.prototxt)."""
    try:
        with open(path, encoding="utf-8") as f:
            return text_format.Parse(f.read(), GeneralModelConfig())
    except OSError as exc:
        raise ServingConfigError(f"cannot read serving config {path}: {exc}") from None
    except text_format.ParseError as exc:
        raise ServingConfigError(f"{path}: not a text-format GeneralModelConfig: {exc}") from None


def read_stream(path: str):
    """Parse a binary GeneralModelConfig (e.g. serving_server_conf.stream.prototxt)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ServingConfigError(f"cannot read serving config {path}: {exc}") from None
    config = GeneralModelConfig()
    try:
        config.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError (a message.Error) for corrupt input
        raise ServingConfigError(f"{path}: not a binary GeneralModelConfig: {exc}") from None
    return config


def read_server_config(model_dir: str):
    """The GeneralModelConfig of a Paddle Serving server directory (or an export directory containing one)."""
    server_dir = os.path.join(model_dir, SERVER_DIR) if os.path.isdir(os.path.join(model_dir, SERVER_DIR)) \
        else model_dir
    path = os.path.join(server_dir, SERVER_CONF + TEXT_SUFFIX)
    if not os.path.isfile(path):
        raise ServingConfigError(f"no {SERVER_CONF + TEXT_SUFFIX} in {server_dir}; "
                                 "export with tools/to_static.py --serving")
    return read_text(path)
