"""The Dual-Stage Sampler (DSS, eq. 8-12): respaced DDPM with k-space fidelity in two stages.

At each kept step with ORIGINAL timestep t (read top to bottom in :func:`dual_stage_sample`):

1. ``eps = eps_theta(z_t, t, c_latent)``, ``z0_hat`` by eq. 8 (:func:`predict_z0`);
2. ``t > p``: latent DC, ``z0' = E[|DC(D(z0_hat), k_u, M)|]`` (eq. 9, :func:`latent_data_consistency`,
   magnitude, no random phase);
   ``t <= p``: k-space guidance, ``z0' = z0_hat - g grad delta`` with
   ``delta = ||(F(D(z0_hat)) - k_u) M||^2`` (eq. 10-11, :func:`kspace_guidance`);
3. ``z_{t-1}`` from ``z0'`` by eq. 12 (:func:`posterior_step`).

Reading of eq. 10's expectation: ``delta`` is the squared L2 norm over k-space of one sample.
A batch sums the samples' ``delta``: each sample's gradient is then its own, whatever the batch
size, so sampling a batch gives what sampling its slices one at a time gives.

The sampler's settings (``n_steps``, ``p``, ``guidance_scale``, ``eps_mode``) have no defaults
here: their one source is the config's ``inference.ldpm`` block
(:func:`ldpm.methods.ldpm.sampler_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..mri import data_consistency, fft2c
from .spaced import (EpsFn, Generators, SpacedSchedule, _randn, plain_sample, posterior_step, predict_z0,
                     respace)

Codec = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["predict_z0", "pixel_data_consistency", "latent_data_consistency", "kspace_residual",
           "kspace_guidance", "posterior_step", "dual_stage_sample", "DualStageSampler"]


def pixel_data_consistency(x0: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``|DC(x0, k_u, M)|`` (eq. 3 on the decoded prediction), a real [B, 1, H, W] image."""
    return data_consistency(x0, k_u, mask).abs()


def latent_data_consistency(z0: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor,
                            vae_encode: Codec, vae_decode: Codec) -> torch.Tensor:
    """``z0' = E[|DC(D(z0), k_u, M)|]`` (eq. 9), used while ``t > p``."""
    return vae_encode(pixel_data_consistency(vae_decode(z0), k_u, mask))


def kspace_residual(x0: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``delta = sum_b ||(F(x0_b) - k_u,b) M_b||_2^2`` (eq. 10, summed over the batch), a scalar."""
    m = torch.as_tensor(mask, device=k_u.device).to(torch.float32)
    r = (fft2c(x0) - k_u) * m
    return (r.real ** 2 + r.imag ** 2).sum()


def kspace_guidance(z0: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor, vae_decode: Codec,
                    guidance_scale: float) -> torch.Tensor:
    """``z0' = z0 - g * grad_{z0} delta(D(z0))`` (eq. 10-11; autograd through the decoder)."""
    with torch.enable_grad():
        z = z0.detach().requires_grad_(True)
        delta = kspace_residual(vae_decode(z), k_u, mask)
        (grad,) = torch.autograd.grad(delta, z)
    return (z0 - guidance_scale * grad).detach()


def dual_stage_sample(eps_fn: EpsFn, vae_encode: Codec, vae_decode: Codec, c_latent: torch.Tensor,
                      k_u: torch.Tensor, mask: torch.Tensor, schedule: SpacedSchedule,
                      p: int, guidance_scale: float, generator: Generators = None, *,
                      eps_mode: str) -> torch.Tensor:
    """Sample ``x_hat`` [B, 1, H, W] given ``c_latent = E(c)`` and the measurements.

    The decoded sample is clipped at 0 only (a magnitude): intensities above ``max |x_u|``
    (the unit of a normalised slice) are kept.

    ``p`` and the switch compare ORIGINAL timesteps in [0, T-1]. ``eps_mode``: ``"rederive"``
    recomputes eq. 12's ``eps_t`` from ``z0'`` so that each step is the DDPM
    posterior ``q(z_{t-1} | z_t, z0')``; ``"network"`` uses the network's ``eps_t`` as printed.
    """
    if eps_mode not in ("rederive", "network"):
        raise ValueError(f"eps_mode must be 'rederive' or 'network', got {eps_mode!r}")
    b = c_latent.shape[0]
    z = _randn(tuple(c_latent.shape), generator, like=c_latent)
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            t = int(schedule.timesteps[i])
            abar, abar_prev = float(schedule.alphas_cumprod[i]), float(schedule.alphas_cumprod_prev[i])
            eps = eps_fn(z, torch.full((b,), t, device=z.device, dtype=torch.long), c_latent)
            z0 = predict_z0(z, eps, abar)                                            # eq. 8
            if t > p:
                z0 = latent_data_consistency(z0, k_u, mask, vae_encode, vae_decode)  # eq. 9
            else:
                z0 = kspace_guidance(z0, k_u, mask, vae_decode, guidance_scale)      # eq. 10-11
            noise = _randn(z.shape, generator, like=z) if i > 0 else None
            sigma2 = float(schedule.posterior_variance[i])
            z = posterior_step(z, z0, abar, abar_prev, sigma2, noise,                # eq. 12
                               eps=eps if eps_mode == "network" else None)
        return vae_decode(z).clamp_min(0.0)


@dataclass(kw_only=True)
class DualStageSampler:
    """``sampler(eps_fn, vae_encode, vae_decode, c_latent, k_u, mask, generator) -> x_hat``.

    ``use_dss=False`` is the "w/o DSS" ablation: the plain respaced DDPM, with no DC and no guidance.
    """

    n_steps: int
    p: int
    guidance_scale: float
    eps_mode: str
    use_dss: bool = True
    schedule: SpacedSchedule = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.schedule = respace(self.n_steps)

    def __call__(self, eps_fn: EpsFn, vae_encode: Codec, vae_decode: Codec, c_latent: torch.Tensor,
                 k_u: torch.Tensor, mask: torch.Tensor,
                 generator: Generators = None) -> torch.Tensor:
        if not self.use_dss:
            return plain_sample(eps_fn, vae_decode, c_latent, self.schedule, generator)
        return dual_stage_sample(eps_fn, vae_encode, vae_decode, c_latent, k_u, mask, self.schedule,
                                 self.p, self.guidance_scale, generator, eps_mode=self.eps_mode)
