"""The zoo's side of the registry: where its configs live. The registry itself is `ctrkit.zoo` (re-exported here
for older imports); importing this module (through `models`) registers the zoo's models there."""
from __future__ import annotations

import os

from ctrkit.zoo import available_models, build_model, get_model_class, register

__all__ = ["available_models", "build_model", "default_config_path", "get_model_class", "register"]

_RANK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank")


def default_config_path(name: str) -> str:
    """models/rank/<name>/config.yaml."""
    return os.path.join(_RANK_DIR, name, "config.yaml")
