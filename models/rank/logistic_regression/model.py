"""Logistic regression: sigmoid(bias + one weight per categorical field (a mean-pooled multi-valued
field: the mean weight of its ids) + one weight per numeric value). Weights start at zero.

The baseline every other model must beat; it has no interactions at all (`sparse_feature_dim` is unused).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import LinearTerm


@register("logistic_regression")
class LogisticRegression(CTRModel):
    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        self.linear = LinearTerm(self.hp["sparse_feature_number"], schema)

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        return F.sigmoid(self.linear(dense_input, sparse_inputs))
