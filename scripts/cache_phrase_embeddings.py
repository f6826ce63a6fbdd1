"""Compute the CLIP pooled embedding of every subject, action and object phrase of a
training config's data (train and test splits) once, into the cache file the trainer reads.

    python scripts/cache_phrase_embeddings.py --yaml_file configs/hoi_hico_text.yaml \\
        --official_ckpt_name sd-v1-4.ckpt [--ckpt gligen.pth] [--out cache.pt]

The text encoder is built exactly as main.py builds it (same config, seed and files), so
the cache's fingerprint matches the training run's. Training also fills a missing cache by
itself; this script is for doing it ahead of a multi-GPU job, or for more splits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--yaml_file", required=True)
    p.add_argument("--ckpt", default=None, help="as main.py --ckpt")
    p.add_argument("--official_ckpt_name", default=None, help="as main.py --official_ckpt_name")
    p.add_argument("--DATA_ROOT", "--data_root", dest="data_root", default=None, help="overrides data.root")
    p.add_argument("--splits", nargs="+", default=["train", "test"], help="data splits whose phrases to cache")
    p.add_argument("--out", default=None, help="cache file (default: train.phrase_cache or <data.root>/...)")
    p.add_argument("--allow-pickle", action="store_true")
    args = p.parse_args(argv)

    from dataset.hoi_dataset import build_dataset
    from interact.trainer import build_training_model, dataset_phrases, load_training_config, open_phrase_cache
    from main import optional_path, resolve_weights
    ckpt = resolve_weights(optional_path(args.ckpt), args.data_root, "--ckpt")
    sd_ckpt = resolve_weights(optional_path(args.official_ckpt_name), args.data_root, "--official_ckpt_name")
    config = load_training_config(args.yaml_file)
    if args.data_root is not None:
        config.data.root = args.data_root
    if args.out is not None:
        config.train["phrase_cache"] = args.out
    phrases: set[str] = set()
    for split in args.splits:
        if split not in config.data:
            print(f"[cache] no data.{split} in {args.yaml_file}; skipped")
            continue
        phrases |= dataset_phrases(build_dataset(config.data, split, seed=config.train["seed"]))
    model, lines, _ = build_training_model(config, ckpt, sd_ckpt, args.allow_pickle)
    for line in lines:
        print(f"[init] {line}")
    cache = open_phrase_cache(config, model.text_encoder, Path("."))
    added = cache.add(phrases, progress=True)
    path = cache.save()
    print(f"[cache] {path}: {len(cache)} phrases ({added} new), encoder fingerprint {cache.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
