"""xDeepFM (Lian et al. 2018): sigmoid(linear + CIN(embeddings) + MLP(flattened embeddings)).

The 26 slots and the 13 dense values (value times a field vector) are the CIN's fields.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, CompressedInteraction, FieldEmbedding, LinearTerm


@register("xdeepfm")
class XDeepFM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"cin_sizes": [16, 16], "fc_sizes": [400, 400, 400], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict):
        super().__init__(hyper_parameters)
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        num_fields = NUM_SLOTS + NUM_DENSE
        self.linear = LinearTerm(n)
        self.embedding = FieldEmbedding(n, d)
        self.cin = CompressedInteraction(num_fields, self.hp["cin_sizes"])
        self.dnn = MLP(num_fields * d, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = self.embedding(dense_input, sparse_inputs)
        y_dnn = self.dnn(paddle.flatten(embeddings, start_axis=1))
        return F.sigmoid(self.linear(dense_input, sparse_inputs) + self.cin(embeddings) + y_dnn)
