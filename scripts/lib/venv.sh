# Sourced by scripts/server and scripts/test: make .venv and install pinned requirements when they change.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv"

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "Parley needs Python 3.11 or newer on PATH." >&2
    return 1
}

# ensure_venv REQUIREMENTS_FILE: (re)install only when the file's contents changed.
ensure_venv() {
    local requirements="$ROOT/$1"
    local stamp="$VENV/.installed-$(basename "$requirements")"
    local wanted
    wanted="$(cat "$ROOT"/requirements*.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating $VENV ..." >&2
        "$(find_python)" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        echo "Installing $(basename "$requirements") into .venv ..." >&2
        "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip >&2
        "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -r "$requirements" >&2
        echo "$wanted" > "$stamp"
    fi
}
