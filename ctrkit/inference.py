"""The one predictor factory: every consumer (paddle_infer.py, the RPC server, the upload service, the
benchmark) builds its Paddle Inference predictors here, so they all run exactly the same configuration.

What it guarantees:
- Options are validated, and a device or engine this build or machine lacks raises CapabilityError.
  (Paddle's own `enable_use_gpu` on a CPU build only logs and silently runs on the CPU.)
- oneDNN is always set explicitly, never left to Paddle's default (on in 3.x), and when it is on the
  `inplace_pass` is deleted: with it oneDNN's `square` overwrites a tensor that other ops still read,
  and the model silently gives wrong outputs.
- `memory_optim` on a new-IR (.json) model, which Paddle 3.3.1 cannot build, is a clear error.
- Every predictor runs the exported model's golden batch before it is handed out and refuses to exist
  when its outputs differ from the dygraph outputs recorded at export (GoldenMismatchError).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from ctrkit.data.spec import FeatureSpec

META_FILE = "model_meta.json"
META_FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
DEVICES = ("cpu", "gpu")
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")
# Largest |output - golden| a configuration may show. fp32 kernels (plain, oneDNN, ONNX Runtime) differ
# from dygraph by ~1e-7; reduced-precision TensorRT engines legitimately differ more.
GOLDEN_ATOL = {"fp32": 1e-5, "fp16": 5e-3, "int8": 5e-2}


class InferenceError(RuntimeError):
    """Base class of this module's errors."""


class CapabilityError(InferenceError):
    """The requested device or engine is not available in this Paddle build or on this machine."""


class GoldenMismatchError(InferenceError):
    """A predictor's outputs on the golden batch differ from the exported dygraph outputs."""


class ExportedModelError(InferenceError):
    """An exported model directory is incomplete or its metadata is malformed."""


class InputError(ValueError):
    """Inputs to `predict` have the wrong shape, dtype or values."""


@dataclass(frozen=True)
class PredictorOptions:
    device: str = "cpu"
    gpu_id: int = 0
    gpu_memory_mb: int = 256
    onednn: bool = False
    cpu_threads: int = 1
    ir_optim: bool = True
    memory_optim: bool = False
    tensorrt: str | None = None          # None, "fp32", "fp16" or "int8" (needs device="gpu")
    trt_min_subgraph_size: int = 3
    trt_max_batch: int = 4096            # dynamic-shape range of the batch dimension: [trt_min_batch, trt_max_batch]
    check_golden: bool = True
    trt_min_batch: int = 1
    trt_opt_batch: int = 512             # the batch size TensorRT tunes its kernels for
    golden_atol: float | None = None     # None: GOLDEN_ATOL of the precision
    # Keep intermediate tensors between runs (FLAGS_eager_delete_tensor_gb=-1 while the predictor is built).
    # Paddle's executor otherwise frees every intermediate after each op through a garbage-collector thread
    # pool; that hand-off costs more than DeepFM's kernels at small batches: measured 0.25 -> 0.10 ms of CPU
    # per batch-1 call, 0.40 -> 0.16 ms at batch 8, for ~30 MB more memory after a 4096-row batch.
    keep_intermediates: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.tensorrt is not None and self.tensorrt not in TENSORRT_PRECISIONS:
            problems.append(f"tensorrt must be None or one of {TENSORRT_PRECISIONS}, got {self.tensorrt!r}")
        if self.tensorrt is not None and self.device != "gpu":
            problems.append("tensorrt needs device='gpu'")
        if self.onednn and self.device != "cpu":
            problems.append("onednn is a CPU engine; it needs device='cpu'")
        for name in ("cpu_threads", "gpu_memory_mb", "trt_min_subgraph_size", "trt_min_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpu_id < 0:
            problems.append(f"gpu_id must be >= 0, got {self.gpu_id}")
        if not self.trt_min_batch <= self.trt_opt_batch <= self.trt_max_batch:
            problems.append(f"need trt_min_batch <= trt_opt_batch <= trt_max_batch, got "
                            f"{self.trt_min_batch}, {self.trt_opt_batch}, {self.trt_max_batch}")
        if problems:
            raise ValueError("invalid predictor options: " + "; ".join(problems))

    @property
    def precision(self) -> str:
        return self.tensorrt or "fp32"

    @property
    def golden_tolerance(self) -> float:
        return GOLDEN_ATOL[self.precision] if self.golden_atol is None else self.golden_atol

    def describe(self) -> str:
        """A one-line summary used in errors and benchmark reports."""
        on = {True: "on", False: "off"}
        if self.device == "gpu":
            engine = f"gpu:{self.gpu_id} tensorrt={self.tensorrt or 'off'}"
        else:
            engine = f"cpu onednn={on[self.onednn]} cpu_threads={self.cpu_threads}"
        keep = "" if self.keep_intermediates else " keep_intermediates=off"
        return f"{engine} ir_optim={on[self.ir_optim]} memory_optim={on[self.memory_optim]}{keep}"

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def capabilities() -> dict:
    """What this Paddle build and machine offer: CUDA, GPUs, TensorRT, oneDNN, ONNX Runtime."""
    import paddle

    cuda = paddle.is_compiled_with_cuda()
    trt = tuple(paddle.inference.get_trt_compile_version())
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "paddle_version": paddle.__version__,
        "cuda": cuda,
        "gpu_count": paddle.device.cuda.device_count() if cuda else 0,
        "tensorrt": trt != (0, 0, 0),
        "tensorrt_version": ".".join(map(str, trt)) if trt != (0, 0, 0) else None,
        "onednn": paddle.base.core.is_compiled_with_onednn(),
        "onnxruntime": ort_version,
        "cpu_count": os.cpu_count(),
    }


