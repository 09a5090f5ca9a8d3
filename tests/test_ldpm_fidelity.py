"""LDPM's method-level contracts: one intensity normalisation in training and reconstruction,
no clipping above the measurement's scale, training masks of the test geometry from the config's
``masks``, eq. 5 in LDM's normalisation, and the sampler's settings from ``inference.ldpm``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ldpm.methods.ldpm as ml
import ldpm.sampling.dual_stage as ds
import ldpm.train.loop as loop
from ldpm.config import load_config, validate_config
from ldpm.errors import LdpmInputError
from ldpm.methods import measure, method_options
from ldpm.mri import RandomMaskFunc, mask_for_slice
from ldpm.models import (MRControlNet, PatchDiscriminator, Sketcher, SwinIR, build_denoiser,
                         build_vae, null_text_embedding, to_vae_input)
from ldpm.sampling import base_alphas_cumprod, respace
from ldpm.seeding import step_generator
from ldpm.sampling.spaced import plain_sample
from ldpm.train.controlnet import condition_pool, controlnet_loss
from ldpm.train.sketcher import sketcher_loss
from ldpm.train.stages import stage_config
from ldpm.train.vae import vae_losses
from conftest import TINY_DENOISER

TINY_VAE = {"block_out_channels": [8, 8, 8], "norm_num_groups": 4}
TINY_SWIN = {"embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4}


@pytest.fixture
def images() -> torch.Tensor:
    """Three 32x32 images of very different brightness (as raw fastMRI magnitudes are)."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 1, 32, 32, generator=g)
    return base * torch.tensor([3e-5, 1.0, 250.0]).view(3, 1, 1, 1)


@pytest.fixture
def parts():
    torch.manual_seed(0)
    sketcher = Sketcher(SwinIR(TINY_SWIN)).eval()
    unet = build_denoiser(TINY_DENOISER)
    mrcn = MRControlNet.from_denoiser(unet, null_text_embedding(unet)).eval()
    return sketcher, build_vae(TINY_VAE).eval(), mrcn


def _spy_repair_inputs(monkeypatch, sketcher) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    real = sketcher.repair.forward

    def spy(x):
        seen.append(x.detach().clone())
        return real(x)

    monkeypatch.setattr(sketcher.repair, "forward", spy)
    return seen


def _per_sample_max(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).amax(1)


def test_training_and_reconstruction_apply_the_same_normalisation(monkeypatch, images, parts):
    """Every network input is the zero-filled image divided by its own max, whatever the raw
    brightness: in Sketcher training, in control-branch training and at reconstruction."""
    sketcher, vae, mrcn = parts
    seen = _spy_repair_inputs(monkeypatch, sketcher)
    with torch.no_grad():
        sketcher_loss(sketcher, images, (4, 0.08), seed=1, step=0)
    controlnet_loss(mrcn, sketcher, vae, images, base_alphas_cumprod(), torch.Generator().manual_seed(0),
                    (4, 0.08), seed=1, step=0)
    masks = np.stack([mask_for_slice("v", i, 32, 4) for i in range(3)])
    k_u = measure(images[:, 0].numpy(), masks)
    monkeypatch.setattr(ml, "load_ldpm", lambda *a, **k: parts)
    opts = {"n_steps": 2, "p": 200, "guidance_scale": 0.1, "eps_mode": "rederive", "n_samples": 1,
            "slice_seeds": [1, 2, 3]}
    ml.ldpm_reconstruct(k_u, masks, {}, {**opts, "batch_size": 2})
    assert [len(x) for x in seen] == [3, 3, 2, 1]  # two training batches, then the test slices in batches of 2
    for x in seen:
        torch.testing.assert_close(_per_sample_max(x), torch.ones(len(x)), rtol=1e-5, atol=1e-6)


def test_vae_sees_images_in_the_reconstruction_scale(monkeypatch, images, tmp_path):
    """The VAE trains on x / max|x_u| (the scale in which it decodes at reconstruction)."""
    from ldpm.train.vae import train_vae
    import ldpm.train.vae as tv

    seen = []
    real = tv.vae_losses

    def spy(vae, disc, vgg, x, *a, **k):
        seen.append(x.detach().clone())
        return real(vae, disc, vgg, x, *a, **k)

    monkeypatch.setattr(tv, "vae_losses", spy)
    cfg = {"model": TINY_VAE, "lr": 1e-3, "batch_size": 3, "crop": None, "n_steps": 1,
           "ckpt_every": 1, "disc_start": None, "masks": {"acceleration": 4, "center_fraction": 0.08}}
    train_vae(images, cfg, tmp_path / "vae", log=False)
    x = seen[0]
    raw = loop.random_batch(images, 3, None, step_generator(0, 0))
    x_u, _, _ = loop.undersampled_batch(raw, 4, 0.08, 0, 0)
    torch.testing.assert_close(x, raw / _per_sample_max(x_u).view(-1, 1, 1, 1), rtol=1e-5, atol=1e-7)


