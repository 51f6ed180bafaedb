"""`--workers N`: N complete server processes on the same gRPC and HTTP ports, under `serving.supervisor`.

One Python process answers on about one core: the interpreter lock serialises request handling, and Paddle
holds it for much of a small predictor call. With SO_REUSEPORT the kernel spreads incoming connections over the
workers (a connection stays with its worker, so spread needs several client connections). The ports are
reserved here first, the workers start with the same flags, one ready line is printed once all are ready; a
worker that dies is restarted; SIGTERM / SIGINT drain them all, SIGHUP makes each look for model versions. Each
worker loads, self-checks and swaps model versions by itself; /metrics answers with the sum over all workers
(Prometheus multi-process mode, files in --workdir or a temporary directory).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from serving.rpc.server import READY_LINE, http_port
from serving.supervisor import run_worker_group


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so the port is ours and known before the workers start; they bind it too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    return sock


def run_workers(args: argparse.Namespace, argv: list[str]) -> int:
    sockets = [reserve_port(args.host, args.port), reserve_port(args.host, http_port(args))]
    grpc_port, http = (s.getsockname()[1] for s in sockets)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    # later flags win in argparse: the workers get the resolved ports and run one process each
    cmd = [sys.executable, "-m", "serving.rpc", *argv, "--workers", "1", "--port", str(grpc_port),
           "--http_port", str(http), "--reuse_port"]

    def announce(lines: list[str]) -> str:
        version = max(int(line.split()[3]) for line in lines)
        return READY_LINE.format(version=version, host=args.host, grpc_port=grpc_port, http_port=http)

    return run_worker_group(cmd, args.workers, ready_prefix="serving.rpc ready", announce=announce,
                            drain_timeout_s=args.drain_timeout_s, sockets=sockets,
                            metrics_prefix="metrics-" if args.workdir else "ctrkit-rpc-metrics-",
                            metrics_parent=args.workdir or None)