def check_capabilities(options: PredictorOptions) -> None:
    """Raise CapabilityError when `options` ask for something this build or machine does not have."""
    caps = capabilities()
    build = f"paddlepaddle {caps['paddle_version']}"
    if options.device == "gpu":
        if not caps["cuda"]:
            raise CapabilityError(f"device=gpu requested, but this {build} is a CPU-only build (not compiled with "
                                  "CUDA); install a CUDA build of paddlepaddle or use device=cpu")
        if caps["gpu_count"] == 0:
            raise CapabilityError(f"device=gpu requested, but no GPU is visible to this {build} (CUDA build)")
        if options.gpu_id >= caps["gpu_count"]:
            raise CapabilityError(f"gpu_id={options.gpu_id} requested, but only {caps['gpu_count']} GPU(s) visible")
    if options.tensorrt and not caps["tensorrt"]:
        raise CapabilityError(f"tensorrt={options.tensorrt} requested, but this {build} is not compiled with TensorRT "
                              "(paddle.inference.get_trt_compile_version() is 0.0.0)")
    if options.onednn and not caps["onednn"]:
        raise CapabilityError(f"onednn requested, but this {build} is not compiled with oneDNN")


@dataclass(frozen=True)
class ExportedModel:
    """An exported model: static model files plus the metadata (contract and golden batch) beside them."""

    directory: str
    model_file: str
    params_file: str
    meta: dict

    @property
    def name(self) -> str:
        return self.meta["model_name"]

    @property
    def feature_spec(self) -> FeatureSpec | None:
        """The Criteo FeatureSpec (None for a model of another schema: use `schema`)."""
        spec = self.meta.get("feature_spec")
        return FeatureSpec.from_dict(spec) if spec else None

    @property
    def schema(self):
        """The model's `ctrkit.schema.FeatureSchema` (model_meta `schema`; an older export without one: the
        Criteo schema of its `feature_spec`)."""
        from ctrkit.schema import FeatureSchema, schema_from_feature_spec

        if self.meta.get("schema"):
            return FeatureSchema.from_dict(self.meta["schema"])
        return schema_from_feature_spec(FeatureSpec.from_dict(self.meta["feature_spec"]))

    @property
    def input_names(self) -> list[str]:
        return [var["name"] for var in self.meta["inputs"]]

    @property
    def output_name(self) -> str:
        return self.meta["output"]["name"]

    def golden(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense float32 [N,n_dense], sparse int64 [N,sparse_width], prob float32 [N]) recorded at export."""
        g = self.meta["golden"]
        dense = np.asarray(g["dense"], dtype=np.float32).reshape(len(g["dense"]), self.meta["inputs"][0]["shape"][1])
        return (dense, np.asarray(g["sparse"], dtype=np.int64),
                np.asarray(g["prob"], dtype=np.float32))


_REQUIRED_META_KEYS = ("format_version", "model_name", "hyper_parameters", "model_prefix", "inputs", "output",
                       "feature_spec", "paddle_version", "golden")


def read_meta(path: str) -> dict:
    """Read and check a model_meta.json."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise ExportedModelError(f"no {META_FILE} at {path}; export the model with tools/to_static.py") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportedModelError(f"cannot read {path}: {exc}") from None
    missing = [k for k in _REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise ExportedModelError(f"{path}: missing key(s) {missing}")
    if meta["format_version"] != META_FORMAT_VERSION:
        raise ExportedModelError(f"{path}: format_version {meta['format_version']} is not supported "
                                 f"(this toolkit reads version {META_FORMAT_VERSION}); re-export the model")
    golden = meta["golden"]
    lengths = {len(golden.get(k, [])) for k in ("dense", "sparse", "prob")}
    if len(lengths) != 1 or 0 in lengths:
        raise ExportedModelError(f"{path}: golden batch needs dense, sparse and prob rows of one non-zero length")
    return meta


def load_exported_model(path: str, params_file: str | None = None) -> ExportedModel:
    """Load an export directory, its `serving_server/` directory, or a model file (`<prefix>.json`, with
    `params_file` defaulting to `<prefix>.pdiparams`); model_meta.json must sit beside the model files."""
    if os.path.isdir(path):
        directory = path
        meta = read_meta(os.path.join(directory, META_FILE))
        prefix = os.path.join(directory, meta["model_prefix"])
        model_file = prefix + ".json"
    elif os.path.isfile(path):
        directory = os.path.dirname(os.path.abspath(path))
        meta = read_meta(os.path.join(directory, META_FILE))
        model_file = path
        prefix = os.path.splitext(path)[0]
    else:
        raise ExportedModelError(f"no exported model at {path} (neither a directory nor a model file)")
    params_file = params_file or prefix + ".pdiparams"
    for file in (model_file, params_file):
        if not os.path.isfile(file):
            raise ExportedModelError(f"{directory}: model file {file} is missing")
    return ExportedModel(os.path.abspath(directory), os.path.abspath(model_file), os.path.abspath(params_file), meta)


class Predictor:
    """One Paddle Inference predictor with zero-copy input/output handles. Not thread-safe: use one per
    thread, or a PredictorPool."""

    def __init__(self, model: ExportedModel, options: PredictorOptions, native):
        self.model = model
        self.options = options
        self._native = native
        names = native.get_input_names()
        if sorted(names) != sorted(model.input_names):
            raise ExportedModelError(f"{model.model_file}: program inputs {names} differ from "
                                     f"{META_FILE} inputs {model.input_names}")
        self._inputs = [native.get_input_handle(name) for name in model.input_names]
        self._output = native.get_output_handle(model.output_name)
        self._check = _InputCheck(model)

    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """dense float32 [B,13], sparse int64 [B,26] -> click probabilities float32 [B]."""
        dense, sparse = self._check(dense, sparse)
        if dense.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        for handle, array in zip(self._inputs, (dense, sparse)):
            handle.reshape(array.shape)
            handle.copy_from_cpu(array)
        self._native.run()
        return self._output.copy_to_cpu().reshape(-1)

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        """predict() without the input checks, for callers that validated already (ctrkit.runtime): arrays in
        model input order, C-contiguous, the model's dtypes, at least one row."""
        for handle, array in zip(self._inputs, arrays):
            handle.reshape(array.shape)
            handle.copy_from_cpu(array)
        self._native.run()
        return self._output.copy_to_cpu().reshape(-1)

    def clone(self) -> "Predictor":
        """Another predictor sharing this one's weights (checked against the golden batch like any other)."""
        clone = Predictor(self.model, self.options, self._native.clone())
        if self.options.check_golden:
            verify_golden(clone, self.options.describe(), self.options.golden_tolerance)
        return clone


class _InputCheck:
    """Validates and normalises predict() inputs without copying arrays that are already right."""

    def __init__(self, model: ExportedModel):
        dense_var, sparse_var = model.meta["inputs"]
        self.dense_width = dense_var["shape"][1]
        self.sparse_width = sparse_var["shape"][1]
        self.id_limit = model.schema.sparse_feature_number

    def __call__(self, dense, sparse) -> tuple[np.ndarray, np.ndarray]:
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        sparse = np.asarray(sparse)
        if sparse.dtype.kind not in "iu":
            raise InputError(f"sparse_inputs must be integer ids, got dtype {sparse.dtype}")
        sparse = np.ascontiguousarray(sparse, dtype=np.int64)
        if dense.ndim != 2 or dense.shape[1] != self.dense_width:
            raise InputError(f"dense_input must have shape [B, {self.dense_width}], got {list(dense.shape)}")
        if sparse.ndim != 2 or sparse.shape[1] != self.sparse_width:
            raise InputError(f"sparse_inputs must have shape [B, {self.sparse_width}], got {list(sparse.shape)}")
        if dense.shape[0] != sparse.shape[0]:
            raise InputError(f"dense_input has {dense.shape[0]} rows but sparse_inputs has {sparse.shape[0]}")
        if dense.size and not np.isfinite(dense).all():
            row, col = np.argwhere(~np.isfinite(dense))[0]
            raise InputError(f"dense_input[{row}, {col}] is {dense[row, col]} (must be finite)")
        if sparse.size and (sparse.min() < 0 or sparse.max() >= self.id_limit):
            row, col = np.argwhere((sparse < 0) | (sparse >= self.id_limit))[0]
            raise InputError(f"sparse_inputs[{row}, {col}] = {sparse[row, col]} is outside the model's id range "
                             f"[0, {self.id_limit})")
        return dense, sparse


def verify_golden(predictor, description: str, atol: float) -> float:
    """Run the golden batch; raise GoldenMismatchError beyond `atol`. Returns the max abs diff."""
    model = predictor.model
    dense, sparse, expected = model.golden()
    got = predictor.predict(dense, sparse)
    diff = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.shape == expected.shape else float("inf")
    if not diff <= atol:  # also catches NaN
        raise GoldenMismatchError(
            f"predictor [{description}] for {model.directory} disagrees with the golden batch in {META_FILE}: "
            f"max abs diff {diff:.3g} > tolerance {atol:g} over {len(expected)} rows; refusing to serve wrong numbers")
    return diff


def _paddle_config(model: ExportedModel, options: PredictorOptions):
    from paddle import inference

    config = inference.Config(model.model_file, model.params_file)
    config.disable_glog_info()
    config.switch_ir_optim(options.ir_optim)
    if options.device == "gpu":
        config.enable_use_gpu(options.gpu_memory_mb, options.gpu_id)
        if not config.use_gpu():  # Paddle ignores the request on a CPU build; never run on CPU unasked
            raise CapabilityError("Paddle did not enable the GPU for this predictor (config.use_gpu() is False)")
        config.disable_onednn()
        if options.tensorrt:
            _enable_tensorrt(config, model, options)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(options.cpu_threads)
        if options.onednn:
            config.enable_onednn()
            config.delete_pass("inplace_pass")  # oneDNN in-place ops corrupt tensors other ops still read
        else:
            config.disable_onednn()
    if options.memory_optim:
        config.enable_memory_optim()
    return config


def _enable_tensorrt(config, model: ExportedModel, options: PredictorOptions) -> None:
    from paddle.inference import PrecisionType

    precision = {"fp32": PrecisionType.Float32, "fp16": PrecisionType.Half, "int8": PrecisionType.Int8}
    config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=options.trt_max_batch,
                                  min_subgraph_size=options.trt_min_subgraph_size,
                                  precision_mode=precision[options.tensorrt], use_static=False,
                                  use_calib_mode=options.tensorrt == "int8")
    shapes = {var["name"]: var["shape"][1:] for var in model.meta["inputs"]}
    config.set_trt_dynamic_shape_info(
        {name: [options.trt_min_batch, *shape] for name, shape in shapes.items()},
        {name: [options.trt_max_batch, *shape] for name, shape in shapes.items()},
        {name: [options.trt_opt_batch, *shape] for name, shape in shapes.items()})


