"""Stage 2: MR-VAE, eq. 5: ``mu L1 + nu VGG + omega KL + lambda GAN`` (paper: lr 1e-5, bs 8, 50 epochs).

Eq. 5's weights (mu=1, nu=0.2, omega=1e-6, lambda=0.65) are those of the LDM autoencoder loss
(``LPIPSWithDiscriminator``) that SD's VAE was trained with, and mean what the paper means only
in its normalisation, which :func:`vae_losses` implements:

- reconstruction ``rec = sum_pixels(mu |x - x_hat| + nu VGG(x, x_hat)) / B``: L1 on the VAE's
  3-channel [-1, 1] images summed over pixels and channels, the per-sample VGG distance added
  to every pixel (as LDM adds LPIPS), averaged over the batch (LDM's learned log-variance is
  kept at its initial 0, so its ``nll`` is ``rec``);
- ``KL = sum_latent KL(q(z|x) || N(0, I)) / B``, weighted by ``omega``;
- GAN: ``g = -mean D(x_hat)`` (hinge generator loss) weighted by ``lambda * w_adapt`` with the
  adaptive weight ``w_adapt = ||grad_L rec|| / (||grad_L g|| + 1e-4)`` (clamped to [0, 1e4],
  no gradient) at the decoder's last layer ``L``; the term is off before ``disc_start``, the
  step at which the discriminator (a :class:`PatchDiscriminator` with its own Adam and hinge
  loss) starts, once the reconstruction has converged.

The VGG term needs local VGG16 weights; without them it is off and ``meta.json`` says so.
Images are divided by ``max |x_u|`` of a simulated undersampling with the test geometry
(:func:`ldpm.train.loop.make_batch`), as every LDPM input is at reconstruction. ``init``
fine-tunes a trained VAE (SD's, or the natural-image VAE of the ``vae_natural`` stage).

The ``vae`` stage also takes ``loader: stream`` (batches from the slice stores, a
:class:`ldpm.data.dataset.SliceStream`; the fitted scaling factor reads the stores chunk by
chunk), ``grad_accum`` (micro-batches of ``batch_size / grad_accum``: the generator's and then
the discriminator's gradients accumulated over them, the adaptive GAN weight computed per
micro-batch) and ``amp`` (bf16 autocast on CUDA). ``vae_natural`` trains on photographs
(:mod:`ldpm.data.natural`, a fixed set built in memory) and takes none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..checkpoints import load_vae
from ..data.dataset import SliceStream
from ..models import PatchDiscriminator, VGGPerceptual, build_vae, from_vae_output, to_vae_input
from ..models.vae import VGG_OFF_NOTE
from .loop import (WeightAverage, accumulate, accumulate_logged, crop_pair, image_chunks,
                   make_batch, random_batch, resolve_n_steps, scheduled_lr, set_lr, stage_masks,
                   step_settings, train)
from .presets import DEFAULT_CONFIG
from .runtime import Runtime, autocast

STAGE = "vae"
#: images normalised at a time by :func:`normalised_chunks` (the chunk seeds its masks)
NORMALISE_CHUNK = 64


@torch.no_grad()
def latent_std(vae: AutoencoderKL, batches: Iterable[torch.Tensor], chunk: int = 8) -> float:
    """Std of the (unscaled) posterior means of the images of ``batches`` (each [B, 1, H, W],
    encoded ``chunk`` at a time; only the means are kept): SD's recipe for ``scaling_factor``."""
    means = [vae.encode(to_vae_input(x[i:i + chunk])).latent_dist.mean
             for x in batches for i in range(0, len(x), chunk)]
    return float(torch.cat(means).std())


