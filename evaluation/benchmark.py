"""What the benchmarks in scripts/bench_*.py share: printing, formatting medians and per-round
ratios, timing (with CUDA synchronisation), the machine's matmul rate, peak memory, FLOP
counting (with the CPU SDPA kernels), and building the UNet + position_net + fusers model with
random inputs.

Not a test: nothing here asserts timings. The benchmarks compare measurements made in the same
run, interleaved round by round, so a noisy shared machine shifts both sides of a ratio alike.
"""
from __future__ import annotations

import ctypes
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from interact.controls import FuserInput, control_of
from interact.fuser import attach_fusers
from interact.model import CONFIG_DIR, SD_V1_CONFIG, instantiate
from ldm.modules.attention import attention_backend

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = CONFIG_DIR / "tiny_random.yaml"
GATE = 0.5  # alpha_attn = alpha_dense = 0.5, so the fusers change the output
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT_TOKENS = 77


# ----------------------------------------------------------------------------- printing

def log(*parts) -> None:
    print(*parts, flush=True)


def gflop(flops: float) -> float:
    return flops / 1e9


def fmt_g(flops: float) -> str:
    """GFLOP with enough digits for both the real size and the tiny config."""
    g = flops / 1e9
    return f"{g:,.1f}" if abs(g) >= 10 else f"{g:.3f}"


def median_range(xs: Sequence[float], fmt: str = "{:.3f}") -> str:
    """'median (min-max)' of xs, each formatted with fmt."""
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def fmt_t(times: Sequence[float]) -> str:
    """Seconds: '-' when none, the value alone when one, else median (min-max)."""
    if not times:
        return "-"
    if len(times) == 1:
        return f"{statistics.median(times):.3f}"
    return median_range(times)


def ratio_str(xs: Sequence[float], pct: bool = False) -> str:
    return median_range(xs, "{:.1%}" if pct else "{:.3f}")


def fmt_mem(mib: float | None) -> str:
    return "-" if mib is None else f"{mib:,.0f}"


def shown_path(path: Path) -> Path:
    """path relative to the repository when it lies inside it (shorter in the printed header)."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def machine_line(device: torch.device) -> str:
    """torch and python versions, the device, and the CPU's capability and threads."""
    return (f"torch {torch.__version__}, python {platform.python_version()}, device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
               f", CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"))


# ----------------------------------------------------------------------------- interleaved rounds

def per_round_ratios(times: Sequence[float], base_times: Sequence[float]) -> list[float]:
    """times[r] / base_times[r] for every round r both were measured in."""
    return [t / b for t, b in zip(times, base_times)]


def rotated(names: Sequence, round_index: int) -> list:
    """The order of the variants in round `round_index`: rotated by one each round, so no
    variant always runs first (for two variants: alternately one and the other first)."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


# ----------------------------------------------------------------------------- timing and memory

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device, inner: int = 1,
               memory: "PeakMemory | None" = None) -> tuple[float, float | None]:
    """-> (seconds per call over `inner` calls, peak MiB growth or None). The peak is read only
    when `memory` is given and its method works in this process."""
    def go() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        return (time.perf_counter() - start) / inner
    if memory is None or memory.method not in ("hwm", "cuda"):
        return go(), None
    with memory:
        elapsed = go()
    return elapsed, memory.peak_mib


def matmul_sample(n: int, device, dtype, reps: int = 1, mats=None) -> float:
    """GFLOP/s of an n x n @ n x n matmul: median of `reps` timed products."""
    a, b = mats if mats is not None else (torch.randn(n, n, device=device, dtype=dtype),
                                          torch.randn(n, n, device=device, dtype=dtype))
    rates = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory growth during one call.

    CPU ("hwm"): glibc malloc_trim(0) returns freed heap pages, the RSS is read (baseline),
    the kernel's RSS high-water mark is reset (echo 5 > /proc/self/clear_refs), the call runs,
    and the growth is VmHWM - baseline: every page the process touched, torch CPU tensors
    included (tracemalloc would not see them). CUDA: torch.cuda.max_memory_allocated growth.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.method = None
        if device.type == "cuda":
            self.method = "cuda"
        elif device.type == "cpu" and self._hwm_resettable():
            self.method = "hwm"
        try:
            self._libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None

    @staticmethod
    def _hwm_resettable() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _proc_status_mib("VmHWM") is not None
        except OSError:
            return False

    def describe(self) -> str:
        return {
            "cuda": "torch.cuda.max_memory_allocated growth over the allocated memory before the forward",
            "hwm": ("RSS high-water-mark growth in this process: malloc_trim(0), read VmRSS, reset VmHWM "
                    "(/proc/self/clear_refs), forward, read VmHWM; counts torch CPU tensors and allocator slack"),
            "subprocess": ("fresh subprocess per variant: ru_maxrss after one forward minus ru_maxrss after the "
                           "model build (a lower bound if building peaked higher than the forward)"),
            None: "not measured",
        }[self.method]

    def __enter__(self):
        gc.collect()
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.method == "hwm":
            if self._libc is not None:
                self._libc.malloc_trim(0)
            self.base = _proc_status_mib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        self.peak_mib = None
        return self

    def __exit__(self, *exc):
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.method == "hwm":
            self.peak_mib = _proc_status_mib("VmHWM") - self.base
        return False


def native_bf16_cpu() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (else torch emulates it), and why."""
    cap = torch.backends.cpu.get_cpu_capability()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    bf16_flags = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if "AVX512" in cap and bf16_flags:
        return True, f"CPU capability {cap}, flags {', '.join(bf16_flags)}"
    return False, (f"CPU capability {cap}, no avx512_bf16/amx_bf16 flag: bf16 would be emulated "
                   f"(converted to fp32 per op), so it is not measured")


