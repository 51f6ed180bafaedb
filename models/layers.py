"""Named building blocks of the model zoo. A model is a short composition of these.

Shapes: B = batch, F = number of fields (26 slots + 13 dense = 39 when dense values are embedded), D = embedding dim,
P = F*(F-1)/2 field pairs. Initialisers follow PaddleRec's (truncated normal 0.1/sqrt(D) for embeddings, normal
1/sqrt(fan_in) for linears), except that dense-field weights start like embeddings (see
`dense_embedding_parameter`). Everything here exports with `paddle.jit.save` (no Python branches on tensor values).

Two ways of feeding the 13 dense values, chosen per paper:
- embedded like any other field (`FieldEmbedding`: value times a learned D-vector), for the FM family, where a field
  must have a vector to interact with the others;
- appended raw to the flattened slot embeddings (`flatten_with_dense`), as the DNN, Wide & Deep and DCN papers do.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
from paddle import nn

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS

NUM_FIELDS = NUM_SLOTS + NUM_DENSE


def _embedding_initializer(dim: int) -> nn.initializer.Initializer:
    return nn.initializer.TruncatedNormal(mean=0.0, std=0.1 / math.sqrt(dim))


def sparse_embedding(num_embeddings: int, dim: int) -> nn.Embedding:
    """An id -> vector table with sparse gradients (lazy Adam updates only the rows a batch touched).
    Id 0 means "missing" and maps to a zero vector that is never trained."""
    return nn.Embedding(num_embeddings, dim, padding_idx=0, sparse=True,
                        weight_attr=paddle.ParamAttr(initializer=_embedding_initializer(dim)))


def dense_embedding_parameter(layer: nn.Layer, shape: list[int], dim: int) -> paddle.Tensor:
    """Weights or D-vectors of the dense fields, initialised like the id embeddings. (PaddleRec's DeepFM starts them
    at 1.0; with dense values spread over [0, 1] that puts the FM term of 13 identical dense vectors at ~D * 20 and
    saturates the sigmoid, where binary cross-entropy has no gradient left.)"""
    return layer.create_parameter(shape=shape, dtype="float32", default_initializer=_embedding_initializer(dim))


def constant_parameter(layer: nn.Layer, shape: list[int], value: float) -> paddle.Tensor:
    return layer.create_parameter(shape=shape, dtype="float32",
                                  default_initializer=nn.initializer.Constant(value=value))


def normal_parameter(layer: nn.Layer, shape: list[int], std: float) -> paddle.Tensor:
    return layer.create_parameter(shape=shape, dtype="float32",
                                  default_initializer=nn.initializer.Normal(mean=0.0, std=std))


# ---------------------------------------------------------------------------------------------------- embeddings

def first_order(dense: paddle.Tensor, ids: paddle.Tensor, id_weights: nn.Embedding,
                dense_weights: paddle.Tensor) -> paddle.Tensor:
    """sum of one weight per slot id [B,26] plus dense [B,13] . dense_weights [13] -> [B,1] (no bias)."""
    return (paddle.sum(id_weights(ids), axis=1)
            + paddle.sum(dense * dense_weights, axis=1, keepdim=True))


def embed_fields(dense: paddle.Tensor, ids: paddle.Tensor, table: nn.Embedding,
                 dense_vectors: paddle.Tensor) -> paddle.Tensor:
    """Slot ids [B,26] -> table rows, dense values [B,13] -> value * dense_vectors[0, j]; -> [B,39,D] (slots first)."""
    dense_embeddings = paddle.unsqueeze(dense, axis=2) * dense_vectors
    return paddle.concat([table(ids), dense_embeddings], axis=1)


def flatten_with_dense(embeddings: paddle.Tensor, dense: paddle.Tensor) -> paddle.Tensor:
    """Slot embeddings [B,26,D] and raw dense values [B,13] -> one MLP / cross-network input [B, 26*D + 13]."""
    return paddle.concat([paddle.flatten(embeddings, start_axis=1), dense], axis=1)


class LinearTerm(nn.Layer):
    """Logistic regression's logit: bias + one weight per slot id + one weight per dense value.

    forward(dense [B,13], ids [B,26]) -> [B,1].
    """

    def __init__(self, sparse_feature_number: int, num_dense: int = NUM_DENSE):
        super().__init__()
        self.embedding_one = sparse_embedding(sparse_feature_number, 1)
        self.dense_w_one = dense_embedding_parameter(self, [num_dense], 1)
        self.bias = constant_parameter(self, [1], 0.0)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        return self.bias + first_order(dense, ids, self.embedding_one, self.dense_w_one)


class FieldEmbedding(nn.Layer):
    """A D-vector per slot id and per dense field (times the dense value). forward(dense, ids) -> [B,39,D]."""

    def __init__(self, sparse_feature_number: int, dim: int, num_dense: int = NUM_DENSE):
        super().__init__()
        self.embedding = sparse_embedding(sparse_feature_number, dim)
        self.dense_w = dense_embedding_parameter(self, [1, num_dense, dim], dim)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        return embed_fields(dense, ids, self.embedding, self.dense_w)


class FactorizationMachine(nn.Layer):
    """First-order weights and D-dim embeddings of the 26 slot ids and the 13 dense values
    (PaddleRec's DeepFM `FM` layer; parameter names kept so its checkpoints load).

    forward(dense [B,13], ids [B,26]) -> (first_order [B,1], second_order [B,1], embeddings [B,39,D]).
    """

    def __init__(self, sparse_feature_number: int, sparse_feature_dim: int, num_dense: int = NUM_DENSE):
        super().__init__()
        self.embedding_one = sparse_embedding(sparse_feature_number, 1)
        self.embedding = sparse_embedding(sparse_feature_number, sparse_feature_dim)
        self.dense_w_one = dense_embedding_parameter(self, [num_dense], 1)
        self.dense_w = dense_embedding_parameter(self, [1, num_dense, sparse_feature_dim], sparse_feature_dim)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor):
        embeddings = embed_fields(dense, ids, self.embedding, self.dense_w)
        return first_order(dense, ids, self.embedding_one, self.dense_w_one), fm_second_order(embeddings), embeddings


# ---------------------------------------------------------------------------------------------------- interactions

def fm_second_order(embeddings: paddle.Tensor) -> paddle.Tensor:
    """Factorization-machine pairwise term sum_{i<j} <v_i, v_j> of [B, F, D] embeddings -> [B, 1],
    computed as 0.5 * sum_d((sum_i v_id)^2 - sum_i v_id^2)."""
    summed = paddle.sum(embeddings, axis=1)
    square_of_sum = summed * summed
    sum_of_square = paddle.sum(embeddings * embeddings, axis=1)
    return 0.5 * paddle.sum(square_of_sum - sum_of_square, axis=1, keepdim=True)


def field_pairs(num_fields: int) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Indices (i, j) of the P = F*(F-1)/2 field pairs with i < j, row-major: two int64 [P] tensors.
    A tensor constant (an assign_value op in exported programs; not paddle.triu_indices, on which paddle2onnx 2.1.0
    aborts, so the model would have no ONNX export)."""
    pairs = paddle.to_tensor(np.stack(np.triu_indices(num_fields, 1)).astype("int64"))
    return pairs[0], pairs[1]


def upper_triangle(matrix: paddle.Tensor) -> paddle.Tensor:
    """Entries (i, j), i < j, of a batch of square matrices [B,F,F] -> [B,P] in `field_pairs` order."""
    num_fields = matrix.shape[1]
    rows, cols = field_pairs(num_fields)
    return paddle.index_select(paddle.reshape(matrix, [-1, num_fields * num_fields]), rows * num_fields + cols,
                               axis=1)


def dot_interaction(vectors: paddle.Tensor) -> paddle.Tensor:
    """DLRM's interaction: the dot product of every pair of the F vectors [B,F,D] -> [B,P] (upper triangle of X X^T)."""
    return upper_triangle(paddle.matmul(vectors, vectors, transpose_y=True))


class FieldAwareInteraction(nn.Layer):
    """Field-aware FM (Juan et al. 2016): every feature keeps one D-vector per field, v_{i,f}, and a pair of features
    interacts through sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j. Slot ids get their F vectors from one sparse table
    [N, F*D]; dense field j gets value * dense_w[0, j] ([1,13,F*D]).

    forward(dense [B,13], ids [B,26]) -> [B,1].
    """

    def __init__(self, sparse_feature_number: int, dim: int, num_dense: int = NUM_DENSE):
        super().__init__()
        self.num_fields, self.dim = NUM_SLOTS + num_dense, dim
        self.embedding = sparse_embedding(sparse_feature_number, self.num_fields * dim)
        self.dense_w = dense_embedding_parameter(self, [1, num_dense, self.num_fields * dim], dim)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        num_fields = self.num_fields
        vectors = embed_fields(dense, ids, self.embedding, self.dense_w)
        vectors = paddle.reshape(vectors, [-1, num_fields * num_fields, self.dim])  # row i * F + f: v_{i,f}
        rows, cols = field_pairs(num_fields)  # only the P pairs i < j (not all F^2): ~2x faster than F x F
        left = paddle.index_select(vectors, rows * num_fields + cols, axis=1)  # v_{i,F(j)}  [B,P,D]
        right = paddle.index_select(vectors, cols * num_fields + rows, axis=1)  # v_{j,F(i)}
        return paddle.sum(left * right, axis=[1, 2]).unsqueeze(1)


class FieldEmbeddedInteraction(nn.Layer):
    """FEFM (Pande 2020): pair (i, j) of fields interacts through a symmetric D x D matrix, v_i^T W_ij v_j.
    All P matrices live in ONE registered parameter `field_pair_w` [P, D, D] (trained and saved; PaddleRec kept them
    in a plain dict); W_ij = (A_ij + A_ij^T) / 2 makes them symmetric as in the paper.

    forward(embeddings [B,F,D]) -> per-pair interactions [B,P] (sum them for the FEFM logit).
    """

    def __init__(self, num_fields: int, dim: int):
        super().__init__()
        self.num_fields = num_fields
        num_pairs = num_fields * (num_fields - 1) // 2
        self.field_pair_w = normal_parameter(self, [num_pairs, dim, dim], 0.1 / math.sqrt(dim))

    def forward(self, embeddings: paddle.Tensor) -> paddle.Tensor:
        rows, cols = field_pairs(self.num_fields)
        per_field = paddle.transpose(embeddings, [1, 0, 2])  # [F,B,D]: gathering whole [B,D] blocks is fast
        left = paddle.index_select(per_field, rows, axis=0)  # [P,B,D]
        right = paddle.index_select(per_field, cols, axis=0)
        symmetric = 0.5 * (self.field_pair_w + paddle.transpose(self.field_pair_w, [0, 2, 1]))
        projected = paddle.bmm(left, symmetric)  # [P,B,D]: v_i^T W_ij
        return paddle.transpose(paddle.sum(projected * right, axis=2), [1, 0])


class CrossNet(nn.Layer):
    """DCN's cross network (Wang et al. 2017): x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l, with its own weight vector
    w_l and bias b_l in every layer (`weights`, `biases`: [L, d]; PaddleRec shared one across layers).

    forward(x0 [B,d]) -> [B,d]. `l2()` is sum ||w_l||^2, the paper's regulariser on the cross weights.
    """

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.weights = normal_parameter(self, [num_layers, input_dim], 1.0 / math.sqrt(input_dim))
        self.biases = constant_parameter(self, [num_layers, input_dim], 0.0)

    def forward(self, x0: paddle.Tensor) -> paddle.Tensor:
        x = x0
        for layer in range(self.num_layers):
            x = x0 * paddle.sum(x * self.weights[layer], axis=1, keepdim=True) + self.biases[layer] + x
        return x

    def l2(self) -> paddle.Tensor:
        return paddle.sum(self.weights * self.weights)


class CrossNetV2(nn.Layer):
    """DCN-V2's cross network (Wang et al. 2021): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l with a full d x d matrix W_l
    per layer (`layers.<l>`, nn.Linear). forward(x0 [B,d]) -> [B,d]."""

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.LayerList([
            nn.Linear(input_dim, input_dim, weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.Normal(std=1.0 / math.sqrt(input_dim))))
            for _ in range(num_layers)])

    def forward(self, x0: paddle.Tensor) -> paddle.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class CompressedInteraction(nn.Layer):
    """xDeepFM's CIN (Lian et al. 2018): X^k_{h,*} = sum_{i,j} W^k_{h,i,j} (X^{k-1}_{i,*} * X^0_{j,*}); each layer's
    feature maps are sum-pooled over D and the pooled vectors of all layers feed one output unit. Identity activation,
    no split-half (as in FuxiCTR, whose CIN produced the BARS numbers). `layers.<k>` is a 1x1 convolution written as
    nn.Linear(H_{k-1} * F, H_k).

    forward(embeddings [B,F,D]) -> [B,1].
    """

    def __init__(self, num_fields: int, layer_sizes: list[int]):
        super().__init__()
        inputs = [num_fields, *layer_sizes[:-1]]
        self.layers = nn.LayerList([nn.Linear(h_in * num_fields, h_out) for h_in, h_out in zip(inputs, layer_sizes)])
        self.output = nn.Linear(sum(layer_sizes), 1)

    def forward(self, embeddings: paddle.Tensor) -> paddle.Tensor:
        x0 = paddle.transpose(embeddings, [0, 2, 1])  # [B,D,F]: feature maps along the last axis
        num_fields, x, pooled = x0.shape[2], x0, []
        for layer in self.layers:
            outer = paddle.matmul(paddle.unsqueeze(x, 3), paddle.unsqueeze(x0, 2))  # [B,D,H,F]; 2x faster than *
            x = layer(paddle.reshape(outer, [0, 0, x.shape[2] * num_fields]))  # [B,D,H_k]
            pooled.append(paddle.sum(x, axis=1))
        return self.output(paddle.concat(pooled, axis=1))


