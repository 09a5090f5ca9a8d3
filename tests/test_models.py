"""Models: shapes, Swin masks, Sketcher DC, VAE, MRControlNet zero-init and trainable split."""

from __future__ import annotations

import pytest
import torch

from ldpm.errors import LdpmInputError
from ldpm.mri import fft2c, ifft2c, undersample
from ldpm.models import (RSTB, MRControlNet, NullContextEps, PatchDiscriminator, Sketcher, SwinIR,
                         SwinLayer, VGGPerceptual, build_denoiser, build_vae, load_controlnet_model,
                         null_text_embedding, save_controlnet, vae_decode, vae_encode)
from ldpm.models.swinir import shifted_window_mask, window_partition, window_reverse
from conftest import TINY_DENOISER, TINY_VAE

TINY_SWIN = {"embed_dim": 8, "depths": [2], "num_heads": [2], "window_size": 4}



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_window_partition_roundtrip():
    x = torch.randn(2, 8, 12, 3)
    assert torch.equal(window_reverse(window_partition(x, 4), 4, 8, 12), x)


def test_shifted_window_mask_blocks_only_cross_region_pairs():
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert (mask[-1] != 0).any()  # the bottom-right one mixes wrapped-around regions
    assert torch.equal(mask, mask.transpose(1, 2))


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 1, 13, 22)])
def test_swinir_shape_and_padding(shape):
    net = SwinIR(TINY_SWIN)
    assert net(torch.rand(shape)).shape == shape


def test_swinir_unshuffle_variant_and_blocks():
    net = SwinIR({**TINY_SWIN, "unshuffle_scale": 2})
    assert net(torch.rand(1, 1, 20, 20)).shape == (1, 1, 20, 20)
    feat = torch.randn(1, 8, 8, 8)
    assert RSTB(8, 2, 2, 4)(feat).shape == feat.shape
    assert SwinLayer(8, 2, 2, 4)(feat.permute(0, 2, 3, 1)).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError):
        SwinIR({"embed_dims": 8})


def test_sketcher_applies_data_consistency():
    x = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(16)
    mask[::2] = 1
    k_u = undersample(x, mask)
    x_u = ifft2c(k_u).abs()
    sk = Sketcher(SwinIR(TINY_SWIN))
    c = sk(x_u, k_u, mask)
    assert c.shape == x.shape and not c.is_complex()
    r = sk.repair(x_u)
    expected = ifft2c(fft2c(r) * (1 - mask) + k_u * mask).abs()
    torch.testing.assert_close(c, expected)
    # a full mask hands back the measured image, whatever R does
    full = torch.ones(16)
    torch.testing.assert_close(sk(x_u, undersample(x, full), full), x, atol=1e-5, rtol=0)


def test_vae_shapes_and_levels():
    vae = build_vae(TINY_VAE)
    z = vae_encode(vae, torch.rand(2, 1, 32, 32))
    assert z.shape == (2, 4, 4, 4)
    assert vae_decode(vae, z).shape == (2, 1, 32, 32)
    assert vae_encode(build_vae({"block_out_channels": [8, 8, 8], "norm_num_groups": 4}),
                      torch.rand(1, 1, 32, 32)).shape == (1, 4, 8, 8)  # three levels: 4x
    with pytest.raises(LdpmInputError):
        build_vae({"block_out_channels": [8]})
    with pytest.raises(LdpmInputError):
        build_vae(None, sd_path="/nonexistent/sd")


def test_patch_discriminator_and_vgg_off(tmp_path):
    d = PatchDiscriminator(3, ndf=8, n_layers=2)
    out = d(torch.randn(2, 3, 32, 32))
    assert out.shape[:2] == (2, 1) and out.shape[-1] > 1
    vgg = VGGPerceptual(None)
    assert not vgg.enabled
    assert vgg(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)).item() == 0.0
    with pytest.raises(LdpmInputError):
        VGGPerceptual(tmp_path / "missing.pth")


def test_vgg_loads_local_weights_without_download(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers
    feats = make_layers(cfgs["D"])  # what torchvision.models.vgg16(weights=None).features builds
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp_path / "vgg16.pth")
    vgg = VGGPerceptual(tmp_path / "vgg16.pth")
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    assert vgg.enabled and vgg(a, a).item() == 0.0 and vgg(a, b).item() > 0
    assert not any(p.requires_grad for p in vgg.parameters())


def _mrcn():
    unet = build_denoiser(TINY_DENOISER)
    return MRControlNet.from_denoiser(unet, null_text_embedding(unet)), unet


def test_mrcontrolnet_zero_init_equals_frozen_denoiser():
    model, unet = _mrcn()
    z, c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        eps = model(z, t, c)
        eps_den = NullContextEps(unet, model.null_embedding)(z, t)
    assert eps.shape == z.shape
    assert torch.equal(eps, eps_den)


def test_mrcontrolnet_only_control_branch_trains():
    model, _ = _mrcn()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("controlnet.") for n in trainable)
    assert not any(p.requires_grad for p in model.denoiser.parameters())
    assert all(p.requires_grad for p in model.controlnet.parameters())
    model.train()
    assert not model.denoiser.training
    # the condition enters through a zero-initialised conv on the 4-channel latent
    emb = model.controlnet.controlnet_cond_embedding.conv
    assert emb.in_channels == 4 and emb.stride == (1, 1) and not emb.weight.any()


def test_mrcontrolnet_condition_is_live_and_roundtrips(tmp_path):
    model, unet = _mrcn()
    with torch.no_grad():
        for p in model.controlnet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    z, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    c1, c2 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        e1, e2 = model(z, t, c1), model(z, t, c2)
    assert not torch.allclose(e1, e2)
    save_controlnet(model.controlnet, tmp_path / "cn")
    loaded = MRControlNet(unet, load_controlnet_model(tmp_path / "cn"), model.null_embedding)
    with torch.no_grad():
        assert torch.equal(loaded(z, t, c1), e1)


def test_null_embedding_config_built_cached_and_without_transformers(tmp_path, monkeypatch):
    """Config-built: zeros [1, 1, D]. SD layout: the cached
    ``null_text_embedding.safetensors`` tensor is returned as stored. Without that file and
    without ``transformers``: one error naming the file to add."""
    import builtins

    from safetensors.torch import save_file

    from ldpm.models.controlnet import NULL_EMBEDDING_FILE

    unet = build_denoiser(TINY_DENOISER)
    assert torch.equal(null_text_embedding(unet), torch.zeros(1, 1, 8))
    cached = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(3))
    sd = tmp_path / "sd"
    sd.mkdir()
    save_file({"null": cached}, sd / NULL_EMBEDDING_FILE)
    assert torch.equal(null_text_embedding(unet, sd), cached)

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(LdpmInputError, match="transformers") as err:
        null_text_embedding(unet, bare)
    assert str(bare / NULL_EMBEDDING_FILE) in str(err.value) and "[1, 77, 8]" in str(err.value)
