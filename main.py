"""Train InteractDiffusion (single process, or torchrun --nproc_per_node=N main.py ...).

    python main.py --yaml_file configs/toy_hoi.yaml --name toy1
    torchrun --nproc_per_node=8 main.py --yaml_file configs/hoi_hico_text.yaml --name run1 \\
        --ckpt gligen-generation-text-box.pth --official_ckpt_name sd-v1-4.ckpt --batch_size 4 --amp true

Command-line values override the YAML's `train` section. Restarting the same command
resumes from <OUTPUT_ROOT>/<name>/checkpoints/latest.pth.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def str2bool(value) -> bool:
    text = str(value).lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def optional_path(value):
    return None if value is None or str(value).lower() in ("", "none") else value


# Train options settable by flag (the reference trainer's names); types come from TRAIN_DEFAULTS.
TRAIN_FLAGS = ("batch_size", "grad_accumulation_step", "total_iters", "lr", "warmup_steps", "save_every_iters",
               "seed", "workers", "weight_decay", "scheduler_type", "ema_rate", "amp", "enable_ema",
               "disable_inference_in_training", "fix_interaction_embedding")
ALIASES = {"grad_accumulation_step": ["--gradient_accumulation_step"], "lr": ["--base_learning_rate"]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--yaml_file", required=True, help="training config (e.g. configs/toy_hoi.yaml)")
    p.add_argument("--name", default="test", help="the run is kept in OUTPUT_ROOT/name")
    p.add_argument("--OUTPUT_ROOT", "--output_root", dest="output_root", default="runs")
    p.add_argument("--DATA_ROOT", "--data_root", dest="data_root", default=None,
                   help="overrides data.root of the YAML; --official_ckpt_name is also looked up here")
    p.add_argument("--ckpt", type=optional_path, default=None,
                   help="a GLIGEN (box+text) or InteractDiffusion checkpoint to start from")
    p.add_argument("--official_ckpt_name", type=optional_path, default=None,
                   help="a Stable Diffusion v1.x .ckpt/.safetensors for the frozen backbone")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # old launchers
    from interact.model import interaction_switches
    for key, choices in interaction_switches().items():
        p.add_argument(f"--{key}", choices=choices, default=None, help=f"overrides interaction.{key} of the YAML")
    from interact.trainer import TRAIN_DEFAULTS
    for flag in TRAIN_FLAGS:
        default = TRAIN_DEFAULTS[flag]
        kind = str2bool if isinstance(default, bool) else type(default)
        extra = {"nargs": "?", "const": True} if kind is str2bool else {}
        p.add_argument(f"--{flag}", *ALIASES.get(flag, []), dest=flag, type=kind, default=None, **extra)
    return p.parse_args(argv)


def resolve_weights(path, data_root, flag: str):
    if path is None:
        return None
    candidates = [Path(path)] + ([Path(data_root) / path] if data_root else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{flag} {path}: no such file" + (f" (nor under --DATA_ROOT {data_root})" if data_root else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    from interact.checkpoint import CheckpointError
    from interact.model import interaction_switches, set_interaction_options
    from interact.trainer import Trainer, check_train_options, load_training_config
    try:
        config = load_training_config(args.yaml_file)
        config = set_interaction_options(config, **{key: getattr(args, key) for key in interaction_switches()})
        overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
        config.train = check_train_options({**config.train, **overrides})
        if args.data_root is not None:
            if "data" not in config:
                raise ValueError(f"--DATA_ROOT given but {args.yaml_file} has no data section")
            config.data.root = args.data_root
        ckpt = resolve_weights(args.ckpt, args.data_root, "--ckpt")
        sd_ckpt = resolve_weights(args.official_ckpt_name, args.data_root, "--official_ckpt_name")
        trainer = Trainer(config, Path(args.output_root) / args.name, ckpt=ckpt, sd_ckpt=sd_ckpt,
                          device=args.device, allow_pickle=args.allow_pickle)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
