"""Named building blocks of the model zoo. A model is a short composition of these.

Shapes: B = batch, F = number of fields, D = embedding dim, P = F*(F-1)/2 field pairs. The fields come from the
feature schema (ctrkit/schema.py): its single-valued and multi-valued categorical fields (n_fields of them), plus its
numeric fields (n_dense) when the numeric values are embedded. For Criteo F = 26 + 13 = 39.
Initialisers follow PaddleRec's (truncated normal 0.1/sqrt(D) for embeddings, normal 1/sqrt(fan_in) for linears),
except that dense-field weights start like embeddings (see `dense_embedding_parameter`) and first-order
(logistic-regression) weights start at zero (see `LinearTerm`). Everything here exports with `paddle.jit.save`
(no Python branches on tensor values).

Inputs (the model contract, two tensors): `dense` float32 [B, n_dense] and `ids` int64 [B, sparse_width], the
single-valued ids then each multi-valued field's `max_len` ids. One table lookup embeds every id ([B, W, K]);
`pool_fields` turns that into one row per field ([B, n_fields, K]): single-valued columns as they are, each
multi-valued field's ids summed or averaged over its non-zero ids (id 0 = padding: a zero row, never trained). So
every model sees [B, n_fields, D] whatever the schema; for Criteo (no multi-valued field) pooling is the identity.

Two ways of feeding the numeric values, chosen per paper:
- embedded like any other field (`FieldEmbedding`: value times a learned D-vector), for the FM family, where a field
  must have a vector to interact with the others;
- appended raw to the flattened field embeddings (`flatten_with_dense`), as the DNN, Wide & Deep and DCN papers do.
A schema without numeric fields gives dense [B, 0]: the blocks then create no dense parameters and keep the empty
input in the graph through `dense_anchor` (an exported program must use every input).
"""
from __future__ import annotations

import math

import numpy as np
import paddle
from paddle import nn

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS
from ctrkit.schema import FeatureSchema, criteo_schema

NUM_FIELDS = NUM_SLOTS + NUM_DENSE  # Criteo's field count when dense values are embedded


def _embedding_initializer(dim: int) -> nn.initializer.Initializer:
    return nn.initializer.TruncatedNormal(mean=0.0, std=0.1 / math.sqrt(dim))


def sparse_embedding(num_embeddings: int, dim: int, initializer: nn.initializer.Initializer | None = None
                     ) -> nn.Embedding:
    """An id -> vector table with sparse gradients (lazy Adam updates only the rows a batch touched).
    Id 0 means "missing" (or padding of a multi-valued field) and maps to a zero vector that is never trained."""
    return nn.Embedding(num_embeddings, dim, padding_idx=0, sparse=True,
                        weight_attr=paddle.ParamAttr(initializer=initializer or _embedding_initializer(dim)))


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

def _schema(schema: FeatureSchema | None) -> FeatureSchema:
    """The blocks' schema: Criteo when none is given."""
    return schema if schema is not None else criteo_schema()


def pool_fields(rows: paddle.Tensor, ids: paddle.Tensor, schema: FeatureSchema) -> paddle.Tensor:
    """Looked-up rows of every id column [B, W, K] -> one row per field [B, n_fields, K]: single-valued columns as
    they are; each multi-valued field's max_len rows summed (`sum`) or summed and divided by its number of non-zero
    ids, at least 1 (`mean`). Padding ids (0) look up zero rows, so they add nothing."""
    if not schema.multi_valued:
        return rows
    parts = [rows[:, :schema.n_single]] if schema.n_single else []
    for f in schema.field_layout()[schema.n_single:]:
        pooled = paddle.sum(rows[:, f.start:f.start + f.width], axis=1, keepdim=True)  # [B,1,K]
        if f.pooling == "mean":
            present = paddle.cast(paddle.not_equal(ids[:, f.start:f.start + f.width],
                                                   paddle.zeros([1], dtype=ids.dtype)), "float32")
            count = paddle.clip(paddle.sum(present, axis=1, keepdim=True), min=1.0)  # [B,1]
            pooled = pooled / paddle.unsqueeze(count, 2)
        parts.append(pooled)
    return paddle.concat(parts, axis=1) if len(parts) > 1 else parts[0]


def dense_anchor(dense: paddle.Tensor) -> paddle.Tensor:
    """sum of the dense values -> [B,1]: exactly 0 for a [B,0] dense input, which this keeps in the exported
    program (paddle.jit.save refuses an input that no output depends on)."""
    return paddle.sum(dense, axis=1, keepdim=True)


def first_order(dense: paddle.Tensor, ids: paddle.Tensor, id_weights: nn.Embedding,
                dense_weights: paddle.Tensor | None, schema: FeatureSchema) -> paddle.Tensor:
    """sum of one weight per field (mean-pooled fields: the mean of their ids' weights) plus
    dense [B,n_dense] . dense_weights [n_dense] -> [B,1] (no bias)."""
    weights = id_weights(ids)  # [B,W,1]
    if any(f.pooling == "mean" for f in schema.multi_valued):
        weights = pool_fields(weights, ids, schema)
    ids_term = paddle.sum(weights, axis=1)
    if dense_weights is None:
        return ids_term + dense_anchor(dense)
    return ids_term + paddle.sum(dense * dense_weights, axis=1, keepdim=True)


