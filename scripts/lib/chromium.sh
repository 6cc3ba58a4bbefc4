# Sourced by scripts/test: the browser tests drive Debian's chromium (never `playwright install`).
# Idempotent: does nothing when chromium is already there or PARLEY_SKIP_BROWSER=1.
ensure_chromium() {
    if [ "${PARLEY_SKIP_BROWSER:-}" = "1" ] || command -v chromium >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
            echo "chromium is missing and we are not root: install it with 'apt-get install chromium'." >&2
            return 0
        fi
    fi
    echo "Installing Debian chromium for the browser tests ..." >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
        echo "Could not install chromium; the browser tests will fail (PARLEY_SKIP_BROWSER=1 skips them)." >&2
}
