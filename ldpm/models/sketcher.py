"""The Sketcher module (SkM): ``c = |DC[R(x_u), k_u, M]|`` (eq. 2-3)."""

from __future__ import annotations

import torch
from torch import nn

from ..mri import data_consistency


class Sketcher(nn.Module):
    """Repair network ``R`` (a SwinIR) followed by k-space data consistency (eq. 3).

    ``forward(x_u_mag, k_u, mask) -> c``: ``x_u_mag = |F^-1(k_u)|`` [B, 1, H, W] float,
    ``k_u`` the measured k-space [B, 1, H, W] complex, ``mask`` broadcastable to ``k_u``
    (e.g. [W] or [B, 1, 1, W]). ``c`` is a real magnitude image [B, 1, H, W].
    """

    def __init__(self, repair: nn.Module):
        super().__init__()
        self.repair = repair

    def forward(self, x_u_mag: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return data_consistency(self.repair(x_u_mag), k_u, mask).abs()
