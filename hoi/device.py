"""Device and dtype choice: CUDA when present and asked for, never assumed."""
from __future__ import annotations

import warnings

import torch


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device = {str(device)!r}: CUDA is not available on this machine (use --device cpu)")
    return device


def resolve_dtype(device: torch.device, half: bool) -> torch.dtype:
    """fp16 only on CUDA: on CPUs without native half/bf16 units it is many times slower."""
    if half and device.type != "cuda":
        warnings.warn("--half ignored on CPU: reduced precision is many times slower here; using fp32")
        return torch.float32
    return torch.float16 if half else torch.float32
