"""DeepFM equals an independent numpy implementation, and PaddleRec-shaped checkpoints load into it."""
import numpy as np
import paddle

from ctrkit import checkpoint
from models.registry import build_model

HP = {"sparse_feature_number": 1000, "sparse_feature_dim": 9, "dense_input_dim": 13, "fc_sizes": [16, 8]}


def paddlerec_state_dict(rng, n=1000, d=9, fc_sizes=(16, 8)) -> dict:
    """Random weights under PaddleRec DeepFM's parameter names and shapes."""
    state = {
        "fm.embedding_one.weight": rng.normal(0, 0.1, (n, 1)),
        "fm.embedding.weight": rng.normal(0, 0.1, (n, d)),
        "fm.dense_w_one": rng.normal(0, 0.5, (13,)),
        "fm.dense_w": rng.normal(0, 0.5, (1, 13, d)),
        "bias": np.zeros(1),
    }
    sizes = [39 * d, *fc_sizes, 1]
    for i in range(len(sizes) - 1):
        state[f"dnn.linear_{i}.weight"] = rng.normal(0, 1 / np.sqrt(sizes[i]), (sizes[i], sizes[i + 1]))
        state[f"dnn.linear_{i}.bias"] = rng.normal(0, 0.1, (sizes[i + 1],))
    state["fm.embedding_one.weight"][0] = 0.0  # id 0 = missing: a zero vector
    state["fm.embedding.weight"][0] = 0.0
    return {k: v.astype(np.float32) for k, v in state.items()}


def numpy_deepfm(state: dict, dense: np.ndarray, ids: np.ndarray, n_layers: int) -> np.ndarray:
    first = state["fm.embedding_one.weight"][ids].sum(axis=(1, 2)) + (dense * state["fm.dense_w_one"]).sum(axis=1)
    emb = np.concatenate([state["fm.embedding.weight"][ids], dense[:, :, None] * state["fm.dense_w"]], axis=1)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(axis=1) for i in range(39) for j in range(i + 1, 39))
    h = emb.reshape(len(dense), -1)
    for i in range(n_layers):
        h = h @ state[f"dnn.linear_{i}.weight"] + state[f"dnn.linear_{i}.bias"]
        if i < n_layers - 1:
            h = np.maximum(h, 0)
    return 1 / (1 + np.exp(-(first + pairwise + h[:, 0])))


def test_paddlerec_checkpoint_loads_and_matches_numpy(tmp_path):
    rng = np.random.default_rng(7)
    state = paddlerec_state_dict(rng)
    ckpt = tmp_path / "0"
    ckpt.mkdir()
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(ckpt / "rec.pdparams"))

    model = build_model("deepfm", HP)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: list(v.shape) for k, v in state.items()}
    checkpoint.load_model_state(model, str(ckpt))
    model.eval()

    dense = rng.random((32, 13)).astype(np.float32)
    ids = rng.integers(0, 1000, (32, 26)).astype(np.int64)
    ids[:4, :3] = 0  # some missing slots
    got = model(paddle.to_tensor(dense), paddle.to_tensor(ids)).numpy()
    assert got.shape == (32, 1)
    np.testing.assert_allclose(got[:, 0], numpy_deepfm(state, dense, ids, 3), rtol=1e-5, atol=1e-6)


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    state = paddlerec_state_dict(np.random.default_rng(0), fc_sizes=(32, 8))
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(tmp_path / "rec.pdparams"))
    model = build_model("deepfm", HP)
    try:
        checkpoint.load_model_state(model, str(tmp_path))
    except checkpoint.CheckpointError as exc:
        assert "dnn.linear_0.weight" in str(exc) and "[351, 32]" in str(exc)
    else:
        raise AssertionError("a checkpoint with other shapes must be refused")
