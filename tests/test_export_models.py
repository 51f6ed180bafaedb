"""Export of every zoo model: the static model (Paddle Inference, oneDNN off and on) and the ONNX model give
the dygraph model's outputs on real Criteo rows; the metadata carries the contract; a model whose static
graph diverges from dygraph is refused and nothing is written."""
import json
import os

import numpy as np
import paddle
import pytest

from ctrkit.data import iter_batches, list_data_files
from ctrkit.data.spec import FeatureSpec
from ctrkit.export import GOLDEN_ROWS, ExportError, export_model, read_golden_rows
from ctrkit.inference import META_FILE, PredictorOptions, create_onnx_predictor, create_predictor
from models.base import CTRModel
from models.registry import available_models, build_model, get_model_class

ATOL = 1e-5


def real_rows(path: str, spec: FeatureSpec):
    batch = next(iter(iter_batches(list_data_files(path), spec, 1000)))
    return batch.dense, batch.sparse


def small_hyper_parameters(name: str) -> dict:
    """Model defaults with a 10,007-id space and MLP-like size lists shrunk, so the whole zoo exports in
    seconds. Raw Criteo rows hash into any id space (slot-format ids need 1,000,001)."""
    hp = get_model_class(name).default_hyper_parameters()
    hp = {k: ([32, 16][:len(v)] if k.endswith("_sizes") and isinstance(v, list) and v else v) for k, v in hp.items()}
    return {**hp, "sparse_feature_number": 10007}


@pytest.mark.parametrize("name", available_models())
def test_every_model_exports_and_matches_dygraph(name, tmp_path, raw_sample):
    paddle.seed(7)
    model = build_model(name, small_hyper_parameters(name))
    model.eval()
    spec = FeatureSpec(sparse_feature_number=model.hp["sparse_feature_number"])
    golden_dense, golden_sparse = read_golden_rows(raw_sample, spec)
    out = export_model(model, str(tmp_path / "export"), feature_spec=spec, golden_dense=golden_dense,
                       golden_sparse=golden_sparse, golden_source=raw_sample, onnx=True)

    meta = json.load(open(os.path.join(out, META_FILE)))
    assert meta["model_name"] == name and meta["hyper_parameters"] == model.hp
    assert [(v["name"], v["dtype"], v["shape"]) for v in meta["inputs"]] == [
        (s.name, "float32" if "float" in str(s.dtype) else "int64", [-1, s.shape[1]]) for s in model.input_specs()]
    assert meta["output"]["alias"] == "prob" and meta["feature_spec"] == spec.to_dict()
    assert meta["golden"]["rows"] == GOLDEN_ROWS and meta["paddle_version"] == paddle.__version__

    # all 100 real rows (60 beyond the golden batch)
    dense, sparse = real_rows(raw_sample, spec)
    with paddle.no_grad():
        expected = model(paddle.to_tensor(dense), paddle.to_tensor(sparse)).numpy().reshape(-1)
    for onednn in (False, True):
        got = create_predictor(out, PredictorOptions(onednn=onednn, cpu_threads=2)).predict(dense, sparse)
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=f"{name} onednn={onednn}")
    got = create_onnx_predictor(out).predict(dense, sparse)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL, err_msg=f"{name} onnxruntime")


def test_serving_and_onnx_layout(exported_deepfm):
    for rel in ("tostatic.json", "tostatic.pdiparams", META_FILE, "model.onnx",
                "serving_server/tostatic.json", "serving_server/tostatic.pdiparams", f"serving_server/{META_FILE}",
                "serving_server/serving_server_conf.prototxt", "serving_server/serving_server_conf.stream.prototxt",
                "serving_client/serving_client_conf.prototxt", "serving_client/serving_client_conf.stream.prototxt"):
        assert os.path.isfile(os.path.join(exported_deepfm, rel)), rel
    meta = json.load(open(os.path.join(exported_deepfm, META_FILE)))
    assert meta["onnx"]["max_abs_diff"] <= ATOL and meta["onnx"]["opset"] >= 11
    assert all(diff <= ATOL for diff in meta["export_check"].values())
    assert any("onednn=on" in c for c in meta["export_check"]) and any("onednn=off" in c for c in meta["export_check"])
    # the server directory is a complete model on its own
    server = create_predictor(os.path.join(exported_deepfm, "serving_server"))
    dense, sparse, prob = server.model.golden()
    np.testing.assert_allclose(server.predict(dense, sparse), prob, rtol=0, atol=ATOL)


