"""LDPM and its Table II ablations as registry methods (paper eq. 1: ``x_hat = Phi(k_u, M)``).

``ldpm``: Sketcher condition ``c = |DC[R(x_u), k_u, M]|`` (eq. 2-3) -> ``c_latent = E(c)`` with
MR-VAE -> Dual-Stage Sampler with MRControlNet (eq. 8-12). The ablations switch one piece each,
at sampling time, with the same trained networks:

- ``ldpm_wo_mrvae`` (``vae: sd``): the VAE *before* MR fine-tuning encodes ``c`` and decodes --
  SD 2-1-base's VAE with ``pretrained.sd_path``; without SD weights, the untuned (randomly
  initialised, same seed) VAE that MR-VAE was trained from.
- ``ldpm_wo_skm`` (``sketcher: off``): the condition is ``|DC[x_u, k_u, M]| = |x_u|``.
- ``ldpm_wo_dss`` (``sampler: plain``): plain respaced DDPM, no DC and no k-space guidance.

Checkpoints: ``sketcher``, ``vae``, ``controlnet`` and (without SD weights) ``denoiser``
training folders. Each slice is scaled by the maximum of its zero-filled image (computed from the
measurement alone) before sampling and scaled back after.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import LdpmInputError
from .methods import register
from .mri import ifft2c

#: the three switches of Table II, and each method's setting of them
VARIANTS: dict[str, dict[str, str]] = {
    "ldpm": {"vae": "mr", "sketcher": "on", "sampler": "dss"},
    "ldpm_wo_mrvae": {"vae": "sd", "sketcher": "on", "sampler": "dss"},
    "ldpm_wo_skm": {"vae": "mr", "sketcher": "off", "sampler": "dss"},
    "ldpm_wo_dss": {"vae": "mr", "sketcher": "on", "sampler": "plain"},
}


def untuned_vae(mr_vae_dir: Path, sd_path: str | None):
    """The VAE MR-VAE was fine-tuned from: SD's, or the same-seed random initialisation."""
    from .models import build_vae

    if sd_path:
        return build_vae(None, sd_path).eval().requires_grad_(False)
    meta = json.loads((Path(mr_vae_dir) / "meta.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(meta["seed"]))
        vae = build_vae(meta["config"].get("model"), None)
    trained_scale = json.loads((Path(mr_vae_dir) / "final" / "config.json").read_text())
    vae.register_to_config(scaling_factor=trained_scale.get("scaling_factor", 0.18215))
    return vae.eval().requires_grad_(False)


def load_ldpm(checkpoints: Mapping[str, Path], vae_kind: str, sd_path: str | None):
    """``(sketcher, vae, mrcn)`` from the training folders."""
    from .train.controlnet import load_controlnet
    from .train.sketcher import load_sketcher
    from .train.stages import load_prior
    from .train.vae import load_vae

    for name in ("sketcher", "vae", "controlnet"):
        if name not in checkpoints:
            raise LdpmInputError("method ldpm", f"no {name} checkpoint folder given",
                                 f"pass --checkpoint {name}=<its training folder>")
    sketcher = load_sketcher(checkpoints["sketcher"])
    vae = load_vae(checkpoints["vae"]) if vae_kind == "mr" else untuned_vae(checkpoints["vae"], sd_path)
    denoiser, null = load_prior(checkpoints, sd_path)
    return sketcher, vae, load_controlnet(checkpoints["controlnet"], denoiser)


def condition(sketcher, x_u: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor,
              use_sketcher: bool) -> torch.Tensor:
    """The condition ``c`` (eq. 2-3), or ``|x_u|`` without the Sketcher (w/o SkM)."""
    if use_sketcher:
        return sketcher(x_u, k_u, mask)
    return x_u


def ldpm_reconstruct(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                     options: dict[str, Any], variant: str = "ldpm", models=None) -> np.ndarray:
    """Reconstruct every slice with LDPM (or one of its ablations) -> [N, H, W] magnitudes.

    ``models``: ``(sketcher, vae, mrcn)`` to use instead of loading them from ``checkpoints``
    (the LoRA generators of :mod:`ldpm.methods_lora`). The seconds spent sampling (loading
    excluded) go to ``options["timings"]["sampling_seconds"]`` when that dict is given.
    """
    from .models import vae_decode, vae_encode
    from .sampling.dual_stage import DualStageSampler

    switches = {**VARIANTS[variant], **{k: options[k] for k in ("vae", "sketcher", "sampler")
                                        if k in options}}
    dev = torch.device(options.get("device", "cpu"))
    sketcher, vae, mrcn = (m.to(dev) for m in models or load_ldpm(checkpoints, switches["vae"],
                                                                   options.get("sd_path")))
    sampler = DualStageSampler(n_steps=int(options.get("n_steps", 25)), p=int(options.get("p", 200)),
                               guidance_scale=float(options.get("guidance_scale", 0.1)),
                               use_dss=switches["sampler"] == "dss")
    encode, decode = partial(vae_encode, vae), partial(vae_decode, vae)
    seeds = options["slice_seeds"]
    out = np.zeros(k_u.shape, np.float32)
    start = time.perf_counter()
    for i in range(len(k_u)):
        k = torch.from_numpy(np.ascontiguousarray(k_u[i:i + 1])).to(dev, torch.complex64)[:, None]
        m = torch.from_numpy(np.ascontiguousarray(mask[i:i + 1], dtype=np.float32)).to(dev)[:, None, None]
        x_u = ifft2c(k).abs()
        scale = x_u.amax().clamp_min(1e-12)
        k, x_u = k / scale, x_u / scale
        with torch.no_grad():
            c_latent = encode(condition(sketcher, x_u, k, m, switches["sketcher"] == "on"))
        gen = torch.Generator().manual_seed(int(seeds[i]))
        x = sampler(mrcn, encode, decode, c_latent, k, m, generator=gen)
        out[i] = (x[0, 0] * scale).cpu().numpy()
    if isinstance(options.get("timings"), dict):
        options["timings"]["sampling_seconds"] = time.perf_counter() - start
    return out


for _name in VARIANTS:
    register(_name)(partial(ldpm_reconstruct, variant=_name))
