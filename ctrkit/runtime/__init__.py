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
from ctrkit.runtime.runtime import LoadedModel, ModelRuntime, Prediction, freeze_startup_heap, resolve_model_dir
from ctrkit.runtime.versions import ModelLoadError, NotReadyError, VersionManager, is_model_dir, list_versions

__all__ = ["add_runtime_flags", "Arrivals", "BACKENDS", "BatchingOptions", "contract_of", "DirectRunner",
           "DynamicBatcher", "FieldSlice", "freeze_startup_heap", "InputSpec", "InstancePool", "is_model_dir",
           "list_versions", "load_backend", "LoadedModel", "loop_arrivals", "LoopBatcher", "ModelContract",
           "ModelLoadError", "ModelRuntime", "MULTIPROC_ENV", "NotReadyError", "options_from_args", "Prediction",
           "predictor_options_from_args", "resolve_model_dir", "RuntimeInputError", "RuntimeMetrics", "RuntimeOptions",
           "str2bool", "VersionManager"]
