"""The feature schema: which columns of a data file are features, of what kind, and how they become model inputs.

Declared once (the config's top-level `dataset:` block, see docs/data.md) and carried end to end: the data layer
parses and packs by it, models size their inputs from it, the exporter writes it into `model_meta.json`, and
everything downstream of export reads it from there. No `dataset:` block means Criteo (`criteo_schema`), so every
existing config, checkpoint and export keeps working.

Packing (the model contract stays two tensors):
    dense_input   float32 [B, n_dense]        the numeric fields in declared order (model-space values)
    sparse_inputs int64   [B, sparse_width]   the single-valued ids in declared order, then each multi-valued
                                              field's `max_len` ids (0-padded / truncated) in declared order
Id 0 = missing / padding and contributes nothing. `field_layout()` says which columns belong to which field.

Categorical values in delimited text are hashed with the documented process-independent hash
    id = 1 + FNV-1a-64(utf-8 of f"{slot}:{value}") mod (sparse_feature_number - 1),   0 for an empty value
where `slot` is the field's slot name (its name unless declared otherwise; for Criteo the column numbers "1".."26",
which keeps today's ids). In slot-format files the values are ids already (PaddleRec's feasigns) and are used as
they are (range-checked).
"""
from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NamedTuple

from ctrkit.data.spec import (CATEGORICAL_HASHES, NUM_DENSE, NUM_SLOTS, PADDLEREC_DENSE_DIFF, PADDLEREC_DENSE_MIN,
                              FeatureSpec)

SCHEMA_VERSION = 1
FORMATS = ("auto", "slot", "raw", "csv", "tsv")
PREPROCESSES = ("none", "minmax", "log")
POOLINGS = ("sum", "mean")
CRITEO_DENSE_SLOT = "dense_feature"
CRITEO_LABEL_SLOT = "click"


class SchemaError(ValueError):
    """A schema declaration is invalid; the one-line message names the key (e.g. `dataset.numeric[0].fill`)."""


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise SchemaError(f"{key}: must be finite, got {value!r}")
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{key}: expected a non-empty string, got {value!r}")
    if value != value.strip() or any(c in value for c in "\t\n\r:,"):
        raise SchemaError(f"{key}: {value!r} may not contain ':', ',', tabs, newlines or outer spaces")
    return value


def _choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise SchemaError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class NumericField:
    """A numeric (dense) feature. Delimited text: x -> preprocess(x); empty -> `fill` (a model-space value, not
    preprocessed). `minmax`: (x - min) / diff (PaddleRec); `log`: sign(x) * ln(1 + |x|) (DLRM / MLPerf's Criteo
    log transform); `none`: x. Slot-format values are model-ready and taken as they are (as PaddleRec does)."""

    name: str
    _: KW_ONLY
    slot: str | None = None  # the name in slot format (several numeric fields may share one slot, in order)
    preprocess: str = "none"
    min: float = 0.0
    diff: float = 1.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        _name(self.name, "name")
        object.__setattr__(self, "slot", _name(self.slot if self.slot is not None else self.name, "slot"))
        _choice(self.preprocess, PREPROCESSES, "preprocess")
        for key in ("min", "diff", "fill"):
            object.__setattr__(self, key, _finite(getattr(self, key), key))
        if self.diff == 0:
            raise SchemaError("diff: must be non-zero")


@dataclass(frozen=True)
class CategoricalField:
    """A single-valued categorical feature: one id per row (0 when missing)."""

    name: str
    _: KW_ONLY
    slot: str | None = None  # name in slot format and the hash key; default: the field name

    def __post_init__(self) -> None:
        _name(self.name, "name")
        object.__setattr__(self, "slot", _name(self.slot if self.slot is not None else self.name, "slot"))


