"""Field-aware factorization machine (Juan et al. 2016):
sigmoid(w0 + sum_i w_i x_i + sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j) over the schema's
fields: its categorical fields (multi-valued ones pooled) and its numeric values (39 for Criteo).

Memory: the id table holds F vectors of `sparse_feature_dim` per id ([sparse_feature_number, F * D]), so D is
kept small (2 here, 4 in config_bigdata.yaml).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import FieldAwareInteraction, LinearTerm


@register("ffm")
class FFM(CTRModel):
    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.linear = LinearTerm(n, schema)
        self.ffm = FieldAwareInteraction(n, d, schema)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        return F.sigmoid(self.linear(dense_input, sparse_inputs) + self.ffm(dense_input, sparse_inputs))
