"""Tests for ldm.models.autoencoder.AutoencoderKL (CPU, fp32, tiny sizes)."""

import pytest
import torch

from ldm.models.autoencoder import AutoencoderKL, DiagonalGaussian

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8)


def tiny_model(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY).eval()


def test_full_size_state_dict_matches_manifest(manifest):
    expected = manifest["autoencoder"]
    assert len(expected) == 248
    with torch.device("meta"):
        model = AutoencoderKL()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}
    assert model.downsample_factor == 8


@torch.no_grad()
def test_tiny_round_trip_shapes_and_posterior():
    model = tiny_model()
    assert model.downsample_factor == 2
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    post = model.encode(x)
    assert isinstance(post, DiagonalGaussian)
    assert post.mean.shape == (2, 4, 16, 16)
    assert post.std.shape == (2, 4, 16, 16)

    # mean/logvar are the two channel halves of quant_conv's output.
    params = model.quant_conv(model.encoder(x))
    mean, logvar = params.chunk(2, dim=1)
    torch.testing.assert_close(post.mean, mean)
    torch.testing.assert_close(post.std, torch.exp(0.5 * logvar.clamp(-30, 20)))
    assert torch.equal(post.mode(), post.mean)

    s1 = post.sample(torch.Generator().manual_seed(7))
    s2 = post.sample(torch.Generator().manual_seed(7))
    s3 = post.sample(torch.Generator().manual_seed(8))
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, s3)
    assert not torch.equal(s1, post.mean)

    img = model.decode(s1)
    assert img.shape == (2, 3, 32, 32)
    assert torch.isfinite(img).all()


def test_logvar_clamp():
    params = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 100.0)], dim=1)
    params[:, 4:, 0, 0] = -100.0
    post = DiagonalGaussian(params)
    assert torch.allclose(post.std[:, :, 1, 1], torch.tensor(20.0 * 0.5).exp())
    assert torch.allclose(post.std[:, :, 0, 0], torch.tensor(-30.0 * 0.5).exp())


@torch.no_grad()
def test_mid_attention_matches_naive_softmax():
    model = tiny_model(seed=1)
    attn = model.decoder.mid.attn_1
    # Non-trivial norm affine so a missing norm would show.
    attn.norm.weight.normal_()
    attn.norm.bias.normal_()
    x = torch.randn(2, 64, 5, 6)
    b, c, h, w = x.shape

    hn = torch.nn.functional.group_norm(x, 8, attn.norm.weight, attn.norm.bias, eps=1e-6)
    q = attn.q(hn).reshape(b, c, h * w).permute(0, 2, 1)  # [B, HW, C]
    k = attn.k(hn).reshape(b, c, h * w)  # [B, C, HW]
    v = attn.v(hn).reshape(b, c, h * w)  # [B, C, HW]
    weights = torch.softmax(torch.bmm(q, k) / c**0.5, dim=2)  # [B, HWq, HWk]
    out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, h, w)
    expected = x + attn.proj_out(out)

    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_strict_load_gives_identical_decode():
    src = tiny_model(seed=2)
    dst = tiny_model(seed=3)
    z = torch.randn(1, 4, 8, 8)
    assert not torch.equal(src.decode(z), dst.decode(z))
    result = dst.load_state_dict(src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(src.decode(z), dst.decode(z))


@torch.no_grad()
def test_downsample_is_asymmetric_pad_stride2():
    model = tiny_model(seed=4)
    down = model.encoder.down[0].downsample
    x = torch.randn(1, 32, 8, 8)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2
    )
    assert down(x).shape == (1, 32, 4, 4)
    torch.testing.assert_close(down(x), expected)


def test_space_to_depth_standardises_and_inverts_exactly():
    from ldm.models.autoencoder import SpaceToDepthFirstStage
    stage = SpaceToDepthFirstStage(factor=2, mean=[0.5, -0.2, 0.1], std=[0.25, 0.5, 2.0])
    assert stage.state_dict() == {} and stage.embed_dim == 12 and stage.downsample_factor == 2
    x = torch.rand(2, 3, 4, 6) * 2 - 1
    z = stage.encode(x).sample()
    assert z.shape == (2, 12, 2, 3)
    # Channel (c, dy, dx) of latent pixel (i, j) is standardised image pixel (c, 2i+dy, 2j+dx).
    mean, std = torch.tensor([0.5, -0.2, 0.1]), torch.tensor([0.25, 0.5, 2.0])
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                want = (x[:, c, dy::2, dx::2] - mean[c]) / std[c]
                torch.testing.assert_close(z[:, c * 4 + dy * 2 + dx], want)
    torch.testing.assert_close(stage.decode(z), x)
    with pytest.raises(ValueError, match="std"):
        SpaceToDepthFirstStage(std=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="mean"):
        SpaceToDepthFirstStage(mean=[0.0, 0.0])


def test_latents_are_decoded_as_the_reference_scales_them(tiny_model):
    """The reference decodes `latents * (1 / scale_factor)`; dividing by scale_factor rounds some
    values differently (0.18215 is not a power of two), which moved uint8 pixels by one level."""
    model = tiny_model
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(z / model.scale_factor, z * (1.0 / model.scale_factor))  # the two do differ here
    expected = ((model.autoencoder.decode(z * (1.0 / model.scale_factor)) + 1) / 2).clamp(0, 1)
    assert torch.equal(model.decode_latents(z), expected)