# ----------------------------------------------------------------------------- FLOPs

def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_mapping() -> dict:
    """FlopCounterMode has formulas for the CUDA SDPA kernels only; on CPU tensors SDPA runs
    aten._scaled_dot_product_flash_attention_for_cpu (and its backward), which it would count as
    0. Add them."""
    ops = {"_scaled_dot_product_flash_attention_for_cpu": _cpu_flash_sdpa_flop,
           "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_flash_sdpa_backward_flop}
    return {getattr(torch.ops.aten, name): f for name, f in ops.items() if hasattr(torch.ops.aten, name)}


def unet_forward(unet: torch.nn.Module, inputs, fuser_scale: float) -> torch.Tensor:
    """One forward of `unet` (from build_unet) on make_inputs' (latents, timesteps, context,
    tokens), the tokens as its control's entry of the controls mapping at `fuser_scale`."""
    x, t, context, tokens = inputs
    entry = {control_of(unet.position_net).name: FuserInput(tokens, fuser_scale)} if fuser_scale else {}
    return unet(x, t, context, entry)


def count_flops(call: Callable[[], object], backend: str = "sdpa") -> dict:
    """Per-op FLOPs of `call()` (one forward), and "total". On the meta device SDPA takes torch's
    math path, whose QK^T and PV are bmm's, so attention is counted without running anything."""
    with torch.no_grad(), attention_backend(backend), FlopCounterMode(display=False,
                                                                      custom_mapping=flop_mapping()) as fc:
        call()
    counts = {str(k).replace("aten.", ""): v for k, v in fc.get_flop_counts()["Global"].items()}
    counts["total"] = fc.get_total_flops()
    return counts


# ----------------------------------------------------------------------------- model and inputs

def build_unet(cfg, device, dtype=torch.float32) -> torch.nn.Module:
    """The `model` section as InteractDiffusion builds it (UNet + position_net + fusers),
    without the VAE and the text encoder; fuser gates set to GATE."""
    with torch.device(device):
        unet = instantiate(cfg.model)
        unet.position_net = instantiate(cfg.interaction.position_net)
        attach_fusers(unet, unet.position_net.out_dim, cfg.interaction.get("fuser_type", "gatedSA"),
                      key=control_of(unet.position_net).name)
    with torch.no_grad():
        for _, block in unet.transformer_blocks():
            block.fuser.alpha_attn.fill_(GATE)
            block.fuser.alpha_dense.fill_(GATE)
    return unet.to(dtype).eval().requires_grad_(False)


def make_tokens(position_net, batch: int, slots: int, device, dtype, gen) -> torch.Tensor:
    """Grounding tokens [B, 3*slots, D] from position_net, every slot real (mask 1)."""
    def boxes():
        xy = torch.rand(batch, slots, 2, generator=gen) * 0.5
        wh = torch.rand(batch, slots, 2, generator=gen) * 0.5 + 0.05
        return torch.cat([xy, xy + wh], dim=-1).to(device, dtype)

    def emb():
        return torch.randn(batch, slots, position_net.in_dim, generator=gen).to(device, dtype)

    masks = torch.ones(batch, slots, device=device, dtype=dtype)
    with torch.no_grad():
        return position_net(boxes(), boxes(), boxes(), masks, emb(), emb(), emb())


def make_inputs(unet, cfg, batch: int, size: int, slots: int, device, dtype, seed: int = 0):
    """Random (latents, timesteps, prompt context, grounding tokens) for one forward."""
    gen = torch.Generator().manual_seed(seed)
    ctx_dim = cfg.model.params.context_dim
    x = torch.randn(batch, unet.in_channels, size, size, generator=gen).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    context = torch.randn(batch, PROMPT_TOKENS, ctx_dim, generator=gen).to(device, dtype)
    tokens = make_tokens(unet.position_net, batch, slots, device, dtype, gen)
    return x, t, context, tokens


def device_and_config(args):
    """--device (checked), --threads, and the config (--config, else tiny with --quick, else SD
    v1.x) with its latent size (--size or the config's) -> (device, config path, config, size)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available in this torch build / on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg_path = Path(args.config) if args.config else (TINY_CONFIG if args.quick else SD_V1_CONFIG)
    cfg = OmegaConf.load(cfg_path)
    return device, cfg_path, cfg, args.size or int(cfg.model.params.image_size)
