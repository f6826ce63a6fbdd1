"""Training InteractDiffusion: only the interaction tokenizer and the fusers learn (optionally the whole
UNet, e.g. for the toy world trained from scratch); the autoencoder and text encoder are frozen.

One process or torchrun (NCCL on CUDA, gloo on CPU). Exact resume: every random draw of
a step (timesteps, noise, caption and grounding drops) comes from a generator seeded by
(seed, iteration) and is drawn for the step's whole global batch, each micro-batch of each
rank taking its rows; the data order is a per-epoch permutation of a global sample stream. A run
killed at any moment and restarted from its last checkpoint therefore repeats exactly the
steps the uninterrupted run would have taken (bit for bit on CPU; on CUDA with
train.deterministic, since GPU kernels otherwise differ in the last bits from run to run), and N ranks with batch b and A accumulation
micro-steps take the same step as one process with batch N*A*b.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from interact.checkpoint import export_sections, load_weights, read_file, to_sections
from hoi.grid import image_grid
from hoi.io import atomic_save
from hoi.schema import check_options, option
from interact.conditions import Cond
from interact.model import (CONFIG_DIR, InteractDiffusion, SECTIONS, build_model, is_interaction_key, load_config,
                            read_config_file)
from interact.phrase_cache import CaptionContextCache, PhraseEmbeddingCache, encoder_fingerprint
from interact.tokenizer import role_type_loss


@dataclass
class TrainOptions:
    """The `train:` section of a training config; also main.py's flags (the reference trainer's names)."""
    seed: int = option(123, "seeds the initialisation, the data order and every draw of a step")
    batch_size: int = option(4, "samples per process and micro-step", check=lambda v: v >= 1, rule=">= 1")
    grad_accumulation_step: int = option(1, "micro-steps per optimiser step", check=lambda v: v >= 1, rule=">= 1",
                                         flags=("--gradient_accumulation_step",))
    total_iters: int = option(500000, "optimiser steps of the whole run", check=lambda v: v >= 1, rule=">= 1")
    lr: float = option(5e-5, "learning rate after warm-up", check=lambda v: v > 0, rule="> 0",
                       flags=("--base_learning_rate",))
    # fresh layers on a trained backbone may want more when train_whole_unet is on
    interaction_lr_scale: float = option(1.0, "lr x this for position_net and the fusers", check=lambda v: v > 0,
                                         rule="> 0")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(10000, "linear warm-up steps", check=lambda v: v >= 0, rule=">= 0")
    scheduler_type: Literal["constant", "cosine"] = option("constant", "the lr after warm-up")
    amp: bool = option(False, "mixed precision (CUDA, or CPUs with native bf16)")
    amp_dtype: Literal["fp16", "bf16"] = option("fp16", "fp16 (with a GradScaler) or bf16")
    enable_ema: bool = option(False, "keep an EMA of the trained weights (previews and the export use it)")
    ema_rate: float = option(0.9999, "EMA decay per step", check=lambda v: 0 < v < 1, rule="in (0, 1)")
    grad_clip: float = option(0.0, "max gradient norm; 0 = no clipping (the norm is still logged)",
                              check=lambda v: v >= 0, rule=">= 0")
    null_grounding_prob: float = option(0.1, "a step's whole batch gets the null grounding (docs/reference.md §2)",
                                        check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    caption_drop_prob: float = option(0.5, "per sample, the caption becomes \"\" (docs/reference.md §2)",
                                      check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    train_whole_unet: bool = option(False, "train the whole UNet with the interaction control")
    train_interaction: bool = option(True, "False: the interaction control stays as initialised (gates 0 = a "
                                           "plain text-to-image UNet)")
    fix_interaction_embedding: bool = option(False, "keep position_net.interaction_embedding as initialised")
    save_every_iters: int = option(5000, "a kept checkpoint_<iters>.pth every this many steps",
                                   check=lambda v: v >= 1, rule=">= 1")
    checkpoint_every: int = option(500, "latest.pth (what a restart resumes from) every this many steps",
                                   check=lambda v: v >= 1, rule=">= 1")
    log_every: int = option(50, "TensorBoard scalars every this many steps", check=lambda v: v >= 1, rule=">= 1")
    preview_every: int = option(5000, "a preview grid every this many steps", check=lambda v: v >= 1, rule=">= 1")
    preview_count: int = option(4, "layouts in a preview grid", check=lambda v: v >= 1, rule=">= 1")
    disable_inference_in_training: bool = option(False, "no preview grids")
    workers: int = option(1, "DataLoader worker processes", check=lambda v: v >= 0, rule=">= 0")
    phrase_cache: str = option("", "\"\" = <data root>/phrase_embeddings_<encoder fingerprint>.pt")
    # the toy world repeats its captions
    caption_cache_size: int = option(0, "distinct captions whose text-encoder output is kept in memory (0 = encode "
                                        "every step)", check=lambda v: v >= 0, rule=">= 0")
    role_types: str = option("", "type labels for role_embedding typed: toy, hico or a JSON file "
                                 "(dataset/role_types.py)")
    role_type_loss_weight: float = option(1.0, "weight of the type classifiers' cross-entropy in the loss",
                                          check=lambda v: v >= 0, rule=">= 0")
    max_steps_per_run: int = option(0, "stop (with a checkpoint) after this many steps; 0 = no limit",
                                    check=lambda v: v >= 0, rule=">= 0")
    # CPU runs always are deterministic
    deterministic: bool = option(False, "CUDA: deterministic kernels (slower), for a bit-exact resume")


TOP_LEVEL_KEYS = set(SECTIONS) | {"interaction", "scale_factor", "sampling", "model_config", "base_config", "train",
                                  "data"}


# ----------------------------------------------------------------------------- configuration

def load_training_config(path) -> DictConfig:
    """A training YAML: `model_config` (a model YAML) or `base_config` (another training YAML)
    merged under this file's own sections, plus `train` and `data`. Unknown keys and wrong
    types fail here, naming the key; train options no file sets come from TrainOptions. (The
    data builder checks `data`: dataset/options.py.)"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--yaml_file {path}: no such file (see {CONFIG_DIR})")
    config = read_config_file(path)
    unknown = sorted(set(config) - TOP_LEVEL_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    config.train = check_train_options(config.get("train", {}))
    load_config(config)  # checks the model sections
    return config


def check_train_options(options, where: str = "train") -> DictConfig:
    """TrainOptions' defaults under `options`; unknown keys, values of the wrong type or out of
    range raise ValueError naming them."""
    out = check_options(TrainOptions, options, where)
    if not (out.train_whole_unet or out.train_interaction):
        raise ValueError(f"{where}.train_interaction = False with train_whole_unet = False: nothing to train")
    return out


# ----------------------------------------------------------------------------- devices and processes

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
    from hoi.device import resolve_device
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


# ----------------------------------------------------------------------------- randomness and data order

def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def keyed_generator(*parts) -> torch.Generator:
    """A CPU generator that depends only on `parts`."""
    return torch.Generator().manual_seed(_seed(*parts))


class SampleStream(torch.utils.data.Dataset):
    """Global sample position p -> dataset item: epoch p // n uses its own permutation of the n
    samples, so the order depends only on (seed, p), never on how far an earlier run got."""

    MAX_REPLACEMENTS = 100

    def __init__(self, dataset, seed: int):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset, self.seed = dataset, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def index(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, len(self.dataset))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=keyed_generator(self.seed, "epoch", epoch)))
        return epoch, int(self._perm[1][offset])

    def __len__(self):  # the stream is endless; DataLoader only needs this for its own checks
        return 2 ** 62

    def __getitem__(self, position: int):
        # A sample that cannot be read (a corrupt image found only now) is replaced by the next
        # position's: a pure function of the position, so a resumed run makes the same choice.
        from hoi.records import DataError
        for offset in range(self.MAX_REPLACEMENTS):
            epoch, index = self.index(position + offset)
            try:
                return self.dataset.get(index, epoch)
            except DataError as err:
                warnings.warn(f"{err}; sample skipped, using the next one")
        raise DataError(f"{self.MAX_REPLACEMENTS} unreadable samples in a row from position {position}")


