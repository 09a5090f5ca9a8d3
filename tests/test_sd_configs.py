"""Stable Diffusion 2-1-base's published ``unet/config.json`` and ``vae/config.json`` (copied into
``tests/data/sd21_base/``) build with diffusers at their published sizes, and LDPM's control
branch builds from that U-Net: the real ``pretrained.sd_path`` folder will load. The networks
are built on the ``meta`` device (shapes only, no memory, no weights)."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ldpm.models import MRControlNet

CONFIGS = Path(__file__).parent / "data" / "sd21_base"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}_config.json").read_text())


def test_sd21_base_unet_and_vae_build_at_their_published_sizes():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config("unet"))
        vae = AutoencoderKL.from_config(_config("vae"))
    assert _count(unet) / 1e6 == pytest.approx(865.9, abs=1.0)
    assert _count(vae) / 1e6 == pytest.approx(83.7, abs=0.5)
    assert unet.config.cross_attention_dim == 1024 and vae.config.scaling_factor == 0.18215


def test_the_control_branch_builds_from_sd21_base_unet():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config("unet"))
        mrcn = MRControlNet.from_denoiser(unet, torch.zeros(1, 77, 1024))
    down = sum(p.numel() for n, p in unet.named_parameters()
               if n.startswith(("conv_in", "time_embedding", "down_blocks", "mid_block")))
    # a copy of the encoder and middle block (+ zero convolutions and the condition input)
    assert down <= _count(mrcn.controlnet) <= down * 1.1
