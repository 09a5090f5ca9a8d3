"""A compact SwinIR for image restoration: the repair model ``R`` of the Sketcher (eq. 2-3).

Liang et al., "SwinIR: Image Restoration Using Swin Transformer" (2021), restoration variant:

    shallow conv -> [RSTB] x K -> LayerNorm -> conv -> (+ shallow features) -> conv -> (+ input)

An RSTB (residual Swin transformer block) is a :class:`SwinLayer` (Swin blocks alternating plain
and shifted windows, window attention with a relative position bias) followed by a conv and a
residual connection. There is no upsampler: the output has the input's size. The input is
reflect-padded to a multiple of the window size and the output cropped back.

DiffBIR's stage-1 SwinIR works at 1/8 resolution (``unshuffle_scale: 8``: pixel-unshuffle in,
nearest+conv upsampling out); set ``unshuffle_scale`` > 1 for that layout. The blocks
(:class:`WindowAttention`, :class:`SwinBlock`, :class:`SwinLayer`, :class:`RSTB`) are public so
that the SwinMR baseline can reuse them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: Keys of the SwinIR config dict and their defaults (a small restoration model).
SWINIR_DEFAULTS: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "embed_dim": 32,
    "depths": [2, 2],
    "num_heads": [2, 2],
    "window_size": 8,
    "mlp_ratio": 2.0,
    "unshuffle_scale": 1,
    "img_range": 1.0,
}


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, ws*ws, C] (H, W multiples of ``ws``)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, ws*ws, C] -> [B, H, W, C]: the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """[nW, ws*ws, ws*ws] additive mask (0 or -100) for shifted-window attention.

    After the cyclic shift, a window may hold pixels from up to four image regions that were not
    adjacent; attention between different regions is masked out.
    """
    region = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = cnt
            cnt += 1
    ids = window_partition(region, ws).squeeze(-1)  # [nW, ws*ws]
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``ws x ws`` windows with a relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.dim, self.ws, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        coords = coords.flatten(1)  # [2, ws*ws]
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # [N, N, 2]
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1],
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, d]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """Swin transformer block: (shifted) window attention + MLP, each pre-norm and residual."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.ws, self.shift = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] with H, W multiples of the window size."""
        b, h, w, c = x.shape
        # A window covering the whole image gains nothing from a shift (as in SwinIR).
        shift = self.shift if min(h, w) > self.ws else 0
        y = self.norm1(x)
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(h, w, self.ws, shift, device=x.device).to(y.dtype)
        y = self.attn(window_partition(y, self.ws), mask)
        y = window_reverse(y, self.ws, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinLayer(nn.Module):
    """``depth`` Swin blocks alternating plain (even) and shifted (odd) windows."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        for block in self.blocks:
            x = block(x)
        return x


class RSTB(nn.Module):
    """Residual Swin transformer block: ``x + conv(SwinLayer(x))`` on [B, C, H, W] features."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.layer = SwinLayer(dim, depth, num_heads, window_size, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv(y)


class SwinIR(nn.Module):
    """SwinIR restoration network built from a config dict (keys: :data:`SWINIR_DEFAULTS`).

    ``forward(x) -> y`` with ``y`` of the shape of ``x`` ([B, in_channels, H, W], any H, W).
    """

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__()
        unknown = set(config or {}) - set(SWINIR_DEFAULTS)
        if unknown:
            raise ValueError(f"SwinIR config: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(SWINIR_DEFAULTS)}")
        cfg = {**SWINIR_DEFAULTS, **(config or {})}
        if len(cfg["depths"]) != len(cfg["num_heads"]):
            raise ValueError("SwinIR config: depths and num_heads must have the same length")
        self.config = cfg
        dim, s = int(cfg["embed_dim"]), int(cfg["unshuffle_scale"])
        cin, cout = int(cfg["in_channels"]), int(cfg["out_channels"])
        self.window_size, self.scale, self.img_range = int(cfg["window_size"]), s, float(cfg["img_range"])
        self.conv_first = nn.Conv2d(cin * s * s, dim, 3, padding=1)
        self.layers = nn.ModuleList([
            RSTB(dim, d, h, self.window_size, float(cfg["mlp_ratio"]))
            for d, h in zip(cfg["depths"], cfg["num_heads"])])
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        # DiffBIR's "nearest+conv" upsampler back to full resolution when unshuffled.
        ups: list[nn.Module] = []
        for _ in range(int(round(math.log2(s)))):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim, 3, padding=1),
                    nn.LeakyReLU(0.2, inplace=True)]
        self.upsample = nn.Sequential(*ups)
        self.conv_last = nn.Conv2d(dim, cout, 3, padding=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mult = self.window_size * self.scale
        ph, pw = (-h) % mult, (-w) % mult
        inp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        y = inp * self.img_range
        if self.scale > 1:
            y = F.pixel_unshuffle(y, self.scale)
        feat = self.conv_first(y)
        body = feat
        for layer in self.layers:
            body = layer(body)
        body = self.norm(body.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        res = self.conv_after_body(body) + feat
        out = inp + self.conv_last(self.upsample(res)) / self.img_range
        return out[..., :h, :w]
