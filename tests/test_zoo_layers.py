"""Every interaction block of models/layers.py against an independent, loop-by-loop numpy implementation."""
from __future__ import annotations

import itertools

import numpy as np
import paddle
import pytest

from models import layers

RNG = np.random.default_rng(7)
B, F, D = 5, 6, 3


def _t(array: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(array)


def _np(tensor: paddle.Tensor) -> np.ndarray:
    return tensor.numpy().astype(np.float64)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _randomize(layer: paddle.nn.Layer) -> None:
    """Replace every parameter (biases included) by random values, so no block is tested at its initialiser."""
    for param in layer.parameters():
        param.set_value(RNG.normal(0, 0.5, param.shape).astype(np.float32))


@pytest.fixture
def vectors() -> np.ndarray:
    return RNG.normal(size=(B, F, D)).astype(np.float32)


def test_fm_identity_equals_explicit_pairwise_sum(vectors):
    expected = [sum(vectors[b, i] @ vectors[b, j] for i, j in itertools.combinations(range(F), 2)) for b in range(B)]
    np.testing.assert_allclose(_np(layers.fm_second_order(_t(vectors)))[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_upper_triangle_and_field_pairs_agree_with_row_major_order():
    matrix = RNG.normal(size=(B, F, F)).astype(np.float32)
    expected = [[matrix[b, i, j] for i, j in itertools.combinations(range(F), 2)] for b in range(B)]
    np.testing.assert_allclose(_np(layers.upper_triangle(_t(matrix))), expected, rtol=1e-6)
    rows, cols = layers.field_pairs(F)
    assert list(zip(rows.numpy().tolist(), cols.numpy().tolist())) == list(itertools.combinations(range(F), 2))


def test_dot_interaction(vectors):
    expected = [[vectors[b, i] @ vectors[b, j] for i, j in itertools.combinations(range(F), 2)] for b in range(B)]
    np.testing.assert_allclose(_np(layers.dot_interaction(_t(vectors))), expected, rtol=1e-5, atol=1e-5)


def _criteo_batch(num_ids: int) -> tuple[np.ndarray, np.ndarray]:
    dense = RNG.random((B, layers.NUM_DENSE)).astype(np.float32)
    ids = RNG.integers(0, num_ids, (B, layers.NUM_SLOTS)).astype(np.int64)
    ids[0, :3] = 0  # missing values (padding id 0)
    return dense, ids


def test_linear_term_and_field_embedding():
    dense, ids = _criteo_batch(50)
    linear, fields = layers.LinearTerm(50), layers.FieldEmbedding(50, D)
    _randomize(linear)
    _randomize(fields)
    w_id, w_dense, bias = linear.embedding_one.weight.numpy(), linear.dense_w_one.numpy(), linear.bias.numpy()
    w_id[0] = 0.0  # padding row: the table never returns it
    expected = [bias[0] + sum(w_id[ids[b, s], 0] for s in range(26)) + dense[b] @ w_dense for b in range(B)]
    np.testing.assert_allclose(_np(linear(_t(dense), _t(ids)))[:, 0], expected, rtol=1e-5, atol=1e-5)

    table, dense_w = fields.embedding.weight.numpy(), fields.dense_w.numpy()[0]
    table[0] = 0.0
    expected = np.stack([np.concatenate([table[ids[b]], dense[b][:, None] * dense_w]) for b in range(B)])
    np.testing.assert_allclose(_np(fields(_t(dense), _t(ids))), expected, rtol=1e-6)


def test_field_aware_interaction():
    dense, ids = _criteo_batch(40)
    block = layers.FieldAwareInteraction(40, D)
    _randomize(block)
    num_fields = layers.NUM_FIELDS
    table = block.embedding.weight.numpy().reshape(40, num_fields, D)
    table[0] = 0.0
    dense_w = block.dense_w.numpy().reshape(layers.NUM_DENSE, num_fields, D)
    expected = []
    for b in range(B):
        # v[i][f]: feature i's vector for field f; dense feature j is x_j times its learned vectors.
        v = [table[ids[b, s]] for s in range(26)] + [dense[b, j] * dense_w[j] for j in range(layers.NUM_DENSE)]
        expected.append(sum(v[i][j] @ v[j][i] for i, j in itertools.combinations(range(num_fields), 2)))
    np.testing.assert_allclose(_np(block(_t(dense), _t(ids)))[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_field_embedded_interaction_uses_symmetric_pair_matrices(vectors):
    block = layers.FieldEmbeddedInteraction(F, D)
    _randomize(block)
    raw = block.field_pair_w.numpy()
    pairs = list(itertools.combinations(range(F), 2))
    assert raw.shape == (len(pairs), D, D)
    expected = [[vectors[b, i] @ ((raw[p] + raw[p].T) / 2) @ vectors[b, j] for p, (i, j) in enumerate(pairs)]
                for b in range(B)]
    np.testing.assert_allclose(_np(block(_t(vectors))), expected, rtol=1e-4, atol=1e-5)
    assert "field_pair_w" in block.state_dict()


def test_cross_net_v1_has_per_layer_weights_and_l2():
    x0 = RNG.normal(size=(B, 8)).astype(np.float32)
    block = layers.CrossNet(8, 3)
    _randomize(block)
    w, bias = block.weights.numpy(), block.biases.numpy()
    assert not np.allclose(w[0], w[1])
    x = x0.astype(np.float64)
    for layer in range(3):
        x = x0 * (x @ w[layer])[:, None] + bias[layer] + x
    np.testing.assert_allclose(_np(block(_t(x0))), x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(block.l2()), np.sum(w.astype(np.float64) ** 2), rtol=1e-5)


def test_cross_net_v2_full_matrix():
    x0 = RNG.normal(size=(B, 8)).astype(np.float32)
    block = layers.CrossNetV2(8, 2)
    _randomize(block)
    x = x0.astype(np.float64)
    for linear in block.layers:
        weight, bias = linear.weight.numpy(), linear.bias.numpy()  # paddle's Linear: y = x @ W + b, W [in, out]
        assert weight.shape == (8, 8)
        x = x0 * (x @ weight + bias) + x
    np.testing.assert_allclose(_np(block(_t(x0))), x, rtol=1e-4, atol=1e-4)


def test_compressed_interaction_network(vectors):
    sizes = [4, 2]
    block = layers.CompressedInteraction(F, sizes)
    _randomize(block)
    x_prev, pooled = vectors.astype(np.float64), []
    for k, linear in enumerate(block.layers):
        h_prev = x_prev.shape[1]
        # paddle's weight is [H_prev * F, H_k] with input index h * F + m (X^{k-1}_h times X^0_m)
        weight = linear.weight.numpy().reshape(h_prev, F, sizes[k])
        bias = linear.bias.numpy()
        x_next = np.zeros((B, sizes[k], D))
        for b, h_out, h, m in itertools.product(range(B), range(sizes[k]), range(h_prev), range(F)):
            x_next[b, h_out] += weight[h, m, h_out] * x_prev[b, h] * vectors[b, m]
        x_next += bias[None, :, None]
        pooled.append(x_next.sum(axis=2))
        x_prev = x_next
    expected = np.concatenate(pooled, axis=1) @ block.output.weight.numpy() + block.output.bias.numpy()
    np.testing.assert_allclose(_np(block(_t(vectors))), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bit_wise", [True, False])
def test_embedding_gate(vectors, bit_wise):
    block = layers.EmbeddingGate(F, D, bit_wise=bit_wise)
    _randomize(block)
    weight = block.weight.numpy()
    assert weight.shape == (F, D, D if bit_wise else 1)
    expected = np.stack([np.stack([vectors[b, i] * _sigmoid(vectors[b, i] @ weight[i]) for i in range(F)])
                         for b in range(B)])
    np.testing.assert_allclose(_np(block(_t(vectors))), expected, rtol=1e-5, atol=1e-6)


def test_hidden_gate_and_gated_mlp():
    hidden = RNG.normal(size=(B, 6)).astype(np.float32)
    gate = layers.HiddenGate(6)
    _randomize(gate)
    w = gate.linear.weight.numpy()
    np.testing.assert_allclose(_np(gate(_t(hidden))), hidden * _sigmoid(hidden @ w), rtol=1e-5, atol=1e-6)

    mlp = layers.MLP(6, [4], 1, hidden_gates=True)
    _randomize(mlp)
    h = np.maximum(hidden @ mlp.linear_0.weight.numpy() + mlp.linear_0.bias.numpy(), 0)
    h = h * _sigmoid(h @ mlp.gate_0.linear.weight.numpy())
    expected = h @ mlp.linear_1.weight.numpy() + mlp.linear_1.bias.numpy()
    np.testing.assert_allclose(_np(mlp(_t(hidden))), expected, rtol=1e-5, atol=1e-5)


def test_mlp_keeps_paddlerec_names_and_dropout_only_in_training():
    mlp = layers.MLP(6, [4, 4], 1, dropout=0.5)
    assert sorted(mlp.state_dict()) == sorted(f"linear_{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    x = _t(RNG.normal(size=(64, 6)).astype(np.float32))
    mlp.eval()
    np.testing.assert_array_equal(mlp(x).numpy(), mlp(x).numpy())
    mlp.train()
    assert not np.array_equal(mlp(x).numpy(), mlp(x).numpy())
