"""Training: each stage lowers its loss; interrupted + resumed runs are bit-identical."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_DENOISER, TINY_VAE, smooth_slices
from safetensors.torch import load_file

from ldpm.models import NullContextEps, Sketcher, SwinIR, build_denoiser, build_vae, null_text_embedding
from ldpm.models.vae import VGG_OFF_NOTE
from ldpm.sampling import base_alphas_cumprod
from ldpm.checkpoints import load_controlnet, load_denoiser, load_sketcher, load_vae
from ldpm.seeding import step_generator
from ldpm.train import train, train_controlnet, train_denoiser, train_sketcher, train_vae
from ldpm.train.controlnet import controlnet_loss
from ldpm.train.denoiser import denoiser_loss, encode_images
from ldpm.train.sketcher import sketcher_loss
from ldpm.train.vae import normalised_images, vae_losses

TINY_SWIN = {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8}
MASK = {"acceleration": 4, "center_fraction": 0.08}
CONST = {"lr_schedule": "constant", "warmup": 0}
CFG = {
    "sketcher": {**CONST, "model": TINY_SWIN, "lr": 3e-3, "batch_size": 2, "crop": 32, "ckpt_every": 2, "masks": MASK},
    "vae": {**CONST, "model": TINY_VAE, "lr": 3e-3, "disc_lr": 1e-3, "batch_size": 2, "crop": 32,
            "ckpt_every": 2, "disc": {"ndf": 8, "n_layers": 1}, "disc_start": 3},
    "denoiser": {**CONST, "model": TINY_DENOISER, "lr": 3e-3, "batch_size": 4, "crop": None, "ckpt_every": 2},
    "controlnet": {**CONST, "lr": 1e-2, "batch_size": 2, "crop": 32, "ckpt_every": 2, "masks": MASK},
}



@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return smooth_slices(disc=True)


@pytest.fixture(scope="module")
def frozen():
    """A tiny random VAE, Sketcher and denoiser for the later stages."""
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE).eval().requires_grad_(False)
    sk = Sketcher(SwinIR(TINY_SWIN)).eval().requires_grad_(False)
    unet = build_denoiser(TINY_DENOISER).eval().requires_grad_(False)
    return vae, sk, unet, null_text_embedding(unet)


def _run(stage, images, frozen, ckpt_dir, n_steps, stop_after=None):
    vae, sk, unet, null = frozen
    cfg, kw = CFG[stage], {"seed": 3, "n_steps": n_steps, "log": False, "stop_after": stop_after}
    if stage == "sketcher":
        return train_sketcher(images, cfg, ckpt_dir, **kw)
    if stage == "vae":
        return train_vae(images, cfg, ckpt_dir, **kw)
    if stage == "denoiser":
        return train_denoiser(images, cfg, ckpt_dir, vae, **kw)
    return train_controlnet(images, cfg, ckpt_dir, sk, vae, unet, null, **kw)


def _fixed_loss(stage, model, images, frozen) -> float:
    vae, sk, unet, null = frozen
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        if stage == "sketcher":
            return sketcher_loss(model, images, (4, 0.08), seed=9, step=0).item()
        if stage == "vae":
            return vae_losses(model, None, _VGG_OFF, images, gen, _W, use_gan=False)["loss"].item()
        if stage == "denoiser":
            z = encode_images(vae, normalised_images(images, CFG["denoiser"], 0)).repeat(4, 1, 1, 1)
            return denoiser_loss(NullContextEps(model[0], model[1]), z, base_alphas_cumprod(), gen).item()
        return controlnet_loss(model, sk, vae, images.repeat(3, 1, 1, 1), base_alphas_cumprod(), gen,
                               (4, 0.08), seed=9, step=0).item()


class _NoVGG:
    enabled = False


_VGG_OFF, _W = _NoVGG(), {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65}


@pytest.mark.parametrize("stage,n_steps", [("sketcher", 10), ("vae", 8), ("denoiser", 10),
                                           ("controlnet", 10)])
def test_stage_lowers_its_loss(stage, n_steps, images, frozen, tmp_path):
    init = _run(stage, images, frozen, tmp_path, n_steps, stop_after=0)  # untrained, seeded init
    before = _fixed_loss(stage, init, images, frozen)
    trained = _run(stage, images, frozen, tmp_path, n_steps)
    after = _fixed_loss(stage, trained, images, frozen)
    # the control branch starts from zero convolutions, so it moves its loss more slowly
    assert after < (0.97 if stage == "controlnet" else 0.9) * before, (stage, before, after)
    final = tmp_path / "final"
    assert final.is_dir() and (tmp_path / "last.pt").is_file()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["steps_done"] == n_steps and meta["stage"] == stage
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(n_steps)) and "loss" in rows[0]
    if stage == "vae":
        assert VGG_OFF_NOTE in meta["notes"] and "scaling_factor" in meta
        assert float(rows[-1]["d_loss"]) > 0  # the discriminator was trained
        assert load_vae(tmp_path).config.scaling_factor == pytest.approx(meta["scaling_factor"])


@pytest.mark.parametrize("stage", ["sketcher", "vae", "denoiser", "controlnet"])
def test_stage_loss_does_not_move_at_lr_zero(stage, images, frozen, tmp_path, monkeypatch):
    """The control of the test above: with the stage's learning rate 0 the same seeded run
    leaves the fixed loss where it was (to float precision), so a drop there is the optimiser's
    doing, not noise of the evaluation or a change of the model outside the optimiser."""
    monkeypatch.setitem(CFG, stage, {**CFG[stage], "lr": 0.0})
    before = _fixed_loss(stage, _run(stage, images, frozen, tmp_path, 3, stop_after=0), images, frozen)
    after = _fixed_loss(stage, _run(stage, images, frozen, tmp_path, 3), images, frozen)
    assert after == pytest.approx(before, rel=1e-6, abs=1e-9), (stage, before, after)


class _LinearVAE(torch.nn.Module):
    """A stand-in VAE with a closed form: a fixed diagonal-Gaussian posterior (diffusers'
    ``DiagonalGaussianDistribution`` of the given mean/log-variance) and a 1x1-conv decoder
    ``x_rec = W z`` as its last layer ``decoder.conv_out``."""

    def __init__(self, mean, logvar, weight):
        super().__init__()
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        self._dist = lambda: DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
        self.decoder = torch.nn.Module()
        self.decoder.conv_out = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False).double()
        with torch.no_grad():
            self.decoder.conv_out.weight.copy_(weight[:, :, None, None])
        self.seen = []

    def encode(self, inp):
        self.seen.append(inp)
        return SimpleNamespace(latent_dist=self._dist())

    def decode(self, z):
        return SimpleNamespace(sample=self.decoder.conv_out(z))


class _FixedVGG:
    enabled = True

    def __init__(self, values):
        self.values, self.seen = values, []

    def per_sample(self, x_hat, x):
        self.seen.append((x_hat.detach(), x))
        return self.values


@pytest.mark.parametrize("use_gan", [False, True])
def test_vae_loss_terms_are_eq5_by_hand(use_gan):
    """Eq. 5 in LDM's normalisation, on 2 tiny 2x3 images with a closed-form VAE, every term
    recomputed in numpy: L1 summed over pixels and 3 channels of the [-1, 1] images, the
    per-sample VGG distance added to every pixel, KL(N(mu, s^2) || N(0, 1)) summed per sample,
    all averaged over the batch; hinge generator loss ``-mean D`` weighted by ``lambda`` times
    LDM's adaptive weight, whose last-layer gradients are written out analytically."""
    from ldpm.train.vae import vae_losses

    rng = np.random.default_rng(0)
    b, c, h, w_ = 2, 2, 2, 3
    x = rng.random((b, 1, h, w_))
    mean, logvar = rng.normal(size=(b, c, h, w_)), 0.3 * rng.normal(size=(b, c, h, w_))
    wc = rng.normal(size=(3, c))                      # decoder: x_rec = wc z (per pixel)
    wd = np.array([0.5, -1.0, 2.0])                   # discriminator: D(y) = wd . y (per pixel)
    vgg_b = np.array([0.3, 0.7])
    wts = {"mu": 1.5, "nu": 0.2, "omega": 0.01, "lambda": 0.65}
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    vae = _LinearVAE(t(mean), t(logvar), t(wc))
    vgg = _FixedVGG(t(vgg_b))
    disc = lambda y: (y * t(wd).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
    out = vae_losses(vae, disc, vgg, t(x), torch.Generator().manual_seed(7), wts, use_gan)

    noise = torch.randn((b, c, h, w_), generator=torch.Generator().manual_seed(7),
                        dtype=torch.float64).numpy()
    z = mean + np.exp(0.5 * logvar) * noise
    x_rec = np.einsum("oc,bchw->bohw", wc, z)
    inp = np.repeat(2 * x - 1, 3, axis=1)
    err = np.abs(x_rec - inp)
    rec = (wts["mu"] * err.sum(axis=(1, 2, 3)) + wts["nu"] * vgg_b * 3 * h * w_).sum() / b
    kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar).sum() / b
    loss = rec + wts["omega"] * kl
    np.testing.assert_allclose(vae.seen[0].numpy(), inp, atol=1e-12)
    np.testing.assert_allclose(vgg.seen[0][0].numpy(), (x_rec.mean(1, keepdims=True) + 1) / 2, atol=1e-12)
    if use_gan:
        g_adv = -np.einsum("o,bohw->bhw", wd, x_rec).mean()
        d_rec = wts["mu"] / b * np.einsum("bohw,bchw->oc", np.sign(x_rec - inp), z)
        d_gan = -np.outer(wd, z.sum(axis=(0, 2, 3))) / (b * h * w_)
        gan_weight = wts["lambda"] * np.clip(np.linalg.norm(d_rec) / (np.linalg.norm(d_gan) + 1e-4), 0, 1e4)
        loss += gan_weight * g_adv
        assert abs(gan_weight * g_adv) > 0.05  # the GAN term moves the loss measurably
    else:
        g_adv = gan_weight = 0.0
    expect = {"loss": loss, "rec": rec, "kl": kl, "l1": err.mean(), "vgg": vgg_b.mean(),
              "g_adv": g_adv, "gan_weight": gan_weight}
    got = {k: float(torch.as_tensor(out[k]).detach()) for k in expect}
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-12)


