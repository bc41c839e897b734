#!/usr/bin/env bash
# Installs the system programs the test suite needs where they are missing.
# The tests start their own redis-server on a free port; they need only the binary.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
updated=0
apt_update() { [ "$updated" -eq 1 ] || { $SUDO apt-get update -qq && updated=1; }; }
if [ ${#need[@]} -gt 0 ]; then
  echo "installing missing test dependencies: ${need[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# The browser tests (tests/browser) drive Debian's Chromium through Playwright, and the
# JS client's tests run on Node. Best effort: where these cannot be installed, the
# browser tests skip and say so loudly; the fonts only make screenshots match docs/demo.png.
want=()
[ -x /usr/bin/chromium ] || want+=(chromium)
command -v node >/dev/null 2>&1 || want+=(nodejs)
fc-list : family 2>/dev/null | grep "^Inter" >/dev/null || want+=(fonts-inter)
fc-list : family 2>/dev/null | grep "^JetBrains Mono" >/dev/null || want+=(fonts-jetbrains-mono)
if [ ${#want[@]} -gt 0 ]; then
  echo "installing browser-test dependencies: ${want[*]}"
  if ! { apt_update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}"; }; then
    echo "WARNING: could not install ${want[*]}: the browser tests will be SKIPPED" >&2
  fi
fi