class StepBatches(torch.utils.data.Sampler):
    """This rank's micro-batches of global positions, from iteration `start` on."""

    def __init__(self, start: int, batch_size: int, world: int, rank: int, accumulation: int):
        self.start, self.b, self.world, self.rank, self.accum = start, batch_size, world, rank, accumulation

    def __iter__(self):
        per_step = self.b * self.world * self.accum
        for it in count(self.start):
            for micro in range(self.accum):
                base = it * per_step + (micro * self.world + self.rank) * self.b
                yield list(range(base, base + self.b))


# ----------------------------------------------------------------------------- pieces of a step

class Denoiser(nn.Module):
    """The trained forward, `model.denoise`, as the module DDP wraps. It registers only the UNet
    (which holds the interaction tokenizer and the fusers): every weight `denoise` uses, so DDP
    syncs their gradients, while the frozen autoencoder and text encoder stay out of its
    broadcasts. With `types` = (phrase embeddings [3,B,N,D], labels [3,B,N]) it also returns the
    typed tokenizer's classification loss (inside the forward, for DDP too), else None."""

    def __init__(self, model: InteractDiffusion):
        super().__init__()
        self.unet = model.unet
        self.denoise = model.denoise   # a bound method: not registered, it uses only self.unet's weights

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, types=None):
        output = self.denoise(x_t, t, cond)
        tokenizer = self.unet.position_net   # released name (the model's interaction_tokenizer)
        return output, (None if types is None else role_type_loss(tokenizer, *types))


