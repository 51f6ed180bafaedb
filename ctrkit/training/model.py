"""The one place the training code builds the configured model (the model interface and registry: ctrkit.zoo), and
`config_for_checkpoint`: the model and hyper-parameters a checkpoint was trained with, so that evaluating or
exporting it needs no repeat of the training run's `-o` overrides."""
from __future__ import annotations

import dataclasses
import logging

import paddle

from ctrkit import checkpoint
from ctrkit.config import Config, ConfigError
from ctrkit.zoo import build_model, get_model_class

log = logging.getLogger("ctrkit.training")


def build_configured_model(config: Config) -> paddle.nn.Layer:
    return build_model(config.model_name, config.hyper_parameters, config.schema())  # field counts from the schema


def config_for_checkpoint(config: Config, checkpoint_dir: str) -> Config:
    """`config` with the model, hyper-parameters and dataset block recorded in the checkpoint's checkpoint.json.
    A value given explicitly with -o that differs from the record is a ConfigError naming both; a checkpoint
    without a record (e.g. PaddleRec's) leaves `config` as it is (its parameters are then checked by shape)."""
    info = checkpoint.read_info(checkpoint_dir)
    recorded = info.get("config") if info else None
    if not isinstance(recorded, dict):
        return config
    model = (recorded.get("runner") or {}).get("model") or config.model_name
    hp = dict(recorded.get("hyper_parameters") or {})
    hp.pop("optimizer", None)
    wanted = {"runner.model": model, **{f"hyper_parameters.{k}": v for k, v in hp.items()}}
    if "dataset" in recorded or config.dataset:
        wanted["dataset"] = recorded.get("dataset") or None
    current = {"runner.model": config.model_name, "dataset": config.dataset or None,
               **{f"hyper_parameters.{k}": v for k, v in config.hyper_parameters.items()}}
    differ = {k: v for k, v in wanted.items() if k in current and current[k] != v}
    explicit = [k for k in differ if k in config.overridden or (k == "dataset" and any(
        o.startswith("dataset.") for o in config.overridden))]
    if explicit:
        raise ConfigError(f"{checkpoint_dir} was trained with " + "; ".join(
            f"{k}={differ[k]!r}, but -o gives {current[k]!r}" for k in explicit)
            + " (drop the override: the checkpoint's record is used)")
    if not differ:
        return config
    try:
        model_cls = get_model_class(model)
    except KeyError as exc:
        raise ConfigError(f"{checkpoint_dir}: recorded runner.model: {exc.args[0]}") from None
    defaults = model_cls.default_hyper_parameters()
    new_hp = {**defaults, **{k: v for k, v in hp.items() if k in defaults},
              "optimizer": config.hyper_parameters["optimizer"]}
    log.info("using the model and hyper-parameters recorded in %s/checkpoint.json: %s", checkpoint_dir,
             ", ".join(f"{k}={v!r} (config: {current[k]!r})" for k, v in differ.items()))
    runner = {**config.runner, "model": model}
    return dataclasses.replace(config, runner=runner, hyper_parameters=new_hp,
                               dataset=wanted.get("dataset", config.dataset))
