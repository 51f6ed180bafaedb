"""The optimizer named by `hyper_parameters.optimizer` (PaddleRec's `class` / `learning_rate`)."""
from __future__ import annotations

import paddle

from ctrkit.config import ConfigError


def build_optimizer(model: paddle.nn.Layer, optimizer_config: dict) -> paddle.optimizer.Optimizer:
    name, lr = optimizer_config["class"], optimizer_config["learning_rate"]
    params = model.parameters()
    if name == "Adam":
        return paddle.optimizer.Adam(learning_rate=lr, parameters=params, lazy_mode=optimizer_config["lazy_mode"])
    if name == "SGD":
        return paddle.optimizer.SGD(learning_rate=lr, parameters=params)
    if name == "Adagrad":
        return paddle.optimizer.Adagrad(learning_rate=lr, parameters=params)
    raise ConfigError(f"hyper_parameters.optimizer.class: unsupported optimizer {name!r}")