class EMA:
    """Exponential moving average of the trained parameters, by name. The decay warms up as
    min(rate, (1 + n) / (10 + n)) after n updates: with a flat 0.9999 the average would hold
    mostly the random initialisation for the first tens of thousands of steps."""

    def __init__(self, named_params: dict[str, nn.Parameter], rate: float):
        self.rate = rate
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in named_params.items()}

    def decay(self) -> float:
        return min(self.rate, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, named_params: dict[str, nn.Parameter]) -> None:
        decay = self.decay()
        for n, p in named_params.items():
            self.shadow[n].lerp_(p.detach(), 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, named_params: dict[str, nn.Parameter]):
        """The EMA weights in the model for the duration (previews, exports)."""
        saved = {n: p.detach().clone() for n, p in named_params.items()}
        with torch.no_grad():
            for n, p in named_params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in named_params.items():
                    p.copy_(saved[n])


def lr_lambda(warmup: int, total: int, kind: str):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


def rng_states() -> dict:
    """Tensors and plain values only, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():  # nothing here draws from it; kept for user code that does
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


# ----------------------------------------------------------------------------- the trainer

@dataclass
class RunPaths:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pth"

    def kept(self, iters: int) -> Path:
        return self.checkpoints / f"checkpoint_{iters:08d}.pth"

    @property
    def final(self) -> Path:
        return self.root / "model_final.pth"


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
        self.role_types = self._role_types(role_types)

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
        self._resumed = False
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

    def _role_types(self, role_types):
        """The type labels when the tokenizer is typed (its classifiers are fitted to them), else None."""
        if getattr(self.model.interaction_tokenizer, "role_embedding", "fixed") != "typed":
            return None
        if role_types is None:
            raise ValueError("train.role_types: required with interaction.role_embedding = typed "
                             "(\"toy\", \"hico\" or a JSON file; see dataset/role_types.py)")
        return role_types

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
        """Continue from latest.pth when the run folder has one (once per Trainer)."""
        if self._resumed or not self.paths.latest.is_file():
            return self._resumed
        self._resumed = True
        raw = read_file(self.paths.latest)
        if raw.get("backbone_from_file") and not self.backbone_from_file:
            raise RuntimeError(f"{self.paths.latest}: this run's frozen backbone came from a file, which the "
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
                raise RuntimeError(f"{self.paths.latest}: section {name!r} does not match this config "
                                   f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        saved_groups = len(raw["opt"]["param_groups"])
        if saved_groups != len(self.group_scales):
            raise RuntimeError(f"{self.paths.latest}: the run had {saved_groups} optimiser group(s), this config "
                               f"makes {len(self.group_scales)}: train.interaction_lr_scale went from or to 1; "
                               f"keep its value, or start a new run (--name)")
        self.optimizer.load_state_dict(raw["opt"])
        self.scheduler.load_state_dict(raw["scheduler"])
        self._apply_lr_options(raw.get("train", {}))
        if raw["scaler"] and self.scaler.is_enabled():  # a run that had no fp16 scaler saved an empty state
            self.scaler.load_state_dict(raw["scaler"])
        if self.ema is not None:
            if "ema" not in raw:
                raise RuntimeError(f"{self.paths.latest}: has no EMA weights but --enable_ema is set")
            self.ema.shadow = {n: t.to(self.dist.device) for n, t in raw["ema"].items()}
            self.ema.updates = int(raw.get("ema_updates", raw["iters"]))
        set_rng_states(raw["rng"])
        self.iters = int(raw["iters"])
        self.log(f"[resume] {self.paths.latest} at iteration {self.iters}")
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
            cond = m.condition(captions, batch["interactions"], encode_captions=self.captions,
                               encode_phrases=self.phrases)
            types = None
            if self.role_types is not None:  # the real phrases, even on a null-grounding step
                g = cond.grounding   # rows in the role-embedding order the classifiers' loss takes
                embeddings = torch.stack([g.subject_embeddings, g.object_embeddings, g.action_embeddings])
                slots = m.interaction_tokenizer.max_interactions
                types = (embeddings, self.role_types.labels(batch["interactions"], slots).to(dev))
            if null_grounding:
                cond = cond.null()   # the caption stays (its own drop is per sample, above)
        forward = self.ddp if self.ddp is not None else self.denoiser
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None), \
                deterministic_attention(o.deterministic and dev.type == "cuda"), self.phase("forward"):
            output, type_loss = forward(x_t, t, cond, types)
            loss = nn.functional.mse_loss(output.float(), m.diffusion.training_target(z, t, noise))
        return loss if type_loss is None else loss + o.role_type_loss_weight * type_loss.float()

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
        from hoi.records import collate_samples
        loader = torch.utils.data.DataLoader(stream, batch_sampler=sampler, num_workers=o.workers,
                                             collate_fn=collate_samples, persistent_workers=o.workers > 0)
        return iter(loader)

    # -------------------------------------------------------------- the loop
    def run(self) -> Path | None:
        """Train to total_iters (resuming when possible); returns the final export (rank 0)."""
        o = self.options
        self.paths.root.mkdir(parents=True, exist_ok=True)
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
        if self.iters > start and self.iters % o.checkpoint_every and self.iters % o.save_every_iters:
            self.save()
        if bar is not None:
            bar.close()
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

    # -------------------------------------------------------------- previews
    @torch.no_grad()
    def preview(self) -> Path | None:
        """A grid of generated images for the first preview_count training layouts, layout drawn
        on each, beside the real image; saved under previews/ and to TensorBoard."""
        if not self.dist.is_main:
            return None
        from interact.pipeline import InteractDiffusionPipeline, draw_layout, to_pil
        n = min(self.options.preview_count, len(self.dataset))
        samples = [self.dataset.get(i, 0) for i in range(n)]
        size = samples[0].image.shape[-1]
        context = self.ema.swapped_in(self.trained) if self.ema is not None else contextlib.nullcontext()
        with context:
            pipe = InteractDiffusionPipeline(self.model, self.dist.device)
            images = pipe([s.caption for s in samples], [s.interactions for s in samples], height=size, width=size,
                          seed=0, progress=False)
        self.model.unet.train()
        tiles = []
        for s, image in zip(samples, images):
            tiles += [draw_layout(image, s.interactions), draw_layout(to_pil((s.image + 1) / 2), s.interactions)]
        grid = image_grid(tiles, columns=2)
        path = self.paths.root / "previews" / f"iter_{self.iters:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        if self.writer is not None:
            self.writer.add_image("preview", np.asarray(grid), self.iters, dataformats="HWC")
        return path


def build_training_model(config: DictConfig, ckpt=None, sd_ckpt=None,
                         allow_pickle: bool = False) -> tuple[InteractDiffusion, list[str], bool]:
    """The model a training run starts from: random initialisation seeded by train.seed (so it is
    the same on every rank and every restart), then whatever the files provide. Returns the
    model, one line per part saying where it came from, and whether the backbone came from a file."""
    from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
    torch.manual_seed(config.train["seed"])
    model = build_model(config, tokenizer=load_clip_tokenizer())
    lines, backbone_from_file = load_weights(model, ckpt, sd_ckpt, purpose="train", allow_pickle=allow_pickle)
    return model, lines, backbone_from_file


def open_phrase_cache(config: DictConfig, text_encoder, fallback_root) -> PhraseEmbeddingCache:
    """train.phrase_cache, else <data.root>/phrase_embeddings_<encoder fingerprint>.pt."""
    fingerprint = encoder_fingerprint(text_encoder)
    path = config.train["phrase_cache"]
    if not path:
        root = Path(config.data.root) if "data" in config else Path(fallback_root)
        if not os.access(root, os.W_OK):  # a read-only or shared data set
            root = Path(fallback_root)
        path = root / f"phrase_embeddings_{fingerprint}.pt"
    return PhraseEmbeddingCache(text_encoder, path, fingerprint=fingerprint)


def dataset_phrases(dataset) -> set[str] | None:
    """Every subject/action/object phrase of a dataset's records, when it exposes them."""
    records = getattr(dataset, "records", None)
    if records is None:
        return None
    return {p for r in records for h in r.hois for p in (h.subject, h.action, h.object)}
