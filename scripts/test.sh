#!/usr/bin/env bash
# Install everything, then run the linters, the type checker and the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
.venv/bin/ruff check s3regfs tests benchmarks scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
