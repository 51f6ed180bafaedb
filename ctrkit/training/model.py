"""The one place the training code builds the configured model (the model interface and registry: ctrkit.zoo;
models of existing checkpoints, with their recorded hyper-parameters: `ctrkit.zoo.build_model_for_checkpoint`)."""
from __future__ import annotations

import paddle

from ctrkit.config import Config
from ctrkit.zoo import build_model


def build_configured_model(config: Config) -> paddle.nn.Layer:
    return build_model(config.model_name, config.hyper_parameters, config.schema())  # field counts from the schema
