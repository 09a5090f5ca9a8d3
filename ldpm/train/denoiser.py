"""Stage 3 (only without SD weights): an unconditional ε-prediction U-Net on MR-VAE latents.

``L = ||eps - eps_theta(z_t, "", t)||^2`` with ``z_t`` from eq. 6 on SD's schedule (T = 1000).
It stands in for SD's U-Net as the frozen prior of MRControlNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from ..checkpoints import load_denoiser
from ..models import NullContextEps, build_denoiser, null_text_embedding, vae_encode
from ..models.controlnet import NULL_EMBEDDING_FILE
from ..sampling import base_alphas_cumprod
from .loop import WeightAverage, random_batch, resolve_n_steps, scheduled_lr, set_lr, train
from .presets import DEFAULT_CONFIG
from .runtime import Runtime
from .vae import normalised_images

STAGE = "denoiser"


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """``z = E(x)`` for every image (posterior mean x scaling_factor)."""
    return torch.cat([vae_encode(vae, images[i:i + chunk]) for i in range(0, len(images), chunk)])


def noisy_latents(z: torch.Tensor, abar: torch.Tensor, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 6: ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``z_t = sqrt(abar_t) z + sqrt(1-abar_t) eps``."""
    t = torch.randint(len(abar), (z.shape[0],), generator=gen)
    eps = torch.randn(z.shape, generator=gen).to(z.device)
    a = abar[t].to(device=z.device, dtype=z.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * z + (1 - a).sqrt() * eps, t.to(z.device), eps


def denoiser_loss(eps_model: torch.nn.Module, z: torch.Tensor, abar: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    """``||eps - eps_theta(z_t, t)||^2`` (mean) with ``z_t`` by eq. 6."""
    z_t, t, eps = noisy_latents(z, abar, gen)
    return F.mse_loss(eps_model(z_t, t), eps)


def training_latents(vae: AutoencoderKL, images: torch.Tensor, cfg: Mapping[str, Any],
                     seed: int) -> torch.Tensor:
    """The latents a denoiser trains on: ``E(x / max |x_u|)`` of every image (the intensity scale
    of reconstruction) and, with ``flip``, of its mirror image."""
    images = normalised_images(images, cfg, seed)
    latents = encode_images(vae, images)
    if cfg.get("flip"):
        latents = torch.cat([latents, encode_images(vae, images.flip(-1))])
    return latents


def denoiser_step_fn(eps_model: torch.nn.Module, latents: torch.Tensor, cfg: Mapping[str, Any],
                     opt: torch.optim.Optimizer, n_steps: int, rt: Runtime, after_step=None):
    """One training step of the ε-loss on a seeded batch of ``latents`` (``cfg``: ``lr``,
    ``lr_schedule``, ``batch_size``, ``crop`` in pixels); ``after_step(step)`` runs after the update."""
    abar = base_alphas_cumprod()
    crop = None if cfg.get("crop") is None else max(1, int(cfg["crop"]) // 8)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        set_lr(opt, scheduled_lr(cfg, step, n_steps))
        z = random_batch(latents, rt.local_batch(int(cfg["batch_size"])), crop, gen)
        loss = denoiser_loss(eps_model, z, abar, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
        return {"loss": loss.item()}

    return step_fn


def train_denoiser(images: torch.Tensor, cfg: Mapping[str, Any] | None, ckpt_dir: str | Path,
                   vae: AutoencoderKL, seed: int = 0, n_steps: int | None = None,
                   log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> tuple[UNet2DConditionModel, torch.Tensor]:
    """Train a config-built U-Net on the latents of ``images`` divided by ``max |x_u|`` (and
    their mirror images if ``flip``); writes ``ckpt_dir/final`` (``save_pretrained`` + null embedding) and returns
    ``(unet, null_embedding)``."""
    cfg = {**DEFAULT_CONFIG[STAGE], **(cfg or {})}
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    rt = runtime or Runtime()
    vae = vae.eval().requires_grad_(False).to(rt.device)
    latents = training_latents(vae, images.to(rt.device), cfg, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = build_denoiser(cfg.get("model")).to(rt.device)
    modules = {"unet": unet}
    average = WeightAverage(unet, cfg, modules)
    null = null_text_embedding(unet).to(rt.device)
    eps_model = NullContextEps(unet, null)
    opt = torch.optim.AdamW(unet.parameters(), lr=float(cfg["lr"]), weight_decay=0.0)
    step_fn = denoiser_step_fn(eps_model, latents, cfg, opt, n_steps, rt, average.update)

    def save_final(d: Path) -> None:
        average.weights.save_pretrained(d, safe_serialization=True)
        save_file({"null": null.contiguous()}, d / NULL_EMBEDDING_FILE)

    meta = train(step_fn, modules, {"opt": opt}, ckpt_dir, n_steps, seed, save_final,
                 int(cfg["ckpt_every"]), log, STAGE, cfg, stop_after=stop_after, runtime=rt,
                 meta_extra=lambda: {"vae_scaling_factor": float(vae.config.scaling_factor),
                                     "latent_std": float(latents.std())})
    return load_denoiser(ckpt_dir) if meta["steps_done"] == n_steps else (average.weights.eval(), null)
