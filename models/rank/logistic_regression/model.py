"""Logistic regression: sigmoid(bias + one weight per slot id + one weight per dense value).

The baseline every other model must beat; it has no interactions at all (`sparse_feature_dim` is unused).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.zoo import CTRModel, register
from models.layers import LinearTerm


@register("logistic_regression")
class LogisticRegression(CTRModel):
    def __init__(self, hyper_parameters: dict):
        super().__init__(hyper_parameters)
        self.linear = LinearTerm(self.hp["sparse_feature_number"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        return F.sigmoid(self.linear(dense_input, sparse_inputs))
