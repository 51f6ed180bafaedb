"""DNN: slot embeddings, flattened and joined by the raw dense values, through an MLP to one logit
(PaddleRec's ctr-dnn / the "DNN" baseline of BARS; PaddleRec's version emitted two logits, this one emits one).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, flatten_with_dense, pool_fields, sparse_embedding


@register("dnn")
class DNN(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.embedding = sparse_embedding(n, d)
        self.dnn = MLP(schema.n_fields * d + schema.n_dense, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        fields = pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema)
        return F.sigmoid(self.dnn(flatten_with_dense(fields, dense_input)))
