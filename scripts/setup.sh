#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in ./.venv with the pinned requirements
# (requirements-dev.txt = everything in requirements/ + the test tools) and this project installed in editable
# mode. Re-installs only when a requirements file, pyproject.toml or setup.py changed.
# Editable "compat" mode puts the repository root on the venv's sys.path, so `python tools/trainer.py ...` and
# `python -m serving.rpc ...` import `ctrkit`, `models` and `serving` from this checkout, and the console scripts
# (ctr-train, ctr-serve-rpc, ...: see ctrkit/console.py) land in .venv/bin. A wheel (`pip install .`) ships
# models/ and serving/ as ctrkit_models / ctrkit_serving instead (see setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.ctrkit-installed
want=$(cat requirements.txt requirements/*.txt requirements-dev.txt pyproject.toml setup.py | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
  # setuptools and wheel come pinned from requirements-dev.txt: no build isolation, nothing more to download
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e .
  echo "$want" > "$stamp"
fi

# the real Paddle Serving client, for the RPC compatibility test (idempotent; see the script)
scripts/fetch_serving_client.sh
