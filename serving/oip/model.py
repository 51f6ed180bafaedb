"""The served model as the Open Inference Protocol sees it: name, versions, readiness, tensor metadata, and
`infer(inputs) -> outputs`. A thin view of the protocol-free runtime (`ctrkit.runtime`); nothing here knows HTTP
or gRPC."""
from __future__ import annotations

import numpy as np

from ctrkit.runtime.metrics import VersionStatistics
from serving.oip.protocol import BAD_REQUEST, NOT_FOUND, TOO_LARGE, UNAVAILABLE, OipError, TensorSpec

PLATFORMS = {"paddle": "paddle_inference", "onnxruntime": "onnxruntime_onnx", "constant": "constant"}
NOT_SERVED = "not served: this server serves one version, the highest that passed its checks"
NOT_TRIED = "not loaded yet: newer than the served version, tried at the next version check"
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
        self.backend = backend
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
        self.check_name(name)
        if not self.ready:
            raise OipError(UNAVAILABLE, f"model '{self.name}' is not ready")
        if version and version != self.version:
            raise OipError(NOT_FOUND, f"model '{self.name}' version '{version}' is not served; the served version "
                                      f"is {self.version}")

    def check_name(self, name: str) -> None:
        """Raise OipError (404) unless `name` is the model this server serves."""
        if name != self.name:
            raise OipError(NOT_FOUND, f"unknown model '{name}'; this server serves '{self.name}'")

    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics extension: {"model_stats": [...]} for every version that is served or has answered
        requests (or only `version`); `name` "" means every model (this one). Totals since the server started."""
        if name:
            self.check_name(name)
        totals = {v: s for (v, backend), s in self.runtime.metrics.statistics().items()
                  if backend == self.backend and (s.succeeded or s.failed)}
        if self.ready:
            totals.setdefault(self.version, VersionStatistics())
        if version:
            if version not in totals:
                raise OipError(NOT_FOUND, f"model '{self.name}' version '{version}' is not served and has answered "
                                          f"no requests; versions with statistics: {sorted(totals, key=int)}")
            totals = {version: totals[version]}
        return {"model_stats": [_version_statistics(self.name, v, totals[v]) for v in sorted(totals, key=int)]}

    def config(self, name: str, version: str = "") -> dict:
        """Triton's model configuration extension: the served model as a Triton `config.pbtxt` would declare it
        (protobuf JSON names; max_batch_size > 0, so dims leave out the batch dimension)."""
        self.check(name, version)
        options = self.runtime.options
        batching = options.batching
        config = {"name": self.name, "platform": self.platform, "backend": self.backend,
                  "version_policy": {"latest": {"num_versions": 1}},
                  "max_batch_size": batching.max_request_batch,
                  "input": [_config_tensor(t) for t in self.inputs],
                  "output": [_config_tensor(t) for t in self.outputs],
                  "instance_group": [{"name": self.name, "count": options.instances,
                                      "kind": "KIND_GPU" if options.predictor.device == "gpu" else "KIND_CPU",
                                      "gpus": [options.predictor.gpu_id] if options.predictor.device == "gpu"
                                      else []}]}
        if batching.enabled:
            # the longest a request waits for others to join its model call (--batch_window_ms, --batch_join_us)
            config["dynamic_batching"] = {"max_queue_delay_microseconds":
                                          int(max(batching.window_ms * 1000, batching.join_us))}
        return config

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every version on disk (and the served one), READY or UNAVAILABLE with why."""
        status = self.runtime.status()
        serving, on_disk, refused = status["serving"], _on_disk(status), status["refused"]
        entries = []
        for v in sorted(set(on_disk) | ({serving} if serving is not None else set())):
            if v == serving and self.ready:
                entries.append({"name": self.name, "version": str(v), "state": "READY", "reason": ""})
            elif not ready_only:
                reason = refused.get(str(v)) or ("the server is shutting down" if v == serving else
                                                 NOT_TRIED if serving is not None and v > serving else NOT_SERVED)
                entries.append({"name": self.name, "version": str(v), "state": "UNAVAILABLE", "reason": reason})
        return entries

    def load(self, name: str, parameters: dict) -> None:
        """Triton's repository load, for the one model served: look for a newer version on disk now and serve
        the newest that passes its checks, before answering (blocking: call it off the event loop). Every other
        worker of a `--workers` group is told to look too. OipError when the newest version on disk was refused
        (with why; the served version keeps serving)."""
        from serving.supervisor import reload_all_workers

        self.check_name(name)
        if parameters:
            raise OipError(BAD_REQUEST, f"load parameters ({', '.join(sorted(parameters))}) are not supported: "
                                        "publish the model as a new numbered version directory and load again")
        if self.runtime.draining:
            raise OipError(UNAVAILABLE, "the server is shutting down")
        self.runtime.check_now()
        reload_all_workers()
        status = self.runtime.status()
        on_disk = _on_disk(status)
        newest = str(max(on_disk)) if on_disk else None
        if newest in status["refused"]:
            raise OipError(BAD_REQUEST, f"failed to load '{name}' version {newest}: {status['refused'][newest]}; "
                                        f"version {status['serving']} keeps serving")

    def unload(self, name: str) -> None:
        """Triton's repository unload: not offered (this server exists to serve its one model)."""
        self.check_name(name)
        raise OipError(BAD_REQUEST, f"unloading is not offered: this server serves only '{self.name}'; stop it "
                                    "with SIGTERM (requests in flight finish first)")

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


def _on_disk(status: dict) -> list[int]:
    """The version numbers on disk of a runtime status ([] when the directory could not be listed)."""
    return status["available"] if isinstance(status["available"], list) else []


def _duration(count: float, seconds: float) -> dict:
    return {"count": int(count), "ns": int(round(seconds * 1e9))}


def _version_statistics(name: str, version: str, s: VersionStatistics) -> dict:
    """One version's totals in Triton's ModelStatistics shape. Every request's time in the runtime is `success`;
    its batch's model call is `compute_infer` (input merging and output slicing included, so compute_input and
    compute_output are 0 ns); the rest, validation and waiting for the batcher, is `queue`. Failed requests are
    counted, not timed; there is no response cache. `batch_stats`: model calls and their time per batch size."""
    ok = s.succeeded
    return {"name": name, "version": version, "last_inference": int(s.last_inference_s * 1000),
            "inference_count": int(s.samples), "execution_count": int(s.model_calls),
            "inference_stats": {"success": _duration(ok, s.latency_s), "fail": _duration(s.failed, 0.0),
                                "queue": _duration(ok, max(0.0, s.latency_s - s.compute_s)),
                                "compute_input": _duration(ok, 0.0), "compute_infer": _duration(ok, s.compute_s),
                                "compute_output": _duration(ok, 0.0), "cache_hit": _duration(0, 0.0),
                                "cache_miss": _duration(0, 0.0)},
            "batch_stats": [{"batch_size": size, "compute_input": _duration(calls, 0.0),
                             "compute_infer": _duration(calls, seconds), "compute_output": _duration(calls, 0.0)}
                            for size, (calls, seconds) in sorted(s.batches.items())]}


def _config_tensor(t: TensorSpec) -> dict:
    return {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape[1:])}
