"""Named building blocks of the model zoo. A model is a short composition of these.

Shapes: B = batch, F = number of fields (26 slots + 13 dense = 39 when dense values are embedded), D = embedding dim.
Initialisers follow PaddleRec's (truncated normal 0.1/sqrt(D) for embeddings, normal 1/sqrt(fan_in) for linears).
"""
from __future__ import annotations

import math

import paddle
from paddle import nn

from ctrkit.data.spec import NUM_DENSE


def sparse_embedding(num_embeddings: int, dim: int) -> nn.Embedding:
    """An id -> vector table with sparse gradients (lazy Adam updates only the rows a batch touched).
    Id 0 means "missing" and maps to a zero vector that is never trained."""
    return nn.Embedding(
        num_embeddings, dim, padding_idx=0, sparse=True,
        weight_attr=paddle.ParamAttr(initializer=nn.initializer.TruncatedNormal(mean=0.0, std=0.1 / math.sqrt(dim))))


def constant_parameter(layer: nn.Layer, shape: list[int], value: float) -> paddle.Tensor:
    return layer.create_parameter(shape=shape, dtype="float32",
                                  default_initializer=nn.initializer.Constant(value=value))


def fm_second_order(embeddings: paddle.Tensor) -> paddle.Tensor:
    """Factorization-machine pairwise term sum_{i<j} <v_i, v_j> of [B, F, D] embeddings -> [B, 1],
    computed as 0.5 * sum_d((sum_i v_id)^2 - sum_i v_id^2)."""
    summed = paddle.sum(embeddings, axis=1)
    square_of_sum = summed * summed
    sum_of_square = paddle.sum(embeddings * embeddings, axis=1)
    return 0.5 * paddle.sum(square_of_sum - sum_of_square, axis=1, keepdim=True)


class FactorizationMachine(nn.Layer):
    """First-order weights and D-dim embeddings of the 26 slot ids and the 13 dense values
    (PaddleRec's DeepFM `FM` layer; parameter names kept so its checkpoints load).

    forward(dense [B,13], ids [B,26]) -> (first_order [B,1], second_order [B,1], embeddings [B,39,D]).
    """

    def __init__(self, sparse_feature_number: int, sparse_feature_dim: int, num_dense: int = NUM_DENSE):
        super().__init__()
        self.embedding_one = sparse_embedding(sparse_feature_number, 1)
        self.embedding = sparse_embedding(sparse_feature_number, sparse_feature_dim)
        self.dense_w_one = constant_parameter(self, [num_dense], 1.0)
        self.dense_w = constant_parameter(self, [1, num_dense, sparse_feature_dim], 1.0)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor):
        first_order = (paddle.sum(self.embedding_one(ids), axis=1)
                       + paddle.sum(dense * self.dense_w_one, axis=1, keepdim=True))
        dense_embeddings = paddle.unsqueeze(dense, axis=2) * self.dense_w
        embeddings = paddle.concat([self.embedding(ids), dense_embeddings], axis=1)
        return first_order, fm_second_order(embeddings), embeddings


class MLP(nn.Layer):
    """Linear layers with ReLU between them: input_dim -> hidden_sizes... -> output_dim (no final activation).
    Sublayers are named `linear_<i>` / `act_<i>` as in PaddleRec's DNN."""

    def __init__(self, input_dim: int, hidden_sizes: list[int], output_dim: int | None = 1):
        super().__init__()
        sizes = [input_dim, *hidden_sizes] + ([output_dim] if output_dim else [])
        self._layers = []
        for i in range(len(sizes) - 1):
            linear = nn.Linear(sizes[i], sizes[i + 1], weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.Normal(std=1.0 / math.sqrt(sizes[i]))))
            self.add_sublayer(f"linear_{i}", linear)
            self._layers.append(linear)
            is_last = i == len(sizes) - 2
            if not is_last or not output_dim:
                act = nn.ReLU()
                self.add_sublayer(f"act_{i}", act)
                self._layers.append(act)
        self.output_dim = sizes[-1]

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x
