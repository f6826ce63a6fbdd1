"""Command line: python -m dataset.toy generate --out data/toy [--train N --test N --size S --seed K]."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .generate import generate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset.toy", description="The toy HOI world.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write images and HICO-DET-style JSON")
    g.add_argument("--out", type=Path, required=True, help="output directory (must be empty or absent)")
    g.add_argument("--train", type=int, default=20000, help="train images (default 20000)")
    g.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    g.add_argument("--size", type=int, default=64, help="image side in pixels (default 64, at least 32)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes; the output does not depend on it (default: CPU count, at most 8)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing toy data set in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    start = time.perf_counter()
    try:
        out = generate(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed,
                       workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train + {args.test} test images to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