def test_nothing_clips_above_the_measurement_max():
    """The sampler clips the decoded image at 0 only: values above max|x_u| survive."""
    sched = respace(3)
    c = torch.zeros(1, 4, 4, 4)
    decode = lambda z: torch.full((1, 1, 8, 8), 2.5) + 0 * z.sum()  # noqa: E731
    encode = lambda x: torch.zeros(1, 4, 4, 4) + 0 * x.sum()  # noqa: E731
    eps = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    k_u, mask = torch.zeros(1, 1, 8, 8, dtype=torch.complex64), torch.ones(8)
    out = ds.dual_stage_sample(eps, encode, decode, c, k_u, mask, sched, p=200,
                               guidance_scale=0.1, generator=torch.Generator().manual_seed(0),
                               eps_mode="rederive")
    assert float(out.max()) == pytest.approx(2.5)
    assert float(plain_sample(eps, decode, c, sched, torch.Generator().manual_seed(0)).max()) == pytest.approx(2.5)
    neg = ds.dual_stage_sample(eps, encode, lambda z: -decode(z), c, k_u, mask, sched, p=200,
                               guidance_scale=0.1, generator=torch.Generator().manual_seed(0),
                               eps_mode="rederive")
    assert float(neg.min()) == 0.0


def _spy_masks(monkeypatch) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    seen = []
    real = loop.undersampled_batch

    def spy(x, acceleration, center_fraction, seed, step, first=0):
        out = real(x, acceleration, center_fraction, seed, step, first)
        seen.append((tuple(x.shape), out[2].detach().clone(), acceleration, center_fraction))
        return out

    monkeypatch.setattr(loop, "undersampled_batch", spy)
    return seen


@pytest.mark.parametrize("acc,cf", [(8, 0.04), (4, 0.08)])
def test_training_masks_have_the_test_geometry_and_follow_the_config(monkeypatch, parts, acc, cf):
    """Sketcher and control branch undersample the WHOLE image (then crop), with the config's
    ``masks``: the same centre band and density as the test masks of that width."""
    sketcher, vae, mrcn = parts
    images = torch.rand(2, 1, 64, 64)
    cfg = {"masks": {"acceleration": acc, "center_fraction": cf}}
    masks = loop.stage_masks(stage_config("sketcher", {}, "default", cfg["masks"]))
    assert masks == (acc, cf)
    seen = _spy_masks(monkeypatch)
    with torch.no_grad():
        sketcher_loss(sketcher, images, masks, seed=0, step=3, crop=32, gen=torch.Generator())
    controlnet_loss(mrcn, sketcher, vae, images, base_alphas_cumprod(), torch.Generator().manual_seed(0),
                    masks, seed=0, step=3, crop=32)
    assert len(seen) == 2
    pool = condition_pool(sketcher, vae, images, masks, seed=0, n_masks=2, chunk=1)
    assert len(seen) == 2 + 4 and pool["target"].shape == pool["c"].shape == (4, 4, 16, 16)
    for shape, mask, a, c in seen[2:]:  # the precomputed conditions: the same geometry
        assert shape[-1] == 64 and (a, c) == (acc, cf)
    seen[:] = seen[:2]
    n_center = round(64 * cf)
    band = slice((64 - n_center + 1) // 2, (64 - n_center + 1) // 2 + n_center)  # fastMRI's ACS
    assert np.asarray(mask_for_slice("v", 0, 64, acc, cf))[band].all()
    for shape, mask, a, c in seen:
        assert shape[-1] == 64 and (a, c) == (acc, cf)  # whole width, not the 32-wide crop
        m = mask.reshape(-1, 64)
        for i, row in enumerate(m):
            expected = RandomMaskFunc([cf], [acc])(64, seed=(0, 3, i))
            torch.testing.assert_close(row, torch.as_tensor(expected, dtype=row.dtype))
            assert row[band].all()


def test_stage_masks_come_only_from_the_masks_block():
    with pytest.raises(LdpmInputError, match="train.stages.sketcher.acceleration"):
        stage_config("sketcher", {"acceleration": 4}, "default")
    cfg = stage_config("controlnet", {}, "default", {"acceleration": 6, "center_fraction": 0.05,
                                                     "seed": 1})
    assert cfg["masks"] == {"acceleration": 6, "center_fraction": 0.05}


class _FakeVGG:
    enabled = True

    def per_sample(self, x_hat, x):
        return (x_hat - x).pow(2).flatten(1).mean(1) + torch.tensor([0.5, 1.0])


def test_eq5_terms_match_a_hand_computation_in_ldm_normalisation():
    """L = sum_px(mu|x-x'| + nu VGG)/B + omega sum KL/B + lambda w_adapt g (LDM's loss)."""
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    disc = PatchDiscriminator(3, ndf=4, n_layers=1)
    x = torch.rand(2, 1, 16, 16)
    w = {"mu": 1.3, "nu": 0.2, "omega": 1e-2, "lambda": 0.65}
    out = vae_losses(vae, disc, _FakeVGG(), x, torch.Generator().manual_seed(5), w, use_gan=True)

    inp = to_vae_input(x)
    post = vae.encode(inp).latent_dist
    x_rec = vae.decode(post.sample(generator=torch.Generator().manual_seed(5))).sample
    torch.testing.assert_close(out["x_rec"], x_rec)
    b, n_pix = 2, 3 * 16 * 16
    vgg = _FakeVGG().per_sample((x_rec.mean(1, keepdim=True) + 1) / 2, x)
    rec = sum(w["mu"] * (x_rec[i] - inp[i]).abs().sum() + w["nu"] * vgg[i] * n_pix for i in range(b)) / b
    mean, logvar = post.mean, post.logvar
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum() / b
    g = -disc(x_rec).mean()
    last = vae.decoder.conv_out.weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g, last, retain_graph=True)[0]
    w_adapt = torch.clamp(g_rec.norm() / (g_gan.norm() + 1e-4), 0, 1e4)
    torch.testing.assert_close(out["rec"], rec, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["gan_weight"], w["lambda"] * w_adapt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["loss"], rec + w["omega"] * kl + w["lambda"] * w_adapt * g,
                               rtol=1e-5, atol=1e-4)
    off = vae_losses(vae, disc, _FakeVGG(), x, torch.Generator().manual_seed(5), w, use_gan=False)
    assert float(off["gan_weight"]) == 0.0


