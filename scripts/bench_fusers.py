#!/usr/bin/env python
"""Benchmark of the two fuser types: gatedSA (visual tokens self-attend over [visual, interaction
tokens]) vs gatedCA (visual tokens attend to the interaction tokens only); see interact/fuser.py.

Not a test: nothing asserts timings. Every comparison is made within one run, in interleaved
rounds (order rotating), as the median and min-max of the per-round ratio CA/SA.

What it prints:
  1. One fuser of each type at every (tokens, dim) the UNet's transformer blocks see (SD v1.x,
     64x64 latents: 4096x320, 1024x640, 256x1280, 64x1280), with 90 interaction tokens
     (30 slots): FLOPs (FlopCounterMode, CPU SDPA counted via evaluation.benchmark's flop_mapping),
     attention's share of them, forward time, CA/SA time ratio, peak memory growth.
  2. The whole UNet forward (UNet + position_net + 16 fusers, no VAE or text encoder) with the
     gatedSA fusers vs the same backbone with gatedCA fusers (sharing every common weight),
     and fuser_scale=0 (fusers skipped): FLOPs, time, CA/SA ratio, the fusers' share.
Gates are tanh(0.5) so nothing is skipped; torch.no_grad, fp32.

Usage:
  .venv/bin/python scripts/bench_fusers.py               # SD v1.x size, 64x64 latents, CPU
  .venv/bin/python scripts/bench_fusers.py --skip-unet   # part 1 only (a minute or two on CPU)
  .venv/bin/python scripts/bench_fusers.py --quick       # tiny random config, seconds
  .venv/bin/python scripts/bench_fusers.py --device cuda --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a file: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from evaluation.benchmark import (GATE, TINY_CONFIG, PeakMemory, build_unet, count_flops,  # noqa: E402
                                  device_and_config, fmt_g, fmt_mem, fmt_t, log, machine_line, make_inputs,
                                  per_round_ratios, ratio_str, rotated, shown_path, timed_call, unet_forward)
from interact.fuser import FUSER_TYPES  # noqa: E402

KINDS = ("gatedSA", "gatedCA")


def prepare(fuser):
    with torch.no_grad():
        fuser.alpha_attn.fill_(GATE)
        fuser.alpha_dense.fill_(GATE)
    return fuser.eval().requires_grad_(False)


def as_ca(sa, device):
    """A gatedCA fuser with sa's weights for every parameter they share (CA adds norm_objs)."""
    dim, heads = sa.norm1.normalized_shape[0], sa.attn.heads
    with torch.device(device):
        ca = FUSER_TYPES["gatedCA"](dim, sa.linear.in_features, heads, dim // heads)
    ca.load_state_dict(sa.state_dict(), strict=False)
    return prepare(ca)


def fuser_shapes(meta_unet, inputs) -> Counter:
    """(tokens, dim, heads, grid) -> how many transformer blocks see it, from a meta forward."""
    seen = Counter()
    hooks = [b.fuser.register_forward_pre_hook(
        lambda m, a: seen.update([(a[0].shape[1], a[0].shape[2], m.attn.heads, a[2])]))
        for _, b in meta_unet.transformer_blocks()]
    count_flops(lambda: unet_forward(meta_unet, inputs, 1.0))
    for h in hooks:
        h.remove()
    return Counter(dict(sorted(seen.items(), key=lambda kv: (-kv[0][0], kv[0][1]))))


def ms(row, kind) -> str:
    return fmt_t([t * 1e3 for t in row[kind]["times"]])


def bench_fusers(shapes, ctx_dim, n_tokens, args, device, memory) -> list[dict]:
    log(f"\n## 1. One fuser per shape, batch {args.batch}, {n_tokens} interaction tokens of dim {ctx_dim}, "
        f"{args.fuser_rounds} interleaved rounds (each time: mean over enough calls to last >= {args.min_time} s)")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for (n, dim, heads, grid), blocks in shapes.items():
        with torch.device(device):
            sa = prepare(FUSER_TYPES["gatedSA"](dim, ctx_dim, heads, dim // heads))
        fusers = {"gatedSA": sa, "gatedCA": as_ca(sa, device)}
        x = torch.randn(args.batch, n, dim, generator=gen).to(device)
        tokens = torch.randn(args.batch, n_tokens, ctx_dim, generator=gen).to(device)
        row = dict(tokens=n, grid=list(grid) if grid else None, dim=dim, heads=heads, blocks=blocks, ratios=[])
        with torch.no_grad():
            for kind, f in fusers.items():
                counts = count_flops(lambda: f.fuse(x, tokens, 1.0))
                timed_call(lambda: f.fuse(x, tokens, 1.0, grid), device)  # warm-up (CUDA: lazy init)
                first, _ = timed_call(lambda: f.fuse(x, tokens, 1.0, grid), device)  # calibration
                inner = max(1, min(1000, round(args.min_time / max(first, 1e-6))))
                attn = sum(v for k, v in counts.items() if "scaled_dot_product" in k or k == "bmm")
                row[kind] = dict(flops=counts["total"], attn_flops=attn, times=[], peak_mib=None, inner=inner)
            for r in range(args.fuser_rounds):
                for kind in rotated(KINDS, r):
                    f, res = fusers[kind], row[kind]
                    t, peak = timed_call(lambda: f.fuse(x, tokens, 1.0, grid), device, res["inner"],
                                         memory if r == 0 else None)
                    res["times"].append(t)
                    res["peak_mib"] = peak if peak is not None else res["peak_mib"]
                row["ratios"].append(row["gatedCA"]["times"][-1] / row["gatedSA"]["times"][-1])
        log(f"  {n} tokens x {dim}: SA {ms(row, 'gatedSA')} ms, CA {ms(row, 'gatedCA')} ms, "
            f"CA/SA {ratio_str(row['ratios'])}")
        rows.append(row)
    return rows


def print_fusers(rows, shapes) -> dict:
    med = statistics.median
    log("\n| tokens (grid) x dim | blocks | GFLOP SA / CA | attention share SA / CA | ms SA, median (min-max) "
        "| ms CA, median (min-max) | CA/SA time per round, median (min-max) | CA/SA FLOPs | peak MiB SA / CA |")
    log("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        sa, ca = row["gatedSA"], row["gatedCA"]
        grid = f" ({row['grid'][0]}x{row['grid'][1]})" if row["grid"] else ""
        log(f"| {row['tokens']}{grid} x {row['dim']} | {row['blocks']} | {fmt_g(sa['flops'])} / {fmt_g(ca['flops'])} "
            f"| {sa['attn_flops'] / sa['flops']:.0%} / {ca['attn_flops'] / ca['flops']:.0%} | {ms(row, 'gatedSA')} "
            f"| {ms(row, 'gatedCA')} | {ratio_str(row['ratios'])} | {ca['flops'] / sa['flops']:.3f} "
            f"| {fmt_mem(sa['peak_mib'])} / {fmt_mem(ca['peak_mib'])} |")
    totals = {k: dict(flops=sum(r["blocks"] * r[k]["flops"] for r in rows),
                      seconds=sum(r["blocks"] * med(r[k]["times"]) for r in rows)) for k in KINDS}
    sa, ca = totals["gatedSA"], totals["gatedCA"]
    log(f"\nAll {sum(shapes.values())} fusers of one forward (sum over shapes of blocks x median): "
        f"gatedSA {fmt_g(sa['flops'])} GFLOP, {sa['seconds']:.3f} s; gatedCA {fmt_g(ca['flops'])} GFLOP, "
        f"{ca['seconds']:.3f} s; CA/SA {ca['seconds'] / sa['seconds']:.3f} in time, "
        f"{ca['flops'] / sa['flops']:.3f} in FLOPs.")
    return totals


def bench_unet_forward(cfg, size, args, device, memory, meta, meta_inputs, totals) -> dict:
    log(f"\n## 2. Whole UNet forward, batch {args.batch}, latent {size}x{size}, {args.rounds} interleaved rounds")
    variants = {"gatedSA": 1.0, "gatedCA": 1.0, "none (fuser_scale=0)": 0.0}
    meta_sets = {"gatedSA": [b.fuser for _, b in meta.transformer_blocks()]}
    meta_sets["gatedCA"] = [as_ca(f, "meta") for f in meta_sets["gatedSA"]]
    flops = {}
    for name, scale in variants.items():  # on meta: nothing runs
        use(meta, name, meta_sets)
        flops[name] = count_flops(lambda: unet_forward(meta, meta_inputs, scale))["total"]
    t0 = time.perf_counter()
    unet = build_unet(cfg, device)
    sets = {"gatedSA": [b.fuser for _, b in unet.transformer_blocks()]}
    sets["gatedCA"] = [as_ca(f, device) for f in sets["gatedSA"]]
    inputs = make_inputs(unet, cfg, args.batch, size, meta_inputs[3].shape[1] // 3, device, torch.float32)
    log(f"built in {time.perf_counter() - t0:.1f} s; {len(sets['gatedSA'])} fusers per set, "
        f"{sum(p.numel() for f in sets['gatedSA'] for p in f.parameters()) / 1e6:.1f} M (SA) / "
        f"{sum(p.numel() for f in sets['gatedCA'] for p in f.parameters()) / 1e6:.1f} M (CA) parameters")

    def forward(name):
        use(unet, name, sets)
        return lambda: unet_forward(unet, inputs, variants[name])
    times = {name: [] for name in variants}
    peaks = dict.fromkeys(variants)
    with torch.no_grad():
        log(f"warm-up forward (gatedSA): {timed_call(forward('gatedSA'), device)[0]:.2f} s")
        names = list(variants)
        for r in range(args.rounds):
            for name in rotated(names, r):
                t, peak = timed_call(forward(name), device, 1, memory if r == 0 else None)
                times[name].append(t)
                peaks[name] = peak if peak is not None else peaks[name]
                log(f"  round {r + 1}/{args.rounds} {name}: {t:.3f} s" + (f", peak +{peak:,.0f} MiB" if peak else ""))
    use(unet, "gatedSA", sets)
    none = "none (fuser_scale=0)"
    per_round = lambda a, b: per_round_ratios(times[a], times[b])  # noqa: E731
    shares = {k: [1 - r for r in per_round(none, k)] for k in KINDS}
    log("\n| variant | GFLOP | time s, median (min-max) | time / gatedSA per round | fusers' share of time "
        "| fusers' share of FLOPs | peak MiB |")
    log("|---|---|---|---|---|---|---|")
    for name in variants:
        share_t = ratio_str(shares[name], True) if name in shares else "-"
        share_f = f"{1 - flops[none] / flops[name]:.1%}" if name in shares else "-"
        log(f"| {name} | {fmt_g(flops[name])} | {fmt_t(times[name])} | {ratio_str(per_round(name, 'gatedSA'))} "
            f"| {share_t} | {share_f} | {fmt_mem(peaks[name])} |")
    ratio = per_round("gatedCA", "gatedSA")
    log(f"\nWhole forward CA/SA: {ratio_str(ratio)} in time (per round), {flops['gatedCA'] / flops['gatedSA']:.3f} "
        f"in FLOPs. Fusers' share of the forward time: gatedSA {ratio_str(shares['gatedSA'], True)}, "
        f"gatedCA {ratio_str(shares['gatedCA'], True)}.")
    fuser_s = {k: statistics.median([a - b for a, b in zip(times[k], times[none])]) for k in KINDS}
    log("Fuser seconds per forward, measured here (forward - no-fuser forward, median over rounds) vs part 1's sum: "
        + "; ".join(f"{k} {fuser_s[k]:.3f} vs {totals[k]['seconds']:.3f}" for k in KINDS) + ".")
    return dict(flops=flops, times=times, peak_mib=peaks, ratio_ca_sa=ratio, fuser_share=shares, fuser_seconds=fuser_s)


def use(unet, name, sets) -> None:
    """Put fuser set `name` into the blocks (the no-fuser variant keeps whatever is there)."""
    if name in sets:
        for (_, block), fuser in zip(unet.transformer_blocks(), sets[name]):
            block.fuser = fuser


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"tiny random config ({TINY_CONFIG.name}), seconds")
    p.add_argument("--config", default=None, help="model config YAML (overrides --quick's choice)")
    p.add_argument("--size", type=int, default=None, help="latent size (default: the config's image_size)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--fuser-rounds", type=int, default=5, help="interleaved rounds of part 1")
    p.add_argument("--min-time", type=float, default=0.1, help="part 1: seconds each timing lasts at least")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part 2 (whole UNet)")
    p.add_argument("--skip-unet", action="store_true", help="part 1 only")
    p.add_argument("--json", default=None, metavar="FILE", help="write all numbers as JSON ('-': stdout)")
    args = p.parse_args(argv)
    device, cfg_path, cfg, size = device_and_config(args)
    n_tokens = 3 * int(cfg.interaction.position_net.params.max_interactions)
    start = time.perf_counter()

    log("# Fuser benchmark: gatedSA vs gatedCA")
    log(machine_line(device))
    log(f"config {shown_path(cfg_path)}, "
        f"latent {size}x{size}, batch {args.batch}, fuser gates tanh({GATE}), fp32, torch.no_grad")
    memory = PeakMemory(device)
    log(f"peak memory: {memory.describe()} (first round only)")
    meta = build_unet(cfg, "meta")
    meta_inputs = make_inputs(meta, cfg, args.batch, size, n_tokens // 3, "meta", torch.float32)
    shapes = fuser_shapes(meta, meta_inputs)
    rows = bench_fusers(shapes, meta.position_net.out_dim, n_tokens, args, device, memory)
    totals = print_fusers(rows, shapes)
    unet = None if args.skip_unet else bench_unet_forward(cfg, size, args, device, memory, meta, meta_inputs, totals)
    log(f"\ntotal run {time.perf_counter() - start:.0f} s")
    if args.json:
        out = dict(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(), config=str(cfg_path),
                   size=size, batch=args.batch, gate=GATE, interaction_tokens=n_tokens, fusers=rows,
                   fuser_totals=totals, unet=unet)
        if args.json == "-":
            log(json.dumps(out))
        else:
            Path(args.json).write_text(json.dumps(out) + "\n")
            log(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
