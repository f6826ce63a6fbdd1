"""Reading, checking and writing checkpoints.

Formats read (docs/reference.md §3):
- released InteractDiffusion / GLIGEN files and this project's own: a torch dict
  with sections `model`, `autoencoder`, `text_encoder`, `diffusion` (+ `config_dict`,
  and for training files `opt`, `scheduler`, `iters`, ...);
- Stable Diffusion v1.x originals (.ckpt or .safetensors): one `state_dict` with
  prefixes `model.diffusion_model.`, `first_stage_model.`, `cond_stage_model.transformer.`;
- interaction-only files (this project's export): `model` holding only
  `position_net.*` and the fusers.

Pickles load with `weights_only=True`; a file that needs arbitrary Python objects
is refused unless the caller trusts it (`allow_pickle=True`, CLI `--allow-pickle`).

CLI: python -m interact.checkpoint inspect FILE [--config YAML]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hoi.io import atomic_save
from interact.model import (SD_V1_CONFIG, SECTIONS, InteractDiffusion, build_model, interaction_options,
                            is_interaction_key, load_config)

SD_PREFIXES = {
    "model.diffusion_model.": "model",
    "first_stage_model.": "autoencoder",
    "cond_stage_model.": "text_encoder",  # keeps `transformer.` after the prefix
}
DIFFUSION_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")
# Parts of the interaction control that a GLIGEN box checkpoint does not have; they start fresh.
GLIGEN_FRESH_KEYS = ("position_net.interaction_embedding.", "position_net.position_embedding.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what to pass."""


# ----------------------------------------------------------------------------- reading

def config_globals() -> list:
    """Classes a weights-only load may rebuild besides tensors: released GLIGEN/InteractDiffusion
    files store their training config as an OmegaConf object under `config_dict`. These are
    plain data containers, so allowing them keeps `--allow-pickle` unnecessary for those files."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode
    return [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, collections.defaultdict, dict,
            list, int, float, str, bool]


def read_file(path, allow_pickle: bool = False) -> dict:
    """Load a .safetensors or torch pickle file into a dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from None
    try:
        with torch.serialization.safe_globals(config_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:  # torch raises many types for a damaged file; all mean "unusable"
        text = str(err)
        # weights_only refuses a *well-formed* pickle that names classes beyond tensors.
        if not allow_pickle and ("allowed global" in text or "Unsupported global" in text):
            raise CheckpointError(
                f"{path}: holds Python objects beyond tensors, so it was not loaded with weights_only=True. "
                f"If you trust where the file came from, pass --allow-pickle (allow_pickle=True).") from None
        first_line = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or not a torch file?): "
                              f"{first_line[:200]}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict of sections or tensors, found {type(raw).__name__}")
    return raw


def _is_tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def classify(raw: dict) -> str:
    """One of: interactdiffusion, gligen, interaction_weights, sd_original, unknown."""
    model = raw.get("model")
    if _is_tensor_dict(model):
        has_backbone = any(not is_interaction_key(k) for k in model)
        # GLIGEN's tokenizer has neither; a box-only InteractDiffusion ablation lacks linear_action.
        if any(k.startswith(("position_net.linear_action.", "position_net.interaction_embedding.")) for k in model):
            return "interactdiffusion" if has_backbone else "interaction_weights"
        if any(k.startswith("position_net.") for k in model):
            return "gligen"
    state = raw.get("state_dict", raw)
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith("model.diffusion_model.") for k in state):
        return "sd_original"
    return "unknown"


def describe_kind(raw: dict) -> str:
    kind = classify(raw)
    names = {"interactdiffusion": "InteractDiffusion checkpoint (UNet + interaction tokenizer + fusers)",
             "gligen": "GLIGEN checkpoint (box grounding tokenizer + fusers)",
             "interaction_weights": "interaction weights only (position_net + fusers)",
             "sd_original": "Stable Diffusion v1.x original checkpoint",
             "unknown": "unrecognised layout"}
    text = names[kind]
    if "iters" in raw:
        text += f", training checkpoint at iteration {int(raw['iters'])}"
    return text


