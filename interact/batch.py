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

from interact.checkpoint import atomic_write
from interact.conditions import ConditionError, interactions_from_record
from interact.model import CONFIG_DIR, REPO_ROOT

DEFAULT_INPUT = REPO_ROOT / "examples" / "layouts.json"
DEFAULT_CONFIG = CONFIG_DIR / "tiny_random.yaml"


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
    if args.ckpt is None and args.sd_ckpt is None:
        config = args.config or DEFAULT_CONFIG
        print(f"No --ckpt given: using the embedded default, a tiny RANDOMLY INITIALISED model ({config}). "
              f"Its images are noise-like; they show the pipeline works, not what a trained model draws. "
              f"Pass --ckpt (and --sd_ckpt) for real images.", file=sys.stderr)
        return InteractDiffusionPipeline.from_config(config, seed=0, device=args.device, half=args.half)
    print(f"loading weights: {' + '.join(p for p in (args.sd_ckpt, args.ckpt) if p)}", file=sys.stderr)
    return InteractDiffusionPipeline.from_checkpoint(args.ckpt, args.sd_ckpt, args.config, args.text_encoder,
                                                     args.device, args.half, args.allow_pickle)


def checkpoint_ids(args) -> dict:
    from interact.checkpoint import file_digest
    out = {}
    for label in ("ckpt", "sd_ckpt"):
        path = getattr(args, label)
        if path is not None:
            out[label] = {"path": str(path), "sha256_12": file_digest(path)}
    return out or {"embedded_default": str(args.config or DEFAULT_CONFIG), "weights": "random (seed 0)"}


def run_batch(args) -> list[Path]:
    """Generate every pending record; returns the image paths written."""
    from interact.checkpoint import CheckpointError
    from interact.pipeline import draw_layout

    source = args.input or DEFAULT_INPUT
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
    return written
