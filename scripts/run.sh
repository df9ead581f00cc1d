#!/usr/bin/env bash
# Set up .venv if needed and start the annotation app on the shipped default weights.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f app.py ]; then
    echo "app.py is not part of this checkout yet; the library and CLI are ready: .venv/bin/medclipseg --help" >&2
    exit 1
fi
exec .venv/bin/python app.py "$@"
