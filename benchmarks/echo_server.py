"""Bare echo servers: the transport ceiling of the libraries themselves (no protocol decoding, no model).

    python benchmarks/echo_server.py [--grpc_port 0] [--http_port 0] [--threads 16]

gRPC: grpcio's synchronous server with a thread pool (the issue's reference echo server) and, on a second port,
grpc.aio on an event loop (what serving.rpc and serving.oip run on), each with one generic unary method
`/echo.Echo/Echo` answering the request bytes. HTTP: aiohttp's low-level server (as both front-ends use it),
`POST /echo` answering the body (on the same event loop as grpc.aio). Prints
`echo ready: grpc HOST:PORT http HOST:PORT grpc_aio HOST:PORT`; SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures


def main(argv: list[str] | None = None) -> int:
    import grpc
    from aiohttp import web

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc_port", type=int, default=0)
    p.add_argument("--http_port", type=int, default=0)
    p.add_argument("--grpc_aio_port", type=int, default=0)
    p.add_argument("--threads", type=int, default=16, help="gRPC server threads")
    args = p.parse_args(argv)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    handler = grpc.unary_unary_rpc_method_handler(lambda body, context: body)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", {"Echo": handler}),))
    grpc_port = server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    server.start()

    loop = asyncio.new_event_loop()

    async def echo(request):
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    async def aio_echo(body, context):
        return body

    async def setup():
        runner = web.ServerRunner(web.Server(echo, access_log=None), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.http_port)
        await site.start()
        aio = grpc.aio.server()
        aio.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(aio_echo)}),))
        aio_port = aio.add_insecure_port(f"{args.host}:{args.grpc_aio_port}")
        await aio.start()
        return runner, site._server.sockets[0].getsockname()[1], aio, aio_port

    runner, http_port, aio, aio_port = loop.run_until_complete(setup())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    print(f"echo ready: grpc {args.host}:{grpc_port} http {args.host}:{http_port} grpc_aio {args.host}:{aio_port}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop(1).wait()
    asyncio.run_coroutine_threadsafe(aio.stop(1), loop).result(10)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
