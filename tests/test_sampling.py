"""Samplers: respaced schedule, eq. 8/12 algebra, latent DC (eq. 9), guidance (eq. 10-11), stage switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ldpm.mri import fft2c, ifft2c, undersample
from ldpm.models import build_vae, vae_decode, vae_encode
from conftest import TINY_VAE
from ldpm.sampling import (DualStageSampler, dual_stage, dual_stage_sample, kspace_guidance,
                           kspace_residual, latent_data_consistency, pixel_data_consistency,
                           plain_spaced_ddpm, posterior_step, predict_z0, respace)
from ldpm.sampling.spaced import SpacedSchedule

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ------------------------------------------------------------------ independent references


def improved_ddpm_space_timesteps(num_timesteps, section_counts):
    """openai/improved-diffusion ``respace.space_timesteps`` (list-of-counts form), re-typed from
    its published definition: each of the equal sections is strided with ``round`` of a
    fractional stride ``(size - 1) / (count - 1)``."""
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


def improved_ddpm_respaced_betas(alphas_cumprod, use_timesteps):
    """improved-diffusion ``SpacedDiffusion.__init__``: new betas from the kept steps' abar."""
    last, betas = 1.0, []
    for i, a in enumerate(alphas_cumprod):
        if i in use_timesteps:
            betas.append(1 - a / last)
            last = a
    return np.array(betas)


def np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def np_dc(x, k_u, mask):
    """eq. 3 in numpy: ``F^-1{F[x](1 - M) + k_u M}`` (complex)."""
    m = np.asarray(mask, np.float64)
    return np_ifft2c(np_fft2c(np.asarray(x, np.float64)) * (1 - m) + np.asarray(k_u) * m)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(TINY_VAE).eval()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 32, 32, generator=g)
    mask = torch.zeros(32)
    mask[[0, 3, 7, 14, 15, 16, 17, 22, 29]] = 1
    return x, undersample(x, mask), mask


def test_respace_matches_diffusers_schedule():
    s = respace(25)
    abar = DDPMScheduler(**SD).alphas_cumprod.double()
    assert len(s) == 25 and int(s.timesteps[0]) == 0 and int(s.timesteps[-1]) == 999
    assert (s.timesteps.diff() > 0).all()
    torch.testing.assert_close(s.alphas_cumprod, abar[s.timesteps])
    assert float(s.alphas_cumprod_prev[0]) == 1.0 and float(s.posterior_variance[0]) == 0.0
    full = respace(1000)  # no respacing: the original betas come back
    torch.testing.assert_close(full.betas, 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 25, 50, 333, 1000])
def test_respace_is_improved_ddpm_spacing_with_diffusers_posterior_variance(n):
    """Kept steps = improved-DDPM's ``space_timesteps(1000, [n])``; betas = its
    ``SpacedDiffusion`` betas; ``sigma^2`` at each kept step = diffusers' ``DDPMScheduler``
    "fixed_small" variance, both of a scheduler whose training betas are the respaced ones and
    of SD's own scheduler stepping through the kept timesteps (``set_timesteps(timesteps=...)``)."""
    s = respace(n)
    kept = sorted(improved_ddpm_space_timesteps(1000, [n]))
    assert s.timesteps.tolist() == kept
    base = DDPMScheduler(**SD)
    abar_all = base.alphas_cumprod.double().numpy()
    betas = improved_ddpm_respaced_betas(abar_all, set(kept))
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12, atol=0)
    respaced = DDPMScheduler(num_train_timesteps=n, trained_betas=betas.tolist(), clip_sample=False)
    var_a = torch.stack([respaced._get_variance(i) for i in range(n)]).double()
    base.set_timesteps(timesteps=kept[::-1])
    var_b = torch.stack([base._get_variance(t) for t in kept]).double()
    for ref in (var_a, var_b):  # diffusers: float32 (1 - a/a_prev cancels), t = 0 clamped at 1e-20
        torch.testing.assert_close(s.posterior_variance, ref, rtol=2e-4, atol=1e-9)
    if n > 1:
        assert float(s.posterior_variance[1:].min()) > 1e-6  # not a trivially all-zero match


