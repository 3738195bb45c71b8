#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine that has python3, then run it.
# Used verbatim by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in the [test] extra (torch==2.13.0): a CPU build that lies on these machines' disk.
.venv/bin/python -m pip install -q -e '.[test]'
# A real headless browser for the HTML report tests (Debian's chromium); optional elsewhere.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "note: chromium could not be installed; browser tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
