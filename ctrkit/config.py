"""Run configuration: PaddleRec-shaped YAML (`runner:` / `hyper_parameters:`) with a schema.

`load_config(path, overrides)` reads the YAML, applies `-o key=value` overrides (values parsed as YAML, so
ints, floats, bools and lists like `[512,256]` get their types), fills defaults and rejects unknown keys
and wrong types with a message naming the key. Relative paths written in the file resolve against the
file's directory (as in PaddleRec); relative paths given with `-o` resolve against the working directory.

The model: `runner.model` (a registry name), else the name of the config's folder when it is a registered model
(`models/rank/<name>/config.yaml`, as PaddleRec lays configs out), else a ConfigError; never a silent default.
Keys PaddleRec configs carry that mean nothing here (`train_reader_path`, `use_inference`, `optimizer.strategy`,
...) are accepted and listed in ONE warning (logger `ctrkit.config`), with the reason; `Config.ignored_keys`.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml

from ctrkit.data.spec import PADDLEREC_DENSE_DIFF, PADDLEREC_DENSE_MIN, FeatureSpec


log = logging.getLogger("ctrkit.config")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


# key -> (type, default). Types: str, int, float, bool, list.
RUNNER_SCHEMA: dict[str, tuple[type, Any]] = {
    "model": (str, ""),  # "": the config's folder name (models/rank/<name>/config.yaml)
    "train_data_dir": (str, ""),
    "train_batch_size": (int, 512),
    "epochs": (int, 1),
    "print_interval": (int, 100),
    "model_save_path": (str, "output/model"),
    "model_init_path": (str, ""),
    "test_data_dir": (str, ""),
    "infer_batch_size": (int, 4096),
    "infer_load_path": (str, ""),
    "infer_start_epoch": (int, 0),
    "infer_end_epoch": (int, 1),
    "infer_output": (str, ""),
    "resume": (bool, True),
    "use_gpu": (bool, False),
    "use_fleet": (bool, False),
    "seed": (int, 2024),
    "use_visual": (bool, False),
    "visual_log_path": (str, "output/visualdl_log"),
    "data_format": (str, "auto"),
    "skip_bad_lines": (bool, False),
    "shuffle_buffer": (int, 100000),
    "num_workers": (int, 1),
    "cpu_threads": (int, 0),  # CPU math threads; 0: this machine's cores shared among its workers
    "unique_id_lookups": (bool, True),  # sparse embeddings look up each distinct id of a batch once (CPU)
    "dense_min": (list, list(PADDLEREC_DENSE_MIN)),
    "dense_diff": (list, list(PADDLEREC_DENSE_DIFF)),
}
PATH_KEYS = ("train_data_dir", "model_save_path", "model_init_path", "test_data_dir", "infer_load_path",
             "infer_output", "visual_log_path")

# Keys PaddleRec configs carry that mean nothing here -> why (listed in one warning when present).
_READER = "readers are chosen by data format (runner.data_format / the dataset: block), not by a Python file"
_EXPORT = "inference models are written by tools/to_static.py"
_PS = "parameter-server training is not supported here; runner.use_fleet trains data-parallel"
PADDLEREC_IGNORED_RUNNER_KEYS = {
    "train_reader_path": _READER, "infer_reader_path": _READER, "reader_type": _READER,
    "use_auc": "AUC is always computed", "use_inference": _EXPORT, "save_inference_feed_varnames": _EXPORT,
    "save_inference_fetch_varnames": _EXPORT, "use_xpu": "only CPU and CUDA GPUs are supported",
    "use_npu": "only CPU and CUDA GPUs are supported", "xpu_list": "only CPU and CUDA GPUs are supported",
    "thread_num": "use runner.cpu_threads / runner.num_workers",
    "reader_thread_num": "use runner.num_workers", "sync_mode": _PS, "split_file_list": _PS,
    "reader_batch_size": _PS, "pipe_command": _READER, "geo_step": _PS, "use_ps_gpu": _PS,
}
PADDLEREC_IGNORED_HP_KEYS = {
    "distributed_embedding": _PS, "num_field": "field counts come from the feature schema",
    "act": "each model fixes its activations",
}
# Checked against the feature schema (ctrkit/schema.py), not used otherwise; never listed as ignored.
SCHEMA_CHECKED_HP_KEYS = {"sparse_inputs_slots"}
PADDLEREC_IGNORED_OPTIMIZER_KEYS = {"strategy": _PS}

OPTIMIZER_SCHEMA: dict[str, tuple[type, Any]] = {
    "class": (str, "Adam"),
    "learning_rate": (float, 0.001),
    "lazy_mode": (bool, True),   # lazy Adam on sparse embedding rows (PADDLE_NOTES: ~1.7x faster on CPU)
}
OPTIMIZERS = ("Adam", "SGD", "Adagrad")


@dataclass
class Config:
    """A validated configuration. `runner` and `hyper_parameters` are plain dicts."""

    path: str
    runner: dict
    hyper_parameters: dict
    dataset: dict | None = None  # the `dataset:` block (feature schema, see ctrkit/schema.py); None = Criteo
    ignored_keys: tuple[str, ...] = ()  # PaddleRec keys present in the config that mean nothing here
    overridden: tuple[str, ...] = ()    # dotted keys given with -o (e.g. "hyper_parameters.fc_sizes")

    def get(self, dotted: str) -> Any:
        """PaddleRec-style lookup: `config.get("runner.train_batch_size")`."""
        node: Any = {"runner": self.runner, "hyper_parameters": self.hyper_parameters}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(dotted)
            node = node[part]
        return node

    @property
    def model_name(self) -> str:
        return self.runner["model"]

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(
            sparse_feature_number=self.hyper_parameters["sparse_feature_number"],
            data_format=self.runner["data_format"],
            dense_min=tuple(self.runner["dense_min"]),
            dense_diff=tuple(self.runner["dense_diff"]),
        )

    def schema(self):
        """The run's `ctrkit.schema.FeatureSchema` (Criteo when the config has no `dataset:` block)."""
        from ctrkit.schema import FeatureSchema

        return FeatureSchema.from_config(self)

    def to_dict(self) -> dict:
        out = {"runner": copy.deepcopy(self.runner), "hyper_parameters": copy.deepcopy(self.hyper_parameters)}
        if self.dataset:
            out["dataset"] = copy.deepcopy(self.dataset)
        return out


