#!/usr/bin/env bash
# Installs everything, then runs the API (http://127.0.0.1:${PORT:-8000}) and one worker on Redis at REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/ensure-redis.sh
export PYTHONPATH=.  # api, service and worker run from the repository; only pneuradnet is installed
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
.venv/bin/celery -A worker.app worker --loglevel INFO --without-heartbeat --without-gossip --without-mingle &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker' EXIT
.venv/bin/uvicorn api.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