def adaptive_gan_weight(rec: torch.Tensor, g_adv: torch.Tensor, last_layer: torch.Tensor
                        ) -> torch.Tensor:
    """LDM's ``||grad_L rec|| / (||grad_L g|| + 1e-4)``, clamped to [0, 1e4], detached."""
    (g_rec,) = torch.autograd.grad(rec, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_adv, last_layer, retain_graph=True)
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def vae_losses(vae: AutoencoderKL, disc: PatchDiscriminator | None, vgg: VGGPerceptual,
               x: torch.Tensor, gen: torch.Generator, w: Mapping[str, float], use_gan: bool
               ) -> dict[str, torch.Tensor]:
    """Eq. 5's terms for images ``x`` [N, 1, H, W] in LDM's normalisation; ``loss`` is the sum.

    Returns ``loss``, ``rec`` (mu L1 + nu VGG, summed per sample, mean over the batch), ``l1``
    (mean absolute error per element, for the log), ``vgg`` (mean per-sample distance),
    ``kl`` (summed per sample, mean), ``g_adv``, ``gan_weight`` (lambda * adaptive weight, 0
    before ``disc_start``), and ``x_rec``/``inp`` for the discriminator update.
    """
    inp = to_vae_input(x)
    post = vae.encode(inp).latent_dist
    x_rec = vae.decode(post.sample(generator=gen)).sample
    b = x.shape[0]
    err = (x_rec - inp).abs()
    vgg_b = vgg.per_sample(from_vae_output(x_rec), x) if vgg.enabled else x_rec.new_zeros(b)
    rec = (w["mu"] * err.flatten(1).sum(1) + w["nu"] * vgg_b * err[0].numel()).sum() / b
    kl = post.kl().sum() / b
    if use_gan:
        g_adv = -disc(x_rec).mean()
        gan_weight = w["lambda"] * adaptive_gan_weight(rec, g_adv, vae.decoder.conv_out.weight)
    else:
        g_adv = gan_weight = x_rec.new_zeros(())
    loss = rec + w["omega"] * kl + gan_weight * g_adv
    return {"loss": loss, "rec": rec, "l1": err.mean(), "vgg": vgg_b.mean(), "kl": kl,
            "g_adv": g_adv, "gan_weight": gan_weight, "x_rec": x_rec, "inp": inp}


