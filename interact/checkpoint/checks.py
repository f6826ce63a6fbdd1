"""Whether a file's tensors fit a model: names and shapes per section, the interaction switches a
file was trained with, and which of the repository's configs (configs/*.yaml) a file fits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from interact.checkpoint.formats import (GLIGEN_FRESH_KEYS, INTERACTION_ONLY, CheckpointError, classify,
                                         gligen_to_interaction, to_sections)
from interact.model import (CONFIG_DIR, REPO_ROOT, InteractDiffusion, build_model, interaction_options,
                            is_interaction_key, load_config)

Ignore = Callable[[str], bool]


def _keep_all(name: str) -> bool:
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


def compare(module: torch.nn.Module, section: str, state: dict, ignore: Ignore = _keep_all) -> SectionReport:
    """Names and shapes of `state` vs `module.state_dict()`; `ignore(name)` drops names on both sides."""
    return compare_normalized(module, normalize_section(module, section, state), ignore)


def compare_normalized(module: torch.nn.Module, state: dict, ignore: Ignore) -> SectionReport:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not ignore(k)}
    given = {k: tuple(v.shape) for k, v in state.items() if not ignore(k)}
    return SectionReport(
        missing=sorted(set(expected) - set(given)),
        unexpected=sorted(set(given) - set(expected)),
        wrong_shape=sorted((k, given[k], expected[k]) for k in set(given) & set(expected) if given[k] != expected[k]))


def with_typed_role_defaults(model: InteractDiffusion, state: dict) -> dict:
    """A typed-role model loading a file without the typed weights (any released checkpoint):
    those start as tokenizer.typed_role_defaults, i.e. exactly the file's role embeddings."""
    pn = model.interaction_tokenizer
    if getattr(pn, "role_embedding", "fixed") != "typed" or "position_net.type_offsets" in state:
        return state
    from interact.tokenizer import typed_role_defaults
    return {**state, **typed_role_defaults(pn)}


def fresh_in_file(kind: str) -> Ignore:
    """Names of the model that a file of this kind cannot provide and that start fresh."""
    if kind == "gligen":
        return lambda k: k.startswith(GLIGEN_FRESH_KEYS)
    return _keep_all


def as_interaction_names(kind: str, model_state: dict) -> dict:
    """A file's `model` section under this project's names (GLIGEN's converted)."""
    return gligen_to_interaction(model_state) if kind == "gligen" else model_state


def _backbone_key(name: str) -> bool:
    return not is_interaction_key(name)


def check_file(raw: dict, model: InteractDiffusion) -> dict[str, SectionReport]:
    """Which of the file's sections would load strictly into `model` (for `inspect`)."""
    kind = classify(raw)
    sections = to_sections(raw)
    as_is = model.is_gligen  # a GLIGEN model takes a GLIGEN file's names as they are
    if "model" in sections:
        state = sections["model"] if as_is else as_interaction_names(kind, sections["model"])
        sections["model"] = with_typed_role_defaults(model, state)
    if kind in ("sd_original", "sd_backbone"):  # an SD file holds the backbone only
        ignore = is_interaction_key
    elif kind in INTERACTION_ONLY:
        ignore = _backbone_key
    else:
        ignore = _keep_all if as_is else fresh_in_file(kind)
    return {name: compare(model.section(name), name, state, ignore if name == "model" else _keep_all)
            for name, state in sections.items()}


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
