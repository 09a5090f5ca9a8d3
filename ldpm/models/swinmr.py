"""SwinMR, nPI version (Huang et al., "Swin transformer for fast MRI", Neurocomputing 2022;
official code ``ayanglab/SwinMR``, ``models/model_swinmr_npi.py``).

Network: SwinMR's generator is a SwinIR without upsampler (``upsampler: null``,
``resi_connection: 1conv``, one input channel): shallow conv -> residual Swin transformer blocks
-> LayerNorm -> conv (+ shallow features) -> conv, **plus the input** (output + residual). We
build it from the project's SwinIR (:class:`ldpm.models.swinir.SwinIR`, the same RSTB blocks the
Sketcher uses) rather than a second Swin implementation. Input: the zero-filled magnitude
``|F^-1(k_u)|`` (nPI: no coil information); output: the reconstructed magnitude. Paper scale
(``train_swinmr_CCnpi_G1D30.json``): embed_dim 180, depths and heads [6]*6, window 8, mlp 2.

Its loss: :class:`ldpm.losses.SwinMRLoss`.
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
