"""Command line:
    python -m dataset.toy generate --out data/toy [--train N --test N --size S --seed K]
    python -m dataset.toy layouts --out examples/toy_layouts.json [--control interaction --n 24 --first 0 --seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .generate import LAYOUT_FIELDS, generate, write_layouts
from .world import DEFAULT_SIZE


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset.toy", description="The toy HOI world.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write images and HICO-DET-style JSON")
    g.add_argument("--out", type=Path, required=True, help="output directory (must be empty or absent)")
    g.add_argument("--train", type=int, default=20000, help="train images (default 20000)")
    g.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    g.add_argument("--size", type=int, default=DEFAULT_SIZE,
                   help=f"image side in pixels (default {DEFAULT_SIZE}, at least 32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes; the output does not depend on it (default: CPU count, at most 8)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing toy data set in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    lay = sub.add_parser("layouts", help="write test scenes' layouts as an inference_batch.py input file")
    lay.add_argument("--out", type=Path, required=True, help="the .json file to write")
    lay.add_argument("--n", type=int, default=24, help="how many layouts (default 24)")
    lay.add_argument("--first", type=int, default=0, help="the first test image (default 0)")
    lay.add_argument("--seed", type=int, default=0, help="the world's seed (default 0: the data set's own test scenes; "
                     "another seed: fresh scenes)")
    lay.add_argument("--control", default="interaction", choices=sorted(LAYOUT_FIELDS),
                     help="whose records to write (default interaction)")
    args = p.parse_args(argv)
    if args.command == "layouts":
        try:
            write_layouts(args.out, args.n, args.first, args.seed, args.control)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.n} layouts (test images {args.first}-{args.first + args.n - 1}) to {args.out}")
        return 0

    start = time.perf_counter()
    try:
        out = generate(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed,
                       workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, OSError) as e:      # OSError: the folder exists, or a path cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train + {args.test} test images to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
