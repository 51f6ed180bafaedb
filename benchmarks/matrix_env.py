"""The environment header of a benchmark report: host, OS, Python, Paddle build capabilities, GPUs, load."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess

import psutil


def capture_environment() -> dict:
    """Everything a reader needs to judge the numbers. GPU fields come from NVML when a driver is present."""
    import numpy
    import onnxruntime
    import paddle
    from ctrkit.inference import capabilities

    memory = psutil.virtual_memory()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_total_gb": round(memory.total / 2**30, 1),
        "memory_available_gb": round(memory.available / 2**30, 1),
        "os": os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "paddle": paddle.__version__,
        "paddle_capabilities": capabilities(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
        **gpu_info(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "git_commit": git_commit(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def os_name() -> str:
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.platform()


def gpu_info() -> dict:
    """{"gpus": [...], "gpu_note": why the list is empty}. A missing NVML library means no NVIDIA driver."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        return {"gpus": [], "gpu_note": "no NVIDIA driver (NVML library not found)"}
    except pynvml.NVMLError as e:
        return {"gpus": [], "gpu_note": f"NVML could not start: {e}"}
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": _text(pynvml.nvmlDeviceGetName(handle)),
                         "memory_total_mb": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20})
        return {"gpus": gpus, "gpu_driver": _text(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver_version": pynvml.nvmlSystemGetCudaDriverVersion(),
                "gpu_note": "" if gpus else "NVIDIA driver present but no GPU visible"}
    finally:
        pynvml.nvmlShutdown()


def git_commit() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
