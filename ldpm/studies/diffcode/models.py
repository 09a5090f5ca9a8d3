"""DiffCode's networks (the DiffCode paper's section 2), built from a config dict.

* :class:`NAFBlock` (Chen et al., "Simple baselines for image restoration", 2022): LayerNorm ->
  1x1 conv -> depthwise 3x3 -> SimpleGate -> simplified channel attention -> 1x1 conv, and a
  gated FFN, both residual with zero-initialised scales. :class:`NAFEncoder`/:class:`NAFDecoder`
  stack ``naf_blocks[i]`` blocks at ``channels[i]`` with 2x down/up-sampling between levels
  (paper: [2, 2, 4, 4] blocks, channels [64, 128, 256, 256]); the latent is
  ``2**(len(channels)-1)`` times smaller than the image.
* **Stage I** (eq. 1-3) :class:`VQAutoencoder`: ``E_vq``, ``G_vq`` and a :class:`CodebookBank`
  of one codebook per task (``n_codebooks = 1``: the single shared codebook of Table 2b);
  :func:`residual_quantize` quantises each latent vector ``D`` times with the task's codebook,
  ``R(d) = R(d-1) - Δf(d-1)``, ``Δf(d) = argmin_m ||R(d) - z_m||²``, ``q = Σ_d Δf(d)``.
* **Stage II** (eq. 4-6) :class:`LatentRetrieval`: the condition encoder ``E_lq`` (a NAF encoder
  on the LQ image) and :class:`LatentDenoiser`, ``ε_θ(z_t, c, t)``: 5 linear layers applied at
  every latent position (1x1 convolutions); ``T`` steps with β linear from 0.1 to 0.99. Training
  noises ``z = E_vq(I_hq)`` to ``z_T`` (eq. 4) and runs the whole reverse chain (eq. 5), so
  the L1 of eq. 6 back-propagates through all ``T`` steps; inference starts from ``N(0, I)``.
  ``mode='direct'`` is the retrieval without diffusion (``ẑ = E_lq(I_lq)``, Table 2a's V3).
* **Stage III** (eq. 7-8) :class:`Restorer`: a NAF U-Net on ``concat(I_ref, I_lq)`` (or
  ``I_lq`` alone without a prior), output ``I_lq + net(.)`` (last conv zero-initialised, so
  training starts from the identity); with TARS a :class:`TaskClassifier`
  gives the global gating vector ``V`` and each level has a :class:`TARM`, a mixture of ``E``
  experts of which the top-k by ``V`` are used with softmax weights over the selected ones.

Random numbers are drawn on CPU generators and moved to the data's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Generators = torch.Generator | Sequence[torch.Generator]


def randn(shape: Sequence[int], generators: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of ``shape`` [B, ...]: one generator for the batch, or one per sample."""
    if isinstance(generators, torch.Generator):
        return torch.randn(tuple(shape), generator=generators).to(device)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to multiples of ``multiple``; returns the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


# ------------------------------------------------------------------------------- NAF blocks

class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel, with a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight.view(-1), self.bias.view(-1),
                         self.eps)
        return y.permute(0, 3, 1, 2)


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's SimpleGate: split the channels in two halves and multiply them."""
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """A NAFNet block (spatial mixing + gated FFN, each residual with a learned zero-init scale)."""

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2):
        super().__init__()
        dw, ffn = channels * dw_expand, channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = simple_gate(self.conv2(self.conv1(self.norm1(x))))
        y = self.conv3(y * self.sca(y))
        x = x + self.beta * y
        y = self.conv5(simple_gate(self.conv4(self.norm2(x))))
        return x + self.gamma * y


def _blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[NAFBlock(channels) for _ in range(int(n))])


def _check_levels(channels: Sequence[int], blocks: Sequence[int]) -> None:
    if len(channels) != len(blocks) or not channels:
        raise ValueError(f"naf_blocks {list(blocks)} and channels {list(channels)} need the same "
                         "non-zero length")


