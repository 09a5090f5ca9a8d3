"""The mean of K posterior samples, put back through eq. 3's data consistency.

A sampler (the Dual-Stage Sampler, Score-MRI's predictor-corrector) draws one image from the
posterior ``p(x | k_u)``. The mean of ``K`` independent draws estimates the posterior mean, the
estimate of least expected squared error: where the prior is unsure (scans unlike its training
images, the unmeasured high frequencies), single draws differ and their mean keeps what they
share. The mean of magnitudes no longer holds the measured lines, so it is made consistent again:

    x_bar = |DC[(1/K) sum_k x_k, k_u, M]|      (K > 1; eq. 3)

``K = 1`` returns the single draw unchanged (the published samplers' output). Draw ``k`` of a
slice takes its noise from :func:`draw_seeds` (draw 0 from the slice's own seed).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..mri import data_consistency

__all__ = ["draw_seeds", "sample_mean"]


def draw_seeds(seeds: Sequence[int], k: int) -> list[int]:
    """Each slice's seed for draw ``k``: the slice's own seed for ``k = 0``, else one derived
    from ``(seed, k)``."""
    if k == 0:
        return [int(s) for s in seeds]
    return [int(np.random.SeedSequence([int(s) & 0xFFFFFFFF, k]).generate_state(1)[0]) for s in seeds]


def sample_mean(draw: Callable[[int], torch.Tensor], n_samples: int, k_u: torch.Tensor,
                mask: torch.Tensor, consistent: bool = True) -> torch.Tensor:
    """``draw(k) -> [B, 1, H, W]`` magnitudes of draw ``k``; returns their mean, with eq. 3's
    ``|DC[., k_u, M]|`` when ``n_samples > 1`` and ``consistent`` (``k_u`` [B, 1, H, W] or
    [B, H, W] complex, ``mask`` broadcastable to it)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    total = draw(0)
    if n_samples == 1:
        return total
    for k in range(1, n_samples):
        total = total + draw(k)
    mean = total / n_samples
    if not consistent:
        return mean
    return data_consistency(mean[:, 0], k_u.reshape(mean[:, 0].shape),
                            mask.reshape(mask.shape[0], -1)[:, None, :]).abs()[:, None].to(mean.dtype)
