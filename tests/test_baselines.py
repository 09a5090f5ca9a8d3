"""Baselines of Table I: U-Net, E2E-VarNet, SwinMR (nPI), Score-MRI (tiny sizes, CPU, seconds)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import ldpm.methods.baselines  # noqa: F401  (registers the baselines)
import ldpm.sampling.score_pc as score_pc
from ldpm.errors import LdpmInputError
from ldpm.methods import METHODS, as_magnitude, measure, reconstruct_shard, seeds_for
from ldpm.models.score import ScoreNet, VESDE
from ldpm.losses import SwinMRLoss
from ldpm.models.swinmr import SwinMR
from ldpm.models.unet import UnetRecon
from ldpm.models.varnet import VarNet, VarNetBlock
from ldpm.mri import RandomMaskFunc, fft2c, undersample
from ldpm.checkpoints import build_baseline, load_baseline
from ldpm.methods import BASELINES
from ldpm.methods.baselines import reconstruct
from ldpm.train.baselines import baseline_config, compute_loss, train_baseline
from ldpm.train.loop import make_batch

TINY = {
    "unet": {"model": {"chans": 4, "num_pool_layers": 2, "drop_prob": 0.0}},
    "varnet": {"model": {"num_cascades": 2, "chans": 4, "pools": 2}},
    "swinmr": {"model": {"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 8,
                         "mlp_ratio": 2.0}},
    "score_mri": {"model": {"block_out_channels": [8, 16], "layers_per_block": 1,
                            "norm_num_groups": 4, "add_attention": False},
                  "sampler": {"n_steps": 3, "snr": 0.16, "n_corrector": 1, "eps": 1e-5}},
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Blobby phantoms in [0, 1]: a disc with a few brighter ellipses."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    out = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        img = 0.4 * (xx ** 2 + yy ** 2 < 0.8)
        for _ in range(3):
            cx, cy, r = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.1, 0.3)
            img = img + 0.3 * (((xx - cx) / r) ** 2 + ((yy - cy) / (0.6 * r)) ** 2 < 1)
        out[i, 0] = img / img.max()
    return torch.from_numpy(out)


def np_fft2c(x):
    """fastMRI's centred orthonormal 2-D FFT, written with numpy (an independent reference)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def mask_batch(n: int, w: int, seed: int = 0) -> torch.Tensor:
    func = RandomMaskFunc([0.04], [8])
    return torch.from_numpy(np.stack([func(w, seed=(seed, i)) for i in range(n)]))


# ---------------------------------------------------------------------------------- shapes


def test_forward_shapes():
    x = torch.rand(2, 1, 24, 40)
    assert UnetRecon(TINY["unet"]["model"])(x).shape == x.shape
    assert UnetRecon({"chans": 4, "num_pool_layers": 2})(torch.rand(1, 1, 30, 34)).shape == (1, 1, 30, 34)
    assert SwinMR(TINY["swinmr"]["model"])(x).shape == x.shape
    mask = mask_batch(2, 40)
    k_u = undersample(x[:, 0], mask[:, None, :]).to(torch.complex64)
    assert VarNet(TINY["varnet"]["model"])(k_u, mask).shape == x.shape
    score = ScoreNet(TINY["score_mri"]["model"])(x, torch.tensor([0.5, 3.0]))
    assert score.shape == x.shape and torch.isfinite(score).all()


# ------------------------------------------------------------------------ physics / sampler


