"""HICO-DET readers: the official `anno_bbox.mat`, the detector JSON, per-image torch files.

Each reader returns `(records, report)`: a list of `HOIRecord`s (pixel xyxy boxes of the
original image, phrases with underscores turned to spaces) and a `SkipReport`. The same
annotations in any of the three formats give the same records.

Bad input skips the whole sample (image), never a single interaction, so that an image
is either used as annotated or not at all: a missing image, a missing or ill-typed
field, a box that is degenerate or leaves the image, an unknown category id or
a dangling index. Each skip prints ONE `DataWarning` line naming the file, the sample
and the field, and is counted per reason; when the skipped fraction of samples exceeds
`max_skip_fraction` the reader raises `DataError` with the counts. A sample left with no
interactions is skipped too (reason "no interactions"). Interactions the official
annotation marks invisible (`invis = 1`) are dropped silently: they are not errors.

Box convention: boxes are taken as the files store them, as xyxy in pixels with
0 <= x0 < x1 <= width. The official .mat numbers are 1-based inclusive pixels; the
detector JSON holds the very same numbers (it was converted without shifting them), so
the .mat values are used unchanged and both formats agree; the difference from pixel
edges is at most one pixel.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset.hico_names import OBJECT_NAMES, VERB_NAMES, phrase
from hoi.pickles import RefusedPickle, UnreadablePickle, load_torch, numpy_globals
from hoi.records import DataError
from dataset.sample import HOIRecord, RawHOI

DEFAULT_MAX_SKIP_FRACTION = 0.01
TORCH_SUFFIXES = (".pth", ".pt")


class DataWarning(UserWarning):
    """One skipped sample; the message names the file, the sample and the field."""


@dataclass
class SkipReport:
    """What a reader skipped: counts per reason out of `total` samples seen."""
    source: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def skip(self, key: str, reason: str, where: str, problem: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        warnings.warn(f"{self.source}: {key}: {where}: {problem}; sample skipped", DataWarning, stacklevel=2)

    def check(self, max_skip_fraction: float) -> None:
        if self.fraction > max_skip_fraction:
            raise DataError(f"{self.source}: skipped {self.describe()}, more than max_skip_fraction "
                            f"{max_skip_fraction:g}; fix the data or raise max_skip_fraction")

    def describe(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))
        return f"{self.skipped} of {self.total} samples ({self.fraction:.1%}){f' ({reasons})' if reasons else ''}"


class _Skip(Exception):
    """Raised inside a reader to skip the current sample; caught by the reader's loop."""

    def __init__(self, reason: str, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.reason, self.where, self.problem = reason, where, problem


# ----------------------------------------------------------------------------- shared checks

def _get(mapping, name: str, where: str):
    if not isinstance(mapping, dict) or name not in mapping:
        raise _Skip("missing field", f"{where}{name}", "missing")
    return mapping[name]


def _pixel_box(values, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    """Validate an xyxy pixel box against the image size."""
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise _Skip("bad box", where, f"{values!r} is not 4 numbers") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise _Skip("bad box", where, f"{values!r} is not 4 finite numbers")
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise _Skip("bad box", where, f"{list(box)} is degenerate (need x0 < x1, y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise _Skip("bad box", where, f"{list(box)} lies outside the {width}x{height} image")
    return box


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or value != int(value) or value <= 0:
        raise _Skip("bad value", where, f"{value!r} is not a positive integer")
    return int(value)


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """Width, height from the image header (PIL reads no pixels here)."""
    from PIL import Image

    if not path.is_file():
        raise _Skip("missing image", where, f"image {path} not found")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as err:  # PIL raises several types for a broken file
        raise _Skip("unreadable image", where, f"image {path} cannot be read ({err})") from None


def _finish(records: list[HOIRecord], report: SkipReport, max_skip_fraction: float):
    if report.total == 0:
        raise DataError(f"{report.source}: holds no samples")
    report.check(max_skip_fraction)
    return records, report


def _keep(record: HOIRecord) -> HOIRecord:
    if not record.hois:
        raise _Skip("no interactions", "hois", "no interactions left")
    return record


# ----------------------------------------------------------------------------- official .mat

def _items(value) -> list:
    """A MATLAB struct array as a list: loadmat(squeeze_me=True) returns a bare struct for
    a one-element array, an object array for more, and an empty array for none."""
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def _attr(struct, name: str, where: str):
    if not hasattr(struct, name):
        raise _Skip("missing field", f"{where}{name}", "missing")
    return getattr(struct, name)


def _scalar(value, where: str) -> float:
    # squeeze_me turns a 1x1 MATLAB number into a numpy scalar; anything else is malformed.
    if np.size(value) != 1:
        raise _Skip("bad value", where, f"{value!r} is not a single number")
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise _Skip("bad value", where, f"{value!r} is not a number") from None


def _mat_box(struct, width: int, height: int, where: str):
    # The official file names the fields x1, x2, y1, y2 (left, right, top, bottom).
    values = [_scalar(_attr(struct, name, where + "."), f"{where}.{name}") for name in ("x1", "y1", "x2", "y2")]
    return _pixel_box(values, width, height, where)


def _mat_size(size, where: str) -> tuple[int, int]:
    # The official `size` is a struct (width, height, depth); accept a plain vector too.
    if hasattr(size, "width"):
        values = [_attr(size, "width", where + "."), _attr(size, "height", where + ".")]
    else:
        values = list(np.ravel(size))[:2]
        if len(values) < 2:
            raise _Skip("bad value", where, f"{size!r} is not (width, height, depth)")
    return (_positive_int(_scalar(values[0], where + ".width"), where + ".width"),
            _positive_int(_scalar(values[1], where + ".height"), where + ".height"))


def read_hico_mat(anno_mat_path, image_dir, split: str = "train",
                  max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION):
    """Read the official HICO-DET `anno_bbox.mat` (`bbox_train` or `bbox_test`, `list_action`).

    Each hoi entry names one of the 600 HOI categories (`id`, 1-based into `list_action`
    with `nname` object and `vname` verb), its human and object boxes and `connection`
    rows of 1-based (human, object) box indices: every connection is one interaction.
    The subject phrase is always "person"."""
    from scipy.io import loadmat

    path = Path(anno_mat_path)
    if split not in ("train", "test"):
        raise ValueError(f"split = {split!r}: expected 'train' or 'test'")
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save it as -v7") from None
    except Exception as err:
        raise DataError(f"{path}: cannot read the .mat file ({err})") from None
    for name in (f"bbox_{split}", "list_action"):
        if name not in mat:
            raise DataError(f"{path}: no variable {name!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
    try:
        actions = [(phrase(a.vname), phrase(a.nname)) for a in _items(mat["list_action"])]
    except AttributeError:
        raise DataError(f"{path}: list_action rows need the fields nname and vname") from None

    report = SkipReport(path.name)
    records = []
    for n, entry in enumerate(_items(mat[f"bbox_{split}"])):
        report.total += 1
        key = str(getattr(entry, "filename", f"bbox_{split}[{n}]"))
        try:
            records.append(_keep(_mat_record(entry, key, actions, Path(image_dir))))
        except _Skip as skip:
            report.skip(key, skip.reason, skip.where, skip.problem)
    return _finish(records, report, max_skip_fraction)


def _mat_record(entry, key: str, actions, image_dir: Path) -> HOIRecord:
    _attr(entry, "filename", "")
    width, height = _mat_size(_attr(entry, "size", ""), "size")
    hois = []
    for h, hoi in enumerate(_items(_attr(entry, "hoi", ""))):
        where = f"hoi[{h}]"
        if _scalar(_attr(hoi, "invis", where + "."), where + ".invis") == 1:
            continue  # the annotators could not see this interaction: drop it, not an error
        action_id = _scalar(_attr(hoi, "id", where + "."), where + ".id")
        if not (action_id == int(action_id) and 1 <= action_id <= len(actions)):
            raise _Skip("unknown category", f"{where}.id", f"{action_id} is not in list_action (1..{len(actions)})")
        verb, obj = actions[int(action_id) - 1]
        humans = _items(_attr(hoi, "bboxhuman", where + "."))
        objects = _items(_attr(hoi, "bboxobject", where + "."))
        connection = np.asarray(_attr(hoi, "connection", where + "."), dtype=float).reshape(-1, 2)
        for c, (i, j) in enumerate(connection):
            if not (i == int(i) and j == int(j) and 1 <= i <= len(humans) and 1 <= j <= len(objects)):
                raise _Skip("bad value", f"{where}.connection[{c}]",
                            f"({i:g}, {j:g}) does not index {len(humans)} human / {len(objects)} object boxes")
            hois.append(RawHOI("person", verb, obj,
                               _mat_box(humans[int(i) - 1], width, height, f"{where}.bboxhuman[{int(i) - 1}]"),
                               _mat_box(objects[int(j) - 1], width, height, f"{where}.bboxobject[{int(j) - 1}]")))
    image_path = image_dir / key
    if not image_path.is_file():
        raise _Skip("missing image", "filename", f"image {image_path} not found")
    return HOIRecord(key, image_path, width, height, hois)


# ----------------------------------------------------------------------------- detector JSON

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def load_category_file(path) -> tuple[dict[int, str], dict[int, str]]:
    """Read a `categories.json`: {"objects": [{"id", "name"}], "verbs": [{"id", "name"}],
    "hoi_categories": [...]} -> (object_names, verb_names). `hoi_categories` is not
    needed to name phrases and is ignored here."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'objects' and 'verbs'")
    out = []
    for section in ("objects", "verbs"):
        entries = data.get(section)
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{path}: {section}: expected a non-empty list of {{id, name}}")
        names: dict[int, str] = {}
        for i, entry in enumerate(entries):
            ident, name = (entry.get("id"), entry.get("name")) if isinstance(entry, dict) else (None, None)
            if isinstance(ident, bool) or not isinstance(ident, int) or not isinstance(name, str) or not name.strip():
                raise DataError(f"{path}: {section}[{i}] = {entry!r}: expected {{\"id\": int, \"name\": str}}")
            if ident in names:
                raise DataError(f"{path}: {section}[{i}]: id {ident} appears twice")
            names[ident] = name
        out.append(names)
    return out[0], out[1]


def read_detector_json(json_path, image_dir, object_names: dict[int, str] | None = None,
                       verb_names: dict[int, str] | None = None,
                       max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION):
    """Read the detector JSON (`trainval_hico.json` / `test_hico.json` of QPIC, CDN, FGAHOI;
    also what the toy HOI world writes): a list of images with `file_name`, `annotations`
    [{bbox xyxy pixels, category_id}] and `hoi_annotation` [{subject_id, object_id,
    category_id = verb id}], the ids indexing `annotations`. Optional per image: `width`,
    `height` (else read from the image header) and `caption`.

    Names default to the HICO lists (COCO object ids, verbs 1..117); pass the lists of
    `load_category_file` for other data. The subject phrase is the subject annotation's
    category name, so subjects need not be people."""
    path = Path(json_path)
    object_names = OBJECT_NAMES if object_names is None else object_names
    verb_names = VERB_NAMES if verb_names is None else verb_names
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of images, got {type(data).__name__}")
    report = SkipReport(path.name)
    records = []
    for n, entry in enumerate(data):
        report.total += 1
        key = entry.get("file_name") if isinstance(entry, dict) else None
        key = key if isinstance(key, str) else f"entry {n}"
        try:
            records.append(_keep(_json_record(entry, Path(image_dir), object_names, verb_names)))
        except _Skip as skip:
            report.skip(key, skip.reason, skip.where, skip.problem)
    return _finish(records, report, max_skip_fraction)


def _json_record(entry, image_dir: Path, object_names, verb_names) -> HOIRecord:
    file_name = _get(entry, "file_name", "")
    if not isinstance(file_name, str) or not file_name:
        raise _Skip("bad value", "file_name", f"{file_name!r} is not a file name")
    annotations = _get(entry, "annotations", "")
    pairs = _get(entry, "hoi_annotation", "")
    for name, value in (("annotations", annotations), ("hoi_annotation", pairs)):
        if not isinstance(value, list):
            raise _Skip("bad value", name, f"expected a list, got {type(value).__name__}")
    caption = entry.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise _Skip("bad value", "caption", f"{caption!r} is not a string")
    image_path = image_dir / file_name
    if "width" in entry or "height" in entry:
        width = _positive_int(_get(entry, "width", ""), "width")
        height = _positive_int(_get(entry, "height", ""), "height")
        if not image_path.is_file():
            raise _Skip("missing image", "file_name", f"image {image_path} not found")
    else:
        width, height = _image_size(image_path, "file_name")

    def box_and_name(index, where):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(annotations):
            raise _Skip("bad value", where, f"{index!r} does not index the {len(annotations)} annotations")
        ann = annotations[index]
        category = _get(ann, "category_id", f"annotations[{index}].")
        if category not in object_names:
            raise _Skip("unknown category", f"annotations[{index}].category_id", f"{category!r} is not a known object")
        box = _pixel_box(_get(ann, "bbox", f"annotations[{index}]."), width, height, f"annotations[{index}].bbox")
        return box, phrase(object_names[category])

    hois = []
    for h, pair in enumerate(pairs):
        where = f"hoi_annotation[{h}]."
        subject_box, subject = box_and_name(_get(pair, "subject_id", where), where + "subject_id")
        object_box, obj = box_and_name(_get(pair, "object_id", where), where + "object_id")
        verb = _get(pair, "category_id", where)
        if verb not in verb_names:
            raise _Skip("unknown category", where + "category_id", f"{verb!r} is not a known verb")
        hois.append(RawHOI(subject, phrase(verb_names[verb]), obj, subject_box, object_box))
    return HOIRecord(file_name, image_path, width, height, hois, caption)


# ----------------------------------------------------------------------------- per-image torch files

def data_file_globals() -> list:
    """What the reference trainer's per-image torch files hold besides tensors and plain data:
    PIL images (of every format PIL opens; a pickled image is its mode, size and pixel bytes) and
    numpy arrays."""
    from PIL import Image, ImageFile
    Image.init()  # imports every format plugin, so every image class is a subclass below
    classes, todo = [], [ImageFile.ImageFile]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    return [Image.Image] + classes + numpy_globals()


def load_data_file(path: Path, allow_pickle: bool = False):
    """One per-image torch file (see read_torch_files). DataError for a file that asks for other
    objects; UnreadablePickle for a damaged one."""
    try:
        return load_torch(path, data_file_globals(), allow_pickle)
    except RefusedPickle as err:
        raise DataError(f"{path}: {err}: if you trust where the data came from, pass --allow-pickle") from None


def read_torch_files(folder, max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION, inline_images: bool = True,
                     allow_pickle: bool = False):
    """Read the reference trainer's per-image torch files (`*.pth`, `*.pt`, sorted by name):
    each a dict with `image` (PIL), `caption` and `hois` [{subject_xywh, object_xywh (pixels),
    subject, object, action, + precomputed embeddings, ignored}]. The key is the dict's
    `file_name` if it has one, else the file's name without its suffix ("a.jpg.pth" -> "a.jpg").

    These files are pickles. They are read with torch's weights-only unpickler, which rebuilds
    tensors, plain data, numpy arrays and PIL images (DATA_FILE_GLOBALS) and nothing else: a file
    asking for any other object stops the read (DataError) unless `allow_pickle` (the user trusts
    the files: `--allow-pickle`).

    The image is kept inline (`HOIRecord.image`). With `inline_images=False` the record
    points at the torch file instead (`image_path`) and the dataset loads the image from it
    when needed, which keeps a large set out of memory."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of per-image torch files")
    files = sorted(p for p in folder.iterdir() if p.suffix in TORCH_SUFFIXES)
    report = SkipReport(folder.name)
    records = []
    for file in files:
        report.total += 1
        try:
            try:
                data = load_data_file(file, allow_pickle)
            except UnreadablePickle as err:
                raise _Skip("unreadable file", "file", f"cannot be loaded ({err})") from None
            if not isinstance(data, dict):
                raise _Skip("bad value", "file", f"expected a dict, got {type(data).__name__}")
            image = _get(data, "image", "")
            if not isinstance(image, Image.Image):
                raise _Skip("bad value", "image", f"expected a PIL image, got {type(image).__name__}")
            key = data.get("file_name", file.stem)
            records.append(_keep(_torch_record(data, str(key), image, file, inline_images)))
        except _Skip as skip:
            report.skip(file.name, skip.reason, skip.where, skip.problem)
    return _finish(records, report, max_skip_fraction)


def _torch_record(data: dict, key: str, image, file: Path, inline: bool) -> HOIRecord:
    width, height = image.size
    caption = data.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise _Skip("bad value", "caption", f"{caption!r} is not a string")
    items = _get(data, "hois", "")
    if not isinstance(items, list):
        raise _Skip("bad value", "hois", f"expected a list, got {type(items).__name__}")
    hois = []
    for h, item in enumerate(items):
        where = f"hois[{h}]."
        names = {}
        for name in ("subject", "action", "object"):
            value = _get(item, name, where)
            if not isinstance(value, str) or not phrase(value):
                raise _Skip("bad value", where + name, f"{value!r} is not a phrase")
            names[name] = phrase(value)
        boxes = []
        for name in ("subject_xywh", "object_xywh"):
            xywh = _get(item, name, where)
            try:
                x, y, w, h_ = (float(v) for v in xywh)
            except (TypeError, ValueError):
                raise _Skip("bad box", where + name, f"{xywh!r} is not 4 numbers") from None
            boxes.append(_pixel_box((x, y, x + w, y + h_), width, height, where + name))
        hois.append(RawHOI(names["subject"], names["action"], names["object"], boxes[0], boxes[1]))
    if inline:
        return HOIRecord(key, None, width, height, hois, caption, image=image)
    return HOIRecord(key, file, width, height, hois, caption)
