"""Diffusers folders: a model exported and read back exactly; the exported UNet against diffusers'
own UNet2DConditionModel; an SD backbone folder written by diffusers itself; inspect and errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hoi.records import Interaction
from interact.checkpoint import CheckpointError, inspect, save_checkpoint
from interact.checkpoint.diffusers_folder import export_diffusers
from interact.model import CONFIG_DIR, REPO_ROOT, is_interaction_key
from interact.pipeline import InteractDiffusionPipeline

TINY = CONFIG_DIR / "tiny_random.yaml"
HOI = Interaction("person", "touch", "cat", (0.1, 0.1, 0.5, 0.9), (0.5, 0.5, 0.9, 0.9))


@pytest.fixture(scope="module")
def source():
    """A tiny model with every weight moved off its initial value (fuser gates open)."""
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=3, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*pipe.model.unet.parameters(), *pipe.model.autoencoder.parameters()]:
            p.add_(torch.randn_like(p) * 0.02)
    return pipe.model


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    return export_diffusers(source, tmp_path_factory.mktemp("d") / "interact-diffusers")


def _sections(model) -> dict:
    return {"unet": model.unet.state_dict(), "autoencoder": model.autoencoder.state_dict(),
            "text_encoder": model.text_encoder.state_dict()}


def test_round_trip_is_exact(source, exported):
    assert {p.name for p in exported.iterdir()} == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert json.loads((exported / "unet/config.json").read_text())["attention_type"] == "gated"
    loaded = InteractDiffusionPipeline.from_checkpoint(exported, config=TINY, device="cpu").model
    for name, state in _sections(source).items():
        back = _sections(loaded)[name]
        assert set(back) == set(state), name
        for key, value in state.items():
            assert torch.equal(back[key], value), (name, key)


def test_fp16_folder_loads_into_fp32(source, tmp_path):
    folder = export_diffusers(source, tmp_path / "half", half=True)
    assert (folder / "unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = InteractDiffusionPipeline.from_checkpoint(folder, config=TINY, device="cpu").model
    for key, value in source.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value.half().float()), key


def test_exported_unet_equals_diffusers_own(source, exported):
    """diffusers' UNet2DConditionModel (attention_type "gated") from the folder, given the tokens of
    our interaction tokenizer in place of its GLIGEN one: the same output (fusers and backbone)."""
    from diffusers import UNet2DConditionModel
    theirs = UNet2DConditionModel.from_pretrained(exported, subfolder="unet", low_cpu_mem_usage=False,
                                                  ignore_mismatched_sizes=True).eval()
    cond = source.condition(["a person touching a cat"], [[HOI]])
    tokens = source.interaction_tokenizer(**cond.grounding.as_kwargs())

    class OurTokens(torch.nn.Module):
        def forward(self, **kwargs):
            return tokens
    theirs.position_net = OurTokens()
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        ours = source.unet(x, t, cond.context, tokens, 1.0)
        ref = theirs(x, t, encoder_hidden_states=cond.context, cross_attention_kwargs={"gligen": {}}).sample
        without = source.unet(x, t, cond.context, tokens, 0.0)
    assert (ours - without).abs().max() > 1e-3   # the fusers take part
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_sd_folder_written_by_diffusers_is_a_backbone(source, tmp_path, capsys):
    """A community fine-tune's layout, written by diffusers and transformers themselves from our
    tensors: read as --sd_ckpt beside interaction weights, the backbone is exactly theirs."""
    folder = export_diffusers(source, tmp_path / "x")
    from diffusers import UNet2DConditionModel
    sd = tmp_path / "sd-finetune"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).rename(sd / part) if sd.exists() else (sd.mkdir(), (folder / part).rename(sd / part))
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False,
                                                ignore_mismatched_sizes=True)
    config = {k: v for k, v in unet.config.items()
              if k not in ("attention_type", "interaction_tokenizer") and not k.startswith("_")}
    plain = UNet2DConditionModel(**config)
    plain.load_state_dict({k: v for k, v in unet.state_dict().items() if ".fuser." not in k
                           and not k.startswith("position_net.")})
    plain.save_pretrained(sd / "unet")
    interaction = tmp_path / "interaction.pth"
    save_checkpoint(interaction, source, interaction_only=True)
    loaded = InteractDiffusionPipeline.from_checkpoint(interaction, sd_ckpt=sd, config=TINY, device="cpu").model
    for name, state in _sections(source).items():
        for key, value in state.items():
            assert torch.equal(_sections(loaded)[name][key], value), (name, key)
    assert inspect(sd, TINY) == 0
    out = capsys.readouterr().out
    assert "diffusers folder: Stable Diffusion v1.x backbone" in out and "loads strictly" in out
    with pytest.raises(CheckpointError, match="holds no interaction weights .*pass it as --sd_ckpt"):
        InteractDiffusionPipeline.from_checkpoint(sd, config=TINY, device="cpu")


def test_inspect_names_an_interactdiffusion_folder(exported, capsys):
    assert inspect(exported, TINY) == 0
    out = capsys.readouterr().out
    assert "diffusers folder: InteractDiffusion checkpoint" in out and "loads strictly" in out


def test_a_folder_that_is_not_a_diffusers_layout_is_one_line(tmp_path, exported):
    (tmp_path / "vae").mkdir()
    run = subprocess.run([sys.executable, "inference_batch.py", "--ckpt", str(tmp_path), "--config", str(TINY),
                          "--folder", str(tmp_path / "out"), "--steps", "1", "--height", "32", "--width", "32"],
                         capture_output=True, text=True, cwd=REPO_ROOT, env={"HF_HUB_OFFLINE": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (f"error: {tmp_path}: not a diffusers model folder: no unet/ "
                                                   f"subfolder (expected unet/, vae/, text_encoder/, tokenizer/, "
                                                   f"scheduler/)")


@pytest.mark.slow
def test_export_cli_writes_the_embedded_model(tmp_path):
    run = subprocess.run([sys.executable, "-m", "interact.checkpoint", "export", "--format", "diffusers",
                          str(tmp_path / "toy")], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-1500:]
    from interact.batch import DEFAULT_CKPT, DEFAULT_CONFIG
    original = InteractDiffusionPipeline.from_checkpoint(DEFAULT_CKPT, config=DEFAULT_CONFIG, device="cpu").model
    back = InteractDiffusionPipeline.from_checkpoint(tmp_path / "toy", config=DEFAULT_CONFIG, device="cpu").model
    for key, value in original.unet.state_dict().items():
        assert torch.equal(back.unet.state_dict()[key], value), key
    assert any(is_interaction_key(k) for k in back.unet.state_dict())
    again = subprocess.run([sys.executable, "-m", "interact.checkpoint", "export", str(tmp_path / "toy")],
                           capture_output=True, text=True, cwd=REPO_ROOT, env={"HF_HUB_OFFLINE": "1",
                                                                              "PATH": "/usr/bin:/bin"})
    assert again.returncode == 2 and again.stderr.strip() == f"error: {tmp_path / 'toy'}: exists; choose a new folder"
