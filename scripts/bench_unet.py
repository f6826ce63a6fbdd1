#!/usr/bin/env python
"""Benchmark of one InteractDiffusion UNet forward (UNet + position_net + 16 fusers).

Not a test: nothing asserts timings. Every number is measured in the same run,
and comparisons are made within it (interleaved rounds, per-round ratios), so a
noisy shared machine shifts both sides of a ratio alike.

What it prints:
  1. FLOPs of one forward per batch size (torch.utils.flop_counter.FlopCounterMode).
  2. The sustained matmul rate of this machine (large square matmul), sampled
     before the forwards and once per timing round.
  3. Forward time per batch size, achieved GFLOP/s, fraction of the matmul rate,
     the floor (FLOPs / matmul rate) and time / floor.
  4. SDPA vs the naive softmax(QK^T)V attention (the reference's way): time and
     peak-memory ratios.
  5. fuser_scale=1 vs fuser_scale=0 (the UNet skips the fusers entirely at 0).
  6. 90 grounding tokens (30 padded slots, what the released model always feeds)
     vs 3 tokens (1 slot, what a padding-free layout would cost for 1 interaction).
  7. Reduced precision: bf16 on CPUs with native bf16 only; fp16/bf16 on CUDA.

Usage:
  .venv/bin/python scripts/bench_unet.py                 # SD v1.x size, 64x64 latents, CPU fp32
  .venv/bin/python scripts/bench_unet.py --quick         # tiny random config, seconds
  .venv/bin/python scripts/bench_unet.py --device cuda   # adds fp16/bf16 rows
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils import flop_counter  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from interact.fuser import attach_fusers  # noqa: E402
from interact.model import CONFIG_DIR, SD_V1_CONFIG, instantiate  # noqa: E402
from ldm.modules.attention import attention_backend  # noqa: E402

TINY_CONFIG = CONFIG_DIR / "tiny_random.yaml"
GATE = 0.5  # alpha_attn = alpha_dense = 0.5, so the fusers change the output
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT_TOKENS = 77


def log(*parts) -> None:
    print(*parts, flush=True)


def gflop(flops: float) -> float:
    return flops / 1e9


def fmt_g(flops: float) -> str:
    """GFLOP with enough digits for both the real size and the tiny config."""
    g = flops / 1e9
    return f"{g:,.1f}" if abs(g) >= 10 else f"{g:.3f}"


# ----------------------------------------------------------------------------- model and inputs

def build_unet(cfg, device, dtype=torch.float32) -> torch.nn.Module:
    """The `model` section as InteractDiffusion builds it (UNet + position_net + fusers),
    without the VAE and the text encoder; fuser gates set to GATE."""
    with torch.device(device):
        unet = instantiate(cfg.model)
        unet.position_net = instantiate(cfg.interaction.position_net)
        attach_fusers(unet, unet.position_net.out_dim, cfg.interaction.get("fuser_type", "gatedSA"))
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
    gen = torch.Generator().manual_seed(seed)
    ctx_dim = cfg.model.params.context_dim
    x = torch.randn(batch, unet.in_channels, size, size, generator=gen).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    context = torch.randn(batch, PROMPT_TOKENS, ctx_dim, generator=gen).to(device, dtype)
    objs = make_tokens(unet.position_net, batch, slots, device, dtype, gen)
    return x, t, context, objs


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


def count_flops(unet, inputs, fuser_scale: float, backend: str = "sdpa") -> dict:
    """Per-op FLOPs of one forward. On the meta device SDPA takes torch's math path, whose
    QK^T and PV are bmm's, so attention is counted without running anything."""
    with torch.no_grad(), attention_backend(backend), FlopCounterMode(display=False,
                                                                      custom_mapping=flop_mapping()) as fc:
        unet(*inputs, fuser_scale)
    counts = {str(k).replace("aten.", ""): v for k, v in fc.get_flop_counts()["Global"].items()}
    counts["total"] = fc.get_total_flops()
    return counts


