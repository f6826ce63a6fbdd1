"""Batch generation from a layouts file: reading records, guarding the output folder,
writing image + overlay + JSON sidecar per record. `inference_batch.py` is its CLI.

Every record is validated and every output path checked before any model work, so
a bad record or an existing file fails fast and nothing already written is lost.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from tqdm import tqdm

from hoi.io import atomic_write
from hoi.records import ConditionError, interactions_from_record
from interact.model import CONFIG_DIR, REPO_ROOT

DEFAULT_INPUT = REPO_ROOT / "examples" / "layouts.json"
# The embedded default: the toy InteractDiffusion model (scripts/train_toy.sh), which draws
# toy-world scenes, and layouts in its vocabulary.
DEFAULT_CKPT = REPO_ROOT / "assets" / "toy_interactdiffusion.pth"
DEFAULT_CONFIG = CONFIG_DIR / "toy_hoi.yaml"
DEFAULT_TOY_INPUT = REPO_ROOT / "examples" / "toy_layouts.json"


def uses_embedded_default(args) -> bool:
    return args.ckpt is None and args.sd_ckpt is None


class BatchError(Exception):
    """A user-facing error of a batch run: one line naming the file, record and field."""


class _LayoutUnpickler(pickle.Unpickler):
    """Layouts pickles hold plain containers and numbers (maybe numpy arrays): nothing else is
    allowed, so a hostile pickle cannot run code."""
    ALLOWED = {"builtins", "collections", "copyreg", "_codecs", "numpy", "numpy.core.multiarray",
               "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}

    def find_class(self, module, name):
        if module in self.ALLOWED and not (module == "builtins" and name in {"eval", "exec", "open", "__import__"}):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a layouts pickle")


def _plain(value):
    """numpy arrays / scalars -> lists / floats so records are JSON-like."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_layouts(path) -> list[dict]:
    """A .json list (or one record), a .jsonl file, or a pickle of such dicts."""
    path = Path(path)
    if not path.is_file():
        raise BatchError(f"--input {path}: no such file")
    try:
        if path.suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                data = _LayoutUnpickler(f).load()
        elif path.suffix == ".jsonl":
            data = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text())
    except (json.JSONDecodeError, pickle.UnpicklingError, EOFError) as err:
        raise BatchError(f"--input {path}: cannot be parsed: {err}") from None
    data = _plain(data)
    records = [data] if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise BatchError(f"--input {path}: expected a non-empty list of layout records")
    return records


def parse_records(records: list[dict], source: str) -> list[tuple[dict, list]]:
    """Validate every record up front; returns (record, interactions) pairs."""
    parsed = []
    for i, record in enumerate(records):
        where = f"{source}: record {i}"
        try:
            interactions = interactions_from_record(record, where)
        except ConditionError as err:
            raise BatchError(str(err)) from None
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise BatchError(f"{where}: prompt = {prompt!r}: must be a string")
        parsed.append((record, interactions))
    return parsed


def output_paths(folder: Path, index: int) -> dict[str, Path]:
    stem = f"{index:05d}"
    return {"image": folder / f"{stem}.png", "layout": folder / f"{stem}_layout.png",
            "sidecar": folder / f"{stem}.json"}


def plan_outputs(folder: Path, count: int, overwrite: bool, skip_existing: bool) -> list[int]:
    """Indices to generate. Existing outputs are an error unless --overwrite or --no-overwrite."""
    todo, existing = [], []
    for i in range(count):
        if any(p.exists() for p in output_paths(folder, i).values()):
            existing.append(i)
            if skip_existing:
                continue
        todo.append(i)
    if existing and not (overwrite or skip_existing):
        first = next(p for p in output_paths(folder, existing[0]).values() if p.exists())
        raise BatchError(f"--folder {folder}: {len(existing)} record(s) already have outputs (e.g. {first}); "
                         f"pass --no-overwrite to skip them or --overwrite to replace them")
    return todo


