#!/usr/bin/env bash
# Installs everything the tests need, makes sure Redis answers, then runs ruff, mypy (configured in pyproject.toml:
# strict for pneuradnet/ and service/) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
bash scripts/ensure-redis.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest "$@"