def test_predict_z0_inverts_forward_process():
    z, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    abar = 0.3
    z_t = abar ** 0.5 * z + (1 - abar) ** 0.5 * eps
    torch.testing.assert_close(predict_z0(z_t, eps, abar), z)


def test_posterior_step_is_ddpm_posterior_mean():
    s = respace(10)
    i = 6
    abar, prev, beta, var = (float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i]),
                             float(s.betas[i]), float(s.posterior_variance[i]))
    z_t, z0 = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    mean = (beta * prev ** 0.5 / (1 - abar)) * z0 + ((1 - beta) ** 0.5 * (1 - prev) / (1 - abar)) * z_t
    torch.testing.assert_close(posterior_step(z_t, z0, abar, prev, var, None), mean)
    xi = torch.randn_like(z_t)
    torch.testing.assert_close(posterior_step(z_t, z0, abar, prev, var, xi), mean + var ** 0.5 * xi)


def test_pixel_dc_restores_measured_kspace(problem):
    """``|DC(x0, k_u, M)|`` and ``delta`` against eq. 3 / eq. 10 written with numpy's FFT (the
    same centred orthonormal convention), with ``k_u`` itself measured by numpy."""
    x, _, mask = problem
    m = mask.numpy().astype(np.float64)
    k_np = np_fft2c(x.double().numpy()) * m
    k_u = torch.from_numpy(k_np).to(torch.complex64)
    x0 = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    ref = np.abs(np_dc(x0.numpy(), k_np, m))
    np.testing.assert_allclose(pixel_data_consistency(x0, k_u, mask).numpy(), ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(np_fft2c(np_dc(x0.numpy(), k_np, m))[..., m > 0], k_np[..., m > 0],
                               atol=1e-12)  # the reference itself keeps the measured lines
    # with a consistent real, non-negative estimate, the magnitude DC is the image itself
    np.testing.assert_allclose(pixel_data_consistency(x, k_u, mask).numpy(), x.numpy(), atol=2e-6)
    # delta (eq. 10): the squared L2 norm of the masked k-space residual, summed over the batch
    delta_ref = float((np.abs((np_fft2c(x0.double().numpy()) - k_np) * m) ** 2).sum())
    assert float(kspace_residual(x0, k_u, mask)) == pytest.approx(delta_ref, rel=1e-5)
    two = kspace_residual(torch.cat([x0, x]), torch.cat([k_u, k_u]), mask)
    assert float(two) == pytest.approx(delta_ref, rel=1e-5)  # x is consistent: adds ~0
    dc_delta = float(kspace_residual(pixel_data_consistency(x0, k_u, mask), k_u, mask))
    np_dc_delta = float((np.abs((np_fft2c(ref) - k_np) * m) ** 2).sum())
    assert dc_delta == pytest.approx(np_dc_delta, rel=1e-3, abs=1e-6)
    assert dc_delta < 0.5 * delta_ref


def test_latent_dc_encodes_the_pixel_dc_image(vae, problem):
    x, k_u, mask = problem
    seen = []

    def enc(img):
        seen.append(img)
        return vae_encode(vae, img)

    dec = lambda z: vae_decode(vae, z)  # noqa: E731
    z0 = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        out = latent_data_consistency(z0, k_u, mask, enc, dec)
        decoded = dec(z0)
        expected_z = vae_encode(vae, seen[0])
    assert out.shape == z0.shape and len(seen) == 1
    ref = np.abs(np_dc(decoded.numpy(), k_u.numpy(), mask.numpy()))  # numpy eq. 3 on D(z0)
    np.testing.assert_allclose(seen[0].numpy(), ref, rtol=0, atol=2e-6)
    torch.testing.assert_close(out, expected_z)


def test_guidance_step_lowers_delta(vae, problem):
    x, k_u, mask = problem
    dec = lambda z: vae_decode(vae, z)  # noqa: E731
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = kspace_residual(dec(z0), k_u, mask)
        after = kspace_residual(dec(kspace_guidance(z0, k_u, mask, dec, 0.1)), k_u, mask)
        worse = kspace_residual(dec(kspace_guidance(z0, k_u, mask, dec, -0.1)), k_u, mask)
    assert after < before < worse


def test_guidance_step_through_the_vae_is_the_finite_difference_gradient(vae, problem):
    """Through the (nonlinear) tiny VAE decoder, in float64: ``(z0 - z0') / g`` has the
    directional derivatives of a numpy ``delta(D(z))`` (eq. 10), by central differences."""
    import copy

    x, k_u, mask = problem
    vae64 = copy.deepcopy(vae).double()
    dec = lambda z: vae_decode(vae64, z)  # noqa: E731
    k_np, m = k_u.numpy().astype(np.complex128), mask.numpy().astype(np.float64)

    def delta_np(z):
        with torch.no_grad():
            img = dec(z).numpy()
        return float((np.abs((np_fft2c(img) - k_np) * m) ** 2).sum())

    g = 0.05
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad = (z0 - kspace_guidance(z0, k_u, mask, dec, g)) / g
    gen, h = torch.Generator().manual_seed(8), 1e-4
    for _ in range(3):
        v = torch.randn(z0.shape, generator=gen, dtype=torch.float64)
        fd = (delta_np(z0 + h * v) - delta_np(z0 - h * v)) / (2 * h)
        assert float((grad * v).sum()) == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_guidance_gradient_is_the_analytic_one_and_per_sample(problem):
    """For a linear decoder D(z) = a z (a real image), eq. 11's step is
    ``z - g * 2 a Re(F^H M (F D z - k_u))`` (M binary), computed here by hand; and duplicating
    the batch leaves every sample's step unchanged (eq. 10 is summed per sample)."""
    x, k_u, mask = problem
    a, g = 1.7, 0.05
    dec = lambda z: a * z  # noqa: E731
    z0 = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    m = mask.to(torch.float32).view(1, 1, 1, -1).expand_as(k_u.real)
    residual = m * (fft2c((a * z0).to(torch.complex64)) - k_u)
    expected = z0 - g * 2 * a * ifft2c(m * residual).real
    out = kspace_guidance(z0, k_u, mask, dec, g)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    twice = kspace_guidance(z0.repeat(2, 1, 1, 1), k_u.repeat(2, 1, 1, 1), mask, dec, g)
    torch.testing.assert_close(twice, expected.repeat(2, 1, 1, 1), rtol=1e-5, atol=1e-6)


def _hand_schedule() -> SpacedSchedule:
    """Two kept steps with hand-picked numbers: t = 100 (abar 0.9) and t = 700 (abar 0.4);
    ``sigma^2 = 0.03`` at t = 700 (less than the posterior variance: a DDIM-like eta)."""
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return SpacedSchedule(timesteps=torch.tensor([100, 700]), alphas_cumprod=f64([0.9, 0.4]),
                          alphas_cumprod_prev=f64([1.0, 0.9]), betas=f64([0.1, 1 - 0.4 / 0.9]),
                          posterior_variance=f64([0.0, 0.03]))


@pytest.mark.parametrize("eps_mode", ["rederive", "network"])
def test_dual_stage_steps_by_hand(eps_mode):
    """Identity codec (``E = D = id`` on 8x8 'latents'), a constant eps-model and the
    two-step schedule above, p = 200: step t = 700 is latent DC (eq. 9), step t = 100 guidance
    (eq. 10-11), each followed by eq. 12. Every step is recomputed in numpy float64; the two
    ``eps_mode`` s differ in eq. 12's ``eps`` (network's vs re-derived from ``z0'``)."""
    rng = np.random.default_rng(0)
    x_true = rng.random((1, 1, 8, 8))
    m = np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float64)  # asymmetric: the FFT centring matters
    k_np = np_fft2c(x_true) * m
    E = rng.normal(size=(1, 1, 8, 8))
    seen = []

    def eps_fn(z, t, c):
        seen.append((z.clone(), int(t[0])))
        return torch.from_numpy(E).to(torch.float32)

    ident = lambda v: v  # noqa: E731
    g_scale = 0.05
    out = dual_stage_sample(eps_fn, ident, ident, torch.zeros(1, 1, 8, 8),
                            torch.from_numpy(k_np).to(torch.complex64), torch.from_numpy(m).float(),
                            _hand_schedule(), p=200, guidance_scale=g_scale,
                            generator=torch.Generator().manual_seed(0), eps_mode=eps_mode)
    gen = torch.Generator().manual_seed(0)  # z_T, then the one noise draw of step t = 700
    z_T = torch.randn(1, 1, 8, 8, generator=gen).double().numpy()
    xi = torch.randn(1, 1, 8, 8, generator=gen).double().numpy()
    # step t = 700: abar 0.4, abar_prev 0.9, sigma^2 0.03
    z0 = (z_T - np.sqrt(0.6) * E) / np.sqrt(0.4)
    z0 = np.abs(np_ifft2c(np_fft2c(z0) * (1 - m) + k_np * m))
    eps = E if eps_mode == "network" else (z_T - np.sqrt(0.4) * z0) / np.sqrt(0.6)
    z_1 = np.sqrt(0.9) * z0 + np.sqrt(1 - 0.9 - 0.03) * eps + np.sqrt(0.03) * xi
    # step t = 100: abar 0.9, abar_prev 1 (so z_0 = z0'); d delta / dz = 2 Re F^H M (F z - k_u)
    z0 = (z_1 - np.sqrt(0.1) * E) / np.sqrt(0.9)
    z0 = z0 - g_scale * 2 * np_ifft2c(m * (np_fft2c(z0) - k_np)).real
    assert [t for _, t in seen] == [700, 100]
    np.testing.assert_allclose(seen[0][0].numpy(), z_T, rtol=0, atol=1e-6)
    np.testing.assert_allclose(seen[1][0].numpy(), z_1, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out.numpy(), np.maximum(z0, 0), rtol=0, atol=5e-5)
    other = (z_T - np.sqrt(0.4) * np.abs(np_dc((z_T - np.sqrt(0.6) * E) / np.sqrt(0.4), k_np, m))
             ) / np.sqrt(0.6)
    assert np.abs(other - E).max() > 0.1  # the two modes' eps really differ here


