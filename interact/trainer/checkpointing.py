"""Where a run keeps its files, what a checkpoint holds besides weights (the random number
generators' states), and which checkpoint a restart resumes from."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interact.checkpoint import CheckpointError, read_file


class ResumeError(RuntimeError):
    """A run folder's checkpoint that this run cannot continue (another config or backbone)."""


@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pth"

    def kept(self, iters: int) -> Path:
        return self.checkpoints / f"checkpoint_{iters:08d}.pth"

    @property
    def final(self) -> Path:
        return self.root / "model_final.pth"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def written_folders(self) -> list[Path]:
        """The folders whose files are written atomically (and so may hold a killed write's temporary)."""
        return [self.root, self.checkpoints, self.previews]

    def resume_candidates(self) -> list[Path]:
        """latest.pth, then the kept checkpoints, newest first."""
        kept = [(int(m[1]), p) for p in self.checkpoints.glob("checkpoint_*.pth")
                if (m := re.fullmatch(r"checkpoint_(\d+)\.pth", p.name))]
        return [p for p in [self.latest] if p.is_file()] + [p for _, p in sorted(kept, reverse=True)]


def read_resume_checkpoint(paths: RunPaths, log=print) -> tuple[Path, dict] | None:
    """The newest readable checkpoint of the run: latest.pth, or when that one is damaged (a
    disk that filled up, a copy cut short) the newest intact checkpoint_N.pth, saying so. None
    when the run has no checkpoint; CheckpointError when it has some and none is readable."""
    candidates = paths.resume_candidates()
    damaged = []
    for path in candidates:
        try:
            raw = read_file(path)
        except CheckpointError as err:
            damaged.append(str(err))
            continue
        for reason in damaged:
            log(f"[resume] skipped {reason}")
        if damaged:
            log(f"[resume] falling back to {path.name}, the newest intact checkpoint")
        return path, raw
    if damaged:
        raise CheckpointError(f"{paths.checkpoints}: no intact checkpoint to resume from ({damaged[0]}); move the "
                              f"folder away to start over")
    return None


def rng_states() -> dict:
    """Tensors and plain values only, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():  # nothing here draws from it; kept for user code that does
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])

