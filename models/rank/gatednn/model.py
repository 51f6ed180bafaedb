"""GateNet's gated DNN (Huang et al. 2020, "GateNet: Gating-Enhanced Deep Network for Click-Through Rate
Prediction"): slot embeddings pass a field-private embedding gate, then an MLP whose hidden layers each pass a
hidden gate; raw dense values join the flattened gated embeddings (as in PaddleRec's gatednn).

embedding_gate: "bit" (a D x D gate matrix per field), "vector" (a D x 1 one per field) or "none";
hidden_gate: gate every hidden layer. With both off this is exactly `dnn`.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.schema import FeatureSchema
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, EmbeddingGate, flatten_with_dense, pool_fields, sparse_embedding

EMBEDDING_GATES = ("bit", "vector", "none")


@register("gatednn")
class GateDNN(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0, "embedding_gate": "bit",
                              "hidden_gate": True}

    @classmethod
    def check_hyper_parameters(cls, hp: dict, schema: FeatureSchema | None = None) -> None:
        super().check_hyper_parameters(hp, schema)
        if hp.get("embedding_gate", "bit") not in EMBEDDING_GATES:
            raise ValueError(f"hyper_parameters.embedding_gate must be one of {EMBEDDING_GATES}, "
                             f"got {hp['embedding_gate']!r}")

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__(hyper_parameters, schema)
        schema = self.schema
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.embedding = sparse_embedding(n, d)
        gate = self.hp["embedding_gate"]
        self.embedding_gate = EmbeddingGate(schema.n_fields, d, bit_wise=gate == "bit") if gate != "none" else None
        self.dnn = MLP(schema.n_fields * d + schema.n_dense, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"],
                       hidden_gates=self.hp["hidden_gate"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = pool_fields(self.embedding(sparse_inputs), sparse_inputs, self.schema)
        if self.embedding_gate is not None:
            embeddings = self.embedding_gate(embeddings)
        return F.sigmoid(self.dnn(flatten_with_dense(embeddings, dense_input)))
