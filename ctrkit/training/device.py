"""Run set-up: the device (never a silent CPU fallback), CPU math threads, the job context, seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import paddle

from ctrkit.config import Config
from ctrkit.distributed import Context, setup


class DeviceError(RuntimeError):
    """The configured device is not available in this build or on this machine."""


def select_device(use_gpu: bool, device_id: int = 0) -> str:
    """Set Paddle's device; a GPU request this build or machine cannot serve is an error, never a CPU fallback."""
    if not use_gpu:
        paddle.set_device("cpu")
        return "cpu"
    if not paddle.is_compiled_with_cuda():
        raise DeviceError("runner.use_gpu is true but this paddlepaddle build has no CUDA support "
                          f"(paddle {paddle.__version__}); install a GPU build or set runner.use_gpu=false")
    if paddle.device.cuda.device_count() <= device_id:
        raise DeviceError(f"runner.use_gpu is true but CUDA device {device_id} is not visible "
                          f"({paddle.device.cuda.device_count()} device(s))")
    paddle.set_device(f"gpu:{device_id}")
    return f"gpu:{device_id}"


def start_run(config: Config) -> tuple[Context, str]:
    """Job context, device and CPU math threads for a run."""
    context = setup(config.runner["use_fleet"])
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", "0")) if context.distributed else 0
    device = select_device(config.runner["use_gpu"], local_rank)
    threads = config.runner["cpu_threads"] or max(1, (os.cpu_count() or 1) // context.local_world)
    paddle.base.core.set_num_threads(threads)
    return context, device


def seed_everything(seed: int) -> None:
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)
