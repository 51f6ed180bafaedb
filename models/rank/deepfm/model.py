"""DeepFM (Guo et al. 2017): a factorization machine and an MLP share one set of field embeddings.

prediction = sigmoid(first_order + fm_second_order + MLP(flatten(embeddings)) + bias).
The fields are the schema's categorical fields (multi-valued ones pooled) and its numeric fields.
Parameter names match PaddleRec's DeepFM (`fm.*`, `dnn.linear_<i>.*`, `bias`), so its `rec.pdparams` loads.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, FactorizationMachine, constant_parameter, embedded_field_count


@register("deepfm")
class DeepFM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400]}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.fm = FactorizationMachine(n, d, schema)
        self.dnn = MLP(embedded_field_count(schema) * d, self.hp["fc_sizes"], 1)
        # PaddleRec's DeepFM declares this bias but never uses it, so it is 0.0 in its checkpoints: adding it
        # leaves their predictions unchanged and makes it a trained parameter like every other.
        self.bias = constant_parameter(self, [1], 0.0)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        first_order, second_order, embeddings = self.fm(dense_input, sparse_inputs)
        y_dnn = self.dnn(paddle.flatten(embeddings, start_axis=1))
        return F.sigmoid(first_order + second_order + y_dnn + self.bias)
