#!/usr/bin/env python
"""Benchmark of the UNet + fusers forward of this working tree against another commit: the same
forward (SD v1.x size by default: latent 64x64, 30 interactions = 90 tokens, fp32, batch 1, fuser
gates open) timed in both, in interleaved rounds (the order alternating), each in its own process
on its own tree, so the ratio this tree / the commit is measured in one run on the same machine
state. Not a test: nothing asserts timings.

Usage:
  .venv/bin/python scripts/bench_vs_commit.py                    # against HEAD~1, 3 rounds, SD size
  .venv/bin/python scripts/bench_vs_commit.py --rev 353fa90 --quick --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a file: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from evaluation.benchmark import fmt_t, log, machine_line, per_round_ratios, ratio_str  # noqa: E402

# Run in each tree's own process: its own UNet, timed `forwards` times after one warm-up. A
# commit from before the controls mapping calls the UNet with (tokens, fuser_scale) itself.
TIMING = r"""
import json, statistics, sys, time
import torch
from omegaconf import OmegaConf
import evaluation.benchmark as b
cfg_path, size, forwards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = OmegaConf.load(cfg_path)
torch.manual_seed(0)
unet = b.build_unet(cfg, torch.device("cpu"))
inputs = b.make_inputs(unet, cfg, 1, size, 30, torch.device("cpu"), torch.float32)
forward = ((lambda: b.unet_forward(unet, inputs, 1.0)) if hasattr(b, "unet_forward")
           else (lambda: unet(*inputs, 1.0)))
times = []
with torch.no_grad():
    forward()
    for _ in range(forwards):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
print(json.dumps(statistics.median(times)))
"""


def time_tree(tree: Path, config: Path, size: int, forwards: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", TIMING, str(config), str(size), str(forwards)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: timing in {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="HEAD~1", help="the commit to compare with (default HEAD~1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--forwards", type=int, default=1, help="timed forwards per process (after one warm-up)")
    p.add_argument("--quick", action="store_true", help="the tiny random config (seconds) instead of SD v1.x")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.forwards < 1:
        p.error("--rounds and --forwards must be >= 1")
    import torch
    config_name = "tiny_random.yaml" if args.quick else "sd_v1_interact.yaml"
    size = 16 if args.quick else 64
    log(machine_line(torch.device("cpu")))
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        add = subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=REPO_ROOT,
                             capture_output=True, text=True)
        if add.returncode != 0:
            sys.exit(f"error: --rev {args.rev}: {add.stderr.strip()}")
        try:
            trees = {"this tree": REPO_ROOT, args.rev: other}
            times: dict[str, list[float]] = {name: [] for name in trees}
            log(f"UNet + fusers forward, {config_name}, latent {size}x{size}, batch 1, 90 tokens, fp32; "
                f"{args.rounds} interleaved rounds, {args.forwards} timed forward(s) per process")
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    times[name].append(time_tree(trees[name], trees[name] / "configs" / config_name, size,
                                                 args.forwards))
                log(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in trees))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO_ROOT, capture_output=True)
    ours, theirs = times["this tree"], times[args.rev]
    log(f"this tree: {fmt_t(ours)}; {args.rev}: {fmt_t(theirs)}")
    log(f"this tree / {args.rev}: {ratio_str(per_round_ratios(ours, theirs))} (median, min-max over rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
