import logging
import os
import sys

from serving.rpc.server import main

code = main()
# Everything is drained and closed by now: leave without interpreter teardown, during which grpc's and
# Paddle's native threads could still run against half-finalised Python state.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
