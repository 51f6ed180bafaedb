"""Redis result store: one sorted set per (model, user), member = line number, score = predicted CTR.

Key: `ctr:<model name>:<user id>` (e.g. `ctr:deepfm:11`). An upload is written batch by batch, while the
file is still being validated, to a temporary key `ctr:<model>:<user>:partial:<random>`; only when every
line has been parsed and stored is it RENAMEd onto the real key (atomic, replacing any older ranking), and
the TTL is set in the same transaction. A malformed file or a failure midway deletes the temporary key, so
readers see the previous complete ranking or the new complete one, never a mix. The temporary key carries
an expiry from its first write, so even a crashed server leaves nothing behind for long.
"""
from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis

log = logging.getLogger(__name__)

PARTIAL_TTL_S = 3600  # lifetime of an unfinished upload's temporary key
# Failures that mean "Redis is not there" (503); any other Redis error is a bug and answers 500.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class StoreUnavailable(RuntimeError):
    """Redis is not configured or cannot be reached; the message is for the client."""


def redact_url(url: str) -> str:
    """The URL without its password (safe for logs and client messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class ResultStore:
    """`model_name()` gives the served model's name (the key of /result; an upload writes under the name of the
    model version that scored it)."""

    def __init__(self, url: str | None, model_name, ttl_s: int):
        self.url = url
        self.model_name = model_name if callable(model_name) else (lambda: model_name)
        self.ttl_s = ttl_s
        self.client = (redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
                       if url else None)

    def key(self, user_id: str, model_name: str | None = None) -> str:
        return f"ctr:{model_name or self.model_name()}:{user_id}"

    def check_enabled(self) -> None:
        """StoreUnavailable (503) when redis mode is not configured."""
        self._client()

    def _client(self) -> redis.Redis:
        if self.client is None:
            raise StoreUnavailable("re_model=redis is not enabled on this server (start it with --redis_url "
                                   "or CTR_UPLOAD_REDIS_URL)")
        return self.client

    def unavailable(self, exc: Exception) -> StoreUnavailable:
        log.warning("Redis at %s failed: %s", redact_url(self.url or ""), exc)
        return StoreUnavailable(f"Redis at {redact_url(self.url or '')} is unreachable ({type(exc).__name__})")

    def status(self) -> str:
        """'disabled', 'ok' or 'unreachable' (for /ready)."""
        if self.client is None:
            return "disabled"
        try:
            self.client.ping()
            return "ok"
        except UNREACHABLE:
            return "unreachable"

    def writer(self, user_id: str, model_name: str | None = None) -> "RankingWriter":
        return RankingWriter(self, self._client(), self.key(user_id, model_name))

    def ranking(self, user_id: str, top_k: int) -> tuple[int, list[int], list[float]] | None:
        """(stored count, top line numbers, their scores) highest first, or None when nothing is stored."""
        client, key = self._client(), self.key(user_id)
        try:
            with client.pipeline(transaction=True) as pipe:
                pipe.zcard(key)
                pipe.zrange(key, 0, top_k - 1, desc=True, withscores=True)
                count, top = pipe.execute()
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from None
        if count == 0:
            return None
        return count, [int(member) for member, _ in top], [score for _, score in top]


class RankingWriter:
    """A sink (see scoring.py) writing one upload's predictions; `commit()` publishes them atomically."""

    def __init__(self, store: ResultStore, client: redis.Redis, key: str):
        self.store = store
        self.client = client
        self.key = key
        self.partial_key = f"{key}:partial:{uuid.uuid4().hex}"
        self.stored = 0

    def add(self, first_line: int, probs: np.ndarray) -> None:
        members = dict(zip(map(str, range(first_line, first_line + len(probs))), probs.tolist()))
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(self.partial_key, members)
                if self.stored == 0:
                    pipe.expire(self.partial_key, PARTIAL_TTL_S)
                pipe.execute()
        except UNREACHABLE as exc:
            raise self.store.unavailable(exc) from None
        self.stored += len(members)

    def commit(self) -> None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.rename(self.partial_key, self.key)
                if self.store.ttl_s:
                    pipe.expire(self.key, self.store.ttl_s)
                else:
                    pipe.persist(self.key)
                pipe.execute()
        except UNREACHABLE as exc:
            raise self.store.unavailable(exc) from None

    def answer(self) -> dict:
        return {"re_model": "redis", "key": self.key, "stored": self.stored, "ttl_s": self.store.ttl_s}

    def discard(self) -> None:
        """Drop the unfinished upload (best effort: its key expires anyway)."""
        if self.stored == 0:
            return
        try:
            self.client.delete(self.partial_key)
        except redis.RedisError as exc:
            log.warning("could not delete %s (it expires in %d s): %s", self.partial_key, PARTIAL_TTL_S, exc)
