"""What concurrent requests may hold in memory.

A request body is held while it is decoded, and decoding expands it: JSON numbers become Python objects before
they become arrays (a 60 MiB JSON body once cost ~680 MiB), protobuf less so. Every inference request reserves
`body bytes x expansion` from one budget per process before its body is read (HTTP) or decoded (gRPC), and gives
it back when answered. A request that does not fit waits for others to finish (up to `wait_s`), then is refused
with RESOURCE_EXHAUSTED. A single request larger than the whole budget is refused at once. With the defaults
(2 MiB bodies, 48 MiB budget) the requests being decoded in one worker hold at most ~48 MiB on top of the
model.
"""
from __future__ import annotations

import threading
import time

JSON_EXPANSION = 20   # RSS growth per body byte, measured for JSON Requests of floats (lists of Python floats)
PROTO_EXPANSION = 8


class ByteBudget:
    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self._used = 0
        self._cond = threading.Condition()

    def cost(self, body_bytes: int, json_body: bool) -> int:
        return max(1, body_bytes) * (JSON_EXPANSION if json_body else PROTO_EXPANSION)

    def try_acquire(self, n: int) -> bool:
        with self._cond:
            if self._used + n <= self.limit or self._used == 0 and n <= self.limit:
                self._used += n
                return True
            return False

    def acquire(self, n: int, wait_s: float) -> bool:
        """Reserve `n` bytes, waiting up to `wait_s` for others to give theirs back; False if it cannot."""
        if n > self.limit:
            return False
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._used + n > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if self._used + n > self.limit:
                        return False
            self._used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    @property
    def used(self) -> int:
        return self._used
