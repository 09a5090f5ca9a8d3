"""Stage 4: MRControlNet's control branch, eq. 7 (paper: lr "10e-4", bs 16, patch 320, 50 epochs).

``c = Sketcher(x_u, k_u, M)`` (frozen), ``c_latent = E(c)``, ``z = E(x)`` (VAE frozen), ``z_t``
by eq. 6, and ``L = ||eps - eps_theta(z_t, "", t, c_latent)||^2``; the denoiser is frozen.

With ``loader: stream`` the images come from the slice stores (a
:class:`ldpm.data.dataset.SliceStream`): the steps read its batches (``n_masks: null``), or the
condition pool (``n_masks`` K) is built once from the stores chunk by chunk and the steps draw
from it (the pool of latents is held in memory, not the images). ``grad_accum`` and ``amp``
(bf16 autocast on CUDA) work as in the other stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn

from ..checkpoints import load_controlnet
from ..data.dataset import SliceStream
from ..models import MRControlNet, Sketcher, save_controlnet, vae_encode
from ..models.controlnet import NULL_EMBEDDING_FILE
from ..sampling import base_alphas_cumprod
from ..seeding import step_generator
from .denoiser import noisy_latents
from .loop import (WeightAverage, accumulate, augment_images, crop_pair, freeze, image_chunks,
                   make_batch, random_batch, resolve_n_steps, scheduled_lr, stage_masks,
                   step_settings, train)
from .presets import DEFAULT_CONFIG
from .runtime import Runtime, autocast

STAGE = "controlnet"


def controlnet_loss(model: MRControlNet, sketcher: Sketcher, vae: AutoencoderKL, x: torch.Tensor,
                    abar: torch.Tensor, gen: torch.Generator, masks: tuple[int, float], seed: int,
                    step: int, crop: int | None = None, first: int = 0) -> torch.Tensor:
    """Eq. 7 for whole images ``x``, undersampled with the test geometry (masks
    ``(acceleration, center_fraction)`` seeded ``(seed, step, first + i)``) and divided by
    ``max |x_u|`` as at reconstruction; ``c`` is the Sketcher's output on the whole image
    (eq. 2-3), then (``crop``) the same window of ``c`` and ``x``; ``t``/``eps`` from ``gen``."""
    batch = make_batch(x, *masks, seed, step, first)
    with torch.no_grad():
        batch["c"] = sketcher(batch["x_u"], batch["k_u"][:, None], batch["mask"][:, None, None])
        if crop:
            batch = crop_pair(batch, int(crop), gen, keys=("target", "c"))
        c_latent = vae_encode(vae, batch["c"])
        z = vae_encode(vae, batch["target"])
    z_t, t, eps = noisy_latents(z, abar, gen)
    return F.mse_loss(model(z_t, t, c_latent), eps)


@torch.no_grad()
def condition_pool(sketcher: Sketcher, vae: AutoencoderKL, images: torch.Tensor | SliceStream,
                   masks: tuple[int, float], seed: int, n_masks: int, chunk: int = 16,
                   augment: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """``z = E(x)`` and ``c_latent = E(c)`` of every training image under each of ``n_masks``
    seeded masks of the test geometry (whole images, divided by ``max |x_u|``; ``c`` by eq.
    2-3), computed once: the Sketcher and the VAE are frozen, so a step that draws from this
    pool sees exactly what :func:`controlnet_loss` would compute for those masks. ``augment``:
    each (mask, chunk) pair's images are augmented (:func:`augment_images`, seeded by both).
    The images are read once, ``chunk`` at a time (from a stream: from its stores,
    :func:`image_chunks`); the pool holds mask 0's latents of every image, then mask 1's, ..."""
    zs: list[list[torch.Tensor]] = [[] for _ in range(n_masks)]
    cs: list[list[torch.Tensor]] = [[] for _ in range(n_masks)]
    n_chunks = -(-len(images) // chunk)
    for j, chunk_images in enumerate(image_chunks(images, chunk)):
        for k in range(n_masks):
            x = augment_images(chunk_images, augment, step_generator(seed, k, j))
            b = make_batch(x, *masks, seed, k * n_chunks + j)
            c = sketcher(b["x_u"], b["k_u"][:, None], b["mask"][:, None, None])
            zs[k].append(vae_encode(vae, b["target"]))
            cs[k].append(vae_encode(vae, c))
    return {"target": torch.cat([z for per_mask in zs for z in per_mask]),
            "c": torch.cat([c for per_mask in cs for c in per_mask])}


def controlnet_step_fn(model: MRControlNet, sketcher: nn.Module, vae: nn.Module,
                       images: torch.Tensor | SliceStream, cfg: Mapping[str, Any],
                       opt: torch.optim.Optimizer, abar: torch.Tensor, seed: int, rt: Runtime,
                       n_steps: int):
    """One optimisation step of the ε-loss (eq. 7) on a random batch, for the shared loop
    (also used by a study's stages whose optimizer holds other weights, e.g. adapters).
    Each parameter group's learning rate follows ``lr_schedule`` relative to its own base.

    ``cfg["n_masks"]``: ``None`` draws new masks at every step (:func:`controlnet_loss`); an
    integer K draws from :func:`condition_pool` (K masks per image), which spares the frozen
    Sketcher and VAE at every step. ``crop`` is then taken in latent space. ``grad_accum`` and
    ``amp`` (if set) split the batch into micro-batches and autocast their forward passes.
    """
    base = [g["lr"] for g in opt.param_groups]
    masks, crop = stage_masks(cfg), cfg["crop"]
    accum, micro, amp = step_settings(cfg, rt, STAGE)
    replicas = rt.replicate(model)  # its trainable parameters: the control branch, adapters
    pool = None
    if cfg.get("n_masks"):
        pool = condition_pool(sketcher, vae, images, masks, seed, int(cfg["n_masks"]),
                              augment=cfg.get("augment"))
        if crop:
            crop = max(1, int(crop) * pool["target"].shape[-1] // images.shape[-1])

    def micro_loss(step: int, j: int, gen: torch.Generator) -> torch.Tensor:
        if pool is None:
            x = random_batch(images, micro, None, gen, cfg.get("augment"))
            with autocast(amp, rt.device):
                return controlnet_loss(model, sketcher, vae, x, abar, gen, masks, seed, step,
                                       crop, first=j * micro)
        idx = torch.randint(len(pool["target"]), (micro,), generator=gen).to(pool["target"].device)
        batch = {k: v[idx] for k, v in pool.items()}
        if crop:
            batch = crop_pair(batch, crop, gen, keys=("target", "c"))
        z_t, t, eps = noisy_latents(batch["target"], abar, gen)
        with autocast(amp, rt.device):
            return F.mse_loss(model(z_t, t, batch["c"]), eps)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        factor = scheduled_lr({**cfg, "lr": 1.0}, step, n_steps)
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * factor
        opt.zero_grad(set_to_none=True)
        loss = accumulate(lambda j, g: micro_loss(step, j, g), accum, gen, replicas)
        opt.step()
        return {"loss": loss}

    return step_fn


def train_controlnet(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any] | None,
                     ckpt_dir: str | Path,
                     sketcher: Sketcher, vae: AutoencoderKL, denoiser: UNet2DConditionModel,
                     null_embedding: torch.Tensor, seed: int = 0, n_steps: int | None = None,
                     log: bool = True, stop_after: int | None = None,
                     runtime: Runtime | None = None) -> MRControlNet:
    """Train the control branch on ``images`` [N, 1, H, W] (or a :class:`SliceStream` of
    them); writes ``ckpt_dir/final`` (controlnet weights + config + null embedding) and
    returns the :class:`MRControlNet`."""
    cfg = {**DEFAULT_CONFIG[STAGE], **(cfg or {})}
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    rt = runtime or Runtime()
    sketcher, vae = freeze(sketcher).to(rt.device), freeze(vae).to(rt.device)
    images = images.to(rt.device)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MRControlNet.from_denoiser(denoiser, null_embedding).to(rt.device)
    opt = torch.optim.AdamW(model.controlnet.parameters(), lr=float(cfg["lr"]), weight_decay=0.0)
    abar = base_alphas_cumprod()

    modules = {"controlnet": model.controlnet}
    average = WeightAverage(model.controlnet, cfg, modules)
    branch_step = controlnet_step_fn(model, sketcher, vae, images, cfg, opt, abar, seed, rt, n_steps)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        out = branch_step(step, gen)
        average.update(step)
        return out

    def save_final(d: Path) -> None:
        save_controlnet(average.weights, d)
        save_file({"null": model.null_embedding.contiguous()}, d / NULL_EMBEDDING_FILE)

    streamed = isinstance(images, SliceStream) and not cfg.get("n_masks")  # steps read it
    meta = train(step_fn, modules, {"opt": opt}, ckpt_dir, n_steps, seed,
                 save_final, log=log, stage=STAGE, config=cfg, stop_after=stop_after,
                 runtime=rt, loader=images if streamed else None)
    return load_controlnet(ckpt_dir, denoiser.cpu()) if meta["steps_done"] == n_steps else model.eval()
