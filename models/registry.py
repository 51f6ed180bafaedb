"""Models by name. A model lives in `models/rank/<name>/` and registers itself with `@register("<name>")`;
`get_model_class(name)` imports that package on first use, so there is no central list to keep in sync."""
from __future__ import annotations

import importlib
import os

_REGISTRY: dict[str, type] = {}
_RANK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank")


def register(name: str):
    """Class decorator: `@register("deepfm") class DeepFM(CTRModel): ...`."""
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def available_models() -> list[str]:
    """Names of all models in the zoo (folders of models/rank with an __init__.py)."""
    return sorted(d for d in os.listdir(_RANK_DIR)
                  if os.path.isfile(os.path.join(_RANK_DIR, d, "__init__.py")))


def get_model_class(name: str) -> type:
    """The model class registered as `name`; KeyError with the list of models when there is none."""
    if name not in _REGISTRY and name in available_models():
        importlib.import_module(f"models.rank.{name}")
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _REGISTRY[name]


def build_model(name: str, hyper_parameters: dict):
    """Instantiate model `name` from (validated) hyper-parameters."""
    return get_model_class(name)(hyper_parameters)


def default_config_path(name: str) -> str:
    """models/rank/<name>/config.yaml."""
    return os.path.join(_RANK_DIR, name, "config.yaml")
