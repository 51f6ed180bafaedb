"""Service configuration from command-line flags and environment variables (a flag wins over its variable).

Every flag has a `CTR_UPLOAD_*` variable (`--redis_url` <- `CTR_UPLOAD_REDIS_URL`, `--backend` <-
`CTR_UPLOAD_BACKEND`, ...), so a container or `Docker/start.sh` can configure the service without building a
command line. The model runtime's flags (backend, GPU, oneDNN, threads, batching, versions) are the ones every
server and tool shares (`ctrkit.runtime.add_runtime_flags`). Values are checked here, before the model is loaded.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ctrkit.runtime.options import BatchingOptions, RuntimeOptions, add_runtime_flags, options_from_args

ENV_PREFIX = "CTR_UPLOAD_"
MIB = 1024 * 1024
READY_LINE = "serving.upload ready: model {model} version {version} http {host}:{port}"


@dataclass(frozen=True)
class UploadSettings:
    model: str                  # exported model directory (or its serving_server/, or numbered versions)
    host: str = "127.0.0.1"
    port: int = 8867
    threads: int = 4            # waitress request threads per worker process
    workers: int = 1            # worker processes (each with its own runtime), restarted when they die
    batch_size: int = 2048      # lines parsed and predicted per step; bounds memory per upload
    redis_url: str | None = None
    redis_ttl: int = 86400      # seconds a stored ranking lives; 0 keeps it until replaced
    max_upload_mb: float = 64.0
    upload_dir: str = "uploads"  # where save=true keeps uploads
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (slow-header clients are closed)
    body_timeout_s: float = 60.0    # a request must arrive whole within this (plus 1 s per body_min_rate_kib)
    body_min_rate_kib: float = 64.0  # KiB received that extend body_timeout_s by one second (0: no extension)
    idle_timeout_s: float = 60.0    # an idle keep-alive connection is closed after this
    max_connections: int = 1000     # open connections per worker process
    drain_timeout_s: float = 30.0   # SIGTERM: requests in flight get this long
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    worker: bool = False        # internal: one of the supervisor's workers (SO_REUSEPORT, prints the ready line)

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
        if value != value or value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}{f' and <= {high}' if high is not None else ''}, "
                                             f"got {text!r}")
        return value
    return convert


# flag -> (type, help). Defaults come from UploadSettings; the variable is CTR_UPLOAD_<FLAG upper-cased>.
_FLAGS: dict[str, tuple] = {
    "model": (str, "exported model directory written by tools/to_static.py (or its serving_server/), or a "
                   "directory of numbered versions 1/ 2/ ... (the highest good one is served; newer ones are "
                   "swapped in without failing a request); required"),
    "host": (str, "address to bind; 0.0.0.0 exposes the service beyond this machine"),
    "port": (_number(int, 0, 65535), "TCP port (0: any free port; the ready line says which)"),
    "threads": (_number(int, 1), "waitress request threads per worker process"),
    "workers": (_number(int, 1), "worker processes sharing the port, each with its own model runtime; a worker that "
                                 "dies is restarted (Paddle holds the GIL while predicting, so processes are what "
                                 "serve uploads in parallel)"),
    "batch_size": (_number(int, 1), "lines parsed and predicted per step (bounds memory per upload)"),
    "redis_url": (str, "Redis for re_model=redis, e.g. redis://127.0.0.1:6379/0 (unset: redis mode answers 503)"),
    "redis_ttl": (_number(int, 0), "seconds a stored ranking lives (0: until replaced)"),
    "max_upload_mb": (_number(float, 0, strict=True), "largest accepted request body in MiB (bigger: 413)"),
    "upload_dir": (str, "directory where save=true keeps uploads (created by the first save)"),
    "header_timeout_s": (_number(float, 0, strict=True), "seconds a client has to send a request's headers, "
                                                         "however slowly it trickles them (then it is disconnected)"),
    "body_timeout_s": (_number(float, 0, strict=True), "seconds a client has to send a whole request, body "
                                                       "included, from its first byte, extended by one second for "
                                                       "every --body_min_rate_kib KiB received (then it is answered "
                                                       "408 and disconnected)"),
    "body_min_rate_kib": (_number(float, 0), "KiB of a request that extend --body_timeout_s by one second: a client "
                                             "sending at least this fast is never cut off (0: a fixed bound)"),
    "idle_timeout_s": (_number(float, 0, strict=True), "seconds an idle keep-alive connection stays open"),
    "max_connections": (_number(int, 1), "open connections per worker process (more wait in the listen backlog)"),
    "drain_timeout_s": (_number(float, 0), "on SIGTERM, seconds requests in flight get to finish"),
}
# old spellings of the runtime flags (this service's flags before the shared runtime), still accepted
_LEGACY = {"device": "cpu or gpu (old spelling of --use_gpu)", "onednn": "old spelling of --enable_mkldnn"}


def _from_env(kind, env: str):
    """`kind`, with errors naming the environment variable the value came from."""
    def convert(text: str):
        try:
            return kind(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (from {env})") from None
    return convert


def _choice(choices):
    def convert(text: str) -> str:
        if choices is not None and text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text
    return convert


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper()


def _env_defaults(parser: argparse.ArgumentParser, names: set[str]) -> None:
    """Defaults of the runtime flags (`names`: their dests) from CTR_UPLOAD_<DEST>."""
    for action in parser._actions:
        if action.dest not in names:
            continue
        env = env_name(action.dest)
        value = os.environ.get(env)
        if not value:
            continue
        if action.type is not None:
            action.type = _from_env(action.type, env)
            action.default = value  # argparse converts a string default with `type`
        elif isinstance(action.default, bool):
            action.default = _from_env(_bool_arg, env)(value)
        else:
            action.type = _from_env(_choice(action.choices), env)
            action.default = value
        action.help = (action.help or "") + f" [env {env}]" if action.help != argparse.SUPPRESS else action.help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.upload",
        description="HTTP file-upload CTR prediction service (Flask app served by waitress) on the shared model "
                    "runtime (ctrkit.runtime): versions with hot swap, backends paddle / onnxruntime, /metrics.",
        epilog=f"Every flag can also be set by its environment variable ({ENV_PREFIX}<FLAG>, e.g. "
               f"{env_name('redis_url')}, {env_name('backend')}); a flag given on the command line wins.")
    defaults = UploadSettings(model="")
    for flag, (kind, help_text) in _FLAGS.items():
        env = env_name(flag)
        default = getattr(defaults, flag)
        shown = f"; default: {default}" if default not in (None, "") else ""
        if os.environ.get(env):
            # argparse converts a string default with `type`, so a bad variable is reported like a bad flag.
            kind, default = _from_env(kind, env), os.environ[env]
        parser.add_argument(f"--{flag}", type=kind, default=default, help=f"{help_text} [env {env}{shown}]")
    before = {action.dest for action in parser._actions}
    add_runtime_flags(parser, serving=True, backends=("paddle", "onnxruntime"))
    # Dynamic batching is off by default here: an upload's chunks are already large batches, and handing each to a
    # batcher thread costs GIL hand-overs (see ctrkit/batch_predict.py); --batching merges concurrent small uploads.
    parser.set_defaults(batching=False)
    for action in parser._actions:
        if action.dest == "batching":
            action.help = "dynamic batching: merge concurrent uploads' chunks into one model call (default off here)"
    _env_defaults(parser, {action.dest for action in parser._actions} - before)
    legacy = parser.add_argument_group("old spellings (still accepted)")
    legacy.add_argument("--device", default=os.environ.get(env_name("device")) or None,
                        help=f"{_LEGACY['device']} [env {env_name('device')}]")
    legacy.add_argument("--onednn", type=_from_env(_bool_arg, env_name("onednn")),
                        default=os.environ.get(env_name("onednn")) or None,
                        help=f"{_LEGACY['onednn']} [env {env_name('onednn')}]")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_settings(argv: list[str] | None = None) -> UploadSettings:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model:
        parser.error(f"--model (or {env_name('model')}) is required")
    if args.device is not None:
        if args.device not in ("cpu", "gpu"):
            parser.error(f"--device must be cpu or gpu, got {args.device!r}")
        args.use_gpu = args.use_gpu or args.device == "gpu"
    if args.onednn is not None:
        args.enable_mkldnn = args.onednn
    if args.redis_url and urlsplit(args.redis_url).scheme not in ("redis", "rediss", "unix"):
        parser.error(f"--redis_url must be a redis://, rediss:// or unix:// URL, got {args.redis_url!r}")
    try:
        runtime = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.batch_size > runtime.batching.max_request_batch:  # the service's own model requests are its chunks
        runtime = _with_batching(runtime, max_request_batch=args.batch_size)
    values = {name: getattr(args, name) for name in _FLAGS}
    return UploadSettings(**values, runtime=runtime, worker=args.worker)


def _with_batching(options: RuntimeOptions, **changes) -> RuntimeOptions:
    from dataclasses import replace

    b = options.batching
    return replace(options, batching=BatchingOptions(**{**{"enabled": b.enabled, "window_ms": b.window_ms,
                                                           "max_samples": b.max_samples,
                                                           "max_request_batch": b.max_request_batch}, **changes}))
