#!/usr/bin/env bash
# The README's install command: everything tracekit needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver iproute2 >/dev/null
  else
    echo "install.sh: chromium not installed and not root: the real-browser dashboard test will skip" >&2
  fi
fi
python -m pip install -q -c constraints.txt -e '.[dev]'
