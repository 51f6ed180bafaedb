"""`python -m serving.upload --model <exported model dir> [--port 8867] [--redis_url redis://...] [--backend ...]`"""
from __future__ import annotations

import logging
import os
import sys

from ctrkit.cpu_env import configure_cpu_env
from ctrkit.cli import run_cli, setup_logging
from ctrkit.inference import InferenceError
from serving.upload.settings import parse_settings


def main() -> int:
    configure_cpu_env()
    settings = parse_settings()  # before the heavy imports, so --help and bad flags answer at once
    setup_logging()
    from serving.upload.server import serve

    return serve(settings)


if __name__ == "__main__":
    try:
        run_cli(main, user_errors=(InferenceError, OSError))
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        # Drained and closed by now: leave without interpreter teardown, during which Paddle's native threads
        # could still run against half-finalised Python state.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
