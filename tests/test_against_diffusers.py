"""The UNet and the VAE against an independent implementation: diffusers' UNet2DConditionModel
and AutoencoderKL, loaded through diffusers' own converter for SD v1.x original checkpoints.
Agreement shows that the LDM names are not only right in shape but mean the same computation."""
import pytest
import torch

S = pytest.importorskip("diffusers.loaders.single_file_utils", reason="diffusers (dev extra) not installed")
from diffusers import AutoencoderKL as DiffusersVAE  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from ldm.models.autoencoder import AutoencoderKL  # noqa: E402
from ldm.modules.diffusionmodules.openaimodel import UNetModel  # noqa: E402

UNET = dict(image_size=16, in_channels=4, out_channels=4, model_channels=64, num_res_blocks=2,
            attention_resolutions=[1, 2], channel_mult=[1, 2, 2], num_heads=4, transformer_depth=1, context_dim=32)
VAE = dict(ch=64, ch_mult=[1, 2], num_res_blocks=1, z_channels=4)
ORIGINAL_CONFIG = {"model": {"params": {
    "unet_config": {"params": {**UNET, "use_linear_in_transformer": False, "num_head_channels": -1}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        **VAE, "in_channels": 3, "out_ch": 3, "double_z": True, "resolution": 32, "attn_resolutions": []}}},
    "scale_factor": 0.18215}}}


def perturbed(module):
    """Random weights everywhere (zero-initialised output convs included)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module.eval()


def test_unet_matches_diffusers():
    """In float64, so that agreement is exact up to rounding (~1e-12) and a small difference in
    the computation (a GroupNorm eps of 1e-6 instead of SD's 1e-5, which moves the output by
    ~1e-6 here) fails the check."""
    unet = perturbed(UNetModel(**UNET)).double()
    ckpt = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    config = S.create_unet_diffusers_config_from_ldm(ORIGINAL_CONFIG, ckpt)
    theirs = UNet2DConditionModel(**config).double().eval()
    theirs.load_state_dict(S.convert_ldm_unet_checkpoint(ckpt, config), strict=True)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64), torch.tensor([10, 700])
    ctx = torch.randn(2, 7, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = unet(x, t, ctx)
        ref = theirs(x, t, encoder_hidden_states=ctx).sample
        for m in unet.modules():   # the same UNet with the VAE's eps in its ResBlock norms
            if isinstance(m, torch.nn.GroupNorm) and m.eps == 1e-5:
                m.eps = 1e-6
        wrong_eps = unet(x, t, ctx)
    assert ours.abs().max() > 0.1  # a real signal, not two zero outputs
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-9)
    assert (wrong_eps - ref).abs().max() > 1e-8   # the check would catch the eps


def test_vae_matches_diffusers():
    vae = perturbed(AutoencoderKL(**VAE))
    ckpt = {"first_stage_model." + k: v for k, v in vae.state_dict().items()}
    config = S.create_vae_diffusers_config_from_ldm(ORIGINAL_CONFIG, ckpt)
    theirs = DiffusersVAE(**config).eval()
    theirs.load_state_dict(S.convert_ldm_vae_checkpoint(ckpt, config), strict=True)
    image, z = torch.randn(1, 3, 32, 32), torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), theirs.decode(z).sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.encode(image).mean, theirs.encode(image).latent_dist.mean, atol=1e-4,
                                   rtol=1e-4)
