"""Batch generation: a file of interaction layouts -> images, layout overlays and JSON sidecars.

    python inference_batch.py --ckpt interact-diffusion-v1-2.pth --input layouts.json --folder out/
    python inference_batch.py --sd_ckpt v1-5-pruned-emaonly.safetensors --ckpt interaction.pth --input ...

With no --ckpt the embedded default model is used. See README.md for the input format.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--ckpt", help="InteractDiffusion checkpoint (all sections), or the interaction weights "
                                    "when --sd_ckpt is given")
    src.add_argument("--sd_ckpt", help="Stable Diffusion v1.x .ckpt/.safetensors for the backbone")
    src.add_argument("--text_encoder", help="Hugging Face CLIP text model folder (config.json + weights, "
                                            "tokenizer files beside or in ../tokenizer)")
    src.add_argument("--config", help="model YAML (default: configs/sd_v1_interact.yaml with a checkpoint; "
                                      "without one, the embedded toy model, or random weights of --config)")
    src.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    from interact.model import interaction_switches
    for key, choices in interaction_switches().items():
        src.add_argument(f"--{key}", choices=choices, help=f"overrides interaction.{key} of the config")
    io = p.add_argument_group("input and output")
    io.add_argument("--input", help="layouts: .json (a list of records), .jsonl or .pkl (default: "
                                    "examples/toy_layouts.json for the embedded toy model, else examples/layouts.json)")
    io.add_argument("--folder", default="outputs/generated", help="output folder")
    io.add_argument("--grid", help="also write one PNG with every record's image and overlay (e.g. out/grid.png)")
    io.add_argument("--no-overwrite", action="store_true", help="skip records whose outputs already exist")
    io.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    gen = p.add_argument_group("sampling (defaults from the config's sampling section)")
    gen.add_argument("--batch_size", type=int, default=1)
    gen.add_argument("--sampler", choices=["plms", "ddim"])
    gen.add_argument("--no_plms", action="store_true", help="use DDIM (reference flag; same as --sampler ddim)")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance_scale", type=float)
    gen.add_argument("--negative_prompt")
    gen.add_argument("--scheduled-sampling", dest="scheduled_sampling", type=float,
                     help="beta in [0,1]: fusers on for the first beta*steps steps")
    gen.add_argument("--seed", type=int, default=0, help="record i uses seed + i")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument("--half", action="store_true", help="fp16 weights and activations (CUDA only)")
    args = p.parse_args(argv)
    if args.overwrite and args.no_overwrite:
        p.error("--overwrite and --no-overwrite exclude each other")
    if args.no_plms:
        if args.sampler == "plms":
            p.error("--no_plms contradicts --sampler plms")
        args.sampler = "ddim"
    if args.batch_size < 1:
        p.error(f"--batch_size {args.batch_size}: must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from interact.batch import BatchError, run_batch
    try:
        run_batch(args)
    except BatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