@dataclass(frozen=True)
class MultiValuedField:
    """A multi-valued categorical feature (genres `Comedy|Drama`, or a slot repeated on a slot-format line):
    up to `max_len` ids, 0-padded; longer lists are truncated (counted, not an error); pooled by `sum` or `mean`
    (mean divides by the number of non-zero ids, at least 1)."""

    name: str
    _: KW_ONLY
    slot: str | None = None
    separator: str = "|"
    max_len: int = 0
    pooling: str = "sum"

    def __post_init__(self) -> None:
        _name(self.name, "name")
        object.__setattr__(self, "slot", _name(self.slot if self.slot is not None else self.name, "slot"))
        if not isinstance(self.separator, str) or len(self.separator) != 1 or self.separator in "\n\r\"":
            raise SchemaError(f"separator: must be one character (not a newline or quote), got {self.separator!r}")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise SchemaError(f"max_len: must be a positive integer, got {self.max_len!r}")
        _choice(self.pooling, POOLINGS, "pooling")


@dataclass(frozen=True)
class LabelSpec:
    """The label column: 0/1 (`threshold` None) or numeric turned into 1 when value >= threshold. Absent in
    test / serving files (then every line of the file lacks it)."""

    name: str = "label"
    threshold: float | None = None
    _: KW_ONLY
    slot: str | None = None  # the key in slot format; default: the name (Criteo: "click")

    def __post_init__(self) -> None:
        _name(self.name, "name")
        object.__setattr__(self, "slot", _name(self.slot if self.slot is not None else self.name, "slot"))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _finite(self.threshold, "threshold"))


class FieldSlice(NamedTuple):
    """Columns [start, start + width) of `sparse_inputs` belong to field `name`."""

    name: str
    kind: str       # "single" | "multi"
    start: int
    width: int
    pooling: str    # "sum" | "mean" ("sum" for single-valued fields)


