#!/usr/bin/env bash
# Makes sure the PostgreSQL server the tests use answers on 127.0.0.1:5432: starts an installed but stopped
# cluster. With JOBMILL_REQUIRE_POSTGRES=1 (CI) a server that cannot be reached is an error; otherwise the
# PostgreSQL tests skip themselves.
set -uo pipefail
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null && ! pg_up && command -v pg_ctlcluster >/dev/null; then
  for version in $(ls /etc/postgresql 2>/dev/null); do
    echo "starting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
fi
if ! pg_up; then
  if [ "${JOBMILL_REQUIRE_POSTGRES:-0}" = "1" ]; then
    echo "PostgreSQL is required (JOBMILL_REQUIRE_POSTGRES=1) but does not answer on 127.0.0.1:5432" >&2
    exit 1
  fi
  echo "PostgreSQL is not reachable: its tests will be skipped" >&2
fi
exit 0
