"""Stage 3 (only without SD weights): an unconditional ε-prediction U-Net on MR-VAE latents.

``L = ||eps - eps_theta(z_t, "", t)||^2`` with ``z_t`` from eq. 6 on SD's schedule (T = 1000).
It stands in for SD's U-Net as the frozen prior of MRControlNet.

The latents are computed once before training (:func:`training_latents`) from the images
chunk by chunk, so with ``loader: stream`` the split is read from its stores and never held as
one tensor (the latents are; they are 16x smaller than the images at an 8x VAE with 4 latent
channels). ``grad_accum`` and ``amp`` (bf16 autocast on CUDA) work as in the other stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from ..checkpoints import load_denoiser
from ..data.dataset import SliceStream
from ..models import NullContextEps, build_denoiser, null_text_embedding, vae_encode
from ..models.controlnet import NULL_EMBEDDING_FILE
from ..sampling import base_alphas_cumprod
from .loop import (WeightAverage, accumulate, random_batch, resolve_n_steps, scheduled_lr, set_lr,
                   step_settings, train)
from .presets import DEFAULT_CONFIG
from .runtime import Runtime, autocast
from .vae import normalised_chunks

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


def training_latents(vae: AutoencoderKL, images: torch.Tensor | SliceStream,
                     cfg: Mapping[str, Any], seed: int) -> torch.Tensor:
    """The latents a denoiser trains on: ``E(x / max |x_u|)`` of every image (the intensity scale
    of reconstruction) and, with ``flip``, of its mirror image (after all the others); the
    images are normalised and encoded chunk by chunk (:func:`ldpm.train.vae.normalised_chunks`)."""
    latents, mirrored = [], []
    for x in normalised_chunks(images, cfg, seed):
        latents.append(encode_images(vae, x))
        if cfg.get("flip"):
            mirrored.append(encode_images(vae, x.flip(-1)))
    return torch.cat(latents + mirrored)


def denoiser_step_fn(eps_model: torch.nn.Module, latents: torch.Tensor, cfg: Mapping[str, Any],
                     opt: torch.optim.Optimizer, n_steps: int, rt: Runtime, after_step=None):
    """One training step of the ε-loss on a seeded batch of ``latents`` (``cfg``: ``lr``,
    ``lr_schedule``, ``batch_size``, ``crop`` in pixels, and ``grad_accum``, ``amp`` if set);
    ``after_step(step)`` runs after the update."""
    abar = base_alphas_cumprod()
    crop = None if cfg.get("crop") is None else max(1, int(cfg["crop"]) // 8)
    accum, micro, amp = step_settings(cfg, rt, STAGE)
    replicas = rt.replicate(eps_model)

    def micro_loss(j: int, g: torch.Generator) -> torch.Tensor:
        z = random_batch(latents, micro, crop, g)
        with autocast(amp, rt.device):
            return denoiser_loss(eps_model, z, abar, g)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        set_lr(opt, scheduled_lr(cfg, step, n_steps))
        opt.zero_grad(set_to_none=True)
        loss = accumulate(micro_loss, accum, gen, replicas)
        opt.step()
        if after_step is not None:
            after_step(step)
        return {"loss": loss}

    return step_fn


def train_denoiser(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any] | None,
                   ckpt_dir: str | Path,
                   vae: AutoencoderKL, seed: int = 0, n_steps: int | None = None,
                   log: bool = True, stop_after: int | None = None,
                   runtime: Runtime | None = None) -> tuple[UNet2DConditionModel, torch.Tensor]:
    """Train a config-built U-Net on the latents of ``images`` (a tensor or a
    :class:`SliceStream`) divided by ``max |x_u|`` (and their mirror images if ``flip``);
    writes ``ckpt_dir/final`` (``save_pretrained`` + null embedding) and returns ``(unet,
    null_embedding)``."""
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
                 log=log, stage=STAGE, config=cfg, stop_after=stop_after, runtime=rt,
                 meta_extra=lambda: {"vae_scaling_factor": float(vae.config.scaling_factor),
                                     "latent_std": float(latents.std())})
    return load_denoiser(ckpt_dir) if meta["steps_done"] == n_steps else (average.weights.eval(), null)
