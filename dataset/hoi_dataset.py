"""HOIDataset (records -> preprocessed samples) and `build_dataset` (config section -> dataset).

Every random choice of a sample (only the flip, today) is a pure function of
(seed, epoch, index), so a resumed run sees exactly the samples it would have seen.
`get(index, epoch)` is stateless and safe in DataLoader workers. `dataset[i]` uses the
epoch of `set_epoch`; workers copy the dataset when an iterator is created, so with
`persistent_workers=True` a later `set_epoch` does not reach them: prefer `get`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image

from dataset.hico import (DEFAULT_MAX_SKIP_FRACTION, TORCH_SUFFIXES, DataError, SkipReport, load_category_file,
                          read_detector_json, read_hico_mat, read_torch_files)
from dataset.sample import HOIRecord
from hoi.records import HOISample
from dataset.transforms import preprocess
from hoi.records import MAX_INTERACTIONS


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """A fair coin that depends only on (seed, epoch, index): one bit of a stable hash
    (Python's hash() is salted per process, so it would not survive a restart)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return bool(digest[0] & 1)


def load_image(record: HOIRecord) -> Image.Image:
    """The record's image: inline, from a per-image torch file, or from an image file."""
    if record.image is not None:
        return record.image
    path = record.image_path
    try:
        if path.suffix in TORCH_SUFFIXES:  # a trusted pickle, see dataset.hico.read_torch_files
            return torch.load(path, map_location="cpu", weights_only=False)["image"]
        with Image.open(path) as image:
            image.load()  # decode now, so the file can close and errors surface here
            return image
    except Exception as err:
        raise DataError(f"{record.key}: cannot read image {path} ({type(err).__name__}: {err})") from None


class HOIDataset(torch.utils.data.Dataset):
    """Records -> `HOISample`s, preprocessed as in docs/reference.md §4 (see dataset.transforms).

    With `verify_images`, construction opens every image file once (header and PIL's
    cheap `verify()`), and skips unreadable ones and ones whose size disagrees with the
    annotation, with the readers' warning/count/`max_skip_fraction` rules."""

    def __init__(self, records: list[HOIRecord], size: int, random_flip: bool = True, seed: int = 0,
                 min_area: float = 0.001, max_interactions: int = MAX_INTERACTIONS, verify_images: bool = False,
                 max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION, source: str = "dataset",
                 in_memory: bool = False, progress: bool = False):
        self.size, self.random_flip, self.seed = size, random_flip, seed
        self.min_area, self.max_interactions = min_area, max_interactions
        self.epoch = 0
        self.report = SkipReport(source)
        self.records = self._verified(records, max_skip_fraction) if verify_images else list(records)
        # Decoded images, when the whole set fits in memory (the toy world: 20000 images of
        # 32x32 are about 60 MB): decoding a PNG costs more than the toy model's step per sample.
        self.images: list[Image.Image] | None = self._decode_all(progress) if in_memory else None

    def _decode_all(self, progress: bool) -> list[Image.Image]:
        records = self.records
        if progress:
            from tqdm import tqdm
            records = tqdm(records, desc="decoding images", unit="img")
        return [load_image(r) for r in records]

    def _verified(self, records, max_skip_fraction):
        kept = []
        for record in records:
            self.report.total += 1
            path = record.image_path
            if record.image is not None or path.suffix in TORCH_SUFFIXES:
                kept.append(record)  # the image was checked when its torch file was read
                continue
            if not path.is_file():
                self.report.skip(record.key, "missing image", "image", f"{path} not found")
                continue
            try:
                with Image.open(path) as image:
                    size = image.size
                    image.verify()
            except Exception as err:
                self.report.skip(record.key, "unreadable image", "image", f"{path} cannot be read ({err})")
                continue
            if size != (record.width, record.height):
                self.report.skip(record.key, "size mismatch", "width/height",
                                 f"image {path} is {size[0]}x{size[1]}, annotation says {record.width}x{record.height}")
                continue
            kept.append(record)
        self.report.check(max_skip_fraction)
        return kept

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def flips(self, index: int, epoch: int | None = None) -> bool:
        return self.random_flip and flip_decision(self.seed, self.epoch if epoch is None else epoch, index)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, index: int, epoch: int) -> HOISample:
        """Sample `index` as seen in `epoch`; stateless, so workers need no set_epoch."""
        record = self.records[index]
        image = self.images[index] if self.images is not None else load_image(record)
        return preprocess(record, image, self.size, self.flips(index, epoch), self.min_area, self.max_interactions)

    def __getitem__(self, index: int) -> HOISample:
        return self.get(index, self.epoch)


# ----------------------------------------------------------------------------- config

FORMATS = ("hico_mat", "detector_json", "torch_files")
SPLITS = ("train", "test")
DATA_KEYS = ("format", "root", "train", "test", "categories", "image_size", "random_flip", "min_box_area",
             "max_skip_fraction", "max_interactions", "verify_images", "in_memory")
