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
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a file: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from evaluation.benchmark import (DTYPES, GATE, PROMPT_TOKENS, TINY_CONFIG, PeakMemory, build_unet,  # noqa: E402
                                  count_flops, device_and_config, fmt_g, fmt_mem, fmt_t, gflop, log, machine_line,
                                  make_inputs, make_tokens, matmul_sample, native_bf16_cpu,
                                  shown_path, synchronize, timed_call, unet_forward)
from ldm.modules.attention import attention_backend  # noqa: E402


@dataclass
class Variant:
    """One way of running the base forward at the first batch size, timed round by round."""
    name: str
    slots: int
    fuser_scale: float
    backend: str
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    flops: float | None = None


def variants_of(max_slots: int) -> list[Variant]:
    """The base (first) and what each is compared with."""
    return [Variant("base: SDPA, 30 slots (90 tokens), fuser_scale=1", max_slots, 1.0, "sdpa"),
            Variant("naive attention (softmax(QK^T)V)", max_slots, 1.0, "naive"),
            Variant("fuser_scale=0 (fusers skipped)", max_slots, 0.0, "sdpa"),
            Variant("1 slot (3 tokens, padding-free)", 1, 1.0, "sdpa")]


@dataclass
class Setup:
    """What every part of one run measures with."""
    device: torch.device
    cfg_path: Path
    cfg: object
    size: int
    batches: list[int]
    repeats: int
    max_slots: int


class MatmulRate:
    """The machine's sustained matmul rate: an mm_n^2 fp32 product on fixed matrices, sampled
    before the forwards and between their rounds."""

    def __init__(self, mm_n: int, device: torch.device):
        self.n, self.device = mm_n, device
        self.mats = (torch.randn(mm_n, mm_n, device=device), torch.randn(mm_n, mm_n, device=device))
        self.rates: list[float] = []

    def sample(self) -> float:
        self.rates.append(matmul_sample(self.n, self.device, torch.float32, 1, self.mats))
        return self.rates[-1]


def timed_forward(unet, inputs, variant, device, memory: PeakMemory | None = None) -> tuple[float, float | None]:
    with torch.no_grad(), attention_backend(variant.backend):
        return timed_call(lambda: unet_forward(unet, inputs, variant.fuser_scale), device, 1, memory)


def timed_repeats(unet, inputs, variant, device, repeats: int, memory: PeakMemory, after_repeat=None):
    """`repeats` timed forwards, the peak memory read on the first where the method allows;
    `after_repeat(r, elapsed, peak)` runs after each. -> (times, peak)."""
    times, peak = [], None
    for r in range(repeats):
        elapsed, p = timed_forward(unet, inputs, variant, device, memory if r == 0 else None)
        times.append(elapsed)
        peak = p if p is not None else peak
        if after_repeat is not None:
            after_repeat(r, elapsed, p)
    return times, peak


# ----------------------------------------------------------------------------- peak memory in a fresh process

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
        unet_forward(unet, inputs, spec["fuser_scale"])
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("CHILD_RESULT " + json.dumps({"peak_mib": (peak - base) / 1024, "seconds": elapsed}), flush=True)


