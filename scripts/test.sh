#!/usr/bin/env bash
# The test suite, on SQLite and then on PostgreSQL (127.0.0.1:5432, database
# "test"; set TEST_POSTGRES_URL to use another, or TEST_POSTGRES_URL=skip).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
bash scripts/browser-deps.sh || echo "Chromium could not be installed: the browser test will be skipped" >&2
py=.venv/bin/python
echo "== SQLite =="
env -u DATABASE_URL $py -m pytest "$@"
postgres="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
if [ "$postgres" = skip ]; then
  echo "== PostgreSQL: skipped (TEST_POSTGRES_URL=skip) =="
else
  echo "== PostgreSQL ($postgres) =="
  DATABASE_URL="$postgres" $py -m pytest "$@"
fi
