"""Processes and devices: torchrun's environment, deterministic kernels, mixed precision."""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from hoi.device import resolve_device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """Reads torchrun's environment; NCCL for CUDA, gloo for CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":  # one GPU per torchrun process
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Distributed(rank, world, local_rank, dev)


def make_deterministic() -> None:
    """Deterministic CUDA kernels: without them two identical GPU runs (and so a resumed one)
    differ in the last bits, from atomics in convolution and attention backward passes."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS start-up
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def deterministic_attention(enabled: bool):
    """The math SDPA kernel (the flash / memory-efficient backward passes are not deterministic)."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(device: torch.device, amp: bool, amp_dtype: str) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. On CPU only bf16, and only with native bf16 units:
    elsewhere reduced precision is many times slower than fp32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    warnings.warn("--amp ignored on this CPU: it has no native bf16 units, where reduced precision is many "
                  "times slower than fp32; training in fp32")
    return None

