#!/usr/bin/env bash
# Create .venv (if missing) and install the project with a CPU PyTorch, offline-safe.
# Idempotent: a second run only checks that the environment imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import interact, torch, transformers, omegaconf, safetensors, pytest, diffusers, scipy, tensorboard" 2>/dev/null \
   || ! "$VPY" -c "import importlib.util as u; assert u.find_spec('open_clip') and u.find_spec('torch_fidelity')" 2>/dev/null; then
  echo "[setup] installing dependencies (CPU PyTorch 2.13.0)"
  # torch first and pinned: a CPU wheel; unpinned, pip would pull a multi-GB CUDA build.
  "$VPY" -m pip install -q "torch==2.13.0"
  "$VPY" -m pip install -q -e ".[dev]"
  # Only for its CLIP BPE vocabulary file: --no-deps keeps torchvision (broken beside CPU torch) out.
  "$VPY" -m pip install -q --no-deps open_clip_torch
  # The paper's FID/KID tool, for the parity test (tests/test_fid_kid.py) only: --no-deps, as it
  # pulls torchvision; the test runs its torchvision-free parts in a separate process.
  "$VPY" -m pip install -q --no-deps "torch-fidelity==0.4.0"
fi
# A torchvision that fails to import breaks transformers; it must not be in the CPU install.
if "$VPY" -c "import importlib.util as u; assert u.find_spec('torchvision')" 2>/dev/null \
   && ! "$VPY" -c "import torchvision" 2>/dev/null; then
  echo "[setup] removing a torchvision that cannot import beside this torch"
  "$VPY" -m pip uninstall -y -q torchvision
fi
echo "[setup] ok: $("$VPY" -c 'import torch; print("torch", torch.__version__)')"
