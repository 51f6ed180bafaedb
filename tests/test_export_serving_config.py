"""The Paddle Serving files of an export parse back (text and binary) as the GeneralModelConfig message
Paddle Serving defines, with one feed per field as PaddleRec declares them (Criteo: `dense_input`, `C1`..`C26`)
and the model's fetch variable, and use its field numbers on the wire."""
import json
import os

import pytest
from google.protobuf import text_format

from ctrkit import serving_config
from ctrkit.inference import META_FILE
from ctrkit.serving_config import GeneralModelConfig, ServingConfigError, read_server_config, read_stream, read_text

# Serialised by hand from Paddle Serving's general_model_config.proto (field numbers 1..5, proto2, unpacked
# repeated int32): feed_var{name "dense_input" alias_name "dense_input" is_lod_tensor false feed_type 1 shape 13}
DENSE_FEED_WIRE = (b"\x0a\x20" + b"\x0a\x0bdense_input" + b"\x12\x0bdense_input" + b"\x18\x00" + b"\x20\x01"
                   + b"\x28\x0d")


@pytest.fixture(scope="module")
def meta(exported_deepfm):
    return json.load(open(os.path.join(exported_deepfm, META_FILE)))


def expected_config(meta) -> GeneralModelConfig:
    config = GeneralModelConfig()
    config.feed_var.add(name="dense_input", alias_name="dense_input", is_lod_tensor=False, feed_type=1, shape=[13])
    for k in range(1, 27):
        config.feed_var.add(name=f"C{k}", alias_name=f"C{k}", is_lod_tensor=False, feed_type=0, shape=[1])
    config.fetch_var.add(name=meta["output"]["name"], alias_name="prob", is_lod_tensor=False, fetch_type=1, shape=[1])
    return config


@pytest.mark.parametrize("side,stem", [("serving_server", "serving_server_conf"),
                                       ("serving_client", "serving_client_conf")])
def test_text_and_stream_parse_back_to_the_same_message(exported_deepfm, meta, side, stem):
    directory = os.path.join(exported_deepfm, side)
    text = read_text(os.path.join(directory, stem + ".prototxt"))
    stream = read_stream(os.path.join(directory, stem + ".stream.prototxt"))
    assert text == stream == expected_config(meta)
    # the file is canonical protobuf text format, every field written explicitly (as Paddle Serving writes it)
    with open(os.path.join(directory, stem + ".prototxt")) as f:
        content = f.read()
    assert content == text_format.MessageToString(text)
    assert "is_lod_tensor: false" in content and "feed_type: 0" in content


def test_wire_format_uses_paddle_servings_field_numbers(exported_deepfm):
    with open(os.path.join(exported_deepfm, "serving_server", "serving_server_conf.stream.prototxt"), "rb") as f:
        data = f.read()
    assert data.startswith(DENSE_FEED_WIRE)
    assert GeneralModelConfig.DESCRIPTOR.full_name == "baidu.paddle_serving.configure.GeneralModelConfig"


def test_read_server_config_accepts_export_and_server_dirs(exported_deepfm, meta):
    for path in (exported_deepfm, os.path.join(exported_deepfm, "serving_server")):
        assert read_server_config(path) == expected_config(meta)


def test_bad_files_are_clear_errors(tmp_path):
    bad_text = tmp_path / "bad.prototxt"
    bad_text.write_text("feed_var { nam: 1 }\n")
    with pytest.raises(ServingConfigError, match="bad.prototxt.*not a text-format GeneralModelConfig"):
        read_text(str(bad_text))
    bad_stream = tmp_path / "bad.stream.prototxt"
    bad_stream.write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ServingConfigError, match="not a binary GeneralModelConfig"):
        read_stream(str(bad_stream))
    with pytest.raises(ServingConfigError, match="export with tools/to_static.py --serving"):
        read_server_config(str(tmp_path))
    with pytest.raises(ServingConfigError, match="no Paddle Serving type code"):
        serving_config.build_config([{"name": "x", "dtype": "bool", "shape": [-1, 1]}], [])


def test_feeds_follow_the_schema():
    from ctrkit.schema import CategoricalField, FeatureSchema, LabelSpec, MultiValuedField, NumericField

    schema = FeatureSchema(numeric=(NumericField("age"),), categorical=(CategoricalField("user"),),
                           multi_valued=(MultiValuedField("genres", max_len=6, pooling="mean"),),
                           label=LabelSpec("rating", 4.0), format="csv", header=True, name="ml")
    config = serving_config.build_schema_config(schema, [{"name": "fetch_name_0", "alias": "prob",
                                                          "dtype": "float32", "shape": [-1, 1]}])
    assert [(v.name, v.feed_type, list(v.shape)) for v in config.feed_var] == [
        ("dense_input", 1, [1]), ("user", 0, [1]), ("genres", 0, [6])]
    no_numeric = FeatureSchema(categorical=(CategoricalField("site"), CategoricalField("app")), label=LabelSpec("click"),
                               format="csv", header=True, name="avazu")
    assert [f["name"] for f in serving_config.field_feeds(no_numeric)] == ["site", "app"]  # no empty dense feed
    assert [(f["start"], f["width"]) for f in serving_config.field_feeds(schema)] == [(0, 1), (0, 1), (1, 6)]
