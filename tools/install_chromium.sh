#!/usr/bin/env sh
# Debian's Chromium for the browser test (Playwright's own browser download does not work offline).
# Installs it with apt-get when this user can (root, or sudo without a password); otherwise says so.
# Exit status 0 either way: the browser test then skips with the reason, unless BLM_REQUIRE_BROWSER=1.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "note: Chromium is not installed and this user cannot install it (apt-get needs root or sudo);" \
         "the browser test will be skipped. Install it with: sudo apt-get install chromium" >&2
    exit 0
fi
echo "installing Debian's chromium for the browser test (apt-get, about a minute) ..." >&2
log=$(mktemp)
if $SUDO apt-get update -qq >"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >>"$log" 2>&1; then
    rm -f "$log"
else
    cat "$log" >&2
    rm -f "$log"
    echo "note: apt-get could not install chromium (output above); the browser test will be skipped" >&2
fi
exit 0
