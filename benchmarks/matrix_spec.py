"""The benchmark matrix: a YAML file of named profiles; each profile is a list of groups whose axes expand
(cartesian product) into cells. A cell is one configuration at one batch size and runs in its own process.

Axes: backend, device, onednn, tensorrt, threads, ir_optim, memory_optim, batch. Each backend honours some
axes; the others are "not applicable" and recorded as None. Setting an axis a backend does not honour is a
MatrixError (put that backend in its own group), so the matrix never claims a knob it did not turn.
A group may also set `env` (environment variables of its cells' processes, e.g. MKL_DEBUG_CPU_TYPE) and
`label` (a row name for the report). Combinations no machine could run are not generated: TensorRT values
apply to GPU cells only, oneDNN to CPU cells only. Whether THIS build and machine can run a cell is decided
when the cell runs (then it is skipped with the exact reason).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

from ctrkit.inference import GOLDEN_ATOL
from matrix_serving import check_serving_config

BACKENDS = ("paddle", "onnxruntime", "dygraph", "jit_load")
DEVICES = ("cpu", "gpu")
TENSORRT = ("off", "fp32", "fp16", "int8")

# Value of each optional axis when a group does not set it.
AXIS_DEFAULTS: dict[str, Any] = {"device": "cpu", "onednn": False, "tensorrt": "off", "threads": 1,
                                 "ir_optim": True, "memory_optim": False}
AXES = ("backend", *AXIS_DEFAULTS, "batch")
HONOURED: dict[str, set[str]] = {
    "paddle": set(AXIS_DEFAULTS),
    # ctrkit.inference's ONNX Runtime predictor runs the CPU execution provider with a thread count only.
    "onnxruntime": {"device", "threads"},
    "dygraph": {"device", "threads"},
    "jit_load": {"device", "threads"},
}
MEASURE_DEFAULTS: dict[str, float] = {"warmup_iters": 5, "min_time_s": 1.0, "min_iters": 10,
                                      "max_iters": 1_000_000, "cell_timeout_s": 300}
# Largest |output - golden| still counted as correct, per precision: the predictor factory's own tolerances.
TOLERANCE_DEFAULTS: dict[str, float] = dict(GOLDEN_ATOL)
PROFILE_KEYS = {"description", "measure", "tolerance", "groups", "serving"}


class MatrixError(ValueError):
    """The matrix file is malformed; the message names the file, profile and key."""


@dataclass(frozen=True)
class Cell:
    backend: str
    device: str
    onednn: bool | None
    tensorrt: str | None
    threads: int
    ir_optim: bool | None
    memory_optim: bool | None
    batch: int
    env: tuple[str, ...] = ()  # "NAME=value" environment variables of the cell's process, sorted
    label: str = field(default="", compare=False)

    def config_name(self) -> str:
        """Everything but the batch size, e.g. `paddle cpu onednn=on t=2` (axes at their defaults left out)."""
        parts = [self.backend, self.device]
        if self.onednn:
            parts.append("onednn=on")
        if self.tensorrt not in (None, "off"):
            parts.append(f"trt={self.tensorrt}")
        parts.append(f"t={self.threads}")
        if self.ir_optim is False:
            parts.append("ir_optim=off")
        if self.memory_optim:
            parts.append("memory_optim=on")
        return " ".join(parts + list(self.env))

    def key(self) -> tuple:
        """Identity across runs (compare.py matches cells of two reports by it)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "label")

    def env_dict(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.env)

    def to_dict(self) -> dict:
        return {**asdict(self), "env": self.env_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        values["env"] = _env_items(d.get("env") or {}, "cell")
        return cls(**values)


@dataclass
class Profile:
    name: str
    description: str
    measure: dict[str, float]
    tolerance: dict[str, float]
    cells: list[Cell]
    serving: dict | None

    def tolerance_for(self, cell: Cell) -> float:
        return self.tolerance[cell.tensorrt if cell.tensorrt in self.tolerance else "fp32"]


def load_profile(path: str, profile: str, max_threads: int | None = None) -> Profile:
    """Read matrix file `path` and expand profile `profile` into cells."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise MatrixError(f"{path}: cannot read the matrix: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles"), dict):
        raise MatrixError(f"{path}: expected a mapping with a 'profiles:' mapping")
    unknown = set(doc) - {"defaults", "profiles"}
    if unknown:
        raise MatrixError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if profile not in doc["profiles"]:
        raise MatrixError(f"{path}: no profile {profile!r}; profiles: {', '.join(doc['profiles'])}")
    where = f"{path}: profiles.{profile}"
    body = doc["profiles"][profile]
    if not isinstance(body, dict) or set(body) - PROFILE_KEYS:
        raise MatrixError(f"{where}: expected a mapping with keys from {sorted(PROFILE_KEYS)}")
    defaults = doc.get("defaults") or {}
    if set(defaults) - {"measure", "tolerance"}:
        raise MatrixError(f"{path}: defaults may only hold 'measure' and 'tolerance'")
    measure = _merge_numbers(MEASURE_DEFAULTS, set(MEASURE_DEFAULTS), [defaults.get("measure"), body.get("measure")],
                             f"{where}.measure")
    tolerance = _merge_numbers(TOLERANCE_DEFAULTS, set(TOLERANCE_DEFAULTS),
                               [defaults.get("tolerance"), body.get("tolerance")], f"{where}.tolerance")
    groups = body.get("groups")
    if not isinstance(groups, list) or not groups:
        raise MatrixError(f"{where}.groups: expected a non-empty list of groups")
    threads_max = max_threads or len(os.sched_getaffinity(0))
    cells: dict[tuple, Cell] = {}
    for i, group in enumerate(groups):
        for cell in expand_group(group, f"{where}.groups[{i}]", threads_max):
            cells.setdefault(cell.key(), cell)
    serving = body.get("serving")
    if serving is not None:
        problems = (check_serving_config(serving, f"{where}.serving") if isinstance(serving, dict)
                    else [f"{where}.serving: expected a mapping"])
        if problems:
            raise MatrixError("; ".join(problems))
    return Profile(profile, str(body.get("description", "")), measure, tolerance, list(cells.values()), serving)


def expand_group(group: dict, where: str, threads_max: int) -> list[Cell]:
    """The cells of one group: the cartesian product of its axes, minus physically meaningless combinations."""
    if not isinstance(group, dict):
        raise MatrixError(f"{where}: expected a mapping of axes")
    unknown = set(group) - set(AXES) - {"label", "env"}
    if unknown:
        raise MatrixError(f"{where}: unknown axes {sorted(unknown)}; axes are {', '.join(AXES)}")
    for required in ("backend", "batch"):
        if required not in group:
            raise MatrixError(f"{where}: '{required}' is required")
    values = {axis: _axis_values(axis, group.get(axis, AXIS_DEFAULTS.get(axis)), where, threads_max)
              for axis in AXES}
    env = _env_items(group.get("env", {}), where)
    cells = []
    for combo in itertools.product(*(values[a] for a in AXES)):
        axes = dict(zip(AXES, combo))
        backend = axes["backend"]
        for axis in set(AXIS_DEFAULTS) - HONOURED[backend]:
            if axis in group:
                raise MatrixError(f"{where}: backend {backend} has no '{axis}' axis; give it its own group")
            axes[axis] = None
        if axes["device"] == "cpu" and axes["tensorrt"] not in (None, "off"):
            continue  # TensorRT runs on GPUs only
        if axes["device"] == "gpu" and axes["onednn"]:
            continue  # oneDNN is a CPU library
        cells.append(Cell(**axes, env=env, label=str(group.get("label", ""))))
    return cells


def _env_items(env: Any, where: str) -> tuple[str, ...]:
    """{NAME: value} -> sorted ("NAME=value", ...); values must be scalars."""
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, (str, int, float)) and not isinstance(v, bool)
            for k, v in env.items()):
        raise MatrixError(f"{where}.env: expected a mapping of environment variable names to strings or numbers")
    return tuple(sorted(f"{k}={v}" for k, v in env.items()))


def _axis_values(axis: str, raw: Any, where: str, threads_max: int) -> list:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise MatrixError(f"{where}.{axis}: empty list")
    return [_axis_value(axis, v, f"{where}.{axis}", threads_max) for v in items]


def _axis_value(axis: str, v: Any, where: str, threads_max: int) -> Any:
    if axis == "backend" and v in BACKENDS:
        return v
    if axis == "device" and v in DEVICES:
        return v
    if axis in ("onednn", "ir_optim", "memory_optim") and isinstance(v, bool):
        return v
    if axis == "tensorrt":
        v = "off" if v is False else v  # YAML reads a bare `off` as false
        if v in TENSORRT:
            return v
    if axis == "threads":
        if v == "max":
            return threads_max
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    if axis == "batch" and isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    allowed = {"backend": BACKENDS, "device": DEVICES, "tensorrt": TENSORRT + (False,),
               "threads": "a positive int or 'max'", "batch": "a positive int"}.get(axis, "true/false (on/off)")
    raise MatrixError(f"{where}: invalid value {v!r}; expected {allowed}")


def _merge_numbers(base: dict, known: set[str], overrides: list[dict | None], where: str) -> dict:
    merged = dict(base)
    for override in overrides:
        if override is not None and not isinstance(override, dict):
            raise MatrixError(f"{where}: expected a mapping, got {override!r}")
        for key, value in (override or {}).items():
            if key not in known:
                raise MatrixError(f"{where}: unknown key {key!r}; known: {sorted(known)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise MatrixError(f"{where}.{key}: expected a non-negative number, got {value!r}")
            merged[key] = value
    return merged
