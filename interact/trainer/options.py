"""The `train:` section of a training config and the training YAML reader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig

from hoi.schema import check_options, option
from interact.model import CONFIG_DIR, MODEL_KEYS, TRAINING_KEYS, load_config, read_config_file


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
    role_type_loss_weight: float = option(1.0, "weight of the controls' auxiliary losses (the typed role classifiers' "
                                               "cross-entropy)",
                                          check=lambda v: v >= 0, rule=">= 0")
    max_steps_per_run: int = option(0, "stop (with a checkpoint) after this many steps; 0 = no limit",
                                    check=lambda v: v >= 0, rule=">= 0")
    # CPU runs always are deterministic
    deterministic: bool = option(False, "CUDA: deterministic kernels (slower), for a bit-exact resume")


TOP_LEVEL_KEYS = set(MODEL_KEYS) | set(TRAINING_KEYS) | {"model_config", "base_config"}


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

