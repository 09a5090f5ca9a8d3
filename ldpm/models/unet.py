"""The fastMRI U-Net baseline (Zbontar et al., "fastMRI: An Open Dataset and Benchmarks for
Accelerated MRI", 2018; Ronneberger et al. 2015), as in ``fastmri/models/unet.py``.

* :class:`Unet`: ``num_pool_layers`` levels of :class:`ConvBlock` (2x [conv3x3 no bias ->
  InstanceNorm -> LeakyReLU(0.2) -> Dropout2d]) with 2x2 average pooling down, and
  :class:`TransposeConvBlock` (transpose conv 2x2 stride 2 -> InstanceNorm -> LeakyReLU) up with
  skip concatenation; a final 1x1 conv. Odd sizes are handled by reflect-padding after the
  transpose conv, as fastMRI does. Paper scale: ``chans=32, num_pool_layers=4, drop_prob=0``
  (fastMRI's ``unet_knee_sc``/``unet_brain`` leaderboard models use ``chans=256``).
* :class:`UnetRecon`: the fastMRI U-Net *module* around it: the input is the zero-filled
  magnitude ``|F^-1(k_u)|``; it is normalised by its own mean and std, clamped to [-6, 6],
  passed through the U-Net and un-normalised (fastMRI's ``UnetDataTransform`` +
  ``UnetModule``). Trained with an L1 loss (fastMRI computes it in the normalised units, i.e.
  the same loss divided by the input's std; we use image units, see ``ldpm.baselines.unet``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .pretrained import load_state_dict_into

#: Config keys of :class:`UnetRecon` and their defaults (paper scale).
UNET_DEFAULTS: dict[str, Any] = {"chans": 32, "num_pool_layers": 4, "drop_prob": 0.0}


class ConvBlock(nn.Module):
    """Two (conv3x3 -> InstanceNorm -> LeakyReLU(0.2) -> Dropout2d) layers."""

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(drop_prob),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(drop_prob),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransposeConvBlock(nn.Module):
    """Transpose conv (2x2, stride 2) -> InstanceNorm -> LeakyReLU(0.2): doubles H and W."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(in_chans, out_chans, 2, stride=2, bias=False),
            nn.InstanceNorm2d(out_chans), nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Unet(nn.Module):
    """fastMRI's U-Net: ``[B, in_chans, H, W] -> [B, out_chans, H, W]`` (any H, W)."""

    def __init__(self, in_chans: int, out_chans: int, chans: int = 32, num_pool_layers: int = 4,
                 drop_prob: float = 0.0):
        super().__init__()
        self.down_sample_layers = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        ch = chans
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2, drop_prob)
        self.up_transpose_conv = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for _ in range(num_pool_layers - 1):
            self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
            self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            ch //= 2
        self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
        self.up_conv.append(nn.Sequential(ConvBlock(ch * 2, ch, drop_prob),
                                          nn.Conv2d(ch, out_chans, kernel_size=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack = []
        out = x
        for layer in self.down_sample_layers:
            out = layer(out)
            stack.append(out)
            out = F.avg_pool2d(out, kernel_size=2, stride=2)
        out = self.conv(out)
        for up, conv in zip(self.up_transpose_conv, self.up_conv):
            skip = stack.pop()
            out = up(out)
            pad = [0, int(out.shape[-1] != skip.shape[-1]), 0, int(out.shape[-2] != skip.shape[-2])]
            if any(pad):
                out = F.pad(out, pad, "reflect")
            out = conv(torch.cat([out, skip], dim=1))
        return out


class UnetRecon(nn.Module):
    """Zero-filled magnitude ``[B, 1, H, W]`` -> reconstructed magnitude ``[B, 1, H, W]``."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**UNET_DEFAULTS, **{k: v for k, v in (config or {}).items() if k in UNET_DEFAULTS}}
        self.config = cfg
        self.unet = Unet(1, 1, int(cfg["chans"]), int(cfg["num_pool_layers"]), float(cfg["drop_prob"]))

    def forward(self, x_zf: torch.Tensor) -> torch.Tensor:
        mean = x_zf.mean(dim=(-3, -2, -1), keepdim=True)
        std = x_zf.std(dim=(-3, -2, -1), keepdim=True).clamp_min(1e-11)
        x = ((x_zf - mean) / std).clamp(-6, 6)
        return self.unet(x) * std + mean


#: The architecture of fastMRI's released U-Nets (``unet_brain_mc``, ``unet_knee_mc``/``_sc``).
OFFICIAL_UNET: dict[str, Any] = {"chans": 256, "num_pool_layers": 4, "drop_prob": 0.0}


def load_official_unet(path: str | Path, config: Mapping[str, Any] | None = None) -> UnetRecon:
    """fastMRI's published U-Net weights (a state dict of its ``Unet``, or a Lightning
    checkpoint with ``unet.`` keys) inside :class:`UnetRecon`, whose instance normalisation and
    [-6, 6] clamp are fastMRI's ``UnetDataTransform``. ``config``: the architecture (default:
    the official one)."""
    model = UnetRecon({**OFFICIAL_UNET, **dict(config or {})})
    load_state_dict_into(
        model.unet, path, arch=f"a U-Net with {model.config}", lightning_prefix="unet.",
        fix="set inference.unet_official.checkpoint in config/config.yaml to fastMRI's "
            "unet_brain_mc (brain_leaderboard_state_dict.pt) or unet_knee_mc weights",
        arch_fix="set inference.unet_official.model to the architecture the weights were "
                 "trained with (fastMRI's: chans 256, num_pool_layers 4)")
    return model.eval()
