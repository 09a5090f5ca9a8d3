"""Score-MRI's prior (Chung & Ye, "Score-based diffusion models for accelerated MRI", MedIA
2022; official code ``HJ-harry/score-MRI``, built on Song et al.'s ``score_sde``, ICLR 2021).

* **SDE**: the variance-exploding SDE ``dx = sqrt(d sigma^2(t)/dt) dw``, ``t in [0, 1]``,
  ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (:class:`VESDE`). Score-MRI's fastMRI
  config: ``sigma_min = 0.01``, ``sigma_max = 378``, ``N = 2000`` discretisation steps.
* **Score network** (:class:`ScoreNet`): an NCSN++-like U-Net, diffusers' ``UNet2DModel`` with
  ``time_embedding_type='fourier'``: the noise level enters as a Gaussian Fourier embedding of
  ``log sigma`` (scale 16, as NCSN++'s ``fourier_scale``) and the output is divided by
  ``sigma`` (NCSN++'s ``scale_by_sigma``). It is not NCSN++'s exact layer set (no FIR
  resampling / BigGAN residual blocks); at paper scale the widths follow Score-MRI's config
  (``nf=128``, ``ch_mult=(1, 2, 2, 2)``, 4 residual blocks per level, attention in the middle).
* **Training** (:func:`ldpm.losses.dsm_loss`): continuous-time denoising score matching on magnitude images
  in [0, 1] (``data.centered = False``): ``t ~ U(eps, 1)``, ``x_t = x + sigma(t) z``, loss
  ``|| sigma(t) s(x_t, sigma(t)) + z ||^2`` (``reduce_mean=False``: half the sum over pixels,
  mean over the batch, as ``score_sde``'s ``get_sde_loss_fn``).

The sampler (predictor-corrector with k-space data consistency) is in
:mod:`ldpm.sampling.score_pc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers import UNet2DModel
from torch import nn

#: Score network keys at paper scale (Score-MRI's ``fastmri_knee_320_ncsnpp_continuous``).
SCORE_NET_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 4,
    "norm_num_groups": 32,
    "add_attention": True,
}


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding SDE of ``score_sde`` (``sde_lib.VESDE``) with ``N`` discrete levels."""

    sigma_min: float = 0.01
    sigma_max: float = 378.0
    N: int = 2000

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def discrete_sigmas(self) -> torch.Tensor:
        """``exp(linspace(log sigma_min, log sigma_max, N))`` (index 0 is the smallest)."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))


class ScoreNet(nn.Module):
    """``forward(x [B, 1, H, W], sigma [B]) -> score [B, 1, H, W]`` (``~ -z / sigma``)."""

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        cfg = {**SCORE_NET_DEFAULTS,
               **{k: v for k, v in (config or {}).items() if k in SCORE_NET_DEFAULTS}}
        self.config = cfg
        n = len(cfg["block_out_channels"])
        self.unet = UNet2DModel(
            in_channels=1, out_channels=1, block_out_channels=tuple(cfg["block_out_channels"]),
            layers_per_block=int(cfg["layers_per_block"]), norm_num_groups=int(cfg["norm_num_groups"]),
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            add_attention=bool(cfg["add_attention"]), time_embedding_type="fourier")
        self.mult = 2 ** (n - 1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.mult, (-w) % self.mult
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.unet(x, sigma.to(x.dtype).reshape(-1)).sample[..., :h, :w]


def sde_from_config(cfg: Mapping[str, Any], n_steps: int | None = None) -> VESDE:
    """The VE SDE of a Score-MRI stage config (``sde``: sigma_min, sigma_max; ``sampler.n_steps``
    or ``n_steps``: the N discretisation levels)."""
    sde = dict(cfg.get("sde") or {})
    n = n_steps if n_steps is not None else (cfg.get("sampler") or {}).get("n_steps", 2000)
    return VESDE(float(sde.get("sigma_min", 0.01)), float(sde.get("sigma_max", 378.0)), int(n))