def subprocess_peak(cfg_path, variant, batch, size) -> float | None:
    spec = dict(config=str(cfg_path), device="cpu", dtype="fp32", batch=batch, size=size, slots=variant.slots,
                fuser_scale=variant.fuser_scale, backend=variant.backend, threads=torch.get_num_threads())
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD_RESULT "):
            return json.loads(line[len("CHILD_RESULT "):])["peak_mib"]
    log(f"  memory subprocess failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return None


# ----------------------------------------------------------------------------- the parts of a run

def reduced_precision(device: torch.device, dtypes: str) -> tuple[list[str], str]:
    """The reduced-precision dtypes to measure (--dtypes, else what this device computes natively)
    and the sentence that says why."""
    if device.type == "cuda":
        extra = ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        note = ("CUDA: " + " and ".join(extra) + " measured; fp32 rows use TF32 for matmuls: "
                f"{torch.backends.cuda.matmul.allow_tf32}, for convolutions: {torch.backends.cudnn.allow_tf32}")
    else:
        ok, why = native_bf16_cpu()
        extra = ["bf16"] if ok else []
        note = f"bf16 measured: {why}" if ok else f"bf16 skipped: {why}"
    if dtypes == "auto":
        return extra, note
    forced = [d.strip() for d in dtypes.split(",") if d.strip() and d.strip() != "none"]
    unknown = [d for d in forced if d not in ("fp16", "bf16")]
    if unknown:
        sys.exit(f"--dtypes: unknown {unknown}; choose from fp16, bf16, none, auto")
    if forced and device.type == "cpu" and forced != extra:
        note = f"{', '.join(forced)} forced by --dtypes on CPU ({why}; emulated rows are not representative)"
    elif not forced:
        note = f"reduced precision not measured (--dtypes none); auto would have said: {note}"
    return forced, note


def count_all_flops(setup: Setup, variants: list[Variant]) -> dict[int, dict]:
    """Part 1: FLOPs per batch size and per variant, on a meta copy (nothing runs).
    Sets each variant's `flops`; -> {batch: per-op counts}."""
    log("\n## 1. FLOPs (FlopCounterMode on a meta-device copy of the model)")
    cfg, size, b0 = setup.cfg, setup.size, setup.batches[0]
    meta = build_unet(cfg, "meta")
    flops_by_batch = {}
    for b in setup.batches:
        meta_inputs = make_inputs(meta, cfg, b, size, setup.max_slots, "meta", torch.float32)
        flops_by_batch[b] = count_flops(lambda: unet_forward(meta, meta_inputs, 1.0))
        c = flops_by_batch[b]
        log(f"batch {b}: {fmt_g(c['total'])} GFLOP = "
            + ", ".join(f"{k} {fmt_g(v)}" for k, v in c.items() if k != "total"))
    for v in variants:
        meta_inputs = make_inputs(meta, cfg, b0, size, v.slots, "meta", torch.float32)
        v.flops = count_flops(lambda: unet_forward(meta, meta_inputs, v.fuser_scale), v.backend)["total"]
    log(f"SDPA is counted: on meta it takes torch's math path, so attention QK^T and PV appear as bmm "
        f"({fmt_g(flops_by_batch[b0].get('bmm', 0))} GFLOP at batch {b0}, with a few linears on 3-D views; FLOPs "
        f"count 2 per multiply-add; softmax, norms and elementwise ops are not counted). "
        f"On CPU tensors FlopCounterMode has no formula for aten._scaled_dot_product_flash_attention_for_cpu "
        f"(it would count SDPA as 0); this script registers one.")
    return flops_by_batch


def build_timed_model(setup: Setup) -> torch.nn.Module:
    log(f"\n## Building the model on {setup.device} ...")
    t0 = time.perf_counter()
    unet = build_unet(setup.cfg, setup.device)
    n_params = sum(p.numel() for p in unet.parameters())
    n_fuser = sum(p.numel() for n, p in unet.named_parameters() if ".fuser." in n)
    log(f"built in {time.perf_counter() - t0:.1f} s: {n_params / 1e6:.1f} M parameters "
        f"({n_fuser / 1e6:.1f} M in {len(unet.transformer_blocks())} fusers)")
    return unet


def choose_memory(device: torch.device, method: str) -> PeakMemory:
    """--memory-method: in this process where the kernel allows, else a fresh subprocess (CPU)."""
    memory = PeakMemory(device)
    if method == "subprocess" and device.type == "cpu":
        memory.method = "subprocess"
    elif method == "hwm" and memory.method != "hwm":
        sys.exit("--memory-method hwm: /proc/self/clear_refs is not writable here")
    elif memory.method is None and device.type == "cpu":
        memory.method = "subprocess"
    log(f"peak memory: {memory.describe()}")
    return memory


def cross_check_flops(setup: Setup, unet, base_flops: dict) -> None:
    """The meta count equals a count on real tensors (with the CPU SDPA formula)."""
    inputs = make_inputs(unet, setup.cfg, setup.batches[0], setup.size, setup.max_slots, setup.device, torch.float32)
    real = count_flops(lambda: unet_forward(unet, inputs, 1.0))
    same = "equal" if real["total"] == base_flops["total"] else f"DIFFERENT ({gflop(real['total']):.3f})"
    log(f"FLOP count on {setup.device} tensors vs meta: {same}")


def measure_matmul(setup: Setup, mm_n: int) -> MatmulRate:
    """Part 2: a warm-up product, then three samples."""
    log("\n## 2. Matmul rate")
    rate = MatmulRate(mm_n, setup.device)
    matmul_sample(mm_n, setup.device, torch.float32, 1, rate.mats)  # warm-up
    for _ in range(3):
        rate.sample()
    log(f"{mm_n}x{mm_n} fp32 matmul: " + ", ".join(f"{r:.1f}" for r in rate.rates) + " GFLOP/s"
        + (" (TF32 off)" if setup.device.type == "cuda" and not torch.backends.cuda.matmul.allow_tf32 else ""))
    return rate


def time_position_net(setup: Setup, unet) -> float:
    """Seconds to compute the grounding tokens of one batch (outside the UNet forward)."""
    device, b0 = setup.device, setup.batches[0]
    with torch.no_grad():
        synchronize(device)
        t0 = time.perf_counter()
        make_tokens(unet.position_net, b0, setup.max_slots, device, torch.float32, torch.Generator().manual_seed(1))
        synchronize(device)
    return time.perf_counter() - t0


def time_variants(setup: Setup, unet, inputs: dict, variants: list[Variant], memory: PeakMemory,
                  matmul: MatmulRate) -> None:
    """Parts 3-6: every variant once per round, in the same order, a matmul sample after each
    round; each variant's time is also kept as a ratio to the base's in the same round."""
    device, repeats, base = setup.device, setup.repeats, variants[0]
    elapsed, _ = timed_forward(unet, inputs[setup.max_slots], base, device)
    log(f"warm-up forward: {elapsed:.2f} s")
    for r in range(repeats):
        for v in variants:
            elapsed, peak = timed_forward(unet, inputs[v.slots], v, device, memory if r == 0 else None)
            v.times.append(elapsed)
            if peak is not None:
                v.peak_mib = peak
            log(f"  round {r + 1}/{repeats} {v.name}: {elapsed:.3f} s"
                + (f", peak +{peak:,.0f} MiB" if peak is not None else ""))
        for v in variants:
            v.ratios.append(v.times[-1] / base.times[-1])
        log(f"  round {r + 1}/{repeats} matmul: {matmul.sample():.1f} GFLOP/s")
    if memory.method == "subprocess":
        for v in variants[:2]:
            log(f"  memory subprocess: {v.name} ...")
            v.peak_mib = subprocess_peak(setup.cfg_path, v, setup.batches[0], setup.size)
            log(f"    peak +{fmt_mem(v.peak_mib)} MiB")


def time_batches(setup: Setup, unet, base: Variant, memory: PeakMemory, matmul: MatmulRate, rows: dict) -> None:
    """The base forward at every further batch size, fp32, a matmul sample after each repeat."""
    repeats = setup.repeats
    for b in setup.batches[1:]:
        log(f"\n## Forward timings at batch {b}, fp32")
        row_inputs = make_inputs(unet, setup.cfg, b, setup.size, setup.max_slots, setup.device, torch.float32)

        def after_repeat(r, elapsed, p):
            rate = matmul.sample()
            log(f"  repeat {r + 1}/{repeats}: {elapsed:.3f} s" + (f", peak +{p:,.0f} MiB" if p else "")
                + f"; matmul {rate:.1f} GFLOP/s")

        log(f"warm-up forward: {timed_forward(unet, row_inputs, base, setup.device)[0]:.2f} s")
        times, peak = timed_repeats(unet, row_inputs, base, setup.device, repeats, memory, after_repeat)
        rows[(b, "fp32")] = dict(times=times, peak=peak)
        del row_inputs


def time_reduced_precision(setup: Setup, unet, base: Variant, memory: PeakMemory, matmul: MatmulRate,
                           extra: list[str], rows: dict) -> list[str]:
    """Part 7: the matmul rate and the base forward at every batch size in each dtype of
    `extra`; a failing dtype is reported, not fatal. -> the failures."""
    device, mm_n = setup.device, matmul.n
    failed = []
    for name in extra:
        dtype = DTYPES[name]
        log(f"\n## 7. {name}")
        low_mats = tuple(m.to(dtype) for m in matmul.mats)
        matmul_sample(mm_n, device, dtype, 1, low_mats)
        low_rate = matmul_sample(mm_n, device, dtype, 3, low_mats)
        log(f"{mm_n}x{mm_n} {name} matmul: {low_rate:.1f} GFLOP/s")
        unet.to(dtype)
        for b in setup.batches:
            try:
                row_inputs = make_inputs(unet, setup.cfg, b, setup.size, setup.max_slots, device, dtype)
                log(f"batch {b} warm-up forward: {timed_forward(unet, row_inputs, base, device)[0]:.3f} s")
                times, peak = timed_repeats(unet, row_inputs, base, device, setup.repeats, memory)
            except Exception as err:  # a benchmark reports a failing dtype instead of dying
                log(f"batch {b}: {name} forward FAILED: {type(err).__name__}: {err}")
                failed.append(f"{name} batch {b}: {type(err).__name__}: {str(err)[:200]}")
                continue
            log(f"batch {b}: {fmt_t(times)} s")
            rows[(b, name)] = dict(times=times, peak=peak, mm_rate=low_rate)
        unet.to(torch.float32)
        del low_mats
    return failed


def print_profile(setup: Setup, unet, inputs) -> None:
    from torch.profiler import ProfilerActivity, profile
    device = setup.device
    log(f"\n## Profile of one base forward at batch {setup.batches[0]} (fp32), top ops by self time")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=acts) as prof:
        unet_forward(unet, inputs, 1.0)
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    log(prof.key_averages().table(sort_by=key, row_limit=15))