@dataclass(frozen=True)
class FeatureSchema:
    """Every feature column of a data set, its kind and preprocessing, the label, the file format."""

    numeric: tuple[NumericField, ...] = ()
    categorical: tuple[CategoricalField, ...] = ()
    multi_valued: tuple[MultiValuedField, ...] = ()
    label: LabelSpec = field(default_factory=LabelSpec)
    format: str = "auto"
    header: bool = False
    columns: tuple[str, ...] | None = None
    strict: bool = True
    sparse_feature_number: int = 1000001
    categorical_hash: str = "fnv1a64"
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("numeric", "categorical", "multi_valued"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        _validate(self)

    # ------------------------------------------------------------------------------------------------ shape
    @property
    def n_dense(self) -> int:
        return len(self.numeric)

    @property
    def n_single(self) -> int:
        return len(self.categorical)

    @property
    def n_fields(self) -> int:
        return self.n_single + len(self.multi_valued)

    @property
    def sparse_width(self) -> int:
        return self.n_single + sum(f.max_len for f in self.multi_valued)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in (*self.numeric, *self.categorical, *self.multi_valued))

    def field_layout(self) -> list[FieldSlice]:
        """The fields behind the columns of `sparse_inputs`, in order: single-valued (width 1), then multi."""
        out = [FieldSlice(f.name, "single", i, 1, "sum") for i, f in enumerate(self.categorical)]
        start = self.n_single
        for f in self.multi_valued:
            out.append(FieldSlice(f.name, "multi", start, f.max_len, f.pooling))
            start += f.max_len
        return out

    @property
    def is_criteo(self) -> bool:
        """True when this is the Criteo schema (any sparse_feature_number, format and dense scaling): the data
        layer then takes its dedicated Criteo fast path."""
        return self.feature_spec() is not None

    def feature_spec(self) -> FeatureSpec | None:
        """The Criteo `FeatureSpec` this schema is (Criteo's fields, slots and label slot, any name), or None."""
        if (self.format not in ("auto", "slot", "raw") or not _criteo_shaped(self) or self.header
                or self.columns is not None or not self.strict or self.label.slot != CRITEO_LABEL_SLOT
                or self.label.threshold is not None
                or [f.name for f in self.numeric] != [f"I{j + 1}" for j in range(NUM_DENSE)]
                or [f.name for f in self.categorical] != [f"C{k + 1}" for k in range(NUM_SLOTS)]):
            return None
        return FeatureSpec(sparse_feature_number=self.sparse_feature_number, data_format=self.format,
                           dense_min=tuple(f.min for f in self.numeric),
                           dense_diff=tuple(f.diff for f in self.numeric), categorical_hash=self.categorical_hash)

    def with_options(self, **changes: Any) -> "FeatureSchema":
        """A copy with some top-level attributes changed (e.g. `format="csv"`), validated."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(changes)
        return FeatureSchema(**d)

    def check_hyper_parameters(self, hp: dict) -> None:
        """PaddleRec's `dense_input_dim` / `sparse_inputs_slots` (n_fields + 1: the label counts as a slot there)
        must agree with the schema when given; `sparse_feature_number` is the id-space size."""
        if "dense_input_dim" in hp and hp["dense_input_dim"] != self.n_dense:
            raise SchemaError(f"hyper_parameters.dense_input_dim is {hp['dense_input_dim']!r} but the dataset "
                              f"schema {self.name!r} has {self.n_dense} numeric field(s)")
        if "sparse_inputs_slots" in hp and hp["sparse_inputs_slots"] not in (self.n_fields + 1, self.n_fields):
            raise SchemaError(f"hyper_parameters.sparse_inputs_slots is {hp['sparse_inputs_slots']!r} but the "
                              f"dataset schema {self.name!r} has {self.n_fields} categorical field(s) "
                              f"(PaddleRec counts the label too: {self.n_fields + 1})")
        if "sparse_feature_number" in hp and hp["sparse_feature_number"] != self.sparse_feature_number:
            raise SchemaError(f"hyper_parameters.sparse_feature_number is {hp['sparse_feature_number']!r} but the "
                              f"dataset schema has {self.sparse_feature_number}")

    # ---------------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-safe; `FeatureSchema.from_dict(s.to_dict()) == s`."""
        return {
            "version": SCHEMA_VERSION,
            "name": self.name,
            "format": self.format,
            "header": self.header,
            "columns": list(self.columns) if self.columns is not None else None,
            "strict": self.strict,
            "sparse_feature_number": self.sparse_feature_number,
            "categorical_hash": self.categorical_hash,
            "label": {"name": self.label.name, "slot": self.label.slot, "threshold": self.label.threshold},
            "numeric": [{"name": f.name, "slot": f.slot, "preprocess": f.preprocess, "min": f.min, "diff": f.diff,
                         "fill": f.fill} for f in self.numeric],
            "categorical": [{"name": f.name, "slot": f.slot} for f in self.categorical],
            "multi_valued": [{"name": f.name, "slot": f.slot, "separator": f.separator, "max_len": f.max_len,
                              "pooling": f.pooling} for f in self.multi_valued],
        }

    @classmethod
    def from_dict(cls, d: dict, *, key: str = "schema",
                  sparse_feature_number: int | None = None) -> "FeatureSchema":
        """The schema of `to_dict()` output or of a config's `dataset:` block (which may list categorical fields
        as plain names and omit defaults). Raises SchemaError naming `key.<sub-key>`."""
        return _schema_from_mapping(d, key, sparse_feature_number)

    @classmethod
    def from_config(cls, config: Any) -> "FeatureSchema":
        """The schema of a run config (a `ctrkit.config.Config` or its dict form with `dataset` / `runner` /
        `hyper_parameters`). No `dataset:` block -> Criteo with the runner's data_format, dense_min/dense_diff
        and hyper_parameters.sparse_feature_number. (`check_hyper_parameters` compares PaddleRec's
        dense_input_dim / sparse_inputs_slots with the schema; config.py calls it for the keys a user wrote.)"""
        if isinstance(config, dict):
            dataset, runner, hp = (config.get("dataset"), config.get("runner") or {},
                                   config.get("hyper_parameters") or {})
        else:
            dataset, runner, hp = (getattr(config, "dataset", None), config.runner, config.hyper_parameters)
        n = hp.get("sparse_feature_number", 1000001)
        if not dataset:
            fmt = runner.get("data_format", "auto")
            return criteo_schema(n, fmt, dense_min=tuple(runner.get("dense_min", PADDLEREC_DENSE_MIN)),
                                 dense_diff=tuple(runner.get("dense_diff", PADDLEREC_DENSE_DIFF)))
        schema = _schema_from_mapping(dataset, "dataset", n)
        fmt = runner.get("data_format", "auto")
        if fmt not in ("auto", schema.format):
            if "format" in dataset and schema.format != "auto":
                raise SchemaError(f"runner.data_format is {fmt!r} but dataset.format is {schema.format!r}; "
                                  f"set one of them")
            schema = schema.with_options(format=fmt)
        return schema


