#!/usr/bin/env bash
# Debian packages some tests use, installed when missing and we may (root with apt-get); otherwise one line says
# what to install (those tests then skip, or fail under CI=true). Safe to re-run: does nothing when all are there.
#   redis-server              the upload service's Redis tests (they start their own server on a free port)
#   chromium chromium-driver  the upload page's browser test (headless Chromium driven by selenium)
# Usage: scripts/ensure_system_packages.sh [redis|chromium ...]   (default: all)
set -euo pipefail

declare -A COMMANDS=([redis]="redis-server" [chromium]="chromium chromedriver")
declare -A PACKAGES=([redis]="redis-server" [chromium]="chromium chromium-driver")
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(redis chromium)

missing=()
for name in "${wanted[@]}"; do
  if [ -z "${COMMANDS[$name]:-}" ]; then
    echo "ensure_system_packages: unknown name '$name' (known: ${!COMMANDS[*]})" >&2
    exit 2
  fi
  read -r -a commands <<< "${COMMANDS[$name]}"
  for cmd in "${commands[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
      read -r -a pkgs <<< "${PACKAGES[$name]}"
      missing+=("${pkgs[@]}")
      break
    fi
  done
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing ${missing[*]} (apt-get)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: ${missing[*]} not installed; install them (e.g. apt-get install ${missing[*]}) for the tests that" \
       "use them" >&2
fi