class EmbeddingGate(nn.Layer):
    """GateNet's feature-embedding gate (Huang et al. 2020), field-private: e_i * sigmoid(e_i W_i) with
    W_i [D, D] (bit-wise: one gate per element) or [D, 1] (vector-wise: one gate per field); `weight` is [F, D, K].

    forward(embeddings [B,F,D]) -> gated embeddings [B,F,D].
    """

    def __init__(self, num_fields: int, dim: int, bit_wise: bool = True):
        super().__init__()
        self.weight = normal_parameter(self, [num_fields, dim, dim if bit_wise else 1], 1.0 / math.sqrt(dim))

    def forward(self, embeddings: paddle.Tensor) -> paddle.Tensor:
        per_field = paddle.transpose(embeddings, [1, 0, 2])  # [F,B,D]
        gates = paddle.transpose(nn.functional.sigmoid(paddle.bmm(per_field, self.weight)), [1, 0, 2])  # [B,F,K]
        return embeddings * gates


class HiddenGate(nn.Layer):
    """GateNet's hidden gate: h * sigmoid(h W_g) with W_g [H, H] (no bias). forward(h [B,H]) -> [B,H]."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias_attr=False, weight_attr=paddle.ParamAttr(
            initializer=nn.initializer.Normal(std=1.0 / math.sqrt(dim))))

    def forward(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return hidden * nn.functional.sigmoid(self.linear(hidden))


class MLP(nn.Layer):
    """Linear layers with ReLU between them: input_dim -> hidden_sizes... -> output_dim (no final activation; with
    output_dim=None the last hidden layer's ReLU output is returned). Sublayers are named `linear_<i>` / `act_<i>` as
    in PaddleRec's DNN; optional per-hidden-layer `gate_<i>` (GateNet's HiddenGate) and `dropout_<i>`."""

    def __init__(self, input_dim: int, hidden_sizes: list[int], output_dim: int | None = 1, *,
                 dropout: float = 0.0, hidden_gates: bool = False):
        super().__init__()
        sizes = [input_dim, *hidden_sizes] + ([output_dim] if output_dim else [])
        self._layers = []
        for i in range(len(sizes) - 1):
            linear = nn.Linear(sizes[i], sizes[i + 1], weight_attr=paddle.ParamAttr(
                initializer=nn.initializer.Normal(std=1.0 / math.sqrt(sizes[i]))))
            self._add(f"linear_{i}", linear)
            is_last = i == len(sizes) - 2
            if is_last and output_dim:
                continue
            self._add(f"act_{i}", nn.ReLU())
            if hidden_gates:
                self._add(f"gate_{i}", HiddenGate(sizes[i + 1]))
            if dropout > 0:
                self._add(f"dropout_{i}", nn.Dropout(dropout))
        self.output_dim = sizes[-1]

    def _add(self, name: str, layer: nn.Layer) -> None:
        self.add_sublayer(name, layer)
        self._layers.append(layer)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for layer in self._layers:
            x = layer(x)
        return x
