"""`python -m serving.upload --model <exported model dir> [--port 8867] [--redis_url redis://...]`"""
from __future__ import annotations

from ctrkit.cli import run_cli, setup_logging
from ctrkit.inference import InferenceError
from serving.upload.settings import parse_settings


def main() -> int:
    settings = parse_settings()  # before the heavy imports, so --help and bad flags answer at once
    setup_logging()
    from serving.upload.server import serve

    return serve(settings)


if __name__ == "__main__":
    run_cli(main, user_errors=(InferenceError,))
