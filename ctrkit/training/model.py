"""The one place the training code builds the configured model (the model interface and registry: ctrkit.zoo)."""
from __future__ import annotations

import paddle

from ctrkit.config import Config
from ctrkit.zoo import build_model


def build_configured_model(config: Config) -> paddle.nn.Layer:
    return build_model(config.model_name, config.hyper_parameters)
