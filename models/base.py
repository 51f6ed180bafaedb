"""What every CTR model in the zoo shares: the same two inputs and one output.

Inputs: `dense_input` float32 [B, 13] and `sparse_inputs` int64 [B, 26] (slot ids); output: the click
probability float32 [B, 1] (one logit through a sigmoid). Export builds its InputSpec from `input_specs()`,
so export, serving and the benchmark treat every model alike.
"""
from __future__ import annotations

import paddle
from paddle import nn

from ctrkit.data.spec import NUM_DENSE, NUM_SLOTS

COMMON_HYPER_PARAMETERS = {
    "sparse_feature_number": 1000001,
    "sparse_feature_dim": 9,
    "dense_input_dim": NUM_DENSE,
}


class CTRModel(nn.Layer):
    """Base class. Subclasses set `EXTRA_HYPER_PARAMETERS` (name -> default) and implement `forward`."""

    model_name = "?"  # set by models.registry.register
    EXTRA_HYPER_PARAMETERS: dict = {}

    def __init__(self, hyper_parameters: dict):
        super().__init__()
        self.check_hyper_parameters(hyper_parameters)
        defaults = self.default_hyper_parameters()
        self.hp = {k: hyper_parameters.get(k, v) for k, v in defaults.items()}

    @classmethod
    def default_hyper_parameters(cls) -> dict:
        return {**COMMON_HYPER_PARAMETERS, **cls.EXTRA_HYPER_PARAMETERS}

    @classmethod
    def check_hyper_parameters(cls, hp: dict) -> None:
        """Raise ValueError for values no model can use; subclasses add their own checks."""
        if hp.get("dense_input_dim", NUM_DENSE) != NUM_DENSE:
            raise ValueError(f"hyper_parameters.dense_input_dim must be {NUM_DENSE} (Criteo has 13 dense features)")
        if hp.get("sparse_feature_number", 2) < 2:
            raise ValueError("hyper_parameters.sparse_feature_number must be >= 2")
        if hp.get("sparse_feature_dim", 1) < 1:
            raise ValueError("hyper_parameters.sparse_feature_dim must be >= 1")
        if not 0.0 <= hp.get("dropout", 0.0) < 1.0:
            raise ValueError(f"hyper_parameters.dropout must be in [0, 1), got {hp['dropout']!r}")
        for key, value in hp.items():
            if key.endswith("_sizes") and (not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise ValueError(f"hyper_parameters.{key} must be a list of positive ints, got {value!r}")

    @staticmethod
    def input_specs() -> list[paddle.static.InputSpec]:
        """The model's declared inputs, in `forward` order (export builds its InputSpec from these)."""
        return [
            paddle.static.InputSpec(shape=[None, NUM_DENSE], dtype="float32", name="dense_input"),
            paddle.static.InputSpec(shape=[None, NUM_SLOTS], dtype="int64", name="sparse_inputs"),
        ]

    def regularization_loss(self) -> paddle.Tensor | None:
        """Extra loss term the trainer adds (e.g. DCN's L2 on cross weights); None when the model has none."""
        return None

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError
