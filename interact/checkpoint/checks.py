"""Whether a file's tensors fit a model: names and shapes per section, the interaction switches a
file was trained with, and which of the repository's configs (configs/*.yaml) a file fits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from interact.checkpoint.formats import CheckpointError, classify, format_named, holds_control_only, to_sections
from interact.model import (CONFIG_DIR, REPO_ROOT, InteractDiffusion, build_model, interaction_options,
                            is_interaction_key, load_config)

Ignore = Callable[[str], bool]


def keep_all(name: str) -> bool:
    return False


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


def compare(module: torch.nn.Module, section: str, state: dict, ignore: Ignore = keep_all) -> SectionReport:
    """Names and shapes of `state` vs `module.state_dict()`; `ignore(name)` drops names on both sides."""
    return compare_normalized(module, normalize_section(module, section, state), ignore)


def compare_normalized(module: torch.nn.Module, state: dict, ignore: Ignore) -> SectionReport:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not ignore(k)}
    given = {k: tuple(v.shape) for k, v in state.items() if not ignore(k)}
    return SectionReport(
        missing=sorted(set(expected) - set(given)),
        unexpected=sorted(set(given) - set(expected)),
        wrong_shape=sorted((k, given[k], expected[k]) for k in set(given) & set(expected) if given[k] != expected[k]))


def adapt_to_model(model: InteractDiffusion, kind: str) -> tuple[Callable[[dict], dict], Ignore] | None:
    """How a file of format `kind` gives `model`'s trained control its weights: (convert its
    `model` section, names of the model that start fresh). A file of the model's own control:
    as it is; a file of another control the model's can start from (GLIGEN's for
    InteractDiffusion's, in training): converted; else None."""
    f = format_named(kind)
    control = model.trained_control
    if f is None or f.control in (None, control.name):
        return (lambda state: state), keep_all
    return control.starts_from(f.control)


def _backbone_key(name: str) -> bool:
    return not is_interaction_key(name)


def check_file(raw: dict, model: InteractDiffusion) -> dict[str, SectionReport]:
    """Which of the file's sections would load strictly into `model` (for `inspect`)."""
    kind = classify(raw)
    f = format_named(kind)
    sections = to_sections(raw)
    adapt = adapt_to_model(model, kind) or ((lambda state: state), keep_all)
    if "model" in sections:
        sections["model"] = model.trained_control.complete_state(adapt[0](sections["model"]))
    if f is not None and f.control is None:     # an SD file holds the backbone only
        ignore = is_interaction_key
    elif holds_control_only(kind):
        ignore = _backbone_key
    else:
        ignore = adapt[1]
    return {name: compare(model.section(name), name, state, ignore if name == "model" else keep_all)
            for name, state in sections.items()}


def interaction_variant(model: InteractDiffusion, model_state: dict, file_config=None) -> dict:
    """The config switches a `model` section's control keys imply: the fusers' kind from their
    names, the control's own (InteractDiffusion: typed roles) from its tokenizer's, box attention
    (which has no weights of its own) from the file's stored config when it has one."""
    keys = list(model_state)
    out = {"fuser_type": "gatedCA" if any(".fuser.norm_objs." in k for k in keys) else "gatedSA",
           "fuser_positions": any(".fuser.visual_position." in k for k in keys),
           **model.trained_control.variant(model_state)}
    interaction = (file_config or {}).get("interaction") if isinstance(file_config, dict) else None
    if isinstance(interaction, dict):
        out["box_attention"] = interaction.get("box_attention", "none")
    return out


def check_variant(model: InteractDiffusion, model_state: dict, source, file_config=None) -> None:
    """A file trained with other interaction switches than the config: say which, and how to
    match them (rather than list the differing tensor names)."""
    if not any(".fuser." in k for k in model_state):
        return
    have = interaction_options(model.config)
    wrong = [f"interaction.{k} = {v} (the config has {have[k]})"
             for k, v in interaction_variant(model, model_state, file_config).items() if v != have[k]]
    if wrong:
        raise CheckpointError(f"{source}: was trained with {'; '.join(wrong)}: use a config with the file's settings "
                              f"(--fuser_type / --role_embedding / --box_attention on the command line)")


# ----------------------------------------------------------------------------- which config fits

def _stored_architecture(raw: dict):
    """(model node, interaction options) of the config a file stores, or None."""
    from omegaconf import DictConfig, OmegaConf
    stored = raw.get("config_dict")
    if not isinstance(stored, (dict, DictConfig)) or "model" not in stored or "interaction" not in stored:
        return None
    stored = OmegaConf.create(stored) if isinstance(stored, dict) else stored
    return OmegaConf.to_container(stored.model, resolve=True), interaction_options(stored)


def matching_configs(raw: dict, config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The configs under `config_dir` whose model every tensor of the file fits by name and shape;
    when the file stores its config, narrowed to those built the same way (when any are)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    if classify(raw) == "unknown":
        return []
    fits = []
    for path in sorted(config_dir.glob("*.yaml")):
        try:
            model = build_model(load_config(path), device="meta")
        except (ValueError, OSError, KeyError, OmegaConfBaseException):  # not a model config
            continue
        if all(report.ok for report in check_file(raw, model).values()):
            fits.append((path, (OmegaConf.to_container(model.config.model, resolve=True),
                                interaction_options(model.config))))
    stored = _stored_architecture(raw)
    same = [path for path, architecture in fits if architecture == stored]
    return same or [path for path, _ in fits]


NO_CONFIG_FITS = " (no config in configs/ fits its tensors: it is of another size or architecture)"


def config_hint(raw: dict, use: str = "pass --config") -> str:
    """' (its tensors fit configs/x.yaml: pass --config configs/x.yaml)', or NO_CONFIG_FITS.
    `use`: how the caller's user names a model config (training: its YAML's model_config)."""
    fits = [str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p) for p in matching_configs(raw)]
    if not fits:
        return NO_CONFIG_FITS
    if len(fits) == 1:
        return f" (its tensors fit {fits[0]}: {use} {fits[0]})"
    return f" (its tensors fit {', '.join(fits)}: {use} one of them)"