def train_vae(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any] | None,
              ckpt_dir: str | Path,
              seed: int = 0, n_steps: int | None = None, sd_path: str | Path | None = None,
              vgg_weights: str | Path | None = None, log: bool = True,
              stop_after: int | None = None, runtime: Runtime | None = None,
              init: str | Path | None = None, stage: str = STAGE) -> AutoencoderKL:
    """Train the VAE on ``images`` [N, 1, H, W] (or a :class:`SliceStream` of them): fine-tune
    SD's (``sd_path``) or the trained VAE in the folder ``init``, else train a config-built one;
    writes ``ckpt_dir/final`` with ``AutoencoderKL.save_pretrained`` and returns the trained
    VAE."""
    cfg = {**DEFAULT_CONFIG[STAGE], **(cfg or {})}
    n_steps = resolve_n_steps(cfg, len(images), n_steps)
    w = {"mu": 1.0, "nu": 0.2, "omega": 1e-6, "lambda": 0.65, **(cfg.get("loss_weights") or {})}
    rt = runtime or Runtime()
    accum, micro, amp = step_settings(cfg, rt, stage)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = (load_vae(init).requires_grad_(True) if init is not None and sd_path is None
               else build_vae(cfg.get("model"), sd_path)).to(rt.device)
        disc = PatchDiscriminator(3, **(cfg.get("disc") or {})).to(rt.device)
    modules = {"vae": vae, "disc": disc}
    average = WeightAverage(vae, cfg, modules)
    vgg = VGGPerceptual(vgg_weights).to(rt.device)
    images = images.to(rt.device)
    notes = [] if vgg.enabled else [VGG_OFF_NOTE]
    betas = tuple(cfg.get("betas") or (0.5, 0.9))  # LDM's autoencoder betas
    opt_g = torch.optim.Adam(vae.parameters(), lr=float(cfg["lr"]), betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=float(cfg["disc_lr"]), betas=betas)
    # the generator's and the discriminator's loss computations, each averaged over the ranks
    # by its own DistributedDataParallel (ldpm.train.runtime.Replicas)
    replicas_g, replicas_d = rt.replicate(vae), rt.replicate(disc)
    disc_start = None if cfg.get("disc_start") is None else int(cfg["disc_start"])  # None: no GAN

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        set_lr(opt_g, scheduled_lr(cfg, step, n_steps))
        use_gan = disc_start is not None and step >= disc_start and w["lambda"] > 0
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, reconstruction) for D

        def micro_step(j: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
            x = random_batch(images, micro, None, g, cfg.get("augment"))
            batch = make_batch(x, *stage_masks(cfg), seed, step, first=j * micro)
            if cfg["crop"]:
                batch = crop_pair(batch, int(cfg["crop"]), g, keys=("target",))
            with autocast(amp, rt.device):
                parts = vae_losses(vae, disc, vgg, batch["target"], g, w, use_gan)
            pairs.append((parts.pop("inp"), parts.pop("x_rec").detach()))
            return parts["loss"], {k: v.item() for k, v in parts.items()}

        opt_g.zero_grad(set_to_none=True)
        out = accumulate_logged(micro_step, accum, gen, replicas_g)
        opt_g.step()
        d_loss = 0.0
        if use_gan:  # hinge loss
            def d_micro_loss(j: int, g: torch.Generator) -> torch.Tensor:
                inp, rec = pairs[j]
                with autocast(amp, rt.device):
                    return 0.5 * (F.relu(1.0 - disc(inp)).mean() + F.relu(1.0 + disc(rec)).mean())

            opt_d.zero_grad(set_to_none=True)
            d_loss = accumulate(d_micro_loss, accum, torch.Generator(), replicas_d)
            opt_d.step()
        average.update(step)
        return {**out, "d_loss": d_loss}

    fitted: dict[str, float] = {}

    def save_final(d: Path) -> None:
        net = average.weights
        if cfg.get("fit_scaling_factor") and sd_path is None:
            fitted["scaling_factor"] = 1.0 / latent_std(net, normalised_chunks(images, cfg, seed))
            net.register_to_config(scaling_factor=fitted["scaling_factor"])
        net.save_pretrained(d, safe_serialization=True)

    meta = train(step_fn, modules, {"opt_g": opt_g, "opt_d": opt_d}, ckpt_dir,
                 n_steps, seed, save_final, log=log,
                 stage=stage, config=cfg, notes=notes, stop_after=stop_after, runtime=rt,
                 loader=images if isinstance(images, SliceStream) else None,
                 meta_extra=lambda: {"sd_path": str(sd_path) if sd_path else None,
                                     "init": str(init) if init is not None and sd_path is None else None,
                                     "vgg_weights": str(vgg_weights) if vgg_weights else None,
                                     **fitted})
    return load_vae(ckpt_dir) if meta["steps_done"] == n_steps else average.weights.eval()


def normalised_chunks(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any], seed: int
                      ) -> Iterator[torch.Tensor]:
    """``images / max |x_u|`` (one seeded mask per image, the stage's geometry: image ``i +
    k`` of the chunk at ``i`` by ``(seed, i, k)``), :data:`NORMALISE_CHUNK` images at a time
    in the split's order (a stream reads them from its stores, :func:`image_chunks`): the
    intensity scale every LDPM network sees, for what a stage computes over every image."""
    for n, x in enumerate(image_chunks(images, NORMALISE_CHUNK)):
        yield make_batch(x, *stage_masks(cfg), seed, n * NORMALISE_CHUNK)["target"]


def normalised_images(images: torch.Tensor | SliceStream, cfg: Mapping[str, Any],
                      seed: int) -> torch.Tensor:
    """Every image of :func:`normalised_chunks` in one tensor."""
    return torch.cat(list(normalised_chunks(images, cfg, seed)))
