"""Forward model and data consistency on single-coil k-space of the RSS image (paper's nPI).

``mask`` is a 1-D column mask (length W) or any array broadcastable to the k-space.
"""

from __future__ import annotations

import numpy as np

from .fft import Array, fft2c, ifft2c, is_tensor


def _as_mask(mask: Array, like: Array) -> Array:
    """``mask`` as float32 of the same kind (numpy or torch, same device) as ``like``."""
    if is_tensor(like):
        import torch

        if not is_tensor(mask):
            mask = torch.as_tensor(np.asarray(mask))
        return mask.to(device=like.device, dtype=torch.float32)
    if is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask, dtype=np.float32)


def undersample(image: Array, mask: Array) -> Array:
    """``k_u = M * F(x)`` (eq. 1): the measured k-space of image ``x`` under mask ``M``."""
    return fft2c(image) * _as_mask(mask, image)


def zero_filled(k_u: Array) -> Array:
    """``x_u = F^-1(k_u)``: the zero-filled (complex) image."""
    return ifft2c(k_u)


def data_consistency(image: Array, k_u: Array, mask: Array) -> Array:
    """``DC[x, k_u, M] = F^-1{ F[x](1 - M) + k_u M }`` (eq. 3).

    Keeps the estimate's k-space where nothing was measured and replaces the measured lines by
    ``k_u`` exactly. Returns a complex image; take ``abs`` for a magnitude.
    """
    m = _as_mask(mask, k_u)
    return ifft2c(fft2c(image) * (1 - m) + k_u * m)


def measurement_scale(x_u_mag):
    """``s = max |F^-1(k_u)|`` per slice of a [B, 1, H, W] tensor -> [B, 1, 1, 1] (>= 1e-12).

    The one intensity normalisation of every trained model, in training and reconstruction:
    computed from the measurement alone, so a test slice is scaled exactly as the training
    slices were.
    """
    return x_u_mag.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
