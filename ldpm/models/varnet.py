"""E2E-VarNet (Sriram et al., "End-to-End Variational Networks for Accelerated MRI
Reconstruction", MICCAI 2020), as in ``fastmri/models/varnet.py``, for **single-coil** data.

Each cascade refines the k-space estimate (fastMRI's ``VarNetBlock``)::

    k <- k - eta * M * (k - k_u) - E(U(R(k)))

with a learned data-consistency weight ``eta`` (init 1), ``R`` the coil-combining reduce
``sum_c conj(S_c) F^-1(k_c)`` and ``E`` the expand ``F(S_c x)``, and ``U`` a regulariser U-Net
(:class:`NormUnet`: the complex image as 2 channels (real, imag), normalised by its per-channel
mean/std, padded to a multiple of ``2**pools``, fastMRI's :class:`~ldpm.models.unet.Unet`,
un-normalised). The output is ``|F^-1(k)|`` after the last cascade (RSS over one coil).

**Our data is nPI** (the paper's "no parallel imaging" setting): the measurement is the
single-coil k-space of the RSS image, ``k_u = M F(x_rss)``. There is therefore one "coil" with
the identity sensitivity map ``S = 1``, so ``R = F^-1`` and ``E = F``, and the sensitivity
estimation network of E2E-VarNet is not used. Paper scale: 12 cascades, ``chans=18``,
``pools=4`` (fastMRI's defaults). fastMRI trains it with an SSIM loss; our default is L1 on the
magnitude (``loss: ssim`` in the config switches to ``1 - SSIM``).

Official fastMRI VarNet checkpoints (``varnet_knee_mc``, ``varnet_brain_mc``) are *multicoil*
models: see :func:`load_official_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LdpmInputError
from ..mri import fft2c, ifft2c
from .unet import Unet

#: Config keys of :class:`VarNet` and their defaults (paper scale).
VARNET_DEFAULTS: dict[str, Any] = {"num_cascades": 12, "chans": 18, "pools": 4}


class NormUnet(nn.Module):
    """Complex image ``[B, H, W]`` -> complex image: normalised 2-channel fastMRI U-Net."""

    def __init__(self, chans: int, num_pools: int):
        super().__init__()
        self.unet = Unet(2, 2, chans, num_pools)
        self.mult = 2 ** num_pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.view_as_real(x).permute(0, 3, 1, 2)  # [B, 2, H, W]
        mean = y.mean(dim=(-2, -1), keepdim=True)
        std = y.std(dim=(-2, -1), keepdim=True).clamp_min(1e-11)
        y = (y - mean) / std
        h, w = y.shape[-2:]
        ph, pw = (-h) % self.mult, (-w) % self.mult
        y = F.pad(y, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        y = self.unet(y)[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]
        y = (y * std + mean).permute(0, 2, 3, 1).contiguous()
        return torch.view_as_complex(y)


class VarNetBlock(nn.Module):
    """One cascade: ``k - eta * M * (k - k_u) - F(model(F^-1(k)))`` on ``[B, H, W]`` k-space.

    ``mask`` broadcasts against the k-space (e.g. ``[B, 1, W]``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(self, k: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        soft_dc = mask * (k - k_u) * self.dc_weight
        return k - soft_dc - fft2c(self.model(ifft2c(k)))


class VarNet(nn.Module):
    """``forward(k_u [B, H, W] complex, mask [B, W]) -> magnitude [B, 1, H, W]``."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**VARNET_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in VARNET_DEFAULTS}}
        self.config = cfg
        self.cascades = nn.ModuleList([VarNetBlock(NormUnet(int(cfg["chans"]), int(cfg["pools"])))
                                       for _ in range(int(cfg["num_cascades"]))])

    def forward_kspace(self, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.float32)[:, None, :]
        k = k_u
        for cascade in self.cascades:
            k = cascade(k, k_u, m)
        return k

    def forward(self, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ifft2c(self.forward_kspace(k_u, mask)).abs()[:, None]


def load_official_checkpoint(path: str | Path | None) -> None:
    """Hook for the official fastMRI E2E-VarNet weights (the paper used them): not supported.

    Always raises :class:`LdpmInputError` when a path is configured. The official models take
    *multicoil* k-space ``[B, coils, H, W]`` and estimate coil sensitivity maps from its
    auto-calibration lines with a second U-Net; this nPI pipeline feeds single-coil k-space of
    the RSS image, whose statistics (one coil, real non-negative image, no coil phase) the
    official weights never saw, so feeding it to them would not be the published model.
    """
    if path is None:
        return None
    raise LdpmInputError(
        path, "official fastMRI E2E-VarNet checkpoints expect multicoil k-space and estimate coil "
        "sensitivity maps from it; this nPI pipeline feeds single-coil k-space of the RSS image "
        "(identity sensitivity), so the official weights cannot be used honestly",
        "remove the official checkpoint setting and train the single-coil VarNet "
        "(ldpm.train.baselines.train_baseline('varnet', ...))")
