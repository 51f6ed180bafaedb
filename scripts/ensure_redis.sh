#!/usr/bin/env bash
# Kept for older instructions: scripts/ensure_system_packages.sh redis (redis-server for the upload tests).
exec "$(dirname "$0")/ensure_system_packages.sh" redis
