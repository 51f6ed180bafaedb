"""DCN-V2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network"): x0 = [slot embeddings, raw dense values];
cross layers with a full d x d matrix each (no low-rank mixture here).

structure "parallel": one linear layer over [cross(x0), MLP(x0)]; "stacked": MLP(cross(x0)) -> logit.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, CrossNetV2, flatten_with_dense, pool_fields, sparse_embedding

STRUCTURES = ("parallel", "stacked")


@register("dcn_v2")
class DCNV2(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0, "cross_num": 3, "structure": "parallel"}

    @classmethod
    def check_hyper_parameters(cls, hp: dict, schema: FeatureSchema | None = None) -> None:
        super().check_hyper_parameters(hp, schema)
        if hp.get("cross_num", 1) < 1:
            raise ValueError("hyper_parameters.cross_num must be >= 1")
        if hp.get("structure", "parallel") not in STRUCTURES:
            raise ValueError(f"hyper_parameters.structure must be one of {STRUCTURES}, got {hp['structure']!r}")

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        input_dim = schema.n_fields * d + schema.n_dense
        self.stacked = self.hp["structure"] == "stacked"
        self.embedding = sparse_embedding(n, d)
        self.cross = CrossNetV2(input_dim, self.hp["cross_num"])
        self.dnn = MLP(input_dim, self.hp["fc_sizes"], None, dropout=self.hp["dropout"])
        self.output = nn.Linear(self.dnn.output_dim + (0 if self.stacked else input_dim), 1)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        x0 = flatten_with_dense(pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema), dense_input)
        crossed = self.cross(x0)
        top = self.dnn(crossed) if self.stacked else paddle.concat([crossed, self.dnn(x0)], axis=1)
        return F.sigmoid(self.output(top))
