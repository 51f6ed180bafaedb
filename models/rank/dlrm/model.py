"""DLRM (Naumov et al. 2019): a bottom MLP turns the numeric values into one D-vector; it and the field embeddings
(multi-valued fields pooled) interact through all pairwise dot products; a top MLP over [dense vector, dot products]
gives ONE logit (PaddleRec's version emitted two). Without numeric fields: no bottom MLP, the fields' dot products.

bottom_sizes: hidden layers of the bottom MLP (its output layer has D = sparse_feature_dim units, ReLU as in the
reference implementation); top_sizes: hidden layers of the top MLP before its single output unit;
dropout: after each hidden layer of the top MLP (as BARS's top_mlp_dropout).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, dense_anchor, dot_interaction, pool_fields, sparse_embedding


@register("dlrm")
class DLRM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"bottom_sizes": [512, 256, 64], "top_sizes": [512, 256], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        has_dense = schema.n_dense > 0
        num_vectors = schema.n_fields + (1 if has_dense else 0)
        if num_vectors < 2:
            raise ValueError(f"dlrm's dot interaction needs at least 2 fields, the schema gives {num_vectors}")
        self.embedding = sparse_embedding(n, d)
        self.bottom = MLP(schema.n_dense, [*self.hp["bottom_sizes"], d], None) if has_dense else None
        self.top = MLP((d if has_dense else 0) + num_vectors * (num_vectors - 1) // 2, self.hp["top_sizes"], 1,
                       dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        fields = pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema)
        if self.bottom is None:  # no numeric fields: the fields' dot products alone
            return F.sigmoid(self.top(dot_interaction(fields)) + dense_anchor(dense_input))
        dense_vector = self.bottom(dense_input)
        vectors = paddle.concat([paddle.unsqueeze(dense_vector, 1), fields], axis=1)
        return F.sigmoid(self.top(paddle.concat([dense_vector, dot_interaction(vectors)], axis=1)))
