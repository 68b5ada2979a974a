#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine: redis-server (Debian)
# and a virtual environment in .venv with the pinned torch build and our requirements.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the playground's browser test drives Debian's build (Playwright cannot download one here).
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if [ -n "$missing" ]; then
  echo "[setup] installing$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086 # one word per package
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating .venv (torch installs from the machine's wheel cache)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # pip's own warnings about absent local index folders are noise; real errors still fail the script.
  .venv/bin/pip install -q -r requirements-dev.txt 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, torchvision, timm, fastapi, faiss, mlxtend, safetensors, playwright"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
