"""Deep & Cross Network (Wang et al. 2017): x0 = [slot embeddings, raw dense values]; a cross network and an MLP
run side by side on x0 and one linear layer over [cross output, last hidden layer] gives the logit.

Every cross layer has its own weight vector and bias (PaddleRec shared one), and `l2_reg_cross` * sum ||w_l||^2 is
returned by `regularization_loss()`, which the trainer adds to the loss (PaddleRec computed it and dropped it).
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, CrossNet, flatten_with_dense, pool_fields, sparse_embedding


@register("dcn")
class DCN(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0, "cross_num": 3, "l2_reg_cross": 0.0}

    @classmethod
    def check_hyper_parameters(cls, hp: dict, schema: FeatureSchema | None = None) -> None:
        super().check_hyper_parameters(hp, schema)
        if hp.get("cross_num", 1) < 1:
            raise ValueError("hyper_parameters.cross_num must be >= 1")
        if hp.get("l2_reg_cross", 0.0) < 0:
            raise ValueError("hyper_parameters.l2_reg_cross must be >= 0")

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        input_dim = schema.n_fields * d + schema.n_dense
        self.embedding = sparse_embedding(n, d)
        self.cross = CrossNet(input_dim, self.hp["cross_num"])
        self.dnn = MLP(input_dim, self.hp["fc_sizes"], None, dropout=self.hp["dropout"])
        self.output = nn.Linear(input_dim + self.dnn.output_dim, 1)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        x0 = flatten_with_dense(pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema), dense_input)
        return F.sigmoid(self.output(paddle.concat([self.cross(x0), self.dnn(x0)], axis=1)))

    def regularization_loss(self) -> paddle.Tensor:
        return self.hp["l2_reg_cross"] * self.cross.l2()
