"""Train InteractDiffusion (single process, or torchrun --nproc_per_node=N main.py ...).

    python main.py --yaml_file configs/toy_hoi.yaml --name toy1
    torchrun --nproc_per_node=8 main.py --yaml_file configs/hoi_hico_text.yaml --name run1 \\
        --ckpt gligen-generation-text-box.pth --official_ckpt_name sd-v1-4.ckpt --batch_size 4 --amp true

A training YAML names its model with `model_config:` (a model-only YAML, e.g. configs/toy_model.yaml)
or varies another training YAML with `base_config:`; its `train:` section is checked against
interact.trainer.options.TrainOptions, `data:` against dataset.options.DataOptions, `interaction:` against
interact.model.InteractionOptions. Every train option and interaction switch is also a flag
(`--help` lists them with their defaults); flags override the YAML. Restarting the same command
resumes from <OUTPUT_ROOT>/<name>/checkpoints/latest.pth.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def optional_path(value):
    return None if value is None or str(value).lower() in ("", "none") else value


def parse_args(argv=None) -> argparse.Namespace:
    from hoi.schema import add_flags
    from interact.model import InteractionOptions
    from interact.trainer import TrainOptions
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
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects in checkpoints and per-image torch data files (trusted files only)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)  # old launchers
    note = "if the YAML does not set it"
    interaction = p.add_argument_group("interaction (override the YAML's interaction section)")
    p.set_defaults(interaction_flags=add_flags(interaction, InteractionOptions, default_note=note))
    train = p.add_argument_group("training (override the YAML's train section)")
    p.set_defaults(train_flags=add_flags(train, TrainOptions, default_note=note))
    return p.parse_args(argv)


def check_output_root(output_root: Path, run_dir: Path) -> None:
    """The run folder can be made: nothing on its way is a file."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"--OUTPUT_ROOT {output_root}: {folder} is a file, not a folder")
            return


def resolve_weights(path, data_root, flag: str):
    """A weights file or diffusers folder, as given or under --DATA_ROOT."""
    if path is None:
        return None
    candidates = [Path(path)] + ([Path(data_root) / path] if data_root else [])
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{flag} {path}: no such file or folder"
                            + (f" (nor under --DATA_ROOT {data_root})" if data_root else ""))


def main(argv=None) -> int:
    args = parse_args(argv)
    from dataset.hoi_dataset import build_training_inputs
    from hoi.schema import given_flags
    from interact.checkpoint import CheckpointError
    from interact.model import set_interaction_options
    from interact.trainer import ResumeError, Trainer, check_train_options, load_training_config
    run_dir = Path(args.output_root) / args.name
    try:
        check_output_root(Path(args.output_root), run_dir)
        config = load_training_config(args.yaml_file)
        config = set_interaction_options(config, **given_flags(args, args.interaction_flags))
        config.train = check_train_options({**config.train, **given_flags(args, args.train_flags)})
        if args.data_root is not None:
            if "data" not in config:
                raise ValueError(f"--DATA_ROOT given but {args.yaml_file} has no data section")
            config.data.root = args.data_root
        ckpt = resolve_weights(args.ckpt, args.data_root, "--ckpt")
        sd_ckpt = resolve_weights(args.official_ckpt_name, args.data_root, "--official_ckpt_name")
        # the data set is read before the model is built: a data error costs no model building
        dataset, role_types = build_training_inputs(config, progress=os.environ.get("RANK", "0") == "0",
                                                     allow_pickle=args.allow_pickle)
        trainer = Trainer(config, run_dir, dataset, role_types=role_types, ckpt=ckpt, sd_ckpt=sd_ckpt,
                          device=args.device, allow_pickle=args.allow_pickle)
        trainer.resume()  # here, so that a run folder it cannot continue is one line too
    except (ValueError, FileNotFoundError, CheckpointError, ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except OSError as err:  # a checkpoint, export or preview the disk refused (full, a size limit)
        where = f"{err.filename}: " if err.filename else f"{run_dir}: "
        print(f"error: {where}cannot write ({err.strerror or err}); the newest intact checkpoint is kept: free "
              f"space and rerun the same command to resume", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