@pytest.mark.parametrize("n", [4, 10])
def test_plain_sampler_is_diffusers_ddpm_through_the_kept_steps(n):
    """The "w/o DSS" sampler = diffusers' ``DDPMScheduler.step`` (epsilon prediction, no
    clipping, fixed_small variance) run over the kept timesteps of SD's schedule, with the same
    generator (z_T, then one draw per step with t > 0, as diffusers draws)."""
    s = respace(n)
    c = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    eps_fn = lambda z, t, cl: 0.4 * z - 0.2 * cl + 1e-4 * t.float().view(-1, 1, 1, 1)  # noqa: E731
    ours = plain_spaced_ddpm(eps_fn, (1, 4, 4, 4), s, torch.Generator().manual_seed(0), c)
    sched = DDPMScheduler(**SD, clip_sample=False)
    sched.set_timesteps(timesteps=s.timesteps.flip(0).tolist())
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 4, 4, generator=gen)
    for t in sched.timesteps:
        z = sched.step(eps_fn(z, t.view(1), c), t, z, generator=gen).prev_sample
    torch.testing.assert_close(ours, z, rtol=1e-4, atol=1e-4)


def _run(monkeypatch, vae, problem, sampler):
    x, k_u, mask = problem
    calls, ts = [], []
    real_dc, real_g = dual_stage.latent_data_consistency, dual_stage.kspace_guidance

    def dc(*a, **k):
        calls.append("dc")
        return real_dc(*a, **k)

    def guide(*a, **k):
        calls.append("g")
        return real_g(*a, **k)

    monkeypatch.setattr(dual_stage, "latent_data_consistency", dc)
    monkeypatch.setattr(dual_stage, "kspace_guidance", guide)

    def eps_fn(z, t, c):
        ts.append(int(t[0]))
        return 0.5 * z - 0.1 * c

    enc, dec = (lambda im: vae_encode(vae, im)), (lambda z: vae_decode(vae, z))
    c_lat = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    out = sampler(eps_fn, enc, dec, c_lat, k_u, mask, torch.Generator().manual_seed(0))
    return out, calls, ts


