#!/usr/bin/env bash
# Run the performance benchmarks one after another (never two at once: they share the cores)
# and write their JSON to benchmarks/results/. About 30 minutes on 2 cores.
#   benchmarks/run.sh            serving, loop (2,000 and 20,000 tasks), sync, training, interactive
#   benchmarks/run.sh --all      also learning, export, pretrained and replay (about 35
#                                minutes more)
#   benchmarks/run.sh serving    one of them by name
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/bootstrap.sh)"
export MLASSIST_VENV MLASSIST_LS_VENV MLASSIST_AZURITE
PY="$MLASSIST_VENV/bin/python"
OUT=benchmarks/results

run() {
    local name="$1"; shift
    printf '[benchmarks] %s: %s\n' "$name" "$*" >&2
    local started=$SECONDS
    "$PY" "$@"  >/dev/null
    printf '[benchmarks] %s done in %d s\n' "$name" $((SECONDS - started)) >&2
}

wanted=("${@:-default}")
want() { [[ " ${wanted[*]} " == *" $1 "* || " ${wanted[*]} " == *" default "* \
           || " ${wanted[*]} " == *" --all "* ]]; }
want_extra() { [[ " ${wanted[*]} " == *" $1 "* || " ${wanted[*]} " == *" --all "* ]]; }

want serving && run serving benchmarks/serving.py --out "$OUT/serving.json"
want loop && run loop benchmarks/loop.py --tasks 2000 --out "$OUT/loop.json"
want loop && run loop-20000 benchmarks/loop.py --tasks 20000 --no-storm \
    --out "$OUT/loop-20000.json"
want sync && run sync benchmarks/sync.py --out "$OUT/sync.json"
want training && run training benchmarks/training.py --out "$OUT/training.json"
want interactive && run interactive benchmarks/interactive.py --out "$OUT/interactive.json"
want_extra learning && run learning benchmarks/learning.py --out "$OUT/learning.json"
want_extra export && run export benchmarks/export.py --out "$OUT/export.json"
want_extra pretrained && run pretrained benchmarks/pretrained.py --out "$OUT/pretrained.json"
want_extra replay && run replay benchmarks/replay.py --out "$OUT/replay.json" --plots "$OUT"
printf '[benchmarks] results in %s; the table is benchmarks/README.md\n' "$OUT" >&2
