"""Where the repository keeps its configs and the embedded default (shared by the model, the
controls' checkpoint formats and the tools)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
SD_V1_CONFIG = CONFIG_DIR / "sd_v1_interact.yaml"
SD_V1_GLIGEN_CONFIG = CONFIG_DIR / "sd_v1_gligen.yaml"   # the released GLIGEN box + text model
# The embedded default: the toy InteractDiffusion model and the config it was trained with.
EMBEDDED_CKPT = REPO_ROOT / "assets" / "toy_interactdiffusion.pth"
EMBEDDED_CONFIG = CONFIG_DIR / "toy_hoi.yaml"