def _weights(stage, ckpt_dir: Path) -> dict[str, torch.Tensor]:
    final = ckpt_dir / "final"
    name = "model.safetensors" if stage == "sketcher" else "diffusion_pytorch_model.safetensors"
    return load_file(final / name)


@pytest.mark.parametrize("stage", ["sketcher", "vae", "controlnet"])
def test_interrupted_and_resumed_run_is_bit_identical(stage, images, frozen, tmp_path):
    n, k = 4, 2
    _run(stage, images, frozen, tmp_path / "a", n)
    part = _run(stage, images, frozen, tmp_path / "b", n, stop_after=k)
    assert not (tmp_path / "b" / "final").exists()
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["steps_done"] == k
    del part
    _run(stage, images, frozen, tmp_path / "b", n)  # a new call: resumes from last.pt (step k)
    wa, wb = _weights(stage, tmp_path / "a"), _weights(stage, tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[key], wb[key]) for key in wa)
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


@pytest.mark.parametrize("stage", ["vae", "denoiser", "controlnet"])
def test_ema_is_the_final_weights_and_resumes_bit_identically(stage, images, frozen, tmp_path,
                                                               monkeypatch):
    """With ``ema`` set, ``final/`` holds the weight average (checkpointed in ``last.pt`` next to
    the raw weights), not the last step's weights, and an interrupted run resumes to the same."""
    monkeypatch.setitem(CFG, stage, {**CFG[stage], "ema": 0.9})
    n, k = 4, 2
    _run(stage, images, frozen, tmp_path / "a", n)
    _run(stage, images, frozen, tmp_path / "b", n, stop_after=k)
    _run(stage, images, frozen, tmp_path / "b", n)
    wa, wb = _weights(stage, tmp_path / "a"), _weights(stage, tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[key], wb[key]) for key in wa)
    modules = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["modules"]
    ema, raw = modules["ema"], modules[{"vae": "vae", "denoiser": "unet"}.get(stage, stage)]
    assert all(torch.equal(wa[key], ema[key]) for key in wa)
    assert any(not torch.equal(wa[key], raw[key]) for key in wa)