class _Zero(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_varnet_dc_keeps_sampled_kspace():
    torch.manual_seed(0)
    x = smooth_images(2, 32)[:, 0]
    mask = mask_batch(2, 32)
    m = mask[:, None, :]
    k_u = undersample(x, m).to(torch.complex64)
    k = torch.randn(2, 32, 32, dtype=torch.complex64)  # an arbitrary current estimate
    block = VarNetBlock(_Zero())
    with torch.no_grad():
        block.dc_weight.fill_(1.0)
        out = block(k, k_u, m)
        block.dc_weight.fill_(0.25)
        soft = block(k, k_u, m)
    sampled = m.expand_as(k) > 0
    torch.testing.assert_close(out[sampled], k_u[sampled])   # measured lines replaced by k_u
    torch.testing.assert_close(out[~sampled], k[~sampled])   # the rest untouched
    # eta = 0.25 (hand): the measured lines move a quarter of the way to k_u, the rest stays
    torch.testing.assert_close(soft[sampled], 0.75 * k[sampled] + 0.25 * k_u[sampled])
    torch.testing.assert_close(soft[~sampled], k[~sampled])


def test_varnet_with_zero_regularisers_returns_zero_filled_in_raw_units():
    """With every cascade's regulariser outputting 0 the k-space stays ``k_u`` (the soft DC
    term ``M (k - k_u)`` is 0), so VarNet returns ``|F^-1(k_u)|``: here checked against numpy's
    FFT on raw fastMRI-scale data (~1e-4), directly and through :func:`reconstruct`, which
    divides by ``s = max |x_u|`` and multiplies the output back by ``s``."""
    x = smooth_images(2, 32)[:, 0].numpy().astype(np.float64) * 1e-4
    mask = mask_batch(2, 32).numpy().astype(np.float32)
    k_np = np_fft2c(x) * mask[:, None, :]
    ref = np.abs(np_ifft2c(k_np))                      # zero-filled magnitude, raw units
    assert 1e-5 < ref.max() < 1e-3
    net = VarNet({"num_cascades": 2, "chans": 4, "pools": 2})
    for c in net.cascades:
        c.model = _Zero()
    k_u = torch.from_numpy(k_np.astype(np.complex64))
    with torch.no_grad():
        direct = net(k_u, torch.from_numpy(mask))[:, 0].numpy()
    np.testing.assert_allclose(direct, ref, rtol=0, atol=1e-6 * ref.max())
    rec = reconstruct("varnet", net, baseline_config("varnet", TINY["varnet"]), k_np.astype(np.complex64),
                      mask)
    assert rec.dtype == np.float32 and rec.shape == ref.shape
    np.testing.assert_allclose(rec, ref, rtol=0, atol=1e-6 * ref.max())


def test_score_sampler_applies_dc_every_step(monkeypatch):
    x = smooth_images(2, 32)[:, 0]
    mask = mask_batch(2, 32, seed=3)
    k_u = undersample(x, mask[:, None, :]).to(torch.complex64)
    calls = []
    real_dc = score_pc.data_consistency

    def counting_dc(image, k, m):
        calls.append(1)
        return real_dc(image, k, m)

    monkeypatch.setattr(score_pc, "data_consistency", counting_dc)
    sde = VESDE(0.01, 5.0, N=4)
    score_fn = lambda xt, sigma: -xt / (sigma[:, None, None, None] ** 2 + 1)  # a Gaussian prior
    out = score_pc.score_pc_sample(score_fn, k_u, mask, sde, n_corrector=2)
    assert len(calls) == 1 + sde.N * (2 + 1) + 1
    sampled = mask[:, None, :].expand(2, 32, 32) > 0
    torch.testing.assert_close(fft2c(out)[sampled], k_u[sampled], atol=1e-5, rtol=1e-4)
    assert fft2c(out)[~sampled].abs().max() > 1e-3  # the prior filled the rest
    # deterministic given the generators
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]
    a = score_pc.score_pc_sample(score_fn, k_u, mask, sde, generators=gens())
    b = score_pc.score_pc_sample(score_fn, k_u, mask, sde, generators=gens())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_score_mri_averages_its_draws_and_puts_the_mean_through_dc():
    from ldpm.baselines import baseline
    from ldpm.mri import data_consistency
    from ldpm.sampling.mean import draw_seeds

    forward = baseline("score_mri").forward
    model = build_baseline("score_mri", TINY["score_mri"]).eval()
    x = smooth_images(2, 32)[:, 0]
    mask = mask_batch(2, 32, seed=3).to(torch.float32)
    k_u = undersample(x, mask[:, None, :]).to(torch.complex64)
    batch = {"k_u": k_u, "mask": mask, "seeds": [11, 12]}
    cfg = {**TINY["score_mri"], "sampler": {**TINY["score_mri"]["sampler"], "predictor": "ancestral"}}
    with torch.no_grad():
        draws = [forward(model, {**batch, "seeds": draw_seeds([11, 12], k)}, cfg, {"n_samples": 1})
                 for k in range(3)]
        three = forward(model, batch, cfg, {"n_samples": 3})
    assert not torch.equal(draws[0], draws[1])
    mean = (draws[0] + draws[1] + draws[2]) / 3
    torch.testing.assert_close(three, data_consistency(mean[:, 0], k_u, mask[:, None, :]).abs()[:, None])
    # one draw is the published sampler's output, and the default of a sampler block without n_samples
    torch.testing.assert_close(forward(model, batch, cfg, {}), draws[0], rtol=0, atol=0)


