"""Diffusers folders: our name maps against diffusers' converter; a model exported and read back
exactly; the exported UNet (InteractDiffusion and GLIGEN) against diffusers' own
UNet2DConditionModel; an SD folder written by diffusers' and transformers' own save_pretrained,
read by us and compared numerically with their forwards; inspect; bad folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

import inference_batch
from helpers import TINY_CONFIG, randomize_, with_tokens
from hoi.records import GroundedPhrase, Interaction
from interact.checkpoint import CheckpointError, inspect, main, save_checkpoint
from interact.checkpoint.diffusers_folder import (diffusers_to_ldm_unet, diffusers_to_ldm_vae, export_diffusers,
                                                  ldm_to_diffusers_unet, ldm_to_diffusers_vae)
from interact.model import CONFIG_DIR, build_model, is_interaction_key, load_config
from interact.pipeline import InteractDiffusionPipeline

S = pytest.importorskip("diffusers.loaders.single_file_utils", reason="diffusers not installed")
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402

TINY = TINY_CONFIG
HOI = Interaction("person", "touch", "cat", (0.1, 0.1, 0.5, 0.9), (0.5, 0.5, 0.9, 0.9))
G = torch.Generator


def _perturb(*modules, seed=1):
    for i, module in enumerate(modules):
        randomize_(module, seed + i, std=0.05, add=True)


@pytest.fixture(scope="module")
def source():
    """A tiny model with every weight moved off its initial value (fuser gates open)."""
    pipe = InteractDiffusionPipeline.from_config(TINY, seed=3, device="cpu")
    _perturb(pipe.model.unet, pipe.model.autoencoder)
    return pipe.model


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    return export_diffusers(source, tmp_path_factory.mktemp("d") / "interact-diffusers")


def _sections(model) -> dict:
    return {"unet": model.unet.state_dict(), "autoencoder": model.autoencoder.state_dict(),
            "text_encoder": model.text_encoder.state_dict()}


def _storage_map(converted: dict, original: dict, prefix: str) -> dict[str, str]:
    """{original name without prefix: converted name}: diffusers' converter copies tensors, so
    each output shares its input's storage."""
    by_pointer = {t.untyped_storage().data_ptr(): k[len(prefix):] for k, t in original.items()}
    return {by_pointer[t.untyped_storage().data_ptr()]: k for k, t in converted.items()}


@pytest.mark.parametrize("config", ["tiny_random.yaml", "sd_v1_interact.yaml"])
def test_name_maps_match_diffusers_converter_and_invert(config):
    """Both directions of our maps from names alone; LDM -> diffusers equals what diffusers'
    converter for SD originals does (run on one-element stand-ins of each shape, at SD size too)."""
    model = build_model(load_config(CONFIG_DIR / config), device="meta")
    params = model.config.model.params
    unet = model.unet.state_dict()
    forward = ldm_to_diffusers_unet(unet)
    assert None not in forward.values()
    assert diffusers_to_ldm_unet(forward.values()) == {v: k for k, v in forward.items()}
    backbone = {"model.diffusion_model." + k: torch.zeros(1).expand(v.shape) for k, v in unet.items()
                if not is_interaction_key(k)}
    ddconfig = {**OmegaConf.to_container(model.config.autoencoder.params), "resolution": 256, "attn_resolutions": [],
                "in_channels": 3, "out_ch": 3}
    original = {"model": {"params": {  # the original SD config diffusers' converter reads
        "unet_config": {"params": {**OmegaConf.to_container(params), "use_linear_in_transformer": False}},
        "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": ddconfig}}}}}
    unet_config = S.create_unet_diffusers_config_from_ldm(original, backbone)
    theirs = _storage_map(S.convert_ldm_unet_checkpoint(backbone, unet_config), backbone, "model.diffusion_model.")
    assert theirs == {k: v for k, v in forward.items() if not is_interaction_key(k)}
    # the fusers sit in the transformer block diffusers names, the tokenizer keeps its names
    fuser = next(k for k in forward if ".fuser.attn.to_q." in k)
    block = fuser.split("fuser.")[0]
    assert forward[fuser] == forward[block + "attn1.to_q.weight"].replace("attn1.to_q.", "fuser.attn.to_q.")
    assert forward["position_net.linear_action.0.weight"] == "position_net.linear_action.0.weight"
    vae = model.autoencoder.state_dict()
    vae_forward = ldm_to_diffusers_vae(vae)
    assert diffusers_to_ldm_vae(vae_forward.values()) == {v: k for k, v in vae_forward.items()}
    stand_ins = {"first_stage_model." + k: torch.zeros(1).expand(v.shape) for k, v in vae.items()}
    vae_config = S.create_vae_diffusers_config_from_ldm(original, stand_ins)
    assert _storage_map(S.convert_ldm_vae_checkpoint(stand_ins, vae_config), stand_ins,
                        "first_stage_model.") == vae_forward