def to_sections(raw: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Split any supported layout into the four section dicts (absent sections left out)."""
    kind = classify(raw)
    if kind == "sd_original":
        state = raw.get("state_dict", raw)
        sections: dict[str, dict] = {}
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            for prefix, section in SD_PREFIXES.items():
                if key.startswith(prefix):
                    sections.setdefault(section, {})[key[len(prefix):]] = value
                    break
            else:
                if key in DIFFUSION_BUFFERS:
                    sections.setdefault("diffusion", {})[key] = value
        return sections
    if kind == "unknown":
        raise CheckpointError(
            "unrecognised checkpoint layout: expected an InteractDiffusion/GLIGEN dict with a 'model' section, "
            f"or an SD v1.x 'state_dict'; top-level keys are {sorted(map(str, raw))[:10]}")
    return {s: raw[s] for s in SECTIONS if _is_tensor_dict(raw.get(s))}


def gligen_to_interaction(model_section: dict) -> dict:
    """docs/reference.md §3: a GLIGEN box+text `model` section -> InteractDiffusion names. GLIGEN's
    `linears` initialise both `linears` and `linear_action`, its null text feature both
    null features; fusers and UNet copy as they are."""
    out = {}
    for key, value in model_section.items():
        if key.startswith("position_net.linears."):
            out[key] = value
            out[key.replace("position_net.linears.", "position_net.linear_action.")] = value.clone()
        elif key == "position_net.null_positive_feature":
            out[key] = value
            out["position_net.null_action_feature"] = value.clone()
        elif key.startswith("position_net.") and key != "position_net.null_position_feature":
            continue  # GLIGEN-only parts (e.g. image branches) have no counterpart here
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- checking

@dataclass
class SectionReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, file, model)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def lines(self, section: str, limit: int = 10) -> list[str]:
        out = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                out.append(f"{section}: {len(items)} {label}: " + ", ".join(items[:limit])
                           + (" ..." if len(items) > limit else ""))
        if self.wrong_shape:
            shown = ", ".join(f"{n} file {list(a)} vs model {list(b)}" for n, a, b in self.wrong_shape[:limit])
            out.append(f"{section}: {len(self.wrong_shape)} wrongly shaped: {shown}"
                       + (" ..." if len(self.wrong_shape) > limit else ""))
        return out


def normalize_section(module: torch.nn.Module, section: str, state: dict) -> dict:
    """Tolerated spelling differences: the text encoder's `text_model.` level and its stale
    `position_ids` buffer (old transformers files)."""
    if section == "text_encoder":
        from ldm.modules.encoders.modules import normalize_text_encoder_state_dict
        return normalize_text_encoder_state_dict(state, module=module)
    return state


def compare(module: torch.nn.Module, section: str, state: dict, ignore=lambda name: False) -> SectionReport:
    """Names and shapes of `state` vs `module.state_dict()`; `ignore(name)` drops names on both sides."""
    return _compare_normalized(module, normalize_section(module, section, state), ignore)


def _compare_normalized(module: torch.nn.Module, state: dict, ignore) -> SectionReport:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not ignore(k)}
    given = {k: tuple(v.shape) for k, v in state.items() if not ignore(k)}
    return SectionReport(
        missing=sorted(set(expected) - set(given)),
        unexpected=sorted(set(given) - set(expected)),
        wrong_shape=sorted((k, given[k], expected[k]) for k in set(given) & set(expected) if given[k] != expected[k]))


def check_file(raw: dict, model: InteractDiffusion) -> dict[str, SectionReport]:
    """Which of the file's sections would load strictly into `model` (for `inspect`)."""
    kind = classify(raw)
    sections = to_sections(raw)
    if kind == "gligen" and "model" in sections:
        sections["model"] = gligen_to_interaction(sections["model"])
    if "model" in sections:
        sections["model"] = with_typed_role_defaults(model, sections["model"])
    ignore = {"sd_original": is_interaction_key,  # an SD file holds the backbone only
              "interaction_weights": lambda k: not is_interaction_key(k),
              "gligen": lambda k: k.startswith(GLIGEN_FRESH_KEYS)}.get(kind, lambda k: False)
    return {name: compare(model.section(name), name, state, ignore if name == "model" else lambda k: False)
            for name, state in sections.items()}


# ----------------------------------------------------------------------------- loading

def interaction_variant(model_state: dict, file_config=None) -> dict:
    """The config switches a `model` section's interaction keys imply; box attention, which has no
    weights of its own, from the file's stored config when it has one."""
    keys = list(model_state)
    out = {"fuser_type": "gatedCA" if any(".fuser.norm_objs." in k for k in keys) else "gatedSA",
           "fuser_positions": any(".fuser.visual_position." in k for k in keys),
           "role_embedding": "typed" if "position_net.type_offsets" in model_state else "fixed"}
    interaction = (file_config or {}).get("interaction") if isinstance(file_config, dict) else None
    if isinstance(interaction, dict):
        out["box_attention"] = interaction.get("box_attention", "none")
    return out


def check_variant(model: InteractDiffusion, model_state: dict, source, file_config=None) -> None:
    """A file trained with other interaction switches than the config: say which, and how to
    match them (rather than list the differing tensor names). A fixed-role file is fine for a
    typed config (with_typed_role_defaults)."""
    if not any(".fuser." in k for k in model_state):
        return
    have = interaction_options(model.config)
    wrong = [f"interaction.{k} = {v} (the config has {have[k]})"
             for k, v in interaction_variant(model_state, file_config).items()
             if v != have[k] and not (k == "role_embedding" and v == "fixed")]
    if wrong:
        raise CheckpointError(f"{source}: was trained with {'; '.join(wrong)}: use a config with the file's settings "
                              f"(--fuser_type / --role_embedding / --box_attention on the command line)")


def with_typed_role_defaults(model: InteractDiffusion, state: dict) -> dict:
    """A typed-role model loading a file without the typed weights (any released checkpoint):
    those start as tokenizer.typed_role_defaults, i.e. exactly the file's role embeddings."""
    pn = model.interaction_tokenizer
    if getattr(pn, "role_embedding", "fixed") != "typed" or "position_net.type_offsets" in state:
        return state
    from interact.tokenizer import typed_role_defaults
    return {**state, **typed_role_defaults(pn)}


def _load_strict(module: torch.nn.Module, section: str, state: dict, ignore=lambda k: False, source: str = ""):
    state = normalize_section(module, section, state)
    report = _compare_normalized(module, state, ignore)
    if not report.ok:
        detail = "\n  ".join(report.lines(section))
        raise CheckpointError(f"{source}: does not match the model config:\n  {detail}\n"
                              f"(is the --config right for this file? `python -m interact.checkpoint inspect "
                              f"{source}` lists every difference)")
    state = {k: v for k, v in state.items() if not ignore(k)}
    # A meta-built module has no storage: take the file's tensors themselves (no copy, no init);
    # InteractDiffusion.finish_meta_load rebuilds what no file holds.
    on_meta = any(t.is_meta for t in module.state_dict().values())
    missing, unexpected = module.load_state_dict(state, strict=False, assign=on_meta)
    assert not unexpected and all(ignore(k) for k in missing), (missing, unexpected)


def load_weights(model: InteractDiffusion, ckpt=None, sd_ckpt=None, allow_pickle: bool = False,
                 text_encoder_given: bool = False) -> None:
    """Fill `model` from files. `ckpt` alone: a full InteractDiffusion file (all sections).
    `sd_ckpt` + `ckpt`: the backbone from the SD v1.x file, the interaction control from
    `ckpt`. Every tensor of the model must come from a file; names and shapes are strict.
    `text_encoder_given`: the caller loaded the text encoder from a folder, so the file's is skipped."""
    if ckpt is None and sd_ckpt is None:
        raise CheckpointError("no weights given: pass --ckpt (an InteractDiffusion checkpoint) and optionally "
                              "--sd_ckpt (an SD v1.x .ckpt/.safetensors for the backbone)")
    if ckpt is None:
        raise CheckpointError(f"--sd_ckpt {sd_ckpt} gives the backbone only: pass --ckpt with the interaction "
                              f"weights (an InteractDiffusion checkpoint or an interaction-weights export)")
    ckpt_raw = read_file(ckpt, allow_pickle)
    kind = classify(ckpt_raw)
    if kind == "sd_original":
        raise CheckpointError(f"--ckpt {ckpt}: is a Stable Diffusion v1.x original checkpoint, which holds no "
                              f"interaction weights: pass it as --sd_ckpt, and the InteractDiffusion file as --ckpt")
    if kind == "gligen":
        raise CheckpointError(f"--ckpt {ckpt}: is a GLIGEN checkpoint (box grounding), not InteractDiffusion: it "
                              f"can initialise InteractDiffusion training but cannot generate interactions")
    interaction = to_sections(ckpt_raw)
    backbone_src = sd_ckpt if sd_ckpt is not None else ckpt
    backbone = interaction if sd_ckpt is None else to_sections(read_file(sd_ckpt, allow_pickle))
    if "model" not in interaction:
        raise CheckpointError(f"{ckpt}: has no 'model' section with interaction weights")
    _load_backbone(model, backbone, backbone_src, text_encoder_given,
                   hint="pass --sd_ckpt with an SD v1.x checkpoint for the backbone")
    check_variant(model, interaction["model"], ckpt, ckpt_raw.get("config_dict"))
    _load_strict(model.model, "model", with_typed_role_defaults(model, interaction["model"]),
                 lambda k: not is_interaction_key(k), str(ckpt))
    model.finish_meta_load()


def _load_backbone(model: InteractDiffusion, backbone: dict, source, text_encoder_given: bool = False,
                   hint: str = "") -> None:
    """The frozen parts (UNet without the interaction control, autoencoder, text encoder, and the
    schedule when the file has it), strictly. A parameter-free first stage needs no section."""
    needed = ["model"] + (["autoencoder"] if model.autoencoder.state_dict() else [])
    missing = [name for name in needed if name not in backbone]
    if missing:  # checked before anything loads, so the message names the real problem
        raise CheckpointError(f"{source}: has no {missing[0]!r} section" + (f"; {hint}" if hint else ""))
    if "text_encoder" not in backbone and not text_encoder_given and not model.text_encoder_seeded:
        raise CheckpointError(f"{source}: has no text encoder weights: pass --text_encoder DIR (a Hugging "
                              f"Face CLIP ViT-L/14 text model folder, e.g. an SD v1.x repo's text_encoder/)")
    for name in SECTIONS:
        if name in backbone and not (name == "text_encoder" and text_encoder_given):
            ignore = is_interaction_key if name == "model" else (lambda k: False)
            _load_strict(model.section(name), name, backbone[name], ignore, str(source))


def load_training_init(model: InteractDiffusion, ckpt=None, sd_ckpt=None,
                       allow_pickle: bool = False) -> tuple[list[str], bool]:
    """Initialise a randomly built model for training; returns one line per part saying where
    it came from, and whether the backbone came from a file. `sd_ckpt`: the backbone from an SD v1.x file. `ckpt`: a GLIGEN file (converted
    as docs/reference.md §3; the instance and role embeddings, which GLIGEN lacks, stay random) or an
    InteractDiffusion file (full or interaction-only); a full file also gives the backbone when
    `sd_ckpt` is absent. Parts no file provides keep their random initialisation."""
    lines, backbone, backbone_src = [], None, None
    if sd_ckpt is not None:
        backbone, backbone_src = to_sections(read_file(sd_ckpt, allow_pickle)), sd_ckpt
    if ckpt is not None:
        raw = read_file(ckpt, allow_pickle)
        kind = classify(raw)
        if kind == "unknown":
            raise CheckpointError(f"--ckpt {ckpt}: unrecognised layout (top-level keys {sorted(map(str, raw))[:10]}); "
                                  f"expected a GLIGEN or InteractDiffusion checkpoint")
        if kind == "sd_original":
            raise CheckpointError(f"--ckpt {ckpt}: is a Stable Diffusion v1.x checkpoint; pass it as "
                                  f"--official_ckpt_name (--ckpt takes a GLIGEN or InteractDiffusion file)")
        sections = to_sections(raw)
        if "model" not in sections:
            raise CheckpointError(f"--ckpt {ckpt}: has no 'model' section")
        if kind == "gligen":
            sections["model"] = gligen_to_interaction(sections["model"])
        fresh = (lambda k: k.startswith(GLIGEN_FRESH_KEYS)) if kind == "gligen" else (lambda k: False)
        interaction = {k: v for k, v in sections["model"].items() if is_interaction_key(k) and not fresh(k)}
        check_variant(model, interaction, ckpt, raw.get("config_dict"))
        interaction = with_typed_role_defaults(model, interaction)
        _load_strict(model.model, "model", interaction, lambda k: not is_interaction_key(k) or fresh(k), str(ckpt))
        lines.append(f"interaction control: {ckpt} ({describe_kind(raw)})"
                     + ("; instance and role embeddings: random (GLIGEN has none)" if kind == "gligen" else ""))
        if backbone is None and kind != "interaction_weights":
            backbone, backbone_src = sections, ckpt
    else:
        lines.append("interaction control: random initialisation")
    if backbone is None:
        lines.append("backbone (UNet, autoencoder, text encoder): random initialisation")
        return lines, False
    _load_backbone(model, backbone, backbone_src)
    lines.append(f"backbone: {backbone_src}")
    return lines, True


# ----------------------------------------------------------------------------- writing

def export_sections(model: InteractDiffusion, interaction_only: bool = False) -> dict:
    """The released layout; `interaction_only` keeps just position_net + fusers."""
    from omegaconf import OmegaConf
    model_state = {k: v for k, v in model.model.state_dict().items() if not interaction_only or is_interaction_key(k)}
    out = {"model": model_state, "config_dict": OmegaConf.to_container(model.config, resolve=True)}
    if not interaction_only:
        out.update({name: model.section(name).state_dict() for name in SECTIONS
                    if name != "model" and not (name == "text_encoder" and model.text_encoder_seeded)})
    return out


def save_checkpoint(path, model: InteractDiffusion, interaction_only: bool = False, **extra) -> None:
    atomic_save({**export_sections(model, interaction_only), **extra}, path)


def pack(src, out, half: bool = True, allow_pickle: bool = False, **extra) -> dict:
    """A training export -> a file to ship: the model sections only (no optimizer or iteration
    state), floating weights in fp16 when `half` (they load into fp32 models), and no noise
    schedule (rebuilt from the config; fp16 would round it). Returns the packed dict."""
    raw = read_file(src, allow_pickle)
    sections = to_sections(raw)
    if "model" not in sections:
        raise CheckpointError(f"{src}: has no 'model' section to pack")
    cast = (lambda t: t.half() if half and t.is_floating_point() else t)
    packed = {name: {k: cast(v) for k, v in state.items()} for name, state in sections.items() if name != "diffusion"}
    if "config_dict" in raw:
        packed["config_dict"] = raw["config_dict"]
    packed.update(extra)
    atomic_save(packed, out)
    return packed


# ----------------------------------------------------------------------------- CLI

def inspect(path, config=None, allow_pickle: bool = False, out=None) -> int:
    out = out or sys.stdout  # looked up at call time so redirected stdout is honoured
    raw = read_file(path, allow_pickle)
    print(f"{path}: {describe_kind(raw)}", file=out)
    sections = to_sections(raw)
    for name, state in sections.items():
        params = sum(v.numel() for v in state.values())
        dtypes = sorted({str(v.dtype).replace("torch.", "") for v in state.values()})
        print(f"  {name:13s} {len(state):5d} tensors  {params / 1e6:9.2f} M values  {','.join(dtypes)}", file=out)
    extras = sorted(str(k) for k in raw if k not in SECTIONS and not isinstance(raw[k], torch.Tensor))
    if extras and classify(raw) != "sd_original":
        print(f"  other keys: {', '.join(extras)}", file=out)
    config = config or SD_V1_CONFIG
    model = build_model(load_config(config), device="meta")
    reports = check_file(raw, model)
    problems = [line for name, r in reports.items() for line in r.lines(name)]
    if problems:
        print(f"does NOT load strictly into {config}:", file=out)
        for line in problems:
            print("  " + line, file=out)
        return 1
    print(f"loads strictly into {config} (sections: {', '.join(reports)})", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interact.checkpoint", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="say what a checkpoint file is and check it against a model config")
    p.add_argument("file")
    p.add_argument("--config", default=None, help=f"model YAML (default {SD_V1_CONFIG.relative_to(SD_V1_CONFIG.parents[1])})")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    p = sub.add_parser("pack", help="a training export -> a shippable file (model sections, fp16)")
    p.add_argument("file")
    p.add_argument("out")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.add_argument("--allow-pickle", action="store_true", help="unpickle arbitrary objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.file, args.out, half=not args.fp32, allow_pickle=args.allow_pickle)
            print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.2f} MiB)")
            return 0
        return inspect(args.file, args.config, args.allow_pickle)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