def test_golden_batch_is_bit_exact_real_rows(exported_deepfm, slot_sample):
    meta = json.load(open(os.path.join(exported_deepfm, META_FILE)))
    dense, sparse = read_golden_rows(slot_sample, FeatureSpec.from_dict(meta["feature_spec"]))
    assert np.array_equal(np.asarray(meta["golden"]["dense"], dtype=np.float32), dense)
    assert np.array_equal(np.asarray(meta["golden"]["sparse"], dtype=np.int64), sparse)
    assert len(set(meta["golden"]["prob"])) > 1  # not a saturated, uninformative batch


class DivergentModel(CTRModel):
    """Behaves differently in dygraph and in the static graph: the export check must catch it."""

    model_name = "divergent"

    def __init__(self):
        super().__init__({})
        self.linear = paddle.nn.Linear(13, 1)

    def forward(self, dense_input, sparse_inputs):
        shift = 0.0 if paddle.in_dynamic_mode() else 0.25
        ids = paddle.sum(paddle.cast(sparse_inputs, "float32"), axis=1, keepdim=True)
        return paddle.nn.functional.sigmoid(self.linear(dense_input) + 1e-9 * ids + shift)


def test_static_dygraph_mismatch_fails_and_writes_nothing(tmp_path, slot_sample):
    spec = FeatureSpec()
    dense, sparse = read_golden_rows(slot_sample, spec)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="does not reproduce the dygraph model.*max abs diff"):
        export_model(DivergentModel(), str(out), feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                     golden_source=slot_sample)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_refuses_to_overwrite_a_directory_that_is_not_an_export(tmp_path, slot_sample):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    spec = FeatureSpec()
    dense, sparse = read_golden_rows(slot_sample, spec)
    model = build_model("logistic_regression", {})
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_model(model, str(precious), feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                     golden_source=slot_sample)
    assert (precious / "notes.txt").read_text() == "keep me"
    # an earlier export is replaced in place
    out = tmp_path / "export"
    for _ in range(2):
        export_model(model, str(out), feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                     golden_source=slot_sample)
    assert sorted(os.listdir(out)) == [META_FILE, "tostatic.json", "tostatic.pdiparams"]


class NoOnnxModel(CTRModel):
    """Uses triu_indices, which paddle2onnx 2.1.0 cannot convert (it aborts its process)."""

    model_name = "no_onnx"

    def __init__(self):
        super().__init__({})
        self.linear = paddle.nn.Linear(13, 1)

    def forward(self, dense_input, sparse_inputs):
        pairs = paddle.triu_indices(26, 26, 1)
        picked = paddle.index_select(paddle.cast(sparse_inputs, "float32"), pairs[0], axis=1)
        return paddle.nn.functional.sigmoid(self.linear(dense_input) + 1e-9 * paddle.sum(picked, 1, keepdim=True))


def test_onnx_conversion_failure_is_an_error_not_a_crash(tmp_path, slot_sample):
    spec = FeatureSpec()
    dense, sparse = read_golden_rows(slot_sample, spec)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="paddle2onnx .* could not convert.*export without --onnx"):
        export_model(NoOnnxModel(), str(out), feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                     golden_source=slot_sample, onnx=True)
    assert not out.exists()
    # the same model exports fine without ONNX
    export_model(NoOnnxModel(), str(out), feature_spec=spec, golden_dense=dense, golden_sparse=sparse,
                 golden_source=slot_sample)
    assert create_predictor(str(out)).predict(dense, sparse).shape == (GOLDEN_ROWS,)
