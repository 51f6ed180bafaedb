#!/usr/bin/env bash
# The upload service's tests use a real redis-server (Debian's package). Install it when missing and we may
# (root with apt-get); otherwise say so. The tests start their own server on a free loopback port.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing redis-server (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
else
  echo "setup: redis-server is not installed; install it (e.g. apt-get install redis-server) for the Redis tests" >&2
fi
