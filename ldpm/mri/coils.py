"""Coil combination and cropping, as fastMRI builds ``reconstruction_rss``."""

from __future__ import annotations

import numpy as np


def rss(coil_images: np.ndarray, coil_axis: int = 0) -> np.ndarray:
    """Root-sum-of-squares magnitude over the coil axis: ``sqrt(sum_c |x_c|^2)``."""
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=coil_axis))


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop the last two axes to ``shape`` around the centre (fastMRI's ``center_crop``).

    Raises ``ValueError`` when the image is smaller than ``shape``.
    """
    h, w = x.shape[-2:]
    ch, cw = shape
    if ch > h or cw > w:
        raise ValueError(f"cannot center-crop an image of {h}x{w} to {ch}x{cw}")
    top = (h - ch) // 2
    left = (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]
