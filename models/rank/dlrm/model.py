"""DLRM (Naumov et al. 2019): a bottom MLP turns the 13 dense values into one D-vector; it and the 26 slot
embeddings interact through all pairwise dot products; a top MLP over [dense vector, dot products] gives ONE logit
(PaddleRec's version emitted two).

bottom_sizes: hidden layers of the bottom MLP (its output layer has D = sparse_feature_dim units, ReLU as in the
reference implementation); top_sizes: hidden layers of the top MLP before its single output unit;
dropout: after each hidden layer of the top MLP (as BARS's top_mlp_dropout).
"""
import paddle
import paddle.nn.functional as F

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, dot_interaction, sparse_embedding


@register("dlrm")
class DLRM(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"bottom_sizes": [512, 256, 64], "top_sizes": [512, 256], "dropout": 0.0}

    def __init__(self, hyper_parameters: dict):
        super().__init__(hyper_parameters)
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        num_vectors = NUM_SLOTS + 1
        self.embedding = sparse_embedding(n, d)
        self.bottom = MLP(NUM_DENSE, [*self.hp["bottom_sizes"], d], None)
        self.top = MLP(d + num_vectors * (num_vectors - 1) // 2, self.hp["top_sizes"], 1, dropout=self.hp["dropout"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        dense_vector = self.bottom(dense_input)
        vectors = paddle.concat([paddle.unsqueeze(dense_vector, 1), self.embedding(sparse_inputs)], axis=1)
        return F.sigmoid(self.top(paddle.concat([dense_vector, dot_interaction(vectors)], axis=1)))
