"""serving.rpc with feature schemas other than Criteo's (issue 13): a schema without numeric fields (no dense feed
in the configs; dense_input [B, 0] inside) and one with multi-valued fields (per-field feeds [B, max_len]), over
every transport and both backends, answers equal to a local predictor."""
from __future__ import annotations

import os

import numpy as np
import pytest

import models  # noqa: F401  (registers the zoo)
from ctrkit.export import export_model, generated_golden_rows
from ctrkit.inference import PredictorOptions, create_predictor
from ctrkit.schema import CategoricalField, FeatureSchema, LabelSpec, MultiValuedField, NumericField
from ctrkit.zoo import build_model
from serving.rpc.client import read_feed_layout
from rpc_helpers import MODES, RpcServer

IDS = 5000
SCHEMAS = {
    "no_numeric": FeatureSchema(categorical=tuple(CategoricalField(n) for n in ("hour", "site_id", "app_id")),
                                label=LabelSpec("click"), format="csv", header=True, sparse_feature_number=IDS,
                                name="avazu_like"),
    "multi_valued": FeatureSchema(numeric=(NumericField("age", preprocess="log"),),
                                  categorical=(CategoricalField("user_id"), CategoricalField("movie_id")),
                                  multi_valued=(MultiValuedField("genres", max_len=4, pooling="mean"),),
                                  label=LabelSpec("rating", 4.0), format="csv", header=True,
                                  sparse_feature_number=IDS, name="movielens_like"),
}


@pytest.fixture(scope="module", params=sorted(SCHEMAS))
def export(request, tmp_path_factory):
    import paddle

    schema = SCHEMAS[request.param]
    paddle.seed(3)
    model = build_model("deepfm", {"sparse_feature_number": IDS, "sparse_feature_dim": 4, "fc_sizes": [16, 8]},
                        schema)
    dense, sparse = generated_golden_rows(schema)
    out = export_model(model, str(tmp_path_factory.mktemp(request.param) / "m"), golden_dense=dense,
                       golden_sparse=sparse, golden_source="generated", serving=True, onnx=True)
    return schema, out


@pytest.mark.parametrize("backend", ["paddle", "onnxruntime"])
def test_schema_feeds_over_every_transport(export, backend, tmp_path):
    schema, out = export
    rng = np.random.default_rng(0)
    dense = rng.random((6, schema.n_dense), dtype=np.float32)
    sparse = rng.integers(0, IDS, (6, schema.sparse_width))
    expected = create_predictor(out, PredictorOptions()).predict(dense, sparse)
    layout = read_feed_layout(os.path.join(out, "serving_client"))
    assert (layout.dense is None) == (schema.n_dense == 0)
    assert [v.width for v in layout.sparse] == [f.width for f in schema.field_layout()]
    server = RpcServer(out, str(tmp_path / "server.log"), "--backend", backend)
    try:
        for mode in MODES:
            c = server.client(layout, mode)
            np.testing.assert_allclose(c.predict(dense, sparse), expected, atol=1e-5, err_msg=mode)
            c.close()
    finally:
        assert server.stop() == 0, server.log()
