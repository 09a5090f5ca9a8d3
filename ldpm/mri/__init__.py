"""MRI physics: centered orthonormal FFTs, coil combination, masks, undersampling, DC.

Pure functions on numpy arrays or torch tensors; this package imports nothing else of ours.
"""

from .fft import fft2c, ifft2c
from .coils import center_crop, rss
from .masks import RandomMaskFunc, mask_for_slice
from .operators import data_consistency, measurement_scale, undersample, zero_filled

__all__ = [
    "fft2c", "ifft2c", "rss", "center_crop", "RandomMaskFunc", "mask_for_slice",
    "undersample", "zero_filled", "data_consistency", "measurement_scale",
]
