#!/usr/bin/env python
"""Benchmark of the samplers and the training-free controls on the embedded default model: time
per image of each against PLMS 50 (the paper's), measured in one run in interleaved rounds (order
rotating), as the median and min-max of the per-round ratio. Not a test: nothing asserts timings.

Each round generates one batch of the demo layouts (examples/toy_layouts.json, guidance 3, the
config's other options) with every sampler. The quality side of the comparison (HOI mAP,
FID/KID) is the toy table's sampler rows: python scripts/reproduce_table.py --world toy --rows samplers

Usage:
  .venv/bin/python scripts/bench_samplers.py                 # 3 rounds, batch 12, CPU
  .venv/bin/python scripts/bench_samplers.py --rounds 5 --batch 25 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a file: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from evaluation.benchmark import fmt_t, log, machine_line, per_round_ratios, ratio_str, rotated, timed_call  # noqa: E402

# name -> pipeline call options; the first is the baseline. "segments": DenseDiffusion with the
# layout's subject and object boxes.
SAMPLERS = {
    "PLMS 50": dict(sampler="plms", steps=50),
    "PLMS 25": dict(sampler="plms", steps=25),
    "DPM-Solver++ 2M 20": dict(sampler="dpmpp_2m", steps=20),
    "UniPC 20": dict(sampler="unipc", steps=20),
    "Euler a 20": dict(sampler="euler_a", steps=20),
    "PLMS 25 + multi-instance 0.36": dict(sampler="plms", steps=25, multi_instance=0.36),
    "PLMS 25 + DenseDiffusion": dict(sampler="plms", steps=25, segments=True),
    "PLMS 25 + both": dict(sampler="plms", steps=25, multi_instance=0.36, segments=True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=12, help="layouts per batch (cycled from the demo file)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        p.error("--rounds and --batch must be >= 1")

    from interact.controls.interactions import interactions_from_record
    from interact.batch import DEFAULT_TOY_INPUT, load_pipeline
    from interact.controls.segments import segments_from_interactions
    records = json.loads(Path(DEFAULT_TOY_INPUT).read_text())
    records = [records[i % len(records)] for i in range(args.batch)]
    prompts = [r["prompt"] for r in records]
    interactions = [interactions_from_record(r) for r in records]
    segments = [segments_from_interactions(items) for items in interactions]

    def call_options(options: dict, count: int) -> dict:
        options = dict(options)
        if options.pop("segments", False):
            options["segments"] = segments[:count]
        return options
    pipe = load_pipeline(None, None, None, None, args.device, False, False, {})
    log(machine_line(pipe.device))
    log(f"model: {pipe.source}; batch {args.batch}, {args.rounds} rounds")

    names = list(SAMPLERS)
    for options in SAMPLERS.values():  # warm-up: imports (diffusers), first-call allocations
        pipe(prompts[:1], interactions[:1], seed=0, progress=False, output_type="pt",
             **{**call_options(options, 1), "steps": 2})
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for name in rotated(names, r):
            def generate(options=call_options(SAMPLERS[name], len(prompts))):
                return pipe(prompts, interactions, seed=0, progress=False, output_type="pt", **options)
            times[name].append(timed_call(generate, pipe.device)[0] / args.batch)
    base = names[0]
    log(f"{'sampler':<30} {'s / image':>24}   time / {base}")
    for name in names:
        ratio = ratio_str(per_round_ratios(times[name], times[base]))
        log(f"{name:<30} {fmt_t(times[name]):>24}   {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
