"""Wide & Deep (Cheng et al. 2016): sigmoid(wide + deep), trained jointly.

wide: a linear model over the slot ids and dense values (the paper also feeds hand-made cross-product features to
it; there are none here). deep: slot embeddings flattened, raw dense values appended, through an MLP.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, LinearTerm, flatten_with_dense, pool_fields, sparse_embedding


@register("wide_deep")
class WideDeep(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.wide = LinearTerm(n, schema)
        self.embedding = sparse_embedding(n, d)
        self.deep = MLP(schema.n_fields * d + schema.n_dense, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        deep = self.deep(flatten_with_dense(pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema),
                                              dense_input))
        return F.sigmoid(self.wide(dense_input, sparse_inputs) + deep)
