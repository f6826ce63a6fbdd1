"""The training loop: a Trainer builds the optimiser around the model and data set it is given,
takes steps, saves and resumes checkpoints, exports the inference file and draws previews."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hoi.io import atomic_save, atomic_write, remove_stale_temporaries
from hoi.records import collate_samples
from interact.checkpoint import export_sections, to_sections
from interact.model import is_interaction_key
from interact.phrase_cache import CaptionContextCache, PhraseEmbeddingCache
from interact.trainer.build import build_training_model, dataset_phrases, open_phrase_cache
from interact.trainer.checkpointing import ResumeError, RunPaths, read_resume_checkpoint, rng_states, set_rng_states
from interact.trainer.data_order import SampleStream, StepBatches, keyed_generator
from interact.trainer.denoiser import Denoiser
from interact.trainer.optimisation import EMA, lr_lambda
from interact.trainer.options import TrainOptions, check_train_options
from interact.trainer.preview import preview_grid
from interact.trainer.processes import deterministic_attention, init_distributed, make_deterministic, resolve_amp


class Trainer:
    """`config`: a training config (load_training_config). `dataset`: anything with `__len__` and
    `get(index, epoch) -> HOISample` (the entry point builds it from `config.data`:
    dataset.hoi_dataset.build_training_inputs). `role_types`: the type labels a typed tokenizer's
    classifiers are fitted to (anything with `labels(interactions, max_interactions)`); required
    with interaction.role_embedding = typed, unused otherwise."""

    def __init__(self, config: DictConfig, run_dir, dataset, role_types=None, ckpt=None, sd_ckpt=None,
                 device: str = "auto", allow_pickle: bool = False, progress: bool = True, log=print):
        self.config = config
        self.options: TrainOptions = OmegaConf.to_object(check_train_options(config.train))
        self.paths = RunPaths(Path(run_dir))
        o = self.options
        if o.deterministic:
            make_deterministic()
        self.dist = init_distributed(device)
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        self.progress = progress and self.dist.is_main
        self.amp_dtype = resolve_amp(self.dist.device, o.amp, o.amp_dtype)

        self.dataset = dataset
        self.model, lines, self.backbone_from_file = build_training_model(config, ckpt, sd_ckpt, allow_pickle)
        for line in lines:
            self.log(f"[init] {line}")
        if not self.backbone_from_file and not o.train_whole_unet:
            warnings.warn("training the interaction control on a randomly initialised backbone: pass "
                          "--official_ckpt_name (SD v1.x) or set train.train_whole_unet")
        self.model.to(self.dist.device)
        self.trained = self._select_trained()
        self.log(f"[init] training {sum(p.numel() for p in self.trained.values()) / 1e6:.2f} M parameters "
                 f"({len(self.trained)} tensors) on {self.dist.device}, {self.dist.world} process(es)")

        self.phrases = self._phrase_cache()
        self.captions = CaptionContextCache(self.model.text_encoder, o.caption_cache_size)
        for control in self.model.controls.values():   # e.g. a typed tokenizer takes the role types
            control.prepare_training(role_types=role_types)

        self.denoiser = Denoiser(self.model)
        self.ddp = None
        if self.dist.world > 1:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.denoiser, device_ids=ids)
        groups = self._param_groups()
        self.group_scales = [g["lr_scale"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.warmup_steps, o.total_iters, o.scheduler_type))
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.trained, o.ema_rate) if o.enable_ema else None
        self.iters = 0
        self.writer = None
        self._resumed: bool | None = None   # None until resume() has looked at the run folder
        self.phase_times: dict[str, float] | None = None   # set to {} to time the phases of each step

    # -------------------------------------------------------------- set-up helpers
    def _select_trained(self) -> dict[str, nn.Parameter]:
        o = self.options
        self.model.requires_grad_(False)
        trained = {}
        for name, p in self.model.unet.named_parameters():
            if not (o.train_whole_unet or is_interaction_key(name)):
                continue
            if not o.train_interaction and is_interaction_key(name):
                continue
            if o.fix_interaction_embedding and name.startswith("position_net.interaction_embedding."):
                continue
            p.requires_grad_(True)
            trained[name] = p
        return trained

    def _param_groups(self) -> list[dict]:
        """One group, or with interaction_lr_scale != 1 two: the backbone's and the interaction
        control's (each with its `lr_scale`)."""
        scale = self.options.interaction_lr_scale
        if scale == 1.0:
            return [{"params": list(self.trained.values()), "lr_scale": 1.0}]
        groups = [{"params": [p for n, p in self.trained.items() if not is_interaction_key(n)], "lr_scale": 1.0},
                  {"params": [p for n, p in self.trained.items() if is_interaction_key(n)], "lr_scale": scale}]
        for group in groups:
            group["lr"] = self.options.lr * group["lr_scale"]
        return [g for g in groups if g["params"]]

    def _phrase_cache(self) -> PhraseEmbeddingCache:
        cache = open_phrase_cache(self.config, self.model.text_encoder, self.paths.root)
        phrases = dataset_phrases(self.dataset)
        if phrases is not None and cache.add(phrases, progress=self.progress) and self.dist.is_main:
            cache.save()
            self.log(f"[init] phrase embeddings cached in {cache.path} ({len(cache)} phrases)")
        return cache

    # -------------------------------------------------------------- checkpoints
    @property
    def interaction_only(self) -> bool:
        """Checkpoints hold only the trained interaction weights when the frozen backbone comes
        from a file the restart reads again; otherwise (trained or random backbone) everything."""
        return self.backbone_from_file and not self.options.train_whole_unet

    def state(self) -> dict:
        state = export_sections(self.model, interaction_only=self.interaction_only)
        state.update(opt=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     scaler=self.scaler.state_dict(), iters=self.iters, rng=rng_states(),
                     data={"seed": self.options.seed, "samples_per_step": self._samples_per_step(),
                           "position": self.iters * self._samples_per_step(),  # in the global sample stream
                           "dataset_size": len(self.dataset)},
                     train=dataclasses.asdict(self.options), backbone_from_file=self.backbone_from_file)
        if self.ema is not None:
            state["ema"] = {n: t.clone() for n, t in self.ema.shadow.items()}
            state["ema_updates"] = self.ema.updates
        return state

    def save(self) -> None:
        """latest.pth always; a kept copy every save_every_iters. Written atomically."""
        if not self.dist.is_main:
            return
        state = self.state()
        atomic_save(state, self.paths.latest)
        if self.iters % self.options.save_every_iters == 0:
            atomic_save(state, self.paths.kept(self.iters))

    def resume(self) -> bool:
        """Continue from the run folder's newest intact checkpoint when it has one (latest.pth,
        else a kept checkpoint_N.pth); once per Trainer. ResumeError when it belongs to a run
        this config cannot continue."""
        if self._resumed is not None:
            return self._resumed
        self._resumed = False
        found = read_resume_checkpoint(self.paths, self.log)
        if found is None:
            return False
        path, raw = found
        if raw.get("backbone_from_file") and not self.backbone_from_file:
            raise ResumeError(f"{path}: this run's frozen backbone came from a file, which the "
                               f"checkpoint does not hold: pass the same --official_ckpt_name/--ckpt as before")
        saved_step = raw.get("data", {}).get("samples_per_step")
        if saved_step is not None and saved_step != self._samples_per_step():
            warnings.warn(f"resuming with {self._samples_per_step()} samples per step (batch x processes x "
                          f"accumulation) where the run had {saved_step}: the data stream goes on from "
                          f"iteration x samples per step, so some samples are skipped or repeated, and the run "
                          f"is no longer step-for-step the uninterrupted one")
        for name, state in to_sections(raw).items():
            module = self.model.section(name)
            missing, unexpected = module.load_state_dict(state, strict=False)
            if unexpected or (name != "model" and missing) or any(k in self.trained for k in missing):
                raise ResumeError(f"{path}: section {name!r} does not match this config "
                                   f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        saved_groups = len(raw["opt"]["param_groups"])
        if saved_groups != len(self.group_scales):
            raise ResumeError(f"{path}: the run had {saved_groups} optimiser group(s), this config "
                               f"makes {len(self.group_scales)}: train.interaction_lr_scale went from or to 1; "
                               f"keep its value, or start a new run (--name)")
        self.optimizer.load_state_dict(raw["opt"])
        self.scheduler.load_state_dict(raw["scheduler"])
        self._apply_lr_options(raw.get("train", {}))
        if raw["scaler"] and self.scaler.is_enabled():  # a run that had no fp16 scaler saved an empty state
            self.scaler.load_state_dict(raw["scaler"])
        if self.ema is not None:
            if "ema" not in raw:
                raise ResumeError(f"{path}: has no EMA weights but --enable_ema is set")
            self.ema.shadow = {n: t.to(self.dist.device) for n, t in raw["ema"].items()}
            self.ema.updates = int(raw.get("ema_updates", raw["iters"]))
        set_rng_states(raw["rng"])
        self.iters = int(raw["iters"])
        self._resumed = True
        self.log(f"[resume] {path} at iteration {self.iters}")
        return True

    def _apply_lr_options(self, saved: dict) -> None:
        """The optimiser state restores the saved lr and weight decay: the command line's win."""
        o = self.options
        current = {"lr": o.lr, "weight_decay": o.weight_decay}
        changed = [k for k in current if k in saved and saved[k] != current[k]]
        if changed:
            self.log(f"[resume] {', '.join(f'{k} {saved[k]} -> {current[k]}' for k in changed)}")
        groups = self.optimizer.param_groups
        self.scheduler.base_lrs = [o.lr * scale for scale in self.group_scales]
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, base, scale in zip(groups, self.scheduler.base_lrs, self.group_scales):
            group["initial_lr"], group["lr"], group["weight_decay"] = base, base * factor, o.weight_decay
            group["lr_scale"] = scale

    def export_final(self) -> Path:
        """The inference file: interaction weights (plus the backbone when it was trained or
        random), EMA weights when EMA is on. Loads with inference_batch.py --ckpt."""
        context = self.ema.swapped_in(self.trained) if self.ema is not None else contextlib.nullcontext()
        with context:
            atomic_save({**export_sections(self.model, self.interaction_only), "iters": self.iters},
                        self.paths.final)
        return self.paths.final

    # -------------------------------------------------------------- one step
    def _samples_per_step(self) -> int:
        return self.options.batch_size * self.dist.world * self.options.grad_accumulation_step

    def loss(self, batch: dict, micro: int) -> torch.Tensor:
        """MSE to the schedule's target (the noise, or v) for this rank's micro-batch."""
        o, m, dev = self.options, self.model, self.dist.device
        # Draws for the step's whole global batch, then this micro-batch's rows: the same
        # numbers whatever the split into processes and accumulation micro-steps.
        b = len(batch["captions"])
        first = (micro * self.dist.world + self.dist.rank) * b
        rows = slice(first, first + b)
        world_b = b * self.dist.world * o.grad_accumulation_step
        gen = keyed_generator(o.seed, "step", self.iters)
        t = torch.randint(0, m.diffusion.num_timesteps, (world_b,), generator=gen)[rows]
        drop_caption = (torch.rand(world_b, generator=gen) < o.caption_drop_prob)[rows]
        null_grounding = bool(torch.rand((), generator=gen) < o.null_grounding_prob)
        with torch.no_grad(), self.phase("first stage"):
            posterior = m.autoencoder.encode(batch["images"].to(dev))
            shape = posterior.mean.shape[1:]
            latent_noise = torch.randn((world_b, *shape), generator=gen)[rows].to(dev)
            z = (posterior.mean + posterior.std * latent_noise) * m.scale_factor
            noise = torch.randn((world_b, *shape), generator=gen)[rows].to(dev)
            t = t.to(dev)
            x_t = m.diffusion.q_sample(z, t, noise)
        with torch.no_grad(), self.phase("text"):
            captions = ["" if d else c for c, d in zip(batch["captions"], drop_caption.tolist())]
            full = m.condition(captions, controls=batch["controls"], encode_captions=self.captions,
                               encode_phrases=self.phrases)
            # the caption stays (its own drop is per sample, above); the controls' auxiliary
            # losses see the real layout even on a null-grounding step
            cond = full.null() if null_grounding else full
        forward = self.ddp if self.ddp is not None else self.denoiser
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None), \
                deterministic_attention(o.deterministic and dev.type == "cuda"), self.phase("forward"):
            output, aux_loss = forward(x_t, t, cond, full, batch)
            loss = nn.functional.mse_loss(output.float(), m.diffusion.training_target(z, t, noise))
        return loss if aux_loss is None else loss + o.role_type_loss_weight * aux_loss.float()

    @contextlib.contextmanager
    def phase(self, name: str):
        """Adds the time spent inside to self.phase_times[name] when that dict is set (benchmarks)."""
        if self.phase_times is None:
            yield
            return
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.dist.device.type == "cuda":
                torch.cuda.synchronize(self.dist.device)
            self.phase_times[name] = self.phase_times.get(name, 0.0) + time.perf_counter() - start

    def step(self, batches) -> dict:
        """One optimiser step over grad_accumulation_step micro-batches."""
        o = self.options
        accum = o.grad_accumulation_step
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            with self.phase("data"):
                batch = next(batches)
            # DDP: gradients are all-reduced only on the last micro-step.
            sync = self.ddp.no_sync() if self.ddp is not None and micro < accum - 1 else contextlib.nullcontext()
            with sync:
                loss = self.loss(batch, micro) / accum
                with self.phase("backward"):
                    self.scaler.scale(loss).backward()
            total += loss.item()
        with self.phase("optimiser"):
            self.scaler.unscale_(self.optimizer)
            params = list(self.trained.values())
            grad_norm = nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        if self.ema is not None:
            with self.phase("ema"):
                self.ema.update(self.trained)
        self.iters += 1
        if self.dist.world > 1:  # the logged loss is the global one
            value = torch.tensor([total], device=self.dist.device)
            dist.all_reduce(value)
            total = value.item() / self.dist.world
        return {"loss": total, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    def batches(self):
        o = self.options
        stream = SampleStream(self.dataset, o.seed)
        sampler = StepBatches(self.iters, o.batch_size, self.dist.world, self.dist.rank,
                              o.grad_accumulation_step)
        loader = torch.utils.data.DataLoader(stream, batch_sampler=sampler, num_workers=o.workers,
                                             collate_fn=collate_samples, persistent_workers=o.workers > 0)
        return iter(loader)

    # -------------------------------------------------------------- the loop
    def run(self) -> Path | None:
        """Train to total_iters (resuming when possible); returns the final export (rank 0)."""
        o = self.options
        self.paths.root.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            for folder in self.paths.written_folders():
                for stale in remove_stale_temporaries(folder):
                    self.log(f"[init] removed {stale.name}, left by a killed write")
        self.resume()
        if self.dist.is_main:
            OmegaConf.save(self.config, self.paths.root / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.paths.root / "tensorboard"))
        self.model.unet.train()
        start = self.iters
        stop = o.total_iters if not o.max_steps_per_run else min(o.total_iters, start + o.max_steps_per_run)
        batches = self.batches() if start < stop else None
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=o.total_iters, initial=start, desc="train", unit="it", dynamic_ncols=True)
        samples_per_step = self._samples_per_step()
        try:
            self._train_until(stop, batches, bar, samples_per_step)
        finally:
            if bar is not None:  # its line ended before any error is printed
                bar.close()
        if self.iters > start and self.iters % o.checkpoint_every and self.iters % o.save_every_iters:
            self.save()
        final = None
        if self.iters >= o.total_iters and self.dist.is_main:
            final = self.export_final()
            self.log(f"[done] {o.total_iters} iterations; inference weights: {final}")
        if self.writer is not None:
            self.writer.close()
        if self.dist.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return final

    def _train_until(self, stop: int, batches, bar, samples_per_step: int) -> None:
        """Steps up to iteration `stop`: logging, checkpoints and previews on their schedules."""
        o = self.options
        while self.iters < stop:
            tick = time.perf_counter()
            stats = self.step(batches)
            stats["samples_per_s"] = samples_per_step / (time.perf_counter() - tick)
            if not math.isfinite(stats["loss"]):
                raise FloatingPointError(f"loss is {stats['loss']} at iteration {self.iters}; lower train.lr or "
                                         f"turn --amp off (the last checkpoint is untouched)")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
            if self.writer is not None and (self.iters % o.log_every == 0 or self.iters == 1):
                for key, value in stats.items():
                    self.writer.add_scalar(f"train/{key}", value, self.iters)
            if self.iters % o.checkpoint_every == 0 or self.iters % o.save_every_iters == 0:
                self.save()
            if self.iters % o.preview_every == 0 and not o.disable_inference_in_training:
                self.preview()

    # -------------------------------------------------------------- previews
    @torch.no_grad()
    def preview(self) -> Path | None:
        """A grid of generated images for the first preview_count training layouts, layout drawn
        on each, beside the real image; saved under previews/ and to TensorBoard."""
        if not self.dist.is_main:
            return None
        n = min(self.options.preview_count, len(self.dataset))
        samples = [self.dataset.get(i, 0) for i in range(n)]
        context = self.ema.swapped_in(self.trained) if self.ema is not None else contextlib.nullcontext()
        with context:
            grid = preview_grid(self.model, self.dist.device, samples)
        self.model.unet.train()
        path = self.paths.previews / f"iter_{self.iters:08d}.png"
        atomic_write(path, lambda p: grid.save(p, format="PNG"))
        if self.writer is not None:
            self.writer.add_image("preview", np.asarray(grid), self.iters, dataformats="HWC")
        return path

