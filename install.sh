#!/usr/bin/env bash
# The README's install command: everything tracekit needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver iproute2 faketime >/dev/null
  else
    echo "install.sh: chromium not installed and not root: the real-browser dashboard test will skip" >&2
  fi
fi
if ! command -v g++ >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null  # the native DDP hook
fi
# Debian packages the tests use, each installed when missing: the RQ campaign target's redis-server,
# faketime for the two-host clock-shift test
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
if [ "${#missing[@]}" -gt 0 ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q -c constraints.txt -e '.[dev]'
# the wheels tests/test_packaging.py installs offline into fresh venvs (the built wheel with each extra)
wheelhouse="${TRACEKIT_WHEELHOUSE:-$HOME/.cache/tracekit/wheelhouse}"
python -m pip download -q -d "$wheelhouse" -c constraints.txt '.[torch,ray,dashboard,serve,judge]' \
  && rm -f "$wheelhouse"/tracekit-* \
  || echo "install.sh: the wheelhouse is incomplete; tests/test_packaging.py will download what it lacks" >&2
# tracekit's native DDP comm hook (C++, ~40 s once per torch/Python): without it capture falls back to
# the Python hook, which costs several times more step time (docs/training.md)
python -m tracekit.capture.native --build || echo "install.sh: the native DDP hook did not build; capture uses the Python hook" >&2
