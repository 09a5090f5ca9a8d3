"""Pixel metrics, identical to fastMRI's ``fastmri/evaluate.py``.

* Metrics are computed **per volume**, as on the fastMRI leaderboard: inputs are magnitude
  volumes ``[slices, H, W]`` (ground truth ``gt`` and reconstruction ``pred``).
* The data range (``maxval``) is the ground-truth **volume's** maximum, ``gt.max()``.
* NMSE is ``||gt - pred||^2 / ||gt||^2`` over the whole volume; PSNR uses
  ``skimage.metrics.peak_signal_noise_ratio`` on the whole volume; SSIM is the mean over slices
  of ``skimage.metrics.structural_similarity`` (default 7x7 window), each with the volume's range.
* Tables report mean ± std of these per-volume values over the test volumes.

Arrays are used with the dtype they come in (fastMRI feeds the float32 arrays of its HDF5 files),
so a float32 volume gives exactly what fastMRI's script gives for it.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ldpm.errors import LdpmInputError


def _check(gt: np.ndarray, pred: np.ndarray, ndim: int | None = None) -> None:
    if gt.shape != pred.shape:
        raise LdpmInputError("metrics", f"ground truth {gt.shape} and prediction {pred.shape} differ in shape",
                             "pass a reconstruction of the same size as its target")
    if ndim is not None and gt.ndim != ndim:
        raise LdpmInputError("metrics", f"expected a volume [slices, H, W], got shape {gt.shape}",
                             "pass a 3-D magnitude volume")


def mse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean squared error over all voxels."""
    _check(gt, pred)
    return float(np.mean((gt - pred) ** 2))


def rmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Root mean squared error over all voxels (in the images' units)."""
    return float(np.sqrt(mse(gt, pred)))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalized MSE ``||gt - pred||^2 / ||gt||^2`` (over the whole array)."""
    _check(gt, pred)
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """PSNR in dB with data range ``maxval`` (default: ``gt.max()``)."""
    _check(gt, pred)
    maxval = gt.max() if maxval is None else maxval
    return float(peak_signal_noise_ratio(gt, pred, data_range=maxval))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: float | None = None) -> float:
    """SSIM of a volume: mean over slices of 2-D SSIM with data range ``maxval`` (default ``gt.max()``)."""
    _check(gt, pred, ndim=3)
    maxval = gt.max() if maxval is None else maxval
    total = 0.0
    for s in range(gt.shape[0]):
        total = total + structural_similarity(gt[s], pred[s], data_range=maxval)
    return float(total / gt.shape[0])
