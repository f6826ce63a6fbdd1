#!/usr/bin/env bash
# Quick start 1: set up, then generate images + layout overlays for examples/layouts.json
# with the embedded default model. Extra arguments go to inference_batch.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python inference_batch.py --input examples/layouts.json --folder outputs/demo --overwrite "$@"
echo "[demo] images, *_layout.png overlays and *.json sidecars are in outputs/demo/"