def parse_override(text: str) -> tuple[str, Any]:
    """`hyper_parameters.fc_sizes=[512,256]` -> ("hyper_parameters.fc_sizes", [512, 256])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    if not (key.startswith("runner.") or key.startswith("hyper_parameters.") or key.startswith("dataset.")):
        raise ConfigError(f"override key {key!r} must start with 'runner.' or 'hyper_parameters.' (or 'dataset.')")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
    return key, value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def _coerce(key: str, expected: type, value: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` (no dot) as a string; PaddleRec configs write learning rates that way
            return float(value.strip())
        except ValueError:
            pass
    if expected is str and value is None:
        return ""
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"config key {key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _validate_section(section: dict, schema: dict, prefix: str, ignored) -> dict:
    unknown = set(section) - set(schema) - set(ignored)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}; "
                          f"known: {', '.join(sorted(schema))}")
    out = {}
    for key, (typ, default) in schema.items():
        out[key] = _coerce(prefix + key, typ, section[key]) if key in section else copy.deepcopy(default)
    return out


def _ignored_present(section: dict, ignored: dict, prefix: str) -> list[tuple[str, str]]:
    return [(prefix + key, ignored[key]) for key in sorted(section) if key in ignored]


def _model_name(path: str, runner: dict) -> str:
    """runner.model, else the config's folder name when it names a registered model, else a ConfigError."""
    from ctrkit.zoo import available_models

    if runner["model"]:
        return runner["model"]
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    known = available_models()
    if folder in known:
        log.info("runner.model is not set: using %r, the name of the config's folder", folder)
        return folder
    raise ConfigError(f"{path}: runner.model is not set and the config's folder name {folder!r} is not a model; "
                      f"set runner.model (-o runner.model=NAME) to one of: {', '.join(known)}")