def load_pipeline(args):
    from interact.pipeline import InteractDiffusionPipeline
    from interact.model import interaction_switches
    interaction = {key: getattr(args, key, None) for key in interaction_switches()}
    if uses_embedded_default(args):
        if args.config is not None:
            print(f"No --ckpt given: a RANDOMLY INITIALISED model of {args.config} (noise-like images; for "
                  f"tests and timing).", file=sys.stderr)
            return InteractDiffusionPipeline.from_config(args.config, seed=0, device=args.device, half=args.half,
                                                         interaction=interaction)
        print(f"No --ckpt given: using the embedded default, the toy InteractDiffusion model ({DEFAULT_CKPT.name}, "
              f"trained on the toy HOI world: persons and robots with balls, boxes and kites, 32x32). Pass --ckpt "
              f"(and --sd_ckpt) for a Stable Diffusion model.", file=sys.stderr)
        return InteractDiffusionPipeline.from_checkpoint(DEFAULT_CKPT, config=DEFAULT_CONFIG, device=args.device,
                                                         half=args.half, interaction=interaction)
    print(f"loading weights: {' + '.join(p for p in (args.sd_ckpt, args.ckpt) if p)}", file=sys.stderr)
    return InteractDiffusionPipeline.from_checkpoint(args.ckpt, args.sd_ckpt, args.config, args.text_encoder,
                                                     args.device, args.half, args.allow_pickle, interaction)


def checkpoint_ids(args) -> dict:
    from hoi.io import file_digest
    if uses_embedded_default(args):
        if args.config is not None:
            return {"embedded_default": str(args.config), "weights": "random (seed 0)"}
        return {"embedded_default": str(DEFAULT_CKPT.relative_to(REPO_ROOT)), "sha256_12": file_digest(DEFAULT_CKPT)}
    out = {}
    for label in ("ckpt", "sd_ckpt"):
        path = getattr(args, label)
        if path is not None:
            out[label] = {"path": str(path), "sha256_12": file_digest(path)}
    return out


def run_batch(args) -> list[Path]:
    """Generate every pending record; returns the image paths written."""
    from interact.checkpoint import CheckpointError
    from interact.pipeline import draw_layout

    source = args.input or (DEFAULT_TOY_INPUT if uses_embedded_default(args) and args.config is None else DEFAULT_INPUT)
    parsed = parse_records(read_layouts(source), str(source))
    folder = Path(args.folder)
    todo = plan_outputs(folder, len(parsed), args.overwrite, args.no_overwrite)
    if not todo:
        print(f"nothing to do: all {len(parsed)} records already have outputs in {folder}", file=sys.stderr)
        return []
    try:
        pipe = load_pipeline(args)
        options = dict(guidance_scale=args.guidance_scale, steps=args.steps, sampler=args.sampler,
                       scheduled_sampling=args.scheduled_sampling, negative_prompt=args.negative_prompt,
                       height=args.height, width=args.width, eta=args.eta)
        # Validated once on the real model, before the first batch.
        resolved = pipe.check_call_options(**options)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise BatchError(str(err)) from None
    ids = checkpoint_ids(args)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=len(todo), desc="records", unit="img")
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start:start + args.batch_size]
        records = [parsed[i] for i in chunk]
        seeds = [args.seed + i for i in chunk]
        images = pipe([r["prompt"] for r, _ in records], interactions=[its for _, its in records], seed=seeds,
                      **resolved)
        for i, (record, interactions), image, seed in zip(chunk, records, images, seeds):
            paths = output_paths(folder, i)
            atomic_write(paths["image"], lambda p: image.save(p, format="PNG"))
            layout = draw_layout(image, interactions)
            atomic_write(paths["layout"], lambda p: layout.save(p, format="PNG"))
            sidecar = {"record": i, "prompt": record["prompt"],
                       "interactions": [{"subject": it.subject, "action": it.action, "object": it.object,
                                         "subject_box": list(it.subject_box), "object_box": list(it.object_box),
                                         "action_box": list(it.action_box)} for it in interactions],
                       "seed": seed, **resolved, "model": pipe.source, "checkpoint": ids,
                       "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", "")}
            atomic_write(paths["sidecar"], lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n"))
            written.append(paths["image"])
        bar.update(len(chunk))
    bar.close()
    print(f"wrote {len(written)} image(s), overlays and sidecars to {folder}", file=sys.stderr)
    if getattr(args, "grid", None):
        grid = write_grid(folder, len(parsed), args.grid)
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
    atomic_write(out, lambda p: canvas.save(p, format="PNG"))
    return out
