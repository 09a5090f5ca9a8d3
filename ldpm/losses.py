"""The training losses that are not one stage's own objective: SwinMR's, Score-MRI's denoising
score matching, fastMRI's SSIM loss, and the U-Net's / E2E-VarNet's pixel loss (L1, or SSIM
with ``loss: ssim``).

SwinMR (``MRI_NPI.total_loss`` of ``ayanglab/SwinMR``): ``alpha * L_image + beta * L_freq + gamma * L_perc`` with
alpha=15, beta=0.1, gamma=0.0025, where ``L_image`` is the Charbonnier loss (eps 1e-9),
``L_freq`` the mean of the Charbonnier losses of the real and imaginary parts of the
*unnormalised* ``torch.fft.fftn`` of the whole batch tensor (SwinMR's ``fft_map``, kept as is so
that the published weights balance the same way), and ``L_perc`` SwinMR's VGG19 perceptual loss
(L1 of features at layers 2, 7, 16, 25, 34 with weights 0.1, 0.1, 1, 1, 1, ImageNet input
normalisation). The VGG19 weights come only from a configured local file (torchvision's
``vgg19-dcbb9e9d.pth``); with none, the perceptual term is off and :attr:`SwinMRLoss.note` says so.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .models.score import VESDE
from .models.swinmr import VGG19Features

#: Loss config keys and their defaults (SwinMR's ``train`` section).
SWINMR_LOSS_DEFAULTS: dict[str, Any] = {
    "alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "charbonnier_eps": 1e-9, "vgg19_weights": None,
}
NO_VGG = "SwinMR perceptual term off: no local VGG19 weights configured (vgg19_weights)"


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``mean(sqrt((x - y)^2 + eps))`` (SwinMR's ``CharbonnierLoss``)."""
    d = x - y
    return torch.sqrt(d * d + eps).mean()


class SwinMRLoss(nn.Module):
    """``alpha * Charbonnier(x, y) + beta * L_freq + gamma * L_VGG`` (see the module docstring).

    ``forward(pred, target) -> (total, parts)`` with ``parts`` the float value of each term.
    """

    PERC_WEIGHTS = (0.1, 0.1, 1.0, 1.0, 1.0)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**SWINMR_LOSS_DEFAULTS,
               **{k: v for k, v in (config or {}).items() if k in SWINMR_LOSS_DEFAULTS}}
        self.alpha, self.beta, self.gamma = float(cfg["alpha"]), float(cfg["beta"]), float(cfg["gamma"])
        self.eps = float(cfg["charbonnier_eps"])
        self.vgg = VGG19Features(cfg["vgg19_weights"]) if cfg["vgg19_weights"] else None
        self.note = None if self.vgg is not None or self.gamma == 0 else NO_VGG

    def train(self, mode: bool = True) -> "SwinMRLoss":
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        l_img = charbonnier(pred, target, self.eps)
        kp, kt = torch.fft.fftn(pred), torch.fft.fftn(target)
        l_freq = (charbonnier(kp.real, kt.real, self.eps) + charbonnier(kp.imag, kt.imag, self.eps)) / 2
        total = self.alpha * l_img + self.beta * l_freq
        l_perc = pred.new_zeros(())
        if self.vgg is not None and self.gamma:
            fp, ft = self.vgg(pred), self.vgg(target.detach())
            l_perc = sum(w * (a - b).abs().mean() for w, a, b in zip(self.PERC_WEIGHTS, fp, ft))
            total = total + self.gamma * l_perc
        return total, {"image": l_img.item(), "freq": l_freq.item(), "perc": l_perc.item()}


def dsm_loss(model: nn.Module, x: torch.Tensor, sde: VESDE, generator: torch.Generator | None = None,
             eps: float = 1e-5) -> torch.Tensor:
    """Continuous denoising score matching loss of a batch ``x`` [B, 1, H, W] in [0, 1]."""
    b = x.shape[0]
    t = (torch.rand(b, generator=generator, dtype=x.dtype) * (1 - eps) + eps).to(x.device)
    sigma = sde.sigma(t)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    score = model(x + sigma[:, None, None, None] * z, sigma)
    per_sample = 0.5 * torch.square(score * sigma[:, None, None, None] + z).reshape(b, -1).sum(-1)
    return per_sample.mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, win: int = 7, k1: float = 0.01,
              k2: float = 0.03) -> torch.Tensor:
    """fastMRI's ``SSIMLoss``: ``1 - SSIM`` with a 7x7 uniform window, range = target max."""
    data_range = target.flatten(1).amax(1).view(-1, 1, 1, 1)
    w = torch.ones(1, 1, win, win, dtype=pred.dtype, device=pred.device) / win ** 2
    cov = win ** 2 / (win ** 2 - 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ux, uy = F.conv2d(pred, w), F.conv2d(target, w)
    uxx, uyy, uxy = F.conv2d(pred * pred, w), F.conv2d(target * target, w), F.conv2d(pred * target, w)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return 1 - s.mean()


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str | None = "l1") -> torch.Tensor:
    """``1 - SSIM`` (:func:`ssim_loss`) for ``kind == "ssim"``, else the mean absolute error."""
    return ssim_loss(pred, target) if kind == "ssim" else (pred - target).abs().mean()
