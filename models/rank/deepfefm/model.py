"""DeepFEFM (Pande 2020, "Field-Embedded Factorization Machines for Click-through rate prediction"):
sigmoid(linear + sum of FEFM pair interactions + MLP([flattened embeddings, FEFM pair interactions])).

FEFM: fields i < j interact through v_i^T W_ij v_j with a symmetric D x D matrix per field pair; all pair
matrices are one registered parameter (trained and saved; PaddleRec kept them in a dict, so they were neither).
The schema's categorical fields (multi-valued ones pooled) and numeric values (value times a field vector) are the
fields (39 for Criteo).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, FieldEmbedding, FieldEmbeddedInteraction, LinearTerm, embedded_field_count


@register("deepfefm")
class DeepFEFM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        num_fields = embedded_field_count(schema)
        self.linear = LinearTerm(n, schema)
        self.embedding = FieldEmbedding(n, d, schema)
        self.fefm = FieldEmbeddedInteraction(num_fields, d)
        self.dnn = MLP(num_fields * d + num_fields * (num_fields - 1) // 2, self.hp["fc_sizes"], 1,
                       dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = self.embedding(dense_input, sparse_inputs)
        pairs = self.fefm(embeddings)
        y_dnn = self.dnn(paddle.concat([paddle.flatten(embeddings, start_axis=1), pairs], axis=1))
        return F.sigmoid(self.linear(dense_input, sparse_inputs) + paddle.sum(pairs, axis=1, keepdim=True) + y_dnn)