def create_predictor(path: str | ExportedModel, options: PredictorOptions | None = None) -> Predictor:
    """Build a predictor for an exported model; checks the golden batch unless `options.check_golden` is False."""
    import paddle
    from paddle import inference

    options = options or PredictorOptions()
    model = path if isinstance(path, ExportedModel) else load_exported_model(path)
    check_capabilities(options)
    config = _paddle_config(model, options)
    try:
        # a process-wide flag, read when the predictor's executor is built: set it for this predictor
        paddle.set_flags({"FLAGS_eager_delete_tensor_gb": -1.0 if options.keep_intermediates else 0.0})
        native = inference.create_predictor(config)
    except Exception as exc:
        if options.memory_optim and "memory_optimize_pass" in str(exc):
            raise CapabilityError(
                f"memory_optim cannot be used with {model.model_file}: Paddle {capabilities()['paddle_version']} "
                "cannot create a predictor with memory optimisation for new-IR (.json) models "
                f"({str(exc).splitlines()[0]}); use memory_optim=False") from None
        raise InferenceError(f"cannot create predictor [{options.describe()}] for {model.model_file}: {exc}") from exc
    predictor = Predictor(model, options, native)
    if options.check_golden:
        verify_golden(predictor, options.describe(), options.golden_tolerance)
    return predictor


