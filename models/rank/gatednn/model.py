"""GateNet's gated DNN (Huang et al. 2020, "GateNet: Gating-Enhanced Deep Network for Click-Through Rate
Prediction"): slot embeddings pass a field-private embedding gate, then an MLP whose hidden layers each pass a
hidden gate; raw dense values join the flattened gated embeddings (as in PaddleRec's gatednn).

embedding_gate: "bit" (a D x D gate matrix per field), "vector" (a D x 1 one per field) or "none";
hidden_gate: gate every hidden layer. With both off this is exactly `dnn`.
"""
import paddle
import paddle.nn.functional as F

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS
from ctrkit.zoo import CTRModel, register
from models.layers import MLP, EmbeddingGate, flatten_with_dense, sparse_embedding

EMBEDDING_GATES = ("bit", "vector", "none")


@register("gatednn")
class GateDNN(CTRModel):
    EXTRA_HYPER_PARAMETERS = {"fc_sizes": [400, 400, 400], "dropout": 0.0, "embedding_gate": "bit",
                              "hidden_gate": True}

    @classmethod
    def check_hyper_parameters(cls, hp: dict) -> None:
        super().check_hyper_parameters(hp)
        if hp.get("embedding_gate", "bit") not in EMBEDDING_GATES:
            raise ValueError(f"hyper_parameters.embedding_gate must be one of {EMBEDDING_GATES}, "
                             f"got {hp['embedding_gate']!r}")

    def __init__(self, hyper_parameters: dict):
        super().__init__(hyper_parameters)
        n, d = self.hp["sparse_feature_number"], self.hp["sparse_feature_dim"]
        self.embedding = sparse_embedding(n, d)
        gate = self.hp["embedding_gate"]
        self.embedding_gate = EmbeddingGate(NUM_SLOTS, d, bit_wise=gate == "bit") if gate != "none" else None
        self.dnn = MLP(NUM_SLOTS * d + NUM_DENSE, self.hp["fc_sizes"], 1, dropout=self.hp["dropout"],
                       hidden_gates=self.hp["hidden_gate"])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        embeddings = self.embedding(sparse_inputs)
        if self.embedding_gate is not None:
            embeddings = self.embedding_gate(embeddings)
        return F.sigmoid(self.dnn(flatten_with_dense(embeddings, dense_input)))