# ----------------------------------------------------------------------------- timing and memory

def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


class PeakMemory:
    """Peak memory growth during one call.

    CPU ("hwm"): glibc malloc_trim(0) returns freed heap pages, the RSS is read (baseline),
    the kernel's RSS high-water mark is reset (echo 5 > /proc/self/clear_refs), the call runs,
    and the growth is VmHWM - baseline: every page the process touched, torch CPU tensors
    included (tracemalloc would not see them). CUDA: torch.cuda.max_memory_allocated growth.
    """

    def __init__(self, device):
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


def _proc_status_mib(key: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return None


def native_bf16_cpu() -> tuple[bool, str]:
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


# ----------------------------------------------------------------------------- the benchmark

class Variant:
    def __init__(self, name, slots, fuser_scale, backend):
        self.name, self.slots, self.fuser_scale, self.backend = name, slots, fuser_scale, backend
        self.times, self.ratios, self.peak_mib, self.flops = [], [], None, None


def timed_forward(unet, inputs, variant, device, memory: PeakMemory | None = None) -> tuple[float, float | None]:
    with torch.no_grad(), attention_backend(variant.backend):
        if memory is not None and memory.method in ("hwm", "cuda"):
            with memory:
                synchronize(device)
                start = time.perf_counter()
                unet(*inputs, variant.fuser_scale)
                synchronize(device)
                elapsed = time.perf_counter() - start
            return elapsed, memory.peak_mib
        synchronize(device)
        start = time.perf_counter()
        unet(*inputs, variant.fuser_scale)
        synchronize(device)
        return time.perf_counter() - start, None


def timed_repeats(unet, inputs, variant, device, repeats: int, memory: PeakMemory, after_repeat=None):
    """`repeats` timed forwards, the peak memory read on the first where the method allows;
    `after_repeat(r, elapsed, peak)` runs after each. -> (times, peak)."""
    times, peak = [], None
    for r in range(repeats):
        mem = memory if r == 0 and memory.method in ("hwm", "cuda") else None
        elapsed, p = timed_forward(unet, inputs, variant, device, mem)
        times.append(elapsed)
        peak = p if p is not None else peak
        if after_repeat is not None:
            after_repeat(r, elapsed, p)
    return times, peak


def child_main(spec: dict) -> None:
    """Fresh-process peak-memory measurement: one forward, ru_maxrss growth."""
    torch.set_num_threads(spec["threads"])
    cfg = OmegaConf.load(spec["config"])
    device = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    unet = build_unet(cfg, device, dtype)
    inputs = make_inputs(unet, cfg, spec["batch"], spec["size"], spec["slots"], device, dtype)
    gc.collect()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), attention_backend(spec["backend"]):
        start = time.perf_counter()
        unet(*inputs, spec["fuser_scale"])
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("CHILD_RESULT " + json.dumps({"peak_mib": (peak - base) / 1024, "seconds": elapsed}), flush=True)


