"""LoRA files in the common layouts, merged into the UNet and the text encoder: the merged weights
against W + w (alpha / r) up @ down computed here, a layer's output against the low-rank form,
and the errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import inference_batch
from interact.checkpoint import CheckpointError, inspect, save_checkpoint
from interact.checkpoint.lora import apply_loras, parse_lora
from interact.pipeline import InteractDiffusionPipeline
from helpers import TINY_CONFIG

TINY = TINY_CONFIG
# (our module, its kohya name in diffusers' spelling, its diffusers name)
ATTN = ("input_blocks.1.1.transformer_blocks.0.attn1.to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
CONV = ("input_blocks.1.0.in_layers.2", "lora_unet_down_blocks_0_resnets_0_conv1", "down_blocks.0.resnets.0.conv1")
TEXT = ("transformer.encoder.layers.0.self_attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=2, device="cpu")
    path = tmp_path_factory.mktemp("lora") / "tiny.pth"
    save_checkpoint(path, pipe.model)
    return path


def _module(model, name):
    root = model.text_encoder if name.startswith("transformer.") else model.unet
    return root.get_submodule(name)


def _factors(model, name, rank, seed):
    weight = _module(model, name).weight
    g = torch.Generator().manual_seed(seed)
    down_shape = (rank, *weight.shape[1:]) if weight.dim() == 4 else (rank, weight.shape[1])
    up_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
    return torch.randn(up_shape, generator=g) * 0.1, torch.randn(down_shape, generator=g) * 0.1


def expected_weight(weight, up, down, alpha, scale):
    """W + scale (alpha / r) up @ down, the convolution case written with einsum."""
    r = down.shape[0]
    factor = scale * (1.0 if alpha is None else alpha / r)
    if weight.dim() == 4:
        return weight + factor * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    return weight + factor * up @ down


@pytest.mark.parametrize("layout", ["kohya", "kohya_ldm", "peft", "processor"])
def test_merged_weights_match_the_formula(ckpt, tmp_path, layout):
    base = InteractDiffusionPipeline.from_checkpoint(ckpt, config=TINY, device="cpu").model
    state, expected = {}, {}
    names = [ATTN, CONV, TEXT] if layout != "processor" else [ATTN]
    for n, (ours, kohya, diffusers) in enumerate(names):
        up, down = _factors(base, ours, rank=2 + n, seed=n)
        alpha = 3.0 if layout.startswith("kohya") else None
        if layout == "kohya":
            key = kohya
        elif layout == "kohya_ldm":
            key = "lora_unet_" + ours.replace(".", "_") if not ours.startswith("transformer.") else kohya
        elif layout == "peft":
            key = diffusers if diffusers.startswith("text_encoder.") else "unet." + diffusers
        else:
            key = diffusers.replace(".to_q", ".processor.to_q_lora")
        if layout in ("kohya", "kohya_ldm"):
            state.update({key + ".lora_up.weight": up, key + ".lora_down.weight": down, key + ".alpha": torch.tensor(alpha)})
        elif layout == "peft":
            state.update({key + ".lora_B.weight": up, key + ".lora_A.weight": down})
        else:
            state.update({key + ".up.weight": up, key + ".down.weight": down})
        expected[ours] = expected_weight(_module(base, ours).weight.detach().clone(), up, down, alpha, 0.7)
    path = tmp_path / f"{layout}.safetensors"
    save_file(state, str(path))
    merged = InteractDiffusionPipeline.from_checkpoint(ckpt, config=TINY, device="cpu", lora=[f"{path}:0.7"]).model
    for name, weight in expected.items():
        torch.testing.assert_close(_module(merged, name).weight, weight, atol=1e-6, rtol=1e-5)
    untouched = "input_blocks.1.1.transformer_blocks.0.attn1.to_k"
    assert torch.equal(_module(merged, untouched).weight, _module(base, untouched).weight)


def test_a_merged_layer_computes_the_low_rank_sum(ckpt, tmp_path):
    base = InteractDiffusionPipeline.from_checkpoint(ckpt, config=TINY, device="cpu").model
    up, down = _factors(base, ATTN[0], rank=3, seed=5)
    path = tmp_path / "l.safetensors"
    save_file({ATTN[1] + ".lora_up.weight": up, ATTN[1] + ".lora_down.weight": down}, str(path))
    merged = InteractDiffusionPipeline.from_checkpoint(ckpt, config=TINY, device="cpu", lora=[path]).model
    x = torch.randn(5, down.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(_module(merged, ATTN[0])(x), _module(base, ATTN[0])(x) + (x @ down.T) @ up.T,
                                   atol=1e-5, rtol=1e-5)


def test_bad_loras(ckpt, tmp_path, capsys):
    model = InteractDiffusionPipeline.from_checkpoint(ckpt, config=TINY, device="cpu").model
    nothing = tmp_path / "sdxl.safetensors"
    save_file({"lora_unet_output_blocks_9_attn_to_q.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_output_blocks_9_attn_to_q.lora_down.weight": torch.zeros(2, 4)}, str(nothing))
    with pytest.raises(CheckpointError, match=r"0 of its 1 modules match this model's UNet or text encoder"):
        apply_loras(model, [parse_lora(str(nothing))])
    up, down = _factors(model, ATTN[0], rank=2, seed=1)
    partial = tmp_path / "partial.safetensors"
    save_file({ATTN[1] + ".lora_up.weight": up, ATTN[1] + ".lora_down.weight": down,
               "lora_unet_output_blocks_9_attn_to_q.lora_up.weight": torch.zeros(4, 2),
               "lora_unet_output_blocks_9_attn_to_q.lora_down.weight": torch.zeros(2, 4)}, str(partial))
    lines = apply_loras(model, [parse_lora(str(partial))], log=lambda line: None)
    assert lines == [f"LoRA {partial} x 1: 1 of 2 modules (not matched, e.g. 'lora_unet_output_blocks_9_attn_to_q')"]
    with pytest.raises(ValueError, match=r"--lora x.safetensors:abc: weight 'abc' is not a number"):
        parse_lora("x.safetensors:abc")
    assert inspect(partial) == 0
    assert "LoRA for the base" in capsys.readouterr().out
    code = inference_batch.main(["--ckpt", str(ckpt), "--config", str(TINY), "--lora", str(nothing), "--folder",
                                 str(tmp_path / "o"), "--steps", "1", "--height", "32", "--width", "32"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --lora {nothing}: 0 of its 1 modules match" in err and "Traceback" not in err