def test_stage_switch_at_p(monkeypatch, vae, problem):
    sampler = DualStageSampler(n_steps=12, p=200, guidance_scale=0.1, eps_mode="rederive")
    out, calls, ts = _run(monkeypatch, vae, problem, sampler)
    expected_ts = sampler.schedule.timesteps.flip(0).tolist()
    assert ts == expected_ts  # original timesteps, high to low
    assert calls == ["dc" if t > 200 else "g" for t in expected_ts]
    assert calls.count("g") == sum(t <= 200 for t in expected_ts) > 0
    assert out.shape == (1, 1, 32, 32) and out.min() >= 0


def test_plain_sampler_calls_neither(monkeypatch, vae, problem):
    plain = DualStageSampler(n_steps=6, p=200, guidance_scale=0.1, eps_mode="rederive", use_dss=False)
    out, calls, ts = _run(monkeypatch, vae, problem, plain)
    assert calls == [] and len(ts) == 6
    assert out.shape == (1, 1, 32, 32) and out.min() >= 0


def test_samplers_are_seeded(vae, problem):
    x, k_u, mask = problem
    enc, dec = (lambda im: vae_encode(vae, im)), (lambda z: vae_decode(vae, z))
    eps_fn = lambda z, t, c: 0.3 * z  # noqa: E731
    c = torch.zeros(1, 4, 4, 4)
    s = respace(5)
    settings = {"p": 200, "guidance_scale": 0.1, "eps_mode": "rederive"}
    a = dual_stage_sample(eps_fn, enc, dec, c, k_u, mask, s, **settings,
                          generator=torch.Generator().manual_seed(0))
    b = dual_stage_sample(eps_fn, enc, dec, c, k_u, mask, s, **settings,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    z1 = plain_spaced_ddpm(eps_fn, (1, 4, 4, 4), s, torch.Generator().manual_seed(0), c)
    z2 = plain_spaced_ddpm(eps_fn, (1, 4, 4, 4), s, torch.Generator().manual_seed(1), c)
    assert not torch.equal(z1, z2)


# ------------------------------------------------------------- the mean of K posterior draws


def _draws(n: int, shape=(2, 1, 16, 16)):
    gen = torch.Generator().manual_seed(3)
    return [torch.rand(shape, generator=gen) for _ in range(n)]


def test_one_draw_is_returned_unchanged_and_k_draws_are_averaged():
    from ldpm.sampling.mean import sample_mean

    draws = _draws(3)
    assert sample_mean(lambda k: draws[k], 1) is draws[0]
    asked = []

    def draw(k):
        asked.append(k)
        return draws[k]

    torch.testing.assert_close(sample_mean(draw, 3), (draws[0] + draws[1] + draws[2]) / 3)
    assert asked == [0, 1, 2]
    with pytest.raises(ValueError, match="n_samples"):
        sample_mean(draw, 0)


def test_draw_seeds_keep_draw_zero_and_differ_per_draw():
    from ldpm.sampling.mean import draw_seeds

    seeds = [5, 2**40 + 7, 11]
    assert draw_seeds(seeds, 0) == [5, 2**40 + 7, 11]
    one, two = draw_seeds(seeds, 1), draw_seeds(seeds, 2)
    assert one == draw_seeds(seeds, 1) and len(set(one + two + seeds)) == 9
    assert all(0 <= s < 2**32 for s in one + two)
