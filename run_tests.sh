#!/usr/bin/env bash
# Quickstart command 2: set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
scripts/ensure_system_packages.sh   # redis-server, chromium + chromium-driver (apt-get when root and missing)
exec .venv/bin/python -m pytest -q "$@"
