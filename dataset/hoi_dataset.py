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

from dataset.hico import (TORCH_SUFFIXES, DataError, SkipReport, load_category_file, load_data_file,
                          read_detector_json, read_hico_mat, read_torch_files)
from dataset.options import SPLIT_KEYS, SPLITS, DataOptions, check_data_options
from dataset.role_types import RoleTypes, load_role_types
from dataset.sample import HOIRecord
from dataset.transforms import preprocess
from hoi.records import HOISample

# Constructor defaults = the `data:` section's (dataset/options.py), so both build the same data set.
_DEFAULTS = DataOptions(format="detector_json")


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """A fair coin that depends only on (seed, epoch, index): one bit of a stable hash
    (Python's hash() is salted per process, so it would not survive a restart)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return bool(digest[0] & 1)


def load_image(record: HOIRecord, allow_pickle: bool = False) -> Image.Image:
    """The record's image: inline, from a per-image torch file (read as dataset.hico.read_torch_files
    reads it), or from an image file."""
    if record.image is not None:
        return record.image
    path = record.image_path
    try:
        if path.suffix in TORCH_SUFFIXES:
            return load_data_file(path, allow_pickle)["image"]
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

    def __init__(self, records: list[HOIRecord], size: int, random_flip: bool = _DEFAULTS.random_flip,
                 seed: int = 0, min_area: float = _DEFAULTS.min_box_area,
                 max_interactions: int = _DEFAULTS.max_interactions, verify_images: bool = _DEFAULTS.verify_images,
                 max_skip_fraction: float = _DEFAULTS.max_skip_fraction, source: str = "dataset",
                 in_memory: bool = False, progress: bool = False, allow_pickle: bool = False):
        self.size, self.random_flip, self.seed = size, random_flip, seed
        self.allow_pickle = allow_pickle  # per-image torch files: any object (trusted data only)
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
        return [load_image(r, self.allow_pickle) for r in records]

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
        image = self.images[index] if self.images is not None else load_image(record, self.allow_pickle)
        return preprocess(record, image, self.size, self.flips(index, epoch), self.min_area, self.max_interactions)

    def __getitem__(self, index: int) -> HOISample:
        return self.get(index, self.epoch)


# ----------------------------------------------------------------------------- config

def build_dataset(data: DataOptions | Mapping, split: str, seed: int, progress: bool = False,
                  allow_pickle: bool = False) -> HOIDataset:
    """The `data:` config section (DataOptions, or a mapping checked against it) -> HOIDataset
    for `split` ("train" or "test").

    Paths are relative to `data.root`. Only the train split flips (test samples must be
    comparable across runs). Unknown keys or wrong types raise ValueError naming the key;
    missing files raise FileNotFoundError naming the path and its key. `allow_pickle`: per-image
    torch files may hold any object (trusted data only; see dataset.hico.read_torch_files)."""
    o = data if isinstance(data, DataOptions) else check_data_options(data)
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: expected one of {SPLITS}")
    fmt, root = o.format, Path(o.root)
    section = getattr(o, split)
    if section is None:
        raise ValueError(f"data.{split}: missing; give {{annotations: ..., images: ...}}")
    needed = ("annotations",) if fmt == "torch_files" else SPLIT_KEYS
    for key in needed:
        if not isinstance(section.get(key), str):
            raise ValueError(f"data.{split}.{key} = {section.get(key)!r}: expected a path")
    if o.categories is not None and fmt != "detector_json":
        raise ValueError(f"data.categories: only used with format detector_json, not {fmt}")

    annotations = root / section["annotations"]
    if not annotations.exists():
        raise FileNotFoundError(f"data.{split}.annotations: {annotations} not found")
    if fmt != "torch_files":
        images = root / section["images"]
        if not images.is_dir():
            raise FileNotFoundError(f"data.{split}.images: folder {images} not found")

    if fmt == "hico_mat":
        records, report = read_hico_mat(annotations, images, split, max_skip_fraction=o.max_skip_fraction)
    elif fmt == "detector_json":
        names = {}
        if o.categories is not None:
            path = root / o.categories
            if not path.is_file():
                raise FileNotFoundError(f"data.categories: {path} not found")
            names = dict(zip(("object_names", "verb_names"), load_category_file(path)))
        records, report = read_detector_json(annotations, images, **names, max_skip_fraction=o.max_skip_fraction)
    else:
        # Images stay in their files until used: held inline, HICO-DET's would take tens of GB per process.
        records, report = read_torch_files(annotations, max_skip_fraction=o.max_skip_fraction, inline_images=False,
                                           allow_pickle=allow_pickle)
    dataset = HOIDataset(records, o.image_size, random_flip=o.random_flip and split == "train", seed=seed,
                         min_area=o.min_box_area, max_interactions=o.max_interactions, verify_images=o.verify_images,
                         max_skip_fraction=o.max_skip_fraction, source=report.source, in_memory=o.in_memory,
                         progress=progress, allow_pickle=allow_pickle)
    dataset.reader_report = report
    return dataset


def build_training_inputs(config, progress: bool = False,
                          allow_pickle: bool = False) -> tuple[HOIDataset, RoleTypes | None]:
    """What a training config's trainer is given: the train split of `config.data` (flips seeded
    by train.seed) and the role-type table named by train.role_types (None when unset)."""
    if "data" not in config:
        raise ValueError("the training config has no 'data' section")
    data = check_data_options(config.data)
    try:
        dataset = build_dataset(data, "train", seed=config.train["seed"], progress=progress, allow_pickle=allow_pickle)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (point data.root or --DATA_ROOT at the data set; the toy world is "
                                f"made by `python -m dataset.toy generate --out {data.root}`)") from None
    return dataset, training_role_types(config)


def training_role_types(config) -> RoleTypes | None:
    """The role-type table of train.role_types ("toy", "hico" or a JSON file), None when unset."""
    spec = config.train["role_types"]
    return load_role_types(spec) if spec else None
