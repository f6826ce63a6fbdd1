#!/usr/bin/env bash
# Quick start 1: set up, then generate images + layout overlays for examples/toy_layouts.json
# with the embedded default (the toy InteractDiffusion model, assets/toy_interactdiffusion.pth)
# and print the toy HOI score of what it drew. Extra arguments go to inference_batch.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/python inference_batch.py --input examples/toy_layouts.json --folder outputs/demo --overwrite \
    --grid outputs/demo/grid.png "$@"
.venv/bin/python -m evaluation.toy_score --folder outputs/demo --input examples/toy_layouts.json
echo "[demo] outputs/demo/grid.png (generated | layout), per record NNNNN.png, NNNNN_layout.png, NNNNN.json"