def embed_fields(dense: paddle.Tensor, ids: paddle.Tensor, table: nn.Embedding,
                 dense_vectors: paddle.Tensor | None, schema: FeatureSchema) -> paddle.Tensor:
    """Ids [B,W] -> pooled field rows [B,n_fields,K]; dense values [B,n_dense] -> value * dense_vectors[0, j];
    -> [B, n_fields + n_dense, K] (categorical fields first). Without numeric fields, only the pooled rows."""
    fields = pool_fields(table(ids), ids, schema)
    if dense_vectors is None:
        return fields
    return paddle.concat([fields, paddle.unsqueeze(dense, axis=2) * dense_vectors], axis=1)


def flatten_with_dense(embeddings: paddle.Tensor, dense: paddle.Tensor) -> paddle.Tensor:
    """Field embeddings [B,F,D] and raw dense values [B,n_dense] -> one MLP / cross-network input
    [B, F*D + n_dense] (n_dense may be 0)."""
    return paddle.concat([paddle.flatten(embeddings, start_axis=1), dense], axis=1)


def embedded_field_count(schema: FeatureSchema) -> int:
    """Fields of the FM family (numeric values embedded): n_fields + n_dense."""
    return schema.n_fields + schema.n_dense


def _first_order_initializer() -> nn.initializer.Initializer:
    return nn.initializer.Constant(0.0)


class LinearTerm(nn.Layer):
    """Logistic regression's logit: bias + one weight per field id + one weight per dense value.
    The weights start at zero (a linear model has no symmetry to break; random starting weights only add noise
    that the optimizer must first remove: logistic regression's AUC after one epoch was 0.49 with them).

    forward(dense [B,n_dense], ids [B,W]) -> [B,1].
    """

    def __init__(self, sparse_feature_number: int, schema: FeatureSchema | None = None):
        super().__init__()
        self.schema = schema = _schema(schema)
        self.embedding_one = sparse_embedding(sparse_feature_number, 1, _first_order_initializer())
        self.dense_w_one = self.create_parameter(
            shape=[schema.n_dense], dtype="float32", default_initializer=_first_order_initializer()) \
            if schema.n_dense else None
        self.bias = constant_parameter(self, [1], 0.0)

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        return self.bias + first_order(dense, ids, self.embedding_one, self.dense_w_one, self.schema)


class FieldEmbedding(nn.Layer):
    """A D-vector per field id (multi-valued fields pooled) and per dense field (times the dense value).
    forward(dense, ids) -> [B, n_fields + n_dense, D]."""

    def __init__(self, sparse_feature_number: int, dim: int, schema: FeatureSchema | None = None):
        super().__init__()
        self.schema = schema = _schema(schema)
        self.embedding = sparse_embedding(sparse_feature_number, dim)
        self.dense_w = dense_embedding_parameter(self, [1, schema.n_dense, dim], dim) if schema.n_dense else None

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        return embed_fields(dense, ids, self.embedding, self.dense_w, self.schema)


class FactorizationMachine(nn.Layer):
    """First-order weights and D-dim embeddings of the categorical fields and the dense values
    (PaddleRec's DeepFM `FM` layer; parameter names kept so its checkpoints load for the Criteo schema).

    forward(dense [B,n_dense], ids [B,W]) -> (first_order [B,1], second_order [B,1], embeddings [B,F,D]).
    """

    def __init__(self, sparse_feature_number: int, sparse_feature_dim: int, schema: FeatureSchema | None = None):
        super().__init__()
        self.schema = schema = _schema(schema)
        self.embedding_one = sparse_embedding(sparse_feature_number, 1)
        self.embedding = sparse_embedding(sparse_feature_number, sparse_feature_dim)
        n_dense = schema.n_dense
        self.dense_w_one = dense_embedding_parameter(self, [n_dense], 1) if n_dense else None
        self.dense_w = dense_embedding_parameter(self, [1, n_dense, sparse_feature_dim], sparse_feature_dim) \
            if n_dense else None

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor):
        embeddings = embed_fields(dense, ids, self.embedding, self.dense_w, self.schema)
        linear = first_order(dense, ids, self.embedding_one, self.dense_w_one, self.schema)
        return linear, fm_second_order(embeddings), embeddings


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
    if num_fields < 2:
        raise ValueError(f"a field-pair block needs at least 2 fields, the schema gives {num_fields}")
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
    interacts through sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j. Ids get their F vectors from one sparse table
    [N, F*D] (multi-valued fields pooled); dense field j gets value * dense_w[0, j] ([1,n_dense,F*D]).
    F = n_fields + n_dense of the schema.

    forward(dense [B,n_dense], ids [B,W]) -> [B,1].
    """

    def __init__(self, sparse_feature_number: int, dim: int, schema: FeatureSchema | None = None):
        super().__init__()
        self.schema = schema = _schema(schema)
        self.num_fields, self.dim = embedded_field_count(schema), dim
        self.embedding = sparse_embedding(sparse_feature_number, self.num_fields * dim)
        self.dense_w = dense_embedding_parameter(self, [1, schema.n_dense, self.num_fields * dim], dim) \
            if schema.n_dense else None

    def forward(self, dense: paddle.Tensor, ids: paddle.Tensor) -> paddle.Tensor:
        num_fields = self.num_fields
        vectors = embed_fields(dense, ids, self.embedding, self.dense_w, self.schema)
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