def subprocess_peak(args, cfg_path, variant, batch, size) -> float | None:
    spec = dict(config=str(cfg_path), device="cpu", dtype="fp32", batch=batch, size=size, slots=variant.slots,
                fuser_scale=variant.fuser_scale, backend=variant.backend, threads=torch.get_num_threads())
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            return json.loads(line[len("CHILD_RESULT "):])["peak_mib"]
    log(f"  memory subprocess failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return None


def fmt_t(times) -> str:
    if not times:
        return "-"
    med = statistics.median(times)
    if len(times) == 1:
        return f"{med:.3f}"
    return f"{med:.3f} ({min(times):.3f}-{max(times):.3f})"


def fmt_mem(mib) -> str:
    return "-" if mib is None else f"{mib:,.0f}"


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


def run(args) -> None:
    device, cfg_path, cfg, size = device_and_config(args)
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    repeats = max(1, args.repeats)
    mm_n = args.matmul_size or (1024 if args.quick else (8192 if device.type == "cuda" else 4096))
    max_slots = int(cfg.interaction.position_net.params.max_interactions)
    run_start = time.perf_counter()

    log("# InteractDiffusion UNet forward benchmark")
    log(f"torch {torch.__version__}, python {platform.python_version()}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
           f", CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"))
    log(f"config {cfg_path.relative_to(REPO_ROOT) if cfg_path.is_relative_to(REPO_ROOT) else cfg_path}, "
        f"latent {size}x{size}, batch sizes {batches}, repeats {repeats} (median; 1 warm-up forward first), "
        f"fuser gates tanh({GATE}), prompt {PROMPT_TOKENS} tokens, torch.no_grad")

    # Extra dtypes
    extra = []
    if device.type == "cuda":
        extra = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        bf16_note = ("CUDA: " + " and ".join(extra) + " measured; fp32 rows use TF32 for matmuls: "
                     f"{torch.backends.cuda.matmul.allow_tf32}, for convolutions: {torch.backends.cudnn.allow_tf32}")
    else:
        ok, why = native_bf16_cpu()
        if ok:
            extra = ["bf16"]
            bf16_note = f"bf16 measured: {why}"
        else:
            bf16_note = f"bf16 skipped: {why}"
    if args.dtypes != "auto":
        forced = [d.strip() for d in args.dtypes.split(",") if d.strip() and d.strip() != "none"]
        unknown = [d for d in forced if d not in ("fp16", "bf16")]
        if unknown:
            sys.exit(f"--dtypes: unknown {unknown}; choose from fp16, bf16, none, auto")
        if forced and device.type == "cpu" and forced != extra:
            bf16_note = f"{', '.join(forced)} forced by --dtypes on CPU ({why}; emulated rows are not representative)"
        elif not forced:
            bf16_note = f"reduced precision not measured (--dtypes none); auto would have said: {bf16_note}"
        extra = forced
    log(bf16_note)

    # 1. FLOPs, counted on a meta copy (no compute)
    log("\n## 1. FLOPs (FlopCounterMode on a meta-device copy of the model)")
    meta = build_unet(cfg, "meta")
    b0 = batches[0]
    variants = [Variant("base: SDPA, 30 slots (90 tokens), fuser_scale=1", max_slots, 1.0, "sdpa"),
                Variant("naive attention (softmax(QK^T)V)", max_slots, 1.0, "naive"),
                Variant("fuser_scale=0 (fusers skipped)", max_slots, 0.0, "sdpa"),
                Variant("1 slot (3 tokens, padding-free)", 1, 1.0, "sdpa")]
    flops_by_batch = {}
    for b in batches:
        meta_inputs = make_inputs(meta, cfg, b, size, max_slots, "meta", torch.float32)
        flops_by_batch[b] = count_flops(meta, meta_inputs, 1.0)
        c = flops_by_batch[b]
        log(f"batch {b}: {fmt_g(c['total'])} GFLOP = "
            + ", ".join(f"{k} {fmt_g(v)}" for k, v in c.items() if k != "total"))
    for v in variants:
        meta_inputs = make_inputs(meta, cfg, b0, size, v.slots, "meta", torch.float32)
        v.flops = count_flops(meta, meta_inputs, v.fuser_scale, v.backend)["total"]
    base_flops = flops_by_batch[b0]
    log(f"SDPA is counted: on meta it takes torch's math path, so attention QK^T and PV appear as bmm "
        f"({fmt_g(base_flops.get('bmm', 0))} GFLOP at batch {b0}, with a few linears on 3-D views; FLOPs "
        f"count 2 per multiply-add; softmax, norms and elementwise ops are not counted). "
        f"On CPU tensors FlopCounterMode has no formula for aten._scaled_dot_product_flash_attention_for_cpu "
        f"(it would count SDPA as 0); this script registers one.")
    del meta

    # 2.-6. real model
    log(f"\n## Building the model on {device} ...")
    t0 = time.perf_counter()
    unet = build_unet(cfg, device)
    n_params = sum(p.numel() for p in unet.parameters())
    n_fuser = sum(p.numel() for n, p in unet.named_parameters() if ".fuser." in n)
    log(f"built in {time.perf_counter() - t0:.1f} s: {n_params / 1e6:.1f} M parameters "
        f"({n_fuser / 1e6:.1f} M in {len(unet.transformer_blocks())} fusers)")

    memory = PeakMemory(device)
    if args.memory_method == "subprocess" and device.type == "cpu":
        memory.method = "subprocess"
    elif args.memory_method == "hwm" and memory.method != "hwm":
        sys.exit("--memory-method hwm: /proc/self/clear_refs is not writable here")
    elif memory.method is None and device.type == "cpu":
        memory.method = "subprocess"
    log(f"peak memory: {memory.describe()}")

    if args.quick:
        # Cross-check: the meta count equals a count on real tensors (with the CPU SDPA formula).
        real = count_flops(unet, make_inputs(unet, cfg, b0, size, max_slots, device, torch.float32), 1.0)
        same = "equal" if real["total"] == base_flops["total"] else f"DIFFERENT ({gflop(real['total']):.3f})"
        log(f"FLOP count on {device} tensors vs meta: {same}")

    log("\n## 2. Matmul rate")
    mm_dtype = torch.float32
    mats = (torch.randn(mm_n, mm_n, device=device), torch.randn(mm_n, mm_n, device=device))
    matmul_sample(mm_n, device, mm_dtype, 1, mats)  # warm-up
    mm_rates = [matmul_sample(mm_n, device, mm_dtype, 1, mats) for _ in range(3)]
    log(f"{mm_n}x{mm_n} fp32 matmul: " + ", ".join(f"{r:.1f}" for r in mm_rates) + " GFLOP/s"
        + (" (TF32 off)" if device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32 else ""))

    log(f"\n## 3.-6. Forward timings at batch {b0}, variants interleaved round by round")
    inputs = {s: make_inputs(unet, cfg, b0, size, s, device, torch.float32) for s in {v.slots for v in variants}}
    with torch.no_grad():
        synchronize(device)
        t0 = time.perf_counter()
        make_tokens(unet.position_net, b0, max_slots, device, torch.float32, torch.Generator().manual_seed(1))
        synchronize(device)
    pos_net_s = time.perf_counter() - t0
    base = variants[0]
    elapsed, _ = timed_forward(unet, inputs[max_slots], base, device)
    log(f"warm-up forward: {elapsed:.2f} s")
    for r in range(repeats):
        for v in variants:
            mem = memory if r == 0 and memory.method in ("hwm", "cuda") else None
            elapsed, peak = timed_forward(unet, inputs[v.slots], v, device, mem)
            v.times.append(elapsed)
            if peak is not None:
                v.peak_mib = peak
            log(f"  round {r + 1}/{repeats} {v.name}: {elapsed:.3f} s"
                + (f", peak +{peak:,.0f} MiB" if peak is not None else ""))
        for v in variants:
            v.ratios.append(v.times[-1] / base.times[-1])
        mm_rates.append(matmul_sample(mm_n, device, mm_dtype, 1, mats))
        log(f"  round {r + 1}/{repeats} matmul: {mm_rates[-1]:.1f} GFLOP/s")
    if memory.method == "subprocess":
        for v in variants[:2]:
            log(f"  memory subprocess: {v.name} ...")
            v.peak_mib = subprocess_peak(args, cfg_path, v, b0, size)
            log(f"    peak +{fmt_mem(v.peak_mib)} MiB")

    # Per-batch rows: (batch, dtype) -> times, peak, matmul rate
    rows = {(b0, "fp32"): dict(times=base.times, peak=base.peak_mib)}
    for b in batches[1:]:
        log(f"\n## Forward timings at batch {b}, fp32")
        row_inputs = make_inputs(unet, cfg, b, size, max_slots, device, torch.float32)

        def after_repeat(r, elapsed, p):
            mm_rates.append(matmul_sample(mm_n, device, mm_dtype, 1, mats))
            log(f"  repeat {r + 1}/{repeats}: {elapsed:.3f} s" + (f", peak +{p:,.0f} MiB" if p else "")
                + f"; matmul {mm_rates[-1]:.1f} GFLOP/s")

        log(f"warm-up forward: {timed_forward(unet, row_inputs, base, device)[0]:.2f} s")
        times, peak = timed_repeats(unet, row_inputs, base, device, repeats, memory, after_repeat)
        rows[(b, "fp32")] = dict(times=times, peak=peak)
        del row_inputs
    mm_rate = statistics.median(mm_rates)
    for row in rows.values():
        row["mm_rate"] = mm_rate

    # 7. reduced precision
    failed = []
    for name in extra:
        dtype = DTYPES[name]
        log(f"\n## 7. {name}")
        low_mats = tuple(m.to(dtype) for m in mats)
        matmul_sample(mm_n, device, dtype, 1, low_mats)
        low_rate = matmul_sample(mm_n, device, dtype, 3, low_mats)
        log(f"{mm_n}x{mm_n} {name} matmul: {low_rate:.1f} GFLOP/s")
        unet.to(dtype)
        for b in batches:
            try:
                row_inputs = make_inputs(unet, cfg, b, size, max_slots, device, dtype)
                log(f"batch {b} warm-up forward: {timed_forward(unet, row_inputs, base, device)[0]:.3f} s")
                times, peak = timed_repeats(unet, row_inputs, base, device, repeats, memory)
            except Exception as err:  # a benchmark reports a failing dtype instead of dying
                log(f"batch {b}: {name} forward FAILED: {type(err).__name__}: {err}")
                failed.append(f"{name} batch {b}: {type(err).__name__}: {str(err)[:200]}")
                continue
            log(f"batch {b}: {fmt_t(times)} s")
            rows[(b, name)] = dict(times=times, peak=peak, mm_rate=low_rate)
        unet.to(torch.float32)
        del low_mats

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        log(f"\n## Profile of one base forward at batch {b0} (fp32), top ops by self time")
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.no_grad(), profile(activities=acts) as prof:
            unet(*inputs[max_slots], 1.0)
            synchronize(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        log(prof.key_averages().table(sort_by=key, row_limit=15))

    # ------------------------------------------------------------------ summary
    naive, skip, few = variants[1], variants[2], variants[3]
    med = statistics.median
    t_base = med(base.times)
    log(f"\n## Summary ({device}, latent {size}x{size}; total run {time.perf_counter() - run_start:.0f} s)")
    log(f"matmul rate: {mm_rate:.1f} GFLOP/s fp32 ({mm_n}x{mm_n}, median of {len(mm_rates)} samples taken "
        f"before and between the timed forwards; range {min(mm_rates):.1f}-{max(mm_rates):.1f})")
    log(f"peak memory: {memory.describe()}")
    log(f"position_net (tokens for {b0}x{max_slots} slots, computed once per sample, not in the forward): "
        f"{pos_net_s * 1e3:.1f} ms")
    log("")
    log("| batch | dtype | GFLOP | time s, median (min-max) | GFLOP/s | of matmul rate | floor s | time/floor "
        "| peak MiB |")
    log("|---|---|---|---|---|---|---|---|---|")
    for (b, name), row in rows.items():
        f = flops_by_batch[b]["total"]
        t = med(row["times"])
        floor = f / (row["mm_rate"] * 1e9)
        log(f"| {b} | {name} | {fmt_g(f)} | {fmt_t(row['times'])} | {gflop(f) / t:.1f} "
            f"| {gflop(f) / t / row['mm_rate']:.0%} | {floor:.3f} | {t / floor:.2f} | {fmt_mem(row['peak'])} |")
    log("")
    log(f"Variants at batch {b0}, fp32 (ratio = median over rounds of variant time / base time in the same round):")
    log("")
    log("| variant | tokens | GFLOP | time s, median (min-max) | time ratio vs base | peak MiB | mem ratio |")
    log("|---|---|---|---|---|---|---|")
    for v in variants:
        mem_ratio = (f"{v.peak_mib / base.peak_mib:.2f}" if v.peak_mib and base.peak_mib else "-")
        log(f"| {v.name} | {3 * v.slots} | {fmt_g(v.flops)} | {fmt_t(v.times)} | {med(v.ratios):.3f} "
            f"| {fmt_mem(v.peak_mib)} | {mem_ratio} |")
    log("")
    log(f"- SDPA vs naive attention: naive takes {med(naive.ratios):.2f}x the SDPA time"
        + (f" and {naive.peak_mib / base.peak_mib:.2f}x its peak memory "
           f"({fmt_mem(naive.peak_mib)} vs {fmt_mem(base.peak_mib)} MiB)"
           if naive.peak_mib and base.peak_mib else "") + ".")
    fuser_frac_t = 1 - med(skip.ratios)
    fuser_frac_f = 1 - skip.flops / base.flops
    log(f"- Fusers: fuser_scale=1 {t_base:.3f} s vs fuser_scale=0 {med(skip.times):.3f} s (ratio "
        f"{1 / med(skip.ratios):.3f}); the {len(unet.transformer_blocks())} fusers are {fuser_frac_t:.1%} "
        f"of the forward time and "
        f"{fuser_frac_f:.1%} of its FLOPs; scheduled sampling saves that share on every step after "
        f"beta*steps (the reference computes the fusers there anyway).")
    diff = t_base - med(few.times)
    spread = max(base.times) - min(base.times)
    expected = 1 - few.flops / base.flops
    resolved = "" if abs(diff) > spread else (
        f"; that is within the base's own run-to-run spread ({spread:.3f} s), so this run does not resolve it: "
        f"the FLOPs say {expected:.1%}")
    log(f"- Grounding tokens: 90 tokens {t_base:.3f} s vs 3 tokens {med(few.times):.3f} s: "
        f"{diff:+.3f} s saved by 3 tokens ({1 - med(few.ratios):.1%} of the forward{resolved}; "
        f"{fmt_g(base.flops - few.flops)} GFLOP). The released model always pads to {max_slots} slots "
        f"(90 tokens) whatever the number of interactions, so 1 and {max_slots} interactions cost the same; "
        f"the 3-token row is what a padding-free layout would cost for 1 interaction.")
    log(f"- {bf16_note}.")
    for line in failed:
        log(f"- FAILED: {line}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="1,2", help="comma-separated; variants are timed at the first")
    p.add_argument("--size", type=int, default=None, help="latent size (default: the config's image_size, 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--quick", action="store_true", help=f"tiny random config ({TINY_CONFIG.name}), seconds")
    p.add_argument("--config", default=None, help="model config YAML (overrides --quick's choice)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--matmul-size", type=int, default=None, help="square matmul size for the rate")
    p.add_argument("--memory-method", choices=("auto", "hwm", "subprocess"), default="auto",
                   help="CPU peak memory: in-process RSS high-water mark, or a fresh subprocess per variant")
    p.add_argument("--dtypes", default="auto",
                   help="reduced-precision rows: auto (CUDA: fp16,bf16; CPU: bf16 only with native bf16), "
                        "none, or a list such as fp16,bf16 (forcing them on a CPU measures emulation)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one forward")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return
    run(args)


if __name__ == "__main__":
    main()
