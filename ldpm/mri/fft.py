"""Centered, orthonormal 2-D Fourier transforms over the last two axes (fastMRI convention).

``F`` in the paper's eq. (1)-(3) and (10). Work on numpy arrays and torch tensors alike;
torch is imported only when a tensor is passed, so numpy-only jobs start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]


def is_tensor(x: Any) -> bool:
    """True for a torch tensor, without importing torch for numpy inputs."""
    return type(x).__module__.split(".")[0] == "torch"


def _centered(x: Array, transform: str) -> Array:
    """``fftshift(transform(ifftshift(x)))`` over the last two axes, ``norm='ortho'``."""
    if is_tensor(x):
        import torch

        x = torch.fft.ifftshift(x, dim=(-2, -1))
        x = getattr(torch.fft, transform)(x, dim=(-2, -1), norm="ortho")
        return torch.fft.fftshift(x, dim=(-2, -1))
    x = np.fft.ifftshift(x, axes=(-2, -1))
    x = getattr(np.fft, transform)(x, axes=(-2, -1), norm="ortho")
    return np.fft.fftshift(x, axes=(-2, -1))


def fft2c(x: Array) -> Array:
    """Image -> k-space: ``fftshift(fft2(ifftshift(x)))`` with ``norm='ortho'`` (unitary)."""
    return _centered(x, "fft2")


def ifft2c(k: Array) -> Array:
    """k-space -> image: the inverse of :func:`fft2c` (also unitary)."""
    return _centered(k, "ifft2")
