"""The predictor factory: every configuration this build offers matches the golden batch, what it lacks is a
clear error, a predictor refuses a model whose golden outputs it cannot reproduce, pools are thread-safe."""
import json
import os
import shutil
import threading

import numpy as np
import paddle
import pytest

from ctrkit import inference
from ctrkit.data.spec import FeatureSpec
from ctrkit.export import export_model
from ctrkit.inference import (CapabilityError, ExportedModelError, GoldenMismatchError, InferenceError, InputError,
                              PredictorOptions, PredictorPool, create_onnx_predictor, create_predictor,
                              load_exported_model)
from models.base import CTRModel

CAPS = inference.capabilities()
needs_cpu_build = pytest.mark.skipif(CAPS["cuda"], reason="checks the errors of a CPU-only build")


def other_rows(model_dir, n=64, seed=0):
    """Inputs unlike the golden batch: random ids over the whole id range, random dense values."""
    limit = load_exported_model(model_dir).feature_spec.sparse_feature_number
    rng = np.random.default_rng(seed)
    return rng.random((n, 13), dtype=np.float32), rng.integers(0, limit, (n, 26))


@pytest.mark.parametrize("options", [
    PredictorOptions(onednn=False),
    PredictorOptions(onednn=True),
    PredictorOptions(onednn=True, cpu_threads=2),
    PredictorOptions(onednn=False, cpu_threads=2, ir_optim=False),
    PredictorOptions(onednn=True, ir_optim=False),
], ids=lambda o: o.describe())
def test_cpu_configurations_match_golden(exported_deepfm, options):
    predictor = create_predictor(exported_deepfm, options)
    dense, sparse, prob = predictor.model.golden()
    assert inference.verify_golden(predictor, "test", 1e-5) <= 1e-5
    np.testing.assert_allclose(predictor.predict(dense, sparse), prob, rtol=0, atol=1e-5)
    reference = create_predictor(exported_deepfm, PredictorOptions(onednn=False))
    dense, sparse = other_rows(exported_deepfm)
    np.testing.assert_allclose(predictor.predict(dense, sparse), reference.predict(dense, sparse), rtol=0, atol=1e-5)


class SquareTrapModel(CTRModel):
    """`square` of a tensor that also feeds a Linear: Paddle 3.3.1's oneDNN inplace_pass overwrites it."""

    model_name = "square_trap"

    def __init__(self):
        super().__init__({"sparse_feature_number": 1000})
        self.embedding = paddle.nn.Embedding(1000, 9)
        self.dense_w = self.create_parameter([1, 13, 9])
        self.hidden = paddle.nn.Linear(39 * 9, 64)
        self.out = paddle.nn.Linear(64, 1)

    def forward(self, dense_input, sparse_inputs):
        emb = paddle.concat([self.embedding(sparse_inputs), paddle.unsqueeze(dense_input, 2) * self.dense_w], axis=1)
        fm = 0.5 * paddle.sum(paddle.square(paddle.sum(emb, 1)) - paddle.sum(paddle.square(emb), 1), 1, keepdim=True)
        mlp = self.out(paddle.nn.functional.relu(self.hidden(paddle.reshape(emb, [-1, 39 * 9]))))
        return paddle.nn.functional.sigmoid(mlp + fm)


def test_onednn_inplace_trap_is_handled(tmp_path):
    paddle.seed(0)
    rng = np.random.default_rng(0)
    dense, sparse = rng.random((64, 13), dtype=np.float32), rng.integers(0, 1000, (64, 26))
    out = export_model(SquareTrapModel(), str(tmp_path / "trap"), feature_spec=FeatureSpec(sparse_feature_number=1000),
                       golden_dense=dense, golden_sparse=sparse, golden_source="random")
    model = load_exported_model(out)
    # Paddle's default oneDNN passes give wrong numbers on this model ...
    config = paddle.inference.Config(model.model_file, model.params_file)
    config.disable_glog_info()
    config.enable_onednn()
    raw = paddle.inference.create_predictor(config)
    for name, array in zip(model.input_names, (dense, sparse)):
        raw.get_input_handle(name).reshape(array.shape)
        raw.get_input_handle(name).copy_from_cpu(array)
    raw.run()
    raw_diff = np.abs(raw.get_output_handle(model.output_name).copy_to_cpu().reshape(-1) - model.golden()[2]).max()
    if raw_diff <= 1e-5:
        pytest.skip(f"paddle {paddle.__version__}'s oneDNN inplace_pass no longer corrupts this model")
    # ... the factory's oneDNN predictor does not
    predictor = create_predictor(out, PredictorOptions(onednn=True))
    np.testing.assert_allclose(predictor.predict(dense, sparse), model.golden()[2], rtol=0, atol=1e-5)


