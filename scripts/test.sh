#!/usr/bin/env bash
# Quick start 2: set up, then run the whole test suite, the slow tests included (what CI runs).
# Extra arguments go to pytest and win over the default: `bash scripts/test.sh -m "not slow"` is
# the fast set alone (what a plain `pytest` runs), `-m slow` the slow ones, `-k name` a selection.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python -m pytest -q -m "" "$@"
