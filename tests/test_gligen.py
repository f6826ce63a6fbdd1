"""GLIGEN box + text checkpoints for generation: the released layout loads strictly into GLIGEN's
tokenizer, whose tokens match a slow reference; phrases and boxes, and interactions turned into
them; the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import inference_batch
from helpers import TINY_CONFIG, fourier_reference, open_gates, randomize_
from hoi.records import ConditionError, GroundedPhrase, Interaction
from interact.controls.phrases import phrases_from_interactions
from interact.checkpoint import CheckpointError, save_checkpoint
from interact.checkpoint.diffusers_folder import peek_kind
from interact.checkpoint.formats import classify, config_for_kind, read_file
from interact.model import SD_V1_GLIGEN_CONFIG, load_config
from interact.pipeline import InteractDiffusionPipeline
from interact.controls.phrases import GLIGENPositionNet

TINY = TINY_CONFIG
FAST = dict(steps=2, height=32, width=32, progress=False, output_type="pt", sampler="ddim")
# The released GLIGEN tokenizer's tensors (name: shape), at SD v1.x size (docs/reference.md §3).
RELEASED_POSITION_NET = {
    "position_net.null_positive_feature": (768,), "position_net.null_position_feature": (64,),
    "position_net.linears.0.weight": (512, 832), "position_net.linears.0.bias": (512,),
    "position_net.linears.2.weight": (512, 512), "position_net.linears.2.bias": (512,),
    "position_net.linears.4.weight": (768, 512), "position_net.linears.4.bias": (768,),
}


@pytest.fixture(scope="module")
def tiny_gligen_config(tmp_path_factory):
    config = load_config(TINY)
    config.interaction.position_net.target = "interact.controls.phrases.GLIGENPositionNet"
    path = tmp_path_factory.mktemp("gligen") / "tiny_gligen.yaml"
    OmegaConf.save(config, path)
    return path


@pytest.fixture(scope="module")
def gligen_file(tiny_gligen_config, tmp_path_factory):
    """A tiny GLIGEN checkpoint in the released dict layout, with open fuser gates."""
    pipe = InteractDiffusionPipeline.from_config(tiny_gligen_config, seed=5, device="cpu")
    randomize_(pipe.model.interaction_tokenizer, seed=1)
    open_gates(pipe.model)
    path = tmp_path_factory.mktemp("gligen") / "gligen.pth"
    save_checkpoint(path, pipe.model)
    return path


def test_the_sd_size_gligen_tokenizer_has_the_released_names_and_shapes():
    from interact.model import build_model
    model = build_model(load_config(SD_V1_GLIGEN_CONFIG), device="meta")
    state = {k: tuple(v.shape) for k, v in model.unet.state_dict().items() if k.startswith("position_net.")}
    assert state == RELEASED_POSITION_NET


def test_tokens_match_a_slow_reference():
    torch.manual_seed(0)
    net = GLIGENPositionNet(in_dim=6, out_dim=5, max_interactions=3, hidden_dim=7).double()
    randomize_(net, seed=2)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.9], [0.3, 0.3, 0.6, 0.4], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    masks = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    text = torch.randn(1, 3, 6, dtype=torch.float64)
    got = net(boxes, masks, text)
    for j in range(3):
        if masks[0, j]:
            feature = torch.cat([text[0, j], torch.tensor(fourier_reference(boxes[0, j].tolist()), dtype=torch.float64)])
        else:  # a padded slot: both nulls
            feature = torch.cat([net.null_positive_feature, net.null_position_feature])
        hidden = torch.nn.functional.silu(feature @ net.linears[0].weight.T + net.linears[0].bias)
        hidden = torch.nn.functional.silu(hidden @ net.linears[2].weight.T + net.linears[2].bias)
        torch.testing.assert_close(got[0, j], hidden @ net.linears[4].weight.T + net.linears[4].bias)


def test_released_layout_loads_strictly_and_the_config_is_picked(gligen_file, tiny_gligen_config):
    raw = read_file(gligen_file)
    assert classify(raw) == "gligen" and peek_kind(gligen_file) == "gligen"
    assert config_for_kind(classify(raw)) == SD_V1_GLIGEN_CONFIG
    assert {k for k in raw["model"] if k.startswith("position_net.")} == set(RELEASED_POSITION_NET)
    pipe = InteractDiffusionPipeline.from_checkpoint(gligen_file, config=tiny_gligen_config, device="cpu")
    assert pipe.model.trained_control.name == "phrases"
    for key, value in raw["model"].items():
        torch.testing.assert_close(pipe.model.unet.state_dict()[key], value.float())


def test_phrases_and_interactions_generate(gligen_file, tiny_gligen_config):
    pipe = InteractDiffusionPipeline.from_checkpoint(gligen_file, config=tiny_gligen_config, device="cpu")
    phrases = [GroundedPhrase("person", (0.1, 0.1, 0.5, 0.9)), GroundedPhrase("cup", (0.4, 0.4, 0.6, 0.6))]
    it = Interaction("person", "holding", "cup", (0.1, 0.1, 0.5, 0.9), (0.4, 0.4, 0.6, 0.6))
    a = pipe("a person holding a cup", phrases, seed=0, **FAST)
    b = pipe("a person holding a cup", [it], seed=0, **FAST)          # the same phrases and boxes
    c = pipe("a person holding a cup", phrases[:1], seed=0, **FAST)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_interactions_become_distinct_phrases():
    a = Interaction("person", "hold", "cup", (0.1, 0.1, 0.5, 0.9), (0.4, 0.4, 0.6, 0.6))
    b = Interaction("person", "drink with", "cup", (0.1, 0.1, 0.5, 0.9), (0.4, 0.4, 0.6, 0.6))
    c = Interaction("person", "ride", "horse", (0.6, 0.1, 0.9, 0.9), (0.5, 0.5, 1.0, 1.0))
    assert phrases_from_interactions([a, b, c]) == [
        GroundedPhrase("person", a.subject_box), GroundedPhrase("cup", a.object_box),
        GroundedPhrase("person", c.subject_box), GroundedPhrase("horse", c.object_box)]


def test_wrong_model_for_the_input_or_the_file(gligen_file, tiny_gligen_config, tmp_path):
    with pytest.raises(ValueError, match=r"role_embedding = 'typed': an InteractDiffusion option"):
        InteractDiffusionPipeline.from_checkpoint(gligen_file, config=tiny_gligen_config, device="cpu",
                                                  interaction={"role_embedding": "typed"})
    with pytest.raises(CheckpointError, match="is a GLIGEN checkpoint, and the config is InteractDiffusion's: generate with configs/sd_v1_gligen.yaml"):
        InteractDiffusionPipeline.from_checkpoint(gligen_file, config=TINY, device="cpu")
    interact = tmp_path / "interact.pth"
    save_checkpoint(interact, InteractDiffusionPipeline.from_config(TINY, device="cpu").model)
    with pytest.raises(CheckpointError, match="is an InteractDiffusion checkpoint, and the config is GLIGEN's: generate "
                                              "with configs/sd_v1_interact.yaml"):
        InteractDiffusionPipeline.from_checkpoint(interact, config=tiny_gligen_config, device="cpu")
    tiny = InteractDiffusionPipeline.from_config(TINY, device="cpu")
    with pytest.raises(ConditionError, match="phrases and boxes are GLIGEN's input; this InteractDiffusion model takes "
                                             "interactions"):
        tiny("a cup", [GroundedPhrase("cup", (0.1, 0.1, 0.5, 0.5))], **FAST)


def test_batch_records_with_phrases_and_their_errors(gligen_file, tiny_gligen_config, tmp_path, capsys):
    layouts = tmp_path / "l.json"
    layouts.write_text(json.dumps([
        {"prompt": "a person and a cup", "phrases": ["person", "cup"], "boxes": [[0.1, 0.1, 0.5, 0.9], [0.4, 0.4, 0.6, 0.6]]},
        {"prompt": "a person holding a cup", "subject_phrases": ["person"], "action_phrases": ["holding"],
         "object_phrases": ["cup"], "subject_boxes": [[0.1, 0.1, 0.5, 0.9]], "object_boxes": [[0.4, 0.4, 0.6, 0.6]]}]))
    argv = ["--input", layouts, "--ckpt", gligen_file, "--config", tiny_gligen_config, "--steps", "2", "--height",
            "32", "--width", "32", "--device", "cpu", "--seed", "4"]
    assert inference_batch.main([str(a) for a in argv + ["--folder", tmp_path / "out"]]) == 0
    sidecar = json.loads((tmp_path / "out/00000.json").read_text())
    assert sidecar["phrases"] == [{"phrase": "person", "box": [0.1, 0.1, 0.5, 0.9]},
                                       {"phrase": "cup", "box": [0.4, 0.4, 0.6, 0.6]}]
    assert Image.open(tmp_path / "out/00000_layout.png").size[0] >= 256
    bad = [({"prompt": "p", "phrases": ["a", "b"], "boxes": [[0, 0, 1, 1]]}, "record 0: 2 phrases but 1 boxes"),
           ({"prompt": "p", "phrases": ["a"] * 31, "boxes": [[0, 0, 1, 1]] * 31}, "record 0: 31 phrases; at most 30"),
           ({"prompt": "p", "phrases": ["a"], "boxes": [[0, 0, 1.5, 1]]}, "record 0, boxes[0] = [0, 0, 1.5, 1]")]
    for record, message in bad:
        layouts.write_text(json.dumps([record]))
        assert inference_batch.main([str(a) for a in argv + ["--folder", tmp_path / "bad"]]) == 2
        err = capsys.readouterr().err
        assert f"error: {layouts}: {message}" in err and "Traceback" not in err
    assert np.asarray(Image.open(tmp_path / "out/00001.png")).std() > 0


def test_the_papers_three_rows_from_one_layout_file(gligen_file, tiny_gligen_config, tmp_path):
    """SD alone (an SD file, no interaction weights: every fuser gate 0), GLIGEN and
    InteractDiffusion, generated from one layouts file with the same seeds."""
    from experiments.hico_table import generate_rows
    from helpers import sd_original_file
    source = InteractDiffusionPipeline.from_config(TINY, seed=8, device="cpu")
    open_gates(source.model, 1.0, 0.0)
    sd_file = sd_original_file(source.model, tmp_path / "sd.ckpt")
    interaction = tmp_path / "interaction.pth"
    save_checkpoint(interaction, source.model, interaction_only=True)
    layouts = tmp_path / "layouts.json"
    record = {"prompt": "a person holding a cup", "subject_phrases": ["person"], "action_phrases": ["holding"],
              "object_phrases": ["cup"], "subject_boxes": [[0.1, 0.1, 0.5, 0.9]], "object_boxes": [[0.4, 0.4, 0.6, 0.6]]}
    layouts.write_text(json.dumps([record]))
    folders = generate_rows(str(layouts), str(tmp_path / "gen"), str(sd_file), str(gligen_file), str(interaction),
                            seed=5, sampling={"steps": 2, "height": 32, "width": 32},
                            configs={"sd": TINY, "gligen": tiny_gligen_config, "interactdiffusion": TINY},
                            device="cpu")
    assert list(folders) == ["Stable Diffusion", "GLIGEN", "InteractDiffusion"]
    images = {name: np.asarray(Image.open(f"{folder}/00000.png")).astype(int) for name, folder in folders.items()}
    plain = np.asarray(source(record["prompt"], None, seed=5, steps=2, height=32, width=32, scheduled_sampling=0.0,
                              progress=False)[0]).astype(int)
    assert np.abs(images["Stable Diffusion"] - plain).max() <= 1   # the SD row is the backbone alone
    grounded = np.asarray(source(record["prompt"], [Interaction("person", "holding", "cup", (0.1, 0.1, 0.5, 0.9),
                                                                (0.4, 0.4, 0.6, 0.6))],
                                 seed=5, steps=2, height=32, width=32, progress=False)[0]).astype(int)
    assert np.abs(images["InteractDiffusion"] - grounded).max() <= 1
    assert np.abs(images["InteractDiffusion"] - images["Stable Diffusion"]).max() > 0
    sidecar = json.loads((tmp_path / "gen/gligen/00000.json").read_text())
    assert sidecar["model"] == str(gligen_file) and sidecar["interactions"][0]["subject"] == "person"
