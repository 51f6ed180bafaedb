"""Every model takes any feature schema (issue 13): no numeric fields (dense_input [B, 0], Avazu-shaped) and
multi-valued fields with sum and mean pooling (MovieLens-shaped). Each model exports, and the static model
(Paddle Inference, oneDNN off and on; ONNX Runtime for the field-pair models) reproduces the dygraph model on the
golden batch and on other rows; model_meta.json and the Paddle Serving feeds follow the schema."""
from __future__ import annotations

import json
import os

import numpy as np
import paddle
import pytest

import models  # noqa: F401
from ctrkit.export import export_model, generated_golden_rows
from ctrkit.inference import META_FILE, PredictorOptions, create_onnx_predictor, create_predictor, load_exported_model
from ctrkit.schema import CategoricalField, FeatureSchema, LabelSpec, MultiValuedField, NumericField
from ctrkit.serving_config import read_server_config
from ctrkit.zoo import available_models, build_model, get_model_class
from models.layers import pool_fields

IDS = 5000
NO_NUMERIC = FeatureSchema(categorical=tuple(CategoricalField(n) for n in ("hour", "site_id", "app_id", "device_ip")),
                           label=LabelSpec("click"), format="csv", header=True, sparse_feature_number=IDS,
                           name="avazu_like")
MULTI = FeatureSchema(numeric=(NumericField("age", preprocess="log"),),
                      categorical=(CategoricalField("user_id"), CategoricalField("movie_id")),
                      multi_valued=(MultiValuedField("genres", max_len=4, pooling="mean"),
                                    MultiValuedField("tags", max_len=3, pooling="sum")),
                      label=LabelSpec("rating", 4.0), format="csv", header=True, sparse_feature_number=IDS,
                      name="movielens_like")
SCHEMAS = {"no_numeric": NO_NUMERIC, "multi_valued": MULTI}
SMALL = {"sparse_feature_number": IDS, "sparse_feature_dim": 4, "fc_sizes": [16, 8], "bottom_sizes": [8],
         "top_sizes": [8], "cin_sizes": [4, 4]}
ONNX_MODELS = {"deepfm", "dlrm", "ffm", "xdeepfm", "deepfefm"}  # dot products, field pairs, CIN


def tiny(name: str, schema: FeatureSchema):
    paddle.seed(7)
    defaults = get_model_class(name).default_hyper_parameters()
    return build_model(name, {k: v for k, v in SMALL.items() if k in defaults}, schema)


@pytest.mark.parametrize("schema_name", sorted(SCHEMAS))
@pytest.mark.parametrize("name", available_models())
def test_every_model_exports_for_the_schema(name, schema_name, tmp_path):
    schema = SCHEMAS[schema_name]
    model = tiny(name, schema)
    dense, sparse = generated_golden_rows(schema)
    onnx = name in ONNX_MODELS
    out = export_model(model, str(tmp_path / "m"), golden_dense=dense, golden_sparse=sparse,
                       golden_source="generated", serving=True, onnx=onnx)
    meta = json.load(open(os.path.join(out, META_FILE)))
    assert meta["schema"] == schema.to_dict()
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [
        ("dense_input", [-1, schema.n_dense]), ("sparse_inputs", [-1, schema.sparse_width])]
    assert meta["hyper_parameters"]["dense_input_dim"] == schema.n_dense
    assert meta["feature_spec"] is None  # not Criteo: older readers must not take it for Criteo
    assert max(meta["export_check"].values()) <= 1e-5
    exported = load_exported_model(out)
    assert exported.schema == schema
    # other rows than the golden ones: static == dygraph
    other_dense, other_sparse = generated_golden_rows(schema, rows=64, seed=5)
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(other_dense), paddle.to_tensor(other_sparse)).numpy().reshape(-1)
    predictors = [create_predictor(out, PredictorOptions(onednn=False))]
    if onnx:
        predictors.append(create_onnx_predictor(out))
    for predictor in predictors:
        np.testing.assert_allclose(predictor.predict(other_dense, other_sparse), expected, rtol=0, atol=1e-5)
    feeds = [(v.name, v.feed_type, list(v.shape)) for v in read_server_config(out).feed_var]
    expected_feeds = ([("dense_input", 1, [schema.n_dense])] if schema.n_dense else []) + [
        (f.name, 0, [f.width]) for f in schema.field_layout()]
    assert feeds == expected_feeds


