#!/bin/sh
# Referral sessions/s: passwd-file vs SQLite and PostgreSQL with and without
# the auth cache, back to back, twice (run from the repository root).
set -e
B="${PYTHON:-.venv/bin/python} benchmarks/referral_login.py -c ${CONNECTIONS:-32} -d ${DURATION:-10} -W 2"
for round in 1 2; do
  echo "=== round $round"
  for case in "passwd-file|" "sql|--auth-cache-size 10M" "pgsql|--auth-cache-size 10M" "sql|" "pgsql|"; do
    kind=${case%%|*}
    flags=${case#*|}
    echo "--- $kind ${flags:-(no cache)}"
    $B --passdb-kind "$kind" --server-args "$flags" | tail -2
  done
done