def test_round_trip_is_exact(source, exported):
    assert {p.name for p in exported.iterdir()} == {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                                   "interactdiffusion_config.yaml"}
    config = json.loads((exported / "unet/config.json").read_text())
    assert config["attention_type"] == "gated" and config["_class_name"] == "UNet2DConditionModel"
    loaded = InteractDiffusionPipeline.from_checkpoint(exported, config=TINY, device="cpu").model
    for name, state in _sections(source).items():
        back = _sections(loaded)[name]
        assert set(back) == set(state), name
        for key, value in state.items():
            assert torch.equal(back[key], value), (name, key)
    # the interaction tokenizer read back makes the same tokens as the original
    cond = source.condition(["a person touching a cat"], [[HOI, HOI]])
    with torch.no_grad():
        assert torch.equal(loaded.interaction_tokenizer(**cond.controls["interaction"].as_kwargs()),
                           source.interaction_tokenizer(**cond.controls["interaction"].as_kwargs()))


def test_fp16_folder_loads_into_fp32(source, tmp_path):
    folder = export_diffusers(source, tmp_path / "half", half=True)
    assert (folder / "unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (folder / "text_encoder/model.fp16.safetensors").is_file()
    loaded = InteractDiffusionPipeline.from_checkpoint(folder, config=TINY, device="cpu").model
    for key, value in source.unet.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value.half().float()), key


class GivenTokens(torch.nn.Module):
    """diffusers' UNet hands cross_attention_kwargs["gligen"] to its position_net and the result
    to every fuser as `objs`: this one passes our tokenizer's tokens through."""

    def forward(self, objs):
        return objs


