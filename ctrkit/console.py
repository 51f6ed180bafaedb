"""Console scripts installed by `pip install .` (declared in pyproject.toml's [project.scripts]).

Each one runs a repository tool or server exactly as its `python tools/<x>.py` / `python -m serving.<x>` form
does, with the same flags and output; `ctr-train --help` shows them.

| console script       | runs                          | needs the extra |
| -------------------- | ----------------------------- | --------------- |
| `ctr-train`          | `tools/trainer.py`            | train           |
| `ctr-infer`          | `tools/infer.py`              | train           |
| `ctr-export`         | `tools/to_static.py`          | train           |
| `ctr-predict`        | `tools/paddle_infer.py`       | (core)          |
| `ctr-gen-data`       | `tools/gen_data.py`           | (core)          |
| `ctr-convert`        | `tools/convert.py`            | (core)          |
| `ctr-prepare-criteo` | `tools/prepare_criteo.py`     | train           |
| `ctr-client`         | `tools/rec_client.py`         | serving         |
| `ctr-upload-client`  | `tools/upload_client.py`      | serving         |
| `ctr-serve-rpc`      | `python -m serving.rpc`       | serving         |
| `ctr-serve-upload`   | `python -m serving.upload`    | serving         |
| `ctr-serve-oip`      | `python -m serving.oip`       | serving         |

In the installed package the tools, the zoo and the servers are `ctrkit_tools`, `ctrkit_models` and
`ctrkit_serving` (see setup.py); the module names below are rewritten to those when the wheel is built.
"""
from __future__ import annotations

import runpy
import sys

# a missing third-party module -> the extra that provides it
_EXTRA_OF = {
    "grpc": "serving", "grpc_health": "serving", "flask": "serving",
    "werkzeug": "serving", "waitress": "serving", "aiohttp": "serving", "redis": "serving", "requests": "serving",
    "onnxruntime": "serving", "tqdm": "train", "visualdl": "train", "paddle2onnx": "train", "onnx": "train",
    "psutil": "bench", "matplotlib": "bench", "pynvml": "bench",
}


def _run(module: str) -> None:
    """Run `module` as `__main__` (argv unchanged, so `--help` shows the console script's name), after the
    process-wide CPU settings every entry point applies (ctrkit.cpu_env; before paddle is imported)."""
    from ctrkit.cpu_env import configure_cpu_env

    configure_cpu_env()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in _EXTRA_OF:
            raise
        print(f"error: {exc.name} is not installed; this command needs ctrkit's '{_EXTRA_OF[top]}' extra: "
              f"pip install 'ctrkit[{_EXTRA_OF[top]}]'", file=sys.stderr)
        sys.exit(2)


def train() -> None:
    _run("tools.trainer")


def infer() -> None:
    _run("tools.infer")


def export() -> None:
    _run("tools.to_static")


def predict() -> None:
    _run("tools.paddle_infer")


def gen_data() -> None:
    _run("tools.gen_data")


def convert() -> None:
    _run("tools.convert")


def prepare_criteo() -> None:
    _run("tools.prepare_criteo")


def client() -> None:
    _run("tools.rec_client")


def upload_client() -> None:
    _run("tools.upload_client")


def serve_rpc() -> None:
    _run("serving.rpc")


def serve_upload() -> None:
    _run("serving.upload")


def serve_oip() -> None:
    _run("serving.oip")
