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

**Multicoil** (:class:`MulticoilVarNet`, fastMRI's ``VarNet`` module for module, so its
official state dicts load): the measurement is the raw multicoil k-space ``[B, coils, H, W]``;
a :class:`SensitivityModel` estimates the maps ``S_c`` from the auto-calibration lines (the
fully sampled centre of the mask), and the output is the RSS over coils. It is used only with
fastMRI's published weights (:func:`load_official_varnet`, the ``varnet_official`` method).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..mri import fft2c, ifft2c
from .pretrained import load_state_dict_into
from .unet import Unet

#: Config keys of :class:`VarNet` and their defaults (paper scale).
VARNET_DEFAULTS: dict[str, Any] = {"num_cascades": 12, "chans": 18, "pools": 4}


class NormUnet(nn.Module):
    """Complex image ``[B, H, W]`` -> complex image: normalised 2-channel fastMRI U-Net."""

    def __init__(self, chans: int, num_pools: int):
        super().__init__()
        self.unet = Unet(2, 2, chans, num_pools)
        self.mult = max(16, 2 ** num_pools)  # fastMRI pads to a multiple of 16

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


def sens_expand(x: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """``E(x) = F(S_c x)``: image ``[B, H, W]`` -> coil k-space ``[B, C, H, W]``."""
    return fft2c(x[:, None] * sens)


def sens_reduce(k: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """``R(k) = sum_c conj(S_c) F^-1(k_c)``: coil k-space ``[B, C, H, W]`` -> image ``[B, H, W]``."""
    return (ifft2c(k) * sens.conj()).sum(dim=1)


def low_frequency_band(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns ``[start, stop)`` of the fully sampled centre of each mask ``[B, W]``.

    As fastMRI's ``get_pad_and_num_low_freqs``: the run of sampled lines around ``W // 2``,
    made symmetric (twice the shorter side; at least one line).
    """
    m = (mask > 0).to(torch.int8)
    cent = m.shape[1] // 2
    left = torch.argmin(m[:, :cent].flip(1), dim=1)
    right = torch.argmin(m[:, cent:], dim=1)
    n_low = torch.maximum(2 * torch.minimum(left, right), torch.ones_like(left))
    start = torch.div(m.shape[1] - n_low + 1, 2, rounding_mode="floor")
    return start, start + n_low


class SensitivityModel(nn.Module):
    """Coil sensitivity maps from the auto-calibration lines (fastMRI's ``SensitivityModel``).

    ``forward(k_u [B, C, H, W] complex, mask [B, W]) -> S [B, C, H, W]``: the k-space outside
    the fully sampled centre is zeroed, each coil image goes through a :class:`NormUnet`, and
    the maps are divided by their RSS over coils (so ``sum_c |S_c|^2 = 1``).
    """

    def __init__(self, chans: int, num_pools: int):
        super().__init__()
        self.norm_unet = NormUnet(chans, num_pools)

    def forward(self, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = k_u.shape
        start, stop = low_frequency_band(mask)
        cols = torch.arange(w, device=k_u.device)
        centre = (cols >= start[:, None]) & (cols < stop[:, None])  # [B, W]
        images = ifft2c(k_u * centre[:, None, None, :]).reshape(b * c, h, w)
        maps = self.norm_unet(images).reshape(b, c, h, w)
        return maps / maps.abs().pow(2).sum(dim=1, keepdim=True).sqrt()


class VarNetBlock(nn.Module):
    """One cascade: ``k - eta * M * (k - k_u) - E(model(R(k)))``.

    Single-coil (``sens=None``): ``k`` is ``[B, H, W]`` and ``R = F^-1``, ``E = F``; multicoil:
    ``k`` is ``[B, C, H, W]`` with maps ``sens`` of the same shape. ``mask`` broadcasts
    against the k-space (e.g. ``[B, 1, W]`` or ``[B, 1, 1, W]``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))

    def forward(self, k: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor,
                sens: torch.Tensor | None = None) -> torch.Tensor:
        soft_dc = mask * (k - k_u) * self.dc_weight
        if sens is None:
            return k - soft_dc - fft2c(self.model(ifft2c(k)))
        return k - soft_dc - sens_expand(self.model(sens_reduce(k, sens)), sens)


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


#: Config keys of :class:`MulticoilVarNet` and their defaults: the architecture of fastMRI's
#: official ``varnet_knee_mc`` / ``varnet_brain_mc`` weights.
MULTICOIL_VARNET_DEFAULTS: dict[str, Any] = {**VARNET_DEFAULTS, "sens_chans": 8, "sens_pools": 4}


class MulticoilVarNet(nn.Module):
    """fastMRI's E2E-VarNet on raw multicoil k-space, with its state-dict layout
    (``sens_net.norm_unet.unet.*``, ``cascades.<i>.model.unet.*``, ``cascades.<i>.dc_weight``).

    ``forward(k_u [B, C, H, W] complex, mask [B, W]) -> RSS magnitude [B, H, W]``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**MULTICOIL_VARNET_DEFAULTS,
               **{k: v for k, v in (config or {}).items() if k in MULTICOIL_VARNET_DEFAULTS}}
        self.config = cfg
        self.sens_net = SensitivityModel(int(cfg["sens_chans"]), int(cfg["sens_pools"]))
        self.cascades = nn.ModuleList([VarNetBlock(NormUnet(int(cfg["chans"]), int(cfg["pools"])))
                                       for _ in range(int(cfg["num_cascades"]))])

    def forward(self, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sens = self.sens_net(k_u, mask)
        m = mask.to(k_u.real.dtype)[:, None, None, :]
        k = k_u
        for cascade in self.cascades:
            k = cascade(k, k_u, m, sens)
        return ifft2c(k).abs().pow(2).sum(dim=1).sqrt()


def load_official_varnet(path: str | Path, config: Mapping[str, Any] | None = None
                         ) -> MulticoilVarNet:
    """fastMRI's published E2E-VarNet weights (e.g. ``brain_leaderboard_state_dict.pt``), or a
    fastMRI Lightning checkpoint (``varnet.`` keys). ``config``: the architecture (default: the
    official one). Errors name the file (:func:`ldpm.models.pretrained.load_state_dict_into`).
    """
    model = MulticoilVarNet(config)
    return load_state_dict_into(
        model, path, arch=f"an E2E-VarNet with {model.config}", lightning_prefix="varnet.",
        fix="set inference.varnet_official.checkpoint in config/config.yaml to fastMRI's "
            "varnet_brain_mc (brain_leaderboard_state_dict.pt) or varnet_knee_mc weights",
        arch_fix="set inference.varnet_official.model to the architecture the weights were "
                 "trained with (fastMRI's: num_cascades 12, chans 18, pools 4, sens_chans 8, "
                 "sens_pools 4)")
