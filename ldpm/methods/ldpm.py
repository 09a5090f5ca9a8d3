"""LDPM and its Table II ablations as registry methods (paper eq. 1: ``x_hat = Phi(k_u, M)``).

``ldpm``: Sketcher condition ``c = |DC[R(x_u), k_u, M]|`` (eq. 2-3) -> ``c_latent = E(c)`` with
MR-VAE -> Dual-Stage Sampler with MRControlNet (eq. 8-12). The ablations switch one piece each,
at sampling time, with the same trained networks:

- ``ldpm_wo_mrvae`` (``vae: sd``): the VAE *before* MR fine-tuning encodes ``c`` and decodes --
  SD 2-1-base's VAE with ``pretrained.sd_path``; without SD weights, the natural-image VAE
  (``vae_natural`` stage) that MR-VAE was fine-tuned from.
- ``sketcher_only``: the condition ``c`` itself, no diffusion (what MRControlNet and the
  sampler add on top of it).
- ``ldpm_wo_skm`` (``sketcher: off``): the condition is ``|DC[x_u, k_u, M]| = |x_u|``.
- ``ldpm_wo_dss`` (``sampler: plain``): plain respaced DDPM, no DC and no k-space guidance.

Each slice is the mean of ``inference.ldpm.n_samples`` draws (:mod:`ldpm.sampling.mean`); one
draw is the sample itself.

Checkpoints: ``sketcher``, ``vae``, ``controlnet`` and (without SD weights) ``denoiser``
training folders. Each slice is divided by the maximum of its zero-filled image, computed from the
measurement alone (:func:`ldpm.mri.measurement_scale`, as in every training stage), before
sampling and multiplied back after.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import LdpmInputError
from ..io import progress
from ..mri import ifft2c, measurement_scale
from .graph import SKETCHER_ONLY
from .registry import Reconstruction, register

#: the three switches of Table II, and each method's setting of them
ABLATION_SWITCHES: dict[str, dict[str, str]] = {
    "ldpm": {"vae": "mr", "sketcher": "on", "sampler": "dss"},
    "ldpm_wo_mrvae": {"vae": "sd", "sketcher": "on", "sampler": "dss"},
    "ldpm_wo_skm": {"vae": "mr", "sketcher": "off", "sampler": "dss"},
    "ldpm_wo_dss": {"vae": "mr", "sketcher": "on", "sampler": "plain"},
}


def untuned_vae(natural_vae_dir: Path | None, sd_path: str | None):
    """The VAE MR-VAE was fine-tuned from: SD's, or (without SD weights) the natural-image VAE
    of the ``vae_natural`` stage (:mod:`ldpm.data.natural`)."""
    from ..checkpoints import load_vae
    from ..models import build_vae

    if sd_path:
        return build_vae(None, sd_path).eval().requires_grad_(False)
    if natural_vae_dir is None:
        raise LdpmInputError("method ldpm_wo_mrvae", "no vae_natural checkpoint folder given",
                             "pass --checkpoint vae_natural=<its training folder>")
    return load_vae(natural_vae_dir)


def load_ldpm(checkpoints: Mapping[str, Path], vae_kind: str, sd_path: str | None):
    """``(sketcher, vae, mrcn)`` from the training folders."""
    from ..checkpoints import load_controlnet, load_prior, load_sketcher, load_vae

    for name in ("sketcher", "vae", "controlnet"):
        if name not in checkpoints:
            raise LdpmInputError("method ldpm", f"no {name} checkpoint folder given",
                                 f"pass --checkpoint {name}=<its training folder>")
    sketcher = load_sketcher(checkpoints["sketcher"])
    vae = (load_vae(checkpoints["vae"]) if vae_kind == "mr"
           else untuned_vae(checkpoints.get("vae_natural"), sd_path))
    denoiser, null = load_prior(checkpoints, sd_path)
    return sketcher, vae, load_controlnet(checkpoints["controlnet"], denoiser)


def condition(sketcher, x_u: torch.Tensor, k_u: torch.Tensor, mask: torch.Tensor,
              use_sketcher: bool) -> torch.Tensor:
    """The condition ``c`` (eq. 2-3), or ``|x_u|`` without the Sketcher (w/o SkM)."""
    if use_sketcher:
        return sketcher(x_u, k_u, mask)
    return x_u


def normalised_measurement(k_u: np.ndarray, mask: np.ndarray, dev: torch.device):
    """``(k, m, x_u, scale)`` of [B, 1, ...] tensors for slices [B, H, W] of k-space and masks
    [B, W]: the k-space and zero-filled image divided by ``scale`` = max |x_u| of each slice
    (:func:`ldpm.mri.measurement_scale`, the normalisation every training stage uses)."""
    k = torch.from_numpy(np.ascontiguousarray(k_u)).to(dev, torch.complex64)[:, None]
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(dev)[:, None, None]
    x_u = ifft2c(k).abs()
    scale = measurement_scale(x_u)
    return k / scale, m, x_u / scale, scale


#: the Dual-Stage Sampler's settings, all from the config's ``inference.ldpm`` (eq. 8-12)
SAMPLER_KEYS = ("n_steps", "p", "guidance_scale", "eps_mode")
#: every key LDPM's reconstruction reads from ``inference.ldpm``: the sampler's settings,
#: ``n_samples`` (draws averaged per slice, :mod:`ldpm.sampling.mean`) and ``batch_size`` (slices
#: sampled at once)
LDPM_KEYS = (*SAMPLER_KEYS, "n_samples", "batch_size")


def _require(options: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Refuse ``options`` without one of ``keys``: the config's ``inference.ldpm`` is their one
    source, so a missing one is an error, never a default."""
    missing = [k for k in keys if k not in options]
    if missing:
        raise LdpmInputError(f"config: inference.ldpm.{missing[0]}", "is not set",
                             f"set inference.ldpm.{{{', '.join(LDPM_KEYS)}}} (config/config.yaml)")


