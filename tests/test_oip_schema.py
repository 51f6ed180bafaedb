"""serving.oip follows the exported model's feature schema: input widths come from the model, never from Criteo's
13/26 (a schema with a multi-valued field, and one without numeric fields, whose dense input is [B, 0])."""
from __future__ import annotations

import numpy as np
import pytest

from test_oip_server import OipServer, _inputs, tritongrpc, tritonhttp

SCHEMAS = {
    "movielens-like": dict(numeric=("age", "hour"), categorical=("user", "movie", "city"), multi=("genres", 4)),
    "avazu-like": dict(numeric=(), categorical=("site", "app", "device"), multi=None),
}


def _export(kind: str, out_dir: str) -> tuple[str, int, int]:
    import paddle

    import models  # noqa: F401  (registers the zoo)
    from ctrkit.export import export_model
    from ctrkit.schema import CategoricalField, FeatureSchema, LabelSpec, MultiValuedField, NumericField
    from ctrkit.zoo import build_model, get_model_class

    spec = SCHEMAS[kind]
    schema = FeatureSchema(numeric=tuple(NumericField(n) for n in spec["numeric"]),
                           categorical=tuple(CategoricalField(n) for n in spec["categorical"]),
                           multi_valued=(MultiValuedField(spec["multi"][0], max_len=spec["multi"][1],
                                                          pooling="mean"),) if spec["multi"] else (),
                           label=LabelSpec("click"), format="csv", header=True, sparse_feature_number=1000,
                           name=kind)
    hp = {**get_model_class("deepfm").default_hyper_parameters(schema), "sparse_feature_number": 1000,
          "fc_sizes": [16]}
    paddle.seed(7)
    model = build_model("deepfm", hp, schema)
    rng = np.random.default_rng(7)
    dense = rng.random((6, schema.n_dense), dtype=np.float32)
    sparse = rng.integers(0, 1000, (6, schema.sparse_width), dtype=np.int64)
    export_model(model, out_dir, golden_dense=dense, golden_sparse=sparse, golden_source="generated rows", onnx=True)
    return out_dir, schema.n_dense, schema.sparse_width


@pytest.fixture(scope="module", params=sorted(SCHEMAS))
def schema_export(request, tmp_path_factory):
    return _export(request.param, str(tmp_path_factory.mktemp("oip-schema") / request.param))


@pytest.mark.parametrize("backend", ["paddle", "onnxruntime"])
def test_metadata_and_predictions_follow_the_schema(schema_export, backend, tmp_path):
    from ctrkit.inference import create_onnx_predictor, create_predictor, load_exported_model

    model_dir, n_dense, width = schema_export
    srv = OipServer(model_dir, str(tmp_path / "srv.log"), "--backend", backend, "--log_level", "WARNING")
    try:
        meta = srv.http_client().get_model_metadata("deepfm")
        assert meta["inputs"] == [{"name": "dense_input", "datatype": "FP32", "shape": [-1, n_dense]},
                                  {"name": "sparse_inputs", "datatype": "INT64", "shape": [-1, width]}]
        exported = load_exported_model(model_dir)
        dense, sparse, _ = exported.golden()
        local = create_predictor(exported) if backend == "paddle" else create_onnx_predictor(exported)
        expected = local.predict(dense, sparse)
        for module, client in ((tritonhttp, srv.http_client()), (tritongrpc, srv.grpc_client())):
            got = client.infer("deepfm", _inputs(module, dense, sparse)).as_numpy("prob").reshape(-1)
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        # Criteo's widths are refused for this model, with the model's own widths in the message
        with pytest.raises(Exception, match=rf"needs shape \[B, {width}\]"):
            srv.grpc_client().infer("deepfm", _inputs(tritongrpc, dense, np.zeros((len(dense), 26), np.int64)))
    finally:
        assert srv.stop() == 0
