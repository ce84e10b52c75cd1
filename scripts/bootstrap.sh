#!/usr/bin/env bash
# Creates the project's virtualenv and installs jobmill with its dev tools: the only setup a clean clone needs.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "jobmill needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'
# The browser tests (tests/browser) drive Debian's chromium through Playwright, whose own browser download
# cannot be used: install chromium when it is missing and this machine allows it.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser tests (apt-get install chromium)"
    if ! (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium); then
      echo "warning: could not install chromium; the browser tests will be skipped" >&2
    fi
  else
    echo "note: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get);" \
      "the browser tests will be skipped. Install it with: sudo apt-get install chromium" >&2
  fi
fi