def criteo_schema(sparse_feature_number: int = 1000001, data_format: str = "auto",
                  dense_min: tuple[float, ...] = PADDLEREC_DENSE_MIN,
                  dense_diff: tuple[float, ...] = PADDLEREC_DENSE_DIFF) -> FeatureSchema:
    """Today's Criteo schema: numeric I1..I13 (slot `dense_feature`, PaddleRec's min/diff applied to raw text
    only), categorical C1..C26 (slots "1".."26", also the hash keys), label `label` (slot `click`)."""
    if data_format not in ("auto", "slot", "raw"):
        raise SchemaError(f"data_format: the Criteo schema reads auto, slot or raw, got {data_format!r}")
    if len(dense_min) != NUM_DENSE or len(dense_diff) != NUM_DENSE:
        raise SchemaError(f"dense_min and dense_diff need {NUM_DENSE} values each")
    numeric = tuple(NumericField(f"I{j + 1}", slot=CRITEO_DENSE_SLOT, preprocess="minmax", min=dense_min[j],
                                 diff=dense_diff[j]) for j in range(NUM_DENSE))
    categorical = tuple(CategoricalField(f"C{k}", slot=str(k)) for k in range(1, NUM_SLOTS + 1))
    return FeatureSchema(numeric=numeric, categorical=categorical, multi_valued=(),
                         label=LabelSpec("label", slot=CRITEO_LABEL_SLOT), format=data_format, header=False,
                         columns=None, strict=True, sparse_feature_number=sparse_feature_number,
                         categorical_hash="fnv1a64", name="criteo")


def schema_from_config_file(path: str, sparse_feature_number: int | None = None) -> FeatureSchema:
    """The schema of a config file's `dataset:` block (Criteo when it has none) without validating the rest of
    the config (tools that only read data: gen_data.py, convert.py). Raises SchemaError naming file and key."""
    import os

    import yaml

    if not os.path.isfile(path):
        raise SchemaError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise SchemaError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("dataset") or {}, dict):
        raise SchemaError(f"{path}: expected a mapping with runner / hyper_parameters / dataset")
    hp = dict(raw.get("hyper_parameters") or {})
    if sparse_feature_number is not None:
        hp["sparse_feature_number"] = sparse_feature_number
    try:
        return FeatureSchema.from_config({"dataset": raw.get("dataset"), "runner": raw.get("runner") or {},
                                          "hyper_parameters": hp})
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def schema_from_feature_spec(spec: FeatureSpec) -> FeatureSchema:
    """The Criteo schema an older `FeatureSpec` (e.g. a model_meta.json without `schema`) describes."""
    return criteo_schema(spec.sparse_feature_number, spec.data_format, spec.dense_min, spec.dense_diff)


def as_schema(spec_or_schema: FeatureSpec | FeatureSchema) -> FeatureSchema:
    return spec_or_schema if isinstance(spec_or_schema, FeatureSchema) else schema_from_feature_spec(spec_or_schema)


# ---------------------------------------------------------------------------------------------- validation

