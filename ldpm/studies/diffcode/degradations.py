"""DiffCode's restoration tasks built from our MRI slices, each a seeded degradation of an RSS
magnitude slice ``x`` (single-coil k-space of the RSS image, as everywhere in this project).

* ``mri_sr``: super-resolution by ``scale`` (default 4) as **k-space truncation**: only the
  central ``H/scale x W/scale`` block of ``F(x)`` is kept and zero-padded back to ``H x W``
  (the low-resolution acquisition of MRI SR, e.g. the IXI protocol the paper follows; no
  image-domain blur/decimation), and the LQ image is ``|F^-1(.)|`` at full size.
* ``mri_recon``: 1-D Cartesian undersampling with fastMRI ``RandomMaskFunc`` masks
  (``masks.acceleration``, default 8x): ``|F^-1(M F(x))|``, the zero-filled image. On the
  test set the masks are exactly the ones stored in the test shards, so DiffCode and LDPM
  meet on the same slices and measurements.
* ``mri_denoise``: Rician noise ``|x + sigma n_1 + i sigma n_2|``, ``n_i ~ N(0, 1)``, with
  ``sigma`` relative to the volume's maximum (default 0.05).
* ``ct_denoise`` / ``pet_synthesis``: real LQ/HQ pairs read from configured folders
  (:mod:`ldpm.studies.diffcode.data`); there is no simulated degradation for them.

Randomness: training draws everything from the loop's step generator; a test slice's noise and
(for training-style masks) its mask come from :func:`ldpm.mri.masks.slice_seed`
``(seed, volume, slice)``, so they do not depend on sharding or order.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ...errors import LdpmInputError
from ...mri import RandomMaskFunc, fft2c, ifft2c
from ...mri.masks import slice_seed
from ...seeding import seeded_generator

#: Every task DiffCode knows, in table order. The first three are simulated from MRI slices.
TASKS = ("mri_sr", "mri_recon", "mri_denoise", "ct_denoise", "pet_synthesis")
MRI_TASKS = TASKS[:3]
DATA_TASKS = {"ct_denoise": "ct_path", "pet_synthesis": "pet_path"}


def task_title(task: str, levels: Mapping) -> str:
    """The task's column title, with its level (e.g. ``MRI SR 4×``)."""
    return {"mri_sr": f"MRI SR {levels.get('sr_scale', 4)}×",
            "mri_recon": f"MRI recon {levels.get('acceleration', 8)}×",
            "mri_denoise": f"MRI denoise σ={levels.get('denoise_sigma', 0.05):g}",
            "ct_denoise": "CT denoise (LDCT)",
            "pet_synthesis": "PET synthesis"}[task]


def kspace_truncate(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``|F^-1(C F(x))|`` where ``C`` keeps the central ``H//scale x W//scale`` k-space block.

    ``x`` [..., H, W] real; returns a float tensor of the same shape (MRI SR, k-space truncation).
    """
    if scale < 1:
        raise LdpmInputError(f"sr_scale {scale}", "must be >= 1", "use e.g. 4")
    h, w = x.shape[-2:]
    kh, kw = max(1, h // scale), max(1, w // scale)
    top, left = (h - kh + 1) // 2, (w - kw + 1) // 2
    keep = torch.zeros(h, w, dtype=torch.float32, device=x.device)
    keep[top:top + kh, left:left + kw] = 1
    return ifft2c(fft2c(x.to(torch.complex64)) * keep).abs().to(torch.float32)


def undersample_magnitude(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero-filled magnitude ``|F^-1(M F(x))|``; ``mask`` [..., W] (columns) broadcast over rows."""
    m = mask.to(device=x.device, dtype=torch.float32)[..., None, :]
    return ifft2c(fft2c(x.to(torch.complex64)) * m).abs().to(torch.float32)


def rician(x: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``|x + sigma n_1 + i sigma n_2|`` with ``n_1, n_2`` drawn on ``generator`` (CPU)."""
    n = torch.randn((2, *x.shape), generator=generator).to(x.device)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    return torch.sqrt((x + sigma * n[0]) ** 2 + (sigma * n[1]) ** 2)


def training_mask(width: int, acceleration: int, center_fraction: float,
                  generator: torch.Generator) -> torch.Tensor:
    """A random 1-D mask whose seed is drawn on the step's ``generator``."""
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    return torch.from_numpy(RandomMaskFunc([center_fraction], [acceleration])(width, seed=seed))


def degrade(task: str, x: torch.Tensor, levels: Mapping, generator: torch.Generator,
            mask: torch.Tensor | None = None, sigma_scale: float = 1.0) -> torch.Tensor:
    """The LQ image of one MRI slice ``x`` [..., H, W] for ``task`` (see the module docstring).

    ``levels``: ``sr_scale``, ``denoise_sigma``, ``acceleration``, ``center_fraction``.
    ``mask``: a fixed mask for ``mri_recon`` (else one is drawn on ``generator``).
    ``sigma_scale``: the volume's maximum in ``x``'s units (noise std = sigma x that).
    """
    if task == "mri_sr":
        return kspace_truncate(x, int(levels["sr_scale"]))
    if task == "mri_recon":
        if mask is None:
            mask = training_mask(x.shape[-1], int(levels["acceleration"]),
                                 float(levels["center_fraction"]), generator)
        return undersample_magnitude(x, mask)
    if task == "mri_denoise":
        return rician(x, float(levels["denoise_sigma"]) * sigma_scale, generator)
    raise LdpmInputError(f"task {task!r}", "is not a simulated MRI task",
                         f"use one of {', '.join(MRI_TASKS)} (CT/PET pairs are read from files)")


def slice_generator(seed: int, volume: str, slice_index: int, task: str,
                    purpose: int = 0) -> torch.Generator:
    """The generator of one test slice, from ``(seed, volume, slice, task, purpose)``; purpose
    0: its degradation, 1: a method's sampling noise (DiffCode's reverse chain)."""
    return seeded_generator(*slice_seed(seed, volume, slice_index), TASKS.index(task), int(purpose))


def degrade_test_slices(task: str, targets: np.ndarray, masks: np.ndarray, volumes: list[str],
                        slices: np.ndarray, volume_max: np.ndarray, levels: Mapping,
                        seed: int) -> np.ndarray:
    """LQ images [N, H, W] float32 of a test shard's targets for one MRI task.

    ``mri_recon`` uses the shard's stored ``masks`` [N, W]; ``mri_denoise`` noise is seeded per
    slice (:func:`slice_generator`) with std ``denoise_sigma x volume_max``.
    """
    out = np.empty(targets.shape, dtype=np.float32)
    for i in range(len(targets)):
        x = torch.from_numpy(np.ascontiguousarray(targets[i], dtype=np.float32))
        gen = slice_generator(seed, volumes[i], int(slices[i]), task)
        m = torch.from_numpy(np.asarray(masks[i], dtype=np.float32)) if task == "mri_recon" else None
        out[i] = degrade(task, x, levels, gen, mask=m, sigma_scale=float(volume_max[i])).numpy()
    return out