class NAFEncoder(nn.Module):
    """Image [B, in, H, W] -> latent [B, out_dim, H/f, W/f], ``f = 2**(levels-1)``."""

    def __init__(self, in_channels: int, channels: Sequence[int], blocks: Sequence[int], out_dim: int):
        super().__init__()
        _check_levels(channels, blocks)
        self.factor = 2 ** (len(channels) - 1)
        self.intro = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList([_blocks(c, n) for c, n in zip(channels, blocks)])
        self.downs = nn.ModuleList([nn.Conv2d(channels[i], channels[i + 1], 2, stride=2)
                                    for i in range(len(channels) - 1)])
        self.out = nn.Conv2d(channels[-1], out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intro(x)
        for i, level in enumerate(self.levels):
            x = level(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return self.out(x)


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out * 4, 1, bias=False), nn.PixelShuffle(2))


class NAFDecoder(nn.Module):
    """Latent [B, in_dim, h, w] -> image [B, out, h*f, w*f] (the mirror of :class:`NAFEncoder`)."""

    def __init__(self, in_dim: int, channels: Sequence[int], blocks: Sequence[int], out_channels: int):
        super().__init__()
        _check_levels(channels, blocks)
        self.inp = nn.Conv2d(in_dim, channels[-1], 1)
        self.levels = nn.ModuleList([_blocks(c, n) for c, n in zip(channels, blocks)])
        self.ups = nn.ModuleList([_up(channels[i + 1], channels[i]) for i in range(len(channels) - 1)])
        self.out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.inp(z)
        for i in reversed(range(len(self.levels))):
            x = self.levels[i](x)
            if i > 0:
                x = self.ups[i - 1](x)
        return self.out(x)


# ------------------------------------------------------------------ Stage I: codebook bank

@dataclass
class RQOutput:
    """Residual quantisation of latents: ``q`` (Σ_d Δf(d)), the ``codes`` [B, D, h, w] and the
    mean L2 norm of the residual ``R(d)`` per depth ``d = 0..D`` (``R(0) = z``), detached."""

    q: torch.Tensor
    codes: torch.Tensor
    residual_norms: torch.Tensor


def residual_quantize(z: torch.Tensor, codebooks: torch.Tensor, depth: int) -> RQOutput:
    """Eq. 1-2: quantise every latent vector of ``z`` [B, C, h, w] ``depth`` times with its
    sample's codebook ``codebooks`` [B, K, C] (the nearest code item of the current residual)."""
    b, c, h, w = z.shape
    r = z.flatten(2).transpose(1, 2)                                 # [B, M, C]
    cb_sq = codebooks.pow(2).sum(-1)[:, None, :]                     # [B, 1, K]
    q = torch.zeros_like(r)
    codes, norms = [], [r.detach().norm(dim=-1).mean()]
    for _ in range(int(depth)):
        with torch.no_grad():
            dist = r.pow(2).sum(-1, keepdim=True) - 2 * r @ codebooks.transpose(1, 2) + cb_sq
            idx = dist.argmin(-1)                                    # [B, M]
        delta = torch.gather(codebooks, 1, idx[..., None].expand(-1, -1, c))
        q, r = q + delta, r - delta
        codes.append(idx)
        norms.append(r.detach().norm(dim=-1).mean())
    return RQOutput(q.transpose(1, 2).reshape(b, c, h, w), torch.stack(codes, 1).view(b, -1, h, w),
                    torch.stack(norms))


