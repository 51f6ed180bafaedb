"""The model zoo: shared building blocks (`models.layers`) and one package per model under
`models/rank/<name>/` (code + config.yaml + config_bigdata.yaml).

The model interface and the registry live in the library (`ctrkit.zoo`); importing this package makes its models
known there (`import models` once, as the tools do). Dependencies point one way: models -> ctrkit.
"""
from ctrkit.zoo import add_model_package

add_model_package(__name__ + ".rank")