def test_swinmr_loss_terms():
    """SwinMR's loss by hand (float64): Charbonnier ``mean sqrt(d^2 + eps)``, eps = 1e-9; the
    frequency term on the unnormalised ``fftn`` of the whole [2, 1, 16, 16] batch (512 values):
    a constant offset 0.1 is one DC coefficient 0.1 * 512 = 51.2, an impulse 0.5 has ``fftn``
    ``0.5 exp(-2 pi i k.n / N)`` (numpy's); totals ``15 L_img + 0.1 L_freq``."""
    crit = SwinMRLoss({"vgg19_weights": None})
    assert crit.note is not None and "VGG19" in crit.note   # perceptual term off, and said so
    x = smooth_images(2, 16).double()
    n, r = x.numel(), 1e-9 ** 0.5
    assert n == 512
    total, parts = crit(x, x)
    assert parts == pytest.approx({"image": r, "freq": r, "perc": 0.0}, rel=1e-6)
    assert float(total) == pytest.approx(15.1 * r, rel=1e-6)
    total2, parts2 = crit(x + 0.1, x)
    image2 = (0.01 + 1e-9) ** 0.5
    freq2 = ((51.2 ** 2 + 1e-9) ** 0.5 + (n - 1) * r) / n / 2 + r / 2
    assert parts2 == pytest.approx({"image": image2, "freq": freq2, "perc": 0.0}, rel=1e-6)
    assert float(total2) == pytest.approx(15 * image2 + 0.1 * freq2, rel=1e-6)
    impulse = torch.zeros_like(x)
    impulse[0, 0, 3, 5] = 0.5
    _, parts3 = crit(x + impulse, x)
    d = np.fft.fftn(impulse.numpy())
    freq3 = (np.sqrt(d.real ** 2 + 1e-9).mean() + np.sqrt(d.imag ** 2 + 1e-9).mean()) / 2
    image3 = ((0.25 + 1e-9) ** 0.5 + (n - 1) * r) / n
    assert parts3 == pytest.approx({"image": image3, "freq": freq3, "perc": 0.0}, rel=1e-6)
    with pytest.raises(LdpmInputError):
        SwinMRLoss({"vgg19_weights": "/nonexistent/vgg19.pth"})


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", BASELINES)
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    cfg = baseline_config(name, TINY[name])
    model = build_baseline(name, cfg).train()
    batch = make_batch(smooth_images(2, 32), 8, 0.04, seed=0, step=0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        loss, _ = compute_loss(name, model, batch, cfg, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_registry_reconstructs_a_shard(tmp_path):
    images = smooth_images(6, 32)
    target = images[:3, 0].numpy() * 1e-4          # raw fastMRI-like scale
    mask = mask_batch(3, 32, seed=7).numpy().astype(np.float32)
    shard = tmp_path / "shard.h5"
    with h5py.File(shard, "w") as f:
        f["target"], f["mask"] = target, mask
        f["volume"] = np.array([b"v0"] * 3)
        f["slice"] = np.arange(3)
    for name in BASELINES:
        assert name in METHODS
        ckpt = tmp_path / name
        cfg = {**TINY[name], "crop": None, "batch_size": 2, "ckpt_every": 1}
        train_baseline(name, images, cfg, ckpt, seed=0, n_steps=2, log=False)
        assert (ckpt / "final" / "model.safetensors").is_file() and (ckpt / "log.csv").is_file()
        out = tmp_path / f"{name}.h5"
        reconstruct_shard(name, shard, out, {name: ckpt}, {"seed": 1})
        with h5py.File(out, "r") as f:
            recon = f["recon"][()]
        assert recon.shape == target.shape and recon.dtype == np.float32
        assert np.isfinite(recon).all() and (recon >= 0).all()
        again = METHODS[name](measure(target, mask), mask, {name: ckpt / "final"},
                              {"seed": 1, "slice_seeds": seeds_for([b"v0"] * 3, range(3), 1)})
        np.testing.assert_array_equal(as_magnitude(again), recon)   # deterministic
    with pytest.raises(LdpmInputError, match="not 'unet'"):
        load_baseline(tmp_path / "varnet", expect="unet")


def test_a_written_reconstruction_is_a_magnitude_with_non_finite_values_kept(tmp_path, monkeypatch):
    """Negative values of a method's output are written as 0; NaN and +-inf stay for the
    evaluation to refuse."""
    raw = np.array([[[-0.5, 0.25], [np.nan, -np.inf]], [[np.inf, -1e-8], [0.0, 2.0]]], np.float32)
    monkeypatch.setitem(METHODS, "signed", lambda k_u, mask, checkpoints, options: raw)
    shard = tmp_path / "shard0.h5"
    with h5py.File(shard, "w") as f:
        f["target"], f["mask"] = np.ones((2, 2, 2), np.float32), np.ones((2, 2), np.float32)
        f["volume"], f["slice"] = np.array([b"v", b"v"]), np.arange(2)
    reconstruct_shard("signed", shard, tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r") as f:
        recon = f["recon"][()]
    np.testing.assert_array_equal(recon, [[[0.0, 0.25], [np.nan, -np.inf]], [[np.inf, 0.0], [0.0, 2.0]]])


def test_training_resumes_bit_for_bit(tmp_path):
    images = smooth_images(4, 32)
    cfg = {**TINY["unet"], "crop": 16, "batch_size": 2, "ckpt_every": 1}
    train_baseline("unet", images, cfg, tmp_path / "a", seed=3, n_steps=4, log=False)
    train_baseline("unet", images, cfg, tmp_path / "b", seed=3, n_steps=4, log=False, stop_after=2)
    assert not (tmp_path / "b" / "final").exists()
    train_baseline("unet", images, cfg, tmp_path / "b", seed=3, n_steps=4, log=False)
    a = load_baseline(tmp_path / "a")[0].state_dict()
    b = load_baseline(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_score_sampler_predictors_track_the_noise_level():
    """Point-mass prior at 0 (exact score -x / sigma^2), nothing measured: both predictors end
    near 0; an unknown predictor name is refused."""
    k_u = torch.zeros(4, 16, 16, dtype=torch.complex64)
    mask = torch.zeros(4, 16)
    sde = VESDE(0.01, 10.0, N=30)
    score_fn = lambda xt, sigma: -xt / sigma[:, None, None, None] ** 2
    for predictor in ("reverse_diffusion", "ancestral"):
        out = score_pc.score_pc_sample(score_fn, k_u, mask, sde, predictor=predictor)
        assert out.abs().std() < 0.1, predictor
    with pytest.raises(ValueError):
        score_pc.score_pc_sample(score_fn, k_u, mask, sde, predictor="euler")