def test_padding_ids_contribute_nothing_and_mean_pooling_divides_by_the_ids_present():
    ids = np.array([[5, 6, 7, 0, 0, 0, 9, 0, 0],    # genres: 2 ids (mean over 2), tags: 1 id
                    [5, 6, 0, 0, 0, 0, 0, 0, 0]], np.int64)  # genres: none (mean over max(0, 1)), tags: none
    table = paddle.nn.Embedding(20, 3, padding_idx=0)
    pooled = pool_fields(table(paddle.to_tensor(ids)), paddle.to_tensor(ids), MULTI).numpy()
    emb = table.weight.numpy()
    assert pooled.shape == (2, MULTI.n_fields, 3)
    np.testing.assert_allclose(pooled[0, 0], emb[5], rtol=1e-6)
    np.testing.assert_allclose(pooled[0, 2], emb[7], rtol=1e-6)  # genres = [7, 0, 0, 0]: one id present
    np.testing.assert_allclose(pooled[0, 3], emb[9], rtol=1e-6)  # tags = [9, 0, 0]
    np.testing.assert_allclose(pooled[1, 2:], 0.0)
    two = np.array([[1, 2, 3, 4, 0, 0, 0, 0, 0]], np.int64)  # genres = [3, 4, 0, 0] -> mean of two
    pooled = pool_fields(table(paddle.to_tensor(two)), paddle.to_tensor(two), MULTI).numpy()
    np.testing.assert_allclose(pooled[0, 2], (emb[3] + emb[4]) / 2, rtol=1e-6)


@pytest.mark.parametrize("name", available_models())
def test_a_multi_valued_fields_order_and_padding_do_not_change_the_prediction(name):
    model = tiny(name, MULTI)
    model.eval()
    dense = np.array([[0.3]], np.float32)
    a = np.array([[11, 12, 21, 22, 0, 0, 31, 0, 0]], np.int64)
    b = np.array([[11, 12, 22, 0, 21, 0, 0, 0, 31]], np.int64)  # same sets, other order and padding positions
    with paddle.no_grad():
        pa, pb = (model(paddle.to_tensor(dense), paddle.to_tensor(x)).numpy() for x in (a, b))
    np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)


def test_hyper_parameters_must_agree_with_the_schema():
    with pytest.raises(ValueError, match="dense_input_dim must be 0"):
        build_model("deepfm", {"sparse_feature_number": IDS, "dense_input_dim": 13}, NO_NUMERIC)
    with pytest.raises(ValueError, match="sparse_feature_number is 1000 but the dataset schema"):
        build_model("deepfm", {"sparse_feature_number": 1000}, NO_NUMERIC)
    model = build_model("deepfm", {"sparse_feature_number": IDS, "fc_sizes": [8]}, NO_NUMERIC)
    assert model.hp["dense_input_dim"] == 0 and model.describe()["schema"] == NO_NUMERIC.to_dict()
    one_field = FeatureSchema(categorical=(CategoricalField("only"),), label=LabelSpec("click"), format="csv",
                              header=True, sparse_feature_number=IDS, name="one")
    with pytest.raises(ValueError, match="needs at least 2 fields"):
        build_model("dlrm", {"sparse_feature_number": IDS}, one_field)


def test_a_checkpoint_rebuilds_its_own_model(tmp_path):
    """build_model_for_checkpoint: the recorded hyper-parameters and schema, whatever the config file says; an
    explicit -o that contradicts them, or a dataset block of other fields, is an error naming both."""
    from ctrkit import checkpoint
    from ctrkit.config import load_config
    from ctrkit.zoo import ModelMismatchError, build_model_for_checkpoint
    from models.registry import default_config_path

    model = build_model("deepfm", {"sparse_feature_number": IDS, "fc_sizes": [12], "sparse_feature_dim": 3}, MULTI)
    ckpt = checkpoint.save_checkpoint(str(tmp_path), 0, model, info=model.describe())
    criteo_config = load_config(default_config_path("deepfm"))
    rebuilt = build_model_for_checkpoint(criteo_config, ckpt, schema_from_checkpoint=True)
    assert rebuilt.schema == MULTI and rebuilt.hp["fc_sizes"] == [12] and rebuilt.hp["sparse_feature_dim"] == 3
    checkpoint.load_model_state(rebuilt, ckpt)
    with pytest.raises(ModelMismatchError, match=r"hyper_parameters.fc_sizes: -o gives \[32\] .* trained with \[12\]"):
        build_model_for_checkpoint(load_config(default_config_path("deepfm"), ["hyper_parameters.fc_sizes=[32]"]),
                                   ckpt, schema_from_checkpoint=True)
    # evaluation parses the config's data: a checkpoint of other fields is refused, naming both schemas
    with pytest.raises(ModelMismatchError, match="trained on schema 'movielens_like'.*declares 'criteo'"):
        build_model_for_checkpoint(criteo_config, ckpt)
    with pytest.raises(ModelMismatchError, match="holds model 'deepfm'.*runner.model='dnn'"):
        build_model_for_checkpoint(load_config(default_config_path("dnn")), ckpt)
