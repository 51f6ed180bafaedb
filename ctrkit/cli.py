"""What every command-line tool shares: logging set-up, `-m/-o` config arguments, and turning user errors
into one clear line on stderr with exit status 2 (tracebacks are for bugs, not for bad input)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from ctrkit.config import Config, load_config


class UserError(Exception):
    """Bad input from the user (file, flag, config); printed without a traceback."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        force=True)  # paddle installs a root handler of its own on import


def progress_enabled() -> bool:
    """Progress bars only on a terminal (plain log lines otherwise: a log file gets no bar) and unless
    CTRKIT_NO_PROGRESS=1."""
    return os.environ.get("CTRKIT_NO_PROGRESS") != "1" and sys.stderr.isatty()


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--config", required=True, help="config.yaml (PaddleRec layout: runner / hyper_parameters)")
    add_override_argument(parser)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """`-o/--opt KEY=VALUE ...`: PaddleRec's form (several after one -o) and repeated -o, mixed as you like."""
    parser.add_argument("-o", "--opt", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config keys: -o runner.epochs=2 hyper_parameters.fc_sizes=[256,128] "
                             "(PaddleRec's form) or -o runner.epochs=2 -o ... (values are YAML: ints, floats, "
                             "bools, lists)")


def join_overrides(items: list[str]) -> list[str]:
    """Overrides as given after -o, with the words of an unquoted YAML list or mapping joined back: `-o
    hyper_parameters.fc_sizes=[512, 256]` or `-o dataset.label={name: rating, threshold: 4}` arrive from the
    shell as several words."""
    out: list[str] = []
    for item in items:
        if out and _unclosed(out[-1]):
            out[-1] += " " + item
        else:
            out.append(item)
    return out


def _unclosed(text: str) -> bool:
    """True while `text` opens more brackets/braces than it closes (a YAML list or mapping cut by the shell)."""
    return text.count("[") + text.count("{") > text.count("]") + text.count("}")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, join_overrides(args.opt or []))


def run_cli(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run `main`; exceptions of the given types (plus UserError, ValueError subclasses we raise for bad
    input) become `error: <message>` on stderr and exit status 2."""
    from ctrkit.checkpoint import CheckpointError
    from ctrkit.config import ConfigError

    handled = (UserError, ConfigError, CheckpointError, FileNotFoundError, *user_errors)
    try:
        sys.exit(main() or 0)
    except handled as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
