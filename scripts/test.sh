#!/usr/bin/env bash
# Run the whole test suite: installs what it needs (scripts/bootstrap.sh), lints, type-checks,
# then pytest (which starts a real Label Studio, the backend and loopback image servers).
# Extra arguments go to pytest, e.g. scripts/test.sh -k e2e -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

eval "$(scripts/bootstrap.sh)"
export MLASSIST_VENV MLASSIST_LS_VENV MLASSIST_AZURITE

echo "[test] ruff" >&2
"$MLASSIST_VENV/bin/ruff" check backend sync tests benchmarks scripts
echo "[test] mypy" >&2
"$MLASSIST_VENV/bin/mypy"
echo "[test] pytest" >&2
exec "$MLASSIST_VENV/bin/python" -m pytest "$@"