def test_ema_update_warms_up_then_keeps_its_decay():
    """A stage's EMA of its weights follows the model early (warm-up) and averages with
    its configured decay later: ``d = min(decay, (1 + step) / (10 + step))``."""
    from ldpm.train.loop import ema_update

    model, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    ema_update(ema, model, 0.99, step=0)                 # d = 0.1
    assert float(ema.weight.detach()) == pytest.approx(0.9)
    ema_update(ema, model, 0.99, step=10_000)            # d = 0.99
    assert float(ema.weight.detach()) == pytest.approx(0.9 + 0.1 * 0.01)


def test_weight_average_off_saves_the_model_itself_and_on_checkpoints_a_copy():
    """``ema: 0`` keeps no copy (the stage saves its last weights); ``ema > 0`` registers the
    average in the checkpointed modules and moves it towards the model on every update."""
    from ldpm.train.loop import WeightAverage

    model = torch.nn.Linear(1, 1, bias=False)
    modules: dict = {"model": model}
    off = WeightAverage(model, {"ema": 0.0}, modules)
    off.update(0)
    assert off.weights is model and "ema" not in modules
    on = WeightAverage(model, {"ema": 0.99}, modules)
    assert modules["ema"] is on.weights and on.weights is not model
    with torch.no_grad():
        model.weight.add_(1.0)
    before = float(on.weights.weight)
    on.update(0)
    assert float(on.weights.weight) == pytest.approx(before + 0.9)


