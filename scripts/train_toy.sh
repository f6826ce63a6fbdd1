#!/usr/bin/env bash
# Rebuilds the embedded default, assets/toy_interactdiffusion.pth, from nothing (seeds fixed):
# the toy world's data, the text-to-image backbone (configs/toy_base.yaml, the counterpart of
# SD v1.x), the InteractDiffusion fine-tune from it (configs/toy_hoi.yaml), then an fp16 pack.
# About 20 minutes on 2 CPU cores. A killed run resumes where it stopped when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! $PY -c "import sys; from dataset.toy.generate import is_complete; sys.exit(not is_complete('data/toy'))"; then
    $PY -m dataset.toy generate --out data/toy --train 20000 --test 1000 --seed 0 --overwrite
fi
$PY main.py --yaml_file configs/toy_base.yaml --name toy_base
$PY main.py --yaml_file configs/toy_hoi.yaml --name toy_interact --official_ckpt_name runs/toy_base/model_final.pth
$PY -m interact.checkpoint pack runs/toy_interact/model_final.pth assets/toy_interactdiffusion.pth
