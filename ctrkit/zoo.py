"""The model interface and the model registry (the library side of the model zoo).

`ctrkit` defines what a CTR model is (`CTRModel`: two inputs, one probability, hyper-parameters with defaults
and checks, declared input specs) and keeps a registry of them; it never imports a model implementation. Model
packages register into it:

- a model class registers itself with `@register("<name>")`;
- a package of models (one sub-package per model, imported on first use) is made known with
  `add_model_package("<package>")`. The toolkit's own zoo (`models/`, beside the library) does this when it is
  imported, so the command-line tools `import models` once; `CTRKIT_MODEL_PACKAGES=pkg1,pkg2` adds packages of
  your own without touching the toolkit.

Dependencies point one way: `models` -> `ctrkit`, and the tools compose the two.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import pkgutil

import paddle
from paddle import nn

from ctrkit.data.spec import NUM_DENSE
from ctrkit.schema import FeatureSchema, criteo_schema

COMMON_HYPER_PARAMETERS = {
    "sparse_feature_number": 1000001,
    "sparse_feature_dim": 9,
    "dense_input_dim": NUM_DENSE,
    "embedding_l2": 0.0,  # L2 on the id-table rows each training batch looks up (see CTRModel.embedding_l2_loss)
}

MODEL_PACKAGES_ENV = "CTRKIT_MODEL_PACKAGES"

_REGISTRY: dict[str, type] = {}
_PACKAGES: list[str] = []


class CTRModel(nn.Layer):
    """Base class of every model: `forward(dense_input float32 [B, n_dense], sparse_inputs int64 [B, sparse_width])
    -> prob float32 [B, 1]` (one logit through a sigmoid), packed as the feature schema says (ctrkit/schema.py:
    single-valued ids, then each multi-valued field's max_len ids; id 0 = padding). `self.schema` is the model's
    FeatureSchema (Criteo when none is given); `self.hp` its complete hyper-parameters (defaults filled in,
    `dense_input_dim` = the schema's numeric field count). Subclasses set `EXTRA_HYPER_PARAMETERS`
    (name -> default), take `(hyper_parameters, schema=None)` and implement `forward`. Export builds its
    InputSpec from `input_specs()`, so export, serving and the benchmark treat every model alike."""

    model_name = "?"  # set by `register`
    EXTRA_HYPER_PARAMETERS: dict = {}

    def __init__(self, hyper_parameters: dict, schema: FeatureSchema | None = None):
        super().__init__()
        schema = schema if schema is not None else criteo_schema(
            hyper_parameters.get("sparse_feature_number", COMMON_HYPER_PARAMETERS["sparse_feature_number"]))
        self.check_hyper_parameters(hyper_parameters, schema)
        defaults = self.default_hyper_parameters(schema)
        self.hp = {k: hyper_parameters.get(k, v) for k, v in defaults.items()}
        self.hp["dense_input_dim"] = schema.n_dense
        self.schema = schema

    @classmethod
    def default_hyper_parameters(cls, schema: FeatureSchema | None = None) -> dict:
        """Every hyper-parameter the model reads, with its default (`dense_input_dim` from the schema)."""
        common = dict(COMMON_HYPER_PARAMETERS)
        if schema is not None:
            common["dense_input_dim"] = schema.n_dense
        return {**common, **cls.EXTRA_HYPER_PARAMETERS}

    @classmethod
    def check_hyper_parameters(cls, hp: dict, schema: FeatureSchema | None = None) -> None:
        """Raise ValueError for values no model can use; subclasses add their own checks. With a schema,
        `dense_input_dim` (when given) and `sparse_feature_number` must agree with it."""
        n_dense = schema.n_dense if schema is not None else NUM_DENSE
        if hp.get("dense_input_dim", n_dense) != n_dense:
            where = f"the dataset schema {schema.name!r} has {n_dense} numeric field(s)" if schema is not None \
                else "Criteo has 13 dense features"
            raise ValueError(f"hyper_parameters.dense_input_dim must be {n_dense} ({where}), "
                             f"got {hp['dense_input_dim']!r}")
        if hp.get("sparse_feature_number", 2) < 2:
            raise ValueError("hyper_parameters.sparse_feature_number must be >= 2")
        if schema is not None and hp.get("sparse_feature_number", schema.sparse_feature_number) \
                != schema.sparse_feature_number:
            raise ValueError(f"hyper_parameters.sparse_feature_number is {hp['sparse_feature_number']!r} but the "
                             f"dataset schema {schema.name!r} has {schema.sparse_feature_number}")
        if hp.get("sparse_feature_dim", 1) < 1:
            raise ValueError("hyper_parameters.sparse_feature_dim must be >= 1")
        if not 0.0 <= hp.get("embedding_l2", 0.0) < float("inf"):
            raise ValueError(f"hyper_parameters.embedding_l2 must be a finite number >= 0, got {hp['embedding_l2']!r}")
        if not 0.0 <= hp.get("dropout", 0.0) < 1.0:
            raise ValueError(f"hyper_parameters.dropout must be in [0, 1), got {hp['dropout']!r}")
        for key, value in hp.items():
            if key.endswith("_sizes") and (not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise ValueError(f"hyper_parameters.{key} must be a list of positive ints, got {value!r}")

    def input_specs(self) -> list[paddle.static.InputSpec]:
        """The model's declared inputs, in `forward` order (export builds its InputSpec from these):
        `dense_input` float32 [None, n_dense] (n_dense may be 0) and `sparse_inputs` int64 [None, sparse_width]."""
        return input_specs(self.schema)

    def describe(self) -> dict:
        """What a checkpoint or an export records to rebuild this model: name, hyper-parameters, schema."""
        return {"model_name": self.model_name, "hyper_parameters": copy.deepcopy(self.hp),
                "schema": self.schema.to_dict()}

    def regularization_loss(self) -> paddle.Tensor | None:
        """Extra loss term the trainer adds (e.g. DCN's L2 on cross weights); None when the model has none."""
        return None

    def embedding_l2_loss(self, sparse_inputs: paddle.Tensor) -> paddle.Tensor | None:
        """`embedding_l2` times the squared L2 norm of the rows a training batch looks up, each distinct id once,
        in every id table of the model (None when embedding_l2 is 0). FuxiCTR's `embedding_regularizer` puts the
        L2 on whole tables; on the looked-up rows only, the gradient stays sparse (lazy Adam touches only them)."""
        l2 = self.hp.get("embedding_l2", 0.0)
        if not l2:
            return None
        ids = paddle.unique(paddle.flatten(sparse_inputs))
        tables = [layer for layer in self.sublayers() if isinstance(layer, nn.Embedding)]
        return l2 * paddle.add_n([paddle.sum(paddle.square(table(ids))) for table in tables])

    def forward(self, dense_input: paddle.Tensor, sparse_inputs: paddle.Tensor) -> paddle.Tensor:
        raise NotImplementedError


def input_specs(schema: FeatureSchema | None = None) -> list[paddle.static.InputSpec]:
    """The two model inputs of a schema (Criteo when None)."""
    schema = schema if schema is not None else criteo_schema()
    return [
        paddle.static.InputSpec(shape=[None, schema.n_dense], dtype="float32", name="dense_input"),
        paddle.static.InputSpec(shape=[None, schema.sparse_width], dtype="int64", name="sparse_inputs"),
    ]


# ------------------------------------------------------------------------------------------------------ registry

def register(name: str):
    """Class decorator: `@register("deepfm") class DeepFM(CTRModel): ...`."""
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def add_model_package(package: str) -> None:
    """Make `package` (an importable package name, e.g. "models.rank") a source of models: each of its
    sub-packages is one model, named after its folder and imported on first use."""
    if package not in _PACKAGES:
        _PACKAGES.append(package)


def model_packages() -> list[str]:
    """Registered model packages, then those named in $CTRKIT_MODEL_PACKAGES."""
    extra = [p.strip() for p in os.environ.get(MODEL_PACKAGES_ENV, "").split(",") if p.strip()]
    return _PACKAGES + [p for p in extra if p not in _PACKAGES]


def _package_models(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"model package {package!r} (from {MODEL_PACKAGES_ENV} or add_model_package) "
                          "is not an importable package")
    return [info.name for info in pkgutil.iter_modules(spec.submodule_search_locations) if info.ispkg]


def _model_sources() -> dict[str, str]:
    """Model name -> the package that holds it (first package wins)."""
    sources: dict[str, str] = {}
    for package in model_packages():
        for name in _package_models(package):
            sources.setdefault(name, package)
    return sources


def available_models() -> list[str]:
    """Names of every model: registered classes and the sub-packages of every model package."""
    return sorted(set(_REGISTRY) | set(_model_sources()))


def get_model_class(name: str) -> type:
    """The model class registered as `name`; KeyError with the list of models when there is none."""
    if name not in _REGISTRY:
        package = _model_sources().get(name)
        if package is not None:
            importlib.import_module(f"{package}.{name}")
    if name not in _REGISTRY:
        known = available_models()
        hint = ", ".join(known) if known else (
            f"none registered (import the zoo with `import models`, or name model packages in {MODEL_PACKAGES_ENV})")
        raise KeyError(f"unknown model {name!r}; available: {hint}")
    return _REGISTRY[name]


def build_model(name: str, hyper_parameters: dict, schema: FeatureSchema | None = None) -> CTRModel:
    """Instantiate model `name` from (validated) hyper-parameters for `schema` (Criteo when None)."""
    return get_model_class(name)(hyper_parameters, schema)


# ---------------------------------------------------------------------------------------- models of checkpoints

class ModelMismatchError(ValueError):
    """A checkpoint's recorded model, hyper-parameters or schema conflict with what was asked for explicitly."""


def schema_signature(schema: FeatureSchema) -> tuple:
    """What a model's layout depends on: numeric field count and the fields of `sparse_inputs` (name, kind, width,
    pooling). Two schemas with one signature (and one id-space size) fit the same checkpoint."""
    return (schema.n_dense, tuple(schema.field_layout()))


def describe_schema(schema: FeatureSchema) -> str:
    """One line: `'avazu': 0 numeric, 22 single-valued, 0 multi-valued fields, 1000001 ids`."""
    return (f"{schema.name!r}: {schema.n_dense} numeric, {schema.n_single} single-valued, "
            f"{len(schema.multi_valued)} multi-valued field(s), {schema.sparse_feature_number} ids")


def recorded_model(checkpoint_dir: str) -> dict | None:
    """What the checkpoint records about its model: {"model_name", "hyper_parameters", "schema" (FeatureSchema)};
    None for a checkpoint without a record (e.g. PaddleRec's own)."""
    from ctrkit.checkpoint import read_info

    info = read_info(checkpoint_dir)
    if not info:
        return None
    config = info.get("config") or {}
    hp = dict(info.get("hyper_parameters") or config.get("hyper_parameters") or {})
    hp.pop("optimizer", None)
    if "schema" in info:
        schema = FeatureSchema.from_dict(info["schema"])
    else:
        schema = FeatureSchema.from_config({**config, "hyper_parameters": {
            "sparse_feature_number": hp.get("sparse_feature_number",
                                            COMMON_HYPER_PARAMETERS["sparse_feature_number"])}})
    name = info.get("model_name") or info.get("model") or (config.get("runner") or {}).get("model")
    return {"model_name": name, "hyper_parameters": hp, "schema": schema}


def build_model_for_checkpoint(config, checkpoint_dir: str | None, *, schema_from_checkpoint: bool = False,
                               explicit: list[str] | tuple[str, ...] | None = None, logger=None) -> CTRModel:
    """The model that fits `checkpoint_dir`, as `config` asks for it (a `ctrkit.config.Config`).

    The checkpoint's recorded hyper-parameters win over the config file's (training with
    `-o hyper_parameters.fc_sizes=[...]` needs no repeat when evaluating or exporting); one given explicitly
    with -o (`explicit`: the dotted keys given with -o; default `config.overridden`) that differs from the
    recorded value is a ModelMismatchError naming both. The model
    name must match. Schema: the config's, which must have the recorded schema's signature; with
    `schema_from_checkpoint` (export) the recorded schema itself is used when the config declares no `dataset:`
    block. Without a record (a PaddleRec checkpoint) the config alone decides. Parameters are not loaded here.
    The returned model's `schema` (with the resolved `sparse_feature_number`) is the one to parse its data with."""
    import logging

    log = logger or logging.getLogger("ctrkit.zoo")
    config_schema = config.schema()
    record = recorded_model(checkpoint_dir) if checkpoint_dir else None
    if record is None:
        return build_model(config.model_name, config.hyper_parameters, config_schema)
    if record["model_name"] and record["model_name"] != config.model_name:
        raise ModelMismatchError(f"checkpoint {checkpoint_dir} holds model {record['model_name']!r} but the config "
                                 f"asks for runner.model={config.model_name!r}")
    explicit = set(explicit if explicit is not None else getattr(config, "overridden", ()) or ())
    model_cls = get_model_class(config.model_name)
    hp = {k: v for k, v in config.hyper_parameters.items()}
    used = []
    for key, recorded in record["hyper_parameters"].items():
        if key not in model_cls.default_hyper_parameters() or key == "dense_input_dim" or hp.get(key) == recorded:
            continue
        if f"hyper_parameters.{key}" in explicit:
            raise ModelMismatchError(f"hyper_parameters.{key}: -o gives {hp.get(key)!r} but checkpoint "
                                     f"{checkpoint_dir} was trained with {recorded!r}; drop the override (the "
                                     "recorded value is used) or pass a checkpoint trained with it")
        used.append(f"{key}={recorded!r} (config: {hp.get(key)!r})")
        hp[key] = recorded
    if used:
        log.info("using the hyper-parameters recorded in checkpoint %s: %s", checkpoint_dir, ", ".join(used))
    recorded_schema = record["schema"]
    if schema_signature(recorded_schema) != schema_signature(config_schema):
        if not (schema_from_checkpoint and not getattr(config, "dataset", None)):
            raise ModelMismatchError(f"checkpoint {checkpoint_dir} was trained on schema "
                                     f"{describe_schema(recorded_schema)}, the config declares "
                                     f"{describe_schema(config_schema)}")
    schema = recorded_schema if schema_from_checkpoint and not getattr(config, "dataset", None) else config_schema
    if schema.sparse_feature_number != hp["sparse_feature_number"]:
        schema = schema.with_options(sparse_feature_number=hp["sparse_feature_number"])
    hp["dense_input_dim"] = schema.n_dense  # follows the schema (a config file's Criteo 13 does not apply)
    return build_model(config.model_name, hp, schema)
