#!/usr/bin/env bash
# One command from a fresh clone to a running gallery: installs the virtualenv,
# prepares the database, generates and imports the demo catalog (first run
# only), embeds whatever is not embedded, builds the index, then serves the site
# with an embedded Redis and one worker. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
py=.venv/bin/python
$py manage.py migrate --noinput -v0
$py manage.py setup_demo
$py manage.py embed_catalog
$py manage.py build_index --if-needed
exec $py manage.py serve "$@"
