"""The served model as the Open Inference Protocol sees it: name, versions, readiness, tensor metadata, and
`infer(inputs) -> outputs`. A thin view of the protocol-free runtime (`ctrkit.runtime`); nothing here knows HTTP
or gRPC."""
from __future__ import annotations

import numpy as np

from serving.oip.protocol import BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNAVAILABLE, OipError, TensorSpec

PLATFORMS = {"paddle": "paddle_inference", "onnxruntime": "onnxruntime_onnx", "constant": "constant"}
_DTYPES = {"float32": "FP32", "int64": "INT64", "float64": "FP64", "int32": "INT32"}
OUTPUT = "prob"


def error_kind(exc: Exception):
    """The OIP error kind of a runtime exception (400 bad input, 413 too large, 503 not ready), else None."""
    from ctrkit.runtime import NotReadyError, RuntimeInputError

    if isinstance(exc, RuntimeInputError):
        return TOO_LARGE if exc.kind == "too_large" else BAD_REQUEST
    if isinstance(exc, NotReadyError):
        return UNAVAILABLE
    return None


class OipModel:
    """One model served under `name`, backed by a started `ctrkit.runtime.ModelRuntime`."""

    def __init__(self, runtime, name: str | None = None, backend: str = "paddle"):
        self.runtime = runtime
        meta = runtime.current.meta
        self.name = name or meta.get("model_name", "model")
        self.platform = PLATFORMS.get(backend, backend)
        self.inputs = [TensorSpec(v["name"], _DTYPES.get(v["dtype"], v["dtype"].upper()), list(v["shape"]))
                       for v in meta["inputs"]]
        self.outputs = [TensorSpec(OUTPUT, "FP32", [-1, 1])]

    # ---- state
    @property
    def ready(self) -> bool:
        return bool(self.runtime.ready)

    @property
    def version(self) -> str:
        return str(self.runtime.version)

    def versions(self) -> list[str]:
        return [self.version] if self.ready else []

    def check(self, name: str, version: str | None) -> None:
        """Raise OipError unless `name` (and `version`, when given) is what this server serves right now."""
        if name != self.name:
            raise OipError(NOT_FOUND, f"unknown model '{name}'; this server serves '{self.name}'")
        if not self.ready:
            raise OipError(UNAVAILABLE, f"model '{self.name}' is not ready")
        if version and version != self.version:
            raise OipError(NOT_FOUND, f"model '{self.name}' version '{version}' is not served; the served version "
                                      f"is {self.version}")

    def metadata(self) -> dict:
        return {"name": self.name, "versions": self.versions(), "platform": self.platform,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    # ---- inference
    def infer(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        """-> ({"prob": float32 [B, 1]}, the version that answered); OipError for what the runtime refuses."""
        try:
            result = self.runtime.predict(inputs)
        except Exception as e:  # noqa: BLE001 - the runtime's refusals become protocol errors
            kind = error_kind(e)
            if kind is None:
                raise
            raise OipError(kind, str(e)) from None
        return {OUTPUT: result.probs.reshape(-1, 1)}, str(result.version)

    async def infer_async(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        """infer() for the event loop: waits for the runtime's batcher without blocking the loop."""
        try:
            result = await self.runtime.predict_async(inputs)
        except Exception as e:  # noqa: BLE001
            kind = error_kind(e)
            if kind is None:
                raise
            raise OipError(kind, str(e)) from None
        return {OUTPUT: result.probs.reshape(-1, 1)}, str(result.version)
