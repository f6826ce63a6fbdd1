"""Batch generation: a file of interaction layouts -> images, layout overlays and JSON sidecars.

    python inference_batch.py --ckpt interact-diffusion-v1-2.pth --input layouts.json --folder out/
    python inference_batch.py --sd_ckpt v1-5-pruned-emaonly.safetensors --ckpt interaction.pth --input ...

With no --ckpt the embedded default model is used. See README.md for the input format.
Flags come from the option schemas: BatchOptions (interact/batch.py), InteractionOptions (interact/model.py),
SamplingOptions (interact/pipeline.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from hoi.schema import add_flags, check_options, flag_name, given_flags
from interact.batch import BatchError, BatchOptions, batch_options, run_batch
from interact.model import SWITCHES, InteractionOptions
from interact.pipeline import SamplingOptions

# check_options names a bad value `<where>.<key>`; on the command line that is the flag --<key>.
_FLAG_PREFIX = "cli"


def _names(schema) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model")
    add_flags(model, BatchOptions, only=("ckpt", "sd_ckpt", "text_encoder", "config", "allow_pickle"))
    add_flags(model, InteractionOptions, default_note="without a config value")
    model.add_argument("--lora", action="append", default=None, metavar="FILE[:WEIGHT]",
                       help="a LoRA for the base (kohya or diffusers/PEFT safetensors), merged into the UNet and "
                            "text encoder with this weight (default 1); repeatable")
    io = p.add_argument_group("input and output")
    add_flags(io, BatchOptions, only=("input", "folder", "grid"))
    add_flags(io.add_mutually_exclusive_group(), BatchOptions, only=("no_overwrite", "overwrite"))
    add_flags(io, BatchOptions, only=("redo_interrupted",))
    gen = p.add_argument_group("sampling (unset: the config's sampling section, else the default shown)")
    add_flags(gen, SamplingOptions)
    # The reference code's spelling of --sampler ddim.
    gen.add_argument("--no_plms", action="store_true", help="use DDIM (same as --sampler ddim)")
    add_flags(gen, BatchOptions, only=("batch_size", "seed", "device", "half"))
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def options_from_args(args: argparse.Namespace) -> tuple[BatchOptions, dict]:
    """The namespace as typed options, once: (BatchOptions, the SamplingOptions values given).
    Raises BatchError naming the flag and value."""
    if args.no_plms:
        if args.sampler not in (None, "ddim"):
            raise BatchError(f"--no_plms (DDIM, the reference's flag) contradicts --sampler {args.sampler}; give one")
        args.sampler = "ddim"
    try:
        sampling = given_flags(args, _names(SamplingOptions))
        check_options(SamplingOptions, sampling, _FLAG_PREFIX)
        values = given_flags(args, _names(BatchOptions))
        values["interaction"] = given_flags(args, list(SWITCHES))
        values["lora"] = args.lora or []
        return batch_options(values, _FLAG_PREFIX), sampling
    except ValueError as err:
        message = str(err)
        if message.startswith(_FLAG_PREFIX + "."):
            name, _, rest = message[len(_FLAG_PREFIX) + 1:].partition(" ")
            message = f"{flag_name((SamplingOptions, BatchOptions), name)} {rest}"
        raise BatchError(message) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_batch(*options_from_args(args))
    except BatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
