#!/usr/bin/env bash
# Makes sure the project's virtualenv exists and links it as .venv.
# The virtualenv lives outside the clone, keyed by a hash of the requirements files,
# so a fresh clone (CI's included) reuses it instead of reinstalling torch.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
key="$( (cat "$root/requirements.txt" "$root/requirements-dev.txt"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
venv="${GALLERY_VENV_HOME:-$HOME/.cache/visual-gallery}/venv-$key"
if [ ! -x "$venv/.ready" ]; then
  echo "Installing the project's virtualenv into $venv (torch is large: a few minutes the first time)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet -r "$root/requirements-dev.txt" >&2
  printf '#!/bin/sh\nexit 0\n' > "$venv/.ready" && chmod +x "$venv/.ready"
fi
ln -sfn "$venv" "$root/.venv"