# ----------------------------------------------------------------------------- summary

def print_batch_table(rows: dict, flops_by_batch: dict) -> None:
    log("| batch | dtype | GFLOP | time s, median (min-max) | GFLOP/s | of matmul rate | floor s | time/floor "
        "| peak MiB |")
    log("|---|---|---|---|---|---|---|---|---|")
    for (b, name), row in rows.items():
        f = flops_by_batch[b]["total"]
        t = statistics.median(row["times"])
        floor = f / (row["mm_rate"] * 1e9)
        log(f"| {b} | {name} | {fmt_g(f)} | {fmt_t(row['times'])} | {gflop(f) / t:.1f} "
            f"| {gflop(f) / t / row['mm_rate']:.0%} | {floor:.3f} | {t / floor:.2f} | {fmt_mem(row['peak'])} |")


def print_variant_table(variants: list[Variant], b0: int) -> None:
    base = variants[0]
    log(f"Variants at batch {b0}, fp32 (ratio = median over rounds of variant time / base time in the same round):")
    log("")
    log("| variant | tokens | GFLOP | time s, median (min-max) | time ratio vs base | peak MiB | mem ratio |")
    log("|---|---|---|---|---|---|---|")
    for v in variants:
        mem_ratio = (f"{v.peak_mib / base.peak_mib:.2f}" if v.peak_mib and base.peak_mib else "-")
        log(f"| {v.name} | {3 * v.slots} | {fmt_g(v.flops)} | {fmt_t(v.times)} | {statistics.median(v.ratios):.3f} "
            f"| {fmt_mem(v.peak_mib)} | {mem_ratio} |")


