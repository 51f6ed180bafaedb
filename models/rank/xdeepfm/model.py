"""xDeepFM (Lian et al. 2018): sigmoid(linear + CIN(embeddings) + MLP(flattened embeddings)).

The schema's categorical fields (multi-valued ones pooled) and numeric values (value times a field vector) are the
CIN's fields (39 for Criteo).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, CompressedInteraction, FieldEmbedding, LinearTerm, embedded_field_count


@register("xdeepfm")
class XDeepFM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"cin_sizes": [16, 16], "fc_sizes": [400, 400, 400], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        num_fields = embedded_field_count(schema)
        self.linear = LinearTerm(n, schema)
        self.embedding = FieldEmbedding(n, d, schema)
        self.cin = CompressedInteraction(num_fields, self.hp["cin_sizes"])
        self.dnn = MLP(num_fields * d, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = self.embedding(dense_input, sparse_inputs)
        y_dnn = self.dnn(paddle.flatten(embeddings, start_axis=1))
        return F.sigmoid(self.linear(dense_input, sparse_inputs) + self.cin(embeddings) + y_dnn)