class CodebookBank(nn.Module):
    """``n_codebooks`` codebooks of ``size`` items of dimension ``dim`` (eq. 1-3: one per task).

    ``usage`` (a buffer, checkpointed with the weights): per item, an EMA (decay ``usage_decay``)
    of how many assignments (over every depth) it got per training batch of its codebook; an item
    whose usage falls below ``dead_code_threshold`` is dead and is re-seeded (:meth:`reseed_dead`).
    """

    def __init__(self, n_codebooks: int, size: int, dim: int, depth: int,
                 dead_code_threshold: float = 0.0, usage_decay: float = 0.9):
        super().__init__()
        self.depth = int(depth)
        self.dead_code_threshold, self.usage_decay = float(dead_code_threshold), float(usage_decay)
        self.codebooks = nn.Parameter(torch.empty(n_codebooks, size, dim).uniform_(-1 / size, 1 / size))
        self.register_buffer("usage", torch.ones(n_codebooks, size))

    def _item_scale(self) -> torch.Tensor:
        """2^-d for the d-th of the items (deeper residual steps find items of their size)."""
        k = self.codebooks.shape[1]
        return 0.5 ** (torch.arange(k) * max(1, self.depth) // k).to(torch.float32)

    def forward(self, z: torch.Tensor, codebook_index: torch.Tensor) -> RQOutput:
        return residual_quantize(z, self.codebooks[codebook_index.to(z.device)], self.depth)

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator) -> None:
        """Data-dependent start (k-means-style): each codebook's items are latent vectors of
        ``z`` [B, C, h, w] drawn on ``generator``, scaled by 2^-d for a d-th of the items (so
        that deeper residual steps find items of their size)."""
        n, k, c = self.codebooks.shape
        vecs = z.flatten(2).transpose(1, 2).reshape(-1, c)
        scale = self._item_scale()
        for i in range(n):
            pick = torch.randint(len(vecs), (k,), generator=generator).to(vecs.device)
            self.codebooks[i] = vecs[pick] * scale.to(vecs.device)[:, None]

    @torch.no_grad()
    def reseed_dead(self, z: torch.Tensor, codebook_index: torch.Tensor, codes: torch.Tensor,
                    generator: torch.Generator) -> dict[int, float]:
        """Dead-code handling after a training step (as vector-quantize-pytorch's
        ``threshold_ema_dead_code``): every codebook this batch used updates its items' ``usage``
        from the batch's ``codes`` [B, D, h, w]; its dead items are replaced by latent vectors of
        ``z`` [B, C, h, w] of the samples that used it, drawn on ``generator`` and scaled as in
        :meth:`init_from`, and their usage restarts at 1. Returns each used codebook's
        perplexity: exp of the entropy of its items' shares of the batch's assignments (the
        number of items in effective use, at most ``size``)."""
        k, c = self.codebooks.shape[1:]
        scale = self._item_scale()
        perplexity = {}
        for i in torch.unique(codebook_index.cpu()).tolist():
            rows = (codebook_index == i).to(codes.device)
            counts = torch.bincount(codes[rows].flatten(), minlength=k).to(self.usage)
            share = counts / counts.sum().clamp_min(1.0)
            perplexity[int(i)] = float(torch.exp(-(share * share.clamp_min(1e-12).log()).sum()))
            self.usage[i].mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
            dead = torch.nonzero(self.usage[i] < self.dead_code_threshold).flatten()
            if len(dead):
                vecs = z[rows.to(z.device)].flatten(2).transpose(1, 2).reshape(-1, c)
                pick = torch.randint(len(vecs), (len(dead),), generator=generator).to(vecs.device)
                self.codebooks[i, dead] = vecs[pick] * scale.to(vecs.device)[dead.cpu(), None]
                self.usage[i, dead] = 1.0
        return perplexity


class VQAutoencoder(nn.Module):
    """Stage I: ``E_vq``, a codebook bank with residual quantisation, ``G_vq`` (eq. 1-3)."""

    def __init__(self, cfg: Mapping[str, Any], n_codebooks: int):
        super().__init__()
        ch, bl, dim = list(cfg["channels"]), list(cfg["naf_blocks"]), int(cfg["code_dim"])
        self.encoder = NAFEncoder(1, ch, bl, dim)
        self.decoder = NAFDecoder(dim, ch, bl, 1)
        self.bank = CodebookBank(n_codebooks, int(cfg["codebook_size"]), dim, int(cfg["rq_depth"]),
                                 float(cfg.get("dead_code_threshold") or 0.0))
        self.factor = self.encoder.factor

    def quantize(self, z: torch.Tensor, codebook_index: torch.Tensor) -> RQOutput:
        return self.bank(z, codebook_index)

    def loss(self, x: torch.Tensor, codebook_index: torch.Tensor, commitment: float
             ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, RQOutput]:
        """Eq. 3: ``||I - Î||_1 + ||sg[z] - z_q||² + δ ||z - sg[z_q]||²`` (means over elements);
        the decoder sees ``z_q`` through the straight-through estimator. Returns the loss, the
        scalars to log, and the latents ``z`` (detached) with their quantisation."""
        z = self.encoder(x)
        rq = self.quantize(z, codebook_index)
        recon = self.decoder(z + (rq.q - z).detach())
        l1 = (recon - x).abs().mean()
        codebook = F.mse_loss(rq.q, z.detach())
        commit = F.mse_loss(z, rq.q.detach())
        loss = l1 + codebook + commitment * commit
        return loss, {"loss": loss.item(), "l1": l1.item(), "codebook": codebook.item(),
                      "commitment": commit.item(),
                      "residual_last": float(rq.residual_norms[-1] / rq.residual_norms[0].clamp_min(1e-12))
                      }, z.detach(), rq

    def reference(self, z_hat: torch.Tensor, codebook_index: torch.Tensor) -> torch.Tensor:
        """Quantise estimated features with the task's codebook and decode them (``I_ref``)."""
        return self.decoder(self.quantize(z_hat, codebook_index).q)