def print_conclusions(variants: list[Variant], n_fusers: int, max_slots: int) -> None:
    """One line per comparison: attention, the fusers, the number of grounding tokens."""
    base, naive, skip, few = variants
    med = statistics.median
    t_base = med(base.times)
    log(f"- SDPA vs naive attention: naive takes {med(naive.ratios):.2f}x the SDPA time"
        + (f" and {naive.peak_mib / base.peak_mib:.2f}x its peak memory "
           f"({fmt_mem(naive.peak_mib)} vs {fmt_mem(base.peak_mib)} MiB)"
           if naive.peak_mib and base.peak_mib else "") + ".")
    fuser_frac_t = 1 - med(skip.ratios)
    fuser_frac_f = 1 - skip.flops / base.flops
    log(f"- Fusers: fuser_scale=1 {t_base:.3f} s vs fuser_scale=0 {med(skip.times):.3f} s (ratio "
        f"{1 / med(skip.ratios):.3f}); the {n_fusers} fusers are {fuser_frac_t:.1%} "
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


def print_summary(setup: Setup, run_seconds: float, matmul: MatmulRate, mm_rate: float, memory: PeakMemory,
                  pos_net_s: float, rows: dict, flops_by_batch: dict, variants: list[Variant], n_fusers: int,
                  precision_note: str, failed: list[str]) -> None:
    device, size, b0, mm_n = setup.device, setup.size, setup.batches[0], matmul.n
    log(f"\n## Summary ({device}, latent {size}x{size}; total run {run_seconds:.0f} s)")
    log(f"matmul rate: {mm_rate:.1f} GFLOP/s fp32 ({mm_n}x{mm_n}, median of {len(matmul.rates)} samples taken "
        f"before and between the timed forwards; range {min(matmul.rates):.1f}-{max(matmul.rates):.1f})")
    log(f"peak memory: {memory.describe()}")
    log(f"position_net (tokens for {b0}x{setup.max_slots} slots, computed once per sample, not in the forward): "
        f"{pos_net_s * 1e3:.1f} ms")
    log("")
    print_batch_table(rows, flops_by_batch)
    log("")
    print_variant_table(variants, b0)
    log("")
    print_conclusions(variants, n_fusers, setup.max_slots)
    log(f"- {precision_note}.")
    for line in failed:
        log(f"- FAILED: {line}")


def run(args) -> None:
    device, cfg_path, cfg, size = device_and_config(args)
    max_slots = int(cfg.interaction.position_net.params.max_interactions)
    setup = Setup(device, cfg_path, cfg, size, [int(b) for b in args.batch_sizes.split(",") if b.strip()],
                  max(1, args.repeats), max_slots)
    b0 = setup.batches[0]
    mm_n = args.matmul_size or (1024 if args.quick else (8192 if device.type == "cuda" else 4096))
    run_start = time.perf_counter()

    log("# InteractDiffusion UNet forward benchmark")
    log(machine_line(device))
    log(f"config {shown_path(cfg_path)}, "
        f"latent {size}x{size}, batch sizes {setup.batches}, repeats {setup.repeats} (median; 1 warm-up forward "
        f"first), fuser gates tanh({GATE}), prompt {PROMPT_TOKENS} tokens, torch.no_grad")
    extra, precision_note = reduced_precision(device, args.dtypes)
    log(precision_note)

    variants = variants_of(max_slots)
    flops_by_batch = count_all_flops(setup, variants)
    unet = build_timed_model(setup)
    memory = choose_memory(device, args.memory_method)
    if args.quick:
        cross_check_flops(setup, unet, flops_by_batch[b0])
    matmul = measure_matmul(setup, mm_n)

    log(f"\n## 3.-6. Forward timings at batch {b0}, variants interleaved round by round")
    inputs = {s: make_inputs(unet, cfg, b0, size, s, device, torch.float32) for s in {v.slots for v in variants}}
    pos_net_s = time_position_net(setup, unet)
    base = variants[0]
    time_variants(setup, unet, inputs, variants, memory, matmul)
    # Per-batch rows: (batch, dtype) -> times, peak, matmul rate
    rows = {(b0, "fp32"): dict(times=base.times, peak=base.peak_mib)}
    time_batches(setup, unet, base, memory, matmul, rows)
    mm_rate = statistics.median(matmul.rates)
    for row in rows.values():
        row["mm_rate"] = mm_rate
    failed = time_reduced_precision(setup, unet, base, memory, matmul, extra, rows)
    if args.profile:
        print_profile(setup, unet, inputs[max_slots])
    print_summary(setup, time.perf_counter() - run_start, matmul, mm_rate, memory, pos_net_s, rows, flops_by_batch,
                  variants, len(unet.transformer_blocks()), precision_note, failed)


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
