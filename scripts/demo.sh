#!/usr/bin/env bash
# Install everything, then run the demo (see scripts/demo.py): `bash scripts/demo.sh [start|stop]`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-start}" != stop ]; then
    bash scripts/install.sh
fi
exec .venv/bin/python scripts/demo.py "$@"
