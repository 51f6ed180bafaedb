"""One flags -> options mapping for every server, `tools/paddle_infer.py` and the benchmark.

    parser = argparse.ArgumentParser()
    add_runtime_flags(parser)                # backend + predictor flags (+ batching/versions with serving=True)
    options = options_from_args(parser.parse_args())   # RuntimeOptions; ValueError for impossible mixes

Flag names follow Paddle Serving (`paddle_serving_server.serve`) and PaddleRec (`tools/paddle_infer.py`). Each
setting has ONE documented spelling; the other spellings users bring are accepted as aliases (hidden from --help):

| setting | flag | aliases |
| --- | --- | --- |
| backend | `--backend paddle\\|onnxruntime\\|constant` | |
| GPU | `--use_gpu [BOOL]`, `--gpu_ids N` | `--gpu_id` |
| oneDNN | `--enable_mkldnn [BOOL]` | `--use_mkl`, `--use_mkldnn`, `--enable_onednn` |
| TensorRT | `--use_trt [BOOL]`, `--precision fp32\\|fp16\\|int8` | `--enable_tensorRT`, `--enable_tensorrt` |
| math threads per predictor | `--cpu_threads N` | `--cpu_num` |
| IR passes | `--ir_optim [BOOL]` (default on) | |
| memory optimisation | `--memory_optim [BOOL]` (default off) | `--mem_optim`; `--mem_optim_off` (the default) |

`[BOOL]` flags take no value (on), or `True/False`, `1/0`, `yes/no`, as PaddleRec writes `--use_gpu False`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace

from ctrkit.inference import TENSORRT_PRECISIONS, PredictorOptions

BACKENDS = ("paddle", "onnxruntime", "constant")
TRUE = {"true", "1", "yes", "y", "on", "t"}
FALSE = {"false", "0", "no", "n", "off", "f"}


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False, 1/0, yes/no), got {value!r}")


def _precision(value: str) -> str:
    text = value.strip().lower()
    if text not in TENSORRT_PRECISIONS:
        raise argparse.ArgumentTypeError(f"precision must be one of {', '.join(TENSORRT_PRECISIONS)} (any case), "
                                         f"got {value!r}")
    return text


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    window_ms: float = 0.0          # extra wait to gather more requests; 0 = merge only what is already queued
    max_samples: int = 1024         # largest merged predictor batch
    max_request_batch: int = 4096   # larger requests are refused (RuntimeInputError kind "too_large")
    join_us: float = 1000.0         # asyncio front-ends: wait up to this for requests known to be arriving; 0 = off

    def __post_init__(self) -> None:
        if self.window_ms < 0 or self.max_samples < 1 or self.max_request_batch < 1 or self.join_us < 0:
            raise ValueError("batching needs window_ms >= 0, join_us >= 0, max_samples >= 1 and "
                             "max_request_batch >= 1")


@dataclass(frozen=True)
class RuntimeOptions:
    """Everything `ModelRuntime` needs besides the model directory."""

    backend: str = "paddle"                       # paddle | onnxruntime | constant (benchmark ceiling)
    predictor: PredictorOptions = field(default_factory=PredictorOptions)
    instances: int = 0                            # model instances; 0: auto (paddle 1, others 2), see below
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    version_poll_s: float = 5.0                   # 0: only on reload()
    constant_value: float = 0.5                   # what the constant backend answers

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.instances == 0:
            # Paddle's CPU run() holds the GIL, so a second predictor in one process runs nothing in parallel and
            # costs a copy of the weights (~40 MB for DeepFM); ONNX Runtime releases the GIL and shares one session.
            object.__setattr__(self, "instances", 1 if self.backend == "paddle" and self.predictor.device == "cpu"
                               else 2)
        if self.instances < 1:
            raise ValueError(f"instances (--predictors) must be >= 1, got {self.instances}")
        if self.version_poll_s < 0:
            raise ValueError("version_poll_s must be >= 0")
        check_backend_options(self.backend, self.predictor)

    def describe(self) -> str:
        if self.backend == "paddle":
            engine = f"paddle {self.predictor.describe()}"
        elif self.backend == "onnxruntime":
            engine = (f"onnxruntime cpu intra_op_threads={self.predictor.cpu_threads} "
                      f"graph_optimization={'on' if self.predictor.ir_optim else 'off'}")
        else:
            engine = f"constant {self.constant_value:g}"
        return f"{engine} instances={self.instances}"

    def with_predictor(self, **changes) -> "RuntimeOptions":
        return replace(self, predictor=replace(self.predictor, **changes))


def check_backend_options(backend: str, p: PredictorOptions) -> None:
    """Options a backend cannot honour are an error, never silently dropped."""
    if backend == "paddle":
        return
    refused = []
    if p.device != "cpu":
        refused.append("--use_gpu (this toolkit runs ONNX Runtime with its CPU execution provider only)"
                       if backend == "onnxruntime" else "--use_gpu")
    if p.onednn:
        refused.append("--enable_mkldnn (a Paddle Inference engine)")
    if p.tensorrt:
        refused.append("--use_trt / --precision (Paddle Inference's TensorRT subgraphs)")
    if p.memory_optim:
        refused.append("--memory_optim (a Paddle Inference pass)")
    if refused:
        raise ValueError(f"--backend {backend} cannot honour {'; '.join(refused)}; drop them or use --backend paddle")


def add_runtime_flags(parser: argparse.ArgumentParser, serving: bool = True, cpu_threads_default: int = 1,
                      backends: tuple[str, ...] = BACKENDS) -> None:
    """Add the backend and predictor flags (and with `serving`, the batching and version flags)."""
    hide = argparse.SUPPRESS
    g = parser.add_argument_group("model runtime (ctrkit.runtime)")
    flag = dict(type=str2bool, nargs="?", const=True, metavar="BOOL")
    g.add_argument("--backend", choices=backends, default="paddle",
                   help="paddle: Paddle Inference (default); onnxruntime: the export's model.onnx"
                        + ("; constant: answers a constant (the benchmark's transport ceiling)"
                           if "constant" in backends else ""))
    g.add_argument("--use_gpu", default=False, help="run on a GPU (needs a CUDA build of paddlepaddle; refused, "
                   "never silently CPU)", **flag)
    g.add_argument("--gpu_ids", "--gpu_id", dest="gpu_ids", default="0", help="GPU to use (one per process)")
    g.add_argument("--gpu_memory_mb", type=int, default=256, help=hide)
    g.add_argument("--enable_mkldnn", "--use_mkl", "--use_mkldnn", "--enable_onednn", dest="enable_mkldnn",
                   default=False, help="oneDNN on the CPU (aliases: --use_mkl, --use_mkldnn)", **flag)
    g.add_argument("--use_trt", "--enable_tensorRT", "--enable_tensorrt", dest="use_trt", default=False,
                   help="TensorRT subgraphs (needs --use_gpu; alias --enable_tensorRT)", **flag)
    g.add_argument("--precision", type=_precision, default="fp32", help="TensorRT precision: fp32, fp16, int8")
    g.add_argument("--cpu_threads", "--cpu_num", dest="cpu_threads", type=int, default=cpu_threads_default,
                   help="math threads per predictor")
    g.add_argument("--ir_optim", default=True, help="IR optimisation passes (default on; --ir_optim False: off)",
                   **flag)
    g.add_argument("--memory_optim", "--mem_optim", dest="memory_optim", default=False,
                   help="memory optimisation (Paddle 3 cannot build it for .json models: a clear error)", **flag)
    g.add_argument("--keep_intermediates", default=True, help="Paddle: keep intermediate tensors between runs "
                   "(default on: 2-2.5x less CPU per small batch, some MB more memory)", **flag)
    g.add_argument("--mem_optim_off", action="store_true", help="Paddle Serving's flag; memory optimisation is "
                   "already off by default here")
    if serving:
        g.add_argument("--predictors", type=int, default=0, help="model instances (parallel model calls); default "
                       "0 = auto: 1 for Paddle on the CPU (its run holds the GIL), else 2")
        g.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                       help="dynamic batching: merge concurrent requests into one model call")
        g.add_argument("--batch_window_ms", type=float, default=0.0, help="extra time to wait for requests to merge "
                       "(0: merge only what is already queued, adding no latency)")
        g.add_argument("--batch_join_us", type=float, default=BatchingOptions.join_us, help="asyncio front-ends: when requests are "
                       "known to be arriving (e.g. gRPC messages being received), a model call waits up to this many "
                       "microseconds for them to join its batch, and never longer than the model's calls take "
                       "(0: off; an idle server never waits)")
        g.add_argument("--batch_max_samples", type=int, default=1024, help="largest merged model batch")
        g.add_argument("--max_batch_size", type=int, default=4096, help="largest batch one request may carry")
        g.add_argument("--version_poll_s", type=float, default=5.0, help="how often to look for a new model "
                       "version (0: only on SIGHUP)")


def predictor_options_from_args(args: argparse.Namespace, check_golden: bool = True) -> PredictorOptions:
    """PredictorOptions from the flags of `add_runtime_flags`; ValueError for impossible mixes."""
    use_gpu, use_trt = bool(args.use_gpu), bool(args.use_trt)
    if use_trt and not use_gpu:
        raise ValueError("--use_trt needs --use_gpu")
    if args.precision != "fp32" and not use_trt:
        raise ValueError(f"--precision {args.precision} needs --use_trt (it sets the TensorRT precision)")
    if use_gpu and args.enable_mkldnn:
        raise ValueError("--enable_mkldnn is a CPU engine; drop it with --use_gpu")
    if args.memory_optim and getattr(args, "mem_optim_off", False):
        raise ValueError("--memory_optim and --mem_optim_off contradict each other")
    gpu_ids = str(args.gpu_ids).strip()
    try:
        gpu_id = int(gpu_ids)
    except ValueError:
        raise ValueError(f"--gpu_ids takes one GPU id per process, got '{gpu_ids}' (run one server per GPU, "
                         "or --workers with one GPU)") from None
    if args.cpu_threads < 1:
        raise ValueError(f"--cpu_threads must be >= 1, got {args.cpu_threads}")
    return PredictorOptions(device="gpu" if use_gpu else "cpu", gpu_id=gpu_id, gpu_memory_mb=args.gpu_memory_mb,
                            onednn=bool(args.enable_mkldnn), cpu_threads=args.cpu_threads,
                            ir_optim=bool(args.ir_optim), memory_optim=bool(args.memory_optim),
                            tensorrt=args.precision if use_trt else None, check_golden=check_golden,
                            keep_intermediates=bool(getattr(args, "keep_intermediates", True)))


def options_from_args(args: argparse.Namespace) -> RuntimeOptions:
    """RuntimeOptions from the flags of `add_runtime_flags`; ValueError (one clear line) for impossible mixes."""
    predictor = predictor_options_from_args(args)
    batching = BatchingOptions()
    extra = {}
    if hasattr(args, "predictors"):
        if args.predictors < 0:
            raise ValueError(f"--predictors must be >= 1 (0: auto), got {args.predictors}")
        for name in ("batch_max_samples", "max_batch_size"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if args.batch_window_ms < 0 or args.version_poll_s < 0 or args.batch_join_us < 0:
            raise ValueError("--batch_window_ms, --batch_join_us and --version_poll_s must be >= 0")
        batching = BatchingOptions(args.batching, args.batch_window_ms, args.batch_max_samples, args.max_batch_size,
                                   args.batch_join_us)
        extra = dict(instances=args.predictors, version_poll_s=args.version_poll_s)
    return RuntimeOptions(backend=args.backend, predictor=predictor, batching=batching, **extra)