# -------------------------------------------------------------- Stage II: latent diffusion

def linear_betas(t_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β_1..β_T increasing linearly (paper: T = 8, 0.1 -> 0.99)."""
    if t_steps == 1:
        return torch.tensor([float(beta_start)])
    return torch.linspace(float(beta_start), float(beta_end), int(t_steps))


class LatentDenoiser(nn.Module):
    """The denoising network: ``n_layers`` linear layers on ``[z_t, c, t/T]`` at each latent
    position (1x1 convolutions). It predicts ``ẑ_0`` (DiffIR's ``x0`` parameterisation), from
    which ``ε_θ = (z_t - √ᾱ_t ẑ_0) / √(1-ᾱ_t)`` (see :meth:`LatentRetrieval.forward`)."""

    def __init__(self, dim: int, hidden: int, n_layers: int = 5):
        super().__init__()
        if n_layers < 2:
            raise ValueError("the denoiser needs at least 2 linear layers")
        sizes = [2 * dim + 1] + [hidden] * (n_layers - 1) + [dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Conv2d(sizes[i], sizes[i + 1], 1))
            if i < n_layers - 1:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)

    def forward(self, z_t: torch.Tensor, c: torch.Tensor, t_frac: float) -> torch.Tensor:
        t = torch.full_like(z_t[:, :1], float(t_frac))
        return self.net(torch.cat([z_t, c, t], dim=1))


class LatentRetrieval(nn.Module):
    """Stage II: ``E_lq`` and, with ``mode='diffusion'``, the latent DM (eq. 4-6)."""

    def __init__(self, cfg: Mapping[str, Any], mode: str = "diffusion"):
        super().__init__()
        if mode not in ("diffusion", "direct"):
            raise ValueError(f"retrieval mode {mode!r}: use 'diffusion' or 'direct'")
        ch, bl, dim = list(cfg["channels"]), list(cfg["naf_blocks"]), int(cfg["code_dim"])
        self.mode = mode
        self.cond = NAFEncoder(1, ch, bl, dim)
        self.factor = self.cond.factor
        self.reverse_noise = bool(cfg.get("reverse_noise", False))
        if mode == "diffusion":
            self.denoiser = LatentDenoiser(dim, int(cfg["denoiser_hidden"]), int(cfg["denoiser_layers"]))
            betas = linear_betas(int(cfg["diffusion_steps"]), *map(float, cfg["beta"]))
            alphas = 1 - betas
            self.register_buffer("alphas", alphas, persistent=False)
            self.register_buffer("alpha_bars", torch.cumprod(alphas, 0), persistent=False)

    @property
    def steps(self) -> int:
        return len(self.alphas) if self.mode == "diffusion" else 0

    def reverse_step(self, z_t: torch.Tensor, z0_hat: torch.Tensor, t: int) -> torch.Tensor:
        """Eq. 5's mean, ``(z_t - (1-α_t)/√(1-ᾱ_t) ε_θ) / √α_t`` with
        ``ε_θ = (z_t - √ᾱ_t ẑ_0)/√(1-ᾱ_t)``, written in its equivalent, numerically stable form
        ``√ᾱ_{t-1} β_t/(1-ᾱ_t) ẑ_0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) z_t`` (the DDPM posterior mean)."""
        a, ab = self.alphas[t - 1], self.alpha_bars[t - 1]
        ab_prev = self.alpha_bars[t - 2] if t > 1 else torch.ones_like(ab)
        return (ab_prev.sqrt() * (1 - a) / (1 - ab)) * z0_hat + (a.sqrt() * (1 - ab_prev) / (1 - ab)) * z_t

    def forward(self, lq: torch.Tensor, generators: Generators,
                z_hq: torch.Tensor | None = None) -> torch.Tensor:
        """``ẑ`` for LQ images ``lq`` [B, 1, H, W] (H, W multiples of ``factor``).

        Training passes ``z_hq = E_vq(I_hq)``: ``z_T = √ᾱ_T z + √(1-ᾱ_T) ε`` (eq. 4); inference
        starts from ``z_T ~ N(0, I)``. Then ``T`` reverse steps (eq. 5, :meth:`reverse_step`),
        conditioned on ``c = E_lq(I_lq)``. As in DiffIR, which the paper follows ("we remove the
        variance estimation"), a step is its mean; ``reverse_noise: true`` adds eq. 5's
        ``√(1-α_t) ε_t`` (except at the last step).
        """
        c = self.cond(lq)
        if self.mode == "direct":
            return c
        t_max = self.steps
        eps = randn(c.shape, generators, c.device)
        if z_hq is not None:
            ab = self.alpha_bars[-1]
            z = ab.sqrt() * z_hq + (1 - ab).sqrt() * eps
        else:
            z = eps
        for t in range(t_max, 0, -1):
            z = self.reverse_step(z, self.denoiser(z, c, t / t_max), t)
            if self.reverse_noise and t > 1:
                z = z + (1 - self.alphas[t - 1]).sqrt() * randn(c.shape, generators, c.device)
        return z


# ------------------------------------------------------------- Stage III: restoration + TARS

def topk_gating(v: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 8's weights [B, E]: softmax of ``V`` over ``S = TopK(V, k)``, zero elsewhere."""
    k = max(1, min(int(k), v.shape[1]))
    top = v.topk(k, dim=1)
    return torch.zeros_like(v).scatter(1, top.indices, torch.softmax(top.values, dim=1))


class TaskClassifier(nn.Module):
    """Task-aware classifier on the LQ image: task logits and the global gating vector ``V``.

    Input: the LQ image and its high-pass residual (``x - mean_3x3(x)``, x10), since the tasks
    differ mostly in their high frequencies (noise, ringing, aliasing); three conv layers, then
    the mean and std of each feature over the image, then a linear layer (task logits).
    ``V = G · softmax(logits)``: ``G`` [E, N] starts as one expert per task (task ``n`` ->
    expert ``n mod E``, plus small seeded noise), so top-1 routing becomes task-specific as the
    classifier learns (cross-entropy on the task labels); ``G`` learns through eq. 8's weights
    when k > 1.
    """

    def __init__(self, n_tasks: int, n_experts: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.logits = nn.Linear(4 * width, n_tasks)
        gate = torch.zeros(n_experts, n_tasks)
        gate[torch.arange(n_tasks) % n_experts, torch.arange(n_tasks)] = 1.0
        self.gate = nn.Parameter(gate + 0.01 * torch.randn(n_experts, n_tasks))

    def forward(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        high = lq - F.avg_pool2d(F.pad(lq, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        h = self.features(torch.cat([lq, 10 * high], dim=1))
        logits = self.logits(torch.cat([h.mean((2, 3)), h.std((2, 3))], dim=1))
        return logits, torch.softmax(logits, dim=1) @ self.gate.t()


class FFNExpert(nn.Module):
    """One expert ``A_e(f) = f + γ · FFN(LN(f))`` (NAFNet's gated FFN)."""

    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels * expand, 1)
        self.conv2 = nn.Conv2d(channels * expand // 2, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.gamma * self.conv2(simple_gate(self.conv1(self.norm(f))))


class TARM(nn.Module):
    """Task-aware global routing module (eq. 8): ``f_out = Σ_{e∈S} w_e A_e(f_in)``.

    Only the selected experts run, each on the samples that selected it.
    """

    def __init__(self, channels: int, n_experts: int):
        super().__init__()
        self.experts = nn.ModuleList([FFNExpert(channels) for _ in range(int(n_experts))])

    def forward(self, f: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(f)
        for e, expert in enumerate(self.experts):
            sel = torch.nonzero(weights[:, e] > 0).flatten()
            if len(sel):
                out = out.index_add(0, sel, weights[sel, e].view(-1, 1, 1, 1) * expert(f[sel]))
        return out


class Restorer(nn.Module):
    """Stage III restoration network (eq. 7): a NAF U-Net with a TARM after every level.

    ``forward(lq, ref=None) -> (restored, task_logits or None, gating weights [B, E])``.
    Without TARS each TARM has one expert with weight 1 (a plain FFN).
    """

    def __init__(self, cfg: Mapping[str, Any], n_tasks: int, with_prior: bool, tars: bool,
                 top_k: int | None = None):
        super().__init__()
        ch, bl = list(cfg["channels"]), list(cfg["naf_blocks"])
        _check_levels(ch, bl)
        self.tars, self.with_prior = bool(tars), bool(with_prior)
        self.n_experts = int(cfg["experts"]) if tars else 1
        self.top_k = int(top_k if top_k is not None else cfg["top_k"]) if tars else 1
        self.factor = 2 ** (len(ch) - 1)
        self.classifier = TaskClassifier(n_tasks, self.n_experts, ch[0]) if tars else None
        self.intro = nn.Conv2d(2 if with_prior else 1, ch[0], 3, padding=1)
        self.enc = nn.ModuleList([_blocks(c, n) for c, n in zip(ch[:-1], bl[:-1])])
        self.enc_tarm = nn.ModuleList([TARM(c, self.n_experts) for c in ch[:-1]])
        self.downs = nn.ModuleList([nn.Conv2d(ch[i], ch[i + 1], 2, stride=2) for i in range(len(ch) - 1)])
        self.middle = _blocks(ch[-1], bl[-1])
        self.middle_tarm = TARM(ch[-1], self.n_experts)
        self.ups = nn.ModuleList([_up(ch[i + 1], ch[i]) for i in range(len(ch) - 1)])
        self.dec = nn.ModuleList([_blocks(c, n) for c, n in zip(ch[:-1], bl[:-1])])
        self.dec_tarm = nn.ModuleList([TARM(c, self.n_experts) for c in ch[:-1]])
        self.ending = nn.Conv2d(ch[0], 1, 3, padding=1)
        nn.init.zeros_(self.ending.weight)  # the restoration starts as the LQ image itself
        nn.init.zeros_(self.ending.bias)

    def gating(self, lq: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(task logits, eq. 8 weights [B, E]); without TARS: (None, ones [B, 1])."""
        if self.classifier is None:
            return None, torch.ones(lq.shape[0], 1, device=lq.device, dtype=lq.dtype)
        logits, v = self.classifier(lq)
        return logits, topk_gating(v, self.top_k)

    def forward(self, lq: torch.Tensor, ref: torch.Tensor | None = None):
        if self.with_prior != (ref is not None):
            raise ValueError("this restorer was built " + ("with" if self.with_prior else "without")
                             + " a prior reference")
        logits, w = self.gating(lq)
        x_in = lq if ref is None else torch.cat([ref, lq], dim=1)
        x, (h, wd) = pad_to_multiple(x_in, self.factor)
        x = self.intro(x)
        skips = []
        for blocks, tarm, down in zip(self.enc, self.enc_tarm, self.downs):
            x = tarm(blocks(x), w)
            skips.append(x)
            x = down(x)
        x = self.middle_tarm(self.middle(x), w)
        for i in reversed(range(len(self.dec))):
            x = self.ups[i](x) + skips[i]
            x = self.dec_tarm[i](self.dec[i](x), w)
        return lq + self.ending(x)[..., :h, :wd], logits, w


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cosine_lr(step: int, n_steps: int, lr: float, lr_min: float) -> float:
    """Cosine annealing from ``lr`` at step 0 to ``lr_min`` at the last step (paper: 2e-4 -> 1e-6)."""
    if n_steps <= 1:
        return float(lr)
    return float(lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * step / (n_steps - 1))))
