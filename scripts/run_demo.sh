#!/usr/bin/env bash
# `make run`: migrate the local database, make sure tenant `demo` has an admin key (created on the first
# run, kept in var/demo-admin.key, mode 0600), print how to use it, then run `jobmill serve` with the demo
# handlers and embedded workers until Ctrl-C.
#
# JOBMILL_HOST / JOBMILL_PORT choose the address (default 127.0.0.1:8000); the usual JOBMILL_* settings
# (JOBMILL_DATABASE_URL, ...) apply as everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

host="${JOBMILL_HOST:-127.0.0.1}"
port="${JOBMILL_PORT:-8000}"
jobmill=.venv/bin/jobmill
key_file=var/demo-admin.key
mkdir -p var

if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "something is already listening on $host:$port; stop it, or pick another port: JOBMILL_PORT=8001 make run" >&2
  exit 1
fi

"$jobmill" migrate >/dev/null

# Reuse the stored key while the database still knows it (a deleted database forgets its keys).
key=""
if [[ -s "$key_file" ]]; then
  key="$(<"$key_file")"
  key_id="${key#jm_}"
  key_id="${key_id%%_*}"
  if ! "$jobmill" keys list --tenant demo | awk -v id="$key_id" '$1 == id && $4 == "active" {found=1} END {exit !found}'; then
    echo "the key in $key_file is unknown to this database: creating a new one"
    key=""
  fi
fi
if [[ -z "$key" ]]; then
  key="$("$jobmill" keys create --tenant demo --role admin --name "make run" | tail -n 1)"
  (umask 077 && printf '%s\n' "$key" >"$key_file.tmp")
  mv "$key_file.tmp" "$key_file"
fi
chmod 600 "$key_file"

base="http://$host:$port"
env_prefix="JOBMILL_API_KEY=$key"
[[ "$base" == "http://127.0.0.1:8000" ]] || env_prefix="JOBMILL_URL=$base $env_prefix"

cat <<EOF

  jobmill demo
  dashboard   $base/
  API docs    $base/docs
  admin key   $key   (tenant demo, kept in $key_file)

  Try, in another terminal, from this folder:

  $env_prefix $jobmill submit demo.transcode --param steps=20 --param delay_s=0.1 --wait
  curl -s -X POST $base/api/v1/jobs -H "Authorization: Bearer $key" -H 'content-type: application/json' -d '{"kind": "demo.sleep", "params": {"seconds": 5}}'

EOF

exec "$jobmill" serve --host "$host" --port "$port" --app jobmill.demo.handlers
