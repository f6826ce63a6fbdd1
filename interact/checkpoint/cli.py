"""python -m interact.checkpoint inspect FILE|DIR [--config YAML] | pack FILE OUT [--fp32]
| export --format diffusers OUT [--ckpt FILE] [--sd_ckpt FILE] [--config YAML] [--fp16]"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

import torch

from interact.checkpoint.checks import check_file, config_hint
from interact.checkpoint.formats import (CheckpointError, classify, config_for_kind, describe_kind, read_file,
                                         to_sections)
from interact.checkpoint.writing import pack
from interact.model import SD_V1_CONFIG, SECTIONS, build_model, load_config


def inspect(path: str | os.PathLike, config: str | os.PathLike | None = None, allow_pickle: bool = False,
            out: TextIO | None = None) -> int:
    """Say what a checkpoint file is and whether it loads strictly into `config`'s model (0 if so, 1 if not)."""
    out = out or sys.stdout  # looked up at call time so redirected stdout is honoured
    if os.path.isdir(path):  # a diffusers folder: read with the name maps of the config's model
        from interact.checkpoint.diffusers_folder import generation_config, read_folder
        config = config or generation_config(path)
        raw = read_folder(path, build_model(load_config(config), device="meta"))
    else:
        raw = read_file(path, allow_pickle)
    print(f"{path}: {describe_kind(raw)}", file=out)
    if classify(raw) == "lora":
        from interact.checkpoint.lora import describe_lora
        print("  " + describe_lora(raw, path), file=out)
        return 0
    sections = to_sections(raw)
    for name, state in sections.items():
        params = sum(v.numel() for v in state.values())
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
        print(f"  {name:13s} {len(state):5d} tensors  {params / 1e6:9.2f} M values  {','.join(dtypes)}", file=out)
    extras = sorted(str(k) for k in raw if k not in SECTIONS and k != "diffusers_folder"
                    and not isinstance(raw[k], torch.Tensor))
    if extras and classify(raw) != "sd_original":
        print(f"  other keys: {', '.join(extras)}", file=out)
    config = config or config_for_kind(classify(raw))
    model = build_model(load_config(config), device="meta")
    reports = check_file(raw, model)
    problems = [line for name, r in reports.items() for line in r.lines(name)]
    if problems:
        print(f"does NOT load strictly into {config}{config_hint(raw)}:", file=out)
        for line in problems:
            print("  " + line, file=out)
        return 1
    print(f"loads strictly into {config} (sections: {', '.join(reports)})", file=out)
    return 0


def export(out: str, ckpt: str | None = None, sd_ckpt: str | None = None, config: str | None = None,
           half: bool = False, allow_pickle: bool = False) -> int:
    """A model (a checkpoint, or the embedded toy model) written as a diffusers folder."""
    from interact.checkpoint.diffusers_folder import (check_export_path, export_diffusers, generation_config,
                                                      tokenizer_folder)
    from interact.checkpoint.loading import load_weights
    from interact.model import EMBEDDED_CKPT, EMBEDDED_CONFIG
    from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
    check_export_path(out)  # before any weights are read
    if ckpt is None and sd_ckpt is None:
        ckpt, config = EMBEDDED_CKPT, config or EMBEDDED_CONFIG
    if config is None:  # as for generation: a GLIGEN file gets GLIGEN's config
        config = generation_config(ckpt, allow_pickle)
    model = build_model(load_config(config), tokenizer=load_clip_tokenizer(tokenizer_folder(ckpt, sd_ckpt)),
                        device="meta")
    load_weights(model, ckpt, sd_ckpt, purpose="generate", allow_pickle=allow_pickle)
    # an SD file alone is plain SD: its folder is a plain SD one (no zero fusers, not "gated")
    folder = export_diffusers(model, out, half=half, with_control=ckpt is not None)
    source = " + ".join(str(p) for p in (sd_ckpt, ckpt) if p is not None)
    print(f"wrote {folder} (diffusers layout, {'fp16' if half else 'fp32'}) from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interact.checkpoint",
                                     description="Reading, checking and writing checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="say what a checkpoint file or diffusers folder is and check it against "
                                       "a model config")
    p.add_argument("file", help="a checkpoint file, or a diffusers folder (unet/ vae/ text_encoder/ ...)")
    p.add_argument("--config", default=None, help=f"model YAML (default {SD_V1_CONFIG.relative_to(SD_V1_CONFIG.parents[1])}, "
                        f"or configs/sd_v1_gligen.yaml for a GLIGEN file)")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p = sub.add_parser("export", help="a model -> a diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    p.add_argument("out", help="the folder to write (must not exist)")
    p.add_argument("--format", choices=("diffusers",), default="diffusers")
    p.add_argument("--ckpt", default=None, help="the model's checkpoint file or diffusers folder (default: the "
                                                 "embedded toy model)")
    p.add_argument("--sd_ckpt", default=None, help="SD v1.x backbone (file or diffusers folder) for an "
                                                   "interaction-only --ckpt")
    p.add_argument("--config", default=None, help="model YAML (default: chosen as for generation)")
    p.add_argument("--fp16", action="store_true", help="write fp16 weights (*.fp16.safetensors)")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p = sub.add_parser("pack", help="a training export -> a shippable file (model sections, fp16)")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            return export(args.out, args.ckpt, args.sd_ckpt, args.config, args.fp16, args.allow_pickle)
        if args.command == "pack":
            pack(args.file, args.out, half=not args.fp32, allow_pickle=args.allow_pickle)
            print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.2f} MiB)")
            return 0
        return inspect(args.file, args.config, args.allow_pickle)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
