"""Every model of the zoo: trains (loss falls, every parameter moves), round-trips its state dict, exports with
paddle.jit.save (dynamic batch), and ships configs that validate."""
from __future__ import annotations

import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from ctrkit.config import load_config
from models.base import CTRModel
from models.registry import available_models, build_model, default_config_path, get_model_class

NUM_IDS = 300
TINY = {"sparse_feature_number": NUM_IDS, "sparse_feature_dim": 4, "fc_sizes": [16, 16], "cin_sizes": [4, 4],
        "bottom_sizes": [8], "top_sizes": [8], "l2_reg_cross": 1e-3}
VARIANTS = [(name, {}) for name in available_models()] + [
    ("gatednn", {"embedding_gate": "vector"}), ("gatednn", {"embedding_gate": "none", "hidden_gate": False}),
    ("dcn_v2", {"structure": "stacked"})]
ALL_MODELS = ["logistic_regression", "fm", "ffm", "dnn", "gatednn", "wide_deep", "dcn", "dcn_v2", "xdeepfm", "dlrm",
              "deepfefm", "deepfm"]


def tiny_model(name: str, extra: dict | None = None, seed: int = 0) -> CTRModel:
    defaults = get_model_class(name).default_hyper_parameters()
    hp = {k: v for k, v in {**TINY, **(extra or {})}.items() if k in defaults}
    paddle.seed(seed)
    return build_model(name, hp)


def batches(num_batches: int = 8, batch_size: int = 64, seed: int = 0):
    """Random inputs with a label that depends on ids, a pair of ids and a dense value (something to learn)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        dense = rng.random((batch_size, 13)).astype(np.float32)
        ids = rng.integers(1, NUM_IDS, (batch_size, 26)).astype(np.int64)
        logit = (ids[:, 0] % 3 == 0) * 1.5 - (ids[:, 1] % 2 == (ids[:, 2] % 2)) * 1.5 + 2 * dense[:, 0] - 0.5
        labels = (rng.random(batch_size) < 1 / (1 + np.exp(-logit))).astype(np.float32)[:, None]
        out.append((paddle.to_tensor(dense), paddle.to_tensor(ids), paddle.to_tensor(labels)))
    return out


def test_every_issue_model_is_registered():
    assert set(ALL_MODELS) <= set(available_models())


@pytest.mark.parametrize("name,extra", VARIANTS, ids=[f"{n}{'-' + '-'.join(map(str, e.values())) if e else ''}"
                                                      for n, e in VARIANTS])
def test_trains_loss_falls_and_every_parameter_moves(name, extra):
    model = tiny_model(name, extra)
    before = {k: v.numpy().copy() for k, v in model.named_parameters()}
    # as the trainer builds it: lazy Adam, so sparse embedding rows are updated only where used
    optimizer = paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters(), lazy_mode=True)
    data = batches()
    model.train()
    epoch_losses = []
    for _ in range(4):
        losses = []
        for dense, ids, labels in data:
            prob = model(dense, ids)
            assert prob.shape == [64, 1] and prob.dtype == paddle.float32
            loss = F.binary_cross_entropy(prob, labels)
            regularization = model.regularization_loss()
            (loss if regularization is None else loss + regularization).backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)
            losses.append(float(loss))
        epoch_losses.append(np.mean(losses))
    assert epoch_losses[-1] < epoch_losses[0] - 0.02, epoch_losses
    frozen = [k for k, v in model.named_parameters() if np.array_equal(v.numpy(), before[k])]
    assert not frozen, f"{name}: parameters never updated (no gradient reaches them): {frozen}"


@pytest.mark.parametrize("name", available_models())
def test_state_dict_round_trips(name, tmp_path):
    dense, ids, _ = batches(1)[0]
    trained = tiny_model(name, seed=1)
    for param in trained.parameters():  # move every parameter off its initial value
        param.set_value(param.numpy() + np.float32(0.01))
    trained.eval()
    path = str(tmp_path / "rec.pdparams")
    paddle.save(trained.state_dict(), path)
    fresh = tiny_model(name, seed=2)
    fresh.eval()
    assert not np.allclose(fresh(dense, ids).numpy(), trained(dense, ids).numpy())
    missing, unexpected = fresh.set_state_dict(paddle.load(path))
    assert not missing and not unexpected
    np.testing.assert_array_equal(fresh(dense, ids).numpy(), trained(dense, ids).numpy())


@pytest.mark.parametrize("name", available_models())
def test_exports_with_jit_save(name, tmp_path):
    model = tiny_model(name)
    model.eval()
    prefix = str(tmp_path / "model")
    paddle.jit.save(model, prefix, input_spec=model.input_specs())
    loaded = paddle.jit.load(prefix)
    for batch_size in (1, 37):  # the batch dimension stays dynamic
        dense, ids, _ = batches(1, batch_size, seed=batch_size)[0]
        np.testing.assert_allclose(loaded(dense, ids).numpy(), model(dense, ids).numpy(), rtol=0, atol=1e-5)


# The zoo's own ops (index_select on computed pair indices, triu_indices, bmm, parameter slicing) through the real
# export: Paddle Inference with oneDNN off and on, and paddle2onnx + ONNX Runtime, each checked on a golden batch.
# (The remaining models use only ops DeepFM's export tests cover; all twelve were checked this way by hand.)
@pytest.mark.parametrize("name", ["ffm", "deepfefm", "dlrm", "xdeepfm", "gatednn", "dcn"])
def test_exports_through_ctrkit_export_and_onnx(name, tmp_path):
    from ctrkit.data.spec import FeatureSpec
    from ctrkit.export import export_model
    from ctrkit.inference import META_FILE, read_meta

    dense, ids, _ = batches(1, 16, seed=3)[0]
    out = export_model(tiny_model(name), str(tmp_path / name), feature_spec=FeatureSpec(sparse_feature_number=NUM_IDS),
                       golden_dense=dense.numpy(), golden_sparse=ids.numpy(), golden_source="random rows", onnx=True)
    meta = read_meta(os.path.join(out, META_FILE))
    assert meta["export_check"] and max(meta["export_check"].values()) <= 1e-5
    assert meta["onnx"]["max_abs_diff"] <= 1e-5


def test_dcn_l2_on_cross_weights_enters_the_loss():
    model = tiny_model("dcn", {"l2_reg_cross": 0.5})
    weights = model.cross.weights.numpy().astype(np.float64)
    reg = model.regularization_loss()
    np.testing.assert_allclose(float(reg), 0.5 * np.sum(weights ** 2), rtol=1e-5)
    reg.backward()
    np.testing.assert_allclose(model.cross.weights.grad.numpy(), weights, rtol=1e-5)  # d/dw 0.5 * w^2 = w
    assert tiny_model("deepfm").regularization_loss() is None


@pytest.mark.parametrize("name", available_models())
@pytest.mark.parametrize("config_file", ["config.yaml", "config_bigdata.yaml"])
def test_configs_validate_and_build(name, config_file, tmp_path):
    path = os.path.join(os.path.dirname(default_config_path(name)), config_file)
    config = load_config(path)
    assert config.model_name == name
    # build at a small id space: the config's layer sizes must fit the model
    hp = {**config.hyper_parameters, "sparse_feature_number": 1000}
    hp.pop("optimizer")
    model = build_model(name, hp)
    dense, ids, _ = batches(1, 3)[0]
    assert model(dense, ids).shape == [3, 1]


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"embedding_gate": "sideways"}])
def test_bad_hyper_parameters_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_model("gatednn", {**bad, "sparse_feature_number": 10})