class PredictorPool:
    """`size` predictors sharing one set of weights, handed out one per thread:

        with pool.acquire() as predictor:
            probs = predictor.predict(dense, sparse)
    """

    def __init__(self, path: str | ExportedModel, options: PredictorOptions | None = None, size: int = 1):
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        first = create_predictor(path, options)
        self.model = first.model
        self.options = first.options
        self.size = size
        self._free: queue.SimpleQueue[Predictor] = queue.SimpleQueue()
        self._free.put(first)
        for _ in range(size - 1):
            self._free.put(first.clone())

    @contextlib.contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[Predictor]:
        """Borrow a predictor for the duration of the `with` block; TimeoutError if none frees up in time."""
        try:
            predictor = self._free.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no free predictor in the pool of {self.size} within {timeout} s") from None
        try:
            yield predictor
        finally:
            self._free.put(predictor)

    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        with self.acquire() as predictor:
            return predictor.predict(dense, sparse)


class OnnxPredictor:
    """The exported model.onnx under ONNX Runtime (a comparison backend), with the same predict() contract."""

    def __init__(self, model: ExportedModel, session):
        self.model = model
        self._session = session
        self._output_names = [session.get_outputs()[0].name]
        self._check = _InputCheck(model)

    def predict(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        dense, sparse = self._check(dense, sparse)
        if dense.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        feed = dict(zip(self.model.input_names, (dense, sparse)))
        return self._session.run(self._output_names, feed)[0].reshape(-1)

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        """predict() without the input checks (arrays in model input order, already validated)."""
        return self._session.run(self._output_names, dict(zip(self.model.input_names, arrays)))[0].reshape(-1)


def find_onnx_file(model: ExportedModel) -> str | None:
    """`model.onnx` in the model's directory, or in the export directory above a `serving_server/`."""
    for directory in (model.directory, os.path.dirname(model.directory)):
        candidate = os.path.join(directory, ONNX_FILE)
        if os.path.isfile(candidate) and (directory == model.directory
                                          or os.path.basename(model.directory) == "serving_server"):
            return candidate
    return None


def create_onnx_predictor(path: str | ExportedModel, cpu_threads: int = 1, check_golden: bool = True,
                          graph_optimization: bool = True) -> OnnxPredictor:
    """ONNX Runtime (CPU) session for `<export dir>/model.onnx`, checked against the golden batch. The session is
    thread-safe (and releases the GIL while it runs), so one predictor may serve several threads.
    `graph_optimization=False` (the flag `--ir_optim False`) turns ONNX Runtime's graph optimisations off."""
    model = path if isinstance(path, ExportedModel) else load_exported_model(path)
    onnx_file = find_onnx_file(model)
    if onnx_file is None:
        raise ExportedModelError(f"{model.directory} has no {ONNX_FILE}; export with tools/to_static.py --onnx")
    try:  # not through capabilities(): that imports paddle, which an ONNX Runtime server does not need
        import onnxruntime
    except ImportError:
        raise CapabilityError("onnxruntime is not installed (pip install onnxruntime, or "
                              "requirements/serving.txt)") from None

    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = cpu_threads
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3  # paddle2onnx leaves unused initialisers; ORT warns about each
    if not graph_optimization:
        session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(onnx_file, session_options, providers=["CPUExecutionProvider"])
    predictor = OnnxPredictor(model, session)
    if check_golden:
        verify_golden(predictor, f"onnxruntime cpu_threads={cpu_threads} graph_optimization="
                      f"{'on' if graph_optimization else 'off'}", GOLDEN_ATOL["fp32"])
    return predictor
