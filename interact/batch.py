"""Batch generation from a layouts file: reading records, guarding the output folder,
writing image + overlay + JSON sidecar per record. `inference_batch.py` is its CLI.

Everything that can be checked is checked before anything is written: every record (each
control's fields before the model is loaded, what the loaded model's controls take and text
lengths after), the seed range, the sampling options, the output folder and the grid file.

Existing outputs (record i: 0000i.png, 0000i_layout.png, then 0000i.json, written last):
- neither flag: any existing output stops the run before anything is written;
- `overwrite`: every record is generated again;
- `no_overwrite` (resume): no existing file is replaced. A record is done when its sidecar
  exists, matches this run (prompt, layout, seed, sampling options, checkpoint and LoRA; not the
  device) and its two images exist; done records are skipped. Records without outputs are
  generated. Any other record with outputs is left as it is and reported, one warning each:
  `redo_interrupted` generates again the ones a killed run left without a sidecar, `overwrite`
  redoes every record.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, NamedTuple

from omegaconf import OmegaConf
from tqdm import tqdm

from hoi.io import atomic_write, remove_stale_temporaries
from hoi.pickles import RefusedPickle, UnreadablePickle, load_plain_pickle
from hoi.records import ConditionError, check_text
from hoi.schema import check_options, option
from interact.controls import CONTROLS, parse_record, record_keys, unknown_record_keys
from interact.model import EMBEDDED_CKPT, EMBEDDED_CONFIG, REPO_ROOT, InteractionOptions
from interact.sampling import SamplingOptions

DEFAULT_INPUT = REPO_ROOT / "examples" / "layouts.json"
# The embedded default: the toy InteractDiffusion model (scripts/train_toy.sh), which draws
# toy-world scenes, and layouts in its vocabulary.
DEFAULT_CKPT, DEFAULT_CONFIG = EMBEDDED_CKPT, EMBEDDED_CONFIG
DEFAULT_TOY_INPUT = REPO_ROOT / "examples" / "toy_layouts.json"

# What torch.Generator.manual_seed accepts; record i uses seed + i, so all of them must fit.
SEED_MIN, SEED_MAX = -2**63, 2**64 - 1


class BatchError(Exception):
    """A user-facing error of a batch run: one line naming the file, record and field."""


def is_device_name(value: str) -> bool:
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None


@dataclass
class BatchOptions:
    """One batch run: the single source of its options' defaults, types, ranges and help
    (the sampling options are SamplingOptions'). An empty path means "not given"."""
    ckpt: str = option("", "InteractDiffusion checkpoint (all sections), or the interaction weights when "
                           "--sd_ckpt is given; neither: the embedded toy model")
    sd_ckpt: str = option("", "Stable Diffusion v1.x .ckpt/.safetensors for the backbone")
    text_encoder: str = option("", "Hugging Face CLIP text model folder (config.json + weights, tokenizer "
                                   "files beside or in ../tokenizer)")
    config: str = option("", "model YAML with its sampling defaults (empty: configs/sd_v1_interact.yaml with a "
                             "checkpoint; without one, the embedded toy model, or random weights of --config)")
    allow_pickle: bool = option(False, "unpickle arbitrary objects (trusted files only)", flags=("--allow-pickle",))
    input: str = option("", "layouts: .json (a list of records), .jsonl or .pkl (empty: examples/toy_layouts.json "
                            "for the embedded toy model, else examples/layouts.json)")
    folder: str = option("outputs/generated", "output folder")
    grid: str = option("", "also write one PNG with every record's image and overlay (e.g. out/grid.png)")
    overwrite: bool = option(False, "replace outputs (and the grid) that already exist")
    no_overwrite: bool = option(False, "resume: skip records whose sidecar matches this run; never replace a "
                                       "file (other existing outputs are reported and left)",
                                flags=("--no-overwrite",))
    redo_interrupted: bool = option(False, "with --no-overwrite: also generate again the records a killed run left "
                                           "unfinished (an image or overlay but no sidecar), replacing those files",
                                    flags=("--redo-interrupted",))
    batch_size: int = option(1, "records per forward pass; images do not depend on it",
                             check=lambda v: v >= 1, rule=">= 1")
    seed: int = option(0, "record i uses seed + i", check=lambda v: SEED_MIN <= v <= SEED_MAX,
                       rule=f"in [{SEED_MIN}, {SEED_MAX}], what torch.Generator.manual_seed accepts")
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", check=is_device_name,
                         rule="auto, cpu, mps, cuda or cuda:N")
    half: bool = option(False, "fp16 weights and activations (CUDA only)")
    interaction: dict = option({}, "overrides of the config's interaction section (InteractionOptions)",
                               cli=False)
    lora: list = option([], "LoRA files for the base, FILE[:weight] (interact/checkpoint/lora.py)", cli=False)

    @property
    def uses_embedded_default(self) -> bool:
        return not self.ckpt and not self.sd_ckpt