def test_loop_resumes_after_a_crash_bit_identically(tmp_path):
    def make():
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        return net, torch.optim.Adam(net.parameters(), lr=0.1)

    def runner(net, opt, crash_at=None):
        def step_fn(step, gen):
            if step == crash_at:
                raise RuntimeError("simulated crash")
            x = torch.randn(8, 4, generator=gen)
            loss = ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return {"loss": loss.item()}
        return step_fn

    def save(net):
        return lambda d: torch.save(net.state_dict(), d / "w.pt")

    every4 = {"config": {"ckpt_every": 4}, "log": False}
    net, opt = make()
    train(runner(net, opt), {"net": net}, {"opt": opt}, tmp_path / "a", 9, 1, save(net), **every4)
    net2, opt2 = make()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(runner(net2, opt2, crash_at=6), {"net": net2}, {"opt": opt2}, tmp_path / "b", 9, 1,
              save(net2), **every4)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == 4
    net3, opt3 = make()  # a fresh process: weights come from last.pt only
    train(runner(net3, opt3), {"net": net3}, {"opt": opt3}, tmp_path / "b", 9, 1, save(net3), **every4)
    wa = torch.load(tmp_path / "a" / "final" / "w.pt")
    wb = torch.load(tmp_path / "b" / "final" / "w.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(9))
    # a finished run is not redone, and another seed cannot resume it
    before = (tmp_path / "b" / "final" / "w.pt").stat().st_mtime_ns
    train(runner(net3, opt3), {"net": net3}, {"opt": opt3}, tmp_path / "b", 9, 1, save(net3), **every4)
    assert (tmp_path / "b" / "final" / "w.pt").stat().st_mtime_ns == before
    with pytest.raises(Exception, match="seed"):
        train(runner(net3, opt3), {"net": net3}, {"opt": opt3}, tmp_path / "b", 9, 2, save(net3), **every4)


def test_step_generator_depends_only_on_seed_and_step():
    a = torch.rand(3, generator=step_generator(0, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(0, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 6)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5)))


def test_loaders_roundtrip(images, frozen, tmp_path):
    vae, sk, unet, null = frozen
    s = _run("sketcher", images, frozen, tmp_path / "s", 1)
    assert torch.equal(load_sketcher(tmp_path / "s").repair.conv_first.weight, s.repair.conv_first.weight)
    u, n = _run("denoiser", images, frozen, tmp_path / "d", 1)
    u2, n2 = load_denoiser(tmp_path / "d")
    assert torch.equal(n, n2) and torch.equal(u.conv_in.weight, u2.conv_in.weight)
    m = _run("controlnet", images, frozen, tmp_path / "c", 1)
    m2 = load_controlnet(tmp_path / "c", unet)
    z, c = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(m(z, 500, c), m2(z, 500, c))


