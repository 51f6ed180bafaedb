#!/usr/bin/env bash
# Set-up step (never run at test time): fetch the pure-Python HttpClient of Paddle Serving's last client release,
# paddle-serving-client 0.9.0, so the compatibility test can prove that the real client works with serving.rpc.
# That release ships CPython 3.6-3.9 wheels only, so the cp39 wheel is downloaded (not installed), checked
# against its pinned sha256, and only its Python sources are kept (no compiled .so, no pipeline/ package)
# in .venv/paddle_serving_client-0.9.0/. Safe to re-run: does nothing once that directory is complete.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.9.0
SHA256=acc2d8af6e678553617ad502be6e83dba18c508db4505585ff7e4a68716084db
DEST=.venv/paddle_serving_client-$VERSION

[ -f "$DEST/.complete" ] && exit 0
[ -x .venv/bin/python ] || { echo "fetch_serving_client: run scripts/setup.sh first (.venv is missing)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch_serving_client: downloading paddle-serving-client==$VERSION (cp39 wheel, sources only are kept)"
.venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.9 "paddle-serving-client==$VERSION" -d "$tmp"
.venv/bin/python - "$tmp" "$SHA256" "$tmp/out" <<'PY'
import glob, hashlib, os, sys, zipfile

folder, sha256, out = sys.argv[1:]
wheel, = glob.glob(os.path.join(folder, "paddle_serving_client-*.whl"))
with open(wheel, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
if digest != sha256:
    sys.exit(f"fetch_serving_client: {os.path.basename(wheel)} has sha256 {digest}, expected {sha256}")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("paddle_serving_client/") and name.endswith(".py") \
                and not name.startswith("paddle_serving_client/pipeline/"):
            z.extract(name, out)
PY
rm -rf "$DEST"
mv "$tmp/out" "$DEST"
touch "$DEST/.complete"
echo "fetch_serving_client: ready in $DEST"