def batch_options(values: dict, where: str = "options") -> BatchOptions:
    """`values` over BatchOptions' defaults, checked; ValueError naming `where.key` otherwise."""
    options = OmegaConf.to_object(check_options(BatchOptions, values, where))
    if options.overwrite and options.no_overwrite:
        raise ValueError("--overwrite and --no-overwrite exclude each other")
    if options.redo_interrupted and not options.no_overwrite:
        raise ValueError("--redo-interrupted goes with --no-overwrite (it finishes what a killed run left; "
                         "--overwrite redoes every record)")
    check_options(InteractionOptions, options.interaction, f"{where}.interaction")
    from interact.checkpoint.lora import parse_lora
    for item in options.lora:
        parse_lora(item, must_exist=True)  # a bad weight or a missing file is a ValueError naming it
    return options


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- reading layouts
def _plain(value):
    """numpy arrays / scalars -> lists / floats so records are JSON-like."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a leading BOM (some editors write one) is dropped
    except UnicodeDecodeError as err:
        raise BatchError(f"--input {path}: cannot be parsed: not UTF-8 text (byte {err.object[err.start]:#04x} at "
                         f"offset {err.start}); expected .json, .jsonl or .pkl layouts") from None


def read_layouts(path, allow_pickle: bool = False) -> list[dict]:
    """A .json list (or one record), a .jsonl file, or a pickle of such dicts (containers,
    numbers, strings and numpy arrays only, unless `allow_pickle`: see hoi/pickles.py)."""
    path = Path(path)
    if path.is_dir():
        raise BatchError(f"--input {path}: is a folder; give a layouts file (.json, .jsonl or .pkl)")
    if not path.is_file():
        raise BatchError(f"--input {path}: no such file")
    if path.suffix in (".pkl", ".pickle"):
        try:
            data = load_plain_pickle(path, allow_pickle)
        except RefusedPickle as err:
            raise BatchError(f"--input {path}: {err}; a layouts pickle holds lists, dicts, strings and numbers (pass "
                             f"--allow-pickle only if you trust the file)") from None
        except UnreadablePickle as err:
            raise BatchError(f"--input {path}: cannot be parsed: {err}") from None
    elif path.suffix == ".jsonl":
        data = []
        for number, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BatchError(f"--input {path}: line {number}: cannot be parsed: {err.msg} "
                                 f"(column {err.colno})") from None
    else:
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as err:
            raise BatchError(f"--input {path}: cannot be parsed: {err}") from None
    data = _plain(data)
    records = [data] if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise BatchError(f"--input {path}: expected a non-empty list of layout records")
    return records


class ParsedRecord(NamedTuple):
    record: dict                 # as in the layouts file
    layout: dict[str, list]      # its items by control (interact/controls/)


def parse_records(records: list[dict], source: str, base_dir: Path | None = None) -> list[ParsedRecord]:
    """Validate every record up front, each control its own keys. Keys nothing reads (a
    per-record seed, a typo) are reported, not used. Mask paths are relative to `base_dir`."""
    parsed = []
    keys = ", ".join(record_keys())
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        try:
            layout = parse_record(record, where, None if base_dir is None else str(base_dir))
            check_text(record.get("prompt"), f"{where}: prompt")
        except ConditionError as err:
            raise BatchError(str(err)) from None
        for key in unknown_record_keys(record):
            warn(f"{where}: key {key!r} is ignored (a record has {keys}; seed and sampling options are set for the "
                 f"whole run)")
        parsed.append(ParsedRecord(record, layout))
    return parsed


def precheck_records(parsed: list[ParsedRecord], source: str, image_size: tuple[int, int]) -> None:
    """What each control checks at the image size before any model work (segments' masks)."""
    for i, (_, layout) in enumerate(parsed):
        for name, items in layout.items():
            try:
                CONTROLS[name].precheck(items, f"{source}: record {i}", image_size)
            except ConditionError as err:
                raise BatchError(str(err)) from None


def check_seed_range(seed: int, count: int) -> None:
    last = seed + count - 1
    if last > SEED_MAX:
        raise BatchError(f"--seed {seed}: record {count - 1} would use seed {last}, above {SEED_MAX} (the largest "
                         f"seed torch.Generator accepts); use a seed <= {SEED_MAX - count + 1}")


def check_against_model(parsed: list[ParsedRecord], model, source: str, negative_prompt: str,
                        image_size: tuple[int, int], plain_sd: bool = False) -> None:
    """Every record against the loaded model, before anything is written: what its controls
    take (interactions or phrases, how many; segments' phrases found in the prompt by the
    model's tokenizer) (errors), and texts longer than the text encoder reads (a warning: they
    are cut). `plain_sd`: the model has no layout control (an SD file alone), said once."""
    for i, (record, layout) in enumerate(parsed):
        if plain_sd:
            layout = {k: v for k, v in layout.items() if not CONTROLS[k].trained}
        try:
            model.check_controls(layout, f"{source}: record {i}", record["prompt"], image_size)
        except ConditionError as err:
            raise BatchError(str(err)) from None
    if plain_sd:
        laid_out = sum(1 for _, layout in parsed if any(items and CONTROLS[k].trained for k, items in layout.items()))
        if laid_out:
            warn(f"{source}: {laid_out} record(s) have interactions or phrases, which plain Stable Diffusion (an SD "
                 f"file alone, no --ckpt) does not use: their overlays show the requested layout, not a control")
    encoder = model.text_encoder
    tokenizer, max_tokens = encoder.tokenizer, encoder.max_length

    def too_long(text: str) -> int | None:
        count = len(tokenizer.tokenize(text)) + 2  # with BOS and EOS
        return count if count > max_tokens else None

    cut = f"the text encoder reads {max_tokens} tokens (start and end included), the rest is cut"
    count = too_long(negative_prompt)
    if count:
        warn(f"negative_prompt: {count} tokens; {cut}")
    for i, (record, layout) in enumerate(parsed):
        fields = [("prompt", record["prompt"])] + [f for name, items in layout.items()
                                                    for f in CONTROLS[name].texts(record, items)]
        for name, text in fields:
            count = too_long(text)
            if count:
                warn(f"{source}: record {i}: {name}: {count} tokens; {cut}")


# ----------------------------------------------------------------------------- outputs
def output_paths(folder: Path, index: int) -> dict[str, Path]:
    stem = f"{index:05d}"
    return {"image": folder / f"{stem}.png", "layout": folder / f"{stem}_layout.png",
            "sidecar": folder / f"{stem}.json"}


def check_writable_folder(folder: Path, label: str) -> None:
    """`folder` is, or can be made, a folder we can write in: found before any model work."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():  # exists() is False for a link to nowhere or a loop of links
            raise BatchError(f"{label} {folder}: {existing} is a symbolic link that leads nowhere (a missing "
                             f"target or a loop of links)")
        existing = existing.parent
    if existing == folder and not folder.is_dir():
        raise BatchError(f"{label} {folder}: is a file, not a folder")
    if not existing.is_dir():
        raise BatchError(f"{label} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise BatchError(f"{label} {folder}: cannot write in {existing} ({err.strerror})") from None


def check_grid_path(grid: Path, overwrite: bool, no_overwrite: bool) -> None:
    if grid.is_dir():
        raise BatchError(f"--grid {grid}: is a folder; give a file name such as {grid / 'grid.png'}")
    if grid.exists() and not overwrite:
        if no_overwrite:
            raise BatchError(f"--grid {grid}: already exists, and --no-overwrite never replaces a file; give another "
                             f"--grid path or remove that file")
        raise BatchError(f"--grid {grid}: already exists; pass --overwrite to replace it")
    check_writable_folder(grid.parent, f"--grid {grid}: folder")


def check_no_collision(folder: Path, count: int, source: Path, grid: Path | None) -> None:
    """Neither the layouts file nor the grid is one of the files the records are written to (the
    grid would replace a record's image, a sidecar would replace the layouts), nor the grid the
    layouts file."""
    def key(path: Path) -> Path:
        return path.resolve(strict=False)
    outputs = {key(path): (i, kind) for i in range(count) for kind, path in output_paths(folder, i).items()}
    for flag, path in (("--input", source), ("--grid", grid)):
        if path is not None and key(path) in outputs:
            i, kind = outputs[key(path)]
            raise BatchError(f"{flag} {path}: is where record {i}'s {kind} is written in --folder {folder}; give "
                             f"another {'--grid path' if flag == '--grid' else '--folder or move the layouts file'}")
    if grid is not None and key(grid) == key(source):
        raise BatchError(f"--grid {grid}: is the --input layouts file; give another --grid path")


SIDECAR_UNCOMPARED = ("model", "device", "dtype")  # recorded; a resume does not require them equal


def sidecar(index: int, parsed: ParsedRecord, seed: int, sampling: dict, checkpoint: dict,
            model: str | None = None, device: str | None = None, dtype: str | None = None) -> dict:
    """A record's JSON sidecar (each control writes its own fields); without model/device/dtype,
    the part a resume compares."""
    record, layout = parsed
    out = {"record": index, "prompt": record["prompt"]}
    for name, items in layout.items():
        out.update(CONTROLS[name].sidecar(record, items))
    out.update(seed=seed, **sampling)
    if model is not None:
        out["model"] = model
    out["checkpoint"] = checkpoint
    if device is not None:
        out.update(device=device, dtype=dtype)
    return out


class RecordState(NamedTuple):
    """What a folder holds of one record: "new" (no outputs), "done" (its sidecar, written last,
    matches the run and its images exist), "interrupted" (outputs but no sidecar: a killed run)
    or "other" (outputs of another run, or not ours); `reason` says why for the last two."""
    kind: str
    reason: str = ""


def record_state(folder: Path, index: int, expected: Callable[[], dict]) -> RecordState:
    paths = output_paths(folder, index)
    present = [p for p in paths.values() if p.exists()]
    if not present:
        return RecordState("new")
    if not paths["sidecar"].exists():
        return RecordState("interrupted", f"has {', '.join(p.name for p in present)} but no "
                                          f"{paths['sidecar'].name} (an interrupted run?)")
    try:
        written = json.loads(paths["sidecar"].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return RecordState("other", f"{paths['sidecar'].name} cannot be read")
    if not isinstance(written, dict):
        return RecordState("other", f"{paths['sidecar'].name} is not a sidecar")
    settings = {"seed", *(f.name for f in fields(SamplingOptions))}
    expected_fields = expected()
    for key in dict.fromkeys([*expected_fields, *written]):   # a field only one side has differs too
        value = expected_fields.get(key)
        if key in SIDECAR_UNCOMPARED or written.get(key) == value:
            continue
        if key == "checkpoint":
            return RecordState("other", f"{paths['sidecar'].name} was made by another model (or LoRA)")
        if key in settings:
            return RecordState("other", f"{paths['sidecar'].name} was made with {key} = {written.get(key)!r}, this "
                                        f"run uses {value!r}")
        return RecordState("other", f"{paths['sidecar'].name} was made from another layout ({key} differs)")
    missing = [p.name for p in (paths["image"], paths["layout"]) if not p.exists()]
    if missing:
        return RecordState("interrupted", f"{', '.join(missing)} missing beside its sidecar")
    return RecordState("done")


MAX_REPORTED = 10  # records left by --no-overwrite named one by one; the rest are counted


def plan_outputs(folder: Path, count: int, overwrite: bool, no_overwrite: bool,
                 expected: Callable[[int], dict], redo_interrupted: bool = False) -> list[int]:
    """Indices to generate under the overwrite policy of the module docstring."""
    if overwrite:
        return list(range(count))
    if not no_overwrite:
        existing = [i for i in range(count) if any(p.exists() for p in output_paths(folder, i).values())]
        if existing:
            first = next(p for p in output_paths(folder, existing[0]).values() if p.exists())
            raise BatchError(f"--folder {folder}: {len(existing)} record(s) already have outputs (e.g. {first}); "
                             f"pass --no-overwrite to skip them or --overwrite to replace them")
        return list(range(count))
    todo, done, left = [], 0, 0
    for i in range(count):
        state = record_state(folder, i, lambda: expected(i))
        if state.kind == "new" or (state.kind == "interrupted" and redo_interrupted):
            todo.append(i)
        elif state.kind == "done":
            done += 1
        else:
            left += 1
            if left <= MAX_REPORTED:
                hint = ("pass --redo-interrupted to finish it" if state.kind == "interrupted" else
                        "pass --overwrite to redo every record, or move its files away")
                warn(f"--no-overwrite: record {i} left as it is: {state.reason}; {hint}")
    if left > MAX_REPORTED:
        warn(f"--no-overwrite: {left - MAX_REPORTED} more record(s) left as they are")
    if done or left:
        print(f"--no-overwrite: {done} record(s) done, {left} left as they are, {len(todo)} to generate",
              file=sys.stderr)
    return todo


# ----------------------------------------------------------------------------- the model
def _path(value: str) -> Path | None:
    return Path(value) if value else None


def model_config_path(options: BatchOptions) -> Path:
    """The config the model is built from (and whose sampling section gives the defaults)."""
    if options.config:
        return Path(options.config)
    if options.uses_embedded_default:
        return DEFAULT_CONFIG
    # a GLIGEN file gets GLIGEN's config (its tokenizer, its sampling defaults)
    from interact.checkpoint.diffusers_folder import generation_config
    return generation_config(options.ckpt or None, options.allow_pickle)


def load_pipeline(ckpt: Path | None = None, sd_ckpt: Path | None = None, config: Path | None = None,
                  text_encoder: Path | None = None, device: str = "auto", half: bool = False,
                  allow_pickle: bool = False, interaction: dict | None = None, lora: list[str] | None = None):
    """The pipeline for these files. Neither `ckpt` nor `sd_ckpt`: the embedded toy model, or
    with `config` random weights of that config. `interaction`: overrides of its switches;
    `lora`: FILE[:weight] merged into the base (any model, the embedded one too)."""
    from interact.pipeline import InteractDiffusionPipeline
    if ckpt is None and sd_ckpt is None:
        if config is not None:
            print(f"No --ckpt given: a RANDOMLY INITIALISED model of {config} (noise-like images; for "
                  f"tests and timing).", file=sys.stderr)
            return InteractDiffusionPipeline.from_config(config, seed=0, device=device, half=half,
                                                         interaction=interaction, lora=lora)
        print(f"No --ckpt given: using the embedded default, the toy InteractDiffusion model ({DEFAULT_CKPT.name}, "
              f"trained on the toy HOI world: persons and robots with balls, boxes and kites, 32x32). Pass --ckpt "
              f"(and --sd_ckpt) for a Stable Diffusion model.", file=sys.stderr)
        return InteractDiffusionPipeline.from_checkpoint(DEFAULT_CKPT, config=DEFAULT_CONFIG, device=device,
                                                         half=half, interaction=interaction, lora=lora)
    print(f"loading weights: {' + '.join(str(p) for p in (sd_ckpt, ckpt) if p)}", file=sys.stderr)
    return InteractDiffusionPipeline.from_checkpoint(ckpt, sd_ckpt, config, text_encoder, device, half, allow_pickle,
                                                     interaction, lora=lora)


def checkpoint_ids(ckpt: Path | None, sd_ckpt: Path | None, config: Path | None, lora: list[str] = ()) -> dict:
    """What identifies the weights in a sidecar (content digests of the files, and of each LoRA
    with its weight: a resume with another LoRA or weight is another model)."""
    from hoi.io import file_digest
    from interact.checkpoint.lora import parse_lora
    if ckpt is None and sd_ckpt is None:
        ids = ({"embedded_default": str(config), "weights": "random (seed 0)"} if config is not None else
               {"embedded_default": str(DEFAULT_CKPT.relative_to(REPO_ROOT)), "sha256_12": file_digest(DEFAULT_CKPT)})
    else:
        ids = {label: {"path": str(path), "sha256_12": file_digest(path)}
               for label, path in (("ckpt", ckpt), ("sd_ckpt", sd_ckpt)) if path is not None}
    specs = [parse_lora(item) for item in lora]
    if specs:
        ids["lora"] = [{"path": str(s.path), "sha256_12": file_digest(s.path), "weight": s.weight} for s in specs]
    return ids


def write_outputs(paths: dict[str, Path], image, layout, content: dict) -> None:
    """A record's image, overlay and then its sidecar (its presence marks the record finished),
    each written atomically; BatchError naming the file when the disk refuses (full, a size limit)."""
    writes = [(paths["image"], lambda p: image.save(p, format="PNG")),
              (paths["layout"], lambda p: layout.save(p, format="PNG")),
              (paths["sidecar"], lambda p: p.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8"))]
    for path, write in writes:
        try:
            atomic_write(path, write)
        except OSError as err:
            raise BatchError(f"--folder {path.parent}: cannot write {path.name} ({err.strerror or err}); the record "
                             f"is left unfinished (no sidecar): free space, then rerun with --no-overwrite "
                             f"--redo-interrupted") from None


# ----------------------------------------------------------------------------- the run
def run_batch(options: BatchOptions, sampling: dict | None = None) -> list[Path]:
    """Generate every pending record; returns the image paths written. `options`: from
    batch_options (checked); `sampling`: SamplingOptions values given for this run (the
    model config's sampling section, then SamplingOptions' defaults, fill the rest)."""
    from interact.checkpoint import CheckpointError
    from interact.model import load_config
    import torch

    from interact.pipeline import draw_layout
    from interact.sampling import resolve_sampling, sampling_defaults

    ckpt, sd_ckpt, config = _path(options.ckpt), _path(options.sd_ckpt), _path(options.config)
    source = _path(options.input) or (DEFAULT_TOY_INPUT if options.uses_embedded_default and config is None
                                      else DEFAULT_INPUT)
    parsed = parse_records(read_layouts(source, options.allow_pickle), str(source), Path(source).parent)
    check_seed_range(options.seed, len(parsed))
    try:
        requested = asdict(resolve_sampling(sampling_defaults(load_config(model_config_path(options))),
                                            **(sampling or {})))
        check_text(requested["negative_prompt"], "--negative_prompt")
    except (FileNotFoundError, ValueError) as err:
        raise BatchError(str(err)) from None
    image_size = (requested["height"], requested["width"])
    precheck_records(parsed, str(source), image_size)
    unused = sorted(k for k in sampling or {} if k.startswith("dense_"))
    if unused and not any(layout.get("segments") for _, layout in parsed):
        warn(f"{', '.join('--' + k for k in unused)}: no record of {source} has segments, which these flags act on "
             f"(DenseDiffusion); they are not used")
    folder = Path(options.folder)
    check_writable_folder(folder, "--folder")
    grid = _path(options.grid)
    if grid is not None:
        check_grid_path(grid, options.overwrite, options.no_overwrite)
    check_no_collision(folder, len(parsed), source, grid)

    ids_cache: list[dict] = []

    def ids() -> dict:  # digests of multi-GB files: only when a sidecar needs them
        if not ids_cache:
            ids_cache.append(checkpoint_ids(ckpt, sd_ckpt, config, options.lora))
        return ids_cache[0]

    def record_seed(i: int) -> int:
        # reference_compat: one generator seeded once for the run; record i's noise is its i-th draw
        return options.seed if requested["reference_compat"] else options.seed + i

    def expected(i: int) -> dict:
        return sidecar(i, parsed[i], record_seed(i), requested, ids())

    todo = plan_outputs(folder, len(parsed), options.overwrite, options.no_overwrite, expected,
                        options.redo_interrupted)
    if not todo:
        print(f"nothing to do: no record of {len(parsed)} left to generate in {folder}", file=sys.stderr)
        if grid is not None:
            write_grid(folder, len(parsed), grid)
            print(f"wrote {grid}", file=sys.stderr)
        return []
    try:
        pipe = load_pipeline(ckpt, sd_ckpt, config, _path(options.text_encoder), options.device, options.half,
                             options.allow_pickle, options.interaction, options.lora)
        # Checked once against the real model, before the first batch.
        resolved = pipe.check_call_options(**requested)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise BatchError(str(err)) from None
    check_against_model(parsed, pipe.model, str(source), resolved["negative_prompt"], image_size, pipe.plain_sd)
    written = []
    # The reference script seeds one generator once and draws every record's noise from it in turn
    # (records already done are skipped before drawing, as its --no-overwrite does).
    generator = torch.Generator(pipe.device).manual_seed(options.seed) if resolved["reference_compat"] else None
    remove_stale_temporaries(folder)  # what a killed run's writes left
    with tqdm(total=len(todo), desc="records", unit="img") as bar:  # closed (its line ended) on an error too
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start:start + options.batch_size]
            layouts = [parsed[i].layout for i in chunk]
            names = dict.fromkeys(k for layout in layouts for k in layout)
            seeds = [record_seed(i) for i in chunk]
            images = pipe([parsed[i].record["prompt"] for i in chunk], seed=seeds, generator=generator,
                          controls={k: [layout.get(k, []) for layout in layouts] for k in names}, **resolved)
            for i, image, seed in zip(chunk, images, seeds):
                content = sidecar(i, parsed[i], seed, resolved, ids(), model=pipe.source, device=str(pipe.device),
                                  dtype=str(pipe.dtype).replace("torch.", ""))
                paths = output_paths(folder, i)
                write_outputs(paths, image, draw_layout(image, parsed[i].layout), content)
                written.append(paths["image"])
            bar.update(len(chunk))
    print(f"wrote {len(written)} image(s), overlays and sidecars to {folder}", file=sys.stderr)
    if grid is not None:
        write_grid(folder, len(parsed), grid)
        print(f"wrote {grid}: image | layout overlay per record, three records to a row", file=sys.stderr)
    return written


def write_grid(folder: Path, count: int, out, pairs_per_row: int = 3) -> Path:
    """Each record as image | layout overlay (the image upscaled to its overlay's size), that pair
    `pairs_per_row` times to a row, records in order."""
    from PIL import Image
    tiles = []
    for i in range(count):
        paths = output_paths(folder, i)
        if not (paths["image"].is_file() and paths["layout"].is_file()):
            continue
        with Image.open(paths["layout"]) as layout:
            layout = layout.convert("RGB")
        with Image.open(paths["image"]) as image:
            image = image.convert("RGB").resize(layout.size, Image.NEAREST)
        tile = Image.new("RGB", (image.width + layout.width, image.height), (255, 255, 255))
        tile.paste(image, (0, 0))
        tile.paste(layout, (image.width, 0))
        tiles.append(tile)
    if not tiles:
        raise BatchError(f"--grid: no finished records in {folder}")
    from hoi.grid import image_grid
    canvas = image_grid(tiles, columns=min(pairs_per_row, len(tiles)))
    out = Path(out)
    try:
        atomic_write(out, lambda p: canvas.save(p, format="PNG"))
    except OSError as err:
        raise BatchError(f"--grid {out}: cannot write it ({err.strerror or err}); the records are finished: rerun "
                         f"with --no-overwrite to write the grid alone") from None
    return out
