#!/usr/bin/env bash
# Installs PNEURADNET into ./.venv: the package with its service, runtime and (with --test) test dependencies,
# pinned by constraints.txt, and the default model package (with --no-deps: its declared dependencies clash
# with ours, and only its model file and radiographs are used).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="tensorflow,service"
[[ "${1:-}" == "--test" ]] && extras="$extras,test"

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e ".[$extras]"
.venv/bin/pip install --quiet --no-deps "pneumonia-model-package==0.3.0"
