"""Score-MRI sampling: predictor-corrector on the VE-SDE with k-space data consistency.

Chung & Ye 2022 (``HJ-harry/score-MRI``, ``sampling.get_pc_fouriercs_fast``, used for real-valued
single-coil images), with Song et al.'s reverse-diffusion predictor and Langevin corrector:

* start: ``x = Re DC[sigma_max z, k_u, M]``;
* for ``t_i = linspace(1, eps, N)``: one (or ``n_corrector``) Langevin corrector step(s)
  ``x += s * score + sqrt(2 s) z`` with ``s = 2 (snr ||z|| / ||score||)^2`` (``snr = 0.16``),
  then ``x = Re DC[x, k_u, M]``; then the reverse-diffusion predictor
  ``x_mean = x + G^2 score(x, sigma(t_i))``, ``x = x_mean + G z``,
  ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` on the N discrete levels, then ``x = Re DC[x, k_u, M]``;
* output (``denoise=True``): ``DC[x_mean, k_u, M]`` of the last predictor step, complex; the
  registry reports its magnitude.

``predictor='ancestral'`` swaps in ``score_sde``'s ancestral-sampling predictor for the VE-SDE
(same mean update, injected noise std ``sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2)) / sigma_i``
instead of ``G``): it keeps the state's noise at ``sigma_{i-1}`` even for a few dozen steps, where
the reverse-diffusion predictor leaves the state noisier than the level the score is evaluated
at. The two coincide as ``N`` grows; Score-MRI's own setting is reverse diffusion with N = 2000.

``DC[x, k_u, M] = F^-1{F[x](1 - M) + k_u M}`` is :func:`ldpm.mri.data_consistency` (eq. 3).
The state stays real-valued by taking the **real part** after each DC, as the official code
does: the VE-SDE state ``x + sigma z`` takes negative values, and a magnitude would rectify the
noise the score network was trained on. Differences from the official code, both harmless:
the Langevin step size uses each slice's own norms (the official code averages the norms over
the batch, which it runs with batch size 1), and the final ``denoise`` output is the DC of the
predictor's noise-free mean (the official ``data_fidelity`` recomputes it from the noisy ``x``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..models.score import VESDE
from ..mri import data_consistency
from .spaced import _randn

PREDICTORS = ("reverse_diffusion", "ancestral")
#: ``score_fn(x [B, 1, H, W] real, sigma [B]) -> score [B, 1, H, W]``
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _dc_real(x: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return data_consistency(x[:, 0], k_u, mask).real[:, None].to(torch.float32)


def score_pc_sample(score_fn: ScoreFn, k_u: torch.Tensor, mask: torch.Tensor, sde: VESDE,
                    snr: float = 0.16, n_corrector: int = 1, eps: float = 1e-5,
                    generators: Sequence[torch.Generator] | None = None,
                    predictor: str = "reverse_diffusion") -> torch.Tensor:
    """Reconstruct ``k_u`` [B, H, W] complex under ``mask`` [B, W]; returns complex [B, H, W].

    ``data_consistency`` is called ``1 + N * (n_corrector + 1) + 1`` times (start, after every
    corrector and predictor update, final denoised output), so the returned image's k-space
    equals ``k_u`` on the sampled lines.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor {predictor!r}: use one of {PREDICTORS}")
    b, h, w = k_u.shape
    dev = k_u.device
    m = mask.to(device=dev, dtype=torch.float32)[:, None, :]
    gens = list(generators) if generators is not None else [torch.Generator().manual_seed(i)
                                                            for i in range(b)]
    shape = (b, 1, h, w)
    sigmas = sde.discrete_sigmas()
    timesteps = torch.linspace(1.0, eps, sde.N)
    with torch.no_grad():
        x = _dc_real(sde.sigma_max * _randn(shape, gens, device=dev), k_u, m)
        x_mean = x
        for i in range(sde.N):
            t = timesteps[i]
            sigma_t = sde.sigma(t).expand(b).to(device=dev, dtype=torch.float32)
            for _ in range(n_corrector):  # Langevin corrector
                grad = score_fn(x, sigma_t)
                noise = _randn(shape, gens, device=dev)
                g_norm = grad.reshape(b, -1).norm(dim=-1).clamp_min(1e-12)
                n_norm = noise.reshape(b, -1).norm(dim=-1)
                step = (2 * (snr * n_norm / g_norm) ** 2)[:, None, None, None]
                x = x + step * grad + torch.sqrt(2 * step) * noise
                x = _dc_real(x, k_u, m)
            # reverse-diffusion predictor on the discrete levels
            idx = int(t * (sde.N - 1))
            sigma = sigmas[idx]
            adjacent = sigmas[idx - 1] if idx > 0 else torch.zeros(())
            g2 = sigma ** 2 - adjacent ** 2
            x_mean = x + g2 * score_fn(x, sigma_t)
            std = torch.sqrt(g2) if predictor == "reverse_diffusion" else torch.sqrt(
                adjacent ** 2 * g2 / sigma ** 2)
            x = x_mean + std * _randn(shape, gens, device=dev)
            x = _dc_real(x, k_u, m)
        return data_consistency(x_mean[:, 0], k_u, m)
