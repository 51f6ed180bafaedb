"""Factorization machine (Rendle 2010): sigmoid(w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j).

The schema's categorical fields (multi-valued ones pooled) and its numeric values are the fields; a dense value
x_i scales its field vector v_i.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import FieldEmbedding, LinearTerm, fm_second_order


@register("fm")
class FM(CTRModel):
    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.linear = LinearTerm(n, schema)
        self.embedding = FieldEmbedding(n, d, schema)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = self.embedding(dense_input, sparse_inputs)
        return F.sigmoid(self.linear(dense_input, sparse_inputs) + fm_second_order(embeddings))