def test_exported_unet_equals_diffusers_own(source, exported):
    """diffusers' UNet2DConditionModel (attention_type "gated") from the folder, fed the tokens of
    our interaction tokenizer: the same output, fusers and backbone."""
    theirs = UNet2DConditionModel.from_pretrained(exported, subfolder="unet", low_cpu_mem_usage=False,
                                                  ignore_mismatched_sizes=True).eval()
    theirs.position_net = GivenTokens()   # its GLIGEN tokenizer has no action tokens
    cond = source.condition(["a person touching a cat"], [[HOI]])
    tokens = source.interaction_tokenizer(**cond.controls["interaction"].as_kwargs())
    x, t = torch.randn(1, 4, 16, 16, generator=G().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        ours = source.unet(x, t, cond.context, with_tokens(tokens, 1.0, key="interaction"))
        ref = theirs(x, t, encoder_hidden_states=cond.context, cross_attention_kwargs={"gligen": {"objs": tokens}}
                     ).sample
        without = source.unet(x, t, cond.context, with_tokens(tokens, 0.0, key="interaction"))
    assert (ours - without).abs().max() > 1e-3   # the fusers take part
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def gligen_model(tmp_path_factory):
    """A tiny GLIGEN model at diffusers' fixed tokenizer width (512), every weight random."""
    config = load_config(TINY)
    config.interaction.position_net.target = "interact.controls.phrases.GLIGENPositionNet"
    config.interaction.position_net.params.hidden_dim = 512
    path = tmp_path_factory.mktemp("gligen") / "tiny_gligen.yaml"
    OmegaConf.save(config, path)
    pipe = InteractDiffusionPipeline.from_config(path, seed=4, device="cpu")
    _perturb(pipe.model.unet, seed=2)
    randomize_(pipe.model.interaction_tokenizer, seed=3, std=0.1)
    return path, pipe.model


def test_exported_gligen_runs_in_diffusers_with_its_own_tokenizer(gligen_model, tmp_path):
    """A GLIGEN model's folder loads into diffusers' UNet2DConditionModel with no name or shape
    left over, and diffusers' own GLIGEN tokenizer gives our tokens and our UNet output."""
    config, model = gligen_model
    out = tmp_path / "gligen"
    assert main(["export", "--format", "diffusers", str(out), "--config", str(config),
                 "--ckpt", str(_saved(model, tmp_path / "g.pth"))]) == 0
    theirs, info = UNet2DConditionModel.from_pretrained(out, subfolder="unet", low_cpu_mem_usage=False,
                                                        output_loading_info=True)
    assert not any(info.values()), info
    theirs.eval()
    phrases = [GroundedPhrase("person", (0.1, 0.1, 0.5, 0.9)), GroundedPhrase("cup", (0.4, 0.45, 0.6, 0.7))]
    cond = model.condition(["a person with a cup"], [phrases])
    grounding = cond.controls["phrases"].as_kwargs()
    x, t = torch.randn(1, 4, 16, 16, generator=G().manual_seed(1)), torch.tensor([300])
    with torch.no_grad():
        tokens = model.interaction_tokenizer(**grounding)
        their_tokens = theirs.position_net(boxes=grounding["boxes"], masks=grounding["masks"],
                                           positive_embeddings=grounding["embeddings"])
        ours = model.unet(x, t, cond.context, with_tokens(tokens, 1.0, key="phrases"))
        ref = theirs(x, t, encoder_hidden_states=cond.context, cross_attention_kwargs={"gligen": {
            "boxes": grounding["boxes"], "masks": grounding["masks"], "positive_embeddings": grounding["embeddings"]}}
                     ).sample
    torch.testing.assert_close(their_tokens, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert inspect(out, config) == 0


def _saved(model, path):
    save_checkpoint(path, model)
    return path


# ----------------------------------------------------------------------------- an SD folder by diffusers

def _tiny_sd_folder(folder, swapped=("cat</w>", "dog</w>")):
    """A community fine-tune's layout at the tiny config's sizes, every part written by diffusers'
    and transformers' own save_pretrained from random weights; the tokenizer's vocab.json with
    two tokens' ids swapped (a vocabulary only this folder has); the VAE as a .bin file."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ldm.modules.encoders.clip_tokenizer import _read_open_clip_bpe, _write_vocab_files, open_clip_vocab_path
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=32))
    for module in (unet, vae, text):
        _perturb(module, seed=5)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae", safe_serialization=False)
    text.save_pretrained(folder / "text_encoder")
    vocab, merges = _read_open_clip_bpe(open_clip_vocab_path())
    vocab = dict(vocab)
    a, b = swapped
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (folder / "tokenizer").mkdir()
    _write_vocab_files(str(folder / "tokenizer"), vocab, merges)
    (folder / "scheduler").mkdir()
    (folder / "scheduler/scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000}))
    return unet.eval(), vae.eval(), text.eval(), vocab


def test_sd_folder_written_by_diffusers_matches_their_forwards(tmp_path, capsys):
    folder = tmp_path / "sd-finetune"
    unet, vae, text, vocab = _tiny_sd_folder(folder)
    assert (folder / "vae/diffusion_pytorch_model.bin").is_file()
    model = InteractDiffusionPipeline.from_checkpoint(sd_ckpt=folder, config=TINY, device="cpu").model
    # the folder's own vocabulary is the one used
    from ldm.modules.encoders.clip_tokenizer import load_clip_tokenizer
    ids = model.text_encoder.tokenize(["a cat"])[0]
    assert ids[2].item() == vocab["cat</w>"] != load_clip_tokenizer().convert_tokens_to_ids("cat</w>")
    g = G().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 7, 32, generator=g)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, ctx), unet(x, t, encoder_hidden_states=ctx).sample,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.autoencoder.decode(z), vae.decode(z).sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.text_encoder.encode(["a cat on a mat"]),
                                   text(model.text_encoder.tokenize(["a cat on a mat"])).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
    assert inspect(folder, TINY) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{folder}: diffusers Stable Diffusion folder (") and "loads strictly" in out
    with pytest.raises(CheckpointError, match="holds no interaction weights .*pass it as --sd_ckpt"):
        InteractDiffusionPipeline.from_checkpoint(folder, config=TINY, device="cpu")


def test_sd_folder_as_backbone_beside_interaction_weights(source, tmp_path):
    """--sd_ckpt DIR + an interaction-only --ckpt: the backbone is the folder's, exactly."""
    folder = tmp_path / "sd"
    unet, vae, text, _ = _tiny_sd_folder(folder)
    interaction = tmp_path / "interaction.pth"
    save_checkpoint(interaction, source, interaction_only=True)
    model = InteractDiffusionPipeline.from_checkpoint(interaction, sd_ckpt=folder, config=TINY, device="cpu").model
    to_ldm = diffusers_to_ldm_unet(unet.state_dict())
    for key, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[to_ldm[key]], value), key
    for key, value in source.unet.state_dict().items():
        if is_interaction_key(key):
            assert torch.equal(model.unet.state_dict()[key], value), key


# ----------------------------------------------------------------------------- inspect, the CLI, errors

def test_inspect_names_an_interactdiffusion_folder(exported, capsys):
    assert inspect(exported, TINY) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{exported}: diffusers InteractDiffusion folder (") and "loads strictly" in out


def test_inspect_lists_what_does_not_fit(exported, tmp_path, capsys):
    """A folder of another architecture and a foreign tensor: listed like a file's differences."""
    from safetensors.torch import load_file, save_file
    folder = tmp_path / "other"
    folder.mkdir()
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).symlink_to(exported / part)
    (folder / "unet").mkdir()
    (folder / "unet/config.json").write_text((exported / "unet/config.json").read_text())
    state = load_file(exported / "unet/diffusion_pytorch_model.safetensors")
    state["add_embedding.linear_1.weight"] = torch.zeros(2, 2)
    del state["conv_out.bias"]
    state["conv_in.weight"] = torch.zeros(32, 9, 3, 3)
    save_file(state, folder / "unet/diffusion_pytorch_model.safetensors")
    assert inspect(folder, TINY) == 1
    out = capsys.readouterr().out
    assert "does NOT load strictly" in out
    assert "model: 1 missing: out.2.bias" in out
    assert "model: 1 unexpected: add_embedding.linear_1.weight" in out
    assert "input_blocks.0.0.weight file [32, 9, 3, 3] vs model [32, 4, 3, 3]" in out


def test_a_folder_that_is_not_a_diffusers_layout_is_one_line(tmp_path, capsys):
    (tmp_path / "vae").mkdir()
    assert inference_batch.main(["--ckpt", str(tmp_path), "--config", str(TINY), "--folder", str(tmp_path / "out"),
                                 "--steps", "1"]) == 2
    expected = (f"error: {tmp_path}: not a diffusers model folder: no unet/ subfolder (expected unet/, vae/, "
                f"text_encoder/, tokenizer/, scheduler/)")
    assert capsys.readouterr().err.strip().splitlines()[-1] == expected
    assert main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == expected
    (tmp_path / "unet").mkdir()
    assert main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a diffusers model folder: no unet/config.json"


def test_inference_batch_generates_from_a_folder(exported, tmp_path):
    layouts = tmp_path / "layouts.json"
    layouts.write_text(json.dumps([{"prompt": "a person touching a cat", "subject_phrases": ["person"],
                                    "action_phrases": ["touch"], "object_phrases": ["cat"],
                                    "subject_boxes": [[0.1, 0.1, 0.5, 0.9]], "object_boxes": [[0.5, 0.5, 0.9, 0.9]]}]))
    out = tmp_path / "out"
    assert inference_batch.main(["--ckpt", str(exported), "--config", str(TINY), "--input", str(layouts),
                                 "--folder", str(out), "--steps", "2", "--height", "32", "--width", "32",
                                 "--device", "cpu"]) == 0
    assert len(list(out.rglob("*.png"))) >= 1


@pytest.mark.slow
def test_export_cli_writes_the_embedded_model(tmp_path, capsys):
    assert main(["export", "--format", "diffusers", str(tmp_path / "toy")]) == 0
    from interact.batch import DEFAULT_CKPT, DEFAULT_CONFIG
    original = InteractDiffusionPipeline.from_checkpoint(DEFAULT_CKPT, config=DEFAULT_CONFIG, device="cpu").model
    back = InteractDiffusionPipeline.from_checkpoint(tmp_path / "toy", config=DEFAULT_CONFIG, device="cpu").model
    for key, value in original.unet.state_dict().items():
        assert torch.equal(back.unet.state_dict()[key], value), key
    assert any(is_interaction_key(k) for k in back.unet.state_dict())
    capsys.readouterr()
    assert main(["export", str(tmp_path / "toy")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'toy'}: exists; choose a new folder"


def test_an_empty_tokenizer_folder_is_an_error_not_a_tiny_vocabulary(exported, tmp_path):
    """transformers would build a 3-token vocabulary from an empty folder without complaint."""
    folder = tmp_path / "no-vocab"
    folder.mkdir()
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        (folder / part).symlink_to(exported / part)
    (folder / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer holds no CLIP tokenizer .*vocab.json"):
        InteractDiffusionPipeline.from_checkpoint(folder, config=TINY, device="cpu")


class ReleasedInteractionTokenizer(torch.nn.Module):
    """The tensors of the released diffusers InteractDiffusion UNet's `position_net` (names and
    widths: 512-wide MLPs, 32 instance embeddings, 3 role embeddings), for writing the layout."""

    def __init__(self, dim: int):
        super().__init__()
        mlp = lambda: torch.nn.Sequential(torch.nn.Linear(dim + 64, 512), torch.nn.SiLU(),  # noqa: E731
                                          torch.nn.Linear(512, 512), torch.nn.SiLU(), torch.nn.Linear(512, dim))
        self.linears, self.linear_action = mlp(), mlp()
        self.null_positive_feature = torch.nn.Parameter(torch.randn(dim))
        self.null_action_feature = torch.nn.Parameter(torch.randn(dim))
        self.null_position_feature = torch.nn.Parameter(torch.randn(64))
        self.interaction_embedding = torch.nn.Module()
        self.interaction_embedding.emb = torch.nn.Embedding(32, dim)
        self.position_embedding = torch.nn.Module()
        self.position_embedding.emb = torch.nn.Embedding(3, dim)


def test_released_layout_written_by_diffusers_loads(tmp_path):
    """The released diffusers-v1-2 layout at tiny size: diffusers' gated UNet with the released
    tokenizer's tensors, saved by diffusers' save_pretrained as an fp16 variant: every tensor
    lands where our names say (the 2 instance rows past 30 dropped), and the UNet output equals
    diffusers' fed the same tokens."""
    config = load_config(TINY)
    config.interaction.position_net.params.hidden_dim = 512
    config_path = tmp_path / "tiny512.yaml"
    OmegaConf.save(config, config_path)
    folder = tmp_path / "released"
    _tiny_sd_folder(folder, swapped=("a</w>", "a</w>"))
    torch.manual_seed(7)
    theirs = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                  attention_head_dim=4, norm_num_groups=8, attention_type="gated")
    theirs.position_net = ReleasedInteractionTokenizer(32)
    _perturb(theirs, seed=8)   # fuser gates open, nothing at its initial value
    shutil.rmtree(folder / "unet")
    theirs.half().save_pretrained(folder / "unet", variant="fp16")
    theirs.float().eval()
    assert (folder / "unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    model = InteractDiffusionPipeline.from_checkpoint(folder, config=config_path, device="cpu").model
    ours = model.unet.state_dict()
    to_ldm = diffusers_to_ldm_unet(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        expected = value[:30] if key == "position_net.interaction_embedding.emb.weight" else value
        assert torch.equal(ours[to_ldm[key]], expected), key
    cond = model.condition(["a person touching a cat"], [[HOI]])
    x, t = torch.randn(1, 4, 16, 16, generator=G().manual_seed(2)), torch.tensor([400])
    with torch.no_grad():
        tokens = model.interaction_tokenizer(**cond.controls["interaction"].as_kwargs())
        theirs.position_net = GivenTokens()
        torch.testing.assert_close(model.unet(x, t, cond.context, with_tokens(tokens, 1.0, key="interaction")),
                                   theirs(x, t, encoder_hidden_states=cond.context,
                                          cross_attention_kwargs={"gligen": {"objs": tokens}}).sample,
                                   atol=1e-5, rtol=1e-5)


def test_an_sd_backbone_exports_as_a_plain_sd_folder(source, tmp_path):
    """`export --sd_ckpt` alone: a plain SD folder (no fusers, no tokenizer, not "gated") that
    diffusers' UNet2DConditionModel loads with no key left over, its forward the backbone's."""
    from helpers import sd_original_file
    sd = sd_original_file(source, tmp_path / "sd.ckpt")
    out = tmp_path / "sd-folder"
    assert main(["export", str(out), "--sd_ckpt", str(sd), "--config", str(TINY)]) == 0
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert "attention_type" not in unet_config and "interaction" not in unet_config
    theirs, info = UNet2DConditionModel.from_pretrained(out, subfolder="unet", low_cpu_mem_usage=False,
                                                        output_loading_info=True)
    assert not any(info.values()), info
    x, t, ctx = torch.randn(1, 4, 16, 16, generator=G().manual_seed(2)), torch.tensor([500]), torch.randn(1, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x, t, encoder_hidden_states=ctx).sample,
                                   source.unet(x, t, ctx), atol=1e-5, rtol=1e-5)
