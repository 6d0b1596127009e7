#!/usr/bin/env sh
# A Debian package the tests or the comparison use, installed with apt-get when this user can (root, or sudo
# without a password); otherwise a plain note. Exit status 0 either way: what needs it then skips or leaves
# it out, saying why.
#   sh tools/apt_install.sh PACKAGE COMMAND WHAT_HAPPENS_WITHOUT_IT
# e.g. Debian's Chromium for the browser test (Playwright's own browser download does not work offline),
# and zpaq for the comparison table.
set -u
package=$1 command=$2 without=$3
command -v "$command" >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "note: $package is not installed and this user cannot install it (apt-get needs root or sudo);" \
         "$without. Install it with: sudo apt-get install $package" >&2
    exit 0
fi
echo "installing Debian's $package (apt-get, up to a minute) ..." >&2
log=$(mktemp)
if $SUDO apt-get update -qq >"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$package" >>"$log" 2>&1; then
    rm -f "$log"
else
    cat "$log" >&2
    rm -f "$log"
    echo "note: apt-get could not install $package (output above); $without" >&2
fi
exit 0