def _check_ranges(runner: dict, optimizer: dict) -> None:
    """Values of the right type that no run can use."""
    for key in ("train_batch_size", "infer_batch_size", "epochs", "print_interval"):
        if runner[key] <= 0:
            raise ConfigError(f"runner.{key} must be positive, got {runner[key]}")
    for key, what in (("cpu_threads", " (0: automatic)"), ("num_workers", " (0: parse in the training process)"),
                      ("shuffle_buffer", " (0: no shuffling)"), ("infer_start_epoch", "")):
        if runner[key] < 0:
            raise ConfigError(f"runner.{key} must be >= 0{what}, got {runner[key]}")
    if not 0 <= runner["seed"] < 2**32:
        raise ConfigError(f"runner.seed must be in [0, 2**32), got {runner['seed']}")
    if runner["infer_end_epoch"] <= runner["infer_start_epoch"]:
        raise ConfigError(f"runner.infer_end_epoch must be > runner.infer_start_epoch (epochs [start, end) are "
                          f"evaluated), got {runner['infer_start_epoch']} and {runner['infer_end_epoch']}")
    for key in ("infer_output",):
        if runner[key] and os.path.isdir(runner[key]):
            raise ConfigError(f"runner.{key}={runner[key]} is a directory; give a file path")
    for key in ("model_save_path", "visual_log_path"):
        if runner[key] and os.path.exists(runner[key]) and not os.path.isdir(runner[key]):
            raise ConfigError(f"runner.{key}={runner[key]} exists and is not a directory")
    lr = optimizer["learning_rate"]
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"hyper_parameters.optimizer.learning_rate must be a finite number > 0, got {lr!r}")


def _resolve_paths(runner: dict, base_dir: str, keys: set[str]) -> None:
    for key in keys:
        value = runner.get(key)
        if value and not os.path.isabs(value):
            runner[key] = os.path.normpath(os.path.join(base_dir, value))


