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
# The web page's browser tests drive Debian's Chromium (Playwright never downloads a browser here); they fail
# without it. A no-op when /usr/bin/chromium exists.
if [[ "${1:-}" == "--test" && ! -x /usr/bin/chromium ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "No /usr/bin/chromium: the browser tests will fail (Debian: sudo apt-get install chromium)." >&2
    fi
fi
