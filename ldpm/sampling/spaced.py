"""Respaced DDPM (improved-DDPM / DiffBIR ``SpacedSampler``) and the plain sampler (w/o DSS).

The base schedule is SD's: T = 1000, ``scaled_linear`` betas 0.00085 -> 0.012, taken from
diffusers' ``DDPMScheduler``. :func:`respace` keeps ``n`` evenly spaced original timesteps
``t_0 = 0 < ... < t_{n-1} = T-1`` and derives the betas between consecutive kept steps:
``beta_i = 1 - abar(t_i) / abar(t_{i-1})`` (``abar(t_{-1}) = 1``), and the posterior variance
``sigma_i^2 = beta_i (1 - abar_prev) / (1 - abar)`` ("fixed small").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers import DDPMScheduler

#: one generator, or one per sample of the batch (see :func:`_randn`)
Generators = "torch.Generator | Sequence[torch.Generator] | None"

#: ``eps_fn(z_t, t, c_latent) -> eps``; ``t`` is a [B] tensor of ORIGINAL timesteps in [0, T-1].
EpsFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

#: SD's noise schedule, the defaults of :func:`base_alphas_cumprod` and :func:`respace`
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear"}
_T = SD_SCHEDULE["num_train_timesteps"]


def base_alphas_cumprod(num_train_timesteps: int = _T,
                        beta_start: float = SD_SCHEDULE["beta_start"],
                        beta_end: float = SD_SCHEDULE["beta_end"],
                        beta_schedule: str = SD_SCHEDULE["beta_schedule"]) -> torch.Tensor:
    """``abar_t`` for t = 0..T-1 (float64), from diffusers' ``DDPMScheduler`` (used by eq. 6)."""
    sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                          beta_end=beta_end, beta_schedule=beta_schedule)
    return sched.alphas_cumprod.to(torch.float64)


def space_timesteps(num_train_timesteps: int, n_steps: int) -> list[int]:
    """improved-DDPM's ``space_timesteps(T, [n])``: ``n`` evenly strided steps including 0 and T-1."""
    if not 1 <= n_steps <= num_train_timesteps:
        raise ValueError(f"n_steps must be in [1, {num_train_timesteps}], got {n_steps}")
    stride = 1.0 if n_steps == 1 else (num_train_timesteps - 1) / (n_steps - 1)
    taken, cur = [], 0.0
    for _ in range(n_steps):
        taken.append(round(cur))
        cur += stride
    return taken


@dataclass(frozen=True)
class SpacedSchedule:
    """The kept timesteps (ascending) and their schedule quantities, all [n] float64 tensors."""

    timesteps: torch.Tensor            # original t of each kept step (int64)
    alphas_cumprod: torch.Tensor       # abar_t
    alphas_cumprod_prev: torch.Tensor  # abar of the previous kept step (1 before the first)
    betas: torch.Tensor                # respaced betas
    posterior_variance: torch.Tensor   # sigma_t^2 of eq. 12
    num_train_timesteps: int = _T

    def __len__(self) -> int:
        return int(self.timesteps.numel())


def respace(n_steps: int, num_train_timesteps: int = _T,
            beta_start: float = SD_SCHEDULE["beta_start"],
            beta_end: float = SD_SCHEDULE["beta_end"],
            beta_schedule: str = SD_SCHEDULE["beta_schedule"]) -> SpacedSchedule:
    """The respaced schedule with ``n_steps`` sampling steps (DiffBIR ``SpacedSampler``)."""
    abar_all = base_alphas_cumprod(num_train_timesteps, beta_start, beta_end, beta_schedule)
    ts = torch.tensor(space_timesteps(num_train_timesteps, n_steps), dtype=torch.int64)
    abar = abar_all[ts]
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return SpacedSchedule(ts, abar, abar_prev, betas, post_var, num_train_timesteps)


def predict_z0(z_t: torch.Tensor, eps: torch.Tensor, abar_t: float) -> torch.Tensor:
    """``z0_hat = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (eq. 8, inverting eq. 6).

    The paper's eq. 8 writes ``sqrt(abar_{t-1})`` in front of this; we keep ``z0_hat`` a clean
    latent (so that it can be decoded, DC'd and guided) and apply ``sqrt(abar_{t-1})`` in
    :func:`posterior_step`, which gives the same ``z_{t-1}``.
    """
    return (z_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t ** 0.5


def posterior_step(z_t: torch.Tensor, z0: torch.Tensor, abar_t: float, abar_prev: float,
                   sigma2: float, noise: torch.Tensor | None, eps: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """``z_{t-1} = sqrt(abar_prev) z0 + sqrt(1 - abar_prev - sigma^2) eps + sigma xi`` (eq. 12).

    With ``eps=None`` the direction is re-derived from ``z0`` (``eps = (z_t - sqrt(abar_t) z0) /
    sqrt(1 - abar_t)``); with ``sigma^2`` the posterior variance this is exactly a draw from the
    DDPM posterior ``q(z_{t-1} | z_t, z0)``, i.e. the spaced DDPM step the DSS is a variant of.
    """
    if eps is None:
        eps = (z_t - abar_t ** 0.5 * z0) / (1.0 - abar_t) ** 0.5
    z_prev = abar_prev ** 0.5 * z0 + max(1.0 - abar_prev - sigma2, 0.0) ** 0.5 * eps
    if noise is not None and sigma2 > 0:
        z_prev = z_prev + sigma2 ** 0.5 * noise
    return z_prev


def _randn(shape, generator: Generators,
           like: torch.Tensor | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (CPU by default), then moved.

    ``generator`` may be one generator per sample (a sequence of ``shape[0]``): sample ``b`` is
    then drawn from its own generator, so a batch holds the same noise as its samples drawn one
    at a time.
    """
    dev = like.device if like is not None else device
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
                            for g in generator]).to(dev)
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(dev)


def plain_spaced_ddpm(eps_fn: EpsFn, shape: tuple[int, ...], schedule: SpacedSchedule,
                      generator: Generators = None, c_latent: torch.Tensor | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Plain respaced DDPM (the "w/o DSS" ablation): ``z_T ~ N(0, I)`` -> ``z_0``. No DC, no guidance."""
    z = _randn(shape, generator, device=device)
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            abar, abar_prev = float(schedule.alphas_cumprod[i]), float(schedule.alphas_cumprod_prev[i])
            t = torch.full((shape[0],), int(schedule.timesteps[i]), device=z.device, dtype=torch.long)
            eps = eps_fn(z, t, c_latent)
            z0 = predict_z0(z, eps, abar)
            sigma2 = float(schedule.posterior_variance[i])
            noise = _randn(z.shape, generator, like=z) if i > 0 else None
            z = posterior_step(z, z0, abar, abar_prev, sigma2, noise)
    return z


def plain_sample(eps_fn: EpsFn, vae_decode: Callable[[torch.Tensor], torch.Tensor],
                 c_latent: torch.Tensor, schedule: SpacedSchedule,
                 generator: Generators = None) -> torch.Tensor:
    """:func:`plain_spaced_ddpm` conditioned on ``c_latent``, decoded: [B, 1, H, W], clipped at 0."""
    z0 = plain_spaced_ddpm(eps_fn, tuple(c_latent.shape), schedule, generator, c_latent,
                           device=c_latent.device)
    with torch.no_grad():
        return vae_decode(z0).clamp_min(0.0)
