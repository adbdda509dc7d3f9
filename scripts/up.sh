#!/usr/bin/env bash
# Bring MLAssist up locally on a built-in demo: installs what it needs on first run
# (scripts/bootstrap.sh), starts Label Studio and the ML backend, creates a demo project with
# generated images and connects the backend. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "[up] installing / checking environments (first run: a few minutes)" >&2
eval "$(scripts/bootstrap.sh)"
export MLASSIST_VENV MLASSIST_LS_VENV
exec "$MLASSIST_VENV/bin/python" scripts/demo.py