def test_eps_mode_from_the_config_reaches_the_sampler(monkeypatch, parts):
    cfg = load_config()
    assert cfg["inference"]["ldpm"]["eps_mode"] == "rederive"
    cfg["inference"]["ldpm"]["eps_mode"] = "network"
    opts = method_options("ldpm", validate_config(cfg)["inference"])
    assert opts["eps_mode"] == "network"
    seen = {}
    real = ds.dual_stage_sample

    def spy(*a, **k):
        seen.update(k, n_args=len(a))
        seen["eps_mode"] = a[10] if len(a) > 10 else k.get("eps_mode")
        return real(*a, **k)

    monkeypatch.setattr(ds, "dual_stage_sample", spy)
    monkeypatch.setattr(ml, "load_ldpm", lambda *a, **k: parts)
    x = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    mask = mask_for_slice("v", 0, 32, 4)[None]
    ml.ldpm_reconstruct(measure(x, mask), mask, {}, {**opts, "n_steps": 2, "slice_seeds": [1]})
    assert seen["eps_mode"] == "network"
    bad = {k: v for k, v in opts.items() if k != "eps_mode"}
    with pytest.raises(LdpmInputError, match="inference.ldpm.eps_mode"):
        ml.ldpm_reconstruct(measure(x, mask), mask, {}, {**bad, "slice_seeds": [1]})
    cfg["inference"]["ldpm"]["eps_mode"] = "printed"
    with pytest.raises(LdpmInputError, match="inference.ldpm.eps_mode"):
        validate_config(cfg)


def test_paper_preset_without_vgg_weights_stops_unless_opted_out(tmp_path):
    cfg = load_config()
    cfg["train"]["preset"] = "paper"
    with pytest.raises(LdpmInputError, match="pretrained.vgg16_path"):
        validate_config(cfg)
    cfg["pretrained"]["vae_without_vgg"] = True
    validate_config(cfg)
    (tmp_path / "vgg16.pth").write_bytes(b"stand-in")  # the config check asks only that it exists
    cfg["pretrained"].update(vae_without_vgg=False, vgg16_path=str(tmp_path / "vgg16.pth"))
    validate_config(cfg)
