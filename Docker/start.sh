#!/usr/bin/env bash
# Start both servers for one exported model -- the RPC server (Paddle Serving protocol: gRPC + HTTP) and the
# HTTP upload service -- wait until both answer /ready, then run until SIGTERM/SIGINT stops both cleanly.
# If either server dies, the other is stopped too and the script exits non-zero. The container's entry
# point, and it runs directly on a host just the same (CI runs it that way).
# "Ready" means: each /ready answered 200 AND the socket that answered belongs to this script's own child (or one
# of its worker processes), so a stale server left on the same port can never make a broken start look ready;
# ports already taken by another process are refused before anything starts.
# From a checkout it runs `python -m serving.rpc` / `serving.upload`; from an installed wheel (the image),
# `python -m ctrkit_serving.rpc` / `ctrkit_serving.upload`.
#
# Usage: Docker/start.sh <exported model dir>          (the directory tools/to_static.py wrote)
# Environment (defaults in brackets):
#   PYTHON [.venv/bin/python if present, else python3]   HOST [127.0.0.1; the image sets 0.0.0.0]
#   RPC_PORT [9393]  RPC_HTTP_PORT [9394]  UPLOAD_PORT [8867]
#   STARTUP_TIMEOUT [180 s until both are ready]
#   STOP_TIMEOUT [40 s for both to exit after SIGTERM; the RPC server drains requests for up to 30 s]
#   RPC_ARGS [extra flags for serving.rpc, e.g. "--enable_mkldnn --predictors 4" or "--use_gpu"]
#   CTR_UPLOAD_* configure the upload service (e.g. CTR_UPLOAD_REDIS_URL; see docs/upload.md).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
MODEL_DIR=${1:-${MODEL_DIR:-}}
if [ -z "$MODEL_DIR" ] || [ ! -d "$MODEL_DIR" ]; then
  echo "usage: $0 <exported model dir> (got '${MODEL_DIR}', not a directory)" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
HOST=${HOST:-127.0.0.1}
RPC_PORT=${RPC_PORT:-9393}
RPC_HTTP_PORT=${RPC_HTTP_PORT:-9394}
UPLOAD_PORT=${UPLOAD_PORT:-8867}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-180}
STOP_TIMEOUT=${STOP_TIMEOUT:-40}
read -r -a rpc_args <<< "${RPC_ARGS:-}"
# Probes go to loopback even when the servers bind 0.0.0.0.
PROBE_HOST=$([ "$HOST" = 0.0.0.0 ] && echo 127.0.0.1 || echo "$HOST")

say() { echo "start.sh: $*" >&2; }

if [ -f serving/rpc/__main__.py ]; then SERVING=serving; else SERVING=ctrkit_serving; fi

# probe: `ready URL PORT PID` exits 0 when URL answers 200 and a listening socket on PORT belongs to PID or one of
# its descendants (read from /proc; where /proc cannot tell, PID being alive is required instead);
# `free PORT...` exits 0 when no process listens on any of the ports (and names the first taken one otherwise).
PROBE='
import os, sys, urllib.request

def listening_inodes(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes

def tree(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    pids = [pid]
    for p in pids:
        pids.extend(children.get(p, []))
    return pids

def owns(pid, port):
    if not os.path.exists("/proc/net/tcp"):
        return True  # no /proc to ask: the caller checks that the child is alive
    inodes = listening_inodes(port)
    for p in tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False

if sys.argv[1] == "free":
    for port in map(int, sys.argv[2:]):
        if listening_inodes(port):
            print(port)
            sys.exit(1)
    sys.exit(0)
url, port, pid = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
try:
    ok = urllib.request.urlopen(url, timeout=2).status == 200
except Exception:
    ok = False
sys.exit(0 if ok and owns(pid, port) else 1)
'

if ! taken=$("$PYTHON" -c "$PROBE" free "$RPC_PORT" "$RPC_HTTP_PORT" "$UPLOAD_PORT"); then
  say "port $taken is already in use by another process; stop it or choose other ports (RPC_PORT, RPC_HTTP_PORT, UPLOAD_PORT)"
  exit 2
fi

"$PYTHON" -m "$SERVING.rpc" --model "$MODEL_DIR/serving_server" --host "$HOST" --port "$RPC_PORT" \
  --http_port "$RPC_HTTP_PORT" "${rpc_args[@]}" &
rpc_pid=$!
"$PYTHON" -m "$SERVING.upload" --model "$MODEL_DIR" --host "$HOST" --port "$UPLOAD_PORT" &
upload_pid=$!
names=([rpc_pid]=rpc [upload_pid]=upload)
exited_pid=""  # a server that already exited by itself (and was reaped)

# SIGTERM both servers, give each STOP_TIMEOUT seconds, and exit with $1 (1 if one had to be killed or
# failed to stop: exit statuses 0, 130 and 143 count as a clean stop).
shutdown() {
  local status=$1 pid rc deadline=$((SECONDS + STOP_TIMEOUT))
  trap '' TERM INT
  for pid in "${!names[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${!names[@]}"; do
    [ "$pid" = "${exited_pid:-}" ] && continue  # (wait -n -p unsets it when a signal interrupts)
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      say "${names[$pid]} server (pid $pid) did not stop within ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null
      status=1
    fi
    wait "$pid"; rc=$?
    case $rc in
      0|130|143) ;;
      *) say "${names[$pid]} server exited with status $rc"; [ "$status" = 0 ] && status=1 ;;
    esac
  done
  say "stopped (status $status)"
  exit "$status"
}
trap 'say "signal received, stopping both servers"; shutdown 0' TERM INT

wait_ready() {  # name pid port url: until the server answers 200 on url from its own socket
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until "$PYTHON" -c "$PROBE" ready "$4" "$3" "$2"; do
    if ! kill -0 "$2" 2>/dev/null; then say "$1 server exited during start-up"; shutdown 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then say "$1 server not ready after ${STARTUP_TIMEOUT}s"; shutdown 1; fi
    sleep 0.5
  done
}

wait_ready rpc "$rpc_pid" "$RPC_HTTP_PORT" "http://$PROBE_HOST:$RPC_HTTP_PORT/ready"
wait_ready upload "$upload_pid" "$UPLOAD_PORT" "http://$PROBE_HOST:$UPLOAD_PORT/ready"
say "ready: RPC gRPC $HOST:$RPC_PORT and HTTP http://$HOST:$RPC_HTTP_PORT, upload http://$HOST:$UPLOAD_PORT (model $MODEL_DIR)"

# Wait for a server to exit by itself (a signal interrupts this wait and runs the trap instead).
wait -n -p exited_pid "$rpc_pid" "$upload_pid"
say "${names[$exited_pid]} server exited unexpectedly (status $?); stopping the other"
shutdown 1