def sampler_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """``n_steps``, ``p``, ``guidance_scale``, ``eps_mode`` from the method's options (the
    config's ``inference.ldpm``); a missing one is an error, never a default."""
    _require(options, SAMPLER_KEYS)
    return {"n_steps": int(options["n_steps"]), "p": int(options["p"]),
            "guidance_scale": float(options["guidance_scale"]), "eps_mode": str(options["eps_mode"])}


def ldpm_reconstruct(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                     options: dict[str, Any], variant: str = "ldpm", models=None) -> Reconstruction:
    """Reconstruct every slice with LDPM (or one of its ablations): [N, H, W] magnitudes and
    ``sampling_seconds``, the seconds spent sampling (loading excluded).

    ``models``: ``(sketcher, vae, mrcn)`` to use instead of loading them from ``checkpoints``
    (e.g. a study's generator with an adapted denoiser).
    """
    from ..models import vae_decode, vae_encode
    from ..sampling.dual_stage import DualStageSampler
    from ..sampling.mean import draw_seeds, sample_mean

    _require(options, LDPM_KEYS)
    switches = {**ABLATION_SWITCHES[variant], **{k: options[k] for k in ("vae", "sketcher", "sampler")
                                        if k in options}}
    dev = torch.device(options.get("device", "cpu"))
    sketcher, vae, mrcn = (m.to(dev) for m in models or load_ldpm(checkpoints, switches["vae"],
                                                                   options.get("sd_path")))
    sampler = DualStageSampler(**sampler_settings(options), use_dss=switches["sampler"] == "dss")
    encode, decode = partial(vae_encode, vae), partial(vae_decode, vae)
    seeds = options["slice_seeds"]
    bs = int(options["batch_size"])
    out = np.zeros(k_u.shape, np.float32)
    start = time.perf_counter()
    with progress(len(k_u), variant) as bar:
        for i in range(0, len(k_u), bs):
            k, m, x_u, scale = normalised_measurement(k_u[i:i + bs], mask[i:i + bs], dev)
            with torch.no_grad():
                c_latent = encode(condition(sketcher, x_u, k, m, switches["sketcher"] == "on"))

            def draw(j: int) -> torch.Tensor:
                gens = [torch.Generator().manual_seed(s) for s in draw_seeds(seeds[i:i + bs], j)]
                return sampler(mrcn, encode, decode, c_latent, k, m, generator=gens)

            x = sample_mean(draw, int(options["n_samples"]))
            out[i:i + bs] = (x * scale)[:, 0].cpu().numpy()
            bar.update(len(k))
    return Reconstruction(out, {"sampling_seconds": time.perf_counter() - start})


for _name in ABLATION_SWITCHES:
    register(_name)(partial(ldpm_reconstruct, variant=_name))


@register(SKETCHER_ONLY)
def sketcher_only_reconstruct(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                              options: dict[str, Any]) -> np.ndarray:
    """The Sketcher's condition ``c = |DC[R(x_u), k_u, M]|`` (eq. 2-3) as the reconstruction,
    with the same normalisation as LDPM -> [N, H, W]."""
    from ..checkpoints import load_sketcher

    if "sketcher" not in checkpoints:
        raise LdpmInputError("method sketcher_only", "no sketcher checkpoint folder given",
                             "pass --checkpoint sketcher=<its training folder>")
    dev = torch.device(options.get("device", "cpu"))
    sketcher = load_sketcher(checkpoints["sketcher"]).to(dev)
    out = np.zeros(k_u.shape, np.float32)
    bs = int(options.get("batch_size", 8))
    with torch.no_grad():
        for i in range(0, len(k_u), bs):
            k, m, x_u, scale = normalised_measurement(k_u[i:i + bs], mask[i:i + bs], dev)
            out[i:i + bs] = (sketcher(x_u, k, m) * scale)[:, 0].cpu().numpy()
    return out