def _validate(s: FeatureSchema) -> None:
    key = "dataset"
    for attr, cls in (("numeric", NumericField), ("categorical", CategoricalField),
                      ("multi_valued", MultiValuedField)):
        for i, f in enumerate(getattr(s, attr)):
            if not isinstance(f, cls):
                raise SchemaError(f"{key}.{attr}[{i}]: expected a {cls.__name__}, got {type(f).__name__}")
    if not isinstance(s.label, LabelSpec):
        raise SchemaError(f"{key}.label: expected a LabelSpec, got {type(s.label).__name__}")
    _choice(s.format, FORMATS, f"{key}.format")
    if not isinstance(s.header, bool):
        raise SchemaError(f"{key}.header: expected true or false, got {s.header!r}")
    if not isinstance(s.strict, bool):
        raise SchemaError(f"{key}.strict: expected true or false, got {s.strict!r}")
    if s.categorical_hash not in CATEGORICAL_HASHES:
        raise SchemaError(f"{key}.categorical_hash: must be one of {', '.join(CATEGORICAL_HASHES)}, "
                          f"got {s.categorical_hash!r}")
    n = s.sparse_feature_number
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SchemaError(f"hyper_parameters.sparse_feature_number: must be an integer >= 2, got {n!r}")
    if not isinstance(s.name, str) or not s.name:
        raise SchemaError(f"{key}.name: expected a non-empty string, got {s.name!r}")
    if not s.n_fields:
        raise SchemaError(f"{key}: declare at least one categorical or multi_valued field (models embed them)")
    # names: unique over features and label
    seen: dict[str, str] = {}
    for attr, fields in (("numeric", s.numeric), ("categorical", s.categorical), ("multi_valued", s.multi_valued)):
        for i, f in enumerate(fields):
            where = f"{key}.{attr}[{i}]"
            if f.name in seen:
                raise SchemaError(f"{where}.name: {f.name!r} is declared twice (also {seen[f.name]})")
            seen[f.name] = where
    if s.label.name in seen:
        raise SchemaError(f"{key}.label.name: {s.label.name!r} is also a feature ({seen[s.label.name]})")
    # slots: numeric fields may share a slot among themselves (PaddleRec's dense_feature x 13); every other
    # slot names one field
    slot_owner: dict[str, str] = {s.label.slot: "label"}
    for i, f in enumerate(s.numeric):
        owner = slot_owner.setdefault(f.slot, "numeric")
        if owner != "numeric":
            raise SchemaError(f"{key}.numeric[{i}].slot: {f.slot!r} is also the slot of the {owner}")
    for attr, fields in (("categorical", s.categorical), ("multi_valued", s.multi_valued)):
        for i, f in enumerate(fields):
            if f.slot in slot_owner:
                raise SchemaError(f"{key}.{attr}[{i}].slot: {f.slot!r} is also the slot of the {slot_owner[f.slot]}")
            slot_owner[f.slot] = f"field {f.name!r}"
    for i, f in enumerate(s.multi_valued):
        delimiter = {"csv": ",", "tsv": "\t"}.get(s.format)
        if delimiter is not None and f.separator == delimiter:
            raise SchemaError(f"{key}.multi_valued[{i}].separator: {f.separator!r} is the {s.format} delimiter")
    if s.format == "raw" and not _criteo_shaped(s):
        raise SchemaError(f"{key}.format: 'raw' is Criteo's own tab-separated layout; for your own columns use "
                          f"tsv (with header: true or columns: [...])")
    if s.columns is not None:
        for i, c in enumerate(s.columns):
            _name_checked(c, f"{key}.columns[{i}]")
        if len(set(s.columns)) != len(s.columns):
            dup = next(c for c in s.columns if s.columns.count(c) > 1)
            raise SchemaError(f"{key}.columns: {dup!r} appears twice")
        missing = [f for f in (*s.feature_names, s.label.name) if f not in s.columns]
        if missing:
            raise SchemaError(f"{key}.columns: declared field(s) {', '.join(map(repr, missing))} are not among "
                              f"the columns")
    if s.format in ("csv", "tsv") and not s.header and s.columns is None:
        raise SchemaError(f"{key}: a {s.format} file needs header: true (a header line) or columns: [...] "
                          f"(the column order)")


def _name_checked(value: Any, key: str) -> str:
    try:
        return _name(value, "")
    except SchemaError as exc:
        raise SchemaError(f"{key}{str(exc)}") from None


def _criteo_shaped(s: FeatureSchema) -> bool:
    return (len(s.numeric) == NUM_DENSE and len(s.categorical) == NUM_SLOTS and not s.multi_valued
            and all(f.slot == CRITEO_DENSE_SLOT and f.preprocess == "minmax" and f.fill == 0 for f in s.numeric)
            and all(f.slot == str(k + 1) for k, f in enumerate(s.categorical)))


# ------------------------------------------------------------------------------------- reading declarations

