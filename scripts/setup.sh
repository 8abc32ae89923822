#!/usr/bin/env bash
# Installs what portrait-rt needs on a fresh Debian + Python 3.11 machine.
#   bash scripts/setup.sh          # run the app / the library
#   bash scripts/setup.sh --dev    # also what the tests need (pytest, ruff, Playwright + Debian chromium)
# Debian packages (packages.txt, + chromium for --dev) are installed with apt-get when run as root; otherwise
# install them yourself (the script says which are missing). Python packages go to the active interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

debs=$(grep -v '^\s*#' packages.txt | xargs)
[ "$dev" = 1 ] && debs="$debs chromium"
missing=""
for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "[setup] missing Debian packages:$missing -- run: sudo apt-get install$missing" >&2
  fi
fi

python=${PYTHON:-python3}
reqs=requirements.txt
[ "$dev" = 1 ] && reqs=requirements-dev.txt
echo "[setup] pip install -r $reqs"
"$python" -m pip install -q --disable-pip-version-check -r "$reqs"
