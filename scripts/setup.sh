#!/usr/bin/env bash
# Sets up portrait-rt on a fresh Debian 12/13 machine, in the project's virtual environment .venv:
#   bash scripts/setup.sh          # the app and the library; then: .venv/bin/python app.py
#   bash scripts/setup.sh --dev    # also what the tests need (pytest, ruff, Playwright + Debian chromium)
# Debian packages (packages.txt; python3-venv where Python cannot make a virtual environment; chromium with --dev)
# are installed with apt-get when run as root; otherwise the script names the missing ones. .venv is made with
# $PYTHON (default python3) if it is missing or broken, else reused; the package goes into it editable, against the
# pins of requirements-local.txt (requirements-dev.txt with --dev) and the Gradio of README.md's `sdk_version` (the
# Space's). Run it again after pulling: when none of those files changed, pip is not run at all.
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

reqs=requirements-local.txt
target=.
[ "$dev" = 1 ] && reqs=requirements-dev.txt && target=".[dev]"
# The Space's Gradio, from README.md's front matter (Hugging Face installs it there; requirements.txt must not pin it)
sdk=$(sed -n '/^---$/,/^---$/s/^sdk_version: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' README.md)
[ -n "$sdk" ] || { echo "[setup] no sdk_version in README.md's front matter" >&2; exit 2; }
gradio="gradio[mcp]==$sdk"
# What the install depends on; the same stamp as last time (and the package importable): nothing to do
stamp="$venv/.setup-stamp"
inputs=$( { echo "$gradio $dev"; "$venv/bin/python" --version; cat requirements*.txt pyproject.toml; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ] && "$venv/bin/python" -c 'import portrait_rt' 2>/dev/null; then
  echo "[setup] up to date (requirements, pyproject.toml and sdk_version unchanged): use $venv/bin/python"
  exit 0
fi
echo "[setup] $venv/bin/pip install -r $reqs $gradio -e $target (the first time: about 2 GB, a few minutes)"
rm -f "$stamp"
"$venv/bin/python" -m pip install --disable-pip-version-check -r "$reqs" "$gradio" -e "$target"
echo "$inputs" > "$stamp"
echo "[setup] done: use $venv/bin/python (or: source $venv/bin/activate)"
