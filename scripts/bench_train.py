#!/usr/bin/env python
"""Benchmark of InteractDiffusion training steps. Not a test: nothing asserts timings; every
ratio is taken between measurements made in the same run, interleaved round by round, so a
noisy shared machine shifts both sides alike.

Part 1 (always): the toy config as it is trained (configs/toy_hoi.yaml) on the real training
path, Trainer.step as main.py runs it: the toy data set decoded once into memory (data/toy,
or a 2000-image toy world written to a temporary folder when data/toy is missing), the caption
and phrase caches, the whole UNet and the interaction control trained, EMA on. It prints
  - samples/s of that path, data loading included;
  - the arithmetic of one training sample (forward + backward FLOPs, counted by torch's
    FlopCounterMode: matmuls, convolutions, attention, CPU SDPA kernels included);
  - the machine's fp32 matmul rate (a 2048^2 product, sampled between the timed rounds) and the
    fraction of it the training step reaches;
  - the time of each phase of a step: data, first stage (latents, noise), text (caption contexts,
    phrase embeddings, grounding tensors), forward, backward, optimiser, EMA.
Part 2 (--naive): the same step with the naive softmax(QK^T)V attention, as a ratio to SDPA.
Part 3 (--sd): one step of the SD v1.x config (512x512 images, random weights, only
position_net + fusers trained) with SDPA and naive attention; 1.5-2 minutes per step on 2 cores.

Usage:
  .venv/bin/python scripts/bench_train.py                  # part 1, about a minute
  .venv/bin/python scripts/bench_train.py --naive --sd     # all three, about 12 minutes
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:   # run as a file: the repository's packages, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from evaluation.benchmark import (PeakMemory, flop_mapping, fmt_mem, fmt_t, log, matmul_sample,  # noqa: E402
                                  median_range, per_round_ratios)
from hoi.records import HOISample  # noqa: E402
from hoi.records import Interaction  # noqa: E402
from dataset.hoi_dataset import build_training_inputs  # noqa: E402
from interact.trainer import Trainer, check_train_options, load_training_config  # noqa: E402
from ldm.modules.attention import attention_backend  # noqa: E402

TOY_CONFIG = REPO_ROOT / "configs" / "toy_hoi.yaml"
SD_CONFIG = REPO_ROOT / "configs" / "hoi_hico_text.yaml"
PHASES = ("data", "first stage", "text", "forward", "backward", "optimiser", "ema")
MATMUL_N = 2048


def toy_data_root(tmp: Path) -> tuple[Path, str]:
    """data/toy when it is a finished toy world, else a small one written under tmp."""
    from dataset.toy.generate import generate, is_current
    root = REPO_ROOT / "data" / "toy"
    if is_current(root):
        return root, f"{root.relative_to(REPO_ROOT)} (decoded into memory)"
    generate(tmp / "toy", train=2000, test=0, progress=False)
    return tmp / "toy", "a 2000-image toy world in a temporary folder (data/toy is missing or of an older world)"


def toy_trainer(tmp: Path, data_root: Path) -> Trainer:
    config = load_training_config(TOY_CONFIG)
    config.data.root = str(data_root)
    options = OmegaConf.to_container(config.train, resolve=True)
    options.update(disable_inference_in_training=True, phrase_cache=str(tmp / "phrases.pt"))
    config.train = check_train_options(options)
    dataset, role_types = build_training_inputs(config)
    trainer = Trainer(config, tmp / "run_toy", dataset, role_types=role_types, device="cpu", progress=False,
                      log=lambda *a: None)
    trainer.model.unet.train()
    return trainer


def flops_per_sample(trainer: Trainer, batch: dict) -> float:
    """Forward + backward FLOPs of one training micro-batch, per sample."""
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        loss = trainer.loss(batch, 0)
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch["captions"])


def part_real_path(tmp: Path, rounds: int, steps_per_round: int, naive: bool) -> None:
    data_root, data_note = toy_data_root(tmp)
    t0 = time.perf_counter()
    trainer = toy_trainer(tmp, data_root)
    o = trainer.options
    n_trained = sum(p.numel() for p in trainer.trained.values())
    log(f"\n## Toy config as trained: {TOY_CONFIG.relative_to(REPO_ROOT)}, batch {o.batch_size}, data {data_note}")
    log(f"built (data decoded, caches opened) in {time.perf_counter() - t0:.1f} s; {n_trained / 1e6:.2f} M trained "
        f"parameters; EMA {'on' if trainer.ema else 'off'}; caption cache {o.caption_cache_size}")
    batches = trainer.batches()
    per_sample = flops_per_sample(trainer, next(batches))
    log(f"arithmetic: {per_sample / 1e9:.3f} GFLOP per training sample (forward + backward)")
    for _ in range(3):   # warm-up: allocator, caches, first captions
        trainer.step(batches)

    variants = [("SDPA", "sdpa")] + ([("naive attention", "naive")] if naive else [])
    times = {name: [] for name, _ in variants}
    rates, phase_rounds = [], []
    for r in range(rounds):
        rates.append(matmul_sample(MATMUL_N, torch.device("cpu"), torch.float32, 3))
        for name, backend in variants:
            trainer.phase_times = {} if name == "SDPA" else None
            with attention_backend(backend):
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    trainer.step(batches)
                times[name].append((time.perf_counter() - start) / steps_per_round)
            if name == "SDPA":
                phase_rounds.append({k: v / steps_per_round for k, v in trainer.phase_times.items()})
        log(f"  round {r + 1}/{rounds}: matmul {rates[-1]:.1f} GFLOP/s; "
            + ", ".join(f"{name} {times[name][-1]:.3f} s/step" for name, _ in variants))
    trainer.phase_times = None
    rates.append(matmul_sample(MATMUL_N, torch.device("cpu"), torch.float32, 3))

    med = statistics.median
    step = med(times["SDPA"])
    samples_s = o.batch_size / step
    achieved = per_sample * samples_s / 1e9
    rate = med(rates)
    log("\n| measure | value |\n|---|---|")
    log(f"| step (median of {rounds} rounds x {steps_per_round} steps) | {step:.3f} s ({fmt_t(times['SDPA'])}) |")
    log(f"| samples/s, real path (data included) | {samples_s:.1f} |")
    log(f"| GFLOP per sample (forward + backward) | {per_sample / 1e9:.3f} |")
    log(f"| achieved | {achieved:.1f} GFLOP/s |")
    log(f"| fp32 matmul {MATMUL_N}^2, {torch.get_num_threads()} threads (median of {len(rates)} samples) | "
        f"{rate:.1f} GFLOP/s |")
    log(f"| fraction of the machine's arithmetic | {achieved / rate:.0%} |")
    per_round = [a / b for a, b in zip([per_sample * o.batch_size / t / 1e9 for t in times["SDPA"]], rates)]
    log(f"| fraction, per round (min-max) | {min(per_round):.0%}-{max(per_round):.0%} |")
    if naive:
        ratios = per_round_ratios(times["naive attention"], times["SDPA"])
        log(f"| naive attention / SDPA step time (median, min-max) | {median_range(ratios, '{:.2f}')} |")
    phases = {k: med([p.get(k, 0.0) for p in phase_rounds]) for k in PHASES}
    other = step - sum(phases.values())
    log("\nOne step, by phase (median over rounds):\n\n| phase | s | share |\n|---|---|---|")
    for k in PHASES:
        log(f"| {k} | {phases[k]:.4f} | {phases[k] / step:.0%} |")
    log(f"| other (loss.item, bookkeeping) | {max(other, 0.0):.4f} | {max(other, 0.0) / step:.0%} |")


# ----------------------------------------------------------------------------- SD v1.x step

TRIPLES = [("person", "hold", "ball"), ("robot", "kick", "box"), ("dog", "look at", "cup"),
           ("person", "ride", "bicycle"), ("cat", "sit on", "chair")]


class Synthetic:
    """n images of coloured rectangles, `k` interactions each, from a fixed phrase vocabulary."""

    def __init__(self, size: int, n: int = 8, k: int = 3):
        self.size, self.n, self.k = size, n, k
        self.phrases = {p for triple in TRIPLES for p in triple}

    def __len__(self):
        return self.n

    def get(self, index: int, epoch: int) -> HOISample:
        g = torch.Generator().manual_seed(index * 1000 + epoch)
        image = torch.full((3, self.size, self.size), -1.0)
        interactions = []
        for j in range(self.k):
            subject, action, obj = TRIPLES[(index + j) % len(TRIPLES)]
            boxes = []
            for _ in range(2):
                x0, y0 = (torch.rand(2, generator=g) * 0.6).tolist()
                w, h = (torch.rand(2, generator=g) * 0.3 + 0.1).tolist()
                boxes.append((x0, y0, x0 + w, y0 + h))
                xa, ya, xb, yb = (round(v * self.size) for v in boxes[-1])
                image[:, ya:yb, xa:xb] = torch.rand(3, 1, 1, generator=g) * 2 - 1
            interactions.append(Interaction(subject, action, obj, *boxes))
        caption = f"a {interactions[0].subject} {interactions[0].action} a {interactions[0].object}"
        return HOISample(f"img{index}", image, caption, interactions)


def part_sd(tmp: Path, repeats: int) -> None:
    config = load_training_config(SD_CONFIG)
    options = OmegaConf.to_container(config.train, resolve=True)
    options.update(batch_size=1, grad_accumulation_step=1, workers=0, disable_inference_in_training=True,
                   phrase_cache=str(tmp / "phrases_sd.pt"))
    config.train = check_train_options(options)
    dataset = Synthetic(int(config.data.image_size))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="training the interaction control on a randomly")
        trainer = Trainer(config, tmp / "run_sd", dataset=dataset, device="cpu", progress=False, log=lambda *a: None)
    trainer.phrases.add(dataset.phrases)
    for module in trainer.model.unet.modules():   # that config turns checkpointing on for GPUs
        if hasattr(module, "use_checkpoint"):
            module.use_checkpoint = False
    trainer.model.unet.train()
    batches = trainer.batches()
    log(f"\n## SD v1.x: {SD_CONFIG.relative_to(REPO_ROOT)}, batch 1, random weights, position_net + fusers trained")
    memory = PeakMemory(torch.device("cpu"))
    trainer.step(batches)   # warm-up
    times = {"sdpa": [], "naive": []}
    peaks = {}
    for r in range(repeats):
        for backend in ("sdpa", "naive"):
            trainer.phase_times = {}
            with attention_backend(backend), memory:
                start = time.perf_counter()
                trainer.step(batches)
                times[backend].append(time.perf_counter() - start)
            peaks.setdefault(backend, memory.peak_mib)
            log(f"  round {r + 1}/{repeats} {backend}: {times[backend][-1]:.1f} s "
                f"(forward {trainer.phase_times.get('forward', 0):.1f} s, first stage + text "
                f"{trainer.phase_times.get('first stage', 0) + trainer.phase_times.get('text', 0):.1f} s, "
                f"backward {trainer.phase_times.get('backward', 0):.1f} s), peak +{fmt_mem(memory.peak_mib)} MiB")
    trainer.phase_times = None
    ratios = per_round_ratios(times["naive"], times["sdpa"])
    log(f"SD v1.x step: SDPA {fmt_t(times['sdpa'])} s, naive {fmt_t(times['naive'])} s; naive/SDPA time "
        f"{statistics.median(ratios):.2f}, peak memory {fmt_mem(peaks['sdpa'])} vs {fmt_mem(peaks['naive'])} MiB")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of the toy step (default 5)")
    p.add_argument("--steps", type=int, default=10, help="training steps per round (default 10)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--naive", action="store_true", help="also time the toy step with naive attention")
    p.add_argument("--sd", action="store_true", help="also time one SD v1.x step (about 10 minutes)")
    p.add_argument("--sd-repeats", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_start = time.perf_counter()
    log("# InteractDiffusion training-step benchmark, fp32")
    log(f"torch {torch.__version__}, python {platform.python_version()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes share them: compare ratios)")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        part_real_path(Path(tmp), args.rounds, args.steps, args.naive)
        if args.sd:
            part_sd(Path(tmp), args.sd_repeats)
    log(f"\ntotal {time.perf_counter() - run_start:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