@needs_cpu_build
@pytest.mark.parametrize("options,message", [
    (PredictorOptions(device="gpu"), "CPU-only build"),
    (PredictorOptions(device="gpu", tensorrt="fp16"), "CPU-only build"),
])
def test_gpu_requests_fail_clearly_on_a_cpu_build(exported_deepfm, options, message):
    with pytest.raises(CapabilityError, match=message):
        create_predictor(exported_deepfm, options)


def test_tensorrt_without_tensorrt_build_fails_clearly():
    if CAPS["tensorrt"]:
        pytest.skip("this build has TensorRT")
    options = PredictorOptions(device="gpu", tensorrt="int8")
    with pytest.raises(CapabilityError, match="(CPU-only build|not compiled with TensorRT)"):
        inference.check_capabilities(options)
    with pytest.raises(ValueError, match="tensorrt needs device='gpu'"):
        PredictorOptions(tensorrt="fp32")


def test_memory_optim_on_new_ir_model_is_a_clear_error_or_correct(exported_deepfm):
    try:
        predictor = create_predictor(exported_deepfm, PredictorOptions(memory_optim=True))
    except InferenceError as exc:
        assert "memory_optim cannot be used" in str(exc) and "new-IR" in str(exc)
    else:  # a Paddle that can build it must still give the golden outputs
        dense, sparse, prob = predictor.model.golden()
        np.testing.assert_allclose(predictor.predict(dense, sparse), prob, rtol=0, atol=1e-5)


def tampered_copy(exported_deepfm, tmp_path, delta: float) -> str:
    copy = str(tmp_path / "tampered")
    shutil.copytree(exported_deepfm, copy, ignore=shutil.ignore_patterns("serving_*", "model.onnx"))
    meta_path = os.path.join(copy, inference.META_FILE)
    meta = json.load(open(meta_path))
    meta["golden"]["prob"][3] += delta
    json.dump(meta, open(meta_path, "w"))
    return copy


@pytest.mark.parametrize("onednn", [False, True])
def test_golden_mismatch_is_refused(exported_deepfm, tmp_path, onednn):
    copy = tampered_copy(exported_deepfm, tmp_path, 0.01)
    options = PredictorOptions(onednn=onednn, cpu_threads=2)
    with pytest.raises(GoldenMismatchError) as info:
        create_predictor(copy, options)
    message = str(info.value)
    assert options.describe() in message and "max abs diff 0.01" in message and copy in message
    with pytest.raises(GoldenMismatchError):
        PredictorPool(copy, options, 2)
    # explicitly opting out of the check still builds a (working) predictor
    predictor = create_predictor(copy, PredictorOptions(onednn=onednn, check_golden=False))
    assert predictor.predict(*other_rows(copy)).shape == (64,)


def test_tolerance_follows_precision(exported_deepfm, tmp_path):
    copy = tampered_copy(exported_deepfm, tmp_path, 1e-4)  # beyond fp32's 1e-5, within fp16's allowance
    with pytest.raises(GoldenMismatchError):
        create_predictor(copy)
    assert create_predictor(copy, PredictorOptions(golden_atol=1e-3)) is not None
    assert PredictorOptions(device="gpu", tensorrt="fp16").golden_tolerance > 1e-4


def test_bad_inputs_are_rejected(exported_deepfm):
    predictor = create_predictor(exported_deepfm)
    dense, sparse = other_rows(exported_deepfm, n=4)
    cases = [
        (dense[:, :12], sparse, r"dense_input must have shape \[B, 13\]"),
        (dense, sparse[:, :25], r"sparse_inputs must have shape \[B, 26\]"),
        (dense[:3], sparse, "dense_input has 3 rows but sparse_inputs has 4"),
        (dense, sparse.astype(np.float32), "sparse_inputs must be integer ids"),
        (np.where(np.arange(13) == 5, np.nan, dense), sparse, r"dense_input\[0, 5\] is nan"),
        (dense, np.where(np.arange(26) == 7, 1_000_001, sparse), r"sparse_inputs\[0, 7\] = 1000001 is outside"),
        (dense, np.where(np.arange(26) == 2, -1, sparse), r"sparse_inputs\[0, 2\] = -1 is outside"),
    ]
    for d, s, message in cases:
        with pytest.raises(InputError, match=message):
            predictor.predict(d, s)
    assert predictor.predict(dense[:0], sparse[:0]).shape == (0,)
    # float64 dense values and int32 ids are converted, not refused
    np.testing.assert_allclose(predictor.predict(dense.astype(np.float64), sparse.astype(np.int32)),
                               predictor.predict(dense, sparse), rtol=0, atol=0)


