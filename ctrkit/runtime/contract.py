"""A model's input contract, read from its model_meta.json, and the validation every request passes.

Inputs are named arrays in the model's input order (model_meta `inputs`): for the zoo `dense_input` float32
[B, n_dense] and `sparse_inputs` int64 [B, sparse_width]; widths come from the metadata, never from constants.
`fields` names the columns of the sparse input (one per single-valued field, `max_len` per multi-valued one),
from the feature schema when the export carries one, else Criteo's C1..C26.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctrkit.inference import ExportedModel

# error kinds of RuntimeInputError (front-ends map them onto their protocol's codes)
MISSING, UNKNOWN, DTYPE, SHAPE, OUT_OF_RANGE, NOT_FINITE, EMPTY, TOO_LARGE = (
    "missing_input", "unknown_input", "wrong_dtype", "wrong_shape", "out_of_range", "not_finite", "empty_batch",
    "too_large")


class RuntimeInputError(ValueError):
    """A request's arrays break the model's contract. `kind` is one of the constants above; the message names
    the input (and row, column) and what is wrong; `input` is the offending input's name (or None)."""

    def __init__(self, kind: str, message: str, input_name: str | None = None,
                 where: tuple[int, int] | None = None, value=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.input = input_name
        self.where = where    # (row, column) of the first bad value, for value errors
        self.value = value


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    width: int          # columns (the batch dimension excluded)
    kind: str           # "dense" | "sparse"


@dataclass(frozen=True)
class FieldSlice:
    """Columns [start, start + width) of the sparse input belong to field `name` ("single" or "multi")."""
    name: str
    kind: str
    start: int
    width: int


@dataclass(frozen=True)
class ModelContract:
    inputs: tuple[InputSpec, ...]
    id_limit: int                   # sparse ids must lie in [0, id_limit)
    fields: tuple[FieldSlice, ...]  # columns of the sparse input, by feature field
    output: str                     # the model's output variable name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    def input(self, kind: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.kind == kind), None)

    @property
    def dense_width(self) -> int:
        spec = self.input("dense")
        return spec.width if spec else 0

    @property
    def sparse_width(self) -> int:
        spec = self.input("sparse")
        return spec.width if spec else 0

    # ------------------------------------------------------------------------------------ validation
    def check(self, arrays: dict, max_batch: int | None = None) -> tuple[np.ndarray, ...]:
        """Validate and normalise one request: {input name: array} -> arrays in model input order
        (C-contiguous, the model's dtypes). Raises RuntimeInputError."""
        if not isinstance(arrays, dict):
            raise RuntimeInputError(UNKNOWN, f"inputs must be a dict of arrays named {list(self.names)}")
        if len(arrays) == len(self.inputs) and all(spec.name in arrays for spec in self.inputs):
            pass  # the common case: exactly the model's inputs
        elif unknown := [k for k in arrays if k not in self.names]:
            raise RuntimeInputError(UNKNOWN, f"unknown input '{unknown[0]}'; this model takes {list(self.names)}",
                                    unknown[0])
        elif missing := [n for n in self.names if n not in arrays]:
            raise RuntimeInputError(MISSING, f"missing input(s) {missing}; this model takes {list(self.names)}",
                                    missing[0])
        out = []
        batch = None
        for spec in self.inputs:
            a = self._array(spec, arrays[spec.name])
            if batch is None:
                batch = a.shape[0]
            elif a.shape[0] != batch:
                raise RuntimeInputError(SHAPE, "inputs disagree on the batch size: "
                                        + ", ".join(f"'{i.name}' {len(arrays[i.name])}" for i in self.inputs),
                                        spec.name)
            out.append(a)
        if batch == 0:
            raise RuntimeInputError(EMPTY, f"empty batch (input '{self.inputs[0].name}' has 0 rows)",
                                    self.inputs[0].name)
        if max_batch is not None and batch > max_batch:
            raise RuntimeInputError(TOO_LARGE, f"batch of {batch} exceeds this server's limit of {max_batch} "
                                    "samples per request", self.inputs[0].name)
        for spec, a in zip(self.inputs, out):
            self._values(spec, a)
        return tuple(out)

    @staticmethod
    def _array(spec: InputSpec, value) -> np.ndarray:
        a = value if type(value) is np.ndarray else np.asarray(value)
        if a.dtype is spec.dtype and a.ndim == 2 and a.shape[1] == spec.width and a.flags.c_contiguous:
            return a  # the common case: already the model's dtype and layout
        if spec.kind == "sparse" and a.dtype.kind not in "iu":
            raise RuntimeInputError(DTYPE, f"'{spec.name}' must hold integer ids, got dtype {a.dtype}", spec.name)
        if spec.kind == "dense" and a.dtype.kind not in "iuf":
            raise RuntimeInputError(DTYPE, f"'{spec.name}' must hold numbers, got dtype {a.dtype}", spec.name)
        if a.ndim != 2 or a.shape[1] != spec.width:
            raise RuntimeInputError(SHAPE, f"'{spec.name}' needs shape [B, {spec.width}] (batch first), got "
                                    f"[{', '.join(map(str, a.shape))}]", spec.name)
        if a.dtype != spec.dtype or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=spec.dtype)
        return a

    def _values(self, spec: InputSpec, a: np.ndarray) -> None:
        if spec.kind == "dense":
            if not np.isfinite(a).all():
                row, col = np.argwhere(~np.isfinite(a))[0]
                raise RuntimeInputError(NOT_FINITE, f"'{spec.name}' [{row}, {col}] is {a[row, col]}; values must "
                                        "be finite", spec.name, (int(row), int(col)), a[row, col])
        elif a.size and (a.view(np.uint64) >= self.id_limit).any() if a.dtype == np.int64 else \
                a.size and (a.min() < 0 or a.max() >= self.id_limit):
            # (int64 viewed as uint64: a negative id becomes huge, so one comparison finds both kinds)
            row, col = np.argwhere((a < 0) | (a >= self.id_limit))[0]
            raise RuntimeInputError(OUT_OF_RANGE, f"'{spec.name}' [{row}, {col}] = {a[row, col]} is outside the "
                                    f"embedding table [0, {self.id_limit})", spec.name, (int(row), int(col)),
                                    a[row, col])


