"""Writing checkpoints: the released layout from a model, and packing a training export to ship."""
from __future__ import annotations

import os

from hoi.io import atomic_save
from interact.checkpoint.formats import CheckpointError, read_file, to_sections
from interact.model import SECTIONS, InteractDiffusion, is_interaction_key


def export_sections(model: InteractDiffusion, interaction_only: bool = False) -> dict:
    """The released layout; `interaction_only` keeps just position_net + fusers."""
    from omegaconf import OmegaConf
    model_state = {k: v for k, v in model.unet.state_dict().items() if not interaction_only or is_interaction_key(k)}
    out = {"model": model_state, "config_dict": OmegaConf.to_container(model.config, resolve=True)}
    if not interaction_only:
        out.update({name: model.section(name).state_dict() for name in SECTIONS
                    if name != "model" and not (name == "text_encoder" and model.text_encoder_seeded)})
    return out


def save_checkpoint(path: str | os.PathLike, model: InteractDiffusion, interaction_only: bool = False,
                    **extra) -> None:
    atomic_save({**export_sections(model, interaction_only), **extra}, path)


def pack(src: str | os.PathLike, out: str | os.PathLike, half: bool = True, allow_pickle: bool = False,
         **extra) -> dict:
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
