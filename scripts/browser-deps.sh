#!/usr/bin/env bash
# Headless Chromium for the browser test, from Debian's packages (no browser download).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "Chromium is missing and cannot be installed here (needs root and apt-get)" >&2
  exit 1
fi
echo "Installing Debian's chromium for the browser test" >&2
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
