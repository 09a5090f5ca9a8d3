"""Stage 2: MR-VAE, eq. 5: ``mu L1 + nu VGG + omega KL + lambda GAN`` (paper: lr 1e-5, bs 8, 50 epochs).

GAN: hinge loss with a :class:`PatchDiscriminator` (its own Adam), switched on at ``disc_start``.
The VGG term needs local VGG16 weights; without them it is off and ``meta.json`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..errors import LdpmInputError
from ..models import PatchDiscriminator, VGGPerceptual, build_vae, from_vae_output, to_vae_input
from ..models.vae import VGG_OFF_NOTE
from .loop import random_batch, resolve_n_steps, train
from .presets import DEFAULT_CONFIG
from .runtime import Runtime

STAGE = "vae"


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 8) -> float:
    """Std of the (unscaled) posterior means of ``images``: SD's recipe for ``scaling_factor``."""
    means = [vae.encode(to_vae_input(images[i:i + chunk])).latent_dist.mean
             for i in range(0, len(images), chunk)]
    return float(torch.cat(means).std())


def vae_losses(vae: AutoencoderKL, disc: PatchDiscriminator, vgg: VGGPerceptual, x: torch.Tensor,
               gen: torch.Generator, w: Mapping[str, float], use_gan: bool
               ) -> dict[str, torch.Tensor]:
    """Eq. 5's terms for images ``x`` [N, 1, H, W]; ``loss`` is the weighted sum.

    L1 is taken in the VAE's [-1, 1] 3-channel space (as LDM), VGG on the [0, 1] magnitudes,
    KL summed over latent elements and averaged over the batch, GAN = hinge generator loss.
    Also returns ``rec`` and ``inp`` (for the discriminator update).
    """
    inp = to_vae_input(x)
    post = vae.encode(inp).latent_dist
    rec = vae.decode(post.sample(generator=gen)).sample
    l1 = (rec - inp).abs().mean()
    perc = vgg(from_vae_output(rec), x) if vgg.enabled else rec.new_zeros(())
    kl = post.kl().mean()
    g_adv = -disc(rec).mean() if use_gan else rec.new_zeros(())
    loss = w["mu"] * l1 + w["nu"] * perc + w["omega"] * kl + w["lambda"] * g_adv
    return {"loss": loss, "l1": l1, "vgg": perc, "kl": kl, "g_adv": g_adv, "rec": rec, "inp": inp}


def train_vae(images: torch.Tensor, cfg: Mapping[str, Any] | None, ckpt_dir: str | Path,
              seed: int = 0, n_steps: int | None = None, sd_path: str | Path | None = None,
              vgg_weights: str | Path | None = None, log: bool = True,
              stop_after: int | None = None, runtime: Runtime | None = None) -> AutoencoderKL:
    """Train (or fine-tune SD's, with ``sd_path``) the VAE; writes ``ckpt_dir/final`` with
    ``AutoencoderKL.save_pretrained`` and returns the trained VAE."""
    cfg = {**DEFAULT_CONFIG[STAGE], **(cfg or {})}
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    w = {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65, **(cfg.get("loss_weights") or {})}
    rt = runtime or Runtime()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = build_vae(cfg.get("model"), sd_path).to(rt.device)
        disc = PatchDiscriminator(3, **(cfg.get("disc") or {})).to(rt.device)
    vgg = VGGPerceptual(vgg_weights).to(rt.device)
    images = images.to(rt.device)
    notes = [] if vgg.enabled else [VGG_OFF_NOTE]
    betas = tuple(cfg.get("betas") or (0.5, 0.9))  # LDM's autoencoder betas
    opt_g = torch.optim.Adam(vae.parameters(), lr=float(cfg["lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(cfg["disc_lr"]), betas=betas)
    disc_start = int(cfg["disc_start"])

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        x = random_batch(images, rt.local_batch(int(cfg["batch_size"])), cfg["crop"], gen)
        use_gan = step >= disc_start and w["lambda"] > 0
        parts = vae_losses(vae, disc, vgg, x, gen, w, use_gan)
        loss, rec, inp = parts["loss"], parts.pop("rec"), parts.pop("inp")
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        d_loss = torch.zeros((), device=rt.device)
        if use_gan:  # hinge loss
            d_loss = 0.5 * (F.relu(1.0 - disc(inp)).mean() + F.relu(1.0 + disc(rec.detach())).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        return {**{k: v.item() for k, v in parts.items()}, "d_loss": d_loss.item()}

    fitted: dict[str, float] = {}

    def save_final(d: Path) -> None:
        if cfg.get("fit_scaling_factor") and sd_path is None:
            fitted["scaling_factor"] = 1.0 / latent_std(vae, images)
            vae.register_to_config(scaling_factor=fitted["scaling_factor"])
        vae.save_pretrained(d, safe_serialization=True)

    meta = train(step_fn, {"vae": vae, "disc": disc}, {"opt_g": opt_g, "opt_d": opt_d}, ckpt_dir,
                 n_steps, seed, save_final, int(cfg["ckpt_every"]), log, STAGE, cfg, notes,
                 stop_after=stop_after, runtime=rt,
                 meta_extra=lambda: {"sd_path": str(sd_path) if sd_path else None,
                                     "vgg_weights": str(vgg_weights) if vgg_weights else None,
                                     **fitted})
    return load_vae(ckpt_dir) if meta["steps_done"] == n_steps else vae.eval()


def load_vae(ckpt_dir: str | Path) -> AutoencoderKL:
    """The trained MR-VAE from ``ckpt_dir/final`` (eval mode, frozen)."""
    final = Path(ckpt_dir) / "final"
    if not (final / "config.json").is_file():
        raise LdpmInputError(final, "no trained VAE here", "run the vae training stage")
    vae = AutoencoderKL.from_pretrained(final, local_files_only=True,
                                          low_cpu_mem_usage=False)
    return vae.eval().requires_grad_(False)
