#!/usr/bin/env bash
# Sets up portrait-rt on a fresh Debian 12/13 machine, in the project's virtual environment .venv:
#   bash scripts/setup.sh          # the app and the library; then: .venv/bin/python app.py
#   bash scripts/setup.sh --dev    # also what the tests need (pytest, ruff, Playwright + Debian chromium)
# Debian packages (packages.txt; python3-venv where Python cannot make a virtual environment; chromium with --dev)
# are installed with apt-get when run as root; otherwise the script names the missing ones. .venv is made with
# $PYTHON (default python3) if it is missing or broken, else reused; the package goes into it editable, against the
# exact pins of requirements.txt (requirements-dev.txt with --dev). Run it again after pulling: it is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python=${PYTHON:-python3}
venv=.venv

have_venv() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; }

debs=$(grep -v '^\s*#' packages.txt | xargs)
[ "$dev" = 1 ] && debs="$debs chromium"
# Debian's python3 makes virtual environments only with python3-venv (it holds ensurepip)
have_venv || "$python" -c 'import ensurepip' 2>/dev/null || debs="$debs python3-venv"
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

if ! have_venv; then
  echo "[setup] $python -m venv $venv ($("$python" --version 2>&1))"
  "$python" -m venv --clear "$venv"
fi

reqs=requirements.txt
target=.
[ "$dev" = 1 ] && reqs=requirements-dev.txt && target=".[dev]"
echo "[setup] $venv/bin/pip install -r $reqs -e $target (the first time: about 2 GB, a few minutes)"
"$venv/bin/python" -m pip install --disable-pip-version-check -r "$reqs" -e "$target"
echo "[setup] done: use $venv/bin/python (or: source $venv/bin/activate)"
