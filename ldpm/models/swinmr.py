"""SwinMR, nPI version (Huang et al., "Swin transformer for fast MRI", Neurocomputing 2022;
official code ``ayanglab/SwinMR``, ``models/model_swinmr_npi.py``).

Network: SwinMR's generator is a SwinIR without upsampler (``upsampler: null``,
``resi_connection: 1conv``, one input channel): shallow conv -> residual Swin transformer blocks
-> LayerNorm -> conv (+ shallow features) -> conv, **plus the input** (output + residual). We
build it from the project's SwinIR (:class:`ldpm.models.swinir.SwinIR`, the same RSTB blocks the
Sketcher uses) rather than a second Swin implementation. Input: the zero-filled magnitude
``|F^-1(k_u)|`` (nPI: no coil information); output: the reconstructed magnitude. Paper scale
(``train_swinmr_CCnpi_G1D30.json``): embed_dim 180, depths and heads [6]*6, window 8, mlp 2.

Loss (``MRI_NPI.total_loss``): ``alpha * L_image + beta * L_freq + gamma * L_perc`` with
alpha=15, beta=0.1, gamma=0.0025, where ``L_image`` is the Charbonnier loss (eps 1e-9),
``L_freq`` the mean of the Charbonnier losses of the real and imaginary parts of the
*unnormalised* ``torch.fft.fftn`` of the whole batch tensor (SwinMR's ``fft_map``, kept as is so
that the published weights balance the same way), and ``L_perc`` SwinMR's VGG19 perceptual loss
(L1 of features at layers 2, 7, 16, 25, 34 with weights 0.1, 0.1, 1, 1, 1, ImageNet input
normalisation). The VGG19 weights come only from a configured local file (torchvision's
``vgg19-dcbb9e9d.pth``); with none, the perceptual term is off and :attr:`SwinMRLoss.note` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import LdpmInputError
from .swinir import SwinIR

#: Network config keys (SwinIR's) at paper scale.
SWINMR_NET_DEFAULTS: dict[str, Any] = {
    "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8, "mlp_ratio": 2.0,
}
#: Loss config keys and their defaults (SwinMR's ``train`` section).
SWINMR_LOSS_DEFAULTS: dict[str, Any] = {
    "alpha": 15.0, "beta": 0.1, "gamma": 0.0025, "charbonnier_eps": 1e-9, "vgg19_weights": None,
}
NO_VGG = "SwinMR perceptual term off: no local VGG19 weights configured (vgg19_weights)"


class SwinMR(nn.Module):
    """Zero-filled magnitude ``[B, 1, H, W]`` -> reconstruction ``[B, 1, H, W]`` (input + residual)."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**SWINMR_NET_DEFAULTS,
               **{k: v for k, v in (config or {}).items() if k in SWINMR_NET_DEFAULTS}}
        self.config = cfg
        self.net = SwinIR({**cfg, "in_channels": 1, "out_channels": 1, "unshuffle_scale": 1,
                           "img_range": 1.0})

    def forward(self, x_zf: torch.Tensor) -> torch.Tensor:
        return self.net(x_zf)


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """``mean(sqrt((x - y)^2 + eps))`` (SwinMR's ``CharbonnierLoss``)."""
    d = x - y
    return torch.sqrt(d * d + eps).mean()


class VGG19Features(nn.Module):
    """SwinMR's ``VGGFeatureExtractor``: VGG19 features cut after layers 2, 7, 16, 25, 34."""

    LAYERS = (2, 7, 16, 25, 34)

    def __init__(self, weights_path: str | Path):
        super().__init__()
        import torchvision

        path = Path(weights_path)
        if not path.is_file():
            raise LdpmInputError(path, "VGG19 weights file not found",
                                 "give a local torchvision vgg19 state dict (vgg19-dcbb9e9d.pth), "
                                 "or null to turn SwinMR's perceptual term off")
        vgg = torchvision.models.vgg19(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if all(not k.startswith(("features.", "classifier.")) for k in state):
            vgg.features.load_state_dict(state)
        else:
            vgg.load_state_dict(state)
        layers = list(vgg.features.children())
        bounds = (-1,) + self.LAYERS
        self.stages = nn.ModuleList([nn.Sequential(*layers[a + 1:b + 1]) for a, b in zip(bounds, bounds[1:])])
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


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
