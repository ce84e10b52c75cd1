#!/usr/bin/env bash
# Creates bench/.peers-venv (separate from jobmill's .venv: the peers pin their own redis-py, psycopg, ...)
# and installs bench/peers/requirements.txt into it. Idempotent: a stamp file holds the hash of the
# requirements it was built from, and a venv whose stamp matches is reused as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-$(dirname "$here")/.peers-venv}"
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "the peers' venv needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# Drop the stamp first: an install that fails half-way must not be taken for a good one next time.
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" >"$stamp"
echo "peers venv ready: $venv"
