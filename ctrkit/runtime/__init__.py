"""The protocol-free serving runtime (see docs/INTERFACES.md, "Serving runtime").

Every front-end (`serving.rpc`, `serving.upload`, `serving.oip`), `tools/paddle_infer.py` and the benchmark load
models through here: numbered versions with hot swap, backends Paddle Inference / ONNX Runtime (/ constant, the
benchmark's ceiling), golden checks, one dynamic batcher, one metrics registry, readiness. Input is arrays
`{"dense_input": float32 [B, n_dense], "sparse_inputs": int64 [B, sparse_width]}` (names and widths from the
model's model_meta.json); output float32 [B].
"""
from ctrkit.runtime.backends import InstancePool, load_backend
from ctrkit.runtime.batching import Arrivals, DirectRunner, DynamicBatcher, LoopBatcher, loop_arrivals
from ctrkit.runtime.contract import FieldSlice, InputSpec, ModelContract, RuntimeInputError, contract_of
from ctrkit.runtime.metrics import MULTIPROC_ENV, RuntimeMetrics
from ctrkit.runtime.options import (BACKENDS, BatchingOptions, RuntimeOptions, add_runtime_flags,
                                    options_from_args, predictor_options_from_args, str2bool)
from ctrkit.runtime.runtime import LoadedModel, ModelRuntime, Prediction, resolve_model_dir
from ctrkit.runtime.versions import ModelLoadError, NotReadyError, VersionManager, is_model_dir, list_versions

__all__ = ["Arrivals", "BACKENDS", "BatchingOptions", "DirectRunner", "DynamicBatcher", "FieldSlice", "InputSpec",
           "InstancePool", "LoadedModel", "ModelContract", "ModelRuntime", "MULTIPROC_ENV", "ModelLoadError", "NotReadyError",
           "Prediction", "RuntimeInputError", "RuntimeMetrics", "RuntimeOptions", "VersionManager",
           "add_runtime_flags", "contract_of", "is_model_dir", "list_versions", "load_backend", "loop_arrivals",
           "LoopBatcher",
           "options_from_args", "predictor_options_from_args", "resolve_model_dir", "str2bool"]
