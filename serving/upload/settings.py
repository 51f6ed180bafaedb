"""Service configuration from command-line flags and environment variables (a flag wins over its variable).

Every flag has a `CTR_UPLOAD_*` variable, so a container or `Docker/start.sh` can configure the service
without building a command line. Values are checked here, before the model is loaded.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

ENV_PREFIX = "CTR_UPLOAD_"
MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadSettings:
    model: str                  # exported model directory (or its serving_server/)
    host: str = "127.0.0.1"
    port: int = 8867
    threads: int = 4            # waitress request threads per worker process
    workers: int = 1            # worker processes (each with its own model and predictor)
    batch_size: int = 2048      # lines parsed and predicted per step; bounds memory per upload
    device: str = "cpu"
    gpu_id: int = 0
    onednn: bool | None = None  # None: on with the CPU, off with a GPU
    cpu_threads: int = 1        # Paddle math threads per predictor
    redis_url: str | None = None
    redis_ttl: int = 86400      # seconds a stored ranking lives; 0 keeps it until replaced
    max_upload_mb: float = 64.0
    upload_dir: str = "uploads"  # where save=true keeps uploads

    @property
    def use_onednn(self) -> bool:
        return self.device == "cpu" if self.onednn is None else self.onednn

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)


def parse_bool(text: str) -> bool:
    """'true/false', '1/0', 'yes/no', 'on/off' (any case)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {text!r}")


def _bool_arg(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(kind: type, low: float, high: float | None = None, strict: bool = False):
    """An argparse type: `kind` (int or float) in [low, high] (low excluded when strict)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}{f' and <= {high}' if high is not None else ''}, "
                                             f"got {text!r}")
        return value
    return convert


# flag -> (type, help). Defaults come from UploadSettings; the variable is CTR_UPLOAD_<FLAG upper-cased>.
_FLAGS: dict[str, tuple] = {
    "model": (str, "exported model directory written by tools/to_static.py (or its serving_server/); required"),
    "host": (str, "address to bind; 0.0.0.0 exposes the service beyond this machine"),
    "port": (_number(int, 0, 65535), "TCP port"),
    "threads": (_number(int, 1), "waitress request threads per worker process"),
    "workers": (_number(int, 1), "worker processes, each with its own model copy; Paddle holds the GIL while "
                                 "predicting, so processes are what serve uploads in parallel"),
    "batch_size": (_number(int, 1), "lines parsed and predicted per step (bounds memory per upload)"),
    "device": (str, "cpu or gpu (gpu needs a CUDA build of Paddle; never falls back to cpu)"),
    "gpu_id": (_number(int, 0), "GPU index with --device gpu"),
    "onednn": (_bool_arg, "use oneDNN kernels (true/false; unset: on with --device cpu, off with gpu)"),
    "cpu_threads": (_number(int, 1), "Paddle math threads per predictor"),
    "redis_url": (str, "Redis for re_model=redis, e.g. redis://127.0.0.1:6379/0 (unset: redis mode answers 503)"),
    "redis_ttl": (_number(int, 0), "seconds a stored ranking lives (0: until replaced)"),
    "max_upload_mb": (_number(float, 0, strict=True), "largest accepted request body in MiB (bigger: 413)"),
    "upload_dir": (str, "directory where save=true keeps uploads (created by the first save)"),
}


def _from_env(kind, env: str):
    """`kind`, with errors naming the environment variable the value came from."""
    def convert(text: str):
        try:
            return kind(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (from {env})") from None
    return convert


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.upload",
        description="HTTP file-upload CTR prediction service (Flask app served by waitress).",
        epilog=f"Every flag can also be set by its environment variable ({ENV_PREFIX}<FLAG>, e.g. "
               f"{env_name('redis_url')}); a flag given on the command line wins.")
    defaults = UploadSettings(model="")
    for flag, (kind, help_text) in _FLAGS.items():
        env = env_name(flag)
        default = getattr(defaults, flag)
        shown = f"; default: {default}" if default not in (None, "") else ""
        if os.environ.get(env):
            # argparse converts a string default with `type`, so a bad variable is reported like a bad flag.
            kind, default = _from_env(kind, env), os.environ[env]
        parser.add_argument(f"--{flag}", type=kind, default=default, help=f"{help_text} [env {env}{shown}]")
    return parser


def parse_settings(argv: list[str] | None = None) -> UploadSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"--model (or {env_name('model')}) is required")
    if args.device not in ("cpu", "gpu"):
        parser.error(f"--device must be cpu or gpu, got {args.device!r}")
    if args.redis_url and urlsplit(args.redis_url).scheme not in ("redis", "rediss", "unix"):
        parser.error(f"--redis_url must be a redis://, rediss:// or unix:// URL, got {args.redis_url!r}")
    if args.device == "gpu" and args.onednn:
        parser.error("--onednn is a CPU engine; it cannot be used with --device gpu")
    return UploadSettings(**vars(args))
