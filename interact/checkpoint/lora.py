"""LoRA files for the base model, merged into the UNet and text encoder before generation.

    W <- W + weight * (alpha / rank) * up @ down        (alpha / rank = 1 when a file has no alpha)

Layouts read (.safetensors, or torch files of the same keys):
- kohya / A1111: `lora_unet_<module path, dots as _>.lora_down.weight`, `.lora_up.weight`,
  `.alpha`; the UNet path in diffusers' names (`lora_unet_down_blocks_0_attentions_0_..._attn1_to_q`)
  or LDM's (`lora_unet_input_blocks_1_1_..._attn1_to_q`); text encoder `lora_te_text_model_encoder_
  layers_0_self_attn_q_proj`; convolutions too (LoCon: down [r, in, k, k], up [out, r, 1, 1]);
- diffusers / PEFT: `unet.<diffusers path>.lora_A.weight` (down) and `.lora_B.weight` (up),
  `text_encoder.text_model.<path>.lora_A.weight`, optional `.alpha`;
- diffusers' older attention processors: `[unet.]<block>.attn1.processor.to_q_lora.down.weight`
  / `.up.weight` (to_out_lora for `to_out.0`).

The UNet's diffusers names come from the same map as the diffusers folders
(interact/checkpoint/diffusers_folder.py), so both spellings find the module.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from interact.checkpoint.formats import CheckpointError, read_file
from interact.model import InteractDiffusion

UP_DOWN = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"), (".up.weight", ".down.weight"))


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    weight: float = 1.0


def parse_lora(text: str, must_exist: bool = False) -> LoraSpec:
    """`FILE[:weight]` -> LoraSpec; ValueError naming the bad part (a weight that is no finite
    number; with `must_exist`, a file that is not there)."""
    path, sep, weight = str(text).rpartition(":")
    if not sep or os.path.exists(text):
        spec = LoraSpec(Path(text))
    else:
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"--lora {text}: weight {weight!r} is not a number (FILE[:weight], e.g. "
                             f"style.safetensors:0.8)") from None
        if not math.isfinite(value):
            raise ValueError(f"--lora {text}: weight {weight!r} must be a finite number (FILE[:weight], e.g. "
                             f"style.safetensors:0.8)")
        spec = LoraSpec(Path(path), value)
    if must_exist and not spec.path.is_file():
        raise ValueError(f"--lora {spec.path}: " + ("is a folder; give a LoRA file (.safetensors)" if spec.path.is_dir()
                                                   else "no such file"))
    return spec


def _targets(model: InteractDiffusion) -> dict[str, nn.Module]:
    """Every name a LoRA file may use for a Linear or Conv2d of the UNet or the text encoder."""
    from interact.checkpoint.diffusers_folder import _diffusers_unet_config, unet_names
    params = model.config.model.params
    unet_config = _diffusers_unet_config(params, params.context_dim, gated=False)
    to_diffusers = unet_names(model, unet_config)
    targets: dict[str, nn.Module] = {}
    for name, module in model.unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or name.startswith("position_net") or ".fuser." in name:
            continue
        diffusers = to_diffusers.get(name + ".weight", "")[:-len(".weight")] or None
        for spelling in filter(None, (name, diffusers)):
            targets["lora_unet_" + spelling.replace(".", "_")] = module
        if diffusers:
            targets["unet." + diffusers] = module
            targets[diffusers] = module
            for projection in ("to_q", "to_k", "to_v"):
                if diffusers.endswith("." + projection):
                    processor = diffusers[:-len(projection)] + f"processor.{projection}_lora"
                    targets[processor] = targets["unet." + processor] = module
            if diffusers.endswith(".to_out.0"):
                processor = diffusers[:-len("to_out.0")] + "processor.to_out_lora"
                targets[processor] = targets["unet." + processor] = module
    for name, module in model.text_encoder.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        path = name.removeprefix("transformer.").removeprefix("text_model.")
        targets["lora_te_text_model_" + path.replace(".", "_")] = module
        targets["text_encoder.text_model." + path] = module
    return targets


def _pairs(state: dict, source: str | os.PathLike = "LoRA"
           ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """{module key: (up, down, alpha)} of a LoRA state dict, each pair checked (one rank, a finite
    alpha); CheckpointError naming `source` and the module."""
    out = {}
    for key, value in state.items():
        for up_suffix, down_suffix in UP_DOWN:
            if key.endswith(up_suffix):
                stem = key[:-len(up_suffix)]
                down = state.get(stem + down_suffix)
                if not isinstance(down, torch.Tensor) or not isinstance(value, torch.Tensor):
                    raise CheckpointError(f"{source}: {stem}: has {up_suffix} but no {down_suffix}")
                if value.dim() < 2 or down.dim() < 2 or value.reshape(value.shape[0], -1).shape[1] != down.shape[0]:
                    raise CheckpointError(f"{source}: {stem}: up {tuple(value.shape)} and down {tuple(down.shape)} do "
                                          f"not share a rank (up's second and down's first size must be equal)")
                alpha = state.get(stem + ".alpha")
                if alpha is not None and not (isinstance(alpha, torch.Tensor) and alpha.numel() == 1
                                              and math.isfinite(float(alpha))):
                    raise CheckpointError(f"{source}: {stem}.alpha = {alpha!r}: expected one finite number")
                out[stem] = (value, down, None if alpha is None else float(alpha))
    return out


def describe_lora(state: dict, source: str | os.PathLike = "LoRA") -> str:
    """"N modules (UNet M, text encoder T), rank r, layout L" of a LoRA state dict."""
    pairs = _pairs(state, source)
    text = sum(1 for k in pairs if k.startswith(("lora_te", "text_encoder.")))
    ranks = sorted({down.shape[0] for _, down, _ in pairs.values()})
    layout = ("kohya" if any(k.startswith("lora_") for k in pairs) else
              "diffusers attention processors" if any(".processor." in k for k in pairs) else "diffusers/PEFT")
    return (f"{len(pairs)} modules (UNet {len(pairs) - text}, text encoder {text}), rank "
            f"{'/'.join(map(str, ranks))}, {layout} layout")


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha: float | None, shape: torch.Size) -> torch.Tensor:
    """(alpha / rank) * up @ down, shaped as the weight (linear, 1x1 or kxk convolution)."""
    rank = down.shape[0]
    scale = 1.0 if alpha is None else alpha / rank
    delta = up.reshape(up.shape[0], -1).float() @ down.reshape(rank, -1).float()
    return (scale * delta).reshape(shape)


def apply_loras(model: InteractDiffusion, specs: list[LoraSpec], allow_pickle: bool = False, log=None) -> list[str]:
    """Merge each file into the model's weights; returns one line per file. CheckpointError when a
    file's keys match nothing (naming the file and the counts); a partial match is reported."""
    if not specs:
        return []
    log = log or (lambda line: print(line, file=sys.stderr))
    targets = _targets(model)
    lines = []
    for spec in specs:
        pairs = _pairs(read_file(spec.path, allow_pickle), f"--lora {spec.path}")
        if not pairs:
            raise CheckpointError(f"--lora {spec.path}: no LoRA pairs (lora_up/lora_down, lora_A/lora_B or up/down "
                                  f"weights) in it")
        matched = {k: v for k, v in pairs.items() if k in targets}
        if not matched:
            raise CheckpointError(f"--lora {spec.path}: 0 of its {len(pairs)} modules match this model's UNet or "
                                  f"text encoder (e.g. {sorted(pairs)[0]!r}); is it for SD v1.x?")
        with torch.no_grad():
            for key, (up, down, alpha) in matched.items():
                weight = targets[key].weight
                if up.shape[0] != weight.shape[0] or down.reshape(down.shape[0], -1).shape[1] != weight[0].numel():
                    raise CheckpointError(f"--lora {spec.path}: {key}: up {tuple(up.shape)} x down {tuple(down.shape)} "
                                          f"does not fit the weight {tuple(weight.shape)}")
                weight.add_(spec.weight * lora_delta(up, down, alpha, weight.shape).to(weight.device, weight.dtype))
        line = f"LoRA {spec.path} x {spec.weight:g}: {len(matched)} of {len(pairs)} modules"
        if len(matched) < len(pairs):
            line += f" (not matched, e.g. {sorted(set(pairs) - set(matched))[0]!r})"
            log(f"warning: {line}")
        lines.append(line)
    return lines
