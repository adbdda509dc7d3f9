#!/usr/bin/env bash
# Bring MLAssist up locally on a built-in demo: installs what it needs on first run
# (scripts/bootstrap.sh), starts Redis, Label Studio, the ML backend, a worker and the sync
# service, which imports a folder of generated images into a demo project connected to the
# backend. Ctrl-C stops everything it started.
#   ./scripts/up.sh                  bring it up
#   ./scripts/up.sh label [--count N] submit the ground truth of N demo images (another terminal)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "[up] installing / checking environments (first run: a few minutes)" >&2
eval "$(scripts/bootstrap.sh)"
export MLASSIST_VENV MLASSIST_LS_VENV
exec "$MLASSIST_VENV/bin/python" scripts/demo.py "$@"
