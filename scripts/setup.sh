#!/usr/bin/env bash
# Create .venv in the repository root and install the project (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-stamp
want="$(cat requirements.txt requirements-dev.txt requirements-scale.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # The build backend is installed here rather than in an isolated build environment, so
    # that the editable install (and the wheel tests/test_packaging.py builds) use this one.
    .venv/bin/python -m pip install --quiet --upgrade pip "setuptools>=77"
    .venv/bin/python -m pip install --quiet -r requirements-dev.txt
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$want" > "$stamp"
fi