def load_config(path: str, overrides: list[str] | None = None) -> Config:
    """Read, override, validate. Raises ConfigError naming the offending key."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory (pass its config.yaml)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config with runner: / hyper_parameters: expected)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with 'runner' and 'hyper_parameters'")
    if {"workspace", "phase", "mode"} & set(raw) or isinstance(raw.get("runner"), list):
        raise ConfigError(f"{path}: a PaddleRec 1.x config (workspace / mode / phase, a list of runners); this "
                          f"toolkit reads PaddleRec 2.x configs: `runner:` and `hyper_parameters:` mappings "
                          f"(e.g. models/rank/deepfm/config.yaml)")
    unknown_top = set(raw) - {"runner", "hyper_parameters", "dataset"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown_top)}; "
                          f"expected runner, hyper_parameters, dataset")
    if raw.get("dataset") is not None and not isinstance(raw["dataset"], dict):
        raise ConfigError(f"{path}: 'dataset' must be a mapping (the feature schema, see docs/data.md)")
    for section in ("runner", "hyper_parameters"):
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{path}: '{section}' must be a mapping")
    config_dir = os.path.dirname(os.path.abspath(path))
    runner_in = dict(raw.get("runner") or {})
    _resolve_paths(runner_in, config_dir, set(PATH_KEYS) & set(runner_in))

    tree = {"runner": runner_in, "hyper_parameters": copy.deepcopy(raw.get("hyper_parameters") or {})}
    if raw.get("dataset") is not None:
        tree["dataset"] = copy.deepcopy(raw["dataset"])
    overridden_paths = set()
    overridden = []
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        overridden.append(key)
        if key.startswith("runner.") and key[len("runner."):] in PATH_KEYS:
            overridden_paths.add(key[len("runner."):])
    _resolve_paths(tree["runner"], os.getcwd(), overridden_paths)
    config = _validated(path, tree)
    config.overridden = tuple(dict.fromkeys(overridden))
    return config


def _validated(path: str, tree: dict) -> Config:
    from ctrkit.zoo import get_model_class  # the registry; tools `import models` to fill it

    runner = _validate_section(tree["runner"], RUNNER_SCHEMA, "runner.", PADDLEREC_IGNORED_RUNNER_KEYS)
    runner["model"] = _model_name(path, runner)
    try:
        model_cls = get_model_class(runner["model"])
    except KeyError as exc:
        raise ConfigError(f"runner.model: {exc.args[0]}") from None
    hp_in = dict(tree["hyper_parameters"])
    optimizer_in = hp_in.pop("optimizer", {}) or {}
    if not isinstance(optimizer_in, dict):
        raise ConfigError("hyper_parameters.optimizer must be a mapping")
    optimizer = _validate_section(optimizer_in, OPTIMIZER_SCHEMA, "hyper_parameters.optimizer.",
                                  PADDLEREC_IGNORED_OPTIMIZER_KEYS)
    if optimizer["class"] not in OPTIMIZERS:
        raise ConfigError(f"hyper_parameters.optimizer.class: {optimizer['class']!r} is not one of {OPTIMIZERS}")
    hp_schema = {k: (type(v) if not isinstance(v, bool) else bool, v)
                 for k, v in model_cls.default_hyper_parameters().items()}
    hp = _validate_section(hp_in, hp_schema, "hyper_parameters.", {**PADDLEREC_IGNORED_HP_KEYS,
                                                                     **dict.fromkeys(SCHEMA_CHECKED_HP_KEYS)})
    ignored = (_ignored_present(tree["runner"], PADDLEREC_IGNORED_RUNNER_KEYS, "runner.")
               + _ignored_present(hp_in, PADDLEREC_IGNORED_HP_KEYS, "hyper_parameters.")
               + _ignored_present(optimizer_in, PADDLEREC_IGNORED_OPTIMIZER_KEYS, "hyper_parameters.optimizer."))
    hp["optimizer"] = optimizer
    if runner["data_format"] not in ("auto", "slot", "raw"):
        raise ConfigError(f"runner.data_format must be auto, slot or raw, got {runner['data_format']!r}")
    _check_ranges(runner, optimizer)
    config = Config(path=os.path.abspath(path), runner=runner, hyper_parameters=hp, dataset=tree.get("dataset"),
                    ignored_keys=tuple(key for key, _ in ignored))
    from ctrkit.schema import FeatureSchema  # the dataset block (schema-data owns its validation)

    try:
        # dense_input_dim / sparse_inputs_slots (PaddleRec's) are checked against the schema (Criteo's too) when given
        given = {k: v for k, v in tree["hyper_parameters"].items() if k in ("dense_input_dim", "sparse_inputs_slots")}
        FeatureSchema.from_config({"runner": runner, "dataset": tree.get("dataset"), "hyper_parameters": {
            "sparse_feature_number": hp.get("sparse_feature_number", 1000001)}}).check_hyper_parameters(
            given)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config.feature_spec()
        schema = config.schema()  # schema-models: hyper-parameters are checked against the feature schema
        if "dense_input_dim" not in tree["hyper_parameters"]:
            hp["dense_input_dim"] = schema.n_dense  # its default follows the schema (0 for Avazu)
        model_cls.check_hyper_parameters(hp, schema)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if ignored:
        reasons: dict[str, list[str]] = {}
        for key, why in ignored:
            reasons.setdefault(why, []).append(key)
        log.warning("ignoring PaddleRec config key(s) that mean nothing here: %s",
                    "; ".join(f"{', '.join(keys)} ({why})" for why, keys in reasons.items()))
    return config
