"""The mean of K posterior draws.

A sampler (the Dual-Stage Sampler, Score-MRI's predictor-corrector) draws one image from the
posterior ``p(x | k_u)``. The mean of ``K`` independent draws estimates the posterior mean, the
estimate of least expected squared error: where the prior is unsure (scans unlike its training
images, the unmeasured high frequencies), single draws differ and their mean keeps what they
share:

    x_bar = (1/K) sum_k x_k

``K = 1`` returns the single draw unchanged (the published samplers' output). Draw ``k`` of a
slice takes its noise from :func:`draw_seeds` (draw 0 from the slice's own seed).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..seeding import derived_seed

__all__ = ["draw_seeds", "sample_mean"]


def draw_seeds(seeds: Sequence[int], k: int) -> list[int]:
    """Each slice's seed for draw ``k``: the slice's own seed for ``k = 0``, else one derived
    from ``(seed, k)``."""
    if k == 0:
        return [int(s) for s in seeds]
    return [derived_seed(int(s) & 0xFFFFFFFF, k) for s in seeds]


def sample_mean(draw: Callable[[int], torch.Tensor], n_samples: int) -> torch.Tensor:
    """``draw(k) -> [B, 1, H, W]`` magnitudes of draw ``k``; returns the mean of draws
    ``0 .. n_samples - 1`` (draw 0 itself for one)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    total = draw(0)
    for k in range(1, n_samples):
        total = total + draw(k)
    return total / n_samples if n_samples > 1 else total
