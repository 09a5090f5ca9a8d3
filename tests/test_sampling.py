"""Samplers: respaced schedule, eq. 8/12 algebra, latent DC (eq. 9), guidance (eq. 10-11), stage switch."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from ldpm.mri import fft2c, ifft2c, undersample
from ldpm.models import build_vae, vae_decode, vae_encode
from conftest import TINY_VAE
from ldpm.sampling import (DualStageSampler, dual_stage, dual_stage_sample, kspace_guidance,
                           kspace_residual, latent_data_consistency, pixel_data_consistency,
                           plain_spaced_ddpm, posterior_step, predict_z0, respace)




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
    abar = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear").alphas_cumprod.double()
    assert len(s) == 25 and int(s.timesteps[0]) == 0 and int(s.timesteps[-1]) == 999
    assert (s.timesteps.diff() > 0).all()
    torch.testing.assert_close(s.alphas_cumprod, abar[s.timesteps])
    assert float(s.alphas_cumprod_prev[0]) == 1.0 and float(s.posterior_variance[0]) == 0.0
    full = respace(1000)  # no respacing: the original betas come back
    torch.testing.assert_close(full.betas, 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]))


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
    x, k_u, mask = problem
    x0 = torch.rand_like(x)
    m = mask.bool()
    dc_complex = ifft2c(fft2c(x0) * (1 - mask) + k_u * mask)
    torch.testing.assert_close(fft2c(dc_complex)[..., m], k_u[..., m], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixel_data_consistency(x0, k_u, mask), dc_complex.abs())
    # with a consistent real, non-negative estimate, the magnitude DC is exact too
    x_dc = pixel_data_consistency(x, k_u, mask)
    torch.testing.assert_close(fft2c(x_dc)[..., m], k_u[..., m], atol=1e-5, rtol=0)
    assert kspace_residual(pixel_data_consistency(x0, k_u, mask), k_u, mask) < \
        0.5 * kspace_residual(x0, k_u, mask)


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
        expected = pixel_data_consistency(dec(z0), k_u, mask)
    assert out.shape == z0.shape and len(seen) == 1
    torch.testing.assert_close(seen[0], expected)


def test_guidance_step_lowers_delta(vae, problem):
    x, k_u, mask = problem
    dec = lambda z: vae_decode(vae, z)  # noqa: E731
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = kspace_residual(dec(z0), k_u, mask)
        after = kspace_residual(dec(kspace_guidance(z0, k_u, mask, dec, 0.1)), k_u, mask)
        worse = kspace_residual(dec(kspace_guidance(z0, k_u, mask, dec, -0.1)), k_u, mask)
    assert after < before < worse


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
    sampler = DualStageSampler(n_steps=12, p=200)
    out, calls, ts = _run(monkeypatch, vae, problem, sampler)
    expected_ts = sampler.schedule.timesteps.flip(0).tolist()
    assert ts == expected_ts  # original timesteps, high to low
    assert calls == ["dc" if t > 200 else "g" for t in expected_ts]
    assert calls.count("g") == sum(t <= 200 for t in expected_ts) > 0
    assert out.shape == (1, 1, 32, 32) and out.min() >= 0


def test_plain_sampler_calls_neither(monkeypatch, vae, problem):
    out, calls, ts = _run(monkeypatch, vae, problem, DualStageSampler(n_steps=6, use_dss=False))
    assert calls == [] and len(ts) == 6
    assert out.shape == (1, 1, 32, 32) and out.min() >= 0


def test_samplers_are_seeded(vae, problem):
    x, k_u, mask = problem
    enc, dec = (lambda im: vae_encode(vae, im)), (lambda z: vae_decode(vae, z))
    eps_fn = lambda z, t, c: 0.3 * z  # noqa: E731
    c = torch.zeros(1, 4, 4, 4)
    s = respace(5)
    a = dual_stage_sample(eps_fn, enc, dec, c, k_u, mask, s, generator=torch.Generator().manual_seed(0))
    b = dual_stage_sample(eps_fn, enc, dec, c, k_u, mask, s, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    z1 = plain_spaced_ddpm(eps_fn, (1, 4, 4, 4), s, torch.Generator().manual_seed(0), c)
    z2 = plain_spaced_ddpm(eps_fn, (1, 4, 4, 4), s, torch.Generator().manual_seed(1), c)
    assert not torch.equal(z1, z2)
