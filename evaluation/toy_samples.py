"""The toy world's test samples as the training data pipeline serves them (image, caption,
interactions), for measurements on held-out layouts (layout gain, the toy table)."""
from __future__ import annotations

import os


def toy_test_layouts(config_path: str | os.PathLike, data_root: str | os.PathLike, n: int):
    """The first `n` test samples of the toy world: (file name, caption, interactions, image)."""
    from interact.trainer import load_training_config
    from dataset.hoi_dataset import build_dataset
    config = load_training_config(config_path)
    config.data.root = str(data_root)
    config.data.in_memory = False
    dataset = build_dataset(config.data, "test", seed=0)
    if n > len(dataset):
        raise ValueError(f"n = {n}: the toy test split has only {len(dataset)} images")
    return [dataset.get(i, 0) for i in range(n)]