_TOP_KEYS = {"version", "name", "format", "header", "columns", "strict", "sparse_feature_number",
             "categorical_hash", "label", "numeric", "categorical", "multi_valued"}
_FIELD_KEYS = {
    "numeric": {"name", "slot", "preprocess", "min", "diff", "fill"},
    "categorical": {"name", "slot"},
    "multi_valued": {"name", "slot", "separator", "max_len", "pooling"},
}
_FIELD_CLASSES = {"numeric": NumericField, "categorical": CategoricalField, "multi_valued": MultiValuedField}


def _unknown(d: dict, known: set[str], key: str) -> None:
    extra = sorted(set(d) - known, key=str)
    if extra:
        raise SchemaError(f"{key}: unknown key(s) {', '.join(map(str, extra))}; known: {', '.join(sorted(known))}")


def _field(kind: str, item: Any, key: str) -> Any:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise SchemaError(f"{key}: expected a name or a mapping with 'name', got {type(item).__name__} {item!r}")
    _unknown(item, _FIELD_KEYS[kind], key)
    if "name" not in item:
        raise SchemaError(f"{key}.name: missing")
    if kind == "multi_valued" and "max_len" not in item:
        raise SchemaError(f"{key}.max_len: missing (the most ids kept per row; longer lists are truncated)")
    if kind == "numeric" and item.get("preprocess") == "minmax" and "diff" not in item:
        raise SchemaError(f"{key}.diff: missing (minmax scales (x - min) / diff)")
    name = item["name"]
    kwargs = {k: v for k, v in item.items() if k != "name"}
    try:
        return _FIELD_CLASSES[kind](name, **kwargs)
    except SchemaError as exc:
        raise SchemaError(f"{key}.{exc}") from None
    except TypeError as exc:
        raise SchemaError(f"{key}: {exc}") from None


def _schema_from_mapping(d: Any, key: str, sparse_feature_number: int | None) -> FeatureSchema:
    if not isinstance(d, dict):
        raise SchemaError(f"{key}: expected a mapping, got {type(d).__name__}")
    _unknown(d, _TOP_KEYS, key)
    if d.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise SchemaError(f"{key}.version: this toolkit reads schema version {SCHEMA_VERSION}, got {d['version']!r}")
    fields: dict[str, tuple] = {}
    for kind in ("numeric", "categorical", "multi_valued"):
        items = d.get(kind) or []
        if not isinstance(items, (list, tuple)):
            raise SchemaError(f"{key}.{kind}: expected a list, got {type(items).__name__}")
        fields[kind] = tuple(_field(kind, item, f"{key}.{kind}[{i}]") for i, item in enumerate(items))
    label_in = d.get("label", {})
    if isinstance(label_in, str):
        label_in = {"name": label_in}
    if not isinstance(label_in, dict):
        raise SchemaError(f"{key}.label: expected a name or a mapping (name, threshold), got {label_in!r}")
    _unknown(label_in, {"name", "slot", "threshold"}, f"{key}.label")
    try:
        label = LabelSpec(label_in.get("name", "label"), label_in.get("threshold"), slot=label_in.get("slot"))
    except SchemaError as exc:
        raise SchemaError(f"{key}.label.{exc}") from None
    columns = d.get("columns")
    if columns is not None and not isinstance(columns, (list, tuple)):
        raise SchemaError(f"{key}.columns: expected a list of column names, got {type(columns).__name__}")
    n = d.get("sparse_feature_number", sparse_feature_number if sparse_feature_number is not None else 1000001)
    if sparse_feature_number is not None and n != sparse_feature_number:
        raise SchemaError(f"{key}.sparse_feature_number is {n!r} but hyper_parameters.sparse_feature_number is "
                          f"{sparse_feature_number!r}")
    return FeatureSchema(numeric=fields["numeric"], categorical=fields["categorical"],
                         multi_valued=fields["multi_valued"], label=label, format=d.get("format", "auto"),
                         header=d.get("header", False), columns=tuple(columns) if columns is not None else None,
                         strict=d.get("strict", True), sparse_feature_number=n,
                         categorical_hash=d.get("categorical_hash", "fnv1a64"), name=d.get("name", "custom"))
