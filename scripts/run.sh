#!/usr/bin/env bash
# Set up .venv if needed and start the annotation app on the shipped default weights.
# Open http://127.0.0.1:7860 (arguments go to app.py, e.g. --port 8000 or --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
