#!/usr/bin/env python
"""Benchmark of one InteractDiffusion training step (Trainer.step: data, frozen encoders,
forward, backward, AdamW), fp32, batch 1 by default.

Not a test: nothing asserts timings. Variants are interleaved round by round and compared
per round (ratio = median over rounds of variant time / SDPA time in the same round), so a
noisy shared machine shifts both sides of a ratio alike.

Configs:
  toy  configs/toy_hoi.yaml: 64x64 images, whole UNet trained (as that config says), EMA on.
  SD   configs/hoi_hico_text.yaml (SD v1.x, random weights): 512x512 images -> 64x64 latents,
       only position_net + fusers trained, use_checkpoint off (that config turns it on for GPUs;
       --checkpoint-row adds a row with it on). One SD step takes 1.5-2 minutes on 2 cores;
       the default run about 11 minutes.
Each is timed with SDPA and with the naive softmax(QK^T)V attention (attention_backend("naive")).
Data: a synthetic in-memory dataset (rectangles, 3 interactions per image), phrases pre-cached.

Usage:
  .venv/bin/python scripts/bench_train.py            # toy + SD, about 11 minutes on 2 CPU cores
  .venv/bin/python scripts/bench_train.py --quick    # toy only, fewer repeats, seconds
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

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench_unet import REPO_ROOT, PeakMemory, fmt_mem, fmt_t, log, matmul_sample  # noqa: E402  (sets sys.path)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from dataset.sample import HOISample  # noqa: E402
from interact.conditions import Interaction  # noqa: E402
from interact.trainer import Trainer, check_train_options, load_training_config  # noqa: E402
from ldm.modules.attention import BasicTransformerBlock, attention_backend  # noqa: E402

TOY_CONFIG = REPO_ROOT / "configs" / "toy_hoi.yaml"
SD_CONFIG = REPO_ROOT / "configs" / "hoi_hico_text.yaml"
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


def set_checkpointing(trainer: Trainer, on: bool) -> None:
    for module in trainer.model.model.modules():
        if isinstance(module, BasicTransformerBlock):
            module.use_checkpoint = on


def make_trainer(config_path: Path, batch: int, tmp: Path) -> Trainer:
    config = load_training_config(config_path)
    options = OmegaConf.to_container(config.train, resolve=True)
    options.update(batch_size=batch, grad_accumulation_step=1, workers=0, disable_inference_in_training=True,
                   phrase_cache=str(tmp / f"phrases_{config_path.stem}.pt"))
    config.train = check_train_options(options)
    dataset = Synthetic(int(config.data.image_size))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="training the interaction control on a randomly")
        trainer = Trainer(config, tmp / f"run_{config_path.stem}", dataset=dataset, device="cpu", progress=False,
                          log=lambda *a: None)
    trainer.phrases.add(dataset.phrases)  # keep phrase encoding out of the timed steps
    trainer.model.model.train()
    return trainer


class Variant:
    def __init__(self, name: str, backend: str, checkpointing: bool = False):
        self.name, self.backend, self.checkpointing = name, backend, checkpointing
        self.times, self.ratios, self.peak = [], [], None


def timed(fn, memory: PeakMemory | None):
    """(seconds, peak MiB or None) of fn(), the peak read when `memory` is given."""
    if memory is None:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, None
    with memory:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
    return elapsed, memory.peak_mib


def bench_config(label, config_path, variants, repeats, warmup, batch, tmp, memory, mm, warm_all=True) -> dict:
    """`warmup` untimed steps with each variant (`warm_all`) or with the first only."""
    log(f"\n## {label}: {config_path.relative_to(REPO_ROOT)}, batch {batch}")
    t0 = time.perf_counter()
    trainer = make_trainer(config_path, batch, tmp)
    image = int(trainer.config.data.image_size)
    latent = int(trainer.config.model.params.image_size)
    n_trained = sum(p.numel() for p in trainer.trained.values())
    n_unet = sum(p.numel() for p in trainer.model.model.parameters())
    log(f"built in {time.perf_counter() - t0:.1f} s; images {image}x{image}; trained {n_trained / 1e6:.2f} M of "
        f"the {n_unet / 1e6:.2f} M parameters of UNet + fusers + position_net; EMA {'on' if trainer.ema else 'off'}")
    batches = trainer.batches()

    def step(v: Variant, mem=None):
        set_checkpointing(trainer, v.checkpointing)
        trainer.optimizer.zero_grad(set_to_none=True)  # the state before: no gradients held
        with attention_backend(v.backend):
            return timed(lambda: trainer.step(batches), mem)

    for w in range(warmup):
        for v in variants if warm_all else variants[:1]:
            log(f"  warm-up {w + 1}/{warmup} {v.name}: {step(v)[0]:.3f} s")
    for r in range(repeats):
        for v in variants:
            elapsed, peak = step(v, memory if r == 0 else None)
            v.times.append(elapsed)
            v.peak = peak if peak is not None else v.peak
            log(f"  round {r + 1}/{repeats} {v.name}: {elapsed:.3f} s"
                + (f", peak +{peak:,.0f} MiB" if peak is not None else ""))
        for v in variants:
            v.ratios.append(v.times[-1] / variants[0].times[-1])
        mm["rates"].append(matmul_sample(mm["n"], torch.device("cpu"), torch.float32, 1, mm["mats"]))

    # Forward only (SDPA, no checkpointing): the loss with its autograd graph, no backward;
    # the frozen encoders (VAE / space-to-depth and text, no_grad) timed inside it.
    set_checkpointing(trainer, False)
    enc = {"s": 0.0}
    m = trainer.model

    def clocked(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            enc["s"] += time.perf_counter() - start
            return out
        return wrapper

    m.autoencoder.encode, m.text_encoder.encode = clocked(m.autoencoder.encode), clocked(m.text_encoder.encode)
    fwd, enc_times, fwd_peak = [], [], None
    for r in range(max(1, repeats // 2)):
        batch_data = next(batches)
        trainer.optimizer.zero_grad(set_to_none=True)
        enc["s"] = 0.0
        graph = []  # the loss and its autograd graph stay alive until the peak is read
        elapsed, peak = timed(lambda: graph.append(trainer.loss(batch_data, 0)), memory if r == 0 else None)
        graph.clear()
        fwd.append(elapsed)
        enc_times.append(enc["s"])
        fwd_peak = peak if peak is not None else fwd_peak
    log(f"  forward only (SDPA, graph kept, no backward): {fmt_t(fwd)} s, frozen encoders {fmt_t(enc_times)} s"
        + (f", peak +{fwd_peak:,.0f} MiB" if fwd_peak is not None else ""))
    result = dict(label=label, latent=latent, trained=n_trained, variants=variants, forward=fwd,
                  encoders=enc_times, forward_peak=fwd_peak, batch=batch)
    return result


def summary(results, mm_rate) -> None:
    med = statistics.median
    log("\n| config | variant | step s, median (min-max) | samples/s | time ratio vs SDPA | peak MiB "
        "| mem ratio vs SDPA |")
    log("|---|---|---|---|---|---|---|")
    for res in results:
        base = res["variants"][0]
        for v in res["variants"]:
            ratio = f"{v.peak / base.peak:.2f}" if v.peak and base.peak else "-"
            log(f"| {res['label']} | {v.name} | {fmt_t(v.times)} | {res['batch'] / med(v.times):.3f} "
                f"| {med(v.ratios):.2f} | {fmt_mem(v.peak)} | {ratio} |")
    log("")
    for res in results:
        base, fwd, enc = res["variants"][0], med(res["forward"]), med(res["encoders"])
        rest = med(base.times) - fwd
        log(f"- {res['label']}: {res['trained'] / 1e6:.2f} M trained parameters; latent {res['latent']}x"
            f"{res['latent']}; SDPA step {med(base.times):.3f} s = forward {fwd:.3f} s (frozen encoders {enc:.3f} s "
            f"+ denoiser {fwd - enc:.3f} s; forward peak +{fmt_mem(res['forward_peak'])} MiB) + backward/AdamW/data "
            f"{rest:.3f} s ({rest / (fwd - enc):.2f}x the denoiser forward).")
    log(f"- matmul rate {mm_rate:.1f} GFLOP/s fp32 (median of samples before and between rounds).")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy config only, fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: toy 10, SD 2; --quick 3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--batch", type=int, default=1, help="per-step batch size")
    p.add_argument("--skip-sd", action="store_true", help="toy config only")
    p.add_argument("--checkpoint-row", action="store_true", help="SD: add a row with use_checkpoint on")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_start = time.perf_counter()

    memory = PeakMemory(torch.device("cpu"))
    if memory.method != "hwm":
        sys.exit("peak memory needs a writable /proc/self/clear_refs (Linux)")
    mm_n = 1024 if args.quick else 4096
    mats = (torch.randn(mm_n, mm_n), torch.randn(mm_n, mm_n))
    matmul_sample(mm_n, torch.device("cpu"), torch.float32, 1, mats)
    mm = dict(n=mm_n, mats=mats, rates=[matmul_sample(mm_n, torch.device("cpu"), torch.float32, 1, mats)
                                        for _ in range(3)])
    log("# InteractDiffusion training-step benchmark (Trainer.step: data + frozen encoders + forward + backward "
        "+ AdamW), fp32")
    log(f"torch {torch.__version__}, python {platform.python_version()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads; "
        f"{mm_n}x{mm_n} fp32 matmul: " + ", ".join(f"{r:.1f}" for r in mm["rates"]) + " GFLOP/s")
    log(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes share them: "
        f"compare min/median, and ratios within a round)")
    log(f"peak memory: {memory.describe().replace('forward', 'step')}; gradients freed before each step")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        toy_repeats = args.repeats or (3 if args.quick else 10)
        results.append(bench_config("toy", TOY_CONFIG, [Variant("SDPA", "sdpa"), Variant("naive", "naive")],
                                    toy_repeats, 1 if args.quick else 2, args.batch, tmp, memory, mm))
        if not (args.quick or args.skip_sd):
            sd_variants = [Variant("SDPA", "sdpa"), Variant("naive", "naive")]
            if args.checkpoint_row:
                sd_variants.append(Variant("SDPA + use_checkpoint", "sdpa", checkpointing=True))
            results.append(bench_config("SD v1.x", SD_CONFIG, sd_variants, args.repeats or 2, 1, args.batch, tmp,
                                        memory, mm, warm_all=False))

    log(f"\n## Summary (total run {time.perf_counter() - run_start:.0f} s, load average now "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)")
    summary(results, statistics.median(mm["rates"]))


if __name__ == "__main__":
    main()