def _schema_fields(meta: dict, sparse_width: int) -> tuple[FieldSlice, ...]:
    schema = meta.get("schema")
    if schema:
        try:
            from ctrkit.schema import FeatureSchema  # written by the schema work; optional until it lands

            layout = FeatureSchema.from_dict(schema).field_layout()
            return tuple(FieldSlice(f.name, f.kind, f.start, f.width) for f in layout)
        except ImportError:
            pass
        fields, start = [], 0
        for f in schema.get("categorical", []):
            name = f["name"] if isinstance(f, dict) else f
            fields.append(FieldSlice(name, "single", start, 1))
            start += 1
        for f in schema.get("multi_valued", []):
            fields.append(FieldSlice(f["name"], "multi", start, int(f["max_len"])))
            start += int(f["max_len"])
        if start == sparse_width:
            return tuple(fields)
    return tuple(FieldSlice(f"C{i + 1}", "single", i, 1) for i in range(sparse_width))


def contract_of(model: ExportedModel) -> ModelContract:
    """The input contract recorded in an exported model's model_meta.json."""
    meta = model.meta
    inputs = []
    for var in meta["inputs"]:
        dtype = np.dtype(var.get("dtype", "float32"))
        shape = var.get("shape", [])
        width = int(shape[1]) if len(shape) > 1 else 1
        inputs.append(InputSpec(var["name"], dtype, width, "sparse" if dtype.kind in "iu" else "dense"))
    if meta.get("schema") and "sparse_feature_number" in meta["schema"]:
        id_limit = int(meta["schema"]["sparse_feature_number"])
    else:
        id_limit = int(meta["feature_spec"]["sparse_feature_number"])
    sparse = next((i for i in inputs if i.kind == "sparse"), None)
    return ModelContract(tuple(inputs), id_limit, _schema_fields(meta, sparse.width if sparse else 0),
                         meta["output"]["name"])