SPLIT_KEYS = ("annotations", "images")


def _plain(value):
    """A dict-like config (dict, OmegaConf DictConfig) as plain dicts."""
    if isinstance(value, Mapping) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _option(cfg: dict, key: str, kind, default, check=lambda v: True, expect: str = ""):
    """cfg[key] checked against a type (bool is not an int here) and a condition."""
    value = cfg.get(key, default)
    number = kind in (int, float)
    ok = isinstance(value, kind if kind is not float else (int, float)) and not (number and isinstance(value, bool))
    if not ok or not check(value):
        raise ValueError(f"data.{key} = {value!r}: expected {expect or kind.__name__}")
    return value


def build_dataset(data_cfg, split: str, seed: int, progress: bool = False) -> HOIDataset:
    """The `data:` config section -> HOIDataset for `split` ("train" or "test").

    Paths are relative to `data.root`. Only the train split flips (test samples must be
    comparable across runs). Unknown keys or wrong types raise ValueError naming the key;
    missing files raise FileNotFoundError naming the path and its key."""
    cfg = _plain(data_cfg)
    if not isinstance(cfg, dict):
        raise ValueError(f"data: expected a mapping, got {type(data_cfg).__name__}")
    unknown = sorted(set(cfg) - set(DATA_KEYS))
    if unknown:
        raise ValueError(f"data.{unknown[0]}: unknown key (known: {', '.join(DATA_KEYS)})")
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: expected one of {SPLITS}")
    if "format" not in cfg:
        raise ValueError(f"data.format: missing; one of {', '.join(FORMATS)}")
    fmt = _option(cfg, "format", str, None, lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}")
    root = Path(_option(cfg, "root", str, ".", expect="a folder path"))
    size = _option(cfg, "image_size", int, 512, lambda v: v > 0, "a positive integer")
    random_flip = _option(cfg, "random_flip", bool, True, expect="true or false")
    min_area = _option(cfg, "min_box_area", float, 0.001, lambda v: 0 <= v < 1, "a number in [0, 1)")
    max_skip = _option(cfg, "max_skip_fraction", float, DEFAULT_MAX_SKIP_FRACTION, lambda v: 0 <= v <= 1,
                       "a number in [0, 1]")
    max_interactions = _option(cfg, "max_interactions", int, MAX_INTERACTIONS,
                               lambda v: 1 <= v <= MAX_INTERACTIONS, f"an integer in [1, {MAX_INTERACTIONS}]")
    verify = _option(cfg, "verify_images", bool, True, expect="true or false")
    in_memory = _option(cfg, "in_memory", bool, False, expect="true or false")
    categories = _option(cfg, "categories", (str, type(None)), None, expect="a file path")

    if split not in cfg:
        raise ValueError(f"data.{split}: missing; give {{annotations: ..., images: ...}}")
    section = cfg[split]
    if not isinstance(section, dict):
        raise ValueError(f"data.{split} = {section!r}: expected {{annotations: ..., images: ...}}")
    unknown = sorted(set(section) - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"data.{split}.{unknown[0]}: unknown key (known: {', '.join(SPLIT_KEYS)})")
    needed = ("annotations",) if fmt == "torch_files" else SPLIT_KEYS
    for key in needed:
        if not isinstance(section.get(key), str):
            raise ValueError(f"data.{split}.{key} = {section.get(key)!r}: expected a path")
    if categories is not None and fmt != "detector_json":
        raise ValueError(f"data.categories: only used with format detector_json, not {fmt}")

    annotations = root / section["annotations"]
    if not annotations.exists():
        raise FileNotFoundError(f"data.{split}.annotations: {annotations} not found")
    if fmt != "torch_files":
        images = root / section["images"]
        if not images.is_dir():
            raise FileNotFoundError(f"data.{split}.images: folder {images} not found")

    if fmt == "hico_mat":
        records, report = read_hico_mat(annotations, images, split, max_skip_fraction=max_skip)
    elif fmt == "detector_json":
        names = {}
        if categories is not None:
            path = root / categories
            if not path.is_file():
                raise FileNotFoundError(f"data.categories: {path} not found")
            names = dict(zip(("object_names", "verb_names"), load_category_file(path)))
        records, report = read_detector_json(annotations, images, **names, max_skip_fraction=max_skip)
    else:
        # Images stay in their files until used: held inline, HICO-DET's would take tens of GB per process.
        records, report = read_torch_files(annotations, max_skip_fraction=max_skip, inline_images=False)
    dataset = HOIDataset(records, size, random_flip=random_flip and split == "train", seed=seed,
                         min_area=min_area, max_interactions=max_interactions, verify_images=verify,
                         max_skip_fraction=max_skip, source=report.source, in_memory=in_memory, progress=progress)
    dataset.reader_report = report
    return dataset