def test_pool_serves_threads_concurrently_with_correct_results(exported_deepfm):
    pool = PredictorPool(exported_deepfm, PredictorOptions(onednn=True), size=3)
    single = create_predictor(exported_deepfm, PredictorOptions(onednn=False))
    inputs = [other_rows(exported_deepfm, n=1 + 7 * i, seed=i) for i in range(12)]
    expected = [single.predict(d, s) for d, s in inputs]
    errors, in_use, peak = [], [0], [0]
    lock = threading.Lock()

    def worker(k):
        for i in range(k, len(inputs), 4):
            with pool.acquire() as predictor:
                with lock:
                    in_use[0] += 1
                    peak[0] = max(peak[0], in_use[0])
                got = predictor.predict(*inputs[i])
                with lock:
                    in_use[0] -= 1
            if not np.allclose(got, expected[i], rtol=0, atol=1e-5):
                errors.append(i)
            np.testing.assert_allclose(pool.predict(*inputs[i]), expected[i], rtol=0, atol=1e-5)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and 1 <= peak[0] <= 3


def test_pool_acquire_times_out_when_all_busy(exported_deepfm):
    pool = PredictorPool(exported_deepfm, PredictorOptions(), size=1)
    with pool.acquire():
        with pytest.raises(TimeoutError, match="no free predictor in the pool of 1"):
            with pool.acquire(timeout=0.05):
                pass
    with pool.acquire(timeout=0.05) as predictor:
        assert predictor is not None


def test_onnx_predictor_matches_paddle(exported_deepfm):
    paddle_predictor = create_predictor(exported_deepfm, PredictorOptions(onednn=True))
    onnx = create_onnx_predictor(exported_deepfm, cpu_threads=2)
    dense, sparse = other_rows(exported_deepfm, n=300)
    np.testing.assert_allclose(onnx.predict(dense, sparse), paddle_predictor.predict(dense, sparse), rtol=0, atol=1e-5)


def test_load_errors_name_the_problem(exported_deepfm, tmp_path):
    with pytest.raises(ExportedModelError, match="no exported model at"):
        load_exported_model(str(tmp_path / "missing"))
    with pytest.raises(ExportedModelError, match="no model_meta.json"):
        load_exported_model(str(tmp_path))
    copy = str(tmp_path / "copy")
    shutil.copytree(exported_deepfm, copy)
    os.remove(os.path.join(copy, "tostatic.pdiparams"))
    with pytest.raises(ExportedModelError, match="tostatic.pdiparams is missing"):
        load_exported_model(copy)
    # model.onnx is found beside serving_server/ (the export directory), and its absence is a clear error
    assert create_onnx_predictor(os.path.join(copy, "serving_server")).predict(*load_exported_model(exported_deepfm).golden()[:2]).shape
    os.remove(os.path.join(copy, "model.onnx"))
    with pytest.raises(ExportedModelError, match="has no model.onnx"):
        create_onnx_predictor(os.path.join(copy, "serving_server"))
    # a model file path works too (paddle_infer's --model_file)
    model = load_exported_model(os.path.join(exported_deepfm, "tostatic.json"))
    assert model.directory == exported_deepfm and model.params_file.endswith("tostatic.pdiparams")


def test_capabilities_report_this_build():
    assert CAPS["paddle_version"] == paddle.__version__
    assert CAPS["cuda"] == paddle.is_compiled_with_cuda()
    assert CAPS["onednn"] == paddle.base.core.is_compiled_with_onednn()
    assert CAPS["tensorrt"] == (tuple(paddle.inference.get_trt_compile_version()) != (0, 0, 0))
    assert CAPS["gpu_count"] >= 0 and CAPS["cpu_count"] >= 1