def test_augmentation_is_seeded_and_does_what_it_says():
    """gamma keeps each image's maximum and darkens (gamma > 1) its mid-tones; zoom shrinks the
    anatomy about the centre of an empty field of view; p = 0 returns the images unchanged;
    the same generator seed gives the same batch."""
    from ldpm.seeding import step_generator
    from ldpm.train.loop import augment_images, random_batch

    x = smooth_slices(disc=True)[:4]
    gamma_only = {"gamma": [2.0, 2.0], "zoom": [1.0, 1.0]}
    g = augment_images(x, gamma_only, step_generator(0, 0))
    m = x.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(g, m * (x / m) ** 2)
    shrink = augment_images(x, {"gamma": [1.0, 1.0], "zoom": [0.5, 0.5]}, step_generator(0, 0))
    h, w = x.shape[-2:]
    ring = torch.ones(h, w, dtype=torch.bool)
    ring[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = False
    assert shrink[..., ring].abs().max() == 0
    assert float(shrink.sum()) == pytest.approx(float(x.sum()) / 4, rel=0.05)
    assert torch.equal(augment_images(x, {**gamma_only, "p": 0.0}, step_generator(0, 0)), x)
    aug = {"gamma": [0.5, 2.0], "zoom": [0.6, 1.0]}
    a = random_batch(x, 6, 16, step_generator(3, 7), aug)
    assert torch.equal(a, random_batch(x, 6, 16, step_generator(3, 7), aug))
    assert not torch.equal(a, random_batch(x, 6, 16, step_generator(3, 7)))
    assert torch.equal(random_batch(x, 6, 16, step_generator(3, 7), None),
                       random_batch(x, 6, 16, step_generator(3, 7)))


def test_resolution_augmentation_removes_fine_detail_only():
    """``resolution`` resamples each image to a coarser matrix and back: the same image at lower
    resolution (less energy at high spatial frequencies, the same mean); gamma and zoom default
    to unchanged; the draws are seeded."""
    from ldpm.mri import fft2c
    from ldpm.seeding import step_generator
    from ldpm.train.loop import augment_images

    x = smooth_slices(disc=True)[:4]
    low = augment_images(x, {"resolution": [0.5, 0.5]}, step_generator(0, 0))
    h, w = x.shape[-2:]
    ref = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(x, size=(h // 2, w // 2), mode="bilinear",
                                        align_corners=False, antialias=True),
        size=(h, w), mode="bilinear", align_corners=False)
    torch.testing.assert_close(low, ref)
    k, k_low = fft2c(x.to(torch.complex64)).abs(), fft2c(low.to(torch.complex64)).abs()
    outer = torch.ones(h, w, dtype=torch.bool)
    outer[h // 4:3 * h // 4, w // 4:3 * w // 4] = False
    assert float((k_low[..., outer] ** 2).sum()) < 0.2 * float((k[..., outer] ** 2).sum())
    torch.testing.assert_close(low.mean(), x.mean(), rtol=0.02, atol=0)
    aug = {"resolution": [0.3, 1.0], "p": 0.5}
    assert torch.equal(augment_images(x, aug, step_generator(1, 2)),
                       augment_images(x, aug, step_generator(1, 2)))


def test_noise_augmentation_gives_a_rician_background():
    """``noise`` adds complex Gaussian noise of ``n`` times each image's maximum and keeps the
    magnitude: an empty background gets the Rayleigh mean ``n m sqrt(pi / 2)``; the anatomy keeps
    its level; the draws are seeded."""
    from ldpm.seeding import step_generator
    from ldpm.train.loop import augment_images

    x = smooth_slices(disc=True)[:4]
    noisy = augment_images(x, {"noise": [0.02, 0.02]}, step_generator(0, 0))
    m = x.amax(dim=(1, 2, 3))
    background = x == 0
    for i in range(len(x)):
        mean = float(noisy[i][background[i]].mean())
        assert mean == pytest.approx(0.02 * float(m[i]) * (np.pi / 2) ** 0.5, rel=0.1)
    inside = x > 0.5 * m.view(-1, 1, 1, 1)
    assert float((noisy - x)[inside].mean()) == pytest.approx(0.0, abs=0.01 * float(m.max()))
    assert torch.equal(noisy, augment_images(x, {"noise": [0.02, 0.02]}, step_generator(0, 0)))
