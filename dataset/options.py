"""The `data:` section of a training config as a schema (hoi.schema): the single source of the
data builder's defaults, types, ranges and help. `dataset.hoi_dataset.build_dataset` reads it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import MISSING, OmegaConf

from dataset.hico import DEFAULT_MAX_SKIP_FRACTION
from hoi.records import MAX_INTERACTIONS
from hoi.schema import check_options, option

DataFormat = Literal["hico_mat", "detector_json", "torch_files"]
SPLITS = ("train", "test")
SPLIT_KEYS = ("annotations", "images")


@dataclass
class DataOptions:
    """Paths are relative to `root`; `train` and `test` are {annotations: ..., images: ...}."""
    format: DataFormat = option(MISSING, "the annotation format (required): HICO-DET's anno_bbox.mat, the "
                                         "detectors' trainval_hico.json, or one torch file per image")
    root: str = option(".", "the data set's folder")
    # Any: checked below (OmegaConf would turn a number given as categories into a string)
    train: Any = option(None, "the train split's {annotations, images}")
    test: Any = option(None, "the test split's {annotations, images}")
    categories: Any = option(None, "detector_json only: a JSON file of object and verb names")
    image_size: int = option(512, "images are resized and cropped to this square size",
                             check=lambda v: v > 0, rule="> 0")
    random_flip: bool = option(True, "flip train images (and their boxes) at random")
    min_box_area: float = option(0.001, "interactions whose boxes are smaller (as a fraction of the image) are dropped",
                                 check=lambda v: 0 <= v < 1, rule="in [0, 1)")
    max_skip_fraction: float = option(DEFAULT_MAX_SKIP_FRACTION, "the most records that may be skipped as broken",
                                      check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    max_interactions: int = option(MAX_INTERACTIONS, "interactions kept per image",
                                   check=lambda v: 1 <= v <= MAX_INTERACTIONS, rule=f"in [1, {MAX_INTERACTIONS}]")
    # True: a corrupt or mis-sized image is skipped when the data set is built, not met mid-run.
    verify_images: bool = option(True, "open every image once when the data set is built")
    in_memory: bool = option(False, "decode every image once into memory (small data sets)")


def check_data_options(values) -> DataOptions:
    """The `data:` section over DataOptions' defaults. Raises ValueError naming data.<key> for an
    unknown key, a wrong type, a value out of range or a missing `format`."""
    if values is not None and not hasattr(values, "keys"):
        raise ValueError(f"data: expected a mapping, got {type(values).__name__}")
    checked = check_options(DataOptions, values, "data")
    if "format" not in (values or {}):
        raise ValueError(f"data.format: missing; one of {', '.join(DataFormat.__args__)}")
    if checked.categories is not None and not isinstance(checked.categories, str):
        raise ValueError(f"data.categories = {checked.categories!r}: expected a file path")
    for split in SPLITS:
        section = checked[split]
        if section is None:
            continue
        if not hasattr(section, "keys"):
            raise ValueError(f"data.{split} = {section!r}: expected {{annotations: ..., images: ...}}")
        unknown = sorted(set(section) - set(SPLIT_KEYS))
        if unknown:
            raise ValueError(f"data.{split}.{unknown[0]}: unknown key (known: {', '.join(SPLIT_KEYS)})")
    return OmegaConf.to_object(checked)
